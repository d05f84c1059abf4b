//! The SQLite backend of [`Storage`].
//!
//! Design note:
//! - On disk: one file `<data-dir>/hub.db` in WAL mode with `synchronous=FULL`, so a COMMIT that returned is on
//!   disk and an upload is acknowledged only after it. `busy_timeout` lets the `enroll-code`/`revoke` CLI verbs
//!   write to the database while `serve` runs.
//! - Connections: one writer connection behind a `std::sync::Mutex` (SQLite has one writer anyway) and a small
//!   pool of reader connections. The mutexes are only taken inside blocking calls (`spawn_blocking`), never
//!   across an `.await`.
//! - Every write runs in `BEGIN IMMEDIATE`, so the till row read at the start of an ingest is still current at its
//!   COMMIT; the conditional `UPDATE tills ... WHERE hub_seq = ?` and the unique indexes on `events` are the
//!   real guards, so the same logic stays correct for a multi-instance PostgreSQL backend.
//! - Tables: `tills` (chain head and health per till), `credentials` and `enrollments` (SHA-256 digests only),
//!   `events` (`hub_pos INTEGER PRIMARY KEY AUTOINCREMENT` is the global hub order, never reused), and
//!   `enroll_failures` (failed enrolment attempts per client, pruned as they age out).
//! - Recovery: nothing to do beyond SQLite's own WAL recovery; all state is in the database.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use storesync_shared::genesis_hash;
use storesync_shared::wire::{MAX_BATCH_EVENTS, TillState, UploadAck, UploadRequest};
use uuid::Uuid;

