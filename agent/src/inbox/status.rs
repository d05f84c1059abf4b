//! What the status shows of the inbox: the backlog, what was done since the agent started, and the parse errors.
//!
//! The running agent keeps an [`InboxStats`] that the watcher updates and `GET /v1/status` reads. The same
//! backlog, rejected-file count and last error can also be read from the folder alone ([`from_disk`]), which is
//! what `storesync-agent status` does: it works whether or not the agent runs.

use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;
use serde_json::Value;

use super::files::{REJECTED, REPORT_SUFFIX, scan};

/// The last error the inbox met.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    /// When (UTC, RFC 3339).
    pub at: String,
    /// The file's name (in the inbox, or in `rejected/` once moved there).
    pub file: String,
    /// Where in the file (`line 3, record TX-12`), when it is about one record.
    pub record: Option<String>,
    pub code: String,
    pub detail: String,
}

/// The file being read now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Processing {
    pub file: String,
    /// Records journaled (or found journaled already) so far.
    pub records_done: u64,
}

/// The inbox's part of the status document (`"inbox"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InboxView {
    /// Whether the watcher runs.
    pub enabled: bool,
    pub dir: Option<String>,
    /// Files waiting in the inbox (taken ones included until they are moved out), and their bytes.
    pub backlog_files: u64,
    pub backlog_bytes: u64,
    pub processing: Option<Processing>,
    /// Since the agent started: files moved to `processed/` and to `rejected/`.
    pub files_processed: u64,
    pub files_rejected: u64,
    /// Since the agent started: records newly journaled, found journaled already (a file dropped again, a restart
    /// mid-file), and deliberately skipped (cancelled or training POSLog transactions, voided lines).
    pub records_journaled: u64,
    pub records_duplicate: u64,
    pub records_skipped: u64,
    /// Since the agent started: refused records plus files that could not be read at all.
    pub parse_errors: u64,
    /// Files in `rejected/` now (each with its `.error.json`), whenever they were rejected.
    pub rejected_files: u64,
    pub last_error: Option<LastError>,
}

/// The running watcher's figures, shared with the status endpoint.
#[derive(Debug, Default)]
pub struct InboxStats {
    view: Mutex<InboxView>,
}

impl InboxStats {
    /// A copy of the figures now.
    pub fn view(&self) -> InboxView {
        self.view.lock().map(|v| v.clone()).unwrap_or_default()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut InboxView)) {
        if let Ok(mut v) = self.view.lock() {
            f(&mut v);
        }
    }
}

/// The backlog, the rejected files and the newest rejection's first error, from the folder alone.
pub fn from_disk(dir: &Path) -> InboxView {
    let mut view = InboxView { dir: Some(dir.display().to_string()), ..InboxView::default() };
    if let Ok(files) = scan(dir) {
        view.backlog_files = files.len() as u64;
        view.backlog_bytes = files.iter().map(|f| f.len).sum();
    }
    let (rejected, last) = rejected(&dir.join(REJECTED));
    view.rejected_files = rejected;
    view.last_error = last;
    view
}

/// How many files wait in `rejected/` (reports not counted).
pub(crate) fn count_rejected(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !name.starts_with('.') && !name.ends_with(REPORT_SUFFIX)
        })
        .count() as u64
}

/// How many files wait in `rejected/`, and the first error of the newest report there.
pub(crate) fn rejected(dir: &Path) -> (u64, Option<LastError>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return (0, None) };
    let mut newest: Option<(std::time::SystemTime, std::path::PathBuf)> = None;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(REPORT_SUFFIX) {
            continue;
        }
        let modified = entry.metadata().and_then(|m| m.modified()).ok();
        if let Some(m) = modified
            && newest.as_ref().is_none_or(|(t, _)| m > *t)
        {
            newest = Some((m, entry.path()));
        }
    }
    let last = newest.and_then(|(_, path)| {
        let report: Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        let first = report["errors"].get(0).cloned().unwrap_or(Value::Null);
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let record = ["line", "byte", "record"]
            .iter()
            .filter_map(|k| match &first[k] {
                Value::Null => None,
                v => Some(format!("{k} {}", v.as_str().map_or_else(|| v.to_string(), str::to_owned))),
            })
            .collect::<Vec<_>>();
        Some(LastError {
            at: text(&report["rejected_at"]).unwrap_or_default(),
            file: text(&report["file"]).unwrap_or_default(),
            record: (!record.is_empty()).then(|| record.join(", ")),
            code: text(&first["code"]).unwrap_or_default(),
            detail: text(&first["detail"]).unwrap_or_default(),
        })
    });
    (count_rejected(dir), last)
}
