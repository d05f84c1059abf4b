//! The smallest rules of an event, shared by every body type: the schema version, the size limits, the error a
//! refused body carries, and the checks of a SKU and a timestamp. A leaf of the crate: [`crate::event`] (the sale,
//! return, transfer… bodies) and [`crate::reservation`] (the reservation bodies) both build on it, and
//! [`crate::event`] re-exports it, so `event::check_sku` and `rules::check_sku` are the same function.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The only wire schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
/// The most lines one sale, return or transfer may carry.
pub const MAX_LINES: usize = 500;
/// The most characters a SKU may have.
pub const MAX_SKU_CHARS: usize = 64;
/// The largest quantity one line or adjustment may move.
pub const MAX_QTY: i64 = 1_000_000;
/// The most characters of free text (reasons, tender methods, ids of other systems).
pub const MAX_TEXT_CHARS: usize = 200;

/// A rejected body: a stable machine-readable `code` and a precise human `detail`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ValidationError {
    pub code: &'static str,
    pub detail: String,
}

impl ValidationError {
    pub fn new(code: &'static str, detail: impl Into<String>) -> Self {
        ValidationError { code, detail: detail.into() }
    }
}

/// Parses an RFC 3339 timestamp with an explicit offset.
pub fn parse_timestamp(s: &str) -> Option<OffsetDateTime> {
    if s.len() > 64 {
        return None;
    }
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// Checks a SKU: non-empty, at most 64 characters, no control characters.
pub fn check_sku(sku: &str, field: &str) -> Result<(), ValidationError> {
    if sku.is_empty() || sku.chars().count() > MAX_SKU_CHARS || sku.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "invalid_sku",
            format!("{field} must be 1 to {MAX_SKU_CHARS} characters with no control characters, got {sku:?}"),
        ));
    }
    Ok(())
}
