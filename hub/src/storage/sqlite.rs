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
//! - Store documents: `store_docs` (per store: epoch, version, snapshot and the version it was taken at, change
//!   and byte counters), `doc_chunks` (`(store, version)` → the chunk that version added; deleted by a fold or a
//!   compaction), `sync_states` (`(store, till, epoch)` → `sync::State::encode()`), `hub_movements` (every
//!   head-office stock movement, kept forever: every epoch base sums them) and `epochs` (the current epoch's record
//!   per store: cuts, base, the journal part of the base, and the snapshot tills load).
//! - `quarantine` (`(store, till, seq)` → why, when, released when): events stored in the chain whose body this
//!   hub cannot process. The events table itself is never changed; quarantine is a side table.
//! - Self-update: `releases` (`(version, target)` → exact manifest bytes, signature, archive BLOB and the manifest
//!   fields listed to head office; never updated), `rollouts` (one row per target: the active rollout and its
//!   counters), `rollout_history` (rollouts replaced by a newer one, as `superseded`) and `update_reports` (every
//!   report a till sent, kept). Archives live in the database so a backup of `hub.db` is a backup of everything;
//!   an archive is read whole into memory to be served, which bounds releases to `max_release_bytes`.
//! - `till_progress` (`(store, till, at)` → the till's reported seq and the hub's seq then): one sample per till
//!   per `SAMPLE_SPACING_S` of uploads, written in the upload's transaction and pruned past `SAMPLE_KEEP_S`; the
//!   fleet view's trend and drain forecast. Not part of the journal: rows are deleted as they age out.
//! - Recovery: nothing to do beyond SQLite's own WAL recovery; all state is in the database.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use storesync_shared::event::EventKind;
use storesync_shared::genesis_hash;
use storesync_shared::wire::{TillState, UploadAck, UploadRequest};
use uuid::Uuid;

use super::{
    CompactError, CompactionInput, DeadLetter, DocLoad, DocMeta, DocWrite, EpochRecord, HealthChange, IngestError,
    NewEnrollment, NewRelease, NewRollout, NewSubscription, NewUpdateReport, OutboxEntry, ProgressSample, PutRelease,
    QuarantinedEvent, RedeemError, ReleaseInfo, ReleaseOutcome, ReplaySelector, ReportEffect, Rollout, RolloutError,
    SAMPLE_KEEP_S, SAMPLE_SPACING_S, Storage, StorageError, StoreView, StoredEvent, Subscription, TillId, TillSamples,
    TillView, UpdateCandidate, add_into, apply_report, apply_transition, check_batch_shape, health_change,
    newest_first, outcome_text,
};
use crate::rollout::{Stage, Transition};

/// Escrow and reservations: their own file (`sqlite_reservations.rs`), a child module so it shares the connections.
#[path = "sqlite_reservations.rs"]
mod reservations;

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
CREATE TABLE IF NOT EXISTS store_docs (
    store TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL DEFAULT 0,
    snapshot BLOB,
    snapshot_version INTEGER NOT NULL DEFAULT 0,
    changes_since_epoch INTEGER NOT NULL DEFAULT 0,
    saved_bytes INTEGER NOT NULL DEFAULT 0,
    chunks INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS doc_chunks (
    store TEXT NOT NULL,
    version INTEGER NOT NULL,
    bytes BLOB NOT NULL,
    PRIMARY KEY (store, version)
);
CREATE TABLE IF NOT EXISTS sync_states (
    store TEXT NOT NULL,
    till TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    state BLOB NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (store, till, epoch)
);
CREATE TABLE IF NOT EXISTS hub_movements (
    store TEXT NOT NULL,
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sku TEXT NOT NULL,
    delta INTEGER NOT NULL,
    reason TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS hub_movements_store ON hub_movements (store, sku);
CREATE TABLE IF NOT EXISTS epochs (
    store TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    cuts TEXT NOT NULL,
    base TEXT NOT NULL,
    journal_base TEXT NOT NULL,
    doc BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (store, epoch)
);
CREATE TABLE IF NOT EXISTS quarantine (
    store TEXT NOT NULL,
    till TEXT NOT NULL,
    seq INTEGER NOT NULL,
    reason TEXT NOT NULL,
    quarantined_at INTEGER NOT NULL,
    released_at INTEGER,
    PRIMARY KEY (store, till, seq)
);
CREATE TABLE IF NOT EXISTS releases (
    version TEXT NOT NULL,
    target TEXT NOT NULL,
    manifest BLOB NOT NULL,
    signature TEXT,
    archive BLOB NOT NULL,
    archive_sha256 TEXT NOT NULL,
    archive_size INTEGER NOT NULL,
    min_version TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    uploaded_at INTEGER NOT NULL,
    PRIMARY KEY (version, target)
);
CREATE TABLE IF NOT EXISTS rollouts (
    target TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    stage TEXT NOT NULL,
    canary_percent INTEGER NOT NULL,
    max_failures INTEGER NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    installed INTEGER NOT NULL DEFAULT 0,
    refused INTEGER NOT NULL DEFAULT 0,
    halted_reason TEXT,
    started_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rollout_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    version TEXT NOT NULL,
    stage TEXT NOT NULL,
    canary_percent INTEGER NOT NULL,
    max_failures INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    installed INTEGER NOT NULL,
    refused INTEGER NOT NULL,
    halted_reason TEXT,
    started_at INTEGER NOT NULL,
    ended_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS update_reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    store TEXT NOT NULL,
    till TEXT NOT NULL,
    version TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    running_version TEXT NOT NULL,
    reason TEXT,
    detail TEXT,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS update_reports_release ON update_reports (version, target);
CREATE TABLE IF NOT EXISTS till_progress (
    store TEXT NOT NULL,
    till TEXT NOT NULL,
    at INTEGER NOT NULL,
    reported_seq INTEGER NOT NULL,
    hub_seq INTEGER NOT NULL,
    PRIMARY KEY (store, till, at)
);
CREATE INDEX IF NOT EXISTS till_progress_at ON till_progress (at);
CREATE TABLE IF NOT EXISTS outbox (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    hub_pos INTEGER NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    kinds TEXT NOT NULL,
    stores TEXT NOT NULL,
    batch_size INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    stream TEXT NOT NULL DEFAULT '',
    subject_prefix TEXT NOT NULL DEFAULT '',
    cursor INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    last_error TEXT,
    last_delivery_at INTEGER,
    lease_owner TEXT,
    lease_until INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription TEXT NOT NULL,
    pos INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    dead_at INTEGER NOT NULL,
    replay_requested_at INTEGER,
    replayed_at INTEGER,
    UNIQUE (subscription, pos)
);
"#;

/// Fills the outbox of a database made before it existed: every stored, unquarantined event, in hub order. Runs
/// while the outbox is empty (so on a new database it inserts nothing).
const OUTBOX_BACKFILL: &str = "INSERT INTO outbox (hub_pos)
    SELECT e.hub_pos FROM events e
    WHERE NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.store = e.store AND q.till = e.till AND q.seq = e.seq
                      AND q.released_at IS NULL)
    ORDER BY e.hub_pos";

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

/// The writer connection's page cache, in KiB (SQLite's default is 2,000 KiB). A 1,000-event batch touches pages
/// of four b-trees, the UUID index at random places; with the default cache the writer spilled dirty pages
/// mid-transaction and re-read index pages from the OS for every batch.
const WRITER_CACHE_KIB: i64 = 64 * 1024;

/// Brings the schema up to date in one `BEGIN IMMEDIATE` transaction. Another process may have the database open
/// and be writing (a CLI verb such as `enroll-code` opens it beside a running `serve`), so the checks and the
/// changes they decide on must not be split by another writer's commit: the outbox backfill once raced a live
/// hub's first ingest and inserted positions that had just been queued.
fn migrate(conn: &mut Connection) -> Result<(), StorageError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA)?;
    tx.execute_batch(reservations::SCHEMA)?;
    let has_lease: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('subscriptions') WHERE name = 'lease_owner')",
        [],
        |r| r.get(0),
    )?;
    if !has_lease {
        // A database from before delivery leases.
        tx.execute_batch(
            "ALTER TABLE subscriptions ADD COLUMN lease_owner TEXT;
             ALTER TABLE subscriptions ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0;",
        )?;
    }
    let outbox_empty: bool = tx.query_row("SELECT NOT EXISTS (SELECT 1 FROM outbox)", [], |r| r.get(0))?;
    if outbox_empty {
        tx.execute(OUTBOX_BACKFILL, [])?;
    }
    tx.commit()?;
    Ok(())
}

