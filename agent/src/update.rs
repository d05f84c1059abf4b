//! Signed self-update: check the hub on a schedule, refuse anything not signed and newer, swap atomically,
//! restart, confirm health or roll back.
//!
//! Design note:
//! - **Trust.** The hub is not trusted. A release is taken only if its manifest verifies against the agent's key
//!   set (compiled in with `STORESYNC_UPDATE_KEYS` at build time, plus `update_keys` in agent.toml) and passes
//!   [`storesync_shared::release::check_offer`]: same target, not expired, newer than the running version and
//!   than the highest version ever confirmed here, at least `min_version`, never rolled back here before. The
//!   archive is then downloaded and checked by the `self_update` crate: the SHA-256 the manifest names, and the
//!   zipsign ed25519 signature inside the archive (against the same keys), and the extracted binary must answer
//!   `--version` with the promised version before it is kept. Self-update switched on with an empty key set is a
//!   start-up error ([`UpdateConfig::resolve`]), never a skip.
//! - **On-disk layout.** `<data>/update/bin/storesync-agent-<version>` holds verified binaries (the data dir is
//!   writable under systemd's `ProtectSystem=strict`; `/usr/bin` is not). `<data>/update/state.json` names the
//!   `active` binary, the `previous` one, a `trial` in progress, the versions rolled back, the highest version
//!   confirmed, and reports not yet delivered to the hub. It is replaced atomically (write, fsync, rename, fsync
//!   the directory): writing it is the swap.
//! - **Restart.** After the swap the agent stops through the same path as SIGTERM (POS requests in flight are
//!   answered, the journal commits), then `exec`s the new binary in the same process, so the service manager
//!   keeps supervising the same PID. Any binary that starts (the packaged `/usr/bin/storesync-agent` after a
//!   reboot, say) first reads the state and `exec`s the active binary when it is newer than itself ([`boot`]).
//! - **Health and rollback.** The new binary starts as a trial. It must open the journal, serve the POS API and
//!   answer its own status request within `update_health_timeout_s`; then it confirms (the trial ends, the
//!   version becomes the highest seen). If it fails, or returns an error before serving, it rolls back: the
//!   previous binary becomes active again, the version is recorded as rolled back (never offered again here),
//!   and the previous binary is exec'd. If the trial crashes outright, the service manager restarts the packaged
//!   binary, whose [`boot`] finds a trial that started and never confirmed, and rolls back the same way.
//! - **Reports.** Installed, rolled-back and refused releases are reported to the hub, which halts a rollout
//!   when its canary regresses. Reports of installs and rollbacks wait in the state file until delivered.
//! - **Windows.** A running `.exe` can neither be overwritten nor `exec` another. The verified binary is swapped
//!   into the installed `.exe`'s place instead (`self-replace` moves the running file aside), a copy of the old one
//!   is kept in `<data>\update\bin` for a rollback, and the service stops and has itself started again by the
//!   service control manager (`service restart`, spawned detached just before it reports stopped). A rollback swaps
//!   the copy back the same way; a trial that crashes is restarted by the service's failure actions and rolls back
//!   at that start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use storesync_shared::release::{self, AgentView, Refusal, ReleaseManifest, UpdateOffer, UpdateOutcome, UpdateReport};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::AgentState;
// Re-exported for the paths `storesync_agent::update::{VERSION, TARGET}` that callers outside this crate use.
pub use crate::version::{TARGET, VERSION};

/// Public keys compiled in at build time: `STORESYNC_UPDATE_KEYS`, comma-separated base64.
const COMPILED_KEYS: Option<&str> = option_env!("STORESYNC_UPDATE_KEYS");

/// A fault compiled in on purpose: `STORESYNC_BUILD_FAULT=unhealthy` makes the build fail its post-update health
/// check, `crash` makes it abort as a trial before confirming. The update tests build such binaries to prove both
/// rollbacks; release builds never set it.
const BUILD_FAULT: Option<&str> = option_env!("STORESYNC_BUILD_FAULT");

/// Environment variable carrying how many update `exec`s led to this process (a loop guard).
const EXEC_DEPTH_ENV: &str = "STORESYNC_UPDATE_EXEC_DEPTH";

/// Reports kept waiting for the hub at most; older ones are dropped with a warning.
const MAX_PENDING_REPORTS: usize = 32;

/// The self-update settings `run` works from.
#[derive(Debug, Clone)]
pub struct UpdateConfig {
    pub enabled: bool,
    pub keys: Vec<VerifyingKey>,
    pub check_interval: Duration,
    pub health_timeout: Duration,
    /// Why updates are off, when they are.
    pub disabled_because: Option<String>,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            enabled: false,
            keys: Vec::new(),
            check_interval: Duration::from_secs(3600),
            health_timeout: Duration::from_secs(30),
            disabled_because: Some("no update key is compiled in or configured".into()),
        }
    }
}

