//! The `storesync-agent` binary: parse the command line, set up logging, and call into [`cli`].

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match start(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("storesync-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(args: cli::Cli) -> anyhow::Result<ExitCode> {
    let setup = cli::Setup::read(&args)?;
    cli::logging::init(setup.log_format, setup.log_dir.as_deref())?;
    cli::dispatch(args, setup)
}
