//! `storesync-agent verify-journal`: recompute the whole hash chain. Exit 2 names the first bad seq; exit 3 says
//! an append-only trigger is missing.

use std::process::ExitCode;

use storesync_agent::config::Config;
use storesync_agent::journal::{self, DB_FILE};

pub(super) fn verify_journal(config: &Config) -> anyhow::Result<ExitCode> {
    let (file, _) = journal::open_read_only(&config.data_dir.join(DB_FILE))?;
    match journal::verify_chain(&file) {
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
