//! Hub configuration: the resolved [`Config`] `serve` runs from, and how it is made from a TOML file
//! (`--config`), `STORESYNC_*` environment variables and command-line flags (clap reads those two into
//! [`ServeArgs`]), in that order of precedence: flag > env > file > default.
//!
//! [`load`] is the one I/O step (it reads the file, `STORESYNC_ADMIN_TOKEN` and `<data-dir>/instance.id`);
//! [`Config::resolve`] is the pure merge, so every rule of precedence and every refusal is tested here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::api::backpressure;
use crate::docs::SyncLimits;
use crate::fleet::FleetThresholds;
use crate::outbox::DeliverySettings;
use crate::reservations::{ExpiryPolicy, PlannerSettings};
use crate::storage::postgres::{DEFAULT_POOL_SIZE, PgSettings};
use crate::{Clock, SystemClock};

/// Where hub.db and admin.token live when no data dir is given.
pub const DEFAULT_DATA_DIR: &str = "storesync-hub-data";

/// The environment variable holding the admin token (it has no flag: a token on a command line leaks).
pub const ADMIN_TOKEN_ENV: &str = "STORESYNC_ADMIN_TOKEN";

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
    pub shutdown_grace: Duration,
    /// Bounds of CRDT sync, documents and compaction.
    pub sync: SyncLimits,
    /// Per-till request rate.
    pub till_rate: TillRate,
    /// Agent release uploads.
    pub releases: ReleaseSettings,
    /// When the fleet view calls a store stale or offline, and alerts.
    pub fleet: FleetThresholds,
    /// How events are passed on to subscriptions.
    pub delivery: DeliverySettings,
    /// A PostgreSQL database instead of `<data-dir>/hub.db`: several instances may share it (docs/SCALING.md).
    pub database: Option<PgSettings>,
    /// Bounds of the sync requests in flight and queued; over them the hub answers 429 ([`backpressure`]).
    pub backpressure: backpressure::Settings,
    /// The reservation planner: how often it runs and what it does at `pickup_by` ([`crate::reservations`]).
    pub planner: PlannerSettings,
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
            shutdown_grace: Duration::from_secs(10),
            sync: SyncLimits::default(),
            till_rate: TillRate::default(),
            releases: ReleaseSettings::default(),
            fleet: FleetThresholds::default(),
            delivery: DeliverySettings::default(),
            database: None,
            backpressure: backpressure::Settings::default(),
            planner: PlannerSettings::default(),
        }
    }
}

/// Where the hub's state is when it is not `<data-dir>/hub.db` (docs/SCALING.md).
#[derive(Debug, Default, clap::Args)]
pub struct DatabaseArgs {
    /// A PostgreSQL database instead of <data-dir>/hub.db: postgres://USER[:PASSWORD]@HOST[:PORT]/DB (give a URL
    /// with a password in the environment or the config file, not on the command line).
    #[arg(long, env = "STORESYNC_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Connections to PostgreSQL this process may hold [default: 16].
    #[arg(long, env = "STORESYNC_DATABASE_POOL_SIZE", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_pool_size: Option<u32>,
}

impl DatabaseArgs {
    /// The PostgreSQL settings from the flags, else from a config file's `database_url` and `database_pool_size`.
    ///
    /// # Errors
    /// A pool size outside 1 to 1000.
    pub fn settings(self, file_url: Option<String>, file_pool_size: Option<u32>) -> anyhow::Result<Option<PgSettings>> {
        let Some(url) = self.database_url.or(file_url).filter(|u| !u.trim().is_empty()) else {
            return Ok(None);
        };
        let pool_size = self.database_pool_size.or(file_pool_size).unwrap_or(DEFAULT_POOL_SIZE);
        if !(1..=1000).contains(&pool_size) {
            bail!("database_pool_size must be from 1 to 1000");
        }
        Ok(Some(PgSettings { url, pool_size }))
    }
}