impl UpdateConfig {
    /// Resolves the settings from agent.toml. Self-update is on when keys are configured or compiled in, unless
    /// `update_enabled = false`; `update_enabled = true` (or `update_keys = []`) with no key at all is an error.
    pub fn resolve(
        enabled: Option<bool>,
        keys: Option<&[String]>,
        check_interval_s: Option<u64>,
        health_timeout_s: Option<u64>,
    ) -> anyhow::Result<UpdateConfig> {
        let mut parsed = Vec::new();
        for text in COMPILED_KEYS.unwrap_or("").split(',').filter(|s| !s.trim().is_empty()) {
            parsed.push(
                release::parse_verifying_key(text)
                    .map_err(|e| anyhow::anyhow!("the update key compiled into this build is unusable: {e}"))?,
            );
        }
        for (i, text) in keys.unwrap_or_default().iter().enumerate() {
            parsed.push(release::parse_verifying_key(text).map_err(|e| anyhow::anyhow!("update_keys[{i}]: {e}"))?);
        }
        let check_interval = match check_interval_s {
            None => Duration::from_secs(3600),
            Some(s) if (10..=7 * 86_400).contains(&s) => Duration::from_secs(s),
            Some(_) => bail!("update_check_interval_s must be between 10 and 604800"),
        };
        let health_timeout = match health_timeout_s {
            None => Duration::from_secs(30),
            Some(s) if (2..=600).contains(&s) => Duration::from_secs(s),
            Some(_) => bail!("update_health_timeout_s must be between 2 and 600"),
        };
        let asked = enabled == Some(true) || keys.is_some();
        if asked && parsed.is_empty() {
            bail!(
                "self-update is switched on but its key set is empty: set update_keys in agent.toml to the base64 \
                 public key from `storesync-hub release keygen` (or update_enabled = false to run without updates)"
            );
        }
        let disabled_because = match enabled {
            Some(false) => Some("update_enabled = false in agent.toml".to_owned()),
            _ if parsed.is_empty() => Some("no update key is compiled in or configured".to_owned()),
            _ => None,
        };
        Ok(UpdateConfig {
            enabled: disabled_because.is_none(),
            keys: parsed,
            check_interval,
            health_timeout,
            disabled_because,
        })
    }
}

/// A binary the state file points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub version: String,
    pub path: PathBuf,
}

/// A new version that has been swapped in and not yet confirmed healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    pub version: String,
    /// How many times the trial binary has started.
    pub starts: u32,
    pub staged_at: String,
}

/// `<data>/update/state.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateState {
    pub highest_seen: Option<String>,
    pub rolled_back: Vec<String>,
    pub active: Option<Installed>,
    pub previous: Option<Installed>,
    pub trial: Option<Trial>,
    pub pending_reports: Vec<UpdateReport>,
}

fn update_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("update")
}

fn state_path(data_dir: &Path) -> PathBuf {
    update_dir(data_dir).join("state.json")
}

impl UpdateState {
    pub fn load(data_dir: &Path) -> anyhow::Result<UpdateState> {
        let path = state_path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UpdateState::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Replaces the state file atomically.
    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        let dir = update_dir(data_dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        crate::credential::write_private(&state_path(data_dir), &serde_json::to_vec_pretty(self)?)
    }

    fn push_report(&mut self, r: UpdateReport) {
        if self.pending_reports.len() >= MAX_PENDING_REPORTS {
            let dropped = self.pending_reports.remove(0);
            tracing::warn!(version = %dropped.version, "too many undelivered update reports; dropping the oldest");
        }
        self.pending_reports.push(r);
    }

    /// Marks the trial (or `version`) as failed and makes the previous binary active again.
    fn roll_back(&mut self, version: &str, why: &str) -> Option<Installed> {
        if !self.rolled_back.iter().any(|v| v == version) {
            self.rolled_back.push(version.to_owned());
        }
        self.trial = None;
        let previous = self.previous.clone();
        self.active = previous.clone();
        self.push_report(UpdateReport {
            version: version.to_owned(),
            target: TARGET.to_owned(),
            outcome: UpdateOutcome::RolledBack,
            running_version: previous.as_ref().map(|p| p.version.clone()).unwrap_or_default(),
            reason: Some("health_check_failed".into()),
            detail: Some(why.to_owned()),
        });
        previous
    }
}

/// What a starting agent does, decided from the state file before anything else runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// Run as usual.
    Normal,
    /// Run, and confirm this new version's health (or roll back) within the health timeout.
    Trial,
    /// Replace this process with that binary.
    Exec(PathBuf),
}

/// Decides how a starting agent proceeds. A broken state file never stops the agent: it logs and runs.
pub fn boot(data_dir: &Path) -> Boot {
    let depth: u32 = std::env::var(EXEC_DEPTH_ENV).ok().and_then(|d| d.parse().ok()).unwrap_or(0);
    let mut state = match UpdateState::load(data_dir) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot read the self-update state; running this binary");
            return Boot::Normal;
        }
    };
    let me = std::env::current_exe().ok();
    let decision = decide(&mut state, VERSION, me.as_deref(), |p| p.is_file());
    if decision.changed
        && let Err(e) = state.save(data_dir)
    {
        tracing::error!(error = %format!("{e:#}"), "cannot write the self-update state; running this binary");
        return Boot::Normal;
    }
    match decision.boot {
        Boot::Exec(_) if depth >= 3 => {
            tracing::error!("self-update exec loop: running this binary instead");
            Boot::Normal
        }
        b => b,
    }
}

