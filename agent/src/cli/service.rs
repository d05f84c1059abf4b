//! `storesync-agent service …`: manage the Windows service, and the entry point its manager starts.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use storesync_agent::config::Config;
use storesync_agent::service;

#[derive(Subcommand, Clone, Copy)]
pub(super) enum ServiceAction {
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

/// Runs `action`. `config_file` is the `--config` given (`install` has the service read it); `resolve` resolves
/// the configuration, which only `run` needs.
pub(super) fn service(
    action: ServiceAction,
    config_file: Option<&Path>,
    resolve: impl FnOnce() -> anyhow::Result<Config>,
) -> anyhow::Result<ExitCode> {
    match action {
        ServiceAction::Install => service::install(config_file)?,
        ServiceAction::Uninstall => service::uninstall()?,
        ServiceAction::Start => service::start()?,
        ServiceAction::Stop => service::stop()?,
        ServiceAction::Restart { after_stop } => service::restart(after_stop)?,
        ServiceAction::Run => service::run_as_service(resolve()?)?,
    }
    Ok(ExitCode::SUCCESS)
}
