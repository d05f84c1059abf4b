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
}

/// Platform directories for a user-mode agent.
pub fn project_dirs() -> Option<directories::ProjectDirs> {
    directories::ProjectDirs::from("", "", "storesync")
}

/// The default `agent.toml` path.
pub fn default_config_file() -> Option<PathBuf> {
    project_dirs().map(|d| d.config_dir().join("agent.toml"))
}

/// The default data dir for a user-mode agent.
pub fn default_data_dir() -> PathBuf {
    project_dirs().map(|d| d.data_dir().to_path_buf()).unwrap_or_else(|| PathBuf::from("storesync-data"))
}

/// Reads `agent.toml`. A file named explicitly must exist; the default one may be absent.
pub fn load_file(explicit: Option<&Path>) -> anyhow::Result<FileConfig> {
    let (path, must_exist) = match explicit {
        Some(p) => (p.to_path_buf(), true),
        None => match default_config_file() {
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
}

impl Config {
    pub fn resolve(file: FileConfig, o: Overrides) -> anyhow::Result<Config> {
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
        Ok(Config {
            data_dir: o.data_dir.or(file.data_dir).unwrap_or_else(default_data_dir),
            listen,
            store_id: o.store_id.or(file.store_id),
            till_id: o.till_id.or(file.till_id),
            upload_batch_events,
            sync,
        })
    }

    /// A configuration for tests and embedding: everything default but the data dir and listen address.
    pub fn for_dir(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Config {
        Config {
            data_dir: data_dir.into(),
            listen,
            store_id: None,
            till_id: None,
            upload_batch_events: storesync_shared::wire::MAX_BATCH_EVENTS,
            sync: crate::sync::SyncConfig::default(),
        }
    }
}
