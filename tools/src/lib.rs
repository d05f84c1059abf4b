//! `storesync-tools`: what the tool binaries (`storesync-demo`, `storesync-loadgen`, the `bench_*` benchmarks) share,
//! and the end-to-end tests reuse: finding and driving the real storesync binaries ([`proc`]), valid canonical events
//! ([`sales`]) and hash-chained journals ([`journal`]), statistics for the benchmarks ([`bench`]), and the load
//! generator's engine ([`loadgen`]).
//!
//! Architecture invariant: no test-only dependency (no WebDriver client, no certificate generator), so that the
//! README's first command, `cargo run --release --bin storesync-demo`, compiles only what the demo needs.

pub mod bench;
pub mod journal;
pub mod loadgen;
pub mod proc;
pub mod sales;
