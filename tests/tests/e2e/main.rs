//! End-to-end tests: the real binaries, real sockets on 127.0.0.1, real SQLite files in temp dirs.
//!
//! Build the binaries first: README's test command (`cargo build --workspace --bins && cargo nextest run --workspace`;
//! `cargo test --workspace` runs them too).

mod agent_crash;
mod agent_journal;
mod backpressure;
mod bopis;
mod bopis_postgres;
mod browser;
mod converge;
mod dashboard;
mod faults;
mod hub_postgres;
mod inbox;
mod loadgen;
mod metrics;
mod nats;
mod outage;
mod packages;
mod status_page;
mod update;
mod util;
mod webhooks;
mod windows;
