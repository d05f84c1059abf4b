//! The hub's one time formatter: unix seconds to RFC 3339 text, as every answer, payload and view shows times.

/// `t` (unix seconds, UTC) as RFC 3339, e.g. `2027-01-01T00:00:00Z`; empty when out of range.
pub fn rfc3339(t: i64) -> String {
    instant(t).and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok()).unwrap_or_default()
}

/// `t` (unix seconds) as an instant; `None` when out of range.
pub fn instant(t: i64) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(t).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_and_gives_up_quietly() {
        assert_eq!(rfc3339(1_798_761_600), "2027-01-01T00:00:00Z");
        assert_eq!(rfc3339(i64::MAX), "");
        assert!(instant(i64::MIN).is_none());
    }
}
