//! The agent's command line: the clap types, and which verb runs for which subcommand. Each verb is its own file;
//! this one only reads the flags and hands each verb what it needs.

mod enroll;
mod export;
pub(crate) mod logging;
mod paths;
mod run;
mod service;
mod status;
mod sync_now;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use storesync_agent::config::{self, Config, FileConfig, LogFormat, Mode, Overrides, Paths};

use self::export::ExportFormat;
use self::service::ServiceAction;

#[derive(Parser)]
#[command(
    name = "storesync-agent",
    version = storesync_agent::version::VERSION,
    about = "storesync store agent: the POS journal, offline stock and prices, sync to the hub"
)]
pub(crate) struct Cli {
    /// The agent.toml to read (default: agent.toml in the platform config dir).
    #[arg(long, global = true, env = "STORESYNC_CONFIG")]
    config: Option<PathBuf>,
    /// Where the journal and credentials live.
    #[arg(long, global = true, env = "STORESYNC_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, env = "STORESYNC_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// The drop folder POS files are read from (default: `inbox` in the data dir; see docs/INBOX.md).
    #[arg(long, global = true, env = "STORESYNC_INBOX_DIR")]
    inbox_dir: Option<PathBuf>,
    /// Use the service's system directories instead of the user's (the systemd unit and the Windows service set
    /// this; pass it to `status`, `verify-journal` or `enroll` to act on the service's agent).
    #[arg(long, global = true, env = "STORESYNC_SERVICE")]
    service: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: the POS API, and sync with the hub once enrolled.
    Run {
        /// The POS API address (loopback only).
        #[arg(long, env = "STORESYNC_LISTEN")]
        listen: Option<String>,
        /// The store this till belongs to (until it is enrolled).
        #[arg(long, env = "STORESYNC_STORE_ID", requires = "till_id")]
        store_id: Option<String>,
        /// This till's id (until it is enrolled).
        #[arg(long, env = "STORESYNC_TILL_ID", requires = "store_id")]
        till_id: Option<String>,
    },
    /// Exchange a one-time enrolment code for this till's credential.
    Enroll {
        /// The hub's URL, e.g. https://hub.example.com:8080.
        #[arg(long, env = "STORESYNC_HUB_URL")]
        hub: String,
        /// The one-time code from `storesync-hub enroll-code`.
        #[arg(long)]
        code: String,
        /// A CA certificate (PEM) the hub's certificate chains to, when it is not publicly trusted.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
    },
    /// Sync with the hub now, through the running agent, and wait for the backlog to drain.
    SyncNow {
        /// The running agent's POS API address.
        #[arg(long, env = "STORESYNC_LISTEN")]
        listen: Option<String>,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 300)]
        wait_s: u64,
    },
    /// Show the journal and sync status.
    Status {
        /// Print JSON instead of the human view.
        #[arg(long)]
        json: bool,
    },
    /// Recompute the whole hash chain; exit non-zero naming the first bad seq.
    VerifyJournal,
    /// Print the config file and data dir this agent uses (`--service`: the service's).
    Paths,
    /// Manage the Windows service (Windows only; on Linux the systemd unit in installers/linux runs `run`).
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// Write the journal to stdout.
    Export {
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
    },
}

/// What every verb starts from, read before logging is set up: the mode, `agent.toml`, and where logs go.
pub(crate) struct Setup {
    mode: Mode,
    file: FileConfig,
    pub(crate) log_format: LogFormat,
    /// The Windows service logs to files here; everything else to stderr.
    pub(crate) log_dir: Option<PathBuf>,
}

impl Setup {
    /// Picks the mode (`--service`, or `service run`), reads `agent.toml` and resolves the log format.
    pub(crate) fn read(cli: &Cli) -> anyhow::Result<Setup> {
        let service_run = matches!(cli.command, Command::Service { action: ServiceAction::Run });
        let mode = if cli.service || service_run { Mode::Service } else { Mode::User };
        let file = config::load_file(cli.config.as_deref(), mode)?;
        let log_format = match (cli.log_format, file.log_format.as_deref()) {
            (Some(f), _) => f,
            (None, Some("json")) => LogFormat::Json,
            (None, Some("human") | None) => LogFormat::Human,
            (None, Some(other)) => {
                anyhow::bail!("log_format {other:?} in agent.toml must be \"human\" or \"json\"")
            }
        };
        let log_dir = (service_run && cfg!(windows)).then(|| {
            cli.data_dir
                .clone()
                .or_else(|| file.data_dir.clone())
                .unwrap_or_else(|| Paths::of(mode).data_dir)
                .join("logs")
        });
        Ok(Setup { mode, file, log_format, log_dir })
    }
}

/// Runs the verb `cli` names.
pub(crate) fn dispatch(cli: Cli, setup: Setup) -> anyhow::Result<ExitCode> {
    let Setup { mode, file, .. } = setup;
    let mut overrides = Overrides { data_dir: cli.data_dir, inbox_dir: cli.inbox_dir, ..Overrides::default() };
    match cli.command {
        Command::Run { listen, store_id, till_id } => {
            overrides.listen = listen;
            overrides.store_id = store_id;
            overrides.till_id = till_id;
            run::run(Config::resolve(file, overrides, mode)?)
        }
        Command::Enroll { hub, code, ca_cert } => {
            enroll::enroll(&Config::resolve(file, overrides, mode)?, &hub, &code, ca_cert.as_deref())
        }
        Command::SyncNow { listen, wait_s } => {
            overrides.listen = listen;
            sync_now::sync_now(&Config::resolve(file, overrides, mode)?, wait_s)
        }
        Command::Status { json } => status::status(&Config::resolve(file, overrides, mode)?, json),
        Command::VerifyJournal => verify::verify_journal(&Config::resolve(file, overrides, mode)?),
        Command::Paths => paths::paths(mode, cli.config.as_deref(), &Config::resolve(file, overrides, mode)?),
        Command::Service { action } => {
            // Only `run` needs the configuration: a broken agent.toml must not stand in the way of an uninstall.
            service::service(action, cli.config.as_deref(), || Config::resolve(file, overrides, mode))
        }
        Command::Export { format } => export::export(&Config::resolve(file, overrides, mode)?, format),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
