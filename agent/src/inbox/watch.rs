//! The watcher task: change notifications (the `notify` crate) and a periodic rescan wake one loop that lists
//! the folder, tracks how long each file has been unchanged, and processes ready files one at a time, oldest
//! first (by modification time, then name), so a void dropped after the sale it cancels finds it journaled.
//!
//! A notification only wakes the loop (a [`Notify`] holds at most one wake-up, so a burst of them costs one
//! listing); what is in the folder is always read from the folder itself. The rescan catches what notifications
//! miss (network shares, an overflowing kernel queue, files already there at start).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::config::InboxConfig;
use super::files::{Candidate, PROCESSED, REJECTED, REPORT_SUFFIX, looks_complete, scan};
use super::process::{self, Done, Later};
use super::status::{self, LastError};
use crate::AgentState;

/// The shortest pause between two listings after a notification (a writer appending in a tight loop would
/// otherwise keep the loop listing).
const MIN_PAUSE: Duration = Duration::from_millis(100);
/// The longest wait before a file that failed for a passing reason (I/O, the journal) is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often `processed/` is pruned of files older than [`InboxConfig::keep_processed`] (and once at start).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What the loop knows of one file.
#[derive(Debug)]
struct Tracked {
    len: u64,
    modified: Option<SystemTime>,
    /// Since when size and modification time have been what they are.
    since: Instant,
    /// Not before this, after a passing failure.
    retry_at: Option<Instant>,
    failures: u32,
}

/// Runs the inbox until `shutdown`, restarting the watcher if it ever panics (a bug in one file must not stop the
/// inbox for good; the file is read again from the start, which the event ids make harmless).
pub async fn run(state: Arc<AgentState>, cfg: InboxConfig, shutdown: CancellationToken) {
    loop {
        let task = tokio::spawn(watch(state.clone(), cfg.clone(), shutdown.clone()));
        match task.await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(error = %e, "the inbox task failed; restarting it in 5 s");
                note_error(&state, "", None, "internal", &format!("the inbox task failed ({e}); restarted"));
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    }
}

fn now_text() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default()
}

fn note_error(state: &AgentState, file: &str, record: Option<String>, code: &str, detail: &str) {
    let last =
        LastError { at: now_text(), file: file.to_owned(), record, code: code.to_owned(), detail: detail.to_owned() };
    state.inbox.update(|v| v.last_error = Some(last));
}

/// Starts the change notifications on `dir`; each one wakes the loop.
fn start_watcher(dir: &Path, wake: Arc<Notify>) -> notify::Result<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        // An error (a dropped event) is a reason to look too.
        wake.notify_one();
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    tokio::task::spawn_blocking(f).await.ok()
}

/// Creates the inbox and its two sub-folders; answers whether the inbox itself had to be made.
fn ensure_dirs(dir: &Path) -> std::io::Result<bool> {
    let created = !dir.is_dir();
    for d in [dir.to_path_buf(), dir.join(PROCESSED), dir.join(REJECTED)] {
        std::fs::create_dir_all(&d)?;
    }
    Ok(created)
}