use super::{IngestError, NewEnrollment, RedeemError, Storage, StorageError, StoreView, StoredEvent, TillId, TillView};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS tills (
    store TEXT NOT NULL,
    till TEXT NOT NULL,
    journal_id TEXT,
    hub_seq INTEGER NOT NULL DEFAULT 0,
    last_hash TEXT NOT NULL,
    enrolled_at INTEGER,
    revoked_at INTEGER,
    last_seen INTEGER,
    reported_seq INTEGER NOT NULL DEFAULT 0,
    backlog INTEGER NOT NULL DEFAULT 0,
    oldest_unsynced_age_s INTEGER NOT NULL DEFAULT 0,
    agent_version TEXT NOT NULL DEFAULT '',
    chain_ok INTEGER NOT NULL DEFAULT 1,
    last_error TEXT,
    PRIMARY KEY (store, till)
);
CREATE TABLE IF NOT EXISTS credentials (
    hash TEXT PRIMARY KEY,
    store TEXT NOT NULL,
    till TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX IF NOT EXISTS credentials_till ON credentials (store, till);
CREATE TABLE IF NOT EXISTS enrollments (
    code_hash TEXT PRIMARY KEY,
    store TEXT NOT NULL,
    till TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
);
CREATE TABLE IF NOT EXISTS events (
    hub_pos INTEGER PRIMARY KEY AUTOINCREMENT,
    store TEXT NOT NULL,
    till TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_till_seq ON events (store, till, seq);
CREATE UNIQUE INDEX IF NOT EXISTS events_till_event_id ON events (store, till, event_id);
CREATE INDEX IF NOT EXISTS events_store_pos ON events (store, hub_pos);
CREATE TABLE IF NOT EXISTS enroll_failures (
    id INTEGER PRIMARY KEY,
    client TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS enroll_failures_client ON enroll_failures (client, at);
"#;

const READ_POOL_MAX: usize = 4;
/// Failed-attempt rows older than this are pruned on the next failure.
const FAILURE_RETENTION_S: i64 = 24 * 3600;

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

/// The SQLite [`Storage`].
pub struct SqliteStorage {
    path: std::path::PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStorage").field("path", &self.path).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock dropped its transaction (rolled back), so the connection is still sound.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn open_connection(path: &Path) -> Result<Connection, StorageError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

impl SqliteStorage {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStorage, StorageError> {
        let writer = open_connection(path)?;
        writer.execute_batch(SCHEMA)?;
        Ok(SqliteStorage { path: path.to_owned(), writer: Mutex::new(writer), readers: Mutex::new(Vec::new()) })
    }

    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StorageError>) -> Result<T, StorageError> {
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

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The chain head of a till as read inside a write transaction.
struct Head {
    journal_id: Option<Uuid>,
    hub_seq: u64,
    last_hash: String,
}

fn read_head(conn: &Connection, till: &TillId) -> Result<Option<Head>, rusqlite::Error> {
    conn.query_row(
        "SELECT journal_id, hub_seq, last_hash FROM tills WHERE store = ?1 AND till = ?2",
        params![till.store, till.till],
        |r| {
            let jid: Option<String> = r.get(0)?;
            Ok(Head {
                journal_id: jid.and_then(|s| Uuid::parse_str(&s).ok()),
                hub_seq: to_u64(r.get(1)?),
                last_hash: r.get(2)?,
            })
        },
    )
    .optional()
}

/// Checks the shape of a batch that needs no database: size, seqs from 1, consecutive.
fn check_shape(req: &UploadRequest) -> Result<(), IngestError> {
    if req.events.len() > MAX_BATCH_EVENTS {
        return Err(IngestError::BatchTooLarge { n: req.events.len(), max: MAX_BATCH_EVENTS });
    }
    if req.events.first().is_some_and(|e| e.seq == 0) {
        return Err(IngestError::ZeroSeq);
    }
    for pair in req.events.windows(2) {
        if pair[0].seq.checked_add(1) != Some(pair[1].seq) {
            return Err(IngestError::NotConsecutive { seq: pair[1].seq });
        }
    }
    Ok(())
}

/// Applies a batch to the till's events (inside the caller's savepoint). Returns the new head, or the old one.
fn ingest(
    conn: &Connection,
    till: &TillId,
    head: &Head,
    req: &UploadRequest,
    now: i64,
) -> Result<UploadAck, IngestError> {
    check_shape(req)?;
    if let Some(recorded) = head.journal_id
        && head.hub_seq > 0
        && recorded != req.journal_id
    {
        return Err(IngestError::JournalMismatch { recorded, sent: req.journal_id });
    }
    let unchanged = UploadAck { acked_through: head.hub_seq, last_hash: head.last_hash.clone() };
    let (Some(first), Some(last)) = (req.events.first(), req.events.last()) else {
        return Ok(unchanged); // a heartbeat
    };
    if first.seq > head.hub_seq + 1 {
        return Err(IngestError::SeqGap { first: first.seq, expected: head.hub_seq + 1 });
    }
    // The part of the batch the hub already holds must be exactly what it holds (else it is a fork).
    let known = req.events.iter().take_while(|e| e.seq <= head.hub_seq);
    {
        let mut stmt =
            conn.prepare_cached("SELECT event_id, hash FROM events WHERE store = ?1 AND till = ?2 AND seq = ?3")?;
        for e in known {
            let stored: Option<(String, String)> = stmt
                .query_row(params![till.store, till.till, to_i64(e.seq)], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let same = stored.is_some_and(|(id, hash)| hash == e.hash && id == e.event_id.to_string());
            if !same {
                return Err(IngestError::SequenceRegression { seq: e.seq });
            }
        }
    }
    if last.seq <= head.hub_seq {
        return Ok(unchanged); // a duplicate of what is stored
    }
    let fresh = req.events.iter().skip_while(|e| e.seq <= head.hub_seq);
    let mut prev_seq = head.hub_seq;
    let mut prev_hash = head.last_hash.as_str();
    let mut insert = conn.prepare_cached(
        "INSERT INTO events (store, till, seq, event_id, kind, occurred_at, body, prev_hash, hash, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for e in fresh {
        e.verify(&till.store, &till.till, (prev_seq, prev_hash))
            .map_err(|err| IngestError::ChainBroken { seq: err.seq(), detail: err.to_string() })?;
        let body = String::from_utf8(storesync_shared::canonical_json(&e.body))
            .map_err(|_| IngestError::ChainBroken { seq: e.seq, detail: "body is not UTF-8".into() })?;
        let res = insert.execute(params![
            till.store,
            till.till,
            to_i64(e.seq),
            e.event_id.to_string(),
            e.kind.as_str(),
            e.occurred_at,
            body,
            e.prev_hash,
            e.hash,
            now,
        ]);
        if let Err(err) = res {
            if err.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) {
                let stored_seq: Option<i64> = conn
                    .query_row(
                        "SELECT seq FROM events WHERE store = ?1 AND till = ?2 AND event_id = ?3",
                        params![till.store, till.till, e.event_id.to_string()],
                        |r| r.get(0),
                    )
                    .optional()?;
                return match stored_seq {
                    Some(s) => {
                        Err(IngestError::DuplicateEventId { seq: e.seq, event_id: e.event_id, stored_seq: to_u64(s) })
                    }
                    // The seq itself was taken: another writer got here first.
                    None => Err(IngestError::Storage(StorageError::Conflict)),
                };
            }
            return Err(err.into());
        }
        prev_seq = e.seq;
        prev_hash = &e.hash;
    }
    let changed = conn.execute(
        "UPDATE tills SET hub_seq = ?1, last_hash = ?2, journal_id = ?3
         WHERE store = ?4 AND till = ?5 AND hub_seq = ?6",
        params![to_i64(prev_seq), prev_hash, req.journal_id.to_string(), till.store, till.till, to_i64(head.hub_seq)],
    )?;
    if changed != 1 {
        return Err(IngestError::Storage(StorageError::Conflict));
    }
    Ok(UploadAck { acked_through: prev_seq, last_hash: prev_hash.to_owned() })
}

impl Storage for SqliteStorage {
    fn create_enrollment(&self, e: &NewEnrollment) -> Result<(), StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO enrollments (code_hash, store, till, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![e.code_hash, e.till.store, e.till.till, e.created_at, e.expires_at],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO tills (store, till, last_hash) VALUES (?1, ?2, ?3)",
            params![e.till.store, e.till.till, genesis_hash(&e.till.store, &e.till.till)],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn redeem_enrollment(
        &self,
        code_hash: &str,
        credential_hash: &str,
        agent_version: &str,
        now: i64,
    ) -> Result<TillId, RedeemError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row: Option<(String, String, i64, Option<i64>)> = tx
            .query_row(
                "SELECT store, till, expires_at, used_at FROM enrollments WHERE code_hash = ?1",
                params![code_hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((store, till, expires_at, used_at)) = row else {
            return Err(RedeemError::InvalidCode);
        };
        if used_at.is_some() {
            return Err(RedeemError::Used);
        }
        if now >= expires_at {
            return Err(RedeemError::Expired);
        }
        let used = tx.execute(
            "UPDATE enrollments SET used_at = ?1 WHERE code_hash = ?2 AND used_at IS NULL",
            params![now, code_hash],
        )?;
        if used != 1 {
            return Err(RedeemError::Used);
        }
        tx.execute(
            "UPDATE credentials SET revoked_at = ?1 WHERE store = ?2 AND till = ?3 AND revoked_at IS NULL",
            params![now, store, till],
        )?;
        tx.execute(
            "INSERT INTO credentials (hash, store, till, issued_at) VALUES (?1, ?2, ?3, ?4)",
            params![credential_hash, store, till, now],
        )?;
        tx.execute(
            "INSERT INTO tills (store, till, last_hash, enrolled_at, agent_version) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (store, till) DO UPDATE SET enrolled_at = ?4, revoked_at = NULL, agent_version = ?5",
            params![store, till, genesis_hash(&store, &till), now, agent_version],
        )?;
        tx.commit()?;
        Ok(TillId { store, till })
    }

    fn authenticate(&self, credential_hash: &str) -> Result<Option<TillId>, StorageError> {
        self.with_reader(|conn| {
            Ok(conn
                .query_row(
                    "SELECT store, till FROM credentials WHERE hash = ?1 AND revoked_at IS NULL",
                    params![credential_hash],
                    |r| Ok(TillId { store: r.get(0)?, till: r.get(1)? }),
                )
                .optional()?)
        })
    }

    fn revoke(&self, till: &TillId, now: i64) -> Result<bool, StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let known = tx.execute(
            "UPDATE tills SET revoked_at = ?1 WHERE store = ?2 AND till = ?3",
            params![now, till.store, till.till],
        )?;
        tx.execute(
            "UPDATE credentials SET revoked_at = ?1 WHERE store = ?2 AND till = ?3 AND revoked_at IS NULL",
            params![now, till.store, till.till],
        )?;
        // Outstanding codes would let a revoked till straight back in.
        tx.execute(
            "UPDATE enrollments SET used_at = ?1 WHERE store = ?2 AND till = ?3 AND used_at IS NULL",
            params![now, till.store, till.till],
        )?;
        tx.commit()?;
        Ok(known == 1)
    }

    fn append_batch(&self, till: &TillId, req: &UploadRequest, now: i64) -> Result<UploadAck, IngestError> {
        let mut conn = lock(&self.writer);
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(head) = read_head(&tx, till)? else {
            return Err(IngestError::UnknownTill);
        };
        let outcome = {
            let sp = tx.savepoint()?;
            let outcome = ingest(&sp, till, &head, req, now);
            if outcome.is_ok() {
                sp.commit()?;
            } // else dropped: rolled back, nothing of the batch stays
            outcome
        };
        let appended = matches!(&outcome, Ok(ack) if ack.acked_through > head.hub_seq);
        let (chain_ok, last_error): (Option<bool>, Option<String>) = match &outcome {
            Ok(_) if appended => (Some(true), None),
            Ok(_) => (None, None),
            Err(IngestError::Storage(_)) => (None, None),
            Err(e) if e.breaks_chain() => (Some(false), Some(format!("{}: {e}", e.code()))),
            Err(e) => (None, Some(format!("{}: {e}", e.code()))),
        };
        if let Err(IngestError::Storage(_)) = &outcome {
            return outcome; // the transaction itself is suspect: roll everything back
        }
        tx.execute(
            "UPDATE tills SET last_seen = ?1, backlog = ?2, oldest_unsynced_age_s = ?3, reported_seq = ?4,
                agent_version = CASE WHEN ?5 = '' THEN agent_version ELSE ?5 END,
                chain_ok = COALESCE(?6, chain_ok),
                last_error = CASE WHEN ?7 THEN NULL ELSE COALESCE(?8, last_error) END
             WHERE store = ?9 AND till = ?10",
            params![
                now,
                to_i64(req.backlog),
                to_i64(req.oldest_unsynced_age_s),
                to_i64(req.last_seq),
                req.agent_version,
                chain_ok,
                appended,
                last_error,
                till.store,
                till.till
            ],
        )?;
        tx.commit()?;
        outcome
    }

    fn till_state(&self, till: &TillId) -> Result<Option<TillState>, StorageError> {
        self.with_reader(|conn| {
            let head = read_head(conn, till)?;
            Ok(head.map(|h| TillState {
                store_id: till.store.clone(),
                till_id: till.till.clone(),
                journal_id: h.journal_id,
                hub_seq: h.hub_seq,
                last_hash: h.last_hash,
            }))
        })
    }

    fn list_stores(&self) -> Result<Vec<StoreView>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT store, till, last_seen, reported_seq, hub_seq, backlog, oldest_unsynced_age_s,
                        agent_version, chain_ok, last_error, enrolled_at IS NOT NULL, revoked_at IS NOT NULL
                 FROM tills ORDER BY store, till",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    TillView {
                        till: r.get(1)?,
                        last_seen: r.get(2)?,
                        last_seq: to_u64(r.get(3)?),
                        hub_seq: to_u64(r.get(4)?),
                        backlog: to_u64(r.get(5)?),
                        oldest_unsynced_age_s: to_u64(r.get(6)?),
                        version: r.get(7)?,
                        chain_ok: r.get(8)?,
                        last_error: r.get(9)?,
                        enrolled: r.get(10)?,
                        revoked: r.get(11)?,
                    },
                ))
            })?;
            let mut out: Vec<StoreView> = Vec::new();
            for row in rows {
                let (store, till) = row?;
                match out.last_mut() {
                    Some(s) if s.store == store => s.tills.push(till),
                    _ => out.push(StoreView { store, tills: vec![till] }),
                }
            }
            Ok(out)
        })
    }

    fn list_events(&self, store: Option<&str>, after: i64, limit: usize) -> Result<Vec<StoredEvent>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT hub_pos, event_id, store, till, seq, kind, occurred_at, body, hash FROM events
                 WHERE hub_pos > ?1 AND (?2 IS NULL OR store = ?2) ORDER BY hub_pos LIMIT ?3",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![after, store, limit], |r| {
                let id: String = r.get(1)?;
                Ok(StoredEvent {
                    hub_pos: r.get(0)?,
                    event_id: Uuid::parse_str(&id).unwrap_or_default(),
                    store: r.get(2)?,
                    till: r.get(3)?,
                    seq: to_u64(r.get(4)?),
                    kind: r.get(5)?,
                    occurred_at: r.get(6)?,
                    body: r.get(7)?,
                    hash: r.get(8)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn record_failed_attempt(&self, client: &str, now: i64) -> Result<(), StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("INSERT INTO enroll_failures (client, at) VALUES (?1, ?2)", params![client, now])?;
        tx.execute("DELETE FROM enroll_failures WHERE at < ?1", params![now - FAILURE_RETENTION_S])?;
        tx.commit()?;
        Ok(())
    }

    fn failed_attempts_since(&self, client: &str, since: i64) -> Result<(u32, Option<i64>), StorageError> {
        self.with_reader(|conn| {
            Ok(conn.query_row(
                "SELECT COUNT(*), MIN(at) FROM enroll_failures WHERE client = ?1 AND at >= ?2",
                params![client, since],
                |r| Ok((r.get::<_, u32>(0)?, r.get(1)?)),
            )?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = 0;
        crate::storage::conformance::run_all(|| {
            n += 1;
            SqliteStorage::open(&dir.path().join(format!("hub-{n}.db"))).unwrap()
        });
    }

    #[test]
    fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let till = {
            let s = SqliteStorage::open(&path).unwrap();
            crate::storage::conformance::enrolled_with_events(&s, 3)
        };
        let s = SqliteStorage::open(&path).unwrap();
        assert_eq!(s.till_state(&till).unwrap().unwrap().hub_seq, 3);
        assert_eq!(s.list_events(None, 0, 100).unwrap().len(), 3);
    }
}