struct Decision {
    boot: Boot,
    changed: bool,
}

/// The pure part of [`boot`].
fn decide(state: &mut UpdateState, me: &str, my_path: Option<&Path>, exists: impl Fn(&Path) -> bool) -> Decision {
    let is_me = |i: &Installed| i.version == me || my_path.is_some_and(|p| p == i.path);
    let to = |i: Option<Installed>, changed| match i {
        Some(i) if !is_me(&i) && exists(&i.path) => Decision { boot: Boot::Exec(i.path), changed },
        _ => Decision { boot: Boot::Normal, changed },
    };
    if let Some(t) = state.trial.clone() {
        if t.version == me {
            if t.starts >= 1 {
                // This trial binary started before and never confirmed: it died. Do not try a third time.
                tracing::error!(version = %t.version, "the new version died before confirming its health; rolling back");
                let prev = state.roll_back(&t.version, "the new version stopped before confirming its health");
                return to(prev, true);
            }
            state.trial = Some(Trial { starts: t.starts + 1, ..t });
            return Decision { boot: Boot::Trial, changed: true };
        }
        if t.starts >= 1 {
            // An older binary (the service manager's restart) finds a trial that started and never confirmed.
            tracing::error!(version = %t.version, "the new version stopped before confirming its health; rolling back");
            let prev = state.roll_back(&t.version, "the new version stopped before confirming its health");
            return to(prev, true);
        }
        // Staged but never started: start it.
        return to(state.active.clone(), false);
    }
    match state.active.clone() {
        Some(a) if !is_me(&a) => {
            let newer = match (release::version(&a.version), release::version(me)) {
                (Ok(theirs), Ok(mine)) => theirs > mine,
                _ => false,
            };
            if newer && exists(&a.path) {
                Decision { boot: Boot::Exec(a.path), changed: false }
            } else {
                // This binary is newer (a package upgrade overtook the staged one) or the staged one is gone.
                tracing::info!(staged = %a.version, running = %me, "running this binary, not the staged one");
                state.active = None;
                Decision { boot: Boot::Normal, changed: true }
            }
        }
        _ => Decision { boot: Boot::Normal, changed: false },
    }
}

/// Restarts a console (or systemd) run into `path`, same arguments. Unix: `exec` in the same process, so it only
/// returns on failure. Windows: `path` is swapped into the running `.exe`'s place ([`swap_in`]) and started as a
/// new process; this one then exits.
pub fn restart_into(path: &Path) -> anyhow::Result<()> {
    let depth: u32 = std::env::var(EXEC_DEPTH_ENV).ok().and_then(|d| d.parse().ok()).unwrap_or(0);
    tracing::info!(binary = %path.display(), "restarting into the self-update binary");
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = std::process::Command::new(path)
            .args(std::env::args_os().skip(1))
            .env(EXEC_DEPTH_ENV, (depth + 1).to_string())
            .exec();
        Err(anyhow::Error::new(err).context(format!("starting {}", path.display())))
    }
    #[cfg(not(unix))]
    {
        swap_in(path)?;
        let me = std::env::current_exe().context("locating this executable")?;
        std::process::Command::new(&me)
            .args(std::env::args_os().skip(1))
            .env(EXEC_DEPTH_ENV, (depth + 1).to_string())
            .spawn()
            .with_context(|| format!("starting {}", me.display()))?;
        Ok(())
    }
}

/// Windows: a running `.exe` cannot be replaced or exec'd, but it can be moved aside. Puts `path` in the running
/// executable's place (the `self-replace` crate: the old file is renamed, the new one moved in); the service
/// manager, or [`restart_into`], then starts it. Nothing to do when `path` already is the running executable.
#[cfg(windows)]
pub fn swap_in(path: &Path) -> anyhow::Result<()> {
    let me = std::env::current_exe().context("locating this executable")?;
    if std::fs::canonicalize(&me).ok() == std::fs::canonicalize(path).ok() {
        return Ok(());
    }
    self_replace::self_replace(path).with_context(|| format!("putting {} in place of {}", path.display(), me.display()))
}

/// What `POST /v1/update/check` and the schedule report.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// `disabled`, `not_enrolled`, `up_to_date`, `refused`, `installing`, `unreachable` or `failed`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub checked_at: String,
}

impl CheckResult {
    fn new(outcome: &'static str) -> CheckResult {
        CheckResult {
            outcome,
            version: None,
            reason: None,
            detail: None,
            checked_at: OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default(),
        }
    }
    fn refused(version: Option<&str>, r: &Refusal) -> CheckResult {
        CheckResult {
            version: version.map(str::to_owned),
            reason: Some(r.code().into()),
            detail: Some(r.to_string()),
            ..CheckResult::new("refused")
        }
    }
}

/// The update task's handle, held by the API: ask for a check now.
pub type CheckRequests = mpsc::Sender<oneshot::Sender<CheckResult>>;

