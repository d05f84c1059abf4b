//! The SQLite backend's schema and how an existing database is brought up to date.

use rusqlite::Connection;

use crate::storage::error::StorageError;

pub(super) const SCHEMA: &str = r#"
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

/// The reservation tables (see [`crate::storage::reservations`]), created by `SqliteStorage::open`.
pub(super) const RESERVATIONS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS escrow (
    store TEXT NOT NULL,
    sku TEXT NOT NULL,
    qty INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    -- The policy that set it, when one did (all three or none).
    share_pct INTEGER,
    floor INTEGER,
    cap INTEGER,
    PRIMARY KEY (store, sku)
);
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL UNIQUE,
    stores TEXT NOT NULL,
    pickup_by TEXT NOT NULL,
    store TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_store_status ON reservations (store, status);
CREATE TABLE IF NOT EXISTS reservation_lines (
    reservation TEXT NOT NULL,
    sku TEXT NOT NULL,
    qty INTEGER NOT NULL,
    PRIMARY KEY (reservation, sku)
);
CREATE TABLE IF NOT EXISTS reservation_cursor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    hub_pos INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS reservation_history (
    reservation TEXT NOT NULL,
    n INTEGER NOT NULL,
    change TEXT NOT NULL,
    store TEXT NOT NULL,
    reason TEXT,
    at INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (reservation, n)
);
";

/// Fills the outbox of a database made before it existed: every stored, unquarantined event, in hub order. Runs
/// while the outbox is empty (so on a new database it inserts nothing).
pub(super) const OUTBOX_BACKFILL: &str = "INSERT INTO outbox (hub_pos)
    SELECT e.hub_pos FROM events e
    WHERE NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.store = e.store AND q.till = e.till AND q.seq = e.seq
                      AND q.released_at IS NULL)
    ORDER BY e.hub_pos";

/// Brings the schema up to date in one `BEGIN IMMEDIATE` transaction. Another process may have the database open
/// and be writing (a CLI verb such as `enroll-code` opens it beside a running `serve`), so the checks and the
/// changes they decide on must not be split by another writer's commit: the outbox backfill once raced a live
/// hub's first ingest and inserted positions that had just been queued.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StorageError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA)?;
    tx.execute_batch(RESERVATIONS_SCHEMA)?;
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
