//! `storesync-agent export`: the journal on stdout.

use std::io::Write;
use std::process::ExitCode;

use storesync_agent::config::Config;
use storesync_agent::journal::{self, DB_FILE};

// What `export --format` takes (a plain comment: clap would show a doc comment in the help).
#[derive(Clone, Copy, clap::ValueEnum)]
pub(super) enum ExportFormat {
    Jsonl,
}

/// Writes every event, one JSON object a line, in journal order.
pub(super) fn export(config: &Config, format: ExportFormat) -> anyhow::Result<ExitCode> {
    let ExportFormat::Jsonl = format;
    let (file, _) = journal::open_read_only(&config.data_dir.join(DB_FILE))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut after = 0;
    loop {
        let page = journal::journal_page(&file, after, 1000)?;
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
