//! Boot, trial and run: the one way the `storesync-agent` binary runs the agent, shared by a console (or systemd)
//! run and the Windows service.
//!
//! First the self-update's boot decision ([`update::boot`]): a newer verified binary may be staged (answer
//! [`Exit::Exec`] before anything runs), a trial that died before confirming is rolled back, or this start is a
//! new version's trial. Then [`crate::run_until`] on a fresh tokio runtime. A trial that cannot even start fails
//! its health check here and answers the previous binary. What to do with an [`Exit::Exec`] stays with the caller:
//! a console run `exec`s it ([`update::restart_into`]), the service swaps it in and has itself restarted.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::Exit;
use crate::config::Config;
use crate::signal;
use crate::update::{self, Boot};

/// Whether ctrl-c and SIGTERM stop the agent, besides `shutdown`'s owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signals {
    /// They do ([`signal::stop_on_signals`]): a console or systemd run.
    Stop,
    /// Only `shutdown`'s owner stops it: the Windows service, whose control handler cancels the token.
    Ignore,
}

/// Runs the agent from its boot decision to its end: until `shutdown` is cancelled (or a signal, per `signals`),
/// or a self-update asks for a restart ([`Exit::Exec`]).
pub fn run(config: Config, shutdown: CancellationToken, signals: Signals) -> anyhow::Result<Exit> {
    let data_dir = config.data_dir.clone();
    let boot = update::boot(&data_dir);
    if let Boot::Exec(path) = boot {
        return Ok(Exit::Exec(path));
    }
    let ran = tokio::runtime::Runtime::new().context("starting the tokio runtime").and_then(|rt| {
        rt.block_on(async {
            if signals == Signals::Stop {
                signal::stop_on_signals(shutdown.clone());
            }
            crate::run_until(config, shutdown, boot.clone()).await
        })
    });
    match ran {
        // A new version that cannot even start fails its health check: back to the previous binary.
        Err(e) if boot == Boot::Trial => match update::finish_trial(&data_dir, Err(format!("{e:#}"))) {
            Ok(Some(previous)) => Ok(Exit::Exec(previous)),
            _ => Err(e),
        },
        other => other,
    }
}
