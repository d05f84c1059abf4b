//! The PostgreSQL backend of [`Storage`]: several hub instances serve one fleet from one database.
//!
//! Design note:
//! - Client: the blocking `postgres` crate (tokio-postgres underneath; each connection drives itself on a small
//!   runtime of its own, so it is only called off the async runtime: from `spawn_blocking`, as every [`Storage`]
//!   call is, or from plain threads in tests and CLI verbs). Plain TCP (`NoTls`); no OpenSSL. Connections live in a
//!   bounded r2d2 pool (`pool_size`, default [`DEFAULT_POOL_SIZE`]); a caller waits at most
//!   [`POOL_WAIT`] for one and is then answered [`StorageError::Busy`] (HTTP 503 with `Retry-After`), so an
//!   overloaded database sheds load instead of queueing without bound. Each connection keeps its prepared
//!   statements, so a statement is parsed once per connection.
//! - Every [`Storage`] method is one transaction. READ COMMITTED plus row locks everywhere except: store-document
//!   and epoch reads (REPEATABLE READ, READ ONLY: the meta and the chunks of one snapshot) and `start_rollout`
//!   (SERIALIZABLE: it reads, deletes and inserts the target's rollout row, which may not exist yet to be locked).
//!   A serialization failure (40001) or a deadlock (40P01) runs the whole transaction again, at most
//!   [`TX_ATTEMPTS`] times within 2 s, then answers [`StorageError::Busy`]; so does a lock wait past
//!   `lock_timeout` (5 s). Sessions also get `idle_in_transaction_session_timeout` (60 s): a hub process that hangs
//!   inside a transaction loses its session, and its row locks, instead of stalling every other instance.
//! - Cross-instance correctness comes from the database, never from a lock in one process:
//!   - an upload locks its till row (`SELECT ... FOR UPDATE`), so two instances given the same batch take turns:
//!     the first stores it, the second then finds it stored and answers the same acknowledgement (the idempotent
//!     duplicate); `UNIQUE (store, till, seq)` and `UNIQUE (store, till, event_id)` back this up, and the till's
//!     head moves only by `UPDATE ... WHERE hub_seq = <the head read>`;
//!   - enrolment and revocation lock the till row too, and a partial unique index allows one live credential per
//!     till;
//!   - a document write locks its `store_docs` rows (in store order) and stores only when the store is still at
//!     the epoch and version the caller changed, else [`StorageError::Conflict`] (reload and retry); compaction
//!     locks the same row, so it never interleaves with a write;
//!   - hub positions (`events.hub_pos`) and outbox positions (`outbox.pos`) come from one counter row taken last in
//!     the ingest transaction and held to its COMMIT. Positions are therefore handed out in commit order: whoever
//!     sees position N also sees every position before it, so a delivery cursor or an `after` page never skips an
//!     event that a slower transaction commits later (a sequence would allow exactly that). The price is that the
//!     tail of concurrent ingests (the inserts and the COMMIT) is serialised, as on SQLite;
//!   - delivery: a subscription is delivered by the instance holding its lease (`lease_owner`, `lease_until`, taken
//!     and renewed by a conditional UPDATE); cursors only move forward (`GREATEST`).
//! - Migrations: [`MIGRATIONS`], applied at open in one transaction under `pg_advisory_xact_lock` (keyed by the
//!   schema), recorded in `schema_migrations`. Instances starting together take turns; the later ones find nothing
//!   to do. A database migrated by a newer hub (an unknown version) is refused, not written to.
//! - Tables mirror the SQLite backend's (see [`super::sqlite`]) with PostgreSQL types: `BIGINT` counters and unix
//!   seconds, `UUID` event and journal ids, `BYTEA` documents and archives, `TEXT[]` subscription filters, plus
//!   `hub_counters` (the one counter row) and `schema_migrations`.
//! - Recovery: nothing beyond PostgreSQL's own; all state is in the database.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, GenericClient, IsolationLevel, NoTls, Row, Statement, Transaction};
use storesync_shared::event::EventKind;
use storesync_shared::genesis_hash;
use storesync_shared::wire::{JournalEvent, TillState, UploadAck, UploadRequest};
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

/// Escrow and reservations: their own file (`postgres_reservations.rs`), a child module so it shares the pool.
#[path = "postgres_reservations.rs"]
mod reservations;

/// Connections per hub instance unless configured.
pub const DEFAULT_POOL_SIZE: u32 = 16;
/// How long a storage call waits for a pooled connection before it is answered [`StorageError::Busy`].
pub const POOL_WAIT: Duration = Duration::from_secs(5);
/// Runs of one transaction that hit a serialization failure or a deadlock, before [`StorageError::Busy`].
pub const TX_ATTEMPTS: u32 = 5;
/// A transaction is run again only while this much time has passed since its first run: a lost race is retried,
/// a lock wait that timed out (the database is overloaded) is answered busy at once.
const RETRY_WINDOW: Duration = Duration::from_secs(2);
/// Session settings the hub adds unless the connection string sets them: a lock wait gives up (and the caller is
/// answered busy) instead of queueing without end, and the server ends a session that sits in a transaction doing
/// nothing (a hung or stopped hub process), so its row locks never block the other instances for good.
const SESSION_SETTINGS: [(&str, &str); 2] = [("lock_timeout", "5s"), ("idle_in_transaction_session_timeout", "60s")];
/// Failed-attempt rows older than this are pruned on the next failure.
const FAILURE_RETENTION_S: i64 = 24 * 3600;

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

// ---------------------------------------------------------------------------------------------------------------
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
    Migration { version: 2, name: "escrow and reservations", sql: reservations::SCHEMA_V2 },
];

const SCHEMA_V1: &str = r#"
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

/// Brings the schema up to date, in one transaction under an advisory lock keyed by the schema, so that instances
/// starting at once take turns.
fn migrate(client: &mut Client) -> Result<(), StorageError> {
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

// ---------------------------------------------------------------------------------------------------------------
// Errors.

fn backend(detail: String) -> StorageError {
    StorageError::Backend(detail.into())
}

fn is_code(err: &postgres::Error, codes: &[SqlState]) -> bool {
    err.code().is_some_and(|c| codes.contains(c))
}

impl From<postgres::Error> for StorageError {
    fn from(err: postgres::Error) -> Self {
        if is_code(
            &err,
            &[SqlState::T_R_SERIALIZATION_FAILURE, SqlState::T_R_DEADLOCK_DETECTED, SqlState::LOCK_NOT_AVAILABLE],
        ) {
            StorageError::Busy
        } else {
            StorageError::Backend(Box::new(err))
        }
    }
}

/// The errors a transaction body may return: they convert a PostgreSQL error, and say whether the transaction
/// lost a race that running it again can win (a serialization failure or a deadlock, mapped to
/// [`StorageError::Busy`]).
trait TxFailure: From<StorageError> {
    fn busy(&self) -> bool;
}

impl TxFailure for StorageError {
    fn busy(&self) -> bool {
        matches!(self, StorageError::Busy)
    }
}

macro_rules! tx_failure {
    ($($t:ident),*) => {$(
        impl From<postgres::Error> for $t {
            fn from(err: postgres::Error) -> Self {
                $t::Storage(err.into())
            }
        }

        impl TxFailure for $t {
            fn busy(&self) -> bool {
                matches!(self, $t::Storage(StorageError::Busy))
            }
        }
    )*};
}
tx_failure!(IngestError, RedeemError, RolloutError, CompactError);

// ---------------------------------------------------------------------------------------------------------------
// Connections.

/// A pooled connection and the statements prepared on it.
struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

struct Manager {
    config: postgres::Config,
}

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Conn, postgres::Error> {
        Ok(Conn { client: self.config.connect(NoTls)?, statements: HashMap::new() })
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), postgres::Error> {
        conn.client.simple_query("").map(drop)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.client.is_closed()
    }
}

/// Logs the pool's connection failures through tracing.
#[derive(Debug)]
struct LogErrors;

impl r2d2::HandleError<postgres::Error> for LogErrors {
    fn handle_error(&self, error: postgres::Error) {
        tracing::warn!(error = %error, "PostgreSQL connection failed");
    }
}

/// A client (a connection or a transaction on it) with the connection's prepared-statement cache: every query
/// goes through a statement prepared once per connection.
struct Cx<'a, C> {
    c: &'a mut C,
    statements: &'a mut HashMap<String, Statement>,
}

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

impl<C: GenericClient> Cx<'_, C> {
    fn statement(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.c.prepare(sql)?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    fn query(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, postgres::Error> {
        let s = self.statement(sql)?;
        self.c.query(&s, params)
    }

    fn query_opt(&mut self, sql: &str, params: Params<'_>) -> Result<Option<Row>, postgres::Error> {
        let s = self.statement(sql)?;
        self.c.query_opt(&s, params)
    }

    fn query_one(&mut self, sql: &str, params: Params<'_>) -> Result<Row, postgres::Error> {
        let s = self.statement(sql)?;
        self.c.query_one(&s, params)
    }

    fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64, postgres::Error> {
        let s = self.statement(sql)?;
        self.c.execute(&s, params)
    }
}

type Tx<'a, 'b> = Cx<'a, Transaction<'b>>;

/// How a transaction runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// READ COMMITTED, read-write: row locks do the ordering.
    Write,
    /// SERIALIZABLE, read-write.
    Serializable,
    /// REPEATABLE READ, READ ONLY: several reads from one snapshot.
    Snapshot,
}

/// The PostgreSQL [`Storage`].
///
/// Its connections block on runtimes of their own, so they are opened and closed on threads of their own: it may be
/// opened and dropped anywhere, also on a thread that drives async tasks (as `serve` does), while its [`Storage`]
/// methods must run off the async runtime (`spawn_blocking`), as the trait says.
pub struct PostgresStorage {
    /// `Some` until dropped.
    pool: Option<r2d2::Pool<Manager>>,
    target: String,
}

impl Drop for PostgresStorage {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            // Closing a connection blocks on its runtime: not on the caller's thread, which may be an async one.
            let _ = std::thread::spawn(move || drop(pool)).join();
        }
    }
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStorage").field("database", &self.target).finish_non_exhaustive()
    }
}

