//! Where the agent's logs go: stderr, or daily files in the data dir for the Windows service.

use std::path::Path;

use anyhow::Context;
use storesync_agent::config::LogFormat;

/// Log files kept in `<data-dir>/logs` when running as a Windows service (one a day).
const SERVICE_LOG_FILES: usize = 14;

/// Logs to stderr, or, with `log_dir` (a Windows service has no stderr anyone reads; systemd's journal takes the
/// Linux service's stderr), to a daily file in it, keeping the last [`SERVICE_LOG_FILES`].
pub(crate) fn init(format: LogFormat, log_dir: Option<&Path>) -> anyhow::Result<()> {
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
