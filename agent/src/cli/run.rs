//! `storesync-agent run`: the agent in the foreground, until ctrl-c or SIGTERM, restarting into a self-update.

use std::process::ExitCode;

use storesync_agent::boot::{self, Signals};
use storesync_agent::config::Config;
use storesync_agent::{Exit, update};
use tokio_util::sync::CancellationToken;

/// Runs the agent (boot decision and trial included, [`boot::run`]), then `exec`s the binary a self-update (or
/// its rollback) asks for.
pub(super) fn run(config: Config) -> anyhow::Result<ExitCode> {
    if let Exit::Exec(path) = boot::run(config, CancellationToken::new(), Signals::Stop)? {
        update::restart_into(&path)?;
    }
    Ok(ExitCode::SUCCESS)
}