impl SqliteStorage {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStorage, StorageError> {
        let mut writer = open_connection(path)?;
        writer.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
        migrate(&mut writer)?;
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

/// Applies a batch to the till's events (inside the caller's transaction or savepoint, which the caller rolls back
/// when this fails). Returns the new head, or the old one.
fn ingest(
    conn: &Connection,
    till: &TillId,
    head: &Head,
    req: &UploadRequest,
    now: i64,
) -> Result<UploadAck, IngestError> {
    check_batch_shape(req)?;
    if let Some(recorded) = head.journal_id
        && head.hub_seq > 0
        && recorded != req.journal_id
    {
        return Err(IngestError::JournalMismatch { recorded, sent: req.journal_id });
    }
    let unchanged = UploadAck { acked_through: head.hub_seq, last_hash: head.last_hash.clone(), quarantined: vec![] };
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
    let mut outbox = conn.prepare_cached("INSERT INTO outbox (hub_pos) VALUES (?1)")?;
    let mut quarantined = Vec::new();
    for e in fresh {
        let body = e
            .verify_link(&till.store, &till.till, (prev_seq, prev_hash))
            .map_err(|err| IngestError::ChainBroken { seq: err.seq(), detail: err.to_string() })?;
        let body = String::from_utf8(body)
            .map_err(|_| IngestError::ChainBroken { seq: e.seq, detail: "body is not UTF-8".into() })?;
        // The till journaled exactly this (the hash says so) but this hub cannot process it: store it in the
        // chain so nothing behind it waits, and hold it in quarantine (and out of the outbox until released).
        let held = e.check_body().err();
        if let Some(bad) = &held {
            conn.prepare_cached(
                "INSERT INTO quarantine (store, till, seq, reason, quarantined_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![till.store, till.till, to_i64(e.seq), bad.to_string(), now])?;
            quarantined.push(e.seq);
        }
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
        if held.is_none() {
            outbox.execute(params![conn.last_insert_rowid()])?;
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
    Ok(UploadAck { acked_through: prev_seq, last_hash: prev_hash.to_owned(), quarantined })
}

/// The columns [`subscription_row`] reads, from `subscriptions`.
const SUBSCRIPTION_SELECT: &str = "SELECT id, kind, url, secret, kinds, stores, batch_size, max_attempts, cursor,
        created_at, last_error, last_delivery_at, stream, subject_prefix FROM subscriptions";

fn subscription_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Subscription> {
    let list = |i: usize| -> rusqlite::Result<Vec<String>> {
        let text: String = r.get(i)?;
        Ok(serde_json::from_str(&text).unwrap_or_default())
    };
    Ok(Subscription {
        spec: NewSubscription {
            id: r.get(0)?,
            kind: r.get(1)?,
            url: r.get(2)?,
            secret: r.get(3)?,
            kinds: list(4)?,
            stores: list(5)?,
            batch_size: r.get(6)?,
            max_attempts: r.get(7)?,
            stream: r.get(12)?,
            subject_prefix: r.get(13)?,
        },
        cursor: r.get(8)?,
        created_at: r.get(9)?,
        last_error: r.get(10)?,
        last_delivery_at: r.get(11)?,
        lag: 0,
        dead_letters: 0,
    })
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

/// An outbox entry's columns: [`stored_event`]'s 0..=9 (an entry in the outbox is never held in quarantine),
/// then the outbox position and the time the event was stored.
const OUTBOX_SELECT: &str = "SELECT e.hub_pos, e.event_id, e.store, e.till, e.seq, e.kind, e.occurred_at, e.body,
        e.hash, 0, o.pos, e.received_at
     FROM outbox o JOIN events e ON e.hub_pos = o.hub_pos";

fn outbox_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxEntry> {
    Ok(OutboxEntry { pos: r.get(10)?, event: stored_event(r)?, received_at: r.get(11)? })
}

/// The columns [`stored_event`] reads, from `events`.
const EVENT_SELECT: &str = "SELECT hub_pos, event_id, store, till, seq, kind, occurred_at, body, hash,
        EXISTS (SELECT 1 FROM quarantine q WHERE q.store = events.store AND q.till = events.till
                AND q.seq = events.seq AND q.released_at IS NULL)
     FROM events";

/// A [`StoredEvent`] from columns 0..=9: hub_pos, event_id, store, till, seq, kind, occurred_at, body, hash,
/// quarantined.
fn stored_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
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
        quarantined: r.get(9)?,
    })
}

/// Records what an upload said about the till (last seen, backlog, version) and how it went (`chain_ok`,
/// `last_error`), in the upload's transaction.
fn record_health(
    conn: &Connection,
    till: &TillId,
    req: &UploadRequest,
    now: i64,
    head: &Head,
    outcome: &Result<UploadAck, IngestError>,
) -> Result<(), rusqlite::Error> {
    let HealthChange { appended, chain_ok, last_error, hub_seq } = health_change(head.hub_seq, outcome);
    conn.execute(
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
    conn.prepare_cached(
        "INSERT INTO till_progress (store, till, at, reported_seq, hub_seq)
         SELECT ?1, ?2, ?3, ?4, ?5 WHERE NOT EXISTS
           (SELECT 1 FROM till_progress WHERE store = ?1 AND till = ?2 AND at > ?3 - ?6)",
    )?
    .execute(params![till.store, till.till, now, to_i64(req.last_seq), to_i64(hub_seq), SAMPLE_SPACING_S])?;
    conn.prepare_cached("DELETE FROM till_progress WHERE store = ?1 AND till = ?2 AND at < ?3")?.execute(params![
        till.store,
        till.till,
        now - SAMPLE_KEEP_S
    ])?;
    Ok(())
}

/// A store's `store_docs` row: its meta and the version its snapshot was taken at.
fn read_doc_meta(conn: &Connection, store: &str) -> Result<Option<(DocMeta, u64)>, rusqlite::Error> {
    conn.query_row(
        "SELECT epoch, version, changes_since_epoch, saved_bytes, chunks, snapshot_version,
                COALESCE((SELECT length(e.doc) FROM epochs e WHERE e.store = d.store AND e.epoch = d.epoch), 0)
         FROM store_docs d WHERE store = ?1",
        params![store],
        |r| {
            Ok((
                DocMeta {
                    epoch: to_u64(r.get(0)?),
                    version: to_u64(r.get(1)?),
                    changes_since_epoch: to_u64(r.get(2)?),
                    saved_bytes: to_u64(r.get(3)?),
                    chunks: to_u64(r.get(4)?),
                    epoch_bytes: to_u64(r.get(6)?),
                },
                to_u64(r.get(5)?),
            ))
        },
    )
    .optional()
}

fn read_chunks(conn: &Connection, store: &str, after: u64) -> Result<Vec<Vec<u8>>, rusqlite::Error> {
    let mut stmt =
        conn.prepare_cached("SELECT bytes FROM doc_chunks WHERE store = ?1 AND version > ?2 ORDER BY version")?;
    let rows = stmt.query_map(params![store, to_i64(after)], |r| r.get::<_, Vec<u8>>(0))?;
    rows.collect()
}

fn read_snapshot(conn: &Connection, store: &str) -> Result<Option<Vec<u8>>, rusqlite::Error> {
    Ok(conn
        .query_row("SELECT snapshot FROM store_docs WHERE store = ?1", params![store], |r| {
            r.get::<_, Option<Vec<u8>>>(0)
        })
        .optional()?
        .flatten())
}

fn json_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

fn backend(detail: String) -> StorageError {
    StorageError::Backend(detail.into())
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StorageError> {
    serde_json::from_str(text).map_err(|e| backend(format!("stored {what} is not valid: {e}")))
}

/// An epoch's record and the journal part of its base (without head-office movements).
type EpochWithJournalBase = (EpochRecord, BTreeMap<String, i64>);

fn read_epoch(
    conn: &Connection,
    store: &str,
    epoch: Option<u64>,
) -> Result<Option<EpochWithJournalBase>, StorageError> {
    let row: Option<(i64, String, String, String, Vec<u8>)> = conn
        .query_row(
            "SELECT epoch, cuts, base, journal_base, doc FROM epochs
             WHERE store = ?1 AND (?2 IS NULL OR epoch = ?2) ORDER BY epoch DESC LIMIT 1",
            params![store, epoch.map(to_i64)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let Some((epoch, cuts, base, journal_base, doc)) = row else {
        return Ok(None);
    };
    Ok(Some((
        EpochRecord {
            epoch: to_u64(epoch),
            cuts: parse_json(&cuts, "epoch cuts")?,
            base: parse_json(&base, "epoch base")?,
            doc,
        },
        parse_json(&journal_base, "epoch journal base")?,
    )))
}

/// `(event_id, kind, body)` of one stored event.
type EventRow = (Uuid, EventKind, serde_json::Value);

fn event_row(id: &str, kind: &str, body: &str) -> Result<EventRow, CompactError> {
    let event_id = Uuid::parse_str(id).map_err(|e| CompactError::BadEvent(format!("event id {id:?}: {e}")))?;
    let kind = EventKind::parse(kind).ok_or_else(|| CompactError::BadEvent(format!("event kind {kind:?}")))?;
    let body = serde_json::from_str(body).map_err(|e| CompactError::BadEvent(format!("body of {event_id}: {e}")))?;
    Ok((event_id, kind, body))
}

/// The stock effect of a till's events in `(after, through]`; voids of earlier events are resolved from storage.
fn till_effects(
    conn: &Connection,
    store: &str,
    till: &str,
    after: u64,
    through: u64,
) -> Result<BTreeMap<String, i64>, CompactError> {
    let rows: Vec<(String, String, String)> = {
        let mut stmt = conn.prepare_cached(
            "SELECT event_id, kind, body FROM events WHERE store = ?1 AND till = ?2 AND seq > ?3 AND seq <= ?4
             ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![store, till, to_i64(after), to_i64(through)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        rows.collect::<Result<_, _>>().map_err(StorageError::from)?
    };
    let events = rows.iter().map(|(id, kind, body)| event_row(id, kind, body)).collect::<Result<Vec<_>, _>>()?;
    let mut lookup_err: Option<CompactError> = None;
    let mut lookup = |id: Uuid| -> Option<(EventKind, serde_json::Value)> {
        let row: Result<Option<(String, String)>, rusqlite::Error> = conn
            .query_row(
                "SELECT kind, body FROM events WHERE store = ?1 AND till = ?2 AND event_id = ?3",
                params![store, till, id.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional();
        match row {
            Ok(Some((kind, body))) => match event_row(&id.to_string(), &kind, &body) {
                Ok((_, k, b)) => Some((k, b)),
                Err(e) => {
                    lookup_err = Some(e);
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                lookup_err = Some(CompactError::Storage(e.into()));
                None
            }
        }
    };
    let effects = storesync_shared::crdt::journal_effects(events, &mut lookup)
        .map_err(|e| CompactError::BadEvent(e.to_string()))?;
    match lookup_err {
        Some(e) => Err(e),
        None => Ok(effects),
    }
}

const ROLLOUT_COLUMNS: &str = "target, version, stage, canary_percent, max_failures, failures, installed, refused,
    halted_reason, started_at, updated_at";

fn rollout_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Rollout> {
    let stage: String = r.get(2)?;
    Ok(Rollout {
        target: r.get(0)?,
        version: r.get(1)?,
        // An unknown stage (written by a newer hub) offers nothing.
        stage: Stage::parse(&stage).unwrap_or(Stage::Halted),
        canary_percent: u8::try_from(r.get::<_, i64>(3)?.clamp(0, 100)).unwrap_or(0),
        max_failures: u32::try_from(r.get::<_, i64>(4)?).unwrap_or(u32::MAX),
        failures: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(u32::MAX),
        installed: to_u64(r.get(6)?),
        refused: to_u64(r.get(7)?),
        halted_reason: r.get(8)?,
        started_at: r.get(9)?,
        updated_at: r.get(10)?,
    })
}

fn read_rollout(conn: &Connection, target: &str) -> Result<Option<Rollout>, rusqlite::Error> {
    conn.query_row(&format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE target = ?1"), params![target], rollout_row)
        .optional()
}

/// Writes a rollout's mutable fields back.
fn write_rollout(conn: &Connection, r: &Rollout) -> Result<(), rusqlite::Error> {
    conn.execute(
        "UPDATE rollouts SET stage = ?1, failures = ?2, installed = ?3, refused = ?4, halted_reason = ?5,
            updated_at = ?6 WHERE target = ?7",
        params![
            r.stage.as_str(),
            i64::from(r.failures),
            to_i64(r.installed),
            to_i64(r.refused),
            r.halted_reason,
            r.updated_at,
            r.target
        ],
    )?;
    Ok(())
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
        // The common case first, without the savepoint: under one, SQLite copies every page the batch touches
        // into a statement journal before changing it, a fixed cost on every accepted batch. A batch that is
        // refused here is rolled back whole and runs again on the savepoint path below, which refuses it the same
        // way (same head: this connection's mutex is held throughout) and records the refusal.
        {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some(head) = read_head(&tx, till)? else {
                return Err(IngestError::UnknownTill);
            };
            match ingest(&tx, till, &head, req, now) {
                Ok(ack) => {
                    let outcome = Ok(ack);
                    record_health(&tx, till, req, now, &head, &outcome)?;
                    tx.commit()?;
                    return outcome;
                }
                Err(err @ IngestError::Storage(_)) => return Err(err), // dropped: rolled back
                Err(_) => tx.rollback()?,
            }
        }
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
        if let Err(IngestError::Storage(_)) = &outcome {
            return outcome; // the transaction itself is suspect: roll everything back
        }
        record_health(&tx, till, req, now, &head, &outcome)?;
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
                        agent_version, chain_ok, last_error, enrolled_at IS NOT NULL, revoked_at IS NOT NULL,
                        (SELECT COUNT(*) FROM quarantine q
                         WHERE q.store = t.store AND q.till = t.till AND q.released_at IS NULL)
                 FROM tills t ORDER BY store, till",
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
                        quarantined: to_u64(r.get(12)?),
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

    fn progress_samples(&self, since: i64) -> Result<Vec<TillSamples>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT store, till, at, reported_seq, hub_seq FROM till_progress WHERE at >= ?1
                 ORDER BY store, till, at",
            )?;
            let rows = stmt.query_map(params![since], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    ProgressSample { at: r.get(2)?, reported_seq: to_u64(r.get(3)?), hub_seq: to_u64(r.get(4)?) },
                ))
            })?;
            let mut out: Vec<TillSamples> = Vec::new();
            for row in rows {
                let (store, till, sample) = row?;
                match out.last_mut() {
                    Some(t) if t.store == store && t.till == till => t.samples.push(sample),
                    _ => out.push(TillSamples { store, till, samples: vec![sample] }),
                }
            }
            Ok(out)
        })
    }

    fn doc_sizes(&self) -> Result<BTreeMap<String, u64>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached("SELECT store, saved_bytes FROM store_docs")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, to_u64(r.get(1)?))))?;
            Ok(rows.collect::<Result<BTreeMap<_, _>, _>>()?)
        })
    }

