//! The `storesync-agent` binary: parse the command line, set up logging, and call into the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use storesync_agent::config::{self, Config, LogFormat, Mode, Overrides, Paths};
use storesync_agent::journal::{self, DB_FILE};
use storesync_agent::update;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "storesync-agent",
    version = storesync_agent::update::VERSION,
    about = "storesync store agent: the POS journal, offline stock and prices, sync to the hub"
)]
struct Cli {
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

#[derive(Subcommand, Clone, Copy)]
enum ServiceAction {
    /// Register the service (automatic start, restart on failure) to run this executable.
    Install,
    /// Stop the service if it runs, and remove it. The data dir is kept.
    Uninstall,
    /// Start the installed service.
    Start,
    /// Stop the service: it drains in-flight requests and commits, as on ctrl-c.
    Stop,
    /// The service's entry point, called by the service control manager.
    Run,
    /// Stop the service, wait until it has stopped, and start it again.
    Restart {
        /// Do not ask it to stop: it is stopping by itself (a self-update spawns this before it stops).
        #[arg(long)]
        after_stop: bool,
    },
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Jsonl,
}

/// Log files kept in `<data-dir>/logs` when running as a Windows service (one a day).
const SERVICE_LOG_FILES: usize = 14;

/// Logs to stderr, or, with `log_dir` (a Windows service has no stderr anyone reads; systemd's journal takes the
/// Linux service's stderr), to a daily file in it, keeping the last [`SERVICE_LOG_FILES`].
fn init_tracing(format: LogFormat, log_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STORESYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // `log_internal_errors(false)`: when the log cannot be written (its disk is full), tracing-subscriber would
    // otherwise report that with `eprintln!`, which panics on the same full disk, in whatever thread was logging
    // (the journal writer, found by the disk-full fault test). A lost log line must never take a writer down.
    let builder = tracing_subscriber::fmt().with_env_filter(filter).log_internal_errors(false);
    match log_dir {
        None => {
            let builder = builder.with_writer(std::io::stderr);
            match format {
                LogFormat::Json => builder.json().init(),
                LogFormat::Human => builder.init(),
            }
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating the log dir {}", dir.display()))?;
            let files = tracing_appender::rolling::RollingFileAppender::builder()
                .rotation(tracing_appender::rolling::Rotation::DAILY)
                .filename_prefix("agent")
                .filename_suffix("log")
                .max_log_files(SERVICE_LOG_FILES)
                .build(dir)
                .with_context(|| format!("opening a log file in {}", dir.display()))?;
            let builder = builder.with_writer(files).with_ansi(false);
            match format {
                LogFormat::Json => builder.json().init(),
                LogFormat::Human => builder.init(),
            }
        }
    }
    Ok(())
}

/// The `sync-now` progress bar: events sent, with rate and ETA, on stderr. indicatif draws nothing when stderr is
/// not a terminal, so scripts and tests see only the final lines.
fn sync_progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(
        "syncing {bar:40.cyan/blue} {pos}/{len} events sent ({rate}, ETA {eta})",
    )
    .map(|s| {
        s.with_key("rate", |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0} events/s", state.per_sec());
        })
    })
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// Polls the agent's `GET /v1/status` every 250 ms and moves `bar`: its length is `unsynced` at the first answer,
/// its position how many fewer are unsynced since. A failed poll is skipped. Runs until it is dropped.
async fn show_sync_progress(
    client: &reqwest::Client,
    listen: std::net::SocketAddr,
    bar: &indicatif::ProgressBar,
) -> std::convert::Infallible {
    let url = format!("http://{listen}/v1/status");
    let mut start = None;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let answer = client.get(&url).timeout(std::time::Duration::from_secs(2)).send().await;
        let status = match answer {
            Ok(resp) => resp.json::<serde_json::Value>().await.ok(),
            Err(_) => None,
        };
        let Some(unsynced) = status.and_then(|v| v["unsynced"].as_u64()) else { continue };
        let start = *start.get_or_insert_with(|| {
            bar.set_length(unsynced);
            bar.reset_eta();
            unsynced
        });
        bar.set_position(start.saturating_sub(unsynced));
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("storesync-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
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
        cli.data_dir.clone().or_else(|| file.data_dir.clone()).unwrap_or_else(|| Paths::of(mode).data_dir).join("logs")
    });
    init_tracing(log_format, log_dir.as_deref())?;
    let mut overrides = Overrides { data_dir: cli.data_dir, inbox_dir: cli.inbox_dir, ..Overrides::default() };
    match cli.command {
        Command::Run { listen, store_id, till_id } => {
            overrides.listen = listen;
            overrides.store_id = store_id;
            overrides.till_id = till_id;
            let config = Config::resolve(file, overrides, mode)?;
            // A newer verified binary may be staged, or this start may be a new version's trial (update.rs).
            let boot = update::boot(&config.data_dir);
            if let update::Boot::Exec(path) = &boot {
                update::restart_into(path)?;
                return Ok(ExitCode::SUCCESS);
            }
            let data_dir = config.data_dir.clone();
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            let ran = rt.block_on(async {
                let shutdown = CancellationToken::new();
                let trigger = shutdown.clone();
                tokio::spawn(async move {
                    storesync_agent::shutdown_signal().await;
                    trigger.cancel();
                });
                storesync_agent::run_until(config, shutdown, boot.clone()).await
            });
            drop(rt);
            let exit = match ran {
                Ok(exit) => exit,
                // A new version that cannot even start fails its health check: back to the previous binary.
                Err(e) if boot == update::Boot::Trial => match update::finish_trial(&data_dir, Err(format!("{e:#}"))) {
                    Ok(Some(previous)) => storesync_agent::Exit::Exec(previous),
                    _ => return Err(e),
                },
                Err(e) => return Err(e),
            };
            if let storesync_agent::Exit::Exec(path) = exit {
                update::restart_into(&path)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Enroll { hub, code, ca_cert } => {
            let config = Config::resolve(file, overrides, mode)?;
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            let cred =
                rt.block_on(storesync_agent::credential::enroll(&config.data_dir, &hub, &code, ca_cert.as_deref()))?;
            println!("enrolled as store {} till {} with hub {}", cred.store_id, cred.till_id, cred.hub_url);
            Ok(ExitCode::SUCCESS)
        }
        Command::SyncNow { listen, wait_s } => {
            overrides.listen = listen;
            let config = Config::resolve(file, overrides, mode)?;
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            let client = reqwest::Client::new();
            let bar = sync_progress_bar();
            let answer: anyhow::Result<serde_json::Value> = rt.block_on(async {
                let sync = async {
                    let url = format!("http://{}/v1/sync/now?wait_s={wait_s}", config.listen);
                    let resp = client
                        .post(&url)
                        .timeout(std::time::Duration::from_secs(wait_s + 30))
                        .send()
                        .await
                        .with_context(|| {
                            format!("reaching the running agent at {url} (is `storesync-agent run` up?)")
                        })?;
                    let status = resp.status();
                    let v: serde_json::Value = resp.json().await.context("reading the agent's answer")?;
                    if !status.is_success() {
                        anyhow::bail!(
                            "{}: {}",
                            v["error"].as_str().unwrap_or("error"),
                            v["detail"].as_str().unwrap_or("")
                        );
                    }
                    Ok(v)
                };
                tokio::select! {
                    v = sync => v,
                    never = show_sync_progress(&client, config.listen, &bar) => match never {},
                }
            });
            bar.finish_and_clear();
            let v = answer?;
            println!("hub: {}  unsynced: {}  last sync: {}", v["hub"], v["unsynced"], v["last_sync_at"]);
            if let Some(e) = v["last_error"].as_str() {
                eprintln!("last error: {e}");
            }
            let ok = v["unsynced"].as_u64() == Some(0) && v["last_error"].is_null();
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Status { json } => {
            let config = Config::resolve(file, overrides, mode)?;
            let (conn, _) = journal::open_read_only(&config.data_dir.join(DB_FILE))?;
            let s = journal::journal_status(&conn)?;
            let inbox = config.inbox.enabled.then(|| storesync_agent::inbox::from_disk(&config.inbox.dir));
            if json {
                let mut v = serde_json::to_value(&s)?;
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("inbox".into(), serde_json::json!(inbox));
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("store {} / till {}", s.store_id, s.till_id);
                println!("journal: {} events, last seq {}", s.journal_len, s.last_seq);
                if s.unsynced == 0 {
                    println!("sync: everything acknowledged by the hub");
                } else {
                    println!(
                        "sync: {} events waiting to send, oldest {} s old — all saved",
                        s.unsynced, s.oldest_unsynced_age_s
                    );
                }
                match &inbox {
                    None => println!("inbox: off (inbox_enabled = false)"),
                    Some(i) => {
                        println!(
                            "inbox: {} files waiting ({} bytes) in {}; {} rejected files in rejected/",
                            i.backlog_files,
                            i.backlog_bytes,
                            i.dir.as_deref().unwrap_or(""),
                            i.rejected_files
                        );
                        if let Some(e) = &i.last_error {
                            let at = e.record.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
                            println!("inbox: last error: {}{at}: {}: {} [{}]", e.file, e.code, e.detail, e.at);
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::VerifyJournal => {
            let config = Config::resolve(file, overrides, mode)?;
            let (conn, _) = journal::open_read_only(&config.data_dir.join(DB_FILE))?;
            match journal::verify_chain(&conn) {
                Ok(v) => {
                    for t in &v.missing_triggers {
                        eprintln!("warning: append-only trigger {t} is missing: the journal database was altered");
                    }
                    println!("journal intact: {} events, head {}", v.events, v.head_hash);
                    Ok(if v.missing_triggers.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(3) })
                }
                Err(journal::VerifyError::Chain(e)) => {
                    eprintln!("journal broken at seq {}: {e}", e.seq());
                    Ok(ExitCode::from(2))
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Paths => {
            let paths = Paths::of(mode);
            let config = Config::resolve(file, overrides, mode)?;
            let mode = match mode {
                Mode::User => "user",
                Mode::Service => "service",
            };
            println!("mode: {mode}");
            match (&cli.config, &paths.config_file) {
                (Some(p), _) | (None, Some(p)) => println!("config: {}", p.display()),
                (None, None) => println!("config: (none: no home directory)"),
            }
            println!("data dir: {}", config.data_dir.display());
            println!("journal: {}", config.data_dir.join(DB_FILE).display());
            println!("inbox: {}", config.inbox.dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Service { action } => {
            // Only `run` needs the configuration: a broken agent.toml must not stand in the way of an uninstall.
            match action {
                ServiceAction::Install => storesync_agent::service::install(cli.config.as_deref())?,
                ServiceAction::Uninstall => storesync_agent::service::uninstall()?,
                ServiceAction::Start => storesync_agent::service::start()?,
                ServiceAction::Stop => storesync_agent::service::stop()?,
                ServiceAction::Restart { after_stop } => storesync_agent::service::restart(after_stop)?,
                ServiceAction::Run => {
                    storesync_agent::service::run_as_service(Config::resolve(file, overrides, mode)?)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { format: ExportFormat::Jsonl } => {
            let config = Config::resolve(file, overrides, mode)?;
            let (conn, _) = journal::open_read_only(&config.data_dir.join(DB_FILE))?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut after = 0;
            loop {
                let page = journal::journal_page(&conn, after, 1000)?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for ev in &page {
                    serde_json::to_writer(&mut out, ev)?;
                    out.write_all(b"\n")?;
                }
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