/// Runs the update task until `shutdown`: confirms a trial, delivers reports, checks on schedule and on request.
pub async fn run(
    state: Arc<AgentState>,
    cfg: UpdateConfig,
    trial: bool,
    addr: std::net::SocketAddr,
    mut requests: mpsc::Receiver<oneshot::Sender<CheckResult>>,
    shutdown: CancellationToken,
) {
    if trial {
        if BUILD_FAULT == Some("crash") {
            tracing::error!("this build was made to crash as a trial (STORESYNC_BUILD_FAULT=crash)");
            std::process::abort();
        }
        let verdict = tokio::select! {
            () = shutdown.cancelled() => Err("stopped before its health check finished".to_owned()),
            v = tokio::time::timeout(cfg.health_timeout, health_check(addr)) => {
                v.unwrap_or_else(|_| Err(format!("no healthy answer within {} s", cfg.health_timeout.as_secs())))
            }
        };
        let dir = state.data_dir.clone();
        // The state file is written and fsynced: off the async workers.
        let recorded = tokio::task::spawn_blocking(move || finish_trial(&dir, verdict))
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("the health check's recording task failed: {e}")));
        match recorded {
            Ok(None) => {}
            Ok(Some(previous)) => {
                request_restart(&state, previous, &shutdown);
                return;
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot record the health check's outcome"),
        }
    }
    let mut reported: std::collections::HashSet<(String, String)> = Default::default();
    let first = Duration::from_secs(rand::random_range(5..=60)).min(cfg.check_interval);
    let mut next = tokio::time::Instant::now() + first;
    loop {
        deliver_reports(&state).await;
        let reply = tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep_until(next) => None,
            r = requests.recv() => match r { Some(r) => Some(r), None => break },
        };
        let result = check(&state, &cfg, &mut reported).await;
        let restart = result.1;
        let result = result.0;
        if let Ok(mut s) = state.update.lock() {
            s.last_check = Some(result.clone());
        }
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
        if let Some(path) = restart {
            request_restart(&state, path, &shutdown);
            break;
        }
        let jitter = cfg.check_interval.as_secs() / 10;
        next = tokio::time::Instant::now()
            + cfg.check_interval
            + Duration::from_secs(if jitter > 0 { rand::random_range(0..=jitter) } else { 0 });
    }
    tracing::debug!("update task stopped");
}

fn request_restart(state: &AgentState, path: PathBuf, shutdown: &CancellationToken) {
    if let Ok(mut r) = state.restart_into.lock() {
        *r = Some(path);
    }
    shutdown.cancel();
}

/// The new version's health: it serves its own status (so the journal opened and reads) and no fault is built
/// in.
async fn health_check(addr: std::net::SocketAddr) -> Result<(), String> {
    if BUILD_FAULT == Some("unhealthy") {
        return Err("this build was made to fail its health check (STORESYNC_BUILD_FAULT=unhealthy)".into());
    }
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().map_err(|e| e.to_string())?;
    let url = format!("http://{addr}/v1/status");
    let mut last = String::new();
    for _ in 0..50 {
        match client.get(&url).send().await {
            Ok(r) if r.status().is_success() => match r.json::<serde_json::Value>().await {
                Ok(v) if v["version"] == VERSION && v["journal_len"].is_u64() => return Ok(()),
                Ok(v) => last = format!("unexpected status document: {v}"),
                Err(e) => last = e.to_string(),
            },
            Ok(r) => last = format!("status answered {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last)
}

/// Records a trial's verdict. `Ok(Some(previous))`: it failed and `previous` must be exec'd.
pub fn finish_trial(data_dir: &Path, verdict: Result<(), String>) -> anyhow::Result<Option<PathBuf>> {
    let mut st = UpdateState::load(data_dir)?;
    let Some(t) = st.trial.clone().filter(|t| t.version == VERSION) else { return Ok(None) };
    match verdict {
        Ok(()) => {
            tracing::info!(version = VERSION, "self-update confirmed: the new version is healthy");
            st.trial = None;
            let higher = match &st.highest_seen {
                Some(h) => release::version(h).ok() < release::version(VERSION).ok(),
                None => true,
            };
            if higher {
                st.highest_seen = Some(VERSION.to_owned());
            }
            st.push_report(UpdateReport {
                version: t.version,
                target: TARGET.into(),
                outcome: UpdateOutcome::Installed,
                running_version: VERSION.into(),
                reason: None,
                detail: None,
            });
            st.save(data_dir)?;
            prune_binaries(data_dir, &st);
            Ok(None)
        }
        Err(why) => {
            tracing::error!(version = VERSION, error = %why, "the new version failed its health check; rolling back");
            let prev = st.roll_back(VERSION, &why);
            st.save(data_dir)?;
            Ok(prev.map(|p| p.path))
        }
    }
}

/// Deletes staged binaries that are neither active nor previous.
fn prune_binaries(data_dir: &Path, st: &UpdateState) {
    let keep: Vec<&Path> = [&st.active, &st.previous].into_iter().flatten().map(|i| i.path.as_path()).collect();
    let Ok(entries) = std::fs::read_dir(update_dir(data_dir).join("bin")) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if !keep.contains(&p.as_path())
            && let Err(err) = std::fs::remove_file(&p)
        {
            tracing::warn!(file = %p.display(), error = %err, "cannot remove an old staged binary");
        }
    }
}

/// Sends the reports waiting in the state file; keeps those the hub did not take.
async fn deliver_reports(state: &AgentState) {
    let dir = state.data_dir.clone();
    // File reads and the fsynced rewrite run on the blocking pool, never on an async worker.
    let d = dir.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        Ok::<_, anyhow::Error>((crate::credential::load(&d)?, UpdateState::load(&d)?))
    });
    let Ok(Ok((Some(cred), st))) = loaded.await else { return };
    if st.pending_reports.is_empty() {
        return;
    }
    let Ok(client) = crate::credential::http_client(&dir, Duration::from_secs(10)) else { return };
    let mut delivered = 0;
    for r in &st.pending_reports {
        if send_report(&client, &cred, r).await.is_err() {
            break;
        }
        delivered += 1;
    }
    if delivered > 0 {
        let saved = tokio::task::spawn_blocking(move || {
            let mut st = UpdateState::load(&dir)?;
            st.pending_reports.drain(..delivered.min(st.pending_reports.len()));
            st.save(&dir)
        });
        if let Ok(Err(e)) = saved.await {
            tracing::warn!(error = %format!("{e:#}"), "cannot record delivered update reports");
        }
    }
}

