//! One file, start to finish: validate it whole (pass 1), journal it (pass 2), move it out with its report.
//!
//! Both passes stream the file on a blocking thread. Pass 2 hands records to the async side over a bounded
//! channel, and keeps at most [`WINDOW`] appends waiting for the journal writer at once, so they share group
//! commits (one fsync per group instead of one per record) while a POS request never waits behind more than
//! [`WINDOW`] of them. Records reach the writer in file order; a void waits until everything before it is
//! committed, so the event it cancels is always journaled first.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use sha2::{Digest, Sha256};
use storesync_shared::EventBody;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use super::config::InboxConfig;
use super::files::{Candidate, PROCESSED, REJECTED, REPORT_SUFFIX};
use super::format::Format;
use super::record::{Context, Item, Refusal};
use crate::AgentState;
use crate::journal::{AppendError, AppendOutcome};

/// The most appends of one file waiting for the journal writer at once.
pub(crate) const WINDOW: usize = 128;
/// The most records the reader thread reads ahead of the journal.
const READ_AHEAD: usize = 256;
/// The most refused records a report lists (it counts them all).
pub(crate) const MAX_REPORTED: usize = 100;
/// The read buffer of a file.
const READ_BUFFER: usize = 64 * 1024;

/// How a file ended.
#[derive(Debug)]
pub(crate) enum Done {
    /// Every record journaled (or journaled before); the file is in `processed/`.
    Processed(Counts),
    /// The file is in `rejected/` with its report.
    Rejected { counts: Counts, failed: u64, first: Refusal, report: PathBuf },
}

/// Why a file was left in the inbox for later; none of these is the file's fault, or final.
#[derive(Debug)]
pub(crate) enum Later {
    /// It changed while it was read: it is read again once it has settled.
    Changed,
    /// It could not be read, moved or reported on (permissions, a full disk); retried with backoff.
    Io(String),
    /// The journal cannot be written now; retried with backoff.
    Journal(String),
    /// The agent is stopping.
    Stopping,
}

/// What pass 2 did with a file's records.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub(crate) struct Counts {
    pub(crate) journaled: u64,
    pub(crate) already_journaled: u64,
    pub(crate) skipped: u64,
}

/// What pass 1 found.
#[derive(Debug, Default)]
struct Validation {
    records: u64,
    refused: u64,
    refusals: Vec<Refusal>,
    fatal: Option<Refusal>,
}

impl Validation {
    fn refuse(&mut self, r: Refusal) {
        self.refused += 1;
        if self.refusals.len() < MAX_REPORTED {
            self.refusals.push(r);
        }
    }
}

/// `<name>.error.json`.
#[derive(Debug, Serialize)]
struct Report<'a> {
    /// The file's name in `rejected/`.
    file: &'a str,
    /// Its name when it was dropped.
    dropped_as: &'a str,
    format: Format,
    bytes: u64,
    sha256: String,
    rejected_at: String,
    /// `nothing_journaled` (pass 1 refused it) or `partly_journaled` (the journal refused some records).
    outcome: &'static str,
    note: &'static str,
    journaled: u64,
    already_journaled: u64,
    skipped: u64,
    /// Every refused record counts here; `errors` lists the first 100.
    failed: u64,
    errors: &'a [Refusal],
    errors_truncated: bool,
}

fn open(path: &Path, format: Format, ctx: &Context) -> std::io::Result<super::record::Items> {
    let file = std::fs::File::open(path)?;
    Ok(format.records(Box::new(BufReader::with_capacity(READ_BUFFER, file)), ctx))
}

/// Pass 1: every record parsed and validated, nothing kept but the refusals. `None` when `stop` was cancelled
/// first (a stop must not wait for a whole large file).
fn validate(
    path: &Path,
    format: Format,
    ctx: &Context,
    stop: &CancellationToken,
) -> std::io::Result<Option<Validation>> {
    let mut v = Validation::default();
    for (n, item) in open(path, format, ctx)?.enumerate() {
        if n % 1024 == 0 && stop.is_cancelled() {
            return Ok(None);
        }
        match item {
            Ok(Item::Record(_)) => v.records += 1,
            Ok(Item::Skipped { .. }) => {}
            Ok(Item::Refused(r)) => v.refuse(r),
            Err(fatal) => {
                v.refused += 1;
                v.fatal = Some(fatal);
            }
        }
    }
    Ok(Some(v))
}

/// The file's size and modification time now.
fn stamp(path: &Path) -> Option<(u64, Option<std::time::SystemTime>)> {
    std::fs::metadata(path).ok().map(|m| (m.len(), m.modified().ok()))
}

async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, Later> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Later::Io(format!("internal: a file task failed: {e}")))
}

