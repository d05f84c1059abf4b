//! The error every storage call can answer: a failure of the backend itself.

/// A failure of the storage backend itself.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database is locked by another writer for longer than the busy timeout: retry later.
    #[error("database is busy")]
    Busy,
    /// Another writer changed the till while this transaction ran: retry.
    #[error("concurrent update of the till, retry")]
    Conflict,
    #[error("storage backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StorageError {
    /// Whether retrying the same call later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Busy | StorageError::Conflict)
    }
}