/// `serve`'s flags; clap fills each from its flag, else from its environment variable.
#[derive(Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// A TOML file with any of: listen, data_dir, tls_cert, tls_key, insecure_allow_plaintext, max_release_bytes,
    /// release_keys, stale_after_s, offline_after_s, alert_offline_after_s, forecast_window_s, max_inflight_syncs,
    /// max_queued_syncs, sync_queue_timeout_ms, database_url, database_pool_size, reservation_expiry.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "STORESYNC_HUB_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Where hub.db and admin.token live [default: ./storesync-hub-data].
    #[arg(long, env = "STORESYNC_HUB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// PEM certificate chain for TLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback address (only behind a TLS-terminating proxy).
    #[arg(long)]
    pub insecure_allow_plaintext: bool,
    /// Requests per second each till may make to the sync endpoints (sustained) [default: 100].
    #[arg(long, env = "STORESYNC_HUB_TILL_RATE", value_parser = clap::value_parser!(u32).range(1..))]
    pub till_rate: Option<u32>,
    /// Requests a till may make at once above that rate [default: 200].
    #[arg(long, env = "STORESYNC_HUB_TILL_BURST", value_parser = clap::value_parser!(u32).range(1..))]
    pub till_burst: Option<u32>,
    /// The largest agent release upload, in bytes [default: 536870912, 512 MiB].
    #[arg(long, env = "STORESYNC_HUB_MAX_RELEASE_BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_release_bytes: Option<u64>,
    /// Fleet view: no contact for this long makes a store stale [default: 120].
    #[arg(long, env = "STORESYNC_HUB_STALE_AFTER_S")]
    pub stale_after_s: Option<u64>,
    /// Fleet view: no contact for this long makes a store offline [default: 600].
    #[arg(long, env = "STORESYNC_HUB_OFFLINE_AFTER_S")]
    pub offline_after_s: Option<u64>,
    /// Fleet view: offline this long raises an alert [default: 1800].
    #[arg(long, env = "STORESYNC_HUB_ALERT_OFFLINE_AFTER_S")]
    pub alert_offline_after_s: Option<u64>,
    /// Fleet view: how far back the drain forecast looks, in seconds [default: 300].
    #[arg(long, env = "STORESYNC_HUB_FORECAST_WINDOW_S")]
    pub forecast_window_s: Option<u64>,
    /// Event delivery: the longest wait between two attempts, in seconds [default: 600].
    #[arg(long, env = "STORESYNC_HUB_DELIVERY_BACKOFF_MAX_S", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub delivery_backoff_max_s: Option<u64>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Backpressure: sync requests (uploads, document sync) handled at once [default: 32].
    #[arg(long, env = "STORESYNC_HUB_MAX_INFLIGHT_SYNCS", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_inflight_syncs: Option<u64>,
    /// Backpressure: sync requests waiting beyond those; more are answered 429 at once [default: 256].
    #[arg(long, env = "STORESYNC_HUB_MAX_QUEUED_SYNCS", value_parser = clap::value_parser!(u64).range(0..=900_000))]
    pub max_queued_syncs: Option<u64>,
    /// Backpressure: the longest wait of a queued sync request before it is answered 429, in ms [default: 5000].
    #[arg(long, env = "STORESYNC_HUB_SYNC_QUEUE_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub sync_queue_timeout_ms: Option<u64>,
    /// Reservations: what happens to one not picked by its pickup_by — `release` its units (expired), or
    /// `reroute` it to the next store of its list with a new pickup time [default: release].
    #[arg(long, env = "STORESYNC_HUB_RESERVATION_EXPIRY", value_enum)]
    pub reservation_expiry: Option<ExpiryPolicy>,
}

/// What the `--config` TOML file may hold. Every key is optional; an unknown key is refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub insecure_allow_plaintext: bool,
    pub max_release_bytes: Option<u64>,
    /// Base64 publisher public keys the hub checks release uploads against (empty: stores what it is given).
    #[serde(default)]
    pub release_keys: Vec<String>,
    pub stale_after_s: Option<u64>,
    pub offline_after_s: Option<u64>,
    pub alert_offline_after_s: Option<u64>,
    pub forecast_window_s: Option<u64>,
    pub delivery_backoff_max_s: Option<u64>,
    pub database_url: Option<String>,
    pub database_pool_size: Option<u32>,
    pub max_inflight_syncs: Option<u64>,
    pub max_queued_syncs: Option<u64>,
    pub sync_queue_timeout_ms: Option<u64>,
    pub reservation_expiry: Option<ExpiryPolicy>,
}