/// Reads, journals and moves one file.
pub(crate) async fn process(
    state: &Arc<AgentState>,
    cfg: &InboxConfig,
    file: &Candidate,
    shutdown: &CancellationToken,
) -> Result<Done, Later> {
    let ctx = Context { currency: cfg.currency.clone() };
    let before = (file.len, file.modified);
    let (path, format, ctx1, stop) = (file.path.clone(), file.format, ctx.clone(), shutdown.clone());
    let v = blocking(move || validate(&path, format, &ctx1, &stop))
        .await?
        .map_err(|e| Later::Io(format!("reading {}: {e}", file.name)))?
        .ok_or(Later::Stopping)?;
    if stamp(&file.path) != Some(before) {
        return Err(Later::Changed);
    }
    if v.refused > 0 {
        let mut refusals = v.refusals;
        refusals.extend(v.fatal);
        let counts = Counts::default();
        return reject(cfg, file, counts, &refusals, v.refused, "nothing_journaled").await;
    }
    tracing::info!(file = %file.name, records = v.records, "inbox: file validated; journaling it");
    let (counts, refusals, refused) = journal(state, file, ctx, shutdown).await?;
    if stamp(&file.path) != Some(before) {
        // What was journaled stands (its ids do not depend on the rest of the file); the file is read again.
        return Err(Later::Changed);
    }
    if refused > 0 {
        return reject(cfg, file, counts, &refusals, refused, "partly_journaled").await;
    }
    let (src, dir, name) = (file.path.clone(), cfg.dir.join(PROCESSED), file.name.clone());
    blocking(move || mark_processed(&src).and_then(|()| move_into(&src, &dir, &name)))
        .await?
        .map_err(|e| Later::Io(format!("moving {} to {PROCESSED}/: {e}", file.name)))?;
    Ok(Done::Processed(counts))
}

/// Polls `f` once: enough for a journal append to be queued at the writer, in the order of the calls.
async fn poll_once<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match Pin::new(&mut *f).poll(cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        })
    })
    .await
}

type Append = Pin<Box<dyn Future<Output = Result<AppendOutcome, AppendError>> + Send>>;

/// Pass 2's bookkeeping.
struct Journaling<'a> {
    state: &'a Arc<AgentState>,
    file: &'a Candidate,
    counts: Counts,
    refusals: Vec<Refusal>,
    refused: u64,
    unavailable: Option<String>,
    in_flight: VecDeque<(super::record::Place, Append)>,
}

impl Journaling<'_> {
    fn answer(&mut self, place: super::record::Place, outcome: Result<AppendOutcome, AppendError>) {
        match outcome {
            Ok(AppendOutcome::Created(_)) => {
                self.counts.journaled += 1;
                self.state.sync_wake.notify_one();
            }
            Ok(AppendOutcome::Existing(_)) => self.counts.already_journaled += 1,
            Err(AppendError::Conflict { code, detail } | AppendError::Invalid { code, detail }) => {
                self.refused += 1;
                if self.refusals.len() < MAX_REPORTED {
                    self.refusals.push(Refusal::new(place, code, detail));
                }
            }
            Err(AppendError::Unavailable(detail)) => {
                self.unavailable.get_or_insert(detail);
            }
        }
        let done = self.counts.journaled + self.counts.already_journaled;
        if done.is_multiple_of(1000) {
            self.state.inbox.update(|v| {
                if let Some(p) = v.processing.as_mut() {
                    p.records_done = done;
                }
            });
        }
    }

    /// Waits for the oldest append in flight.
    async fn settle_one(&mut self) {
        if let Some((place, fut)) = self.in_flight.pop_front() {
            let outcome = fut.await;
            self.answer(place, outcome);
        }
    }

    async fn settle_all(&mut self) {
        while !self.in_flight.is_empty() {
            self.settle_one().await;
        }
    }

    async fn append(&mut self, record: super::record::Record) {
        if matches!(record.body, EventBody::Void(_)) {
            self.settle_all().await;
        }
        while self.in_flight.len() >= WINDOW {
            self.settle_one().await;
        }
        let journal = self.state.journal.clone();
        let (id, body) = (record.event_id, record.body);
        let mut fut: Append = Box::pin(async move { journal.append(Some(id), body).await });
        match poll_once(&mut fut).await {
            Some(outcome) => self.answer(record.place, outcome),
            None => self.in_flight.push_back((record.place, fut)),
        }
    }
}