impl PostgresStorage {
    /// Connects to the database, brings its schema up to date and keeps a pool of `pool_size` connections.
    pub fn open(settings: &PgSettings) -> Result<PostgresStorage, StorageError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| PostgresStorage::open_here(settings))
                .join()
                .unwrap_or_else(|_| Err(backend("opening the database panicked".into())))
        })
    }

    /// [`PostgresStorage::open`] on the calling thread, which must not drive async tasks.
    fn open_here(settings: &PgSettings) -> Result<PostgresStorage, StorageError> {
        let mut config: postgres::Config =
            settings.url.parse().map_err(|e| backend(format!("invalid database URL: {e}")))?;
        if config.get_application_name().is_none() {
            config.application_name("storesync-hub");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(POOL_WAIT);
        }
        let mut options = config.get_options().unwrap_or_default().to_owned();
        for (name, value) in SESSION_SETTINGS {
            if !options.contains(name) {
                options.push_str(&format!(" -c {name}={value}"));
            }
        }
        config.options(options.trim());
        let manager = Manager { config };
        // Migrate on a connection of its own before the pool exists: the pool then only ever sees the current schema.
        let mut first = r2d2::ManageConnection::connect(&manager)?;
        migrate(&mut first.client)?;
        drop(first);
        let pool = r2d2::Pool::builder()
            .max_size(settings.pool_size.max(1))
            .min_idle(Some(1))
            .connection_timeout(POOL_WAIT)
            // A dead connection shows at its first statement; a transaction's BEGIN is retried on a fresh one.
            .test_on_check_out(false)
            .error_handler(Box::new(LogErrors))
            .build(manager)
            .map_err(|e| backend(format!("connecting to the database: {e}")))?;
        Ok(PostgresStorage { pool: Some(pool), target: redact_url(&settings.url) })
    }

    fn conn(&self) -> Result<r2d2::PooledConnection<Manager>, StorageError> {
        let Some(pool) = &self.pool else {
            return Err(backend("the database pool is closed".into()));
        };
        pool.get().map_err(|e| {
            tracing::warn!(error = %e, "no database connection free");
            StorageError::Busy
        })
    }

    /// Runs `f` in one transaction, again (up to [`TX_ATTEMPTS`] runs) when it lost a serialization race, and
    /// commits what it returns `Ok`; an `Err` rolls everything back.
    fn tx<T, E: TxFailure>(&self, mode: Mode, mut f: impl FnMut(&mut Tx<'_, '_>) -> Result<T, E>) -> Result<T, E> {
        let mut pooled = self.conn()?;
        let mut fresh_conn = false;
        let mut attempt = 0;
        let started = std::time::Instant::now();
        loop {
            match run_once(&mut pooled, mode, &mut f) {
                Err(begin) if !fresh_conn && pooled.client.is_closed() => {
                    // The server closed this pooled connection (a restart, an idle timeout): nothing was sent yet.
                    tracing::debug!(error = %begin, "database connection closed; taking another");
                    fresh_conn = true;
                    pooled = self.conn()?;
                }
                Err(begin) => return Err(StorageError::from(begin).into()),
                Ok(Err(e)) if e.busy() && attempt + 1 < TX_ATTEMPTS && started.elapsed() < RETRY_WINDOW => {
                    attempt += 1;
                    metrics::counter!("storesync_hub_storage_retries_total").increment(1);
                    std::thread::sleep(Duration::from_millis(rand::random_range(1..=10u64) * u64::from(attempt)));
                }
                Ok(done) => return done,
            }
        }
    }

    /// Runs `f` outside a transaction block: each statement is its own transaction and sees what was committed
    /// when it started. For reads and single idempotent writes: `f` runs once more, on a fresh connection, when the
    /// pooled one turned out closed.
    fn with_conn<T>(
        &self,
        mut f: impl FnMut(&mut Cx<'_, Client>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut pooled = self.conn()?;
        let conn: &mut Conn = &mut pooled;
        let res = f(&mut Cx { c: &mut conn.client, statements: &mut conn.statements });
        match res {
            Err(_) if conn.client.is_closed() => {
                drop(pooled);
                let mut pooled = self.conn()?;
                let conn: &mut Conn = &mut pooled;
                f(&mut Cx { c: &mut conn.client, statements: &mut conn.statements })
            }
            other => other,
        }
    }
}

/// One run of a transaction: `Err` when it could not even begin, else what `f` and the COMMIT made of it.
fn run_once<T, E: TxFailure>(
    conn: &mut Conn,
    mode: Mode,
    f: &mut impl FnMut(&mut Tx<'_, '_>) -> Result<T, E>,
) -> Result<Result<T, E>, postgres::Error> {
    let mut tx = conn
        .client
        .build_transaction()
        .isolation_level(match mode {
            Mode::Write => IsolationLevel::ReadCommitted,
            Mode::Serializable => IsolationLevel::Serializable,
            Mode::Snapshot => IsolationLevel::RepeatableRead,
        })
        .read_only(mode == Mode::Snapshot)
        .start()?;
    let out = match f(&mut Cx { c: &mut tx, statements: &mut conn.statements }) {
        Ok(out) => out,
        Err(e) => return Ok(Err(e)), // dropped: rolled back
    };
    Ok(tx.commit().map(|()| out).map_err(|e| StorageError::from(e).into()))
}