/// Reads the `--config` file.
///
/// # Errors
/// The file cannot be read, is not TOML, or holds a key this version does not know.
pub fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// `serve`'s configuration: the file `args` names (if any), the admin token from the environment, the flags, and
/// this instance's delivery-lease owner from `<data-dir>/instance.id` (made on first start).
///
/// # Errors
/// What [`load_file`] and [`Config::resolve`] refuse, and an unreadable or unwritable `instance.id`.
pub fn load(args: ServeArgs) -> anyhow::Result<Config> {
    let file = match &args.config {
        Some(p) => load_file(p)?,
        None => FileConfig::default(),
    };
    let mut config = Config::resolve(file, args, std::env::var(ADMIN_TOKEN_ENV).ok())?;
    config.delivery.owner = Some(crate::outbox::instance_id(&config.data_dir)?);
    Ok(config)
}

impl Config {
    /// Merges the flags (or their environment variables) over the file over the defaults, and checks the result.
    /// A blank `admin_token` counts as none.
    ///
    /// # Errors
    /// A value out of its range, a TLS certificate without its key (or the reverse), or thresholds that contradict
    /// each other; the message names the setting.
    pub fn resolve(file: FileConfig, args: ServeArgs, admin_token: Option<String>) -> anyhow::Result<Config> {
        let data_dir = args.data_dir.or(file.data_dir).unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        let mut config = Config::new(data_dir);
        config.database = args.database.settings(file.database_url, file.database_pool_size)?;
        if let Some(listen) = args.listen.or(file.listen) {
            config.listen = listen;
        }
        config.tls = match (args.tls_cert.or(file.tls_cert), args.tls_key.or(file.tls_key)) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => bail!("give both a TLS certificate and a key, or neither"),
        };
        config.insecure_allow_plaintext = args.insecure_allow_plaintext || file.insecure_allow_plaintext;
        config.admin_token = admin_token.filter(|t| !t.trim().is_empty());
        if let Some(r) = args.till_rate {
            config.till_rate.per_second = r;
        }
        if let Some(b) = args.till_burst {
            config.till_rate.burst = b;
        }
        if let Some(n) = args.max_release_bytes.or(file.max_release_bytes) {
            config.releases.max_release_bytes = usize::try_from(n).context("--max-release-bytes is too large")?;
        }
        config.releases.release_keys = file.release_keys;
        let fleet = &mut config.fleet;
        for (value, slot) in [
            (args.stale_after_s.or(file.stale_after_s), &mut fleet.stale_after_s),
            (args.offline_after_s.or(file.offline_after_s), &mut fleet.offline_after_s),
            (args.alert_offline_after_s.or(file.alert_offline_after_s), &mut fleet.alert_offline_after_s),
            (args.forecast_window_s.or(file.forecast_window_s), &mut fleet.forecast_window_s),
        ] {
            if let Some(v) = value {
                *slot = v;
            }
        }
        config.fleet.check().map_err(|e| anyhow::anyhow!("fleet thresholds: {e}"))?;
        if let Some(s) = args.delivery_backoff_max_s.or(file.delivery_backoff_max_s) {
            if !(1..=86_400).contains(&s) {
                bail!("delivery_backoff_max_s must be from 1 to 86400 seconds");
            }
            config.delivery.backoff_max = Duration::from_secs(s);
        }
        let bp = &mut config.backpressure;
        if let Some(n) = args.max_inflight_syncs.or(file.max_inflight_syncs) {
            bp.max_inflight = usize::try_from(n).context("max_inflight_syncs is too large")?;
        }
        if let Some(n) = args.max_queued_syncs.or(file.max_queued_syncs) {
            bp.max_queued = usize::try_from(n).context("max_queued_syncs is too large")?;
        }
        if let Some(ms) = args.sync_queue_timeout_ms.or(file.sync_queue_timeout_ms) {
            bp.queue_timeout = Duration::from_millis(ms);
        }
        bp.check().map_err(|e| anyhow::anyhow!("backpressure: {e}"))?;
        if let Some(p) = args.reservation_expiry.or(file.reservation_expiry) {
            config.planner.on_expiry = p;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use clap::{Args as _, FromArgMatches as _};

    use super::*;

    /// One configuration: the `--config` file's text (none when empty), the environment, the command line after
    /// `serve`; and what must follow: each `;`-separated fragment in the resolved config's `Debug`, or with
    /// `error: `, a fragment of the refusal.
    struct Case {
        name: &'static str,
        file: &'static str,
        env: &'static [(&'static str, &'static str)],
        argv: &'static [&'static str],
        want: &'static str,
    }

