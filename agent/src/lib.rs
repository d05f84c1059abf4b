//! `storesync-agent`: the store side of storesync.
//!
//! [`run`] opens the journal, serves the POS API, and (once the till is enrolled) syncs with the hub in the
//! background, until `shutdown` fires. The binary's `main` only parses the command line and calls into here, so
//! tests drive the same code.

pub mod api;
pub mod boot;
pub mod config;
pub mod credential;
pub mod inbox;
pub mod journal;
pub mod reservations;
pub mod service;
pub mod signal;
pub mod sync;
pub mod update;
pub mod version;

/// Kept at the crate root for embeddings that stop on ctrl-c or SIGTERM themselves (the demo).
pub use signal::shutdown_signal;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::journal::{IdentityClaim, Journal};

/// Whether the hub can be reached, as the status reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HubReach {
    NotConfigured,
    Reachable,
    Unreachable,
}

/// The sync loop's view of the hub, shared with the status endpoint.
#[derive(Debug, Clone)]
pub struct SyncStatus {
    pub hub: HubReach,
    pub hub_url: Option<String>,
    pub last_sync_at: Option<OffsetDateTime>,
    pub last_error: Option<String>,
    /// When the hub stopped answering (cleared when it answers again).
    pub offline_since: Option<OffsetDateTime>,
}

impl SyncStatus {
    /// Records whether the hub answered, keeping the moment it stopped answering.
    pub fn set_hub(&mut self, reach: HubReach) {
        match reach {
            HubReach::Unreachable => {
                self.offline_since.get_or_insert_with(OffsetDateTime::now_utc);
            }
            _ => self.offline_since = None,
        }
        self.hub = reach;
    }
}

/// Everything the API handlers and background tasks share.
pub struct AgentState {
    pub journal: Journal,
    pub data_dir: PathBuf,
    pub sync: Mutex<SyncStatus>,
    /// Poked after every newly journaled event, and after an enrolment.
    pub sync_wake: Notify,
    /// Poked by `sync-now`: cuts any backoff short.
    pub sync_now: Notify,
    /// `sync-now` tickets handed out; the sync loop serves every ticket up to this at its next round.
    pub sync_requested: std::sync::atomic::AtomicU64,
    /// The highest ticket whose round has finished (successfully or not).
    pub sync_served: watch::Sender<u64>,
    /// Self-update settings, and what the last check found.
    pub update_cfg: update::UpdateConfig,
    pub update: Mutex<update::UpdateStatus>,
    /// Asks the update task for a check now (`POST /v1/update/check`).
    pub update_checks: update::CheckRequests,
    /// Set by a self-update (or its rollback): the binary to exec once the agent has stopped.
    pub restart_into: Mutex<Option<PathBuf>>,
    /// The drop folder's figures, for the status.
    pub inbox: inbox::InboxStats,
}

impl AgentState {
    /// The state of a freshly started agent: hub not yet contacted, no sync asked for, no update pending.
    pub fn new(
        journal: Journal,
        data_dir: PathBuf,
        update_cfg: update::UpdateConfig,
        update_checks: update::CheckRequests,
    ) -> AgentState {
        AgentState {
            journal,
            data_dir,
            sync: Mutex::new(SyncStatus {
                hub: HubReach::NotConfigured,
                hub_url: None,
                last_sync_at: None,
                last_error: None,
                offline_since: None,
            }),
            sync_wake: Notify::new(),
            sync_now: Notify::new(),
            sync_requested: std::sync::atomic::AtomicU64::new(0),
            sync_served: watch::channel(0).0,
            update_cfg,
            update: Mutex::new(update::UpdateStatus::default()),
            update_checks,
            restart_into: Mutex::new(None),
            inbox: inbox::InboxStats::default(),
        }
    }
}

impl AgentState {
    pub fn sync_status(&self) -> SyncStatus {
        self.sync.lock().map(|s| s.clone()).unwrap_or(SyncStatus {
            hub: HubReach::NotConfigured,
            hub_url: None,
            last_sync_at: None,
            last_error: Some("sync status lock poisoned".into()),
            offline_since: None,
        })
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop.
    Stopped,
    /// A self-update (or its rollback) wants this binary started in the agent's place, once everything has
    /// stopped.
    Exec(PathBuf),
}

/// Runs the agent until `shutdown` is cancelled (see [`run_until`]); a self-update restart is logged, not done.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    if let Exit::Exec(path) = run_until(config, shutdown, update::Boot::Normal).await? {
        tracing::warn!(binary = %path.display(), "a self-update asked for a restart this embedding cannot do");
    }
    Ok(())
}

