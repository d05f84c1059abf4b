//! Helpers shared by the end-to-end tests and the bench binaries: finding and driving the real storesync
//! binaries, making valid canonical events and hash-chained journals, and the load generator's engine.

pub mod bench;
pub mod fault;
pub mod journal;
pub mod loadgen;
pub mod proc;
pub mod sales;
