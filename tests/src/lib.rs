//! Helpers shared by the end-to-end tests and the bench binaries: finding and driving the real storesync
//! binaries, and making valid canonical events.

pub mod bench;
pub mod fault;
pub mod proc;
pub mod sales;
