//! `storesync-hub`: parses the command line, sets up logging, resolves the configuration ([`storesync_hub::config`])
//! and calls the library: [`storesync_hub::run`] until a signal, or a one-shot verb ([`cli`]).

mod cli;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use cli::{Cli, Command, LogFormat};
use tokio_util::sync::CancellationToken;

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
        Command::Serve(args) => {
            let config = storesync_hub::config::load(args)?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async move {
                let shutdown = CancellationToken::new();
                tokio::spawn(wait_for_signal(shutdown.clone()));
                storesync_hub::run(config, shutdown).await
            })
        }
        Command::EnrollCode { store, till, ttl, data_dir, database } => {
            cli::enroll_code(store, till, &ttl, data_dir, database)
        }
        Command::Release(cmd) => cli::release(cmd),
        Command::Revoke { store, till, data_dir, database } => cli::revoke(store, till, data_dir, database),
    }
}

/// Cancels `shutdown` on ctrl-c or SIGTERM: the hub's one way in to a graceful stop.
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