async fn send_report(
    client: &reqwest::Client,
    cred: &crate::credential::Credential,
    r: &UpdateReport,
) -> Result<(), String> {
    let resp = client
        .post(format!("{}/v1/sync/update/report", cred.hub_url))
        .bearer_auth(&cred.credential)
        .json(r)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() { Ok(()) } else { Err(format!("the hub answered {}", resp.status())) }
}

/// One check: ask the hub, judge the offer, download, verify, stage. The second value is the binary to restart
/// into.
async fn check(
    state: &Arc<AgentState>,
    cfg: &UpdateConfig,
    reported: &mut std::collections::HashSet<(String, String)>,
) -> (CheckResult, Option<PathBuf>) {
    if !cfg.enabled {
        let mut r = CheckResult::new("disabled");
        r.detail = cfg.disabled_because.clone();
        return (r, None);
    }
    let dir = state.data_dir.clone();
    // The credential and CA files are read on the blocking pool.
    let d = dir.clone();
    let link = tokio::task::spawn_blocking(move || match crate::credential::load(&d)? {
        Some(c) => Ok(Some((c, crate::credential::http_client(&d, Duration::from_secs(30))?))),
        None => Ok(None),
    })
    .await
    .unwrap_or_else(|e| Err(anyhow::anyhow!("the update task failed: {e}")));
    let (cred, client) = match link {
        Ok(Some(l)) => l,
        Ok(None) => return (CheckResult::new("not_enrolled"), None),
        Err(e) => return (failed(format!("{e:#}")), None),
    };
    let url = format!("{}/v1/sync/update?version={VERSION}&target={TARGET}", cred.hub_url);
    let resp = match client.get(&url).bearer_auth(&cred.credential).send().await {
        Ok(r) => r,
        Err(e) => {
            let mut r = CheckResult::new("unreachable");
            r.detail = Some(e.to_string());
            return (r, None);
        }
    };
    if resp.status() == reqwest::StatusCode::NO_CONTENT {
        return (CheckResult::new("up_to_date"), None);
    }
    if !resp.status().is_success() {
        return (failed(format!("the hub answered {} to the update check", resp.status())), None);
    }
    let offer: UpdateOffer = match resp.json().await {
        Ok(o) => o,
        Err(e) => return (failed(format!("reading the hub's update offer: {e}")), None),
    };
    let (d, c, o) = (dir.clone(), cfg.clone(), offer.clone());
    let judged = tokio::task::spawn_blocking(move || judge(&d, &c, &o))
        .await
        .unwrap_or_else(|e| Err((None, Refusal::Malformed(format!("the update task failed: {e}")))));
    let manifest = match judged {
        Ok(m) => m,
        Err((m, refusal)) => {
            let result = CheckResult::refused(m.as_deref(), &refusal);
            tracing::warn!(version = ?result.version, reason = refusal.code(), error = %refusal, "self-update refused");
            let key = (result.version.clone().unwrap_or_default(), refusal.code().to_owned());
            if reported.insert(key) {
                let report = UpdateReport {
                    version: m.clone().unwrap_or_else(|| "0.0.0".into()),
                    target: TARGET.into(),
                    outcome: UpdateOutcome::Refused,
                    running_version: VERSION.into(),
                    reason: Some(refusal.code().into()),
                    detail: Some(refusal.to_string()),
                };
                if let Err(e) = send_report(&client, &cred, &report).await {
                    tracing::debug!(error = %e, "the refusal report did not reach the hub");
                }
            }
            return (result, None);
        }
    };
    tracing::info!(version = %manifest.version, ring = %offer.ring, "self-update: downloading a verified release");
    let keys = cfg.keys.clone();
    let archive_url = format!("{}{}", cred.hub_url, offer.archive_path);
    let token = cred.credential.clone();
    let m = manifest.clone();
    let staged = tokio::task::spawn_blocking(move || stage(&dir, &m, &keys, &archive_url, &token)).await;
    match staged {
        Ok(Ok(path)) => {
            let mut r = CheckResult::new("installing");
            r.version = Some(manifest.version.clone());
            (r, Some(path))
        }
        Ok(Err(StageError::Refused(refusal))) => {
            tracing::warn!(version = %manifest.version, reason = refusal.code(), error = %refusal, "self-update refused");
            (CheckResult::refused(Some(&manifest.version), &refusal), None)
        }
        Ok(Err(StageError::Failed(e))) => {
            tracing::warn!(version = %manifest.version, error = %format!("{e:#}"), "self-update download failed; will retry");
            (failed(format!("{e:#}")), None)
        }
        Err(e) => (failed(format!("the update task failed: {e}")), None),
    }
}