// ---------------------------------------------------------------------------------------------------------------
// Rows.

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn limit_of(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

/// The chain head of a till as read (and locked) inside an ingest.
struct Head {
    journal_id: Option<Uuid>,
    hub_seq: u64,
    last_hash: String,
}

const HEAD_SELECT: &str = "SELECT journal_id, hub_seq, last_hash FROM tills WHERE store = $1 AND till = $2";

fn head_row(r: &Row) -> Head {
    Head { journal_id: r.get(0), hub_seq: to_u64(r.get(1)), last_hash: r.get(2) }
}

/// The columns [`stored_event`] reads, from `events`.
const EVENT_SELECT: &str = "SELECT hub_pos, event_id, store, till, seq, kind, occurred_at, body, hash,
        EXISTS (SELECT 1 FROM quarantine q WHERE q.store = events.store AND q.till = events.till
                AND q.seq = events.seq AND q.released_at IS NULL)
     FROM events";

/// A [`StoredEvent`] from columns 0..=9: hub_pos, event_id, store, till, seq, kind, occurred_at, body, hash,
/// quarantined.
fn stored_event(r: &Row) -> StoredEvent {
    StoredEvent {
        hub_pos: r.get(0),
        event_id: r.get(1),
        store: r.get(2),
        till: r.get(3),
        seq: to_u64(r.get(4)),
        kind: r.get(5),
        occurred_at: r.get(6),
        body: r.get(7),
        hash: r.get(8),
        quarantined: r.get(9),
    }
}

/// An outbox entry's columns: [`stored_event`]'s 0..=9 (an entry in the outbox is never held in quarantine),
/// then the outbox position and the time the event was stored.
const OUTBOX_SELECT: &str = "SELECT e.hub_pos, e.event_id, e.store, e.till, e.seq, e.kind, e.occurred_at, e.body,
        e.hash, FALSE, o.pos, e.received_at
     FROM outbox o JOIN events e ON e.hub_pos = o.hub_pos";

/// The filter of [`OUTBOX_SELECT`] by a subscription's kinds (`$2`) and stores (`$3`), after position `$1`.
const OUTBOX_FILTER: &str = "o.pos > $1
       AND (cardinality($2::text[]) = 0 OR e.kind = ANY($2::text[]))
       AND (cardinality($3::text[]) = 0 OR e.store = ANY($3::text[]))";

fn outbox_entry(r: &Row) -> OutboxEntry {
    OutboxEntry { pos: r.get(10), event: stored_event(r), received_at: r.get(11) }
}

/// The columns [`subscription_row`] reads, from `subscriptions`.
const SUBSCRIPTION_SELECT: &str = "SELECT id, kind, url, secret, kinds, stores, batch_size, max_attempts, cursor,
        created_at, last_error, last_delivery_at, stream, subject_prefix FROM subscriptions";

fn subscription_row(r: &Row) -> Subscription {
    Subscription {
        spec: NewSubscription {
            id: r.get(0),
            kind: r.get(1),
            url: r.get(2),
            secret: r.get(3),
            kinds: r.get(4),
            stores: r.get(5),
            batch_size: to_u32(r.get(6)),
            max_attempts: to_u32(r.get(7)),
            stream: r.get(12),
            subject_prefix: r.get(13),
        },
        cursor: r.get(8),
        created_at: r.get(9),
        last_error: r.get(10),
        last_delivery_at: r.get(11),
        lag: 0,
        dead_letters: 0,
    }
}

const ROLLOUT_COLUMNS: &str = "target, version, stage, canary_percent, max_failures, failures, installed, refused,
    halted_reason, started_at, updated_at";

fn rollout_row(r: &Row) -> Rollout {
    let stage: String = r.get(2);
    Rollout {
        target: r.get(0),
        version: r.get(1),
        // An unknown stage (written by a newer hub) offers nothing.
        stage: Stage::parse(&stage).unwrap_or(Stage::Halted),
        canary_percent: u8::try_from(r.get::<_, i64>(3).clamp(0, 100)).unwrap_or(0),
        max_failures: to_u32(r.get(4)),
        failures: to_u32(r.get(5)),
        installed: to_u64(r.get(6)),
        refused: to_u64(r.get(7)),
        halted_reason: r.get(8),
        started_at: r.get(9),
        updated_at: r.get(10),
    }
}

/// The target's rollout, locked for the rest of the transaction.
fn lock_rollout(tx: &mut Tx<'_, '_>, target: &str) -> Result<Option<Rollout>, postgres::Error> {
    let sql = format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE target = $1 FOR UPDATE");
    Ok(tx.query_opt(&sql, &[&target])?.as_ref().map(rollout_row))
}

/// Writes a rollout's mutable fields back.
fn write_rollout(tx: &mut Tx<'_, '_>, r: &Rollout) -> Result<(), postgres::Error> {
    tx.execute(
        "UPDATE rollouts SET stage = $1, failures = $2, installed = $3, refused = $4, halted_reason = $5,
            updated_at = $6 WHERE target = $7",
        &[
            &r.stage.as_str(),
            &i64::from(r.failures),
            &to_i64(r.installed),
            &to_i64(r.refused),
            &r.halted_reason,
            &r.updated_at,
            &r.target,
        ],
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Ingest.

/// A checked batch: what is new, ready to be stored.
struct Plan<'r> {
    ack: UploadAck,
    /// The events after the hub's head with their canonical body and, when held, why.
    fresh: Vec<(&'r JournalEvent, String, Option<String>)>,
}

/// Checks a batch against the till's locked head without writing anything: what is already stored must be
/// exactly what the batch says, the rest must continue the chain. A refusal leaves nothing to undo.
fn plan_ingest<'r>(
    tx: &mut Tx<'_, '_>,
    till: &TillId,
    head: &Head,
    req: &'r UploadRequest,
) -> Result<Plan<'r>, IngestError> {
    check_batch_shape(req)?;
    if let Some(recorded) = head.journal_id
        && head.hub_seq > 0
        && recorded != req.journal_id
    {
        return Err(IngestError::JournalMismatch { recorded, sent: req.journal_id });
    }
    let unchanged = Plan {
        ack: UploadAck { acked_through: head.hub_seq, last_hash: head.last_hash.clone(), quarantined: vec![] },
        fresh: Vec::new(),
    };
    let (Some(first), Some(last)) = (req.events.first(), req.events.last()) else {
        return Ok(unchanged); // a heartbeat
    };
    if first.seq > head.hub_seq + 1 {
        return Err(IngestError::SeqGap { first: first.seq, expected: head.hub_seq + 1 });
    }
    // The part of the batch the hub already holds must be exactly what it holds (else it is a fork).
    let known: Vec<&JournalEvent> = req.events.iter().take_while(|e| e.seq <= head.hub_seq).collect();
    if let (Some(a), Some(b)) = (known.first(), known.last()) {
        let rows = tx.query(
            "SELECT seq, event_id, hash FROM events WHERE store = $1 AND till = $2 AND seq BETWEEN $3 AND $4",
            &[&till.store, &till.till, &to_i64(a.seq), &to_i64(b.seq)],
        )?;
        let stored: HashMap<u64, (Uuid, String)> =
            rows.iter().map(|r| (to_u64(r.get(0)), (r.get(1), r.get(2)))).collect();
        for e in known {
            if stored.get(&e.seq).is_none_or(|(id, hash)| *id != e.event_id || *hash != e.hash) {
                return Err(IngestError::SequenceRegression { seq: e.seq });
            }
        }
    }
    if last.seq <= head.hub_seq {
        return Ok(unchanged); // a duplicate of what is stored
    }
    let new: Vec<&JournalEvent> = req.events.iter().skip_while(|e| e.seq <= head.hub_seq).collect();
    let ids: Vec<Uuid> = new.iter().map(|e| e.event_id).collect();
    let mut taken: HashMap<Uuid, u64> = tx
        .query(
            "SELECT event_id, seq FROM events WHERE store = $1 AND till = $2 AND event_id = ANY($3::uuid[])",
            &[&till.store, &till.till, &ids],
        )?
        .iter()
        .map(|r| (r.get(0), to_u64(r.get(1))))
        .collect();
    let mut prev = (head.hub_seq, head.last_hash.as_str());
    let mut fresh = Vec::with_capacity(new.len());
    for e in new {
        let body = e
            .verify_link(&till.store, &till.till, prev)
            .map_err(|err| IngestError::ChainBroken { seq: err.seq(), detail: err.to_string() })?;
        let body = String::from_utf8(body)
            .map_err(|_| IngestError::ChainBroken { seq: e.seq, detail: "body is not UTF-8".into() })?;
        if let Some(stored_seq) = taken.insert(e.event_id, e.seq) {
            return Err(IngestError::DuplicateEventId { seq: e.seq, event_id: e.event_id, stored_seq });
        }
        // The till journaled exactly this (the hash says so) but this hub cannot process it: store it in the
        // chain so nothing behind it waits, and hold it in quarantine (and out of the outbox until released).
        let held = e.check_body().err().map(|bad| bad.to_string());
        fresh.push((e, body, held));
        prev = (e.seq, &e.hash);
    }
    let quarantined = fresh.iter().filter(|(_, _, held)| held.is_some()).map(|(e, _, _)| e.seq).collect();
    let ack = UploadAck { acked_through: prev.0, last_hash: prev.1.to_owned(), quarantined };
    Ok(Plan { ack, fresh })
}

/// Takes `events` hub positions and `outbox` outbox positions from the counter row, which stays locked until the
/// transaction ends: positions are handed out in commit order. Answers the first of each.
fn take_positions(tx: &mut Tx<'_, '_>, events: usize, outbox: usize) -> Result<(i64, i64), postgres::Error> {
    let (n, m) = (limit_of(events), limit_of(outbox));
    let row = tx.query_one(
        "UPDATE hub_counters SET hub_pos = hub_pos + $1, outbox_pos = outbox_pos + $2 RETURNING hub_pos, outbox_pos",
        &[&n, &m],
    )?;
    Ok((row.get::<_, i64>(0) - n + 1, row.get::<_, i64>(1) - m + 1))
}

/// Stores a checked batch: events, quarantine rows, outbox entries, and the till's new head.
fn store_plan(
    tx: &mut Tx<'_, '_>,
    till: &TillId,
    head: &Head,
    req: &UploadRequest,
    plan: &Plan<'_>,
    now: i64,
) -> Result<(), IngestError> {
    if plan.fresh.is_empty() {
        return Ok(());
    }
    let n = plan.fresh.len();
    let (mut seqs, mut ids, mut kinds, mut occurred, mut bodies, mut prevs, mut hashes) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut held_seqs, mut held_reasons) = (Vec::new(), Vec::new());
    for (e, body, held) in &plan.fresh {
        seqs.push(to_i64(e.seq));
        ids.push(e.event_id);
        kinds.push(e.kind.as_str());
        occurred.push(e.occurred_at.as_str());
        bodies.push(body.as_str());
        prevs.push(e.prev_hash.as_str());
        hashes.push(e.hash.as_str());
        if let Some(reason) = held {
            held_seqs.push(to_i64(e.seq));
            held_reasons.push(reason.as_str());
        }
    }
    // Last, so the counter row is held for as short a time as possible.
    let (first_pos, first_out) = take_positions(tx, n, n - held_seqs.len())?;
    let positions: Vec<i64> = (first_pos..).take(n).collect();
    let inserted = tx.execute(
        "INSERT INTO events (hub_pos, store, till, seq, event_id, kind, occurred_at, body, prev_hash, hash, received_at)
         SELECT u.hub_pos, $1, $2, u.seq, u.event_id, u.kind, u.occurred_at, u.body, u.prev_hash, u.hash, $3
         FROM UNNEST($4::bigint[], $5::bigint[], $6::uuid[], $7::text[], $8::text[], $9::text[], $10::text[],
                     $11::text[]) AS u(hub_pos, seq, event_id, kind, occurred_at, body, prev_hash, hash)",
        &[
            &till.store,
            &till.till,
            &now,
            &positions,
            &seqs,
            &ids,
            &kinds,
            &occurred,
            &bodies,
            &prevs,
            &hashes,
        ],
    );
    match inserted {
        // Another writer stored one of these seqs or ids first: the till row lock makes this unreachable, the
        // unique constraints make it harmless.
        Err(e) if is_code(&e, &[SqlState::UNIQUE_VIOLATION]) => {
            return Err(IngestError::Storage(StorageError::Conflict));
        }
        other => other?,
    };
    if !held_seqs.is_empty() {
        tx.execute(
            "INSERT INTO quarantine (store, till, seq, reason, quarantined_at)
             SELECT $1, $2, u.seq, u.reason, $3 FROM UNNEST($4::bigint[], $5::text[]) AS u(seq, reason)",
            &[&till.store, &till.till, &now, &held_seqs, &held_reasons],
        )?;
    }
    let delivered: Vec<i64> =
        plan.fresh.iter().zip(&positions).filter(|((_, _, held), _)| held.is_none()).map(|(_, pos)| *pos).collect();
    if !delivered.is_empty() {
        let outbox: Vec<i64> = (first_out..).take(delivered.len()).collect();
        tx.execute(
            "INSERT INTO outbox (pos, hub_pos) SELECT * FROM UNNEST($1::bigint[], $2::bigint[])",
            &[&outbox, &delivered],
        )?;
    }
    let moved = tx.execute(
        "UPDATE tills SET hub_seq = $1, last_hash = $2, journal_id = $3
         WHERE store = $4 AND till = $5 AND hub_seq = $6",
        &[
            &to_i64(plan.ack.acked_through),
            &plan.ack.last_hash,
            &req.journal_id,
            &till.store,
            &till.till,
            &to_i64(head.hub_seq),
        ],
    )?;
    if moved != 1 {
        return Err(IngestError::Storage(StorageError::Conflict));
    }
    Ok(())
}