async fn watch(state: Arc<AgentState>, cfg: InboxConfig, shutdown: CancellationToken) {
    let dir = cfg.dir.clone();
    state.inbox.update(|v| {
        v.enabled = true;
        v.dir = Some(dir.display().to_string());
    });
    let rejected_dir = dir.join(REJECTED);
    if let Some((count, last)) = blocking(move || status::rejected(&rejected_dir)).await {
        state.inbox.update(|v| {
            v.rejected_files = count;
            v.last_error = v.last_error.take().or(last);
        });
    }
    tracing::info!(dir = %dir.display(), settle_ms = cfg.settle.as_millis() as u64, rescan_s = cfg.rescan.as_secs(),
                   "inbox: watching the drop folder");
    let wake = Arc::new(Notify::new());
    let mut watcher: Option<RecommendedWatcher> = None;
    let mut tracked: HashMap<PathBuf, Tracked> = HashMap::new();
    let mut folder_error: Option<String> = None;
    let mut pruned_at: Option<Instant> = None;
    while !shutdown.is_cancelled() {
        if let Some(keep) = cfg.keep_processed
            && pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY)
        {
            pruned_at = Some(Instant::now());
            let processed = dir.join(PROCESSED);
            match blocking(move || process::prune_processed(&processed, keep, SystemTime::now())).await {
                Some(Ok(0)) | None => {}
                Some(Ok(n)) => {
                    tracing::info!(
                        files = n,
                        keep_days = keep.as_secs() / 86_400,
                        "inbox: deleted old processed files"
                    );
                    metrics::counter!("storesync_agent_inbox_pruned_files_total").increment(n);
                }
                // Not there yet (a new inbox): made below.
                Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                Some(Err(e)) => tracing::warn!(error = %e, "inbox: cannot list processed/ to prune it"),
            }
        }
        let d = dir.clone();
        match blocking(move || ensure_dirs(&d)).await {
            Some(Ok(created)) => {
                if created {
                    watcher = None;
                }
                if watcher.is_none() {
                    match start_watcher(&dir, wake.clone()) {
                        Ok(w) => watcher = Some(w),
                        Err(e) => tracing::warn!(error = %e, dir = %dir.display(),
                            "inbox: no change notifications; relying on the rescan"),
                    }
                }
            }
            Some(Err(e)) => {
                let detail = format!("cannot create the drop folder {}: {e}", dir.display());
                if folder_error.as_deref() != Some(detail.as_str()) {
                    tracing::error!(error = %detail, "inbox: folder unusable; retrying at each rescan");
                    note_error(&state, "", None, "inbox_unavailable", &detail);
                    folder_error = Some(detail);
                }
                watcher = None;
            }
            None => {}
        }
        let d = dir.clone();
        let listed = blocking(move || scan(&d).map(|files| (files, status::count_rejected(&d.join(REJECTED)))))
            .await
            .unwrap_or_else(|| Err(std::io::Error::other("listing failed")));
        let now = Instant::now();
        match listed {
            Ok((files, rejected)) => {
                folder_error = None;
                track(&mut tracked, &files, now);
                let bytes = files.iter().map(|f| f.len).sum();
                state.inbox.update(|v| {
                    v.backlog_files = files.len() as u64;
                    v.backlog_bytes = bytes;
                    v.rejected_files = rejected;
                });
                metrics::gauge!("storesync_agent_inbox_backlog_files").set(files.len() as f64);
                // Every ready file of this listing, oldest first, before the folder is listed again (a folder of
                // thousands of one-transaction files is listed once per batch, not once per file).
                let ready = ready(&files, &tracked, &cfg, now).await;
                if !ready.is_empty() {
                    for file in &ready {
                        if shutdown.is_cancelled() {
                            break;
                        }
                        handle(&state, &cfg, file, &mut tracked, &shutdown).await;
                    }
                    continue;
                }
            }
            Err(e) => {
                let detail = format!("cannot list the drop folder {}: {e}", dir.display());
                if folder_error.as_deref() != Some(detail.as_str()) {
                    tracing::error!(error = %detail, "inbox: folder unusable; retrying at each rescan");
                    note_error(&state, "", None, "inbox_unavailable", &detail);
                    folder_error = Some(detail);
                }
                tracked.clear();
            }
        }
        let until = next_look(&tracked, &cfg, now);
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = wake.notified() => {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(MIN_PAUSE) => {}
                }
            }
            () = tokio::time::sleep_until(until.into()) => {}
        }
    }
    drop(watcher);
    state.inbox.update(|v| v.processing = None);
}

/// Brings what the loop knows up to the listing: a changed file starts its stability window again.
fn track(tracked: &mut HashMap<PathBuf, Tracked>, files: &[Candidate], now: Instant) {
    tracked.retain(|path, _| files.iter().any(|f| &f.path == path));
    for f in files {
        let same = tracked.get(&f.path).is_some_and(|t| t.len == f.len && t.modified == f.modified);
        if !same {
            let failures = tracked.get(&f.path).map_or(0, |t| t.failures);
            tracked.insert(
                f.path.clone(),
                Tracked { len: f.len, modified: f.modified, since: now, retry_at: None, failures },
            );
        }
    }
}

/// The files that are ready, oldest first: unchanged for `settle`, not waiting out a failure, and complete-looking
/// (or unchanged for `incomplete_after`).
async fn ready(
    files: &[Candidate],
    tracked: &HashMap<PathBuf, Tracked>,
    cfg: &InboxConfig,
    now: Instant,
) -> Vec<Candidate> {
    let mut ready: Vec<&Candidate> = files
        .iter()
        .filter(|f| {
            tracked
                .get(&f.path)
                .is_some_and(|t| now.duration_since(t.since) >= cfg.settle && t.retry_at.is_none_or(|r| r <= now))
        })
        .collect();
    ready.sort_by(|a, b| (a.modified, &a.name).cmp(&(b.modified, &b.name)));
    let mut out = Vec::new();
    for f in ready {
        let unchanged_for = tracked.get(&f.path).map_or(Duration::ZERO, |t| now.duration_since(t.since));
        let c = f.clone();
        if unchanged_for >= cfg.incomplete_after
            || blocking(move || looks_complete(&c)).await.is_some_and(|r| r.unwrap_or(false))
        {
            out.push(f.clone());
        }
    }
    out
}