    /// Runs `serve`'s real clap definition over `argv` with `env` standing in for the process environment
    /// (each variable must be read by a flag, as clap's `env` does: a flag beats it), then resolves.
    fn check(case: &Case) {
        let mut cmd = ServeArgs::augment_args(clap::Command::new("serve").no_binary_name(true));
        for (name, _) in case.env.iter().filter(|(n, _)| *n != ADMIN_TOKEN_ENV) {
            assert!(
                cmd.get_arguments().any(|a| a.get_env().is_some_and(|e| e == *name)),
                "{}: no flag reads {name}",
                case.name
            );
        }
        // The process's own environment is left out; a variable of the case becomes the flag's fallback value,
        // which is where clap puts the environment in its order (command line > environment > default).
        cmd = cmd.mut_args(|a| {
            let value = case.env.iter().find(|(n, _)| a.get_env().is_some_and(|e| e == *n)).map(|(_, v)| *v);
            let a = a.env(None::<&str>);
            match value {
                Some(v) => a.default_value(v),
                None => a,
            }
        });
        let got = cmd
            .try_get_matches_from(case.argv)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .and_then(|m| ServeArgs::from_arg_matches(&m).map_err(|e| anyhow::anyhow!("{e}")))
            .and_then(|args| {
                let file = if case.file.is_empty() {
                    FileConfig::default()
                } else {
                    toml::from_str(case.file).context("parsing the file")?
                };
                let token = case.env.iter().find(|(n, _)| *n == ADMIN_TOKEN_ENV).map(|(_, v)| (*v).to_owned());
                Config::resolve(file, args, token)
            });
        let (text, fragments) = match (&got, case.want.strip_prefix("error: ")) {
            (Ok(config), None) => (format!("{config:?}"), case.want),
            (Err(err), Some(want)) => (format!("{err:#}"), want),
            (Ok(config), Some(_)) => panic!("{}: resolved, but should be refused: {config:?}", case.name),
            (Err(err), None) => panic!("{}: refused: {err:#}", case.name),
        };
        for fragment in fragments.split(';').map(str::trim) {
            assert!(text.contains(fragment), "{}: {fragment:?} is not in\n{text}", case.name);
        }
    }

