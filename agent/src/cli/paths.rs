//! `storesync-agent paths`: the config file, data dir, journal and inbox this agent uses.

use std::path::Path;
use std::process::ExitCode;

use storesync_agent::config::{Config, Mode, Paths};
use storesync_agent::journal::DB_FILE;

/// `explicit` is the `--config` given, if any; `config` what the agent resolved from it.
pub(super) fn paths(mode: Mode, explicit: Option<&Path>, config: &Config) -> anyhow::Result<ExitCode> {
    let paths = Paths::of(mode);
    let mode = match mode {
        Mode::User => "user",
        Mode::Service => "service",
    };
    println!("mode: {mode}");
    match explicit.or(paths.config_file.as_deref()) {
        Some(p) => println!("config: {}", p.display()),
        None => println!("config: (none: no home directory)"),
    }
    println!("data dir: {}", config.data_dir.display());
    println!("journal: {}", config.data_dir.join(DB_FILE).display());
    println!("inbox: {}", config.inbox.dir.display());
    Ok(ExitCode::SUCCESS)
}
