//! The conformance suite every storage backend must pass, one file per trait.
//!
//! Design note: the cases are generic over [`crate::storage::Storage`] and take a factory that returns a fresh,
//! empty backend, so each backend runs exactly these cases by calling each file's `run` with its own factory, one
//! test per trait (`sqlite/tests.rs`, `postgres/tests.rs`). `support.rs` holds what the files share.

pub(crate) mod docs;
pub(crate) mod enrolment;
pub(crate) mod ingest;
pub(crate) mod outbox;
pub(crate) mod releases;
pub(crate) mod support;

pub(crate) use outbox::webhook;
pub(crate) use support::{chain, enrolled_with_events, journal, upload};
