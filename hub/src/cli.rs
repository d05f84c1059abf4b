//! `storesync-hub`'s command line: the verbs and their flags (`serve`'s own are [`storesync_hub::config::ServeArgs`]),
//! and the one-shot verbs that do their work and exit: `enroll-code`, `revoke`, `release keygen|sign`.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use storesync_hub::config::{DEFAULT_DATA_DIR, DatabaseArgs, ServeArgs};
use storesync_hub::storage::postgres::PgSettings;
use storesync_hub::storage::{Storage, TillId};
use storesync_hub::{api, release, secrets};

#[derive(Debug, Parser)]
#[command(name = "storesync-hub", version, about = "storesync head-office hub")]
pub(crate) struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "STORESYNC_HUB_LOG_FORMAT")]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
pub(crate) enum ReleaseCommand {
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

/// `enroll-code`: stores a one-time code for the till and prints it alone on stdout.
pub(crate) fn enroll_code(
    store: String,
    till: String,
    ttl: &str,
    data_dir: Option<PathBuf>,
    database: DatabaseArgs,
) -> anyhow::Result<()> {
    let ttl_s =
        secrets::parse_ttl(ttl).with_context(|| format!("invalid --ttl {ttl:?}; use e.g. 90s, 30m, 24h, 7d"))?;
    let till = check_ids(store, till)?;
    let storage = open_for_cli(data_dir, database)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let code = api::issue_enrollment(storage.as_ref(), &till, ttl_s, now).context("storing the enrolment code")?;
    eprintln!("enrolment code for store {} till {}, valid until {}:", code.store, code.till, code.expires_at);
    println!("{}", code.code);
    Ok(())
}

/// `revoke`: the till's credential stops working now.
pub(crate) fn revoke(
    store: String,
    till: String,
    data_dir: Option<PathBuf>,
    database: DatabaseArgs,
) -> anyhow::Result<()> {
    let till = check_ids(store, till)?;
    let storage = open_for_cli(data_dir, database)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if !storage.revoke(&till, now).context("revoking")? {
        bail!("no till {} in store {}", till.till, till.store);
    }
    eprintln!("revoked store {} till {}", till.store, till.till);
    Ok(())
}

/// `release keygen` and `release sign`.
pub(crate) fn release(cmd: ReleaseCommand) -> anyhow::Result<()> {
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

/// A CLI verb's storage: it needs a connection or two, not a pool.
fn open_for_cli(data_dir: Option<PathBuf>, database: DatabaseArgs) -> anyhow::Result<std::sync::Arc<dyn Storage>> {
    let pg = database.settings(None, None)?.map(|s| PgSettings { pool_size: 2, ..s });
    storesync_hub::open_backend(&data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()), pg.as_ref())
}