/// Pass 2: reads the file again on a blocking thread and journals its records.
async fn journal(
    state: &Arc<AgentState>,
    file: &Candidate,
    ctx: Context,
    shutdown: &CancellationToken,
) -> Result<(Counts, Vec<Refusal>, u64), Later> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Item, Refusal>>(READ_AHEAD);
    let (path, format) = (file.path.clone(), file.format);
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        for item in open(&path, format, &ctx)? {
            if tx.blocking_send(item).is_err() {
                break;
            }
        }
        Ok(())
    });
    let mut j = Journaling {
        state,
        file,
        counts: Counts::default(),
        refusals: Vec::new(),
        refused: 0,
        unavailable: None,
        in_flight: VecDeque::new(),
    };
    let mut later = None;
    while later.is_none() && j.unavailable.is_none() {
        let item = tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                later = Some(Later::Stopping);
                break;
            }
            item = rx.recv() => item,
        };
        match item {
            None => break,
            Some(Ok(Item::Record(r))) => j.append(r).await,
            Some(Ok(Item::Skipped { place, why })) => {
                j.counts.skipped += 1;
                tracing::info!(file = %j.file.name, %place, why, "inbox: record skipped");
            }
            // Pass 1 found no refusal, so the file changed since (or could not be read again).
            Some(Ok(Item::Refused(_))) => later = Some(Later::Changed),
            Some(Err(r)) if r.code == "unreadable" => later = Some(Later::Io(r.detail)),
            Some(Err(_)) => later = Some(Later::Changed),
        }
    }
    // Everything queued at the writer is answered before the file is let go of.
    j.settle_all().await;
    drop(rx);
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => later = later.or(Some(Later::Io(format!("reading {}: {e}", file.name)))),
        Err(e) => later = later.or(Some(Later::Io(format!("internal: the reader of {} failed: {e}", file.name)))),
    }
    record_counts(state, j.counts);
    if let Some(detail) = j.unavailable {
        return Err(Later::Journal(detail));
    }
    match later {
        Some(l) => Err(l),
        None => Ok((j.counts, j.refusals, j.refused)),
    }
}

/// Adds a file's record counts to the status and the metrics (also for a file left for later: what it
/// journaled is journaled).
fn record_counts(state: &AgentState, c: Counts) {
    state.inbox.update(|v| {
        v.records_journaled += c.journaled;
        v.records_duplicate += c.already_journaled;
        v.records_skipped += c.skipped;
    });
    for (outcome, n) in [("journaled", c.journaled), ("duplicate", c.already_journaled), ("skipped", c.skipped)] {
        metrics::counter!("storesync_agent_inbox_records_total", "outcome" => outcome).increment(n);
    }
}

/// Writes the report, then moves the file beside it into `rejected/`.
async fn reject(
    cfg: &InboxConfig,
    file: &Candidate,
    counts: Counts,
    refusals: &[Refusal],
    refused: u64,
    outcome: &'static str,
) -> Result<Done, Later> {
    let (src, dir, name, format) = (file.path.clone(), cfg.dir.join(REJECTED), file.name.clone(), file.format);
    let refusals_owned = refusals.to_vec();
    let written = blocking(move || -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&dir)?;
        let target = free_name(&dir, &name)?;
        let (bytes, sha256) = digest(&src)?;
        let note = match outcome {
            "nothing_journaled" => {
                "Nothing of this file was journaled. Fix the records listed (or the file) and drop it again."
            }
            _ => {
                "The records not listed were journaled. Drop again only the records listed, fixed, in a new file; a \
                 corrected copy of this whole file would journal again the records whose line or content moved."
            }
        };
        let report = Report {
            file: &target,
            dropped_as: &name,
            format,
            bytes,
            sha256,
            rejected_at: OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default(),
            outcome,
            note,
            journaled: counts.journaled,
            already_journaled: counts.already_journaled,
            skipped: counts.skipped,
            failed: refused,
            errors: &refusals_owned,
            errors_truncated: refused > refusals_owned.len() as u64,
        };
        let text = serde_json::to_vec_pretty(&report).map_err(std::io::Error::other)?;
        let report_path = dir.join(format!("{target}{REPORT_SUFFIX}"));
        let tmp = dir.join(format!(".{target}{REPORT_SUFFIX}.tmp"));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &report_path)?;
        std::fs::rename(&src, dir.join(&target))?;
        Ok(report_path)
    })
    .await?
    .map_err(|e| Later::Io(format!("rejecting {}: {e}", file.name)))?;
    let first = refusals.first().cloned().unwrap_or_else(|| Refusal::new(Default::default(), "rejected", ""));
    Ok(Done::Rejected { counts, failed: refused, first, report: written })
}

/// Sets a finished file's modification time to now, just before it moves to `processed/`: there it says when the
/// file was processed, which is what [`prune_processed`] counts from (the POS may drop a file written long ago).
/// If the move then fails, the file looks changed and is read again, which its record ids make harmless.
fn mark_processed(src: &Path) -> std::io::Result<()> {
    std::fs::File::options().append(true).open(src)?.set_modified(SystemTime::now())
}

