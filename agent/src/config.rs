//! Agent configuration: `agent.toml` in the platform config dir, overridden by `STORESYNC_*` environment
//! variables and command-line flags (clap reads both), in that order of precedence: flag > env > file > default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// The default POS API address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7171";

/// What `agent.toml` may hold. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub store_id: Option<String>,
    pub till_id: Option<String>,
    pub log_format: Option<String>,
    /// Upload batch bound: at most this many events per request.
    pub upload_batch_events: Option<usize>,
    /// How long one request to the hub may take, in seconds (1–600, default 30): a hung connection is given up
    /// after this long, and the request retried.
    pub hub_request_timeout_s: Option<u64>,
    /// How long a stop waits for POS requests in flight, in seconds (1–300, default 10); then the journal commits
    /// what it holds and the agent exits without them (they were never answered, so nothing acknowledged is lost).
    pub shutdown_deadline_s: Option<u64>,
    /// Self-update on or off. Default: on when an update key is compiled in or configured.
    pub update_enabled: Option<bool>,
    /// Base64 ed25519 public keys a release must be signed with (added to any compiled in). An empty list is an
    /// error: self-update never runs unverified.
    pub update_keys: Option<Vec<String>>,
    /// How often to ask the hub for a release, in seconds (10–604800, default 3600, plus up to 10 % jitter).
    pub update_check_interval_s: Option<u64>,
    /// How long a new version has to prove its health before it is rolled back, in seconds (2–600, default 30).
    pub update_health_timeout_s: Option<u64>,
    /// The drop folder on or off (default on). See docs/INBOX.md.
    pub inbox_enabled: Option<bool>,
    /// The drop folder (default `<data-dir>/inbox`; relative to the data dir).
    pub inbox_dir: Option<PathBuf>,
    /// How long a dropped file must stay unchanged before it is read, in milliseconds (100–600000, default 2000).
    pub inbox_settle_ms: Option<u64>,
    /// How often the drop folder is listed without a change notification, in seconds (1–3600, default 10).
    pub inbox_rescan_s: Option<u64>,
    /// How long a file that looks cut short is waited for before it is read anyway, in seconds (1–86400,
    /// default 60).
    pub inbox_incomplete_after_s: Option<u64>,
    /// The currency of CSV and POSLog files that name none (ISO 4217).
    pub inbox_currency: Option<String>,
    /// Days a file stays in the inbox's `processed/` folder (0–3650, default 30; 0 keeps them forever).
    pub inbox_keep_processed_days: Option<u64>,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// The resolved configuration `run` works from.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub store_id: Option<String>,
    pub till_id: Option<String>,
    pub upload_batch_events: usize,
    pub sync: crate::sync::SyncConfig,
    /// See [`FileConfig::shutdown_deadline_s`].
    pub shutdown_deadline: std::time::Duration,
    pub update: crate::update::UpdateConfig,
    /// The drop folder.
    pub inbox: crate::inbox::InboxConfig,
}

/// The default [`Config::shutdown_deadline`].
pub const DEFAULT_SHUTDOWN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Where the agent's files live: a user running it by hand, or the operating system's service manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Per-user directories from the `directories` crate (XDG on Linux, `%APPDATA%` on Windows).
    User,
    /// System directories: `/etc/storesync` and `/var/lib/storesync-agent` (or systemd's `$STATE_DIRECTORY`) on
    /// Unix, `%ProgramData%\storesync` on Windows.
    Service,
}

/// The default config file and data dir of a mode (what `storesync-agent paths` prints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub mode: Mode,
    pub config_file: Option<PathBuf>,
    pub data_dir: PathBuf,
}

impl Paths {
    pub fn of(mode: Mode) -> Paths {
        match mode {
            Mode::User => {
                let dirs = directories::ProjectDirs::from("", "", "storesync");
                Paths {
                    mode,
                    config_file: dirs.as_ref().map(|d| d.config_dir().join("agent.toml")),
                    data_dir: dirs
                        .map(|d| d.data_dir().to_path_buf())
                        .unwrap_or_else(|| PathBuf::from("storesync-data")),
                }
            }
            Mode::Service => service_paths(),
        }
    }
}

#[cfg(windows)]
fn service_paths() -> Paths {
    let base = std::env::var_os("ProgramData")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"))
        .join("storesync");
    Paths { mode: Mode::Service, config_file: Some(base.join("agent.toml")), data_dir: base.join("data") }
}

#[cfg(not(windows))]
fn service_paths() -> Paths {
    // systemd's StateDirectory= sets $STATE_DIRECTORY; the unit names /var/lib/storesync-agent.
    let data_dir = std::env::var_os("STATE_DIRECTORY")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/storesync-agent"));
    Paths { mode: Mode::Service, config_file: Some(PathBuf::from("/etc/storesync/agent.toml")), data_dir }
}