fn failed(detail: String) -> CheckResult {
    let mut r = CheckResult::new("failed");
    r.detail = Some(detail);
    r
}

/// Signature and rules, before any download.
fn judge(
    data_dir: &Path,
    cfg: &UpdateConfig,
    offer: &UpdateOffer,
) -> Result<ReleaseManifest, (Option<String>, Refusal)> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&offer.manifest)
        .map_err(|e| (None, Refusal::Malformed(format!("manifest is not base64: {e}"))))?;
    let m = release::verify_manifest(&bytes, offer.signature.as_deref(), &cfg.keys).map_err(|r| {
        // Show which version was offered even when its signature is bad (never trusted, only named).
        (release::parse_manifest(&bytes).ok().map(|m| m.version), r)
    })?;
    let st =
        UpdateState::load(data_dir).map_err(|e| (Some(m.version.clone()), Refusal::Malformed(format!("{e:#}"))))?;
    let view = AgentView {
        running: VERSION,
        highest_seen: st.highest_seen.as_deref(),
        target: TARGET,
        now: OffsetDateTime::now_utc(),
        rolled_back: &st.rolled_back,
    };
    release::check_offer(&m, &view).map_err(|r| (Some(m.version.clone()), r))?;
    Ok(m)
}

enum StageError {
    Refused(Refusal),
    Failed(anyhow::Error),
}

/// Downloads the archive through `self_update` (checksum, zipsign signature, `--version` of the new binary),
/// moves the binary to its versioned path, and swaps the state file. Blocking.
fn stage(
    data_dir: &Path,
    m: &ReleaseManifest,
    keys: &[VerifyingKey],
    url: &str,
    token: &str,
) -> Result<PathBuf, StageError> {
    use self_update::{Release, ReleaseAsset};
    let failed = |e: anyhow::Error| StageError::Failed(e);
    let bin_dir = update_dir(data_dir).join("bin");
    std::fs::create_dir_all(&bin_dir).map_err(|e| failed(anyhow::Error::new(e).context("creating the update dir")))?;
    let incoming = bin_dir.join(format!(".incoming-{}", m.version));
    let _ = std::fs::remove_file(&incoming);
    let name = release::archive_name(&m.version, &m.target);
    let rel = Release::builder()
        .version(m.version.as_str())
        .asset(ReleaseAsset::new(name.as_str(), url))
        .build()
        .map_err(|e| failed(e.into()))?;
    let want = m.version.clone();
    let mut b = self_update::backends::custom::Update::configure();
    b.source(OneRelease(rel))
        .bin_name("storesync-agent")
        .current_version(VERSION)
        .target(m.target.as_str())
        .release_tag(m.version.as_str())
        .bin_install_path(&incoming)
        .unattended()
        .show_download_progress(false)
        .timeout(Duration::from_secs(900))
        .request_header(self_update::http::header::AUTHORIZATION, format!("Bearer {token}"))
        .verifying_keys(keys.iter().map(|k| k.to_bytes()).collect::<Vec<_>>())
        .verify_checksum(self_update::Checksum::Sha256(m.archive_sha256.clone()))
        .verify_binary(move |path| {
            let out = std::process::Command::new(path)
                .arg("--version")
                .output()
                .map_err(|e| self_update::Error::verification_rejected(format!("cannot run it: {e}")))?;
            let text = String::from_utf8_lossy(&out.stdout);
            if out.status.success() && text.split_whitespace().nth(1) == Some(want.as_str()) {
                Ok(())
            } else {
                Err(self_update::Error::verification_rejected(format!(
                    "it says {:?}, the manifest says {want}",
                    text.trim()
                )))
            }
        });
    // self_update sends the credential only to hosts named here, and only over https unless told otherwise; a
    // plain-http hub (loopback, or behind a TLS proxy) already receives it on every sync request.
    let parsed = reqwest::Url::parse(url).map_err(|e| failed(anyhow::Error::new(e).context("the archive URL")))?;
    if let Some(host) = parsed.host_str() {
        b.allow_auth_host(host);
    }
    if parsed.scheme() == "http" {
        b.dangerously_allow_non_https_auth_forwarding();
    }
    let ca = data_dir.join(crate::credential::CA_FILE);
    if let Ok(pem) = std::fs::read(&ca) {
        b.add_root_certificate(self_update::Certificate::from_pem(pem));
    }
    let updater = b.build().map_err(|e| failed(e.into()))?;
    match updater.update() {
        Ok(_) => {}
        Err(self_update::Error::Signature(e)) => {
            return Err(StageError::Refused(Refusal::ArchiveSignature(e.to_string())));
        }
        Err(self_update::Error::NoSignatures(kind)) => {
            return Err(StageError::Refused(Refusal::ArchiveSignature(format!(
                "no signature in the {kind:?} archive"
            ))));
        }
        Err(e @ self_update::Error::ChecksumMismatch { .. }) => {
            return Err(StageError::Refused(Refusal::ArchiveMismatch(e.to_string())));
        }
        Err(e @ self_update::Error::VerificationRejected { .. }) => {
            return Err(StageError::Refused(Refusal::ArchiveMismatch(e.to_string())));
        }
        Err(e) => return Err(failed(anyhow::Error::new(e).context("downloading the release"))),
    }
    let path = bin_dir.join(staged_name(&m.version));
    let fin = || -> anyhow::Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&incoming, std::fs::Permissions::from_mode(0o755))?;
        }
        sync_file(&incoming)?;
        std::fs::rename(&incoming, &path)?;
        #[cfg(unix)]
        std::fs::File::open(&bin_dir)?.sync_all()?;
        let mut st = UpdateState::load(data_dir)?;
        let me = std::env::current_exe().context("locating the running binary")?;
        if cfg!(windows) {
            // The service manager starts the installed .exe, so the new version is swapped into its place
            // (`swap_in`) and a copy of the running one is kept for a rollback.
            let keep = bin_dir.join(staged_name(VERSION));
            if !keep.is_file() {
                let tmp = bin_dir.join(format!(".incoming-{VERSION}"));
                std::fs::copy(&me, &tmp).context("keeping a copy of the running binary")?;
                sync_file(&tmp)?;
                std::fs::rename(&tmp, &keep)?;
            }
            st.previous = Some(Installed { version: VERSION.into(), path: keep });
            st.active = Some(Installed { version: m.version.clone(), path: me });
        } else {
            st.previous = Some(Installed { version: VERSION.into(), path: me });
            st.active = Some(Installed { version: m.version.clone(), path: path.clone() });
        }
        st.trial = Some(Trial {
            version: m.version.clone(),
            starts: 0,
            staged_at: OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default(),
        });
        // The swap: from here on, any start runs the new version as a trial.
        st.save(data_dir)
    };
    fin().map_err(|e| failed(e.context("installing the verified binary")))?;
    tracing::info!(version = %m.version, binary = %path.display(), "self-update staged; restarting into it");
    Ok(path)
}

