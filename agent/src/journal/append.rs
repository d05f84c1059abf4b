//! What a journal write answers: its outcome, or why it was refused.
//!
//! These are domain answers: the callers (the POS API, the drop folder, sync) decide what each means to them; the
//! POS API maps them to HTTP status codes in its own error module.

use uuid::Uuid;

/// Where an event stands in the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub event_id: Uuid,
    pub seq: u64,
    /// The entry's chain hash.
    pub hash: String,
}

/// The outcome of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Newly journaled.
    Created(Appended),
    /// The same `event_id` with the same body was journaled before; nothing was written.
    Existing(Appended),
}

/// Why a journal write was refused. Nothing of a refused write was journaled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The request conflicts with what is journaled (an `event_id` journaled with another body, a second void, ...).
    #[error("{code}: {detail}")]
    Conflict { code: &'static str, detail: String },
    /// The request is not valid here: it refers to something that does not exist, or cannot be read.
    #[error("{code}: {detail}")]
    Invalid { code: &'static str, detail: String },
    /// The journal cannot be written now (disk full, read-only, I/O error, overload, stopping). Retryable.
    #[error("journal unavailable: {0}")]
    Unavailable(String),
}