/// Reads `agent.toml`. A file named explicitly must exist; the default one may be absent.
pub fn load_file(explicit: Option<&Path>, mode: Mode) -> anyhow::Result<FileConfig> {
    let (path, must_exist) = match explicit {
        Some(p) => (p.to_path_buf(), true),
        None => match Paths::of(mode).config_file {
            Some(p) => (p, false),
            None => return Ok(FileConfig::default()),
        },
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("reading config {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => Ok(FileConfig::default()),
        Err(e) => Err(e).with_context(|| format!("reading config {}", path.display())),
    }
}

/// Overrides from flags and the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub store_id: Option<String>,
    pub till_id: Option<String>,
    pub inbox_dir: Option<PathBuf>,
}

impl Config {
    pub fn resolve(file: FileConfig, o: Overrides, mode: Mode) -> anyhow::Result<Config> {
        let listen_text = o.listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen_text
            .parse()
            .with_context(|| format!("--listen {listen_text:?} is not an address like 127.0.0.1:7171"))?;
        if !listen.ip().is_loopback() {
            bail!("the POS API only listens on loopback; {listen} is not a loopback address");
        }
        let upload_batch_events = file.upload_batch_events.unwrap_or(storesync_shared::wire::MAX_BATCH_EVENTS);
        if !(1..=storesync_shared::wire::MAX_BATCH_EVENTS).contains(&upload_batch_events) {
            bail!("upload_batch_events must be between 1 and {}", storesync_shared::wire::MAX_BATCH_EVENTS);
        }
        let mut sync = crate::sync::SyncConfig { batch_events: upload_batch_events, ..Default::default() };
        if let Some(s) = file.hub_request_timeout_s {
            if !(1..=600).contains(&s) {
                bail!("hub_request_timeout_s must be between 1 and 600");
            }
            sync.request_timeout = std::time::Duration::from_secs(s);
        }
        let shutdown_deadline = match file.shutdown_deadline_s {
            None => DEFAULT_SHUTDOWN_DEADLINE,
            Some(s) if (1..=300).contains(&s) => std::time::Duration::from_secs(s),
            Some(_) => bail!("shutdown_deadline_s must be between 1 and 300"),
        };
        let update = crate::update::UpdateConfig::resolve(
            file.update_enabled,
            file.update_keys.as_deref(),
            file.update_check_interval_s,
            file.update_health_timeout_s,
        )?;
        let data_dir = o.data_dir.or(file.data_dir).unwrap_or_else(|| Paths::of(mode).data_dir);
        let inbox = crate::inbox::InboxConfig::resolve(
            &data_dir,
            crate::inbox::Keys {
                enabled: file.inbox_enabled,
                dir: o.inbox_dir.or(file.inbox_dir),
                settle_ms: file.inbox_settle_ms,
                rescan_s: file.inbox_rescan_s,
                incomplete_after_s: file.inbox_incomplete_after_s,
                currency: file.inbox_currency,
                keep_processed_days: file.inbox_keep_processed_days,
            },
        )?;
        Ok(Config {
            update,
            shutdown_deadline,
            inbox,
            data_dir,
            listen,
            store_id: o.store_id.or(file.store_id),
            till_id: o.till_id.or(file.till_id),
            upload_batch_events,
            sync,
        })
    }

    /// A configuration for tests and embedding: everything default but the data dir and listen address.
    pub fn for_dir(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Config {
        let data_dir = data_dir.into();
        Config {
            inbox: crate::inbox::InboxConfig::default_in(&data_dir),
            data_dir,
            listen,
            store_id: None,
            till_id: None,
            upload_batch_events: storesync_shared::wire::MAX_BATCH_EVENTS,
            sync: crate::sync::SyncConfig::default(),
            shutdown_deadline: DEFAULT_SHUTDOWN_DEADLINE,
            update: crate::update::UpdateConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The annotated `agent.toml` the Linux packages install: every key it shows, uncommented, is a key this
    /// version reads (and resolves with its shown value), so the file cannot drift from the code unnoticed.
    #[test]
    fn the_shipped_agent_toml_shows_only_real_keys() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../installers/linux/agent.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let uncommented: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.split_once(" = ").is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_')))
            .filter(|l| !l.contains('<'))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            // The file shows `update_enabled = true` beside a placeholder key (left out above); without a key the
            // agent refuses to start, as the file says.
            .replace("update_enabled = true", "update_enabled = false");
        assert!(uncommented.contains("inbox_settle_ms"), "{uncommented}");
        let file: FileConfig = toml::from_str(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        let o = Overrides::default();
        Config::resolve(file, o, Mode::Service).unwrap();
    }
}