/// Deletes the files in `processed` (the inbox's `processed/` folder) processed more than `keep` before `now`.
/// Answers how many it deleted. Only regular files directly in the folder; what cannot be read or deleted is left
/// for the next pass.
pub(crate) fn prune_processed(processed: &Path, keep: Duration, now: SystemTime) -> std::io::Result<u64> {
    let Some(cutoff) = now.checked_sub(keep) else { return Ok(0) };
    let mut deleted = 0;
    for entry in std::fs::read_dir(processed)? {
        let Ok(entry) = entry else { continue };
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() || meta.modified().map_or(true, |m| m >= cutoff) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => deleted += 1,
            Err(e) => {
                tracing::warn!(error = %e, file = %entry.path().display(), "inbox: cannot delete an old processed file")
            }
        }
    }
    Ok(deleted)
}

/// Moves `src` into `dir` under its name, or a free variant of it.
fn move_into(src: &Path, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let target = dir.join(free_name(dir, name)?);
    std::fs::rename(src, &target)?;
    Ok(target)
}

/// `name`, or `stem.N.ext` for the first N whose file does not exist in `dir` yet. A report left without its file
/// (a crash between writing one and moving the other) does not take a name.
fn free_name(dir: &Path, name: &str) -> std::io::Result<String> {
    let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
    for n in 0..100_000u32 {
        let candidate = if n == 0 { name.to_owned() } else { format!("{stem}.{n}.{ext}") };
        if !dir.join(&candidate).exists() {
            return Ok(candidate);
        }
    }
    Err(std::io::Error::other(format!("no free name for {name} in {}", dir.display())))
}

/// A file's size and SHA-256 (hex), streamed.
fn digest(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_BUFFER];
    let mut bytes = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file written by the POS long ago is dated when it is processed, and `processed/` loses only the files
    /// processed longer ago than the setting, never a sub-folder.
    #[test]
    fn processed_files_are_dated_when_processed_and_pruned_after_keep() {
        let dir = tempfile::tempdir().unwrap();
        let (inbox, processed) = (dir.path(), dir.path().join(PROCESSED));
        let day = Duration::from_secs(86_400);
        let now = SystemTime::now();
        let old_export = inbox.join("old-export.jsonl");
        std::fs::write(&old_export, "{}\n").unwrap();
        std::fs::File::options().append(true).open(&old_export).unwrap().set_modified(now - day * 400).unwrap();
        mark_processed(&old_export).unwrap();
        let moved = move_into(&old_export, &processed, "old-export.jsonl").unwrap();
        for (name, age_days) in [("a.jsonl", 40), ("b.csv", 31), ("c.xml", 29), ("d.jsonl", 0)] {
            let path = processed.join(name);
            std::fs::write(&path, "x").unwrap();
            std::fs::File::options().append(true).open(&path).unwrap().set_modified(now - day * age_days).unwrap();
        }
        std::fs::create_dir(processed.join("keep-me")).unwrap();
        assert_eq!(prune_processed(&processed, day * 30, now).unwrap(), 2);
        let mut left: Vec<String> =
            std::fs::read_dir(&processed).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        left.sort();
        assert_eq!(left, ["c.xml", "d.jsonl", "keep-me", "old-export.jsonl"]);
        assert!(moved.exists(), "the old export was processed just now and stays");
        assert_eq!(prune_processed(&processed, day * 30, now).unwrap(), 0);
    }

    #[test]
    fn free_names_count_up_and_keep_the_extension() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(free_name(dir.path(), "sales.jsonl").unwrap(), "sales.jsonl");
        std::fs::write(dir.path().join("sales.jsonl"), "").unwrap();
        assert_eq!(free_name(dir.path(), "sales.jsonl").unwrap(), "sales.1.jsonl");
        std::fs::write(dir.path().join("sales.1.jsonl"), "").unwrap();
        assert_eq!(free_name(dir.path(), "sales.jsonl").unwrap(), "sales.2.jsonl");
        // An orphan report does not take a name: the next rejection of that name overwrites it.
        std::fs::write(dir.path().join("x.csv.error.json"), "{}").unwrap();
        assert_eq!(free_name(dir.path(), "x.csv").unwrap(), "x.csv");
    }

    #[test]
    fn validation_counts_every_refusal_but_keeps_the_first_hundred() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        std::fs::write(&path, "not json\n".repeat(250)).unwrap();
        let v = validate(&path, Format::Jsonl, &Context::default(), &CancellationToken::new()).unwrap().unwrap();
        assert_eq!((v.records, v.refused, v.refusals.len()), (0, 250, MAX_REPORTED));
        assert_eq!(v.refusals[99].place.line, Some(100));
        // A stop does not wait for the rest of the file.
        let stop = CancellationToken::new();
        stop.cancel();
        assert!(validate(&path, Format::Jsonl, &Context::default(), &stop).unwrap().is_none());
    }
}
