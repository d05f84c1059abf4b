//! Checks of request fields that several endpoints share: store and till ids, release versions and target triples,
//! and the length of free-text notes. Each refusal is a 422 [`ApiError`] with its own code.

use axum::http::StatusCode;

use super::error::{ApiError, invalid};
use crate::secrets;
use crate::storage::TillId;

/// The most characters of a halt reason, or of a report's reason or detail.
pub(crate) const MAX_NOTE_CHARS: usize = 2000;

/// A store and till id pair, each 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
pub(crate) fn check_ids(store: &str, till: &str) -> Result<TillId, ApiError> {
    for (what, id) in [("store", store), ("till", till)] {
        if !secrets::valid_id(id) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_id",
                format!("{what} id must be 1 to 64 characters of A-Z a-z 0-9 . _ -"),
            ));
        }
    }
    Ok(TillId { store: store.to_owned(), till: till.to_owned() })
}

/// A target triple: 1 to 100 characters of `A-Z a-z 0-9 _ - .`.
pub(crate) fn check_target(target: &str) -> Result<(), ApiError> {
    let ok = !target.is_empty()
        && target.len() <= 100
        && target.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if ok { Ok(()) } else { Err(invalid("invalid_target", format!("{target:?} is not a target triple"))) }
}

/// A semantic version in `field`.
pub(crate) fn check_version(field: &str, version: &str) -> Result<(), ApiError> {
    storesync_shared::release::version(version)
        .map(|_| ())
        .map_err(|e| invalid("invalid_version", format!("{field}: {e}")))
}
