//! `storesync-hub`: parses the command line, sets up logging, and calls the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use storesync_hub::storage::postgres::{DEFAULT_POOL_SIZE, PgSettings};
use storesync_hub::storage::{Storage, TillId};
use storesync_hub::{Config, SystemClock, TlsFiles, api, secrets};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "storesync-hub", version, about = "storesync head-office hub")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "STORESYNC_HUB_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the hub API.
    Serve(ServeArgs),
    /// Issue a one-time enrolment code for a till; prints the code alone as the last stdout line.
    EnrollCode {
        #[arg(long)]
        store: String,
        #[arg(long)]
        till: String,
        /// How long the code stays valid: 90s, 30m, 24h, 7d.
        #[arg(long, default_value = "24h")]
        ttl: String,
        #[arg(long, env = "STORESYNC_HUB_DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Publish agent releases: make a signing key, build and sign a release.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Revoke a till's credential now.
    Revoke {
        #[arg(long)]
        store: String,
        #[arg(long)]
        till: String,
        #[arg(long, env = "STORESYNC_HUB_DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ReleaseCommand {
    /// Write a new signing key (DIR/release.key, mode 0600) and its public key (DIR/release.pub); prints the
    /// public key, the form agents' `update_keys` take. Never overwrites.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Build DIR/storesync-agent-V-TRIPLE.tar.gz (signed with zipsign), DIR/manifest.json and DIR/manifest.sig.
    Sign {
        /// The signing key file written by `release keygen`.
        #[arg(long)]
        key: PathBuf,
        /// The agent binary to ship.
        #[arg(long)]
        binary: PathBuf,
        /// Its semantic version.
        #[arg(long)]
        version: String,
        /// The Rust target triple it runs on.
        #[arg(long)]
        target: String,
        /// Agents older than this must not install it.
        #[arg(long, default_value = "0.0.0")]
        min_version: String,
        /// How long the manifest stays valid: 90s, 30m, 24h, 7d.
        #[arg(long, default_value = "30d")]
        expires_in: String,
        #[arg(long)]
        out: PathBuf,
    },
}

/// Where the hub's state is when it is not `<data-dir>/hub.db` (docs/SCALING.md).
#[derive(Debug, clap::Args)]
struct DatabaseArgs {
    /// A PostgreSQL database instead of <data-dir>/hub.db: postgres://USER[:PASSWORD]@HOST[:PORT]/DB (give a URL
    /// with a password in the environment or the config file, not on the command line).
    #[arg(long, env = "STORESYNC_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Connections to PostgreSQL this process may hold [default: 16].
    #[arg(long, env = "STORESYNC_DATABASE_POOL_SIZE", value_parser = clap::value_parser!(u32).range(1..=1000))]
    database_pool_size: Option<u32>,
}

impl DatabaseArgs {
    /// The PostgreSQL settings from the flags, else from a config file's `database_url` and `database_pool_size`.
    fn settings(self, file_url: Option<String>, file_pool_size: Option<u32>) -> anyhow::Result<Option<PgSettings>> {
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

/// A CLI verb's storage: it needs a connection or two, not a pool.
fn open_for_cli(data_dir: Option<PathBuf>, database: DatabaseArgs) -> anyhow::Result<std::sync::Arc<dyn Storage>> {
    let pg = database.settings(None, None)?.map(|s| PgSettings { pool_size: 2, ..s });
    storesync_hub::open_backend(&data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()), pg.as_ref())
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// A TOML file with any of: listen, data_dir, tls_cert, tls_key, insecure_allow_plaintext, max_release_bytes,
    /// release_keys, stale_after_s, offline_after_s, alert_offline_after_s, forecast_window_s, max_inflight_syncs,
    /// max_queued_syncs, sync_queue_timeout_ms, database_url, database_pool_size, reservation_expiry.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "STORESYNC_HUB_LISTEN")]
    listen: Option<SocketAddr>,
    /// Where hub.db and admin.token live [default: ./storesync-hub-data].
    #[arg(long, env = "STORESYNC_HUB_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// PEM certificate chain for TLS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback address (only behind a TLS-terminating proxy).
    #[arg(long)]
    insecure_allow_plaintext: bool,
    /// Requests per second each till may make to the sync endpoints (sustained) [default: 100].
    #[arg(long, env = "STORESYNC_HUB_TILL_RATE", value_parser = clap::value_parser!(u32).range(1..))]
    till_rate: Option<u32>,
    /// Requests a till may make at once above that rate [default: 200].
    #[arg(long, env = "STORESYNC_HUB_TILL_BURST", value_parser = clap::value_parser!(u32).range(1..))]
    till_burst: Option<u32>,
    /// The largest agent release upload, in bytes [default: 536870912, 512 MiB].
    #[arg(long, env = "STORESYNC_HUB_MAX_RELEASE_BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    max_release_bytes: Option<u64>,
    /// Fleet view: no contact for this long makes a store stale [default: 120].
    #[arg(long, env = "STORESYNC_HUB_STALE_AFTER_S")]
    stale_after_s: Option<u64>,
    /// Fleet view: no contact for this long makes a store offline [default: 600].
    #[arg(long, env = "STORESYNC_HUB_OFFLINE_AFTER_S")]
    offline_after_s: Option<u64>,
    /// Fleet view: offline this long raises an alert [default: 1800].
    #[arg(long, env = "STORESYNC_HUB_ALERT_OFFLINE_AFTER_S")]
    alert_offline_after_s: Option<u64>,
    /// Fleet view: how far back the drain forecast looks, in seconds [default: 300].
    #[arg(long, env = "STORESYNC_HUB_FORECAST_WINDOW_S")]
    forecast_window_s: Option<u64>,
    /// Event delivery: the longest wait between two attempts, in seconds [default: 600].
    #[arg(long, env = "STORESYNC_HUB_DELIVERY_BACKOFF_MAX_S", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    delivery_backoff_max_s: Option<u64>,
    #[command(flatten)]
    database: DatabaseArgs,
    /// Backpressure: sync requests (uploads, document sync) handled at once [default: 32].
    #[arg(long, env = "STORESYNC_HUB_MAX_INFLIGHT_SYNCS", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_inflight_syncs: Option<u64>,
    /// Backpressure: sync requests waiting beyond those; more are answered 429 at once [default: 256].
    #[arg(long, env = "STORESYNC_HUB_MAX_QUEUED_SYNCS", value_parser = clap::value_parser!(u64).range(0..=900_000))]
    max_queued_syncs: Option<u64>,
    /// Backpressure: the longest wait of a queued sync request before it is answered 429, in ms [default: 5000].
    #[arg(long, env = "STORESYNC_HUB_SYNC_QUEUE_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(0..=600_000))]
    sync_queue_timeout_ms: Option<u64>,
    /// Reservations: what happens to one not picked by its pickup_by — `release` its units (expired), or
    /// `reroute` it to the next store of its list with a new pickup time [default: release].
    #[arg(long, env = "STORESYNC_HUB_RESERVATION_EXPIRY", value_enum)]
    reservation_expiry: Option<storesync_hub::reservations::ExpiryPolicy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    insecure_allow_plaintext: bool,
    max_release_bytes: Option<u64>,
    /// Base64 publisher public keys the hub checks release uploads against (empty: stores what it is given).
    #[serde(default)]
    release_keys: Vec<String>,
    stale_after_s: Option<u64>,
    offline_after_s: Option<u64>,
    alert_offline_after_s: Option<u64>,
    forecast_window_s: Option<u64>,
    delivery_backoff_max_s: Option<u64>,
    database_url: Option<String>,
    database_pool_size: Option<u32>,
    max_inflight_syncs: Option<u64>,
    max_queued_syncs: Option<u64>,
    sync_queue_timeout_ms: Option<u64>,
    reservation_expiry: Option<storesync_hub::reservations::ExpiryPolicy>,
}

const DEFAULT_DATA_DIR: &str = "storesync-hub-data";

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("storesync-hub: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("STORESYNC_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // `log_internal_errors(false)`: when the log cannot be written (its disk is full), tracing-subscriber would
    // otherwise report that with `eprintln!`, which panics on the same full disk, in whatever thread was logging
    // (the journal writer, found by the disk-full fault test). A lost log line must never take a writer down.
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::EnrollCode { store, till, ttl, data_dir, database } => {
            let ttl_s = secrets::parse_ttl(&ttl)
                .with_context(|| format!("invalid --ttl {ttl:?}; use e.g. 90s, 30m, 24h, 7d"))?;
            let till = check_ids(store, till)?;
            let storage = open_for_cli(data_dir, database)?;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let code =
                api::issue_enrollment(storage.as_ref(), &till, ttl_s, now).context("storing the enrolment code")?;
            eprintln!("enrolment code for store {} till {}, valid until {}:", code.store, code.till, code.expires_at);
            println!("{}", code.code);
            Ok(())
        }
        Command::Release(cmd) => release(cmd),
        Command::Revoke { store, till, data_dir, database } => {
            let till = check_ids(store, till)?;
            let storage = open_for_cli(data_dir, database)?;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            if !storage.revoke(&till, now).context("revoking")? {
                bail!("no till {} in store {}", till.till, till.store);
            }
            eprintln!("revoked store {} till {}", till.store, till.till);
            Ok(())
        }
    }
}

fn release(cmd: ReleaseCommand) -> anyhow::Result<()> {
    use storesync_hub::release;
    match cmd {
        ReleaseCommand::Keygen { out } => {
            let files = release::keygen(&out)?;
            eprintln!("signing key: {} (keep it secret, off the hub)", files.key.display());
            eprintln!("public key:  {} (agents' update_keys)", files.public.display());
            println!("{}", files.public_b64);
            Ok(())
        }
        ReleaseCommand::Sign { key, binary, version, target, min_version, expires_in, out } => {
            let ttl_s = secrets::parse_ttl(&expires_in)
                .with_context(|| format!("invalid --expires-in {expires_in:?}; use e.g. 90s, 30m, 24h, 30d"))?;
            storesync_shared::release::version(&min_version).map_err(|e| anyhow::anyhow!("--min-version: {e}"))?;
            storesync_shared::release::version(&version).map_err(|e| anyhow::anyhow!("--version: {e}"))?;
            let key = release::read_signing_key(&key)?;
            let expires_at = time::OffsetDateTime::now_utc() + time::Duration::seconds(ttl_s);
            let spec = release::ReleaseSpec {
                binary: &binary,
                version: &version,
                target: &target,
                min_version: &min_version,
                expires_at,
            };
            let files = release::write_release(&spec, &key, &out)?;
            eprintln!("release {version} for {target}, manifest valid until {expires_at}:");
            for p in [&files.archive, &files.manifest, &files.signature] {
                println!("{}", p.display());
            }
            Ok(())
        }
    }
}

fn check_ids(store: String, till: String) -> anyhow::Result<TillId> {
    for id in [&store, &till] {
        if !secrets::valid_id(id) {
            bail!("invalid id {id:?}: use 1 to 64 characters of A-Z a-z 0-9 . _ -");
        }
    }
    Ok(TillId { store, till })
}

fn load_file_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(p) => load_file_config(p)?,
        None => FileConfig::default(),
    };
    let data_dir = args.data_dir.or(file.data_dir).unwrap_or_else(|| DEFAULT_DATA_DIR.into());
    let mut config = Config::new(data_dir);
    config.database = args.database.settings(file.database_url, file.database_pool_size)?;
    config.delivery.owner = Some(storesync_hub::outbox::instance_id(&config.data_dir)?);
    config.clock = std::sync::Arc::new(SystemClock);
    if let Some(listen) = args.listen.or(file.listen) {
        config.listen = listen;
    }
    config.tls = match (args.tls_cert.or(file.tls_cert), args.tls_key.or(file.tls_key)) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        _ => bail!("give both a TLS certificate and a key, or neither"),
    };
    config.insecure_allow_plaintext = args.insecure_allow_plaintext || file.insecure_allow_plaintext;
    config.admin_token = std::env::var("STORESYNC_ADMIN_TOKEN").ok().filter(|t| !t.trim().is_empty());
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
        config.delivery.backoff_max = std::time::Duration::from_secs(s);
    }
    let bp = &mut config.backpressure;
    if let Some(n) = args.max_inflight_syncs.or(file.max_inflight_syncs) {
        bp.max_inflight = usize::try_from(n).context("max_inflight_syncs is too large")?;
    }
    if let Some(n) = args.max_queued_syncs.or(file.max_queued_syncs) {
        bp.max_queued = usize::try_from(n).context("max_queued_syncs is too large")?;
    }
    if let Some(ms) = args.sync_queue_timeout_ms.or(file.sync_queue_timeout_ms) {
        bp.queue_timeout = std::time::Duration::from_millis(ms);
    }
    bp.check().map_err(|e| anyhow::anyhow!("backpressure: {e}"))?;
    if let Some(p) = args.reservation_expiry.or(file.reservation_expiry) {
        config.planner.on_expiry = p;
    }

    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(shutdown.clone()));
        storesync_hub::run(config, shutdown).await
    })
}

/// Cancels `shutdown` on ctrl-c or SIGTERM.
async fn wait_for_signal(shutdown: CancellationToken) {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
        () = shutdown.cancelled() => {}
    }
    shutdown.cancel();
}