    fn recent_events(&self, store: &str, limit: usize) -> Result<Vec<StoredEvent>, StorageError> {
        self.with_reader(|conn| {
            // Per till through the (store, till, seq) index, then merged: a scan of the global order backwards
            // would walk every other store's events to find a quiet store's last few.
            let tills: Vec<String> = conn
                .prepare_cached("SELECT till FROM tills WHERE store = ?1")?
                .query_map(params![store], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut stmt = conn
                .prepare_cached(&format!("{EVENT_SELECT} WHERE store = ?1 AND till = ?2 ORDER BY seq DESC LIMIT ?3"))?;
            let n = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut out = Vec::new();
            for till in &tills {
                let rows = stmt.query_map(params![store, till, n], stored_event)?;
                out.extend(rows.collect::<Result<Vec<_>, _>>()?);
            }
            out.sort_by_key(|e| std::cmp::Reverse(e.hub_pos));
            out.truncate(limit);
            Ok(out)
        })
    }

    fn create_subscription(&self, sub: &NewSubscription, now: i64) -> Result<Subscription, StorageError> {
        let conn = lock(&self.writer);
        let res = conn.execute(
            "INSERT INTO subscriptions (id, kind, url, secret, kinds, stores, batch_size, max_attempts, created_at,
                                        stream, subject_prefix)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                sub.id,
                sub.kind,
                sub.url,
                sub.secret,
                json_list(&sub.kinds),
                json_list(&sub.stores),
                sub.batch_size,
                sub.max_attempts,
                now,
                sub.stream,
                sub.subject_prefix
            ],
        );
        match res {
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => Err(StorageError::Conflict),
            Err(e) => Err(e.into()),
            Ok(_) => Ok(Subscription::new(sub.clone(), now)),
        }
    }

    fn subscription(&self, id: &str) -> Result<Option<Subscription>, StorageError> {
        self.with_reader(|conn| {
            Ok(conn
                .query_row(&format!("{SUBSCRIPTION_SELECT} WHERE id = ?1"), params![id], subscription_row)
                .optional()?)
        })
    }

    fn list_subscriptions(&self, lag: bool) -> Result<Vec<Subscription>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&format!("{SUBSCRIPTION_SELECT} ORDER BY id"))?;
            let mut subs = stmt.query_map([], subscription_row)?.collect::<Result<Vec<_>, _>>()?;
            for sub in &mut subs {
                if lag {
                    sub.lag = to_u64(conn.query_row(
                        "SELECT COUNT(*) FROM outbox o JOIN events e ON e.hub_pos = o.hub_pos
                         WHERE o.pos > ?1 AND (?2 = '[]' OR e.kind IN (SELECT value FROM json_each(?2)))
                           AND (?3 = '[]' OR e.store IN (SELECT value FROM json_each(?3)))",
                        params![sub.cursor, json_list(&sub.spec.kinds), json_list(&sub.spec.stores)],
                        |r| r.get(0),
                    )?);
                }
                sub.dead_letters = to_u64(conn.query_row(
                    "SELECT COUNT(*) FROM dead_letters WHERE subscription = ?1 AND replayed_at IS NULL",
                    params![sub.spec.id],
                    |r| r.get(0),
                )?);
            }
            Ok(subs)
        })
    }

    fn delete_subscription(&self, id: &str) -> Result<bool, StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute("DELETE FROM subscriptions WHERE id = ?1", params![id])?;
        tx.execute("DELETE FROM dead_letters WHERE subscription = ?1", params![id])?;
        tx.commit()?;
        Ok(n == 1)
    }

    fn outbox_after(&self, sub: &NewSubscription, after: i64, limit: usize) -> Result<Vec<OutboxEntry>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "{OUTBOX_SELECT} WHERE o.pos > ?1 AND (?2 = '[]' OR e.kind IN (SELECT value FROM json_each(?2)))
                   AND (?3 = '[]' OR e.store IN (SELECT value FROM json_each(?3)))
                 ORDER BY o.pos LIMIT ?4"
            ))?;
            let n = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows =
                stmt.query_map(params![after, json_list(&sub.kinds), json_list(&sub.stores), n], outbox_entry)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn delivered(&self, id: &str, cursor: i64, now: i64) -> Result<(), StorageError> {
        let conn = lock(&self.writer);
        conn.execute(
            "UPDATE subscriptions SET cursor = MAX(cursor, ?2), last_delivery_at = ?3, last_error = NULL WHERE id = ?1",
            params![id, cursor, now],
        )?;
        Ok(())
    }

    fn delivery_failed(&self, id: &str, error: &str, _now: i64) -> Result<(), StorageError> {
        let conn = lock(&self.writer);
        conn.execute("UPDATE subscriptions SET last_error = ?2 WHERE id = ?1", params![id, error])?;
        Ok(())
    }

    fn dead_letter(
        &self,
        id: &str,
        entry: &OutboxEntry,
        attempts: u32,
        error: &str,
        now: i64,
    ) -> Result<(), StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO dead_letters (subscription, pos, attempts, last_error, dead_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (subscription, pos) DO UPDATE SET attempts = attempts + excluded.attempts,
                 last_error = excluded.last_error, dead_at = excluded.dead_at, replay_requested_at = NULL,
                 replayed_at = NULL",
            params![id, entry.pos, attempts, error, now],
        )?;
        tx.execute(
            "UPDATE subscriptions SET cursor = MAX(cursor, ?2), last_error = ?3 WHERE id = ?1",
            params![id, entry.pos, error],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn list_dead_letters(&self, id: &str) -> Result<Vec<DeadLetter>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT d.id, d.subscription, d.pos, e.event_id, e.store, e.till, e.seq, e.kind, d.attempts,
                        d.last_error, d.dead_at, d.replay_requested_at, d.replayed_at
                 FROM dead_letters d JOIN outbox o ON o.pos = d.pos JOIN events e ON e.hub_pos = o.hub_pos
                 WHERE d.subscription = ?1 ORDER BY d.id",
            )?;
            let rows = stmt.query_map(params![id], |r| {
                let event_id: String = r.get(3)?;
                Ok(DeadLetter {
                    id: r.get(0)?,
                    subscription: r.get(1)?,
                    pos: r.get(2)?,
                    event_id: event_id.parse().unwrap_or_default(),
                    store: r.get(4)?,
                    till: r.get(5)?,
                    seq: to_u64(r.get(6)?),
                    kind: r.get(7)?,
                    attempts: r.get(8)?,
                    last_error: r.get(9)?,
                    dead_at: r.get(10)?,
                    replay_requested_at: r.get(11)?,
                    replayed_at: r.get(12)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn request_replay(&self, id: &str, which: &ReplaySelector, now: i64) -> Result<u64, StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = match which {
            ReplaySelector::Ids(ids) => {
                let mut stmt = tx.prepare_cached(
                    "UPDATE dead_letters SET replay_requested_at = ?3, replayed_at = NULL
                     WHERE subscription = ?1 AND id = ?2",
                )?;
                let mut n = 0;
                for dl in ids {
                    n += stmt.execute(params![id, dl, now])?;
                }
                n
            }
            ReplaySelector::DeadBetween(from, to) => tx.execute(
                "UPDATE dead_letters SET replay_requested_at = ?4, replayed_at = NULL
                 WHERE subscription = ?1 AND dead_at BETWEEN ?2 AND ?3",
                params![id, from, to, now],
            )?,
        };
        tx.commit()?;
        Ok(n as u64)
    }

    fn pending_replays(&self, id: &str, limit: usize) -> Result<Vec<(i64, OutboxEntry)>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT e.hub_pos, e.event_id, e.store, e.till, e.seq, e.kind, e.occurred_at, e.body, e.hash, 0,
                        o.pos, e.received_at, d.id
                 FROM dead_letters d JOIN outbox o ON o.pos = d.pos JOIN events e ON e.hub_pos = o.hub_pos
                 WHERE d.subscription = ?1 AND d.replay_requested_at IS NOT NULL AND d.replayed_at IS NULL
                 ORDER BY d.id LIMIT ?2",
            )?;
            let n = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![id, n], |r| Ok((r.get::<_, i64>(12)?, outbox_entry(r)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn replayed(&self, dead_letter: i64, now: i64) -> Result<(), StorageError> {
        let conn = lock(&self.writer);
        conn.execute("UPDATE dead_letters SET replayed_at = ?2 WHERE id = ?1", params![dead_letter, now])?;
        Ok(())
    }

    fn rewind_subscription(&self, id: &str, cursor: i64) -> Result<bool, StorageError> {
        let conn = lock(&self.writer);
        Ok(conn.execute("UPDATE subscriptions SET cursor = ?2 WHERE id = ?1", params![id, cursor])? == 1)
    }

    fn lease_subscription(&self, id: &str, owner: &str, now: i64, until: i64) -> Result<bool, StorageError> {
        let conn = lock(&self.writer);
        let n = conn.execute(
            "UPDATE subscriptions SET lease_owner = ?2, lease_until = ?4
             WHERE id = ?1 AND (lease_owner IS NULL OR lease_owner = ?2 OR lease_until <= ?3)",
            params![id, owner, now, until],
        )?;
        Ok(n == 1)
    }

    fn release_subscription_lease(&self, id: &str, owner: &str) -> Result<(), StorageError> {
        let conn = lock(&self.writer);
        conn.execute(
            "UPDATE subscriptions SET lease_owner = NULL, lease_until = 0 WHERE id = ?1 AND lease_owner = ?2",
            params![id, owner],
        )?;
        Ok(())
    }

    fn list_events(&self, store: Option<&str>, after: i64, limit: usize) -> Result<Vec<StoredEvent>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "{EVENT_SELECT} WHERE hub_pos > ?1 AND (?2 IS NULL OR store = ?2) ORDER BY hub_pos LIMIT ?3"
            ))?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![after, store, limit], stored_event)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn list_quarantine(
        &self,
        store: Option<&str>,
        include_released: bool,
        after: i64,
        limit: usize,
    ) -> Result<Vec<QuarantinedEvent>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT e.hub_pos, e.event_id, e.store, e.till, e.seq, e.kind, e.occurred_at, e.body, e.hash,
                        q.released_at IS NULL, q.reason, q.quarantined_at, q.released_at
                 FROM quarantine q JOIN events e ON e.store = q.store AND e.till = q.till AND e.seq = q.seq
                 WHERE e.hub_pos > ?1 AND (?2 IS NULL OR q.store = ?2) AND (?3 OR q.released_at IS NULL)
                 ORDER BY e.hub_pos LIMIT ?4",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![after, store, include_released, limit], |r| {
                Ok(QuarantinedEvent {
                    event: stored_event(r)?,
                    reason: r.get(10)?,
                    quarantined_at: r.get(11)?,
                    released_at: r.get(12)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn release_quarantined(
        &self,
        till: &TillId,
        seq: u64,
        now: i64,
        check: &dyn Fn(&StoredEvent) -> Result<(), String>,
    ) -> Result<ReleaseOutcome, StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let event = tx
            .query_row(
                "SELECT e.hub_pos, e.event_id, e.store, e.till, e.seq, e.kind, e.occurred_at, e.body, e.hash, 1
                 FROM quarantine q JOIN events e ON e.store = q.store AND e.till = q.till AND e.seq = q.seq
                 WHERE q.store = ?1 AND q.till = ?2 AND q.seq = ?3 AND q.released_at IS NULL",
                params![till.store, till.till, to_i64(seq)],
                stored_event,
            )
            .optional()?;
        let Some(event) = event else {
            return Ok(ReleaseOutcome::NotQuarantined);
        };
        if let Err(why) = check(&event) {
            return Ok(ReleaseOutcome::StillInvalid(why));
        }
        tx.execute(
            "UPDATE quarantine SET released_at = ?1 WHERE store = ?2 AND till = ?3 AND seq = ?4",
            params![now, till.store, till.till, to_i64(seq)],
        )?;
        // Released: it goes out now, after everything already in the outbox.
        tx.execute("INSERT OR IGNORE INTO outbox (hub_pos) VALUES (?1)", params![event.hub_pos])?;
        tx.commit()?;
        Ok(ReleaseOutcome::Released)
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

    fn store_known(&self, store: &str) -> Result<bool, StorageError> {
        self.with_reader(|conn| {
            Ok(conn.query_row("SELECT EXISTS (SELECT 1 FROM tills WHERE store = ?1)", params![store], |r| r.get(0))?)
        })
    }

    fn doc_load(&self, store: &str, since: Option<(u64, u64)>) -> Result<DocLoad, StorageError> {
        self.with_reader(|conn| {
            let tx = conn.unchecked_transaction()?; // one read snapshot for the meta and the chunks
            let (meta, snapshot_version) = read_doc_meta(&tx, store)?.unwrap_or_default();
            let load = match since {
                Some((epoch, version))
                    if epoch == meta.epoch && version >= snapshot_version && version <= meta.version =>
                {
                    DocLoad::Delta { meta, chunks: read_chunks(&tx, store, version)? }
                }
                _ => DocLoad::Full { meta, snapshot: read_snapshot(&tx, store)?, chunks: read_chunks(&tx, store, 0)? },
            };
            tx.finish()?;
            Ok(load)
        })
    }

    fn doc_apply(&self, writes: &[DocWrite], now: i64) -> Result<Vec<DocMeta>, StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            tx.execute("INSERT OR IGNORE INTO store_docs (store) VALUES (?1)", params![w.store])?;
            let (mut meta, _) = read_doc_meta(&tx, &w.store)?.unwrap_or_default();
            let changes_doc = !w.chunk.is_empty() || w.fold.is_some();
            if meta.epoch != w.epoch || (changes_doc && meta.version != w.base_version) {
                return Err(StorageError::Conflict); // dropped: rolled back
            }
            if changes_doc {
                meta.version += 1;
                meta.changes_since_epoch += w.changes;
                if let Some(full) = &w.fold {
                    tx.execute("DELETE FROM doc_chunks WHERE store = ?1", params![w.store])?;
                    meta.saved_bytes = full.len() as u64;
                    meta.chunks = 0;
                    tx.execute(
                        "UPDATE store_docs SET snapshot = ?1, snapshot_version = ?2 WHERE store = ?3",
                        params![full, to_i64(meta.version), w.store],
                    )?;
                } else {
                    tx.execute(
                        "INSERT INTO doc_chunks (store, version, bytes) VALUES (?1, ?2, ?3)",
                        params![w.store, to_i64(meta.version), w.chunk],
                    )?;
                    meta.saved_bytes += w.chunk.len() as u64;
                    meta.chunks += 1;
                }
                tx.execute(
                    "UPDATE store_docs SET version = ?1, changes_since_epoch = ?2, saved_bytes = ?3, chunks = ?4
                     WHERE store = ?5",
                    params![
                        to_i64(meta.version),
                        to_i64(meta.changes_since_epoch),
                        to_i64(meta.saved_bytes),
                        to_i64(meta.chunks),
                        w.store
                    ],
                )?;
            }
            if let Some((till, state)) = &w.sync_state {
                tx.execute(
                    "INSERT INTO sync_states (store, till, epoch, state, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (store, till, epoch) DO UPDATE SET state = ?4, updated_at = ?5",
                    params![w.store, till, to_i64(w.epoch), state, now],
                )?;
            }
            for m in &w.movements {
                tx.execute(
                    "INSERT INTO hub_movements (store, sku, delta, reason, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![w.store, m.sku, m.delta, m.reason, now],
                )?;
            }
            out.push(meta);
        }
        tx.commit()?;
        Ok(out)
    }

    fn sync_state(&self, store: &str, till: &str, epoch: u64) -> Result<Option<Vec<u8>>, StorageError> {
        self.with_reader(|conn| {
            Ok(conn
                .query_row(
                    "SELECT state FROM sync_states WHERE store = ?1 AND till = ?2 AND epoch = ?3",
                    params![store, till, to_i64(epoch)],
                    |r| r.get(0),
                )
                .optional()?)
        })
    }

    fn compact(
        &self,
        store: &str,
        now: i64,
        build: &mut dyn FnMut(&CompactionInput) -> Result<Vec<u8>, String>,
    ) -> Result<EpochRecord, CompactError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let known: bool =
            tx.query_row("SELECT EXISTS (SELECT 1 FROM tills WHERE store = ?1)", params![store], |r| r.get(0))?;
        if !known {
            return Err(CompactError::UnknownStore);
        }
        let (meta, _) = read_doc_meta(&tx, store)?.unwrap_or_default();
        // The previous epoch's cuts and journal base, so only the events since are read.
        let (prev_cuts, mut journal_base) = match read_epoch(&tx, store, Some(meta.epoch))? {
            Some((rec, jb)) if meta.epoch > 0 => (rec.cuts, jb),
            _ => (BTreeMap::new(), BTreeMap::new()),
        };
        let cuts: BTreeMap<String, u64> = {
            // A till's cut stops before its first unreleased quarantined event: the hub cannot compute that event's
            // stock effect, the till can, and re-derives everything after its cut from its own journal.
            let mut stmt = tx.prepare_cached(
                "SELECT t.till, MIN(t.hub_seq, COALESCE((SELECT MIN(q.seq) - 1 FROM quarantine q
                     WHERE q.store = t.store AND q.till = t.till AND q.released_at IS NULL), t.hub_seq))
                 FROM tills t WHERE t.store = ?1 ORDER BY t.till",
            )?;
            let rows = stmt.query_map(params![store], |r| Ok((r.get::<_, String>(0)?, to_u64(r.get(1)?))))?;
            rows.collect::<Result<_, _>>()?
        };
        for (till, cut) in &cuts {
            let after = prev_cuts.get(till).copied().unwrap_or(0).min(*cut);
            let effects = till_effects(&tx, store, till, after, *cut)?;
            add_into(&mut journal_base, &effects);
        }
        let mut base = journal_base.clone();
        {
            let mut stmt =
                tx.prepare_cached("SELECT sku, SUM(delta) FROM hub_movements WHERE store = ?1 GROUP BY sku")?;
            let rows = stmt.query_map(params![store], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let movements: BTreeMap<String, i64> = rows.collect::<Result<_, _>>()?;
            add_into(&mut base, &movements);
        }
        let input = CompactionInput {
            epoch: meta.epoch,
            cuts,
            base,
            snapshot: read_snapshot(&tx, store)?,
            chunks: read_chunks(&tx, store, 0)?,
        };
        let doc = build(&input).map_err(CompactError::Build)?;
        let epoch = meta.epoch + 1;
        let version = meta.version + 1;
        tx.execute(
            "INSERT INTO epochs (store, epoch, cuts, base, journal_base, doc, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                store,
                to_i64(epoch),
                json_text(&input.cuts),
                json_text(&input.base),
                json_text(&journal_base),
                doc,
                now
            ],
        )?;
        tx.execute("DELETE FROM epochs WHERE store = ?1 AND epoch < ?2", params![store, to_i64(epoch)])?;
        tx.execute("INSERT OR IGNORE INTO store_docs (store) VALUES (?1)", params![store])?;
        tx.execute(
            "UPDATE store_docs SET epoch = ?1, version = ?2, snapshot = ?3, snapshot_version = ?2,
                changes_since_epoch = 0, saved_bytes = ?4, chunks = 0
             WHERE store = ?5",
            params![to_i64(epoch), to_i64(version), doc, doc.len() as i64, store],
        )?;
        tx.execute("DELETE FROM doc_chunks WHERE store = ?1", params![store])?;
        tx.execute("DELETE FROM sync_states WHERE store = ?1 AND epoch < ?2", params![store, to_i64(epoch)])?;
        tx.commit()?;
        Ok(EpochRecord { epoch, cuts: input.cuts, base: input.base, doc })
    }

    fn epoch_record(&self, store: &str) -> Result<Option<EpochRecord>, StorageError> {
        self.with_reader(|conn| {
            let tx = conn.unchecked_transaction()?;
            let (meta, _) = read_doc_meta(&tx, store)?.unwrap_or_default();
            let rec = if meta.epoch == 0 { None } else { read_epoch(&tx, store, Some(meta.epoch))?.map(|(r, _)| r) };
            tx.finish()?;
            Ok(rec)
        })
    }

    fn movement_totals(&self, store: &str) -> Result<(BTreeMap<String, i64>, u64), StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT sku, SUM(delta), COUNT(*) FROM hub_movements WHERE store = ?1 GROUP BY sku ORDER BY sku",
            )?;
            let rows = stmt
                .query_map(params![store], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, to_u64(r.get(2)?))))?;
            let mut totals = BTreeMap::new();
            let mut n = 0;
            for row in rows {
                let (sku, sum, count) = row?;
                n += count;
                if sum != 0 {
                    totals.insert(sku, sum);
                }
            }
            Ok((totals, n))
        })
    }
    fn put_release(&self, rel: &NewRelease) -> Result<PutRelease, StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stored: Option<(Vec<u8>, Option<String>, String)> = tx
            .query_row(
                "SELECT manifest, signature, archive_sha256 FROM releases WHERE version = ?1 AND target = ?2",
                params![rel.version, rel.target],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((manifest, signature, sha)) = stored {
            let same = manifest == rel.manifest && signature == rel.signature && sha == rel.archive_sha256;
            return Ok(if same { PutRelease::Identical } else { PutRelease::Conflict });
        }
        tx.execute(
            "INSERT INTO releases (version, target, manifest, signature, archive, archive_sha256, archive_size,
                 min_version, expires_at, uploaded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                rel.version,
                rel.target,
                rel.manifest,
                rel.signature,
                rel.archive,
                rel.archive_sha256,
                to_i64(rel.archive_size),
                rel.min_version,
                rel.expires_at,
                rel.uploaded_at
            ],
        )?;
        tx.commit()?;
        Ok(PutRelease::Created)
    }

    fn list_releases(&self) -> Result<Vec<ReleaseInfo>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT version, target, min_version, expires_at, archive_sha256, archive_size,
                        signature IS NOT NULL, uploaded_at FROM releases",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(ReleaseInfo {
                    version: r.get(0)?,
                    target: r.get(1)?,
                    min_version: r.get(2)?,
                    expires_at: r.get(3)?,
                    archive_sha256: r.get(4)?,
                    archive_size: to_u64(r.get(5)?),
                    signed: r.get(6)?,
                    uploaded_at: r.get(7)?,
                })
            })?;
            let mut out = rows.collect::<Result<Vec<_>, _>>()?;
            out.sort_by(newest_first);
            Ok(out)
        })
    }

    fn release_archive(&self, version: &str, target: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.with_reader(|conn| {
            Ok(conn
                .query_row(
                    "SELECT archive FROM releases WHERE version = ?1 AND target = ?2",
                    params![version, target],
                    |r| r.get(0),
                )
                .optional()?)
        })
    }

    fn start_rollout(&self, new: &NewRollout, now: i64) -> Result<Rollout, RolloutError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let known: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM releases WHERE version = ?1 AND target = ?2)",
            params![new.version, new.target],
            |r| r.get(0),
        )?;
        if !known {
            return Err(RolloutError::UnknownRelease { version: new.version.clone(), target: new.target.clone() });
        }
        tx.execute(
            "INSERT INTO rollout_history (target, version, stage, canary_percent, max_failures, failures, installed,
                 refused, halted_reason, started_at, ended_at)
             SELECT target, version, 'superseded', canary_percent, max_failures, failures, installed, refused,
                 halted_reason, started_at, ?2 FROM rollouts WHERE target = ?1",
            params![new.target, now],
        )?;
        tx.execute("DELETE FROM rollouts WHERE target = ?1", params![new.target])?;
        tx.execute(
            "INSERT INTO rollouts (target, version, stage, canary_percent, max_failures, started_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            params![
                new.target,
                new.version,
                Stage::initial(new.canary_percent).as_str(),
                i64::from(new.canary_percent),
                i64::from(new.max_failures),
                now
            ],
        )?;
        let r = read_rollout(&tx, &new.target)?.ok_or_else(|| RolloutError::NoRollout(new.target.clone()))?;
        tx.commit()?;
        Ok(r)
    }

    fn change_rollout(&self, target: &str, change: &Transition, now: i64) -> Result<Rollout, RolloutError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut r = read_rollout(&tx, target)?.ok_or_else(|| RolloutError::NoRollout(target.to_owned()))?;
        apply_transition(&mut r, change, now)?;
        write_rollout(&tx, &r)?;
        tx.commit()?;
        Ok(r)
    }

    fn list_rollouts(&self) -> Result<Vec<Rollout>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY target"))?;
            let rows = stmt.query_map([], rollout_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn version_spread(&self) -> Result<Vec<(String, u64)>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT agent_version, COUNT(*) FROM tills
                 WHERE enrolled_at IS NOT NULL AND revoked_at IS NULL GROUP BY agent_version ORDER BY agent_version",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, to_u64(r.get(1)?))))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn check_update(
        &self,
        till: &TillId,
        running_version: &str,
        target: &str,
        now: i64,
    ) -> Result<Option<UpdateCandidate>, StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE tills SET agent_version = ?1, last_seen = ?2 WHERE store = ?3 AND till = ?4",
            params![running_version, now, till.store, till.till],
        )?;
        let Some(rollout) = read_rollout(&tx, target)? else {
            tx.commit()?;
            return Ok(None);
        };
        let release: Option<(Vec<u8>, Option<String>)> = tx
            .query_row(
                "SELECT manifest, signature FROM releases WHERE version = ?1 AND target = ?2",
                params![rollout.version, rollout.target],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        tx.commit()?;
        Ok(release.map(|(manifest, signature)| UpdateCandidate { rollout, manifest, signature }))
    }

    fn record_update_report(
        &self,
        till: &TillId,
        report: &NewUpdateReport,
        now: i64,
    ) -> Result<ReportEffect, StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO update_reports (store, till, version, target, outcome, running_version, reason, detail, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                till.store,
                till.till,
                report.version,
                report.target,
                outcome_text(report.outcome),
                report.running_version,
                report.reason,
                report.detail,
                now
            ],
        )?;
        tx.execute(
            "UPDATE tills SET agent_version = ?1, last_seen = ?2 WHERE store = ?3 AND till = ?4",
            params![report.running_version, now, till.store, till.till],
        )?;
        let mut effect = ReportEffect { rollout: None, counted_failure: false, halted_now: false };
        if let Some(mut r) = read_rollout(&tx, &report.target)?.filter(|r| r.version == report.version) {
            effect = apply_report(&mut r, &till.store, report.outcome, now);
            write_rollout(&tx, &r)?;
        }
        tx.commit()?;
        Ok(effect)
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

    #[test]
    fn a_database_from_before_the_outbox_gets_its_events_in_hub_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        {
            let s = SqliteStorage::open(&path).unwrap();
            crate::storage::conformance::enrolled_with_events(&s, 3);
        }
        // As a hub of the version before the outbox left it: events, and no outbox rows.
        Connection::open(&path).unwrap().execute("DELETE FROM outbox", []).unwrap();
        let s = SqliteStorage::open(&path).unwrap();
        let sub = crate::storage::conformance::webhook("s");
        let seqs: Vec<u64> = s.outbox_after(&sub, 0, 10).unwrap().iter().map(|e| e.event.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        drop(s);
        // Reopening again adds nothing twice.
        let s = SqliteStorage::open(&path).unwrap();
        assert_eq!(s.outbox_after(&sub, 0, 10).unwrap().len(), 3);
    }

    #[test]
    fn opening_beside_a_live_writer_does_not_backfill_what_it_queued() {
        // `enroll-code` opens the database while `serve` takes its first upload. The live writer has an event and
        // its outbox row in an open transaction; the second open must wait for it and then find the outbox filled.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        drop(SqliteStorage::open(&path).unwrap());
        let mut live = Connection::open(&path).unwrap();
        let tx = live.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        tx.execute(
            "INSERT INTO events (store, till, seq, event_id, kind, occurred_at, body, prev_hash, hash, received_at)
             VALUES ('S1', 'T1', 1, 'e1', 'sale', '2026-01-01T00:00:00Z', '{}', 'p', 'h', 0)",
            [],
        )
        .unwrap();
        tx.execute("INSERT INTO outbox (hub_pos) SELECT hub_pos FROM events", []).unwrap();
        let opener = std::thread::spawn(move || SqliteStorage::open(&path).map(drop));
        // Give the opener the chance to run its checks before the live commit (the old code read the empty outbox
        // here, then inserted the same position after the commit).
        std::thread::sleep(std::time::Duration::from_millis(200));
        tx.commit().unwrap();
        opener.join().unwrap().expect("the second open waits for the writer and succeeds");
        let n: i64 = live.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1);
    }
}
