//! Helpers the end-to-end tests share: the in-process fault proxy ([`fault`]), and driving the real storesync
//! binaries ([`proc`]: `storesync_tools::proc` plus a test CA). Valid events and hash-chained journals come from the
//! tools crate, re-exported here under their old names.

pub mod fault;
pub mod proc;

pub use storesync_tools::{journal, sales};
