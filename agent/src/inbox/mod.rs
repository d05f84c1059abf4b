//! The drop folder ("inbox"): POS systems that cannot call the API write transaction files into a folder, and the
//! agent journals every record in them exactly once.
//!
//! # Formats
//! JSON Lines of canonical events ([`jsonl`]), CSV with one row per line item or payment ([`csv_file`]) and ARTS
//! POSLog XML ([`poslog`]), chosen by the file name's extension (`.jsonl`, `.csv`, `.xml`). Every record is held
//! to the POS API's own rules: the readers build a POST body and pass it to
//! [`storesync_shared::event::parse_request_value`], the function the API's handlers call.
//!
//! # On-disk layout (`<inbox>`, by default `<data-dir>/inbox`)
//! - `<inbox>/*.jsonl|*.csv|*.xml`: files waiting. Names starting with `.` and any other extension (`.tmp`,
//!   `.part`, ...) are never read, so a writer may write under a temporary name and rename when done.
//! - `<inbox>/processed/<name>`: files whose every record is journaled.
//! - `<inbox>/rejected/<name>` and `<name>.error.json`: files with a refused record, and the report naming each
//!   refused record (line or byte offset, record id) with its error code and detail.
//!   A name already taken there gets a counter: `sales.1.jsonl`.
//!
//! # When a file is taken
//! A file is read once its size and modification time have not changed for `settle` (default 2 s) of the
//! agent's own clock, *and* it looks complete: a JSON Lines or CSV file ends with a newline, a POSLog file ends
//! with its root's end tag. A file that stays incomplete-looking is taken anyway after `incomplete_after`
//! (default 60 s) and then most likely rejected, with a report that says why. So both conventions work: write
//! under a temporary name and rename, or write in place (the stability window covers pauses shorter than
//! `settle`; the completeness check covers a pause that ends mid-line).
//!
//! # Failure policy: the whole file is checked before any of it is journaled
//! Pass 1 reads the whole file (streaming) and validates every record. If any record is refused, or the file
//! cannot be read to its end, nothing of it is journaled: the file moves to `rejected/` with its report, so the
//! file can be fixed in any way and dropped again. Only a file that passed is journaled (pass 2). A record that
//! the journal itself refuses in pass 2 (an `event_id` journaled before with another body; a void of an event
//! this till never journaled) is reported the same way, and the rest of that file stays journaled.
//!
//! # Idempotency and recovery
//! Every record is journaled under a deterministic event id: its own `event_id` where the format carries one (a
//! JSON Lines field, a CSV column, the ARTS transaction key), otherwise UUIDv5 of its place in the file (line,
//! transaction id) and the SHA-256 of its canonical body. The journal answers an event id it holds with the same
//! body as "already journaled" and writes nothing. So a file dropped again changes nothing, a restart in the
//! middle of a file (even a SIGKILL) reads it again from the start and journals only what is missing, and a file
//! that was taken too early and then grew keeps the ids of the records it had. The journal is the progress
//! record: no separate cursor can disagree with it. A file leaves the inbox only after its last record's COMMIT.
//!
//! # Memory
//! Files are streamed: the readers hold one line, one CSV transaction or one POSLog transaction at a time, and
//! at most [`process::WINDOW`] records wait for the journal writer. Memory does not grow with the file.

mod csv_file;
mod jsonl;
mod money;
mod poslog;
mod process;
mod record;
mod status;
mod watch;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::bail;

pub use record::{Format, Place, Refusal};
pub use status::{InboxStats, InboxView, LastError, Processing, from_disk};
pub use watch::run;

/// Where finished files go, inside the inbox.
pub const PROCESSED: &str = "processed";
/// Where refused files and their reports go, inside the inbox.
pub const REJECTED: &str = "rejected";
/// The report beside a rejected file: `<name>.error.json`.
pub const REPORT_SUFFIX: &str = ".error.json";

/// The default [`InboxConfig::settle`].
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);
/// The default [`InboxConfig::rescan`].
pub const DEFAULT_RESCAN: Duration = Duration::from_secs(10);
/// The default [`InboxConfig::incomplete_after`].
pub const DEFAULT_INCOMPLETE_AFTER: Duration = Duration::from_secs(60);
/// The default [`InboxConfig::keep_processed`]: 30 days.
pub const DEFAULT_KEEP_PROCESSED_DAYS: u64 = 30;
const DAY: Duration = Duration::from_secs(86_400);

