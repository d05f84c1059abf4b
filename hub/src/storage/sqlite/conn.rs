//! Connections and error mapping of the SQLite backend: the storage type itself, opening it, and the conversions of the
//! driver's errors.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, ErrorCode};

use super::schema::migrate;
use crate::storage::docs::CompactError;
use crate::storage::enrolment::RedeemError;
use crate::storage::error::StorageError;
use crate::storage::ingest::IngestError;
use crate::storage::releases::RolloutError;

pub(super) const READ_POOL_MAX: usize = 4;

impl From<rusqlite::Error> for StorageError {
    fn from(err: rusqlite::Error) -> Self {
        match err.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StorageError::Busy,
            _ => StorageError::Backend(Box::new(err)),
        }
    }
}

impl From<rusqlite::Error> for IngestError {
    fn from(err: rusqlite::Error) -> Self {
        IngestError::Storage(err.into())
    }
}

impl From<rusqlite::Error> for RedeemError {
    fn from(err: rusqlite::Error) -> Self {
        RedeemError::Storage(err.into())
    }
}

impl From<rusqlite::Error> for RolloutError {
    fn from(err: rusqlite::Error) -> Self {
        RolloutError::Storage(err.into())
    }
}

impl From<rusqlite::Error> for CompactError {
    fn from(err: rusqlite::Error) -> Self {
        CompactError::Storage(err.into())
    }
}

/// The SQLite [`Storage`].
pub struct SqliteStorage {
    pub(super) path: std::path::PathBuf,
    pub(super) writer: Mutex<Connection>,
    pub(super) readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStorage").field("path", &self.path).finish_non_exhaustive()
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock dropped its transaction (rolled back), so the connection is still sound.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(super) fn open_connection(path: &Path) -> Result<Connection, StorageError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// The writer connection's page cache, in KiB (SQLite's default is 2,000 KiB). A 1,000-event batch touches pages
/// of four b-trees, the UUID index at random places; with the default cache the writer spilled dirty pages
/// mid-transaction and re-read index pages from the OS for every batch.
pub(super) const WRITER_CACHE_KIB: i64 = 64 * 1024;

impl SqliteStorage {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStorage, StorageError> {
        let mut writer = open_connection(path)?;
        writer.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
        migrate(&mut writer)?;
        Ok(SqliteStorage { path: path.to_owned(), writer: Mutex::new(writer), readers: Mutex::new(Vec::new()) })
    }

    pub(super) fn with_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let pooled = lock(&self.readers).pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_connection(&self.path)?,
        };
        let out = f(&conn);
        let mut pool = lock(&self.readers);
        if pool.len() < READ_POOL_MAX {
            pool.push(conn);
        }
        out
    }
}

pub(super) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn json_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

pub(super) fn backend(detail: String) -> StorageError {
    StorageError::Backend(detail.into())
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StorageError> {
    serde_json::from_str(text).map_err(|e| backend(format!("stored {what} is not valid: {e}")))
}