    #[test]
    fn config_resolves_flag_over_env_over_file_over_default() {
        let cases = [
            Case {
                name: "defaults",
                file: "",
                env: &[],
                argv: &[],
                want: "listen: 127.0.0.1:8080; data_dir: \"storesync-hub-data\"; tls: None; admin_token: None; \
                       per_second: 100, burst: 200; max_release_bytes: 536870912; stale_after_s: 120; \
                       backoff_max: 600s; database: None; max_inflight: 32, max_queued: 256, queue_timeout: 5s; \
                       on_expiry: Release",
            },
            Case {
                name: "file only",
                file: r#"
                    listen = "0.0.0.0:9000"
                    data_dir = "/srv/hub"
                    tls_cert = "c.pem"
                    tls_key = "k.pem"
                    insecure_allow_plaintext = true
                    max_release_bytes = 1024
                    release_keys = ["AAAA"]
                    stale_after_s = 60
                    offline_after_s = 300
                    alert_offline_after_s = 900
                    forecast_window_s = 120
                    delivery_backoff_max_s = 30
                    database_url = "postgres://hub@db/hub"
                    database_pool_size = 4
                    max_inflight_syncs = 8
                    max_queued_syncs = 0
                    sync_queue_timeout_ms = 250
                    reservation_expiry = "reroute"
                "#,
                env: &[],
                argv: &[],
                want: "listen: 0.0.0.0:9000; data_dir: \"/srv/hub\"; cert: \"c.pem\", key: \"k.pem\"; \
                       insecure_allow_plaintext: true; max_release_bytes: 1024, release_keys: [\"AAAA\"]; \
                       stale_after_s: 60, offline_after_s: 300, alert_offline_after_s: 900, forecast_window_s: 120; \
                       backoff_max: 30s; url: \"postgres://hub@db/hub\", pool_size: 4; \
                       max_inflight: 8, max_queued: 0, queue_timeout: 250ms; on_expiry: Reroute",
            },
            Case {
                name: "env over file",
                file: "listen = \"0.0.0.0:9000\"\ndata_dir = \"/srv/file\"\nstale_after_s = 60\n\
                       database_url = \"postgres://file@db/hub\"\ndatabase_pool_size = 4\nmax_inflight_syncs = 8\n\
                       reservation_expiry = \"reroute\"",
                env: &[
                    ("STORESYNC_HUB_LISTEN", "10.0.0.1:8443"),
                    ("STORESYNC_HUB_DATA_DIR", "/srv/env"),
                    ("STORESYNC_HUB_STALE_AFTER_S", "90"),
                    ("STORESYNC_DATABASE_URL", "postgres://env@db/hub"),
                    ("STORESYNC_HUB_MAX_INFLIGHT_SYNCS", "16"),
                    ("STORESYNC_HUB_RESERVATION_EXPIRY", "release"),
                    ("STORESYNC_HUB_TILL_RATE", "5"),
                    ("STORESYNC_HUB_TILL_BURST", "7"),
                    ("STORESYNC_ADMIN_TOKEN", "s3cret"),
                ],
                argv: &[],
                want: "listen: 10.0.0.1:8443; data_dir: \"/srv/env\"; stale_after_s: 90; \
                       url: \"postgres://env@db/hub\", pool_size: 4; max_inflight: 16; on_expiry: Release; \
                       per_second: 5, burst: 7; admin_token: Some(\"<redacted>\")",
            },
            Case {
                name: "flag over env",
                file: "listen = \"0.0.0.0:9000\"\nmax_release_bytes = 1024",
                env: &[
                    ("STORESYNC_HUB_LISTEN", "10.0.0.1:8443"),
                    ("STORESYNC_HUB_MAX_RELEASE_BYTES", "2048"),
                    ("STORESYNC_HUB_DELIVERY_BACKOFF_MAX_S", "20"),
                    ("STORESYNC_DATABASE_URL", "postgres://env@db/hub"),
                    ("STORESYNC_DATABASE_POOL_SIZE", "3"),
                ],
                argv: &[
                    "--listen=127.0.0.1:7000",
                    "--max-release-bytes=4096",
                    "--delivery-backoff-max-s=2",
                    "--database-url=postgres://flag@db/hub",
                    "--database-pool-size=9",
                ],
                want: "listen: 127.0.0.1:7000; max_release_bytes: 4096; backoff_max: 2s; \
                       url: \"postgres://flag@db/hub\", pool_size: 9",
            },
            Case {
                name: "flags only",
                file: "",
                env: &[],
                argv: &[
                    "--data-dir=/d",
                    "--tls-cert=c.pem",
                    "--tls-key=k.pem",
                    "--insecure-allow-plaintext",
                    "--stale-after-s=10",
                    "--offline-after-s=20",
                    "--alert-offline-after-s=30",
                    "--forecast-window-s=600",
                    "--max-queued-syncs=5",
                    "--sync-queue-timeout-ms=0",
                    "--reservation-expiry=reroute",
                ],
                want: "data_dir: \"/d\"; cert: \"c.pem\", key: \"k.pem\"; insecure_allow_plaintext: true; \
                       stale_after_s: 10, offline_after_s: 20, alert_offline_after_s: 30, forecast_window_s: 600; \
                       max_queued: 5, queue_timeout: 0ns; on_expiry: Reroute",
            },
            Case {
                name: "a blank admin token is none; a blank database URL is SQLite",
                file: "database_url = \" \"",
                env: &[("STORESYNC_ADMIN_TOKEN", "  ")],
                argv: &[],
                want: "admin_token: None; database: None",
            },
            Case {
                name: "the file's pool size without a URL is ignored",
                file: "database_pool_size = 0",
                env: &[],
                argv: &[],
                want: "database: None",
            },
            Case {
                name: "pool size out of range in the file",
                file: "database_url = \"postgres://hub@db/hub\"\ndatabase_pool_size = 0",
                env: &[],
                argv: &[],
                want: "error: database_pool_size must be from 1 to 1000",
            },
            Case {
                name: "a TLS key without its certificate (file and flag together)",
                file: "tls_key = \"k.pem\"",
                env: &[],
                argv: &[],
                want: "error: give both a TLS certificate and a key, or neither",
            },
            Case {
                name: "fleet thresholds that contradict each other",
                file: "stale_after_s = 700",
                env: &[],
                argv: &[],
                want: "error: fleet thresholds: stale_after_s (700) must be above 0 and at most offline_after_s (600)",
            },
            Case {
                name: "delivery backoff out of range in the file",
                file: "delivery_backoff_max_s = 0",
                env: &[],
                argv: &[],
                want: "error: delivery_backoff_max_s must be from 1 to 86400 seconds",
            },
            Case {
                name: "no sync handler at all",
                file: "max_inflight_syncs = 0",
                env: &[],
                argv: &[],
                want: "error: backpressure: ",
            },
            Case {
                name: "an unknown key in the file",
                file: "listen_on = \"0.0.0.0:1\"",
                env: &[],
                argv: &[],
                want: "error: unknown field `listen_on`",
            },
            Case {
                name: "an out-of-range flag is refused by clap",
                file: "",
                env: &[],
                argv: &["--till-rate=0"],
                want: "error: invalid value '0' for '--till-rate <TILL_RATE>'",
            },
            Case {
                name: "a TLS certificate flag without its key flag is refused by clap",
                file: "",
                env: &[],
                argv: &["--tls-cert=c.pem"],
                want: "error: the following required arguments were not provided",
            },
        ];
        for case in &cases {
            check(case);
        }
    }

    #[test]
    fn config_load_reads_the_named_file_and_keeps_the_instance_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        let data_dir = dir.path().join("data");
        std::fs::write(&path, format!("data_dir = {:?}\nstale_after_s = 60\n", data_dir.to_str().unwrap())).unwrap();
        let args = || ServeArgs { config: Some(path.clone()), ..ServeArgs::default() };
        let first = load(args()).unwrap();
        assert_eq!((first.data_dir.as_path(), first.fleet.stale_after_s), (data_dir.as_path(), 60));
        assert!(first.delivery.owner.is_some());
        assert_eq!(load(args()).unwrap().delivery.owner, first.delivery.owner, "a restart keeps its lease owner");

        let missing = dir.path().join("nope.toml");
        let err = load(ServeArgs { config: Some(missing.clone()), ..ServeArgs::default() }).unwrap_err();
        assert!(format!("{err:#}").starts_with(&format!("reading {}", missing.display())), "{err:#}");
    }

    #[test]
    fn config_debug_never_shows_the_admin_token() {
        let mut config = Config::new("d".into());
        config.admin_token = Some("s3cret-token".into());
        let text = format!("{config:?}");
        assert!(!text.contains("s3cret-token") && text.contains("<redacted>"), "{text}");
    }
}