/// The drop folder's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxConfig {
    /// Whether the watcher runs at all (`inbox_enabled`, default on).
    pub enabled: bool,
    /// The folder (`inbox_dir`, `--inbox-dir`, `STORESYNC_INBOX_DIR`; default `<data-dir>/inbox`; a relative
    /// path is taken relative to the data dir).
    pub dir: PathBuf,
    /// How long a file's size and modification time must stay unchanged before it is read (`inbox_settle_ms`).
    pub settle: Duration,
    /// How often the folder is listed even when no change notification came (`inbox_rescan_s`): the safety net
    /// for notifications a platform or a network share does not deliver.
    pub rescan: Duration,
    /// How long an incomplete-looking file (no final newline, no closing root tag) is waited for before it is
    /// read anyway (`inbox_incomplete_after_s`).
    pub incomplete_after: Duration,
    /// The currency of CSV and POSLog files that do not name one (`inbox_currency`).
    pub currency: Option<String>,
    /// How long a file stays in `processed/` after it was processed (`inbox_keep_processed_days`; `None`, from 0,
    /// keeps them forever). Its records are in the journal, which is the record; the file is only a courtesy to
    /// whoever wants to look at what the POS dropped. Rejected files are never deleted.
    pub keep_processed: Option<Duration>,
}

impl InboxConfig {
    /// The defaults, with the folder in `data_dir`.
    pub fn default_in(data_dir: &Path) -> InboxConfig {
        InboxConfig {
            enabled: true,
            dir: data_dir.join("inbox"),
            settle: DEFAULT_SETTLE,
            rescan: DEFAULT_RESCAN,
            incomplete_after: DEFAULT_INCOMPLETE_AFTER,
            currency: None,
            keep_processed: Some(DAY * DEFAULT_KEEP_PROCESSED_DAYS as u32),
        }
    }

    /// Resolves the `inbox_*` keys of `agent.toml` (and the `--inbox-dir` override), checking their ranges.
    pub fn resolve(data_dir: &Path, keys: Keys) -> anyhow::Result<InboxConfig> {
        let mut cfg = InboxConfig::default_in(data_dir);
        if let Some(enabled) = keys.enabled {
            cfg.enabled = enabled;
        }
        if let Some(dir) = keys.dir {
            if dir.as_os_str().is_empty() {
                bail!("inbox_dir must not be empty");
            }
            cfg.dir = data_dir.join(dir);
        }
        if let Some(ms) = keys.settle_ms {
            if !(100..=600_000).contains(&ms) {
                bail!("inbox_settle_ms must be between 100 and 600000");
            }
            cfg.settle = Duration::from_millis(ms);
        }
        if let Some(s) = keys.rescan_s {
            if !(1..=3600).contains(&s) {
                bail!("inbox_rescan_s must be between 1 and 3600");
            }
            cfg.rescan = Duration::from_secs(s);
        }
        if let Some(s) = keys.incomplete_after_s {
            if !(1..=86_400).contains(&s) {
                bail!("inbox_incomplete_after_s must be between 1 and 86400");
            }
            cfg.incomplete_after = Duration::from_secs(s);
        }
        if cfg.incomplete_after < cfg.settle {
            bail!("inbox_incomplete_after_s must not be shorter than inbox_settle_ms");
        }
        if let Some(days) = keys.keep_processed_days {
            if days > 3650 {
                bail!("inbox_keep_processed_days must be between 0 (keep forever) and 3650");
            }
            cfg.keep_processed = (days > 0).then(|| DAY * days as u32);
        }
        if let Some(c) = keys.currency {
            money::exponent(&c).map_err(|e| anyhow::anyhow!("inbox_currency: {}", e.detail))?;
            cfg.currency = Some(c);
        }
        Ok(cfg)
    }
}

/// The `inbox_*` settings as given (each optional).
#[derive(Debug, Clone, Default)]
pub struct Keys {
    pub enabled: Option<bool>,
    pub dir: Option<PathBuf>,
    pub settle_ms: Option<u64>,
    pub rescan_s: Option<u64>,
    pub incomplete_after_s: Option<u64>,
    pub currency: Option<String>,
    pub keep_processed_days: Option<u64>,
}

/// A file waiting in the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) path: PathBuf,
    pub(crate) name: String,
    pub(crate) format: Format,
    pub(crate) len: u64,
    pub(crate) modified: Option<SystemTime>,
}

