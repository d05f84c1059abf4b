//! Error mapping of the PostgreSQL backend: the driver's errors as the storage errors, and which of them a
//! transaction may run again for ([`TxFailure`]).

use postgres::error::SqlState;

use crate::storage::docs::CompactError;
use crate::storage::enrolment::RedeemError;
use crate::storage::error::StorageError;
use crate::storage::ingest::IngestError;
use crate::storage::releases::RolloutError;

pub(super) fn backend(detail: String) -> StorageError {
    StorageError::Backend(detail.into())
}

pub(super) fn is_code(err: &postgres::Error, codes: &[SqlState]) -> bool {
    err.code().is_some_and(|c| codes.contains(c))
}

impl From<postgres::Error> for StorageError {
    fn from(err: postgres::Error) -> Self {
        if is_code(
            &err,
            &[SqlState::T_R_SERIALIZATION_FAILURE, SqlState::T_R_DEADLOCK_DETECTED, SqlState::LOCK_NOT_AVAILABLE],
        ) {
            StorageError::Busy
        } else {
            StorageError::Backend(Box::new(err))
        }
    }
}

/// The errors a transaction body may return: they convert a PostgreSQL error, and say whether the transaction
/// lost a race that running it again can win (a serialization failure or a deadlock, mapped to
/// [`StorageError::Busy`]).
pub(super) trait TxFailure: From<StorageError> {
    fn busy(&self) -> bool;
}

impl TxFailure for StorageError {
    fn busy(&self) -> bool {
        matches!(self, StorageError::Busy)
    }
}

macro_rules! tx_failure {
    ($($t:ident),*) => {$(
        impl From<postgres::Error> for $t {
            fn from(err: postgres::Error) -> Self {
                $t::Storage(err.into())
            }
        }

        impl TxFailure for $t {
            fn busy(&self) -> bool {
                matches!(self, $t::Storage(StorageError::Busy))
            }
        }
    )*};
}

tx_failure!(IngestError, RedeemError, RolloutError, CompactError);
