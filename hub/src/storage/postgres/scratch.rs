//! A throwaway PostgreSQL schema for tests: made on demand, dropped with its value.

use postgres::NoTls;
use uuid::Uuid;

use super::error::backend;
use super::settings::redact_url;
use crate::storage::error::StorageError;

/// A schema of its own in an existing database, made for a test or a trial run and dropped (with everything in
/// it) when this value is dropped. [`ScratchSchema::url`] points a hub at it. Usable from async code too: its own
/// statements run on a thread of their own.
pub struct ScratchSchema {
    pub(super) admin: String,
    pub(super) name: String,
}

impl std::fmt::Debug for ScratchSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScratchSchema").field("database", &redact_url(&self.admin)).field("name", &self.name).finish()
    }
}

impl ScratchSchema {
    /// Creates `t_<random>` in the database `url` names.
    pub fn create(url: &str) -> Result<ScratchSchema, StorageError> {
        let name = format!("t_{}", Uuid::new_v4().simple());
        admin_statement(url, &format!("CREATE SCHEMA {name}"))?;
        Ok(ScratchSchema { admin: url.to_owned(), name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The connection string whose sessions use this schema (`options=-csearch_path=<name>`).
    pub fn url(&self) -> String {
        if self.admin.contains("://") {
            let sep = if self.admin.contains('?') { '&' } else { '?' };
            format!("{}{sep}options=-csearch_path%3D{}", self.admin, self.name)
        } else {
            format!("{} options='-csearch_path={}'", self.admin, self.name)
        }
    }
}

/// Runs one statement on a connection of its own, on a thread of its own (the blocking client must not run on an
/// async runtime's thread).
pub(super) fn admin_statement(url: &str, sql: &str) -> Result<(), StorageError> {
    let config: postgres::Config = url.parse().map_err(|e| backend(format!("invalid database URL: {e}")))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<(), StorageError> { Ok(config.connect(NoTls)?.batch_execute(sql)?) })
            .join()
            .unwrap_or_else(|_| Err(backend("the statement's thread panicked".into())))
    })
}

impl Drop for ScratchSchema {
    fn drop(&mut self) {
        if let Err(e) = admin_statement(&self.admin, &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name)) {
            tracing::warn!(schema = %self.name, error = %e, "dropping a scratch schema failed");
        }
    }
}