/// The files waiting in `dir`: regular files (or links to them) named `*.jsonl`, `*.csv` or `*.xml`, not starting
/// with `.`. Sub-folders (`processed/`, `rejected/`) are not looked into.
pub(crate) fn scan(dir: &Path) -> std::io::Result<Vec<Candidate>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let Some(format) = Format::of(&name) else { continue };
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if !meta.is_file() {
            continue;
        }
        out.push(Candidate { path, name, format, len: meta.len(), modified: meta.modified().ok() });
    }
    Ok(out)
}

/// Does the file look completely written: a final newline (JSON Lines, CSV), a root end tag (POSLog)?
pub(crate) fn looks_complete(c: &Candidate) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if c.len == 0 {
        return Ok(false);
    }
    let mut f = std::fs::File::open(&c.path)?;
    let tail_len = c.len.min(512);
    f.seek(SeekFrom::Start(c.len - tail_len))?;
    let mut tail = Vec::with_capacity(tail_len as usize);
    f.take(tail_len).read_to_end(&mut tail)?;
    Ok(match c.format {
        Format::Jsonl | Format::Csv => tail.last() == Some(&b'\n'),
        Format::Poslog => ends_with_root_end_tag(&tail),
    })
}

/// `…</POSLog>` or `…</Transaction>` (with any prefix), then only whitespace.
fn ends_with_root_end_tag(tail: &[u8]) -> bool {
    let trimmed = tail.trim_ascii_end();
    let Some(body) = trimmed.strip_suffix(b">") else { return false };
    let Some(open) = body.windows(2).rposition(|w| w == b"</") else { return false };
    let name = body[open + 2..].trim_ascii_end();
    let local = name.rsplit(|&b| b == b':').next().unwrap_or_default();
    local == b"POSLog" || local == b"Transaction"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_end_tags_are_recognised() {
        assert!(ends_with_root_end_tag(b"...</Transaction>\n</POSLog>\n\n"));
        assert!(ends_with_root_end_tag(b"</x:POSLog >"));
        assert!(ends_with_root_end_tag(b"</Transaction>"));
        assert!(!ends_with_root_end_tag(b"</Transaction>\n</POS"));
        assert!(!ends_with_root_end_tag(b"<LineItem>"));
        assert!(!ends_with_root_end_tag(b"</LineItem>"));
        assert!(!ends_with_root_end_tag(b""));
    }

    #[test]
    fn config_ranges_are_checked() {
        let dir = Path::new("/data");
        let ok = InboxConfig::resolve(dir, Keys::default()).unwrap();
        assert_eq!(ok, InboxConfig::default_in(dir));
        assert_eq!(ok.dir, Path::new("/data/inbox"));
        let rel = InboxConfig::resolve(dir, Keys { dir: Some("drop".into()), ..Keys::default() }).unwrap();
        assert_eq!(rel.dir, Path::new("/data/drop"));
        let abs = InboxConfig::resolve(dir, Keys { dir: Some("/pos/out".into()), ..Keys::default() }).unwrap();
        assert_eq!(abs.dir, Path::new("/pos/out"));
        let bad = [
            Keys { settle_ms: Some(50), ..Keys::default() },
            Keys { rescan_s: Some(0), ..Keys::default() },
            Keys { incomplete_after_s: Some(0), ..Keys::default() },
            Keys { settle_ms: Some(5000), incomplete_after_s: Some(2), ..Keys::default() },
            Keys { currency: Some("EURO".into()), ..Keys::default() },
            Keys { dir: Some(PathBuf::new()), ..Keys::default() },
            Keys { keep_processed_days: Some(3651), ..Keys::default() },
        ];
        for keys in bad {
            assert!(InboxConfig::resolve(dir, keys.clone()).is_err(), "{keys:?}");
        }
        let eur = InboxConfig::resolve(dir, Keys { currency: Some("EUR".into()), ..Keys::default() }).unwrap();
        assert_eq!(eur.currency.as_deref(), Some("EUR"));
        assert_eq!(ok.keep_processed, Some(Duration::from_secs(30 * 86_400)));
        let forever = InboxConfig::resolve(dir, Keys { keep_processed_days: Some(0), ..Keys::default() }).unwrap();
        assert_eq!(forever.keep_processed, None);
        let week = InboxConfig::resolve(dir, Keys { keep_processed_days: Some(7), ..Keys::default() }).unwrap();
        assert_eq!(week.keep_processed, Some(Duration::from_secs(7 * 86_400)));
    }
}
