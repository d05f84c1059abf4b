//! Connections of the PostgreSQL backend: the storage type itself, opening it, its pool and the transaction-retry
//! helper.

use std::collections::HashMap;
use std::time::Duration;

use postgres::types::ToSql;
use postgres::{Client, GenericClient, IsolationLevel, NoTls, Row, Statement, Transaction};

use super::error::{TxFailure, backend};
use super::schema::migrate;
use super::settings::{POOL_WAIT, PgSettings, TX_ATTEMPTS, redact_url};
use crate::storage::error::StorageError;

/// A transaction is run again only while this much time has passed since its first run: a lost race is retried,
/// a lock wait that timed out (the database is overloaded) is answered busy at once.
pub(super) const RETRY_WINDOW: Duration = Duration::from_secs(2);

/// Session settings the hub adds unless the connection string sets them: a lock wait gives up (and the caller is
/// answered busy) instead of queueing without end, and the server ends a session that sits in a transaction doing
/// nothing (a hung or stopped hub process), so its row locks never block the other instances for good.
pub(super) const SESSION_SETTINGS: [(&str, &str); 2] =
    [("lock_timeout", "5s"), ("idle_in_transaction_session_timeout", "60s")];

// Connections.

/// A pooled connection and the statements prepared on it.
pub(super) struct Conn {
    pub(super) client: Client,
    pub(super) statements: HashMap<String, Statement>,
}

pub(super) struct Manager {
    pub(super) config: postgres::Config,
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
pub(super) struct LogErrors;

impl r2d2::HandleError<postgres::Error> for LogErrors {
    fn handle_error(&self, error: postgres::Error) {
        tracing::warn!(error = %error, "PostgreSQL connection failed");
    }
}

/// A client (a connection or a transaction on it) with the connection's prepared-statement cache: every query
/// goes through a statement prepared once per connection.
pub(super) struct Cx<'a, C> {
    pub(super) c: &'a mut C,
    pub(super) statements: &'a mut HashMap<String, Statement>,
}

pub(super) type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

impl<C: GenericClient> Cx<'_, C> {
    pub(super) fn statement(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.c.prepare(sql)?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    pub(super) fn query(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, postgres::Error> {
        let s = self.statement(sql)?;
        self.c.query(&s, params)
    }

    pub(super) fn query_opt(&mut self, sql: &str, params: Params<'_>) -> Result<Option<Row>, postgres::Error> {
        let s = self.statement(sql)?;
        self.c.query_opt(&s, params)
    }

    pub(super) fn query_one(&mut self, sql: &str, params: Params<'_>) -> Result<Row, postgres::Error> {
        let s = self.statement(sql)?;
        self.c.query_one(&s, params)
    }

    pub(super) fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64, postgres::Error> {
        let s = self.statement(sql)?;
        self.c.execute(&s, params)
    }
}

pub(super) type Tx<'a, 'b> = Cx<'a, Transaction<'b>>;

/// How a transaction runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
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
    pub(super) pool: Option<r2d2::Pool<Manager>>,
    pub(super) target: String,
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
    pub(super) fn open_here(settings: &PgSettings) -> Result<PostgresStorage, StorageError> {
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

    pub(super) fn conn(&self) -> Result<r2d2::PooledConnection<Manager>, StorageError> {
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
    pub(super) fn tx<T, E: TxFailure>(
        &self,
        mode: Mode,
        mut f: impl FnMut(&mut Tx<'_, '_>) -> Result<T, E>,
    ) -> Result<T, E> {
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
    pub(super) fn with_conn<T>(
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
pub(super) fn run_once<T, E: TxFailure>(
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

// Rows.

pub(super) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn limit_of(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn to_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

pub(super) fn json_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StorageError> {
    serde_json::from_str(text).map_err(|e| backend(format!("stored {what} is not valid: {e}")))
}

/// Takes `events` hub positions and `outbox` outbox positions from the counter row, which stays locked until the
/// transaction ends: positions are handed out in commit order. Answers the first of each.
pub(super) fn take_positions(tx: &mut Tx<'_, '_>, events: usize, outbox: usize) -> Result<(i64, i64), postgres::Error> {
    let (n, m) = (limit_of(events), limit_of(outbox));
    let row = tx.query_one(
        "UPDATE hub_counters SET hub_pos = hub_pos + $1, outbox_pos = outbox_pos + $2 RETURNING hub_pos, outbox_pos",
        &[&n, &m],
    )?;
    Ok((row.get::<_, i64>(0) - n + 1, row.get::<_, i64>(1) - m + 1))
}