/// Flushes a file to disk (opened for writing: Windows flushes only a writable handle).
fn sync_file(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new().write(true).open(path)?.sync_all()
}

/// A staged binary's file name.
fn staged_name(version: &str) -> String {
    format!("storesync-agent-{version}{}", std::env::consts::EXE_SUFFIX)
}

/// The one release the hub offered, as a `self_update` release source.
struct OneRelease(self_update::Release);

impl self_update::ReleaseSource for OneRelease {
    fn get_releases(&self) -> self_update::Result<Vec<self_update::Release>> {
        Ok(vec![self.0.clone()])
    }
}

/// What the status document shows about self-update.
#[derive(Debug, Default, Clone)]
pub struct UpdateStatus {
    pub last_check: Option<CheckResult>,
}

/// The `update` object in `/v1/status`.
pub fn status_json(data_dir: &Path, cfg: &UpdateConfig, s: &UpdateStatus) -> serde_json::Value {
    let st = UpdateState::load(data_dir).unwrap_or_default();
    serde_json::json!({
        "enabled": cfg.enabled,
        "disabled_because": cfg.disabled_because,
        "keys": cfg.keys.len(),
        "check_interval_s": cfg.check_interval.as_secs(),
        "last_check": s.last_check,
        "highest_seen": st.highest_seen,
        "rolled_back": st.rolled_back,
        "trial": st.trial.map(|t| t.version),
        "previous": st.previous.map(|p| p.version),
        "pending_reports": st.pending_reports.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(v: &str) -> Installed {
        Installed { version: v.into(), path: PathBuf::from(format!("/data/update/bin/storesync-agent-{v}")) }
    }

    fn pkg(v: &str) -> Installed {
        Installed { version: v.into(), path: PathBuf::from("/usr/bin/storesync-agent") }
    }

    fn trial(v: &str, starts: u32) -> Option<Trial> {
        Some(Trial { version: v.into(), starts, staged_at: String::new() })
    }

    /// One boot decision: (boot, state after).
    fn check(mut st: UpdateState, me: &str, my_path: &str) -> (Boot, UpdateState) {
        let d = decide(&mut st, me, Some(Path::new(my_path)), |_| true);
        (d.boot, st)
    }

    #[test]
    fn boot_decisions() {
        let staged = UpdateState {
            active: Some(inst("0.2.0")),
            previous: Some(pkg("0.1.0")),
            trial: trial("0.2.0", 0),
            ..Default::default()
        };
        // The package binary, restarted with a staged trial: starts it.
        let (b, st) = check(staged.clone(), "0.1.0", "/usr/bin/storesync-agent");
        assert_eq!(b, Boot::Exec(inst("0.2.0").path));
        assert_eq!(st, staged);
        // The trial binary itself: counts the start and runs as a trial.
        let (b, st) = check(staged.clone(), "0.2.0", &inst("0.2.0").path.to_string_lossy());
        assert_eq!(b, Boot::Trial);
        assert_eq!(st.trial.as_ref().unwrap().starts, 1);
        // It died and the service manager restarted the package binary: roll back, run the package binary.
        let (b, st) = check(st, "0.1.0", "/usr/bin/storesync-agent");
        assert_eq!(b, Boot::Normal);
        assert_eq!(st.rolled_back, vec!["0.2.0".to_owned()]);
        assert_eq!(st.active, Some(pkg("0.1.0")));
        assert_eq!(st.trial, None);
        assert_eq!(st.pending_reports.len(), 1);
        assert_eq!(st.pending_reports[0].outcome, UpdateOutcome::RolledBack);
        // The trial binary started twice without confirming: it rolls back to the previous binary itself.
        let twice = UpdateState { trial: trial("0.2.0", 1), ..staged.clone() };
        let (b, st) = check(twice, "0.2.0", &inst("0.2.0").path.to_string_lossy());
        assert_eq!(b, Boot::Exec(PathBuf::from("/usr/bin/storesync-agent")));
        assert_eq!(st.rolled_back, vec!["0.2.0".to_owned()]);
        // Confirmed and active: the package binary starts the newer staged one.
        let confirmed = UpdateState { trial: None, highest_seen: Some("0.2.0".into()), ..staged.clone() };
        let (b, _) = check(confirmed.clone(), "0.1.0", "/usr/bin/storesync-agent");
        assert_eq!(b, Boot::Exec(inst("0.2.0").path));
        // A package upgrade overtook the staged version: run the package, forget the staged one.
        let (b, st) = check(confirmed.clone(), "0.3.0", "/usr/bin/storesync-agent");
        assert_eq!(b, Boot::Normal);
        assert_eq!(st.active, None);
        // Nothing staged: normal.
        let (b, st) = check(UpdateState::default(), "0.1.0", "/usr/bin/storesync-agent");
        assert_eq!((b, st), (Boot::Normal, UpdateState::default()));
    }

    #[test]
    fn a_staged_binary_that_vanished_is_not_started() {
        let mut st = UpdateState { active: Some(inst("0.2.0")), ..Default::default() };
        let d = decide(&mut st, "0.1.0", None, |_| false);
        assert_eq!(d.boot, Boot::Normal);
        assert!(d.changed && st.active.is_none());
    }

    #[test]
    fn switching_updates_on_without_a_key_is_a_start_up_error() {
        if COMPILED_KEYS.is_some_and(|k| !k.is_empty()) {
            eprintln!("skipped: this build has compiled-in update keys");
            return;
        }
        assert!(UpdateConfig::resolve(Some(true), None, None, None).is_err());
        assert!(UpdateConfig::resolve(None, Some(&[]), None, None).is_err(), "an empty key list is an error");
        assert!(UpdateConfig::resolve(None, Some(&["AAAA".into()]), None, None).is_err(), "a bad key is an error");
        let off = UpdateConfig::resolve(None, None, None, None).unwrap();
        assert!(!off.enabled && off.disabled_because.is_some());
        let key = release::encode_verifying_key(&ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key());
        let on = UpdateConfig::resolve(None, Some(std::slice::from_ref(&key)), Some(60), Some(5)).unwrap();
        assert!(on.enabled);
        assert_eq!(on.keys.len(), 1);
        let off = UpdateConfig::resolve(Some(false), Some(&[key]), None, None).unwrap();
        assert!(!off.enabled);
        assert!(UpdateConfig::resolve(None, None, Some(1), None).is_err());
    }

    #[test]
    fn the_state_file_round_trips_and_a_failed_trial_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = UpdateState {
            active: Some(Installed { version: VERSION.into(), path: dir.path().join("new") }),
            previous: Some(pkg("0.0.1")),
            trial: trial(VERSION, 1),
            ..Default::default()
        };
        st.save(dir.path()).unwrap();
        assert_eq!(UpdateState::load(dir.path()).unwrap(), st);
        let prev = finish_trial(dir.path(), Err("no answer".into())).unwrap();
        assert_eq!(prev, Some(PathBuf::from("/usr/bin/storesync-agent")));
        let after = UpdateState::load(dir.path()).unwrap();
        assert_eq!(after.rolled_back, vec![VERSION.to_owned()]);
        assert_eq!(after.active, Some(pkg("0.0.1")));
        // A healthy trial confirms and raises the highest version seen.
        st.save(dir.path()).unwrap();
        assert_eq!(finish_trial(dir.path(), Ok(())).unwrap(), None);
        let after = UpdateState::load(dir.path()).unwrap();
        assert_eq!(after.trial, None);
        assert_eq!(after.highest_seen.as_deref(), Some(VERSION));
        assert_eq!(after.pending_reports[0].outcome, UpdateOutcome::Installed);
        st = UpdateState::default();
        st.save(dir.path()).unwrap();
        assert_eq!(finish_trial(dir.path(), Ok(())).unwrap(), None, "no trial: nothing to do");
    }
}
