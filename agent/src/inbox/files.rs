//! The inbox's folders on disk: which files wait in it, whether one looks completely written, and where files
//! go once taken (the layout is in the inbox module's documentation).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::format::Format;

/// Where finished files go, inside the inbox.
pub const PROCESSED: &str = "processed";
/// Where refused files and their reports go, inside the inbox.
pub const REJECTED: &str = "rejected";
/// The report beside a rejected file: `<name>.error.json`.
pub const REPORT_SUFFIX: &str = ".error.json";

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
}
