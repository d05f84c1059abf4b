//! Connection settings of the PostgreSQL backend, and the redaction of its URL for logs.

use std::time::Duration;

/// Connections per hub instance unless configured.
pub const DEFAULT_POOL_SIZE: u32 = 16;

/// How long a storage call waits for a pooled connection before it is answered [`StorageError::Busy`].
pub const POOL_WAIT: Duration = Duration::from_secs(5);

/// Runs of one transaction that hit a serialization failure or a deadlock, before [`StorageError::Busy`].
pub const TX_ATTEMPTS: u32 = 5;

/// Where the hub's PostgreSQL database is and how many connections one instance may hold.
#[derive(Clone, PartialEq, Eq)]
pub struct PgSettings {
    /// A libpq-style connection string: `postgres://user:password@host:port/db?options=...` or
    /// `host=... user=... dbname=...`.
    pub url: String,
    pub pool_size: u32,
}

impl PgSettings {
    pub fn new(url: impl Into<String>) -> PgSettings {
        PgSettings { url: url.into(), pool_size: DEFAULT_POOL_SIZE }
    }
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings").field("url", &redact_url(&self.url)).field("pool_size", &self.pool_size).finish()
    }
}

/// The connection string with any password replaced by `***`, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let hide_params = |text: &str, sep: char| -> String {
        text.split(sep)
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.trim().eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(&sep.to_string())
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        // key=value form; a quoted password with spaces is hidden up to its first space, so hide the rest too.
        return match url.to_ascii_lowercase().find("password") {
            Some(at) => format!("{}password=***", &url[..at]),
            None => hide_params(url, ' '),
        };
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => format!("{path}?{}", hide_params(query, '&')),
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}
