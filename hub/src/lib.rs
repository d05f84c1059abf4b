//! `storesync-hub`: the head-office side of storesync: till enrolment, exactly-once journal ingest, the fleet
//! view, the store documents (CRDT sync with tills, head-office prices and stock, epoch compaction), and the
//! agent releases with their staged rollouts ([`rollout`]; the publisher's signing side is [`release`]).
//!
//! Entry points: [`run`] (what `storesync-hub serve` calls) and [`bind`] + [`Server::serve`] for callers that need
//! the bound address first (tests, `demo`); [`router`] builds the HTTP surface on any [`AppState`].
//!
//! Architecture invariants: only [`storage`] knows SQL; only [`docs`] knows automerge sync and epochs; only [`api`]
//! knows HTTP and the wire format's status codes; the hub never trusts a store or till named in a request body, only the one bound to the credential.

pub mod api;
pub mod backpressure;
pub mod docs;
pub mod fleet;
pub mod openapi;
pub mod outbox;
pub mod release;
pub mod reservations;
pub mod rollout;
pub mod secrets;
pub mod server;
pub mod storage;
pub mod subscriptions;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

pub use api::{AppState, router};
pub use docs::SyncLimits;
pub use server::{Server, bind};

use crate::storage::sqlite::SqliteStorage;

/// The hub's wall clock, in unix seconds. Behind a trait so tests can move time (code expiry, rate limits).
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now: i64) -> ManualClock {
        ManualClock(AtomicI64::new(now))
    }

    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// PEM files of the server certificate chain and its private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Enrolment brute-force protection: at most `max_failures` failed attempts per client IP per `window_s`.
#[derive(Debug, Clone, Copy)]
pub struct EnrollLimits {
    pub max_failures: u32,
    pub window_s: i64,
}

impl Default for EnrollLimits {
    fn default() -> Self {
        EnrollLimits { max_failures: 10, window_s: 300 }
    }
}

/// Per-till request rate on the till endpoints (`/v1/sync/*`): a token bucket of `burst` requests refilled at
/// `per_second`. Over it a till gets `429 rate_limited` with `Retry-After`; other tills are unaffected. The
/// defaults leave a draining till (one 1,000-event batch per request) well below the limit.
#[derive(Debug, Clone, Copy)]
pub struct TillRate {
    pub per_second: u32,
    pub burst: u32,
}

impl Default for TillRate {
    fn default() -> Self {
        TillRate { per_second: 100, burst: 200 }
    }
}

/// Agent releases: the largest upload, and the publisher keys the hub itself checks uploads against.
#[derive(Debug, Clone)]
pub struct ReleaseSettings {
    /// The most bytes of a release upload (`POST /v1/admin/releases`, all parts together).
    pub max_release_bytes: usize,
    /// Base64 ed25519 public keys. When any is given, the hub refuses a release whose manifest signature (or
    /// archive signature) does not verify against one of them; when empty it stores what it is given (agents
    /// verify either way: the hub is not a trust anchor).
    pub release_keys: Vec<String>,
}

/// The default [`ReleaseSettings::max_release_bytes`]: 512 MiB.
pub const DEFAULT_MAX_RELEASE_BYTES: usize = 512 * 1024 * 1024;

impl Default for ReleaseSettings {
    fn default() -> Self {
        ReleaseSettings { max_release_bytes: DEFAULT_MAX_RELEASE_BYTES, release_keys: Vec::new() }
    }
}

/// Everything `serve` needs.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub tls: Option<TlsFiles>,
    /// Allows plain HTTP on a non-loopback address.
    pub insecure_allow_plaintext: bool,
    /// The admin token; when `None` it is read from (or made in) `<data-dir>/admin.token`.
    pub admin_token: Option<String>,
    pub enroll_limits: EnrollLimits,
    pub clock: Arc<dyn Clock>,
    /// How long in-flight requests may take to finish once shutdown starts.
    pub shutdown_grace: std::time::Duration,
    /// Bounds of CRDT sync, documents and compaction.
    pub sync: SyncLimits,
    /// Per-till request rate.
    pub till_rate: TillRate,
    /// Agent release uploads.
    pub releases: ReleaseSettings,
    /// When the fleet view calls a store stale or offline, and alerts.
    pub fleet: fleet::FleetThresholds,
    /// How events are passed on to subscriptions.
    pub delivery: outbox::DeliverySettings,
    /// A PostgreSQL database instead of `<data-dir>/hub.db`: several instances may share it (docs/SCALING.md).
    pub database: Option<storage::postgres::PgSettings>,
    /// Bounds of the sync requests in flight and queued; over them the hub answers 429 ([`backpressure`]).
    pub backpressure: backpressure::Settings,
    /// The reservation planner: how often it runs and what it does at `pickup_by` ([`reservations`]).
    pub planner: reservations::PlannerSettings,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("tls", &self.tls)
            .field("insecure_allow_plaintext", &self.insecure_allow_plaintext)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<redacted>"))
            .field("enroll_limits", &self.enroll_limits)
            .field("sync", &self.sync)
            .field("till_rate", &self.till_rate)
            .field("releases", &self.releases)
            .field("fleet", &self.fleet)
            .field("delivery", &self.delivery)
            .field("database", &self.database)
            .field("backpressure", &self.backpressure)
            .field("planner", &self.planner)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Defaults: `127.0.0.1:8080`, plain HTTP, system clock.
    pub fn new(data_dir: PathBuf) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir,
            tls: None,
            insecure_allow_plaintext: false,
            admin_token: None,
            enroll_limits: EnrollLimits::default(),
            clock: Arc::new(SystemClock),
            shutdown_grace: std::time::Duration::from_secs(10),
            sync: SyncLimits::default(),
            till_rate: TillRate::default(),
            releases: ReleaseSettings::default(),
            fleet: fleet::FleetThresholds::default(),
            delivery: outbox::DeliverySettings::default(),
            database: None,
            backpressure: backpressure::Settings::default(),
            planner: reservations::PlannerSettings::default(),
        }
    }
}

/// The database file inside a data dir.
pub fn db_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("hub.db")
}

/// Creates the data dir if needed and opens its database.
pub fn open_storage(data_dir: &std::path::Path) -> anyhow::Result<SqliteStorage> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let path = db_path(data_dir);
    SqliteStorage::open(&path).with_context(|| format!("opening database {}", path.display()))
}

/// Opens the hub's storage: the PostgreSQL database of `database` (brought up to date by its migrations), else
/// `<data_dir>/hub.db`. The data dir is made either way (it holds `admin.token` and `instance.id`).
pub fn open_backend(
    data_dir: &std::path::Path,
    database: Option<&storage::postgres::PgSettings>,
) -> anyhow::Result<Arc<dyn storage::Storage>> {
    let Some(pg) = database else {
        let storage = open_storage(data_dir)?;
        tracing::info!(path = %db_path(data_dir).display(), "storage: SQLite");
        return Ok(Arc::new(storage));
    };
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let target = storage::postgres::redact_url(&pg.url);
    let storage = storage::postgres::PostgresStorage::open(pg)
        .with_context(|| format!("opening the PostgreSQL database {target}"))?;
    tracing::info!(database = %target, pool_size = pg.pool_size, "storage: PostgreSQL");
    Ok(Arc::new(storage))
}

/// Binds, prints `listening on http(s)://ADDR` to stdout, and serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let server = bind(config).await?;
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", server.url()).context("writing to stdout")?;
        out.flush().context("flushing stdout")?;
    }
    server.serve(shutdown).await
}
