//! The PostgreSQL backend's schema and how an existing database is brought up to date.

use std::collections::HashSet;

use postgres::Client;

use super::error::backend;
use crate::storage::error::StorageError;

// Migrations.

/// One schema change: applied once, in order, recorded in `schema_migrations`.
#[derive(Debug)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration this hub knows, oldest first. Append only: a released migration is never edited.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "initial schema", sql: SCHEMA_V1 },
    Migration { version: 2, name: "escrow and reservations", sql: SCHEMA_V2 },
];

pub(super) const SCHEMA_V1: &str = r#"
CREATE TABLE tills (
    store TEXT NOT NULL,
    till TEXT NOT NULL,
    journal_id UUID,
    hub_seq BIGINT NOT NULL DEFAULT 0,
    last_hash TEXT NOT NULL,
    enrolled_at BIGINT,
    revoked_at BIGINT,
    last_seen BIGINT,
    reported_seq BIGINT NOT NULL DEFAULT 0,
    backlog BIGINT NOT NULL DEFAULT 0,
    oldest_unsynced_age_s BIGINT NOT NULL DEFAULT 0,
    agent_version TEXT NOT NULL DEFAULT '',
    chain_ok BOOLEAN NOT NULL DEFAULT TRUE,
    last_error TEXT,
    PRIMARY KEY (store, till)
);
CREATE TABLE credentials (
    hash TEXT PRIMARY KEY,
    store TEXT NOT NULL,
    till TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE UNIQUE INDEX credentials_one_live ON credentials (store, till) WHERE revoked_at IS NULL;
CREATE INDEX credentials_till ON credentials (store, till);
CREATE TABLE enrollments (
    code_hash TEXT PRIMARY KEY,
    store TEXT NOT NULL,
    till TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX enrollments_open ON enrollments (store, till) WHERE used_at IS NULL;
CREATE TABLE hub_counters (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    hub_pos BIGINT NOT NULL DEFAULT 0,
    outbox_pos BIGINT NOT NULL DEFAULT 0
);
INSERT INTO hub_counters DEFAULT VALUES;
CREATE TABLE events (
    hub_pos BIGINT PRIMARY KEY,
    store TEXT NOT NULL,
    till TEXT NOT NULL,
    seq BIGINT NOT NULL CHECK (seq > 0),
    event_id UUID NOT NULL,
    kind TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    CONSTRAINT events_till_seq UNIQUE (store, till, seq),
    CONSTRAINT events_till_event_id UNIQUE (store, till, event_id)
);
CREATE INDEX events_store_pos ON events (store, hub_pos);
CREATE TABLE enroll_failures (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX enroll_failures_client ON enroll_failures (client, at);
CREATE INDEX enroll_failures_at ON enroll_failures (at);
CREATE TABLE store_docs (
    store TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL DEFAULT 0,
    version BIGINT NOT NULL DEFAULT 0,
    snapshot BYTEA,
    snapshot_version BIGINT NOT NULL DEFAULT 0,
    changes_since_epoch BIGINT NOT NULL DEFAULT 0,
    saved_bytes BIGINT NOT NULL DEFAULT 0,
    chunks BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE doc_chunks (
    store TEXT NOT NULL,
    version BIGINT NOT NULL,
    bytes BYTEA NOT NULL,
    PRIMARY KEY (store, version)
);
CREATE TABLE sync_states (
    store TEXT NOT NULL,
    till TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    state BYTEA NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (store, till, epoch)
);
CREATE TABLE hub_movements (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    store TEXT NOT NULL,
    sku TEXT NOT NULL,
    delta BIGINT NOT NULL,
    reason TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX hub_movements_store ON hub_movements (store, sku);
CREATE TABLE epochs (
    store TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    cuts TEXT NOT NULL,
    base TEXT NOT NULL,
    journal_base TEXT NOT NULL,
    doc BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (store, epoch)
);
CREATE TABLE quarantine (
    store TEXT NOT NULL,
    till TEXT NOT NULL,
    seq BIGINT NOT NULL,
    reason TEXT NOT NULL,
    quarantined_at BIGINT NOT NULL,
    released_at BIGINT,
    PRIMARY KEY (store, till, seq)
);
CREATE TABLE releases (
    version TEXT NOT NULL,
    target TEXT NOT NULL,
    manifest BYTEA NOT NULL,
    signature TEXT,
    archive BYTEA NOT NULL,
    archive_sha256 TEXT NOT NULL,
    archive_size BIGINT NOT NULL,
    min_version TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    uploaded_at BIGINT NOT NULL,
    PRIMARY KEY (version, target)
);
CREATE TABLE rollouts (
    target TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    stage TEXT NOT NULL,
    canary_percent BIGINT NOT NULL,
    max_failures BIGINT NOT NULL,
    failures BIGINT NOT NULL DEFAULT 0,
    installed BIGINT NOT NULL DEFAULT 0,
    refused BIGINT NOT NULL DEFAULT 0,
    halted_reason TEXT,
    started_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE rollout_history (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target TEXT NOT NULL,
    version TEXT NOT NULL,
    stage TEXT NOT NULL,
    canary_percent BIGINT NOT NULL,
    max_failures BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    installed BIGINT NOT NULL,
    refused BIGINT NOT NULL,
    halted_reason TEXT,
    started_at BIGINT NOT NULL,
    ended_at BIGINT NOT NULL
);
CREATE TABLE update_reports (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    store TEXT NOT NULL,
    till TEXT NOT NULL,
    version TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    running_version TEXT NOT NULL,
    reason TEXT,
    detail TEXT,
    at BIGINT NOT NULL
);
CREATE INDEX update_reports_release ON update_reports (version, target);
CREATE TABLE till_progress (
    store TEXT NOT NULL,
    till TEXT NOT NULL,
    at BIGINT NOT NULL,
    reported_seq BIGINT NOT NULL,
    hub_seq BIGINT NOT NULL,
    PRIMARY KEY (store, till, at)
);
CREATE INDEX till_progress_at ON till_progress (at);
CREATE TABLE outbox (
    pos BIGINT PRIMARY KEY,
    hub_pos BIGINT NOT NULL UNIQUE
);
CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    kinds TEXT[] NOT NULL,
    stores TEXT[] NOT NULL,
    batch_size BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL,
    stream TEXT NOT NULL DEFAULT '',
    subject_prefix TEXT NOT NULL DEFAULT '',
    cursor BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    last_error TEXT,
    last_delivery_at BIGINT,
    lease_owner TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE dead_letters (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription TEXT NOT NULL,
    pos BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    last_error TEXT NOT NULL,
    dead_at BIGINT NOT NULL,
    replay_requested_at BIGINT,
    replayed_at BIGINT,
    UNIQUE (subscription, pos)
);
"#;

/// The reservation tables (see [`crate::storage::reservations`]), migration 2 (`escrow`, `reservations`, `reservation_lines`, `reservation_history` and
/// `reservation_cursor` as in SQLite; `reservation_chains` holds the head of each store's `~hub` chain and is the
/// row a writer of that chain locks).
pub(super) const SCHEMA_V2: &str = r#"
CREATE TABLE escrow (
    store TEXT NOT NULL,
    sku TEXT NOT NULL,
    qty BIGINT NOT NULL CHECK (qty >= 0),
    updated_at BIGINT NOT NULL,
    -- The policy that set it, when one did (all three or none).
    share_pct BIGINT,
    floor BIGINT,
    cap BIGINT,
    PRIMARY KEY (store, sku),
    CHECK ((share_pct IS NULL) = (floor IS NULL) AND (floor IS NULL) = (cap IS NULL))
);
CREATE TABLE reservations (
    id UUID PRIMARY KEY,
    order_id TEXT NOT NULL UNIQUE,
    stores TEXT[] NOT NULL,
    pickup_by TEXT NOT NULL,
    store TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX reservations_store_status ON reservations (store, status);
CREATE INDEX reservations_active ON reservations (created_at, id) WHERE status IN ('reserved', 'picked');
CREATE TABLE reservation_lines (
    reservation UUID NOT NULL REFERENCES reservations (id),
    sku TEXT NOT NULL,
    qty BIGINT NOT NULL,
    PRIMARY KEY (reservation, sku)
);
CREATE TABLE reservation_history (
    reservation UUID NOT NULL REFERENCES reservations (id),
    n BIGINT NOT NULL,
    change TEXT NOT NULL,
    store TEXT NOT NULL,
    reason TEXT,
    at BIGINT NOT NULL,
    event_id UUID NOT NULL,
    PRIMARY KEY (reservation, n)
);
CREATE TABLE reservation_cursor (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    hub_pos BIGINT NOT NULL DEFAULT 0
);
INSERT INTO reservation_cursor DEFAULT VALUES;
CREATE TABLE reservation_chains (
    store TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
"#;

/// Brings the schema up to date, in one transaction under an advisory lock keyed by the schema, so that instances
/// starting at once take turns.
pub(super) fn migrate(client: &mut Client) -> Result<(), StorageError> {
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('storesync-hub migrations ' || COALESCE(current_schema(), '')))",
        &[],
    )?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY,
             name TEXT NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )?;
    let applied: HashSet<i32> =
        tx.query("SELECT version FROM schema_migrations", &[])?.iter().map(|r| r.get(0)).collect();
    let known = MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0);
    if let Some(newer) = applied.iter().copied().filter(|v| *v > known).max() {
        return Err(backend(format!(
            "the database schema is at version {newer}, newer than this hub knows ({known}): upgrade the hub"
        )));
    }
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        tx.batch_execute(m.sql).map_err(|e| backend(format!("migration {} ({}): {e}", m.version, m.name)))?;
        tx.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[&m.version, &m.name])?;
        tracing::info!(version = m.version, name = m.name, "database migrated");
    }
    tx.commit()?;
    Ok(())
}