/// Records what an upload said about the till (last seen, backlog, version) and how it went (`chain_ok`,
/// `last_error`), and a progress sample, in the upload's transaction.
fn record_health(
    tx: &mut Tx<'_, '_>,
    till: &TillId,
    req: &UploadRequest,
    now: i64,
    change: &HealthChange,
) -> Result<(), postgres::Error> {
    tx.execute(
        "UPDATE tills SET last_seen = $1, backlog = $2, oldest_unsynced_age_s = $3, reported_seq = $4,
            agent_version = CASE WHEN $5::text = '' THEN agent_version ELSE $5::text END,
            chain_ok = COALESCE($6::boolean, chain_ok),
            last_error = CASE WHEN $7::boolean THEN NULL ELSE COALESCE($8::text, last_error) END
         WHERE store = $9 AND till = $10",
        &[
            &now,
            &to_i64(req.backlog),
            &to_i64(req.oldest_unsynced_age_s),
            &to_i64(req.last_seq),
            &req.agent_version,
            &change.chain_ok,
            &change.appended,
            &change.last_error,
            &till.store,
            &till.till,
        ],
    )?;
    tx.execute(
        "INSERT INTO till_progress (store, till, at, reported_seq, hub_seq)
         SELECT $1::text, $2::text, $3::bigint, $4::bigint, $5::bigint WHERE NOT EXISTS
           (SELECT 1 FROM till_progress WHERE store = $1::text AND till = $2::text AND at > $3::bigint - $6::bigint)",
        &[&till.store, &till.till, &now, &to_i64(req.last_seq), &to_i64(change.hub_seq), &SAMPLE_SPACING_S],
    )?;
    tx.execute(
        "DELETE FROM till_progress WHERE store = $1 AND till = $2 AND at < $3",
        &[&till.store, &till.till, &(now - SAMPLE_KEEP_S)],
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Documents and epochs.

/// A store's `store_docs` row: its meta and the version its snapshot was taken at.
fn read_doc_meta<C: GenericClient>(cx: &mut Cx<'_, C>, store: &str) -> Result<Option<(DocMeta, u64)>, postgres::Error> {
    let row = cx.query_opt(
        "SELECT epoch, version, changes_since_epoch, saved_bytes, chunks, snapshot_version,
                COALESCE((SELECT length(e.doc) FROM epochs e WHERE e.store = d.store AND e.epoch = d.epoch), 0)::bigint
         FROM store_docs d WHERE store = $1",
        &[&store],
    )?;
    Ok(row.map(|r| {
        (
            DocMeta {
                epoch: to_u64(r.get(0)),
                version: to_u64(r.get(1)),
                changes_since_epoch: to_u64(r.get(2)),
                saved_bytes: to_u64(r.get(3)),
                chunks: to_u64(r.get(4)),
                epoch_bytes: to_u64(r.get(6)),
            },
            to_u64(r.get(5)),
        )
    }))
}

fn read_chunks<C: GenericClient>(cx: &mut Cx<'_, C>, store: &str, after: u64) -> Result<Vec<Vec<u8>>, postgres::Error> {
    let rows = cx.query(
        "SELECT bytes FROM doc_chunks WHERE store = $1 AND version > $2 ORDER BY version",
        &[&store, &to_i64(after)],
    )?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn read_snapshot<C: GenericClient>(cx: &mut Cx<'_, C>, store: &str) -> Result<Option<Vec<u8>>, postgres::Error> {
    Ok(cx.query_opt("SELECT snapshot FROM store_docs WHERE store = $1", &[&store])?.and_then(|r| r.get(0)))
}

fn json_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StorageError> {
    serde_json::from_str(text).map_err(|e| backend(format!("stored {what} is not valid: {e}")))
}

/// An epoch's record and the journal part of its base (without head-office movements).
type EpochWithJournalBase = (EpochRecord, BTreeMap<String, i64>);

fn read_epoch<C: GenericClient>(
    cx: &mut Cx<'_, C>,
    store: &str,
    epoch: u64,
) -> Result<Option<EpochWithJournalBase>, StorageError> {
    let row = cx.query_opt(
        "SELECT cuts, base, journal_base, doc FROM epochs WHERE store = $1 AND epoch = $2",
        &[&store, &to_i64(epoch)],
    )?;
    let Some(r) = row else {
        return Ok(None);
    };
    Ok(Some((
        EpochRecord {
            epoch,
            cuts: parse_json(r.get(0), "epoch cuts")?,
            base: parse_json(r.get(1), "epoch base")?,
            doc: r.get(3),
        },
        parse_json(r.get(2), "epoch journal base")?,
    )))
}

/// `(event_id, kind, body)` of one stored event.
type EventRow = (Uuid, EventKind, serde_json::Value);

fn event_row(event_id: Uuid, kind: &str, body: &str) -> Result<EventRow, CompactError> {
    let kind = EventKind::parse(kind).ok_or_else(|| CompactError::BadEvent(format!("event kind {kind:?}")))?;
    let body = serde_json::from_str(body).map_err(|e| CompactError::BadEvent(format!("body of {event_id}: {e}")))?;
    Ok((event_id, kind, body))
}

/// The stock effect of a till's events in `(after, through]`; voids of earlier events are resolved from storage.
fn till_effects(
    tx: &mut Tx<'_, '_>,
    store: &str,
    till: &str,
    after: u64,
    through: u64,
) -> Result<BTreeMap<String, i64>, CompactError> {
    let rows = tx.query(
        "SELECT event_id, kind, body FROM events WHERE store = $1 AND till = $2 AND seq > $3 AND seq <= $4
         ORDER BY seq",
        &[&store, &till, &to_i64(after), &to_i64(through)],
    )?;
    let events = rows.iter().map(|r| event_row(r.get(0), r.get(1), r.get(2))).collect::<Result<Vec<_>, _>>()?;
    let mut lookup_err: Option<CompactError> = None;
    let lookup = |id: Uuid| -> Option<(EventKind, serde_json::Value)> {
        let row = tx.query_opt(
            "SELECT kind, body FROM events WHERE store = $1 AND till = $2 AND event_id = $3",
            &[&store, &till, &id],
        );
        let found = match row {
            Ok(Some(r)) => event_row(id, r.get(0), r.get(1)).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(CompactError::from(e)),
        };
        found
            .unwrap_or_else(|e| {
                lookup_err = Some(e);
                None
            })
            .map(|(_, k, b)| (k, b))
    };
    let effects =
        storesync_shared::crdt::journal_effects(events, lookup).map_err(|e| CompactError::BadEvent(e.to_string()));
    match lookup_err {
        Some(e) => Err(e),
        None => effects,
    }
}

// ---------------------------------------------------------------------------------------------------------------

impl Storage for PostgresStorage {
    fn create_enrollment(&self, e: &NewEnrollment) -> Result<(), StorageError> {
        self.tx(Mode::Write, |tx| {
            tx.execute(
                "INSERT INTO enrollments (code_hash, store, till, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
                &[&e.code_hash, &e.till.store, &e.till.till, &e.created_at, &e.expires_at],
            )?;
            tx.execute(
                "INSERT INTO tills (store, till, last_hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&e.till.store, &e.till.till, &genesis_hash(&e.till.store, &e.till.till)],
            )?;
            Ok(())
        })
    }

    fn redeem_enrollment(
        &self,
        code_hash: &str,
        credential_hash: &str,
        agent_version: &str,
        now: i64,
    ) -> Result<TillId, RedeemError> {
        self.tx(Mode::Write, |tx| {
            let Some(row) = tx.query_opt("SELECT store, till FROM enrollments WHERE code_hash = $1", &[&code_hash])?
            else {
                return Err(RedeemError::InvalidCode);
            };
            let (store, till): (String, String) = (row.get(0), row.get(1));
            // The till row first (as revoke takes it), then the code: a concurrent revoke or another redeem of the
            // same till waits here, and nobody waits crosswise.
            tx.execute(
                "INSERT INTO tills (store, till, last_hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&store, &till, &genesis_hash(&store, &till)],
            )?;
            tx.execute("SELECT 1 FROM tills WHERE store = $1 AND till = $2 FOR UPDATE", &[&store, &till])?;
            let row = tx.query_one(
                "SELECT expires_at, used_at FROM enrollments WHERE code_hash = $1 FOR UPDATE",
                &[&code_hash],
            )?;
            if row.get::<_, Option<i64>>(1).is_some() {
                return Err(RedeemError::Used);
            }
            if now >= row.get::<_, i64>(0) {
                return Err(RedeemError::Expired);
            }
            let used = tx.execute(
                "UPDATE enrollments SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL",
                &[&now, &code_hash],
            )?;
            if used != 1 {
                return Err(RedeemError::Used);
            }
            tx.execute(
                "UPDATE credentials SET revoked_at = $1 WHERE store = $2 AND till = $3 AND revoked_at IS NULL",
                &[&now, &store, &till],
            )?;
            tx.execute(
                "INSERT INTO credentials (hash, store, till, issued_at) VALUES ($1, $2, $3, $4)",
                &[&credential_hash, &store, &till, &now],
            )?;
            tx.execute(
                "UPDATE tills SET enrolled_at = $1, revoked_at = NULL, agent_version = $2 WHERE store = $3 AND till = $4",
                &[&now, &agent_version, &store, &till],
            )?;
            Ok(TillId { store, till })
        })
    }

    fn authenticate(&self, credential_hash: &str) -> Result<Option<TillId>, StorageError> {
        self.with_conn(|cx| {
            let row = cx.query_opt(
                "SELECT store, till FROM credentials WHERE hash = $1 AND revoked_at IS NULL",
                &[&credential_hash],
            )?;
            Ok(row.map(|r| TillId { store: r.get(0), till: r.get(1) }))
        })
    }

    fn revoke(&self, till: &TillId, now: i64) -> Result<bool, StorageError> {
        self.tx(Mode::Write, |tx| {
            let known = tx.execute(
                "UPDATE tills SET revoked_at = $1 WHERE store = $2 AND till = $3",
                &[&now, &till.store, &till.till],
            )?;
            tx.execute(
                "UPDATE credentials SET revoked_at = $1 WHERE store = $2 AND till = $3 AND revoked_at IS NULL",
                &[&now, &till.store, &till.till],
            )?;
            // Outstanding codes would let a revoked till straight back in.
            tx.execute(
                "UPDATE enrollments SET used_at = $1 WHERE store = $2 AND till = $3 AND used_at IS NULL",
                &[&now, &till.store, &till.till],
            )?;
            Ok(known == 1)
        })
    }

    fn append_batch(&self, till: &TillId, req: &UploadRequest, now: i64) -> Result<UploadAck, IngestError> {
        self.tx(Mode::Write, |tx| {
            // Locks the till row: another instance's upload of this till waits here until this one commits, then
            // reads the head this one left.
            let sql = format!("{HEAD_SELECT} FOR UPDATE");
            let Some(head) = tx.query_opt(&sql, &[&till.store, &till.till])?.as_ref().map(head_row) else {
                return Err(IngestError::UnknownTill);
            };
            match plan_ingest(tx, till, &head, req) {
                Err(err @ IngestError::Storage(_)) => Err(err),
                Err(refused) => {
                    // Nothing of the batch was written; the refusal is recorded and committed.
                    let outcome = Err(refused);
                    record_health(tx, till, req, now, &health_change(head.hub_seq, &outcome))?;
                    Ok(outcome)
                }
                Ok(plan) => {
                    let outcome = Ok(plan.ack.clone());
                    record_health(tx, till, req, now, &health_change(head.hub_seq, &outcome))?;
                    store_plan(tx, till, &head, req, &plan, now)?;
                    Ok(outcome)
                }
            }
        })?
    }

    fn till_state(&self, till: &TillId) -> Result<Option<TillState>, StorageError> {
        self.with_conn(|cx| {
            let head = cx.query_opt(HEAD_SELECT, &[&till.store, &till.till])?.as_ref().map(head_row);
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
        self.with_conn(|cx| {
            let rows = cx.query(
                "SELECT store, till, last_seen, reported_seq, hub_seq, backlog, oldest_unsynced_age_s,
                        agent_version, chain_ok, last_error, enrolled_at IS NOT NULL, revoked_at IS NOT NULL,
                        (SELECT COUNT(*) FROM quarantine q
                         WHERE q.store = t.store AND q.till = t.till AND q.released_at IS NULL)
                 FROM tills t ORDER BY store COLLATE \"C\", till COLLATE \"C\"",
                &[],
            )?;
            let mut out: Vec<StoreView> = Vec::new();
            for r in &rows {
                let store: String = r.get(0);
                let till = TillView {
                    till: r.get(1),
                    last_seen: r.get(2),
                    last_seq: to_u64(r.get(3)),
                    hub_seq: to_u64(r.get(4)),
                    backlog: to_u64(r.get(5)),
                    oldest_unsynced_age_s: to_u64(r.get(6)),
                    version: r.get(7),
                    chain_ok: r.get(8),
                    last_error: r.get(9),
                    enrolled: r.get(10),
                    revoked: r.get(11),
                    quarantined: to_u64(r.get(12)),
                };
                match out.last_mut() {
                    Some(s) if s.store == store => s.tills.push(till),
                    _ => out.push(StoreView { store, tills: vec![till] }),
                }
            }
            Ok(out)
        })
    }

    fn progress_samples(&self, since: i64) -> Result<Vec<TillSamples>, StorageError> {
        self.with_conn(|cx| {
            let rows = cx.query(
                "SELECT store, till, at, reported_seq, hub_seq FROM till_progress WHERE at >= $1
                 ORDER BY store COLLATE \"C\", till COLLATE \"C\", at",
                &[&since],
            )?;
            let mut out: Vec<TillSamples> = Vec::new();
            for r in &rows {
                let (store, till): (String, String) = (r.get(0), r.get(1));
                let sample = ProgressSample { at: r.get(2), reported_seq: to_u64(r.get(3)), hub_seq: to_u64(r.get(4)) };
                match out.last_mut() {
                    Some(t) if t.store == store && t.till == till => t.samples.push(sample),
                    _ => out.push(TillSamples { store, till, samples: vec![sample] }),
                }
            }
            Ok(out)
        })
    }

    fn doc_sizes(&self) -> Result<BTreeMap<String, u64>, StorageError> {
        self.with_conn(|cx| {
            let rows = cx.query("SELECT store, saved_bytes FROM store_docs", &[])?;
            Ok(rows.iter().map(|r| (r.get(0), to_u64(r.get(1)))).collect())
        })
    }

    fn recent_events(&self, store: &str, limit: usize) -> Result<Vec<StoredEvent>, StorageError> {
        self.with_conn(|cx| {
            // Per till through the (store, till, seq) index, then merged: a scan of the global order backwards
            // would walk every other store's events to find a quiet store's last few.
            let sql = format!(
                "SELECT x.* FROM tills t CROSS JOIN LATERAL
                   ({EVENT_SELECT} WHERE events.store = t.store AND events.till = t.till ORDER BY seq DESC LIMIT $2) x
                 WHERE t.store = $1 ORDER BY x.hub_pos DESC LIMIT $2"
            );
            let rows = cx.query(&sql, &[&store, &limit_of(limit)])?;
            Ok(rows.iter().map(stored_event).collect())
        })
    }

    fn create_subscription(&self, sub: &NewSubscription, now: i64) -> Result<Subscription, StorageError> {
        let res = self.tx(Mode::Write, |tx| -> Result<u64, StorageError> {
            Ok(tx.execute(
                "INSERT INTO subscriptions (id, kind, url, secret, kinds, stores, batch_size, max_attempts, created_at,
                                            stream, subject_prefix)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (id) DO NOTHING",
                &[
                    &sub.id,
                    &sub.kind,
                    &sub.url,
                    &sub.secret,
                    &sub.kinds,
                    &sub.stores,
                    &i64::from(sub.batch_size),
                    &i64::from(sub.max_attempts),
                    &now,
                    &sub.stream,
                    &sub.subject_prefix,
                ],
            )?)
        })?;
        if res != 1 {
            return Err(StorageError::Conflict);
        }
        Ok(Subscription::new(sub.clone(), now))
    }

    fn subscription(&self, id: &str) -> Result<Option<Subscription>, StorageError> {
        self.with_conn(|cx| {
            let sql = format!("{SUBSCRIPTION_SELECT} WHERE id = $1");
            Ok(cx.query_opt(&sql, &[&id])?.as_ref().map(subscription_row))
        })
    }

    fn list_subscriptions(&self, lag: bool) -> Result<Vec<Subscription>, StorageError> {
        self.with_conn(|cx| {
            let sql = format!("{SUBSCRIPTION_SELECT} ORDER BY id COLLATE \"C\"");
            let mut subs: Vec<Subscription> = cx.query(&sql, &[])?.iter().map(subscription_row).collect();
            let lag_sql =
                format!("SELECT COUNT(*) FROM outbox o JOIN events e ON e.hub_pos = o.hub_pos WHERE {OUTBOX_FILTER}");
            for sub in &mut subs {
                if lag {
                    let row = cx.query_one(&lag_sql, &[&sub.cursor, &sub.spec.kinds, &sub.spec.stores])?;
                    sub.lag = to_u64(row.get(0));
                }
                let row = cx.query_one(
                    "SELECT COUNT(*) FROM dead_letters WHERE subscription = $1 AND replayed_at IS NULL",
                    &[&sub.spec.id],
                )?;
                sub.dead_letters = to_u64(row.get(0));
            }
            Ok(subs)
        })
    }

    fn delete_subscription(&self, id: &str) -> Result<bool, StorageError> {
        self.tx(Mode::Write, |tx| {
            let n = tx.execute("DELETE FROM subscriptions WHERE id = $1", &[&id])?;
            tx.execute("DELETE FROM dead_letters WHERE subscription = $1", &[&id])?;
            Ok(n == 1)
        })
    }

    fn outbox_after(&self, sub: &NewSubscription, after: i64, limit: usize) -> Result<Vec<OutboxEntry>, StorageError> {
        self.with_conn(|cx| {
            let sql = format!("{OUTBOX_SELECT} WHERE {OUTBOX_FILTER} ORDER BY o.pos LIMIT $4");
            let rows = cx.query(&sql, &[&after, &sub.kinds, &sub.stores, &limit_of(limit)])?;
            Ok(rows.iter().map(outbox_entry).collect())
        })
    }

    fn delivered(&self, id: &str, cursor: i64, now: i64) -> Result<(), StorageError> {
        self.with_conn(|cx| {
            cx.execute(
                "UPDATE subscriptions SET cursor = GREATEST(cursor, $2), last_delivery_at = $3, last_error = NULL
                 WHERE id = $1",
                &[&id, &cursor, &now],
            )?;
            Ok(())
        })
    }

    fn delivery_failed(&self, id: &str, error: &str, _now: i64) -> Result<(), StorageError> {
        self.with_conn(|cx| {
            cx.execute("UPDATE subscriptions SET last_error = $2 WHERE id = $1", &[&id, &error])?;
            Ok(())
        })
    }

    fn dead_letter(
        &self,
        id: &str,
        entry: &OutboxEntry,
        attempts: u32,
        error: &str,
        now: i64,
    ) -> Result<(), StorageError> {
        self.tx(Mode::Write, |tx| {
            tx.execute(
                "INSERT INTO dead_letters (subscription, pos, attempts, last_error, dead_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (subscription, pos) DO UPDATE SET attempts = dead_letters.attempts + excluded.attempts,
                     last_error = excluded.last_error, dead_at = excluded.dead_at, replay_requested_at = NULL,
                     replayed_at = NULL",
                &[&id, &entry.pos, &i64::from(attempts), &error, &now],
            )?;
            tx.execute(
                "UPDATE subscriptions SET cursor = GREATEST(cursor, $2), last_error = $3 WHERE id = $1",
                &[&id, &entry.pos, &error],
            )?;
            Ok(())
        })
    }

    fn list_dead_letters(&self, id: &str) -> Result<Vec<DeadLetter>, StorageError> {
        self.with_conn(|cx| {
            let rows = cx.query(
                "SELECT d.id, d.subscription, d.pos, e.event_id, e.store, e.till, e.seq, e.kind, d.attempts,
                        d.last_error, d.dead_at, d.replay_requested_at, d.replayed_at
                 FROM dead_letters d JOIN outbox o ON o.pos = d.pos JOIN events e ON e.hub_pos = o.hub_pos
                 WHERE d.subscription = $1 ORDER BY d.id",
                &[&id],
            )?;
            Ok(rows
                .iter()
                .map(|r| DeadLetter {
                    id: r.get(0),
                    subscription: r.get(1),
                    pos: r.get(2),
                    event_id: r.get(3),
                    store: r.get(4),
                    till: r.get(5),
                    seq: to_u64(r.get(6)),
                    kind: r.get(7),
                    attempts: to_u32(r.get(8)),
                    last_error: r.get(9),
                    dead_at: r.get(10),
                    replay_requested_at: r.get(11),
                    replayed_at: r.get(12),
                })
                .collect())
        })
    }

    fn request_replay(&self, id: &str, which: &ReplaySelector, now: i64) -> Result<u64, StorageError> {
        self.tx(Mode::Write, |tx| {
            Ok(match which {
                ReplaySelector::Ids(ids) => tx.execute(
                    "UPDATE dead_letters SET replay_requested_at = $3, replayed_at = NULL
                     WHERE subscription = $1 AND id = ANY($2::bigint[])",
                    &[&id, ids, &now],
                )?,
                ReplaySelector::DeadBetween(from, to) => tx.execute(
                    "UPDATE dead_letters SET replay_requested_at = $4, replayed_at = NULL
                     WHERE subscription = $1 AND dead_at BETWEEN $2 AND $3",
                    &[&id, from, to, &now],
                )?,
            })
        })
    }

    fn pending_replays(&self, id: &str, limit: usize) -> Result<Vec<(i64, OutboxEntry)>, StorageError> {
        self.with_conn(|cx| {
            let rows = cx.query(
                "SELECT e.hub_pos, e.event_id, e.store, e.till, e.seq, e.kind, e.occurred_at, e.body, e.hash, FALSE,
                        o.pos, e.received_at, d.id
                 FROM dead_letters d JOIN outbox o ON o.pos = d.pos JOIN events e ON e.hub_pos = o.hub_pos
                 WHERE d.subscription = $1 AND d.replay_requested_at IS NOT NULL AND d.replayed_at IS NULL
                 ORDER BY d.id LIMIT $2",
                &[&id, &limit_of(limit)],
            )?;
            Ok(rows.iter().map(|r| (r.get(12), outbox_entry(r))).collect())
        })
    }

    fn replayed(&self, dead_letter: i64, now: i64) -> Result<(), StorageError> {
        self.with_conn(|cx| {
            cx.execute("UPDATE dead_letters SET replayed_at = $2 WHERE id = $1", &[&dead_letter, &now])?;
            Ok(())
        })
    }

    fn rewind_subscription(&self, id: &str, cursor: i64) -> Result<bool, StorageError> {
        self.with_conn(|cx| Ok(cx.execute("UPDATE subscriptions SET cursor = $2 WHERE id = $1", &[&id, &cursor])? == 1))
    }

    fn lease_subscription(&self, id: &str, owner: &str, now: i64, until: i64) -> Result<bool, StorageError> {
        self.with_conn(|cx| {
            let n = cx.execute(
                "UPDATE subscriptions SET lease_owner = $2, lease_until = $4
                 WHERE id = $1 AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until <= $3)",
                &[&id, &owner, &now, &until],
            )?;
            Ok(n == 1)
        })
    }

    fn release_subscription_lease(&self, id: &str, owner: &str) -> Result<(), StorageError> {
        self.with_conn(|cx| {
            cx.execute(
                "UPDATE subscriptions SET lease_owner = NULL, lease_until = 0 WHERE id = $1 AND lease_owner = $2",
                &[&id, &owner],
            )?;
            Ok(())
        })
    }

    fn list_events(&self, store: Option<&str>, after: i64, limit: usize) -> Result<Vec<StoredEvent>, StorageError> {
        self.with_conn(|cx| {
            let sql = format!(
                "{EVENT_SELECT} WHERE hub_pos > $1 AND ($2::text IS NULL OR store = $2::text) ORDER BY hub_pos LIMIT $3"
            );
            let rows = cx.query(&sql, &[&after, &store, &limit_of(limit)])?;
            Ok(rows.iter().map(stored_event).collect())
        })
    }

    fn list_quarantine(
        &self,
        store: Option<&str>,
        include_released: bool,
        after: i64,
        limit: usize,
    ) -> Result<Vec<QuarantinedEvent>, StorageError> {
        self.with_conn(|cx| {
            let rows = cx.query(
                "SELECT e.hub_pos, e.event_id, e.store, e.till, e.seq, e.kind, e.occurred_at, e.body, e.hash,
                        q.released_at IS NULL, q.reason, q.quarantined_at, q.released_at
                 FROM quarantine q JOIN events e ON e.store = q.store AND e.till = q.till AND e.seq = q.seq
                 WHERE e.hub_pos > $1 AND ($2::text IS NULL OR q.store = $2::text)
                   AND ($3::boolean OR q.released_at IS NULL)
                 ORDER BY e.hub_pos LIMIT $4",
                &[&after, &store, &include_released, &limit_of(limit)],
            )?;
            Ok(rows
                .iter()
                .map(|r| QuarantinedEvent {
                    event: stored_event(r),
                    reason: r.get(10),
                    quarantined_at: r.get(11),
                    released_at: r.get(12),
                })
                .collect())
        })
    }

    fn release_quarantined(
        &self,
        till: &TillId,
        seq: u64,
        now: i64,
        check: &dyn Fn(&StoredEvent) -> Result<(), String>,
    ) -> Result<ReleaseOutcome, StorageError> {
        self.tx(Mode::Write, |tx| {
            let row = tx.query_opt(
                "SELECT e.hub_pos, e.event_id, e.store, e.till, e.seq, e.kind, e.occurred_at, e.body, e.hash, TRUE
                 FROM quarantine q JOIN events e ON e.store = q.store AND e.till = q.till AND e.seq = q.seq
                 WHERE q.store = $1 AND q.till = $2 AND q.seq = $3 AND q.released_at IS NULL
                 FOR UPDATE OF q",
                &[&till.store, &till.till, &to_i64(seq)],
            )?;
            let Some(event) = row.as_ref().map(stored_event) else {
                return Ok(ReleaseOutcome::NotQuarantined);
            };
            if let Err(why) = check(&event) {
                return Ok(ReleaseOutcome::StillInvalid(why));
            }
            tx.execute(
                "UPDATE quarantine SET released_at = $1 WHERE store = $2 AND till = $3 AND seq = $4",
                &[&now, &till.store, &till.till, &to_i64(seq)],
            )?;
            // Released: it goes out now, after everything already in the outbox.
            let queued = tx.query_opt("SELECT 1 FROM outbox WHERE hub_pos = $1", &[&event.hub_pos])?.is_some();
            if !queued {
                let (_, pos) = take_positions(tx, 0, 1)?;
                tx.execute("INSERT INTO outbox (pos, hub_pos) VALUES ($1, $2)", &[&pos, &event.hub_pos])?;
            }
            Ok(ReleaseOutcome::Released)
        })
    }

    fn record_failed_attempt(&self, client: &str, now: i64) -> Result<(), StorageError> {
        self.tx(Mode::Write, |tx| {
            tx.execute("INSERT INTO enroll_failures (client, at) VALUES ($1, $2)", &[&client, &now])?;
            tx.execute("DELETE FROM enroll_failures WHERE at < $1", &[&(now - FAILURE_RETENTION_S)])?;
            Ok(())
        })
    }

    fn failed_attempts_since(&self, client: &str, since: i64) -> Result<(u32, Option<i64>), StorageError> {
        self.with_conn(|cx| {
            let r = cx.query_one(
                "SELECT COUNT(*), MIN(at) FROM enroll_failures WHERE client = $1 AND at >= $2",
                &[&client, &since],
            )?;
            Ok((to_u32(r.get(0)), r.get(1)))
        })
    }

    fn store_known(&self, store: &str) -> Result<bool, StorageError> {
        self.with_conn(|cx| Ok(cx.query_one("SELECT EXISTS (SELECT 1 FROM tills WHERE store = $1)", &[&store])?.get(0)))
    }

    fn doc_load(&self, store: &str, since: Option<(u64, u64)>) -> Result<DocLoad, StorageError> {
        self.tx(Mode::Snapshot, |tx| {
            let (meta, snapshot_version) = read_doc_meta(tx, store)?.unwrap_or_default();
            Ok(match since {
                Some((epoch, version))
                    if epoch == meta.epoch && version >= snapshot_version && version <= meta.version =>
                {
                    DocLoad::Delta { meta, chunks: read_chunks(tx, store, version)? }
                }
                _ => DocLoad::Full { meta, snapshot: read_snapshot(tx, store)?, chunks: read_chunks(tx, store, 0)? },
            })
        })
    }

    fn doc_apply(&self, writes: &[DocWrite], now: i64) -> Result<Vec<DocMeta>, StorageError> {
        let mut stores: Vec<&str> = writes.iter().map(|w| w.store.as_str()).collect();
        stores.sort_unstable();
        stores.dedup();
        self.tx(Mode::Write, |tx| {
            // Every store's row, created if new and locked in name order (two writers of the same stores never wait
            // on each other crosswise); the version checks below are then against rows nobody else can change.
            tx.execute(
                "INSERT INTO store_docs (store) SELECT unnest($1::text[]) ORDER BY 1 ON CONFLICT DO NOTHING",
                &[&stores],
            )?;
            tx.execute("SELECT 1 FROM store_docs WHERE store = ANY($1::text[]) ORDER BY store FOR UPDATE", &[&stores])?;
            let mut out = Vec::with_capacity(writes.len());
            for w in writes {
                let (mut meta, _) = read_doc_meta(tx, &w.store)?.unwrap_or_default();
                let changes_doc = !w.chunk.is_empty() || w.fold.is_some();
                if meta.epoch != w.epoch || (changes_doc && meta.version != w.base_version) {
                    return Err(StorageError::Conflict); // rolled back
                }
                if changes_doc {
                    meta.version += 1;
                    meta.changes_since_epoch += w.changes;
                    if let Some(full) = &w.fold {
                        tx.execute("DELETE FROM doc_chunks WHERE store = $1", &[&w.store])?;
                        meta.saved_bytes = full.len() as u64;
                        meta.chunks = 0;
                        tx.execute(
                            "UPDATE store_docs SET snapshot = $1, snapshot_version = $2 WHERE store = $3",
                            &[full, &to_i64(meta.version), &w.store],
                        )?;
                    } else {
                        tx.execute(
                            "INSERT INTO doc_chunks (store, version, bytes) VALUES ($1, $2, $3)",
                            &[&w.store, &to_i64(meta.version), &w.chunk],
                        )?;
                        meta.saved_bytes += w.chunk.len() as u64;
                        meta.chunks += 1;
                    }
                    let stored = tx.execute(
                        "UPDATE store_docs SET version = $1, changes_since_epoch = $2, saved_bytes = $3, chunks = $4
                         WHERE store = $5 AND epoch = $6 AND version = $7",
                        &[
                            &to_i64(meta.version),
                            &to_i64(meta.changes_since_epoch),
                            &to_i64(meta.saved_bytes),
                            &to_i64(meta.chunks),
                            &w.store,
                            &to_i64(w.epoch),
                            &to_i64(w.base_version),
                        ],
                    )?;
                    if stored != 1 {
                        return Err(StorageError::Conflict);
                    }
                }
                if let Some((till, state)) = &w.sync_state {
                    tx.execute(
                        "INSERT INTO sync_states (store, till, epoch, state, updated_at) VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (store, till, epoch) DO UPDATE SET state = excluded.state,
                             updated_at = excluded.updated_at",
                        &[&w.store, till, &to_i64(w.epoch), state, &now],
                    )?;
                }
                for m in &w.movements {
                    tx.execute(
                        "INSERT INTO hub_movements (store, sku, delta, reason, at) VALUES ($1, $2, $3, $4, $5)",
                        &[&w.store, &m.sku, &m.delta, &m.reason, &now],
                    )?;
                }
                out.push(meta);
            }
            Ok(out)
        })
    }

    fn sync_state(&self, store: &str, till: &str, epoch: u64) -> Result<Option<Vec<u8>>, StorageError> {
        self.with_conn(|cx| {
            let row = cx.query_opt(
                "SELECT state FROM sync_states WHERE store = $1 AND till = $2 AND epoch = $3",
                &[&store, &till, &to_i64(epoch)],
            )?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn compact(
        &self,
        store: &str,
        now: i64,
        build: &mut dyn FnMut(&CompactionInput) -> Result<Vec<u8>, String>,
    ) -> Result<EpochRecord, CompactError> {
        self.tx(Mode::Write, |tx| {
            let known: bool = tx.query_one("SELECT EXISTS (SELECT 1 FROM tills WHERE store = $1)", &[&store])?.get(0);
            if !known {
                return Err(CompactError::UnknownStore);
            }
            // The store's document row, locked: no write of the store and no other compaction of it runs alongside.
            tx.execute("INSERT INTO store_docs (store) VALUES ($1) ON CONFLICT DO NOTHING", &[&store])?;
            tx.execute("SELECT 1 FROM store_docs WHERE store = $1 FOR UPDATE", &[&store])?;
            let (meta, _) = read_doc_meta(tx, store)?.unwrap_or_default();
            // The previous epoch's cuts and journal base, so only the events since are read.
            let (prev_cuts, mut journal_base) = match read_epoch(tx, store, meta.epoch)? {
                Some((rec, jb)) if meta.epoch > 0 => (rec.cuts, jb),
                _ => (BTreeMap::new(), BTreeMap::new()),
            };
            // A till's cut stops before its first unreleased quarantined event: the hub cannot compute that event's
            // stock effect, the till can, and re-derives everything after its cut from its own journal.
            let rows = tx.query(
                "SELECT t.till, LEAST(t.hub_seq, COALESCE((SELECT MIN(q.seq) - 1 FROM quarantine q
                     WHERE q.store = t.store AND q.till = t.till AND q.released_at IS NULL), t.hub_seq))
                 FROM tills t WHERE t.store = $1",
                &[&store],
            )?;
            let cuts: BTreeMap<String, u64> = rows.iter().map(|r| (r.get(0), to_u64(r.get(1)))).collect();
            for (till, cut) in &cuts {
                let after = prev_cuts.get(till).copied().unwrap_or(0).min(*cut);
                let effects = till_effects(tx, store, till, after, *cut)?;
                add_into(&mut journal_base, &effects);
            }
            let mut base = journal_base.clone();
            let rows =
                tx.query("SELECT sku, SUM(delta)::bigint FROM hub_movements WHERE store = $1 GROUP BY sku", &[&store])?;
            let movements: BTreeMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            add_into(&mut base, &movements);
            let input = CompactionInput {
                epoch: meta.epoch,
                cuts,
                base,
                snapshot: read_snapshot(tx, store)?,
                chunks: read_chunks(tx, store, 0)?,
            };
            let doc = build(&input).map_err(CompactError::Build)?;
            let epoch = meta.epoch + 1;
            let version = meta.version + 1;
            tx.execute(
                "INSERT INTO epochs (store, epoch, cuts, base, journal_base, doc, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &store,
                    &to_i64(epoch),
                    &json_text(&input.cuts),
                    &json_text(&input.base),
                    &json_text(&journal_base),
                    &doc,
                    &now,
                ],
            )?;
            tx.execute("DELETE FROM epochs WHERE store = $1 AND epoch < $2", &[&store, &to_i64(epoch)])?;
            tx.execute(
                "UPDATE store_docs SET epoch = $1, version = $2, snapshot = $3, snapshot_version = $2,
                    changes_since_epoch = 0, saved_bytes = $4, chunks = 0
                 WHERE store = $5",
                &[&to_i64(epoch), &to_i64(version), &doc, &limit_of(doc.len()), &store],
            )?;
            tx.execute("DELETE FROM doc_chunks WHERE store = $1", &[&store])?;
            tx.execute("DELETE FROM sync_states WHERE store = $1 AND epoch < $2", &[&store, &to_i64(epoch)])?;
            Ok(EpochRecord { epoch, cuts: input.cuts, base: input.base, doc })
        })
    }

    fn epoch_record(&self, store: &str) -> Result<Option<EpochRecord>, StorageError> {
        self.tx(Mode::Snapshot, |tx| {
            let (meta, _) = read_doc_meta(tx, store)?.unwrap_or_default();
            if meta.epoch == 0 {
                return Ok(None);
            }
            Ok(read_epoch(tx, store, meta.epoch)?.map(|(r, _)| r))
        })
    }

    fn movement_totals(&self, store: &str) -> Result<(BTreeMap<String, i64>, u64), StorageError> {
        self.with_conn(|cx| {
            let rows = cx.query(
                "SELECT sku, SUM(delta)::bigint, COUNT(*) FROM hub_movements WHERE store = $1 GROUP BY sku",
                &[&store],
            )?;
            let mut totals = BTreeMap::new();
            let mut n = 0;
            for r in &rows {
                let (sku, sum, count): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
                n += to_u64(count);
                if sum != 0 {
                    totals.insert(sku, sum);
                }
            }
            Ok((totals, n))
        })
    }

    fn put_release(&self, rel: &NewRelease) -> Result<PutRelease, StorageError> {
        self.tx(Mode::Write, |tx| {
            let compare = |tx: &mut Tx<'_, '_>| -> Result<Option<PutRelease>, postgres::Error> {
                let row = tx.query_opt(
                    "SELECT manifest, signature, archive_sha256 FROM releases WHERE version = $1 AND target = $2",
                    &[&rel.version, &rel.target],
                )?;
                Ok(row.map(|r| {
                    let same = r.get::<_, Vec<u8>>(0) == rel.manifest
                        && r.get::<_, Option<String>>(1) == rel.signature
                        && r.get::<_, String>(2) == rel.archive_sha256;
                    if same { PutRelease::Identical } else { PutRelease::Conflict }
                }))
            };
            if let Some(stored) = compare(tx)? {
                return Ok(stored);
            }
            let n = tx.execute(
                "INSERT INTO releases (version, target, manifest, signature, archive, archive_sha256, archive_size,
                     min_version, expires_at, uploaded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (version, target) DO NOTHING",
                &[
                    &rel.version,
                    &rel.target,
                    &rel.manifest,
                    &rel.signature,
                    &rel.archive,
                    &rel.archive_sha256,
                    &to_i64(rel.archive_size),
                    &rel.min_version,
                    &rel.expires_at,
                    &rel.uploaded_at,
                ],
            )?;
            if n == 1 {
                return Ok(PutRelease::Created);
            }
            // Another instance stored this version and target between the look and the insert.
            Ok(compare(tx)?.unwrap_or(PutRelease::Conflict))
        })
    }

    fn list_releases(&self) -> Result<Vec<ReleaseInfo>, StorageError> {
        self.with_conn(|cx| {
            let rows = cx.query(
                "SELECT version, target, min_version, expires_at, archive_sha256, archive_size,
                        signature IS NOT NULL, uploaded_at FROM releases",
                &[],
            )?;
            let mut out: Vec<ReleaseInfo> = rows
                .iter()
                .map(|r| ReleaseInfo {
                    version: r.get(0),
                    target: r.get(1),
                    min_version: r.get(2),
                    expires_at: r.get(3),
                    archive_sha256: r.get(4),
                    archive_size: to_u64(r.get(5)),
                    signed: r.get(6),
                    uploaded_at: r.get(7),
                })
                .collect();
            out.sort_by(newest_first);
            Ok(out)
        })
    }

    fn release_archive(&self, version: &str, target: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.with_conn(|cx| {
            let row =
                cx.query_opt("SELECT archive FROM releases WHERE version = $1 AND target = $2", &[&version, &target])?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn start_rollout(&self, new: &NewRollout, now: i64) -> Result<Rollout, RolloutError> {
        // SERIALIZABLE: the target's row may not exist yet, so there is nothing to lock; two instances starting a
        // rollout of one target at once would otherwise both miss recording the other's as superseded.
        self.tx(Mode::Serializable, |tx| {
            let known: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM releases WHERE version = $1 AND target = $2)",
                    &[&new.version, &new.target],
                )?
                .get(0);
            if !known {
                return Err(RolloutError::UnknownRelease { version: new.version.clone(), target: new.target.clone() });
            }
            tx.execute(
                "INSERT INTO rollout_history (target, version, stage, canary_percent, max_failures, failures,
                     installed, refused, halted_reason, started_at, ended_at)
                 SELECT target, version, 'superseded', canary_percent, max_failures, failures, installed, refused,
                     halted_reason, started_at, $2 FROM rollouts WHERE target = $1",
                &[&new.target, &now],
            )?;
            tx.execute("DELETE FROM rollouts WHERE target = $1", &[&new.target])?;
            tx.execute(
                "INSERT INTO rollouts (target, version, stage, canary_percent, max_failures, started_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $6)",
                &[
                    &new.target,
                    &new.version,
                    &Stage::initial(new.canary_percent).as_str(),
                    &i64::from(new.canary_percent),
                    &i64::from(new.max_failures),
                    &now,
                ],
            )?;
            lock_rollout(tx, &new.target)?.ok_or_else(|| RolloutError::NoRollout(new.target.clone()))
        })
    }

    fn change_rollout(&self, target: &str, change: &Transition, now: i64) -> Result<Rollout, RolloutError> {
        self.tx(Mode::Write, |tx| {
            let mut r = lock_rollout(tx, target)?.ok_or_else(|| RolloutError::NoRollout(target.to_owned()))?;
            apply_transition(&mut r, change, now)?;
            write_rollout(tx, &r)?;
            Ok(r)
        })
    }

    fn list_rollouts(&self) -> Result<Vec<Rollout>, StorageError> {
        self.with_conn(|cx| {
            let sql = format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY target COLLATE \"C\"");
            Ok(cx.query(&sql, &[])?.iter().map(rollout_row).collect())
        })
    }

    fn version_spread(&self) -> Result<Vec<(String, u64)>, StorageError> {
        self.with_conn(|cx| {
            let rows = cx.query(
                "SELECT agent_version, COUNT(*) FROM tills
                 WHERE enrolled_at IS NOT NULL AND revoked_at IS NULL
                 GROUP BY agent_version ORDER BY agent_version COLLATE \"C\"",
                &[],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), to_u64(r.get(1)))).collect())
        })
    }

    fn check_update(
        &self,
        till: &TillId,
        running_version: &str,
        target: &str,
        now: i64,
    ) -> Result<Option<UpdateCandidate>, StorageError> {
        self.tx(Mode::Write, |tx| {
            tx.execute(
                "UPDATE tills SET agent_version = $1, last_seen = $2 WHERE store = $3 AND till = $4",
                &[&running_version, &now, &till.store, &till.till],
            )?;
            let sql = format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE target = $1");
            let Some(rollout) = tx.query_opt(&sql, &[&target])?.as_ref().map(rollout_row) else {
                return Ok(None);
            };
            let release = tx.query_opt(
                "SELECT manifest, signature FROM releases WHERE version = $1 AND target = $2",
                &[&rollout.version, &rollout.target],
            )?;
            Ok(release.map(|r| UpdateCandidate { rollout, manifest: r.get(0), signature: r.get(1) }))
        })
    }

    fn record_update_report(
        &self,
        till: &TillId,
        report: &NewUpdateReport,
        now: i64,
    ) -> Result<ReportEffect, StorageError> {
        self.tx(Mode::Write, |tx| {
            tx.execute(
                "INSERT INTO update_reports (store, till, version, target, outcome, running_version, reason, detail, at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &till.store,
                    &till.till,
                    &report.version,
                    &report.target,
                    &outcome_text(report.outcome),
                    &report.running_version,
                    &report.reason,
                    &report.detail,
                    &now,
                ],
            )?;
            tx.execute(
                "UPDATE tills SET agent_version = $1, last_seen = $2 WHERE store = $3 AND till = $4",
                &[&report.running_version, &now, &till.store, &till.till],
            )?;
            // Locked: reports of two instances count one after the other, so a halt at max_failures is never lost.
            match lock_rollout(tx, &report.target)?.filter(|r| r.version == report.version) {
                Some(mut r) => {
                    let effect = apply_report(&mut r, &till.store, report.outcome, now);
                    write_rollout(tx, &r)?;
                    Ok(effect)
                }
                None => Ok(ReportEffect { rollout: None, counted_failure: false, halted_now: false }),
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------------------------

/// A schema of its own in an existing database, made for a test or a trial run and dropped (with everything in
/// it) when this value is dropped. [`ScratchSchema::url`] points a hub at it. Usable from async code too: its own
/// statements run on a thread of their own.
pub struct ScratchSchema {
    admin: String,
    name: String,
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
fn admin_statement(url: &str, sql: &str) -> Result<(), StorageError> {
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

#[cfg(test)]
mod tests {
    use std::sync::{Barrier, Mutex};

    use storesync_shared::canonical::{ChainInput, event_hash};

    use super::*;
    use crate::storage::conformance::{self, chain, enrolled_with_events, journal, upload, webhook};

    /// The database of `STORESYNC_TEST_PG`. Without it the test is skipped and says so on stderr, unless
    /// `STORESYNC_REQUIRE_ALL=1` (CI), where it fails (as `storesync_tests::proc::require_tool` does for e2e tests).
    pub(super) fn test_pg() -> Option<String> {
        if let Some(url) = std::env::var("STORESYNC_TEST_PG").ok().filter(|u| !u.trim().is_empty()) {
            return Some(url);
        }
        if std::env::var("STORESYNC_REQUIRE_ALL").is_ok_and(|v| v == "1") {
            panic!("PostgreSQL (STORESYNC_TEST_PG) is required (STORESYNC_REQUIRE_ALL=1) but not set; .ci/run sets it");
        }
        eprintln!(
            "SKIPPED: PostgreSQL backend tests: STORESYNC_TEST_PG is not set (set STORESYNC_REQUIRE_ALL=1 to make this a failure)"
        );
        None
    }

    /// One hub instance's storage on `schema`: a pool of its own.
    pub(super) fn instance(schema: &ScratchSchema, pool_size: u32) -> PostgresStorage {
        PostgresStorage::open(&PgSettings { url: schema.url(), pool_size }).unwrap()
    }

    #[test]
    fn postgres_passes_the_conformance_suite() {
        let Some(url) = test_pg() else { return };
        let mut schemas = Vec::new();
        conformance::run_all(|| {
            let schema = ScratchSchema::create(&url).unwrap();
            let s = instance(&schema, 2);
            schemas.push(schema);
            s
        });
    }

    #[test]
    fn migrations_run_once_when_instances_start_together() {
        let Some(url) = test_pg() else { return };
        let schema = ScratchSchema::create(&url).unwrap();
        let start = Barrier::new(4);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    start.wait();
                    instance(&schema, 1)
                });
            }
        });
        let s = instance(&schema, 1); // and once more, on a migrated schema
        let versions = s
            .with_conn(|cx| Ok(cx.query("SELECT version FROM schema_migrations ORDER BY version", &[])?))
            .unwrap()
            .iter()
            .map(|r| r.get::<_, i32>(0))
            .collect::<Vec<_>>();
        assert_eq!(versions, MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>());
        enrolled_with_events(&s, 3);
        assert_eq!(s.list_events(None, 0, 10).unwrap().len(), 3);
        let settings = s
            .with_conn(|cx| {
                let lock: String = cx.query_one("SHOW lock_timeout", &[])?.get(0);
                let idle: String = cx.query_one("SHOW idle_in_transaction_session_timeout", &[])?.get(0);
                let path: String = cx.query_one("SHOW search_path", &[])?.get(0);
                Ok((lock, idle, path))
            })
            .unwrap();
        assert_eq!(settings, ("5s".into(), "1min".into(), schema.name().to_owned()), "the URL's options are kept too");
    }

    #[test]
    fn a_schema_migrated_by_a_newer_hub_is_refused() {
        let Some(url) = test_pg() else { return };
        let schema = ScratchSchema::create(&url).unwrap();
        let s = instance(&schema, 1);
        s.with_conn(|cx| Ok(cx.execute("INSERT INTO schema_migrations (version, name) VALUES (999, 'future')", &[])?))
            .unwrap();
        let err = PostgresStorage::open(&PgSettings { url: schema.url(), pool_size: 1 }).unwrap_err();
        assert!(err.to_string().contains("newer than this hub"), "{err}");
    }

    #[test]
    fn passwords_never_reach_a_log() {
        let check = |url: &str, want: &str| assert_eq!(redact_url(url), want, "{url}");
        check("postgres://hub:s3cret@db.example:5432/fleet", "postgres://hub:***@db.example:5432/fleet");
        check("postgresql://hub@db/fleet?sslmode=disable", "postgresql://hub@db/fleet?sslmode=disable");
        check("postgres://hub:p%40ss@db", "postgres://hub:***@db");
        check(
            "postgres://db/fleet?user=hub&password=x&application_name=a",
            "postgres://db/fleet?user=hub&password=***&application_name=a",
        );
        check("host=db user=hub password=s3cret dbname=fleet", "host=db user=hub password=***");
        check("host=db user=hub dbname=fleet", "host=db user=hub dbname=fleet");
        let settings = PgSettings::new("postgres://hub:s3cret@db/fleet");
        assert!(!format!("{settings:?}").contains("s3cret"));
        let err = PostgresStorage::open(&PgSettings::new("postgres://hub:s3cret@127.0.0.1:1/x")).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    /// Runs `f` until it is not refused as retryable (a real hub answers 503 and the till sends again).
    pub(super) fn retrying<T, E: std::fmt::Debug>(
        mut f: impl FnMut() -> Result<T, E>,
        retryable: impl Fn(&E) -> bool,
    ) -> T {
        for _ in 0..1000 {
            match f() {
                Ok(v) => return v,
                Err(e) if retryable(&e) => std::thread::yield_now(),
                Err(e) => panic!("{e:?}"),
            }
        }
        panic!("still refused after 1000 tries");
    }

    #[test]
    fn two_instances_given_the_same_batches_store_each_event_once() {
        let Some(url) = test_pg() else { return };
        let schema = ScratchSchema::create(&url).unwrap();
        let hubs = [instance(&schema, 4), instance(&schema, 4)];
        let till = enrolled_with_events(&hubs[0], 0);
        let events = chain(&till, 600, 0);
        let batches: Vec<_> = events.chunks(50).map(|c| upload(journal(), c)).collect();
        // Six tills' worth of senders (three per instance), each sending every batch in order, all at once.
        let acks = Mutex::new(Vec::new());
        let start = Barrier::new(6);
        std::thread::scope(|scope| {
            for t in 0..6 {
                let (hub, batches, acks, start, till) = (&hubs[t % 2], &batches, &acks, &start, &till);
                scope.spawn(move || {
                    start.wait();
                    for (i, batch) in batches.iter().enumerate() {
                        let ack = retrying(
                            || hub.append_batch(till, batch, 1_800_000_000),
                            |e| matches!(e, IngestError::Storage(s) if s.is_retryable()),
                        );
                        acks.lock().unwrap().push((i, ack.acked_through));
                    }
                });
            }
        });
        // Every sender was answered for every batch, acknowledged through its end at least: one stored it, the
        // rest were told it is stored (through wherever the till stood by then).
        let acks = acks.into_inner().unwrap();
        assert_eq!(acks.len(), 6 * batches.len());
        assert!(acks.iter().all(|(i, through)| *through >= (*i as u64 + 1) * 50), "{acks:?}");
        // Each event once, in chain order, at hub positions 1..=600: positions are taken only by the transaction
        // that stores a batch, so no batch was stored twice (nor stored and rolled back).
        let stored = hubs[1].list_events(None, 0, 1000).unwrap();
        let got: Vec<(i64, u64)> = stored.iter().map(|e| (e.hub_pos, e.seq)).collect();
        assert_eq!(got, (1..=600).map(|n| (n, n as u64)).collect::<Vec<_>>());
        let mut prev = genesis_hash(&till.store, &till.till);
        for (e, sent) in stored.iter().zip(&events) {
            let kind = EventKind::parse(&e.kind).unwrap();
            let hash = event_hash(&ChainInput {
                store: &e.store,
                till: &e.till,
                seq: e.seq,
                event_id: e.event_id,
                kind,
                body: e.body.as_bytes(),
                prev_hash: &prev,
            });
            assert_eq!((hash.as_str(), e.event_id), (sent.hash.as_str(), sent.event_id), "chain broken at {}", e.seq);
            prev = hash;
        }
        let head = hubs[0].till_state(&till).unwrap().unwrap();
        assert_eq!((head.hub_seq, head.last_hash.as_str()), (600, events[599].hash.as_str()));
        let outbox = hubs[0].outbox_after(&webhook("all"), 0, 1000).unwrap();
        assert_eq!(outbox.iter().map(|o| o.event.seq).collect::<Vec<_>>(), (1..=600).collect::<Vec<_>>());
        assert!(hubs[0].list_stores().unwrap()[0].tills[0].chain_ok);
    }

    #[test]
    fn concurrent_document_writes_on_two_instances_lose_nothing() {
        let Some(url) = test_pg() else { return };
        let schema = ScratchSchema::create(&url).unwrap();
        let hubs = [instance(&schema, 4), instance(&schema, 4)];
        let (threads, writes) = (6, 15);
        std::thread::scope(|scope| {
            for t in 0..threads {
                let hub = &hubs[t % 2];
                scope.spawn(move || {
                    // Half the writers change both stores in one transaction, in opposite orders.
                    let stores: &[&str] = match t % 3 {
                        0 => &["S1"],
                        1 => &["S1", "S2"],
                        _ => &["S2", "S1"],
                    };
                    for k in 0..writes {
                        retrying(
                            || {
                                let ws: Vec<DocWrite> = stores
                                    .iter()
                                    .map(|store| {
                                        let meta = hub.doc_load(store, None).unwrap().meta();
                                        DocWrite {
                                            store: (*store).into(),
                                            epoch: meta.epoch,
                                            base_version: meta.version,
                                            chunk: format!("{t}/{k}").into_bytes(),
                                            changes: 1,
                                            movements: vec![super::super::NewMovement {
                                                sku: "SKU".into(),
                                                delta: 1,
                                                reason: "receipt".into(),
                                            }],
                                            ..Default::default()
                                        }
                                    })
                                    .collect();
                                hub.doc_apply(&ws, 1_800_000_000)
                            },
                            |e| matches!(e, StorageError::Conflict | StorageError::Busy),
                        );
                    }
                });
            }
        });
        // Writers per store: S1 all six, S2 the four two-store ones.
        for (store, writers) in [("S1", threads), ("S2", 4)] {
            let n = writers * writes;
            let (totals, count) = hubs[0].movement_totals(store).unwrap();
            assert_eq!((totals.get("SKU").copied(), count), (Some(n as i64), n as u64), "{store}");
            let DocLoad::Full { meta, snapshot: None, chunks } = hubs[1].doc_load(store, None).unwrap() else {
                panic!("{store}: no fold was asked for")
            };
            assert_eq!((meta.version, meta.chunks, chunks.len()), (n as u64, n as u64, n), "{store}");
            let distinct: HashSet<&Vec<u8>> = chunks.iter().collect();
            assert_eq!(distinct.len(), n, "{store}: every write stored once");
        }
    }

    #[test]
    fn two_instances_delivering_one_subscription_take_turns_and_move_the_cursor_once_per_batch() {
        let Some(url) = test_pg() else { return };
        let schema = ScratchSchema::create(&url).unwrap();
        let hubs = [instance(&schema, 4), instance(&schema, 4)];
        let till = enrolled_with_events(&hubs[0], 0);
        for part in chain(&till, 300, 0).chunks(100) {
            hubs[1].append_batch(&till, &upload(journal(), part), 1_800_000_000).unwrap();
        }
        let mut sub = webhook("erp");
        sub.batch_size = 7;
        hubs[0].create_subscription(&sub, 1_800_000_000).unwrap();
        // Four delivery workers, two per instance. Each delivers one batch per turn of the lease and gives it up,
        // so the lease keeps changing hands; what each "sends" is recorded while it holds the lease.
        // (worker, the positions of one batch it sent)
        let sent: Mutex<Vec<(usize, Vec<i64>)>> = Mutex::default();
        std::thread::scope(|scope| {
            for w in 0..4 {
                let (hub, sent, sub) = (&hubs[w % 2], &sent, &sub);
                scope.spawn(move || {
                    let owner = format!("worker-{w}");
                    let now = 1_800_000_000;
                    for _ in 0..100_000 {
                        if !hub.lease_subscription("erp", &owner, now, now + 60).unwrap() {
                            std::thread::yield_now();
                            continue;
                        }
                        let cursor = hub.subscription("erp").unwrap().unwrap().cursor;
                        let batch = hub.outbox_after(sub, cursor, sub.batch_size as usize).unwrap();
                        let Some(last) = batch.last().map(|e| e.pos) else {
                            hub.release_subscription_lease("erp", &owner).unwrap();
                            return;
                        };
                        sent.lock().unwrap().push((w, batch.iter().map(|e| e.pos).collect()));
                        hub.delivered("erp", last, now).unwrap();
                        hub.release_subscription_lease("erp", &owner).unwrap();
                    }
                    panic!("worker {w} never saw the end of the outbox");
                });
            }
        });
        let sent = sent.lock().unwrap();
        let positions: Vec<i64> = sent.iter().flat_map(|(_, p)| p.clone()).collect();
        let all: Vec<i64> = hubs[0].outbox_after(&sub, 0, 1000).unwrap().iter().map(|e| e.pos).collect();
        assert_eq!(all.len(), 300);
        assert_eq!(positions, all, "every entry sent once, in outbox order");
        assert_eq!(sent.len(), 300usize.div_ceil(7), "one cursor move per batch");
        let workers: HashSet<usize> = sent.iter().map(|(w, _)| *w).collect();
        assert!(workers.len() > 1, "the lease changed hands: {workers:?}");
        assert_eq!(hubs[1].subscription("erp").unwrap().unwrap().cursor, *all.last().unwrap());
    }
}