/// Runs the agent until `shutdown` is cancelled: SIGTERM, ctrl-c and a service stop all cancel the same token.
/// In-flight requests are drained for up to `config.shutdown_deadline`, then the journal writer commits what it
/// holds and stops. A self-update stops the agent the same way and answers [`Exit::Exec`]; `boot` says whether
/// this start is a new version's trial, whose health the update task confirms or rolls back.
pub async fn run_until(config: Config, shutdown: CancellationToken, boot: update::Boot) -> anyhow::Result<Exit> {
    // An enrolled till takes its identity from its credential; flags and config only name it before enrolment.
    let cred = credential::load(&config.data_dir)?;
    let claim = match &cred {
        Some(c) => {
            for (what, flag, bound) in [("store", &config.store_id, &c.store_id), ("till", &config.till_id, &c.till_id)]
            {
                if let Some(flag) = flag
                    && flag != bound
                {
                    anyhow::bail!("this till is enrolled as {what} {bound:?}; drop --{what}-id {flag:?}");
                }
            }
            IdentityClaim { store_id: Some(c.store_id.clone()), till_id: Some(c.till_id.clone()) }
        }
        None => IdentityClaim { store_id: config.store_id.clone(), till_id: config.till_id.clone() },
    };
    let (journal, writer) = Journal::open(&config.data_dir, &claim)?;
    // One check at a time; a second `POST /v1/update/check` waits for a free slot.
    let (checks_tx, checks_rx) = tokio::sync::mpsc::channel(1);
    let identity = journal.identity().clone();
    tracing::info!(store_id = %identity.store_id, till_id = %identity.till_id, data_dir = %config.data_dir.display(), "journal open");
    let state = Arc::new(AgentState::new(journal, config.data_dir.clone(), config.update.clone(), checks_tx));
    let tasks = TaskTracker::new();
    tasks.spawn(supervise_sync(state.clone(), config.sync.clone(), shutdown.clone()));
    if config.inbox.enabled {
        tasks.spawn(inbox::run(state.clone(), config.inbox.clone(), shutdown.clone()));
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the POS API to {}", config.listen))?;
    let addr = listener.local_addr()?;
    tasks.spawn(update::run(
        state.clone(),
        config.update.clone(),
        boot == update::Boot::Trial,
        addr,
        checks_rx,
        shutdown.clone(),
    ));
    tracing::info!(%addr, "POS API listening");
    // Tests and supervisors read the bound address from this line.
    println!("listening on http://{addr}");
    let app = api::router(state.clone());
    let serve = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned()).into_future();
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(config.shutdown_deadline).await;
    };
    let result = tokio::select! {
        served = serve => served.context("serving the POS API"),
        () = deadline => {
            // Requests still in flight were never answered. The journal commits what it was sent and refuses the
            // rest, so nothing acknowledged is lost; their connections end with the process.
            tracing::warn!(deadline_s = config.shutdown_deadline.as_secs(),
                           "POS requests still in flight at the stop deadline: stopping without them");
            state.journal.close().await;
            Ok(())
        }
    };
    // The server has drained; make sure every background task stops too, then let go of the journal.
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    let restart = state.restart_into.lock().ok().and_then(|mut r| r.take());
    drop(state);
    // Every handle is gone: the writer drains its queue, commits, and ends.
    let joined = tokio::task::spawn_blocking(move || writer.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        tracing::error!("journal writer ended abnormally");
    }
    tracing::info!("agent stopped");
    result.map(|()| match restart {
        Some(path) => Exit::Exec(path),
        None => Exit::Stopped,
    })
}

/// Runs the sync loop, restarting it if it ever panics, so that a bug in one round can never stop sync for good
/// (the journal keeps everything meanwhile). Ends with `shutdown`.
async fn supervise_sync(state: Arc<AgentState>, cfg: sync::SyncConfig, shutdown: CancellationToken) {
    loop {
        let run = tokio::spawn(sync::run(state.clone(), cfg.clone(), shutdown.clone()));
        match run.await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(error = %e, "the sync task failed; restarting it in 5 s");
                if let Ok(mut s) = state.sync.lock() {
                    s.last_error = Some(format!("internal: sync task failed ({e}); restarted"));
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                }
            }
        }
    }
}
