//! The hub, assembled in one place from a resolved [`Config`]: its storage (SQLite or PostgreSQL), the reservation
//! store beside it, the admin token, the plain state ([`Hub`]), the HTTP state ([`AppState`]), and the background
//! tasks with their own wake handles: the outbox delivery ([`crate::outbox::run`]) and the reservation planner
//! ([`crate::reservations::run`]). [`App::spawn`] starts the tasks on the hub's one task tracker (see
//! [`crate::server::Server::serve`], which gives them, and every connection, one shutdown deadline).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::api::{AppState, HttpSettings};
use crate::hub::Hub;
use crate::outbox::Delivery;
use crate::reservations::PlannerSettings;
use crate::storage::Storage;
use crate::storage::postgres::{PgSettings, PostgresStorage, redact_url};
use crate::storage::reservations::ReservationStore;
use crate::storage::sqlite::SqliteStorage;
use crate::wake::{OutboxWake, PlannerWake};
use crate::{Config, secrets};

/// The assembled hub, before it serves.
pub struct App {
    /// What the HTTP handlers share.
    pub state: AppState,
    /// The outbox delivery's share: storage, clock, its settings and its wake handle.
    pub delivery: Delivery,
    /// The plain state the reservation planner runs on (its wake handle is `hub.planner`).
    pub hub: Hub,
    /// The reservation planner's settings.
    pub planner: PlannerSettings,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

impl App {
    /// Opens the storage and admin token `config` names and checks its settings.
    ///
    /// # Errors
    /// A database or data dir that cannot be opened, or settings out of range.
    pub fn open(config: &Config) -> anyhow::Result<App> {
        let mut release_keys = Vec::with_capacity(config.releases.release_keys.len());
        for (i, k) in config.releases.release_keys.iter().enumerate() {
            release_keys.push(
                storesync_shared::release::parse_verifying_key(k)
                    .map_err(|e| anyhow::anyhow!("release_keys[{i}]: {e}"))?,
            );
        }
        config.fleet.check().map_err(|e| anyhow::anyhow!("fleet thresholds: {e}"))?;
        config.backpressure.check().map_err(|e| anyhow::anyhow!("backpressure: {e}"))?;
        let storage = open_backend(&config.data_dir, config.database.as_ref())?;
        let admin_token = match &config.admin_token {
            Some(t) if !t.trim().is_empty() => t.trim().to_owned(),
            _ => {
                let path = config.data_dir.join("admin.token");
                let token = secrets::load_or_create_admin_token(&path)?;
                info!(path = %path.display(), "admin token is in this file");
                token
            }
        };
        let outbox = OutboxWake::default();
        let hub = Hub {
            docs: Arc::new(crate::docs::Docs::new(storage.clone(), config.sync)),
            storage: storage.clone(),
            clock: config.clock.clone(),
            reservations: open_reservation_store(config)?,
            outbox: outbox.clone(),
            planner: PlannerWake::default(),
        };
        let http = HttpSettings {
            admin_token,
            enroll_limits: config.enroll_limits,
            till_rate: config.till_rate,
            release_keys,
            max_release_bytes: config.releases.max_release_bytes,
            fleet: config.fleet,
            backpressure: config.backpressure,
        };
        let delivery = Delivery { storage, clock: config.clock.clone(), settings: config.delivery, wake: outbox };
        Ok(App { state: AppState::from_parts(hub.clone(), http), delivery, hub, planner: config.planner })
    }

    /// Starts the background tasks on `tracker`; each stops when `shutdown` fires.
    pub fn spawn(&self, tracker: &TaskTracker, shutdown: &CancellationToken) {
        tracker.spawn(crate::outbox::run(self.delivery.clone(), shutdown.clone(), tracker.clone()));
        tracker.spawn(crate::reservations::run(self.hub.clone(), self.planner, shutdown.clone()));
    }
}

/// The database file inside a data dir.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("hub.db")
}

/// Creates the data dir if needed and opens its database.
pub fn open_storage(data_dir: &Path) -> anyhow::Result<SqliteStorage> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let path = db_path(data_dir);
    SqliteStorage::open(&path).with_context(|| format!("opening database {}", path.display()))
}

/// Opens the hub's storage: the PostgreSQL database of `database` (brought up to date by its migrations), else
/// `<data_dir>/hub.db`. The data dir is made either way (it holds `admin.token` and `instance.id`).
pub fn open_backend(data_dir: &Path, database: Option<&PgSettings>) -> anyhow::Result<Arc<dyn Storage>> {
    let Some(pg) = database else {
        let storage = open_storage(data_dir)?;
        info!(path = %db_path(data_dir).display(), "storage: SQLite");
        return Ok(Arc::new(storage));
    };
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let target = redact_url(&pg.url);
    let storage = PostgresStorage::open(pg).with_context(|| format!("opening the PostgreSQL database {target}"))?;
    info!(database = %target, pool_size = pg.pool_size, "storage: PostgreSQL");
    Ok(Arc::new(storage))
}

/// Opens the reservation store of the hub's database: the database the rest of the hub's storage is in, so the
/// escrow invariant is checked where every instance sees it.
///
/// - SQLite: `<data-dir>/hub.db`, a second handle on the same file (every write is `BEGIN IMMEDIATE`, so the two
///   handles serialise in SQLite).
/// - PostgreSQL (`config.database`): a [`PostgresStorage`] on the same database, with a pool of its own of at most
///   4 connections (fewer when the hub is configured with fewer). Reservation calls are short transactions from
///   admin requests and the one planner task, and writes against one store's escrow wait for each other on its
///   rows anyway, so more connections would add no throughput; they would only take from the database's
///   `max_connections`, shared by every instance. Opening it runs the migrations again, which finds nothing to do.
fn open_reservation_store(config: &Config) -> anyhow::Result<Option<Arc<dyn ReservationStore>>> {
    let Some(pg) = &config.database else {
        return Ok(Some(Arc::new(open_storage(&config.data_dir)?)));
    };
    let settings = PgSettings { url: pg.url.clone(), pool_size: pg.pool_size.clamp(1, 4) };
    let store = PostgresStorage::open(&settings).map_err(|e| {
        anyhow::anyhow!(e).context(format!("opening the PostgreSQL database {} for reservations", redact_url(&pg.url)))
    })?;
    Ok(Some(Arc::new(store)))
}
