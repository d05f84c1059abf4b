//! `storesync-agent status`: the journal, sync and drop-folder status, read from disk (the agent need not run).

use std::process::ExitCode;

use storesync_agent::config::Config;
use storesync_agent::inbox;
use storesync_agent::journal::{self, DB_FILE};

/// Prints the status, as JSON with `json`, else for a person.
pub(super) fn status(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let (file, _) = journal::open_read_only(&config.data_dir.join(DB_FILE))?;
    let s = journal::journal_status(&file)?;
    let inbox = config.inbox.enabled.then(|| inbox::from_disk(&config.inbox.dir));
    if json {
        let mut v = serde_json::to_value(&s)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("inbox".into(), serde_json::json!(inbox));
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("store {} / till {}", s.store_id, s.till_id);
    println!("journal: {} events, last seq {}", s.journal_len, s.last_seq);
    if s.unsynced == 0 {
        println!("sync: everything acknowledged by the hub");
    } else {
        println!("sync: {} events waiting to send, oldest {} s old — all saved", s.unsynced, s.oldest_unsynced_age_s);
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
    Ok(ExitCode::SUCCESS)
}
