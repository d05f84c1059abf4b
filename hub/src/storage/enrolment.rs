//! Enrolment and credentials: one-time codes, till credentials (both stored as SHA-256 digests only) and failed
//! attempts ([`EnrolmentStore`]).

use super::error::StorageError;
use super::ingest::TillId;

/// A one-time enrolment code to be stored (by hash only).
#[derive(Debug, Clone)]
pub struct NewEnrollment {
    pub code_hash: String,
    pub till: TillId,
    pub created_at: i64,
    pub expires_at: i64,
}

/// Why an enrolment code was not redeemed.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    #[error("unknown enrolment code")]
    InvalidCode,
    #[error("enrolment code has expired")]
    Expired,
    #[error("enrolment code has already been used")]
    Used,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// See [`super::Storage`] for the contract every method keeps (one transaction, blocking).
pub trait EnrolmentStore: Send + Sync + 'static {
    /// Stores a one-time enrolment code and makes the till known (not yet enrolled).
    fn create_enrollment(&self, enrollment: &NewEnrollment) -> Result<(), StorageError>;

    /// Redeems a code: marks it used, revokes the till's previous credentials and stores the new one.
    fn redeem_enrollment(
        &self,
        code_hash: &str,
        credential_hash: &str,
        agent_version: &str,
        now: i64,
    ) -> Result<TillId, RedeemError>;

    /// The till owning an unrevoked credential with this hash.
    fn authenticate(&self, credential_hash: &str) -> Result<Option<TillId>, StorageError>;

    /// Revokes every credential of a till. Returns false when the till is unknown.
    fn revoke(&self, till: &TillId, now: i64) -> Result<bool, StorageError>;

    /// Counts one failed enrolment attempt from a client.
    fn record_failed_attempt(&self, client: &str, now: i64) -> Result<(), StorageError>;

    /// Failed attempts of a client at or after `since`: their count and the time of the oldest.
    fn failed_attempts_since(&self, client: &str, since: i64) -> Result<(u32, Option<i64>), StorageError>;
}