/// When to list the folder again without a notification: when the first tracked file may become ready, and at
/// the latest after `rescan`.
fn next_look(tracked: &HashMap<PathBuf, Tracked>, cfg: &InboxConfig, now: Instant) -> Instant {
    let mut next = now + cfg.rescan;
    for t in tracked.values() {
        let mut candidates = vec![t.since + cfg.settle, t.since + cfg.incomplete_after];
        candidates.extend(t.retry_at);
        for c in candidates {
            if c > now {
                next = next.min(c);
            }
        }
        if let Some(r) = t.retry_at
            && r <= now
        {
            next = next.min(now + MIN_PAUSE);
        }
    }
    next.max(now + MIN_PAUSE)
}

/// Processes one file and records how it went.
async fn handle(
    state: &Arc<AgentState>,
    cfg: &InboxConfig,
    file: &Candidate,
    tracked: &mut HashMap<PathBuf, Tracked>,
    shutdown: &CancellationToken,
) {
    state.inbox.update(|v| v.processing = Some(status::Processing { file: file.name.clone(), records_done: 0 }));
    let result = process::process(state, cfg, file, shutdown).await;
    state.inbox.update(|v| v.processing = None);
    match result {
        Ok(Done::Processed(c)) => {
            tracked.remove(&file.path);
            left_inbox(state, file);
            tracing::info!(file = %file.name, journaled = c.journaled, already_journaled = c.already_journaled,
                           skipped = c.skipped, "inbox: file processed");
            state.inbox.update(|v| v.files_processed += 1);
            metrics::counter!("storesync_agent_inbox_files_total", "outcome" => "processed").increment(1);
        }
        Ok(Done::Rejected { counts, failed, first, report }) => {
            tracked.remove(&file.path);
            left_inbox(state, file);
            tracing::warn!(file = %file.name, failed, journaled = counts.journaled, first_error = %first.detail,
                           code = first.code, report = %report.display(), "inbox: file rejected");
            let record = Some(first.place.to_string()).filter(|p| p != "the file");
            let last = LastError {
                at: now_text(),
                file: report
                    .file_name()
                    .map(|n| n.to_string_lossy().trim_end_matches(REPORT_SUFFIX).to_owned())
                    .unwrap_or_else(|| file.name.clone()),
                record,
                code: first.code.to_owned(),
                detail: first.detail.clone(),
            };
            state.inbox.update(|v| {
                v.files_rejected += 1;
                v.rejected_files += 1;
                v.parse_errors += failed;
                v.last_error = Some(last);
            });
            metrics::counter!("storesync_agent_inbox_files_total", "outcome" => "rejected").increment(1);
            metrics::counter!("storesync_agent_inbox_parse_errors_total").increment(failed);
        }
        Err(Later::Stopping) => {
            tracing::info!(file = %file.name, "inbox: stopping in the middle of a file; it is read again at the next start");
        }
        Err(Later::Changed) => {
            tracing::info!(file = %file.name, "inbox: the file changed while it was read; waiting for it to settle");
            if let Some(t) = tracked.get_mut(&file.path) {
                t.since = Instant::now();
            }
        }
        Err(Later::Io(detail) | Later::Journal(detail)) => {
            let t = tracked.get_mut(&file.path);
            let failures = t.as_ref().map_or(1, |t| t.failures + 1);
            let backoff = cfg.rescan.saturating_mul(1 << failures.min(8)).min(MAX_BACKOFF);
            if let Some(t) = t {
                t.failures = failures;
                t.retry_at = Some(Instant::now() + backoff);
            }
            tracing::warn!(file = %file.name, error = %detail, retry_in_s = backoff.as_secs(),
                           "inbox: file left in the inbox for now");
            note_error(state, &file.name, None, "inbox_retry", &detail);
        }
    }
}

/// Takes a file that left the inbox off the backlog (until the next listing counts again).
fn left_inbox(state: &AgentState, file: &Candidate) {
    state.inbox.update(|v| {
        v.backlog_files = v.backlog_files.saturating_sub(1);
        v.backlog_bytes = v.backlog_bytes.saturating_sub(file.len);
    });
}
