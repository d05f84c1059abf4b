//! Background upload of the journal to the hub: exactly once, never blocking the POS API.
//!
//! # How exactly-once holds
//! The hub keeps each till's last stored seq and hash, and accepts a batch only if it continues that chain; a
//! batch it already holds is acknowledged again without being stored twice (see the hub's storage note). This
//! side only has to send runs of consecutive journal entries starting right after what the hub holds, and to mark
//! entries synced when, and only when, the hub acknowledged them (`acked_through`, checked against the local
//! hash at that seq). A lost response merely means the next batch is a duplicate or an overlap.
//!
//! # Failure handling
//! - Network errors, timeouts and 5xx: `hub = unreachable`, retry with capped exponential backoff and full jitter.
//! - 429/503 with `Retry-After` (the hub is overloaded, a till is over its rate, storage is busy): wait that long
//!   plus full jitter over at least as long again, the spread doubling with each slow-down in a row, capped at
//!   `max_backoff` ([`slow_down_delay`]), so a fleet told the same `Retry-After` comes back spread out. It is not a
//!   failure: the hub stays `reachable`, `last_error` is untouched, and it counts in
//!   `storesync_agent_sync_slow_downs_total`, not in `storesync_agent_sync_failures_total`.
//! - `seq_gap`: resend from the hub's `expected_seq` at once.
//! - Refusals that resending cannot fix (`chain_broken`, `sequence_regression`, `journal_mismatch`, a revoked
//!   credential): shown in the status as `last_error`, logged at `warn` on every attempt, retried with backoff so
//!   an operator's fix on either side is picked up; they never block the POS API or the journal.
//!
//! The task holds no lock or connection across an `.await`; journal reads run on the blocking pool, and the
//! "synced" mark goes through the journal writer like any other write.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rand::Rng;
use reqwest::StatusCode;
use storesync_shared::wire::{
    EPOCH_HEADER, EpochSnapshot, ErrorBody, JournalEvent, TillState, UploadAck, UploadRefusal, UploadRequest,
};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::credential::{self, Credential};
use crate::journal::ReadPool;
use crate::{AgentState, HubReach};

/// How the sync loop is tuned.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// At most this many events per upload.
    pub batch_events: usize,
    /// At most about this many bytes per upload.
    pub batch_bytes: usize,
    /// With nothing to send, report in this often.
    pub heartbeat: Duration,
    /// First retry delay; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How long a request to the hub may take.
    pub request_timeout: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            batch_events: storesync_shared::wire::MAX_BATCH_EVENTS,
            batch_bytes: 1024 * 1024,
            heartbeat: Duration::from_secs(15),
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// The most message exchanges in one document sync session.
const MAX_DOC_ROUNDS: usize = 32;

/// Capped exponential backoff with full jitter (also used by the load generator, tests/src/loadgen).
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { next: min, min, max }
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// A random wait from 0 to the current window, doubling the next window.
    pub fn delay(&mut self) -> Duration {
        let cap = self.grow();
        let ms = cap.as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(0..=ms))
    }

    /// The current window, doubling the next one.
    pub fn grow(&mut self) -> Duration {
        let cap = self.next;
        self.next = (self.next * 2).min(self.max);
        cap
    }
}

/// How long to wait when the hub answered 429 or 503 with `retry_after`: that long (cut to `cap`, should a hub ask
/// for more), plus full jitter over `max(retry_after, window)`, never past `cap`. `window` is the backoff's growing
/// window, so a slow-down that repeats spreads the fleet wider each time.
pub fn slow_down_delay(retry_after: Duration, window: Duration, cap: Duration, rng: &mut impl Rng) -> Duration {
    let base = retry_after.min(cap);
    let spread = u64::try_from(base.max(window).as_millis()).unwrap_or(u64::MAX);
    let jitter = Duration::from_millis(rng.random_range(0..=spread));
    base.saturating_add(jitter).min(cap).max(base)
}

/// What one upload round achieved.
enum Round {
    /// Nothing to send and no report due: the hub was not contacted.
    Idle,
    /// The hub holds everything this till journaled.
    Drained,
    /// Progress was made and more is waiting.
    More,
}

/// Why a round failed.
enum Failure {
    /// The hub could not be reached or did not answer properly.
    Unreachable(String),
    /// The hub asked us to slow down.
    SlowDown(Duration, String),
    /// The hub refused the upload; resending the same thing will not help.
    Refused(String),
}

/// A response's `Retry-After` in whole seconds (absent or unreadable: 1 s).
pub fn retry_after(resp: &reqwest::Response) -> Duration {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(1), Duration::from_secs)
}

/// One connection to the hub with this till's credential.
struct Link {
    cred: Credential,
    client: reqwest::Client,
    /// What the hub holds for this till, as last learned.
    hub_seq: Option<u64>,
    /// The page after the batch in flight, read while the hub ingested that batch: (the seq it follows, the page).
    /// Used only if the hub then acknowledged exactly through that seq.
    prefetched: Option<(u64, Vec<JournalEvent>)>,
}

/// Reads the page to upload after `after`: at most `limit` events and (beyond the first) `max_bytes` of JSON.
async fn upload_page(
    state: &AgentState,
    after: u64,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<JournalEvent>, Failure> {
    read_journal(state, move |reads| {
        let mut page: Vec<JournalEvent> = reads.page(after, limit)?.into_iter().map(JournalEvent::from).collect();
        let mut bytes = 0;
        let mut keep = 0;
        for e in &page {
            bytes += serde_json::to_vec(e).map(|v| v.len()).unwrap_or(0);
            if keep > 0 && bytes > max_bytes {
                break;
            }
            keep += 1;
        }
        page.truncate(keep);
        Ok(page)
    })
    .await
}

impl Link {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.cred.hub_url)
    }

    async fn refusal(resp: reqwest::Response) -> (StatusCode, UploadRefusal) {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str::<UploadRefusal>(&text).unwrap_or_else(|_| {
            let e: Option<ErrorBody> = serde_json::from_str(&text).ok();
            UploadRefusal {
                error: e.as_ref().map_or_else(|| "http_error".to_owned(), |e| e.error.clone()),
                detail: e.map_or_else(|| text.chars().take(200).collect(), |e| e.detail),
                expected_seq: None,
                seq: None,
            }
        });
        (status, body)
    }

    fn classify(status: StatusCode, r: &UploadRefusal, wait: Duration) -> Failure {
        let what = format!("{}: {}", r.error, r.detail);
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            Failure::SlowDown(wait, what)
        } else if status.is_server_error() {
            Failure::Unreachable(format!("hub answered {status}: {what}"))
        } else {
            Failure::Refused(what)
        }
    }

    async fn learn_hub_seq(&mut self, journal_id: &str) -> Result<u64, Failure> {
        let resp = self
            .client
            .get(self.url("/v1/sync/state"))
            .bearer_auth(&self.cred.credential)
            .send()
            .await
            .map_err(|e| Failure::Unreachable(error_chain(&e)))?;
        if !resp.status().is_success() {
            let wait = retry_after(&resp);
            let (status, r) = Link::refusal(resp).await;
            return Err(Link::classify(status, &r, wait));
        }
        let st: TillState = resp.json().await.map_err(|e| Failure::Unreachable(format!("reading sync state: {e}")))?;
        if let Some(id) = st.journal_id
            && id.to_string() != journal_id
        {
            return Err(Failure::Refused(format!(
                "journal_mismatch: the hub holds journal {id} for this till, but this journal is {journal_id}"
            )));
        }
        self.hub_seq = Some(st.hub_seq);
        Ok(st.hub_seq)
    }

    async fn round(&mut self, state: &Arc<AgentState>, cfg: &SyncConfig, heartbeat: bool) -> Result<Round, Failure> {
        let journal_id = state.journal.identity().journal_id;
        let js = read_journal(state, |reads| reads.upload_backlog()).await?;
        let hub_seq = match self.hub_seq {
            Some(s) => s,
            None => self.learn_hub_seq(&journal_id.to_string()).await?,
        };
        if hub_seq > js.last_seq {
            return Err(Failure::Refused(format!(
                "hub_ahead: the hub holds seq {hub_seq} of this till but this journal ends at seq {}; the data dir \
                 was restored from an older backup (see docs/OPERATIONS.md, \"Restore\")",
                js.last_seq
            )));
        }
        if hub_seq == js.last_seq && !heartbeat {
            return Ok(Round::Idle);
        }
        let (limit, max_bytes) = (cfg.batch_events, cfg.batch_bytes);
        let events = match self.prefetched.take() {
            Some((after, page)) if after == hub_seq && !page.is_empty() => page,
            _ => upload_page(state, hub_seq, limit, max_bytes).await?,
        };
        let req = UploadRequest {
            journal_id,
            agent_version: crate::version::VERSION.to_owned(),
            // What will still be waiting once this batch is in (more may have been journaled since `js` was read).
            backlog: js.last_seq.saturating_sub(events.last().map_or(hub_seq, |e| e.seq)),
            oldest_unsynced_age_s: js.oldest_unsynced_age_s,
            last_seq: js.last_seq.max(events.last().map_or(0, |e| e.seq)),
            events,
        };
        let last_sent = req.events.last().map(|e| e.seq);
        metrics::histogram!("storesync_agent_upload_batch_events").record(req.events.len() as f64);
        let send = self.client.post(self.url("/v1/sync/upload")).bearer_auth(&self.cred.credential).json(&req).send();
        // While the hub ingests this batch, read the next one (reads only; it is used only if the hub acknowledges
        // exactly through this batch, so exactly-once does not depend on it).
        let prefetch = async {
            match last_sent {
                Some(after) if after < js.last_seq => Some((after, upload_page(state, after, limit, max_bytes).await)),
                _ => None,
            }
        };
        let (resp, prefetched) = tokio::join!(send, prefetch);
        self.prefetched = match prefetched {
            Some((after, Ok(page))) => Some((after, page)),
            _ => None,
        };
        let resp = resp.map_err(|e| Failure::Unreachable(error_chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            let wait = retry_after(&resp);
            let (status, r) = Link::refusal(resp).await;
            if r.error == "seq_gap"
                && let Some(expected) = r.expected_seq
            {
                tracing::info!(expected_seq = expected, "hub expects an earlier seq; resending from there");
                self.hub_seq = Some(expected.saturating_sub(1));
                return Ok(Round::More);
            }
            // Whatever went wrong, ask the hub where it stands before the next attempt.
            self.hub_seq = None;
            return Err(Link::classify(status, &r, wait));
        }
        let ack: UploadAck = resp.json().await.map_err(|e| Failure::Unreachable(format!("reading the ack: {e}")))?;
        if !ack.quarantined.is_empty() {
            // Stored and acknowledged, so never resent; head office has to upgrade the hub or correct them.
            tracing::warn!(seqs = ?ack.quarantined, "the hub quarantined journal entries it cannot process");
        }
        self.acknowledge(state, &req.events, ack, js.last_seq).await?;
        let acked = self.hub_seq.unwrap_or(0);
        Ok(if acked >= js.last_seq || last_sent.is_none() { Round::Drained } else { Round::More })
    }

    /// One CRDT sync session with the hub: exchange automerge sync messages until neither side has anything to
    /// say (bounded), switching to the hub's epoch when told to.
    async fn doc_session(&mut self, state: &Arc<AgentState>) -> Result<(), Failure> {
        let j = &state.journal;
        let internal = |e: crate::journal::AppendError| Failure::Refused(format!("store document: {e}"));
        j.doc_sync_begin().await.map_err(internal)?;
        let mut installed = false;
        for _ in 0..MAX_DOC_ROUNDS {
            let msg = j.doc_sync_generate().await.map_err(internal)?;
            let sent = msg.is_some();
            let resp = self
                .client
                .post(self.url("/v1/sync/doc"))
                .bearer_auth(&self.cred.credential)
                .header(EPOCH_HEADER, j.epoch().to_string())
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(msg.unwrap_or_default())
                .send()
                .await
                .map_err(|e| Failure::Unreachable(error_chain(&e)))?;
            match resp.status() {
                StatusCode::OK => {
                    let bytes = resp.bytes().await.map_err(|e| Failure::Unreachable(error_chain(&e)))?;
                    j.doc_sync_receive(bytes.to_vec()).await.map_err(internal)?;
                }
                StatusCode::NO_CONTENT if !sent => return Ok(()),
                StatusCode::NO_CONTENT => {}
                _ => {
                    let wait = retry_after(&resp);
                    let (status, r) = Link::refusal(resp).await;
                    if r.error == "epoch_mismatch" && !installed {
                        self.install_snapshot(state).await?;
                        installed = true;
                        j.doc_sync_begin().await.map_err(internal)?;
                        continue;
                    }
                    return Err(Link::classify(status, &r, wait));
                }
            }
        }
        tracing::debug!(rounds = MAX_DOC_ROUNDS, "document sync session ended at its round limit");
        Ok(())
    }

    /// Fetches the hub's current epoch snapshot and installs it.
    async fn install_snapshot(&mut self, state: &Arc<AgentState>) -> Result<(), Failure> {
        let resp = self
            .client
            .get(self.url("/v1/sync/snapshot"))
            .bearer_auth(&self.cred.credential)
            .send()
            .await
            .map_err(|e| Failure::Unreachable(error_chain(&e)))?;
        if !resp.status().is_success() {
            let wait = retry_after(&resp);
            let (status, r) = Link::refusal(resp).await;
            return Err(Link::classify(status, &r, wait));
        }
        let snap: EpochSnapshot =
            resp.json().await.map_err(|e| Failure::Unreachable(format!("reading the snapshot: {e}")))?;
        let doc = match &snap.doc {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| Failure::Refused(format!("bad_snapshot: {e}")))?,
            None => storesync_shared::crdt::genesis().save(),
        };
        let cut = snap.cuts.get(&self.cred.till_id).copied().unwrap_or(0);
        tracing::info!(epoch = snap.epoch, cut, bytes = doc.len(), "switching to the hub's epoch");
        state
            .journal
            .install_epoch(snap.epoch, cut, doc)
            .await
            .map_err(|e| Failure::Refused(format!("installing epoch {}: {e}", snap.epoch)))
    }

    /// Marks entries synced up to the hub's acknowledgement, after checking it names our own entry.
    async fn acknowledge(
        &mut self,
        state: &Arc<AgentState>,
        sent: &[JournalEvent],
        ack: UploadAck,
        local_last: u64,
    ) -> Result<(), Failure> {
        if ack.acked_through > local_last {
            self.hub_seq = None;
            return Err(Failure::Refused(format!(
                "hub_ahead: the hub acknowledged seq {} but this journal ends at seq {local_last}",
                ack.acked_through
            )));
        }
        if ack.acked_through == 0 {
            self.hub_seq = Some(0);
            return Ok(());
        }
        let local_hash = match sent.iter().find(|e| e.seq == ack.acked_through) {
            Some(e) => e.hash.clone(),
            None => {
                let seq = ack.acked_through;
                read_journal(state, move |reads| reads.page(seq - 1, 1))
                    .await?
                    .first()
                    .map(|e| e.hash.clone())
                    .unwrap_or_default()
            }
        };
        if local_hash != ack.last_hash {
            self.hub_seq = None;
            return Err(Failure::Refused(format!(
                "fork: the hub's entry at seq {} differs from this journal's",
                ack.acked_through
            )));
        }
        state
            .journal
            .mark_synced(ack.acked_through, ack.last_hash)
            .await
            .map_err(|e| Failure::Refused(format!("recording the acknowledgement: {e}")))?;
        self.hub_seq = Some(ack.acked_through);
        Ok(())
    }
}

fn set_status(state: &AgentState, f: impl FnOnce(&mut crate::SyncStatus)) {
    if let Ok(mut s) = state.sync.lock() {
        f(&mut s);
    }
}

/// Runs a journal read on the blocking pool.
async fn read_journal<R: Send + 'static>(
    state: &AgentState,
    f: impl FnOnce(&ReadPool) -> anyhow::Result<R> + Send + 'static,
) -> Result<R, Failure> {
    let reads = state.journal.reads().clone();
    tokio::task::spawn_blocking(move || f(&reads))
        .await
        .map_err(|e| Failure::Refused(format!("internal: {e}")))?
        .map_err(|e| Failure::Refused(format!("reading the journal: {e:#}")))
}

/// An error and all its sources, `: `-separated (reqwest's own Display hides the cause).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// Marks every `sync-now` ticket up to `ticket` as served.
fn serve_ticket(state: &AgentState, ticket: u64) {
    state.sync_served.send_if_modified(|served| {
        let moved = ticket > *served;
        *served = (*served).max(ticket);
        moved
    });
}

/// Loads the credential and checks it names this journal's till.
fn connect(state: &AgentState, cfg: &SyncConfig) -> anyhow::Result<Option<Link>> {
    let dir = state.data_dir.as_path();
    let Some(cred) = credential::load(dir)? else { return Ok(None) };
    let id = state.journal.identity();
    if cred.store_id != id.store_id || cred.till_id != id.till_id {
        anyhow::bail!(
            "the credential is for store {} till {}, but this journal is store {} till {}",
            cred.store_id,
            cred.till_id,
            id.store_id,
            id.till_id
        );
    }
    let client = credential::http_client(dir, cfg.request_timeout)?;
    Ok(Some(Link { cred, client, hub_seq: None, prefetched: None }))
}

/// Runs until `shutdown`: uploads whatever the hub does not hold yet, whenever it can.
pub async fn run(state: Arc<AgentState>, cfg: SyncConfig, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(cfg.min_backoff, cfg.max_backoff);
    let mut link: Option<Link> = None;
    let mut last_report = tokio::time::Instant::now() - cfg.heartbeat;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let Some(l) = link.as_mut() else {
            match connect(&state, &cfg) {
                Ok(Some(l)) => {
                    tracing::info!(hub = %l.cred.hub_url, "till is enrolled; syncing with the hub");
                    set_status(&state, |s| s.hub_url = Some(l.cred.hub_url.clone()));
                    link = Some(l);
                    continue;
                }
                Ok(None) => serve_ticket(&state, state.sync_requested.load(std::sync::atomic::Ordering::SeqCst)),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot use the till credential");
                    set_status(&state, |s| s.last_error = Some(format!("{e:#}")));
                }
            }
            // Not enrolled: look again every few seconds, at a sync-now, or when a new event arrives, but then at
            // most once a second (every sale wakes this task; reading the credential file per sale is waste).
            let checked = tokio::time::Instant::now();
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = state.sync_wake.notified() => {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = state.sync_now.notified() => {}
                        () = tokio::time::sleep_until(checked + Duration::from_secs(1)) => {}
                    }
                }
                () = state.sync_now.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            continue;
        };
        // A pending sync-now forces a full round: upload, heartbeat and document session.
        let ticket = state.sync_requested.load(std::sync::atomic::Ordering::SeqCst);
        let forced = ticket > *state.sync_served.borrow();
        let heartbeat = forced || last_report.elapsed() >= cfg.heartbeat;
        let outcome = tokio::select! {
            () = shutdown.cancelled() => break,
            r = async {
                let started = std::time::Instant::now();
                let round = l.round(&state, &cfg, heartbeat).await;
                metrics::histogram!("storesync_agent_sync_round_duration_seconds").record(started.elapsed().as_secs_f64());
                let round = round?;
                // Once the journal is across, bring the store document up to date both ways.
                if matches!(round, Round::Drained) {
                    l.doc_session(&state).await?;
                }
                Ok(round)
            } => r,
        };
        let wait = match outcome {
            Ok(Round::Idle) => None,
            Ok(round) => {
                backoff.reset();
                last_report = tokio::time::Instant::now();
                set_status(&state, |s| {
                    s.set_hub(HubReach::Reachable);
                    s.last_sync_at = Some(OffsetDateTime::now_utc());
                    s.last_error = None;
                });
                match round {
                    Round::More => continue,
                    Round::Drained | Round::Idle => None,
                }
            }
            Err(Failure::Unreachable(e)) => {
                metrics::counter!("storesync_agent_sync_failures_total", "kind" => "unreachable").increment(1);
                let d = backoff.delay();
                tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "hub unreachable; events stay queued");
                set_status(&state, |s| {
                    s.set_hub(HubReach::Unreachable);
                    s.last_error = Some(e);
                });
                Some(d)
            }
            Err(Failure::SlowDown(after, e)) => {
                // Not a failure: the hub answered and asked for a pause; the status stays as it was (reachable,
                // and no error a member of staff would be told to report).
                metrics::counter!("storesync_agent_sync_slow_downs_total").increment(1);
                let d = slow_down_delay(after, backoff.grow(), cfg.max_backoff, &mut rand::rng());
                tracing::info!(error = %e, retry_after_s = after.as_secs(), retry_in_ms = d.as_millis() as u64,
                               "hub asked to slow down; retrying later");
                set_status(&state, |s| s.set_hub(HubReach::Reachable));
                Some(d)
            }
            Err(Failure::Refused(e)) => {
                metrics::counter!("storesync_agent_sync_failures_total", "kind" => "refused").increment(1);
                let d = backoff.delay();
                tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "hub refused the upload");
                set_status(&state, |s| {
                    s.set_hub(HubReach::Reachable);
                    s.last_error = Some(e);
                });
                Some(d)
            }
        };
        serve_ticket(&state, ticket);
        match wait {
            // Back off: a new sale does not cut the wait short, a sync-now does.
            Some(d) => tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(d) => {}
                () = state.sync_now.notified() => {}
            },
            // Drained: wake for new events, a sync-now, or the next heartbeat.
            None => {
                let until_report = cfg.heartbeat.saturating_sub(last_report.elapsed());
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = state.sync_wake.notified() => {
                        // Let a burst of sales gather into one batch.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    () = state.sync_now.notified() => {}
                    () = tokio::time::sleep(until_report) => {}
                }
            }
        }
    }
    tracing::debug!("sync task stopped");
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;

    use super::*;

    #[test]
    fn a_slow_down_waits_retry_after_plus_jitter_spread_by_the_window_and_never_past_the_cap() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // (Retry-After, window, cap) → every delay lies in [lo, hi], and the draws cover that range.
        for (after, window, cap, lo, hi) in [
            (s(1), ms(250), s(60), s(1), s(2)), // first slow-down: spread over Retry-After itself
            (s(1), s(8), s(60), s(1), s(9)),    // the fourth in a row: spread over the window
            (s(5), s(1), s(60), s(5), s(10)),
            (s(50), s(50), s(60), s(50), s(60)),    // the cap cuts the jitter
            (s(600), ms(250), s(60), s(60), s(60)), // a hub asking for more than the cap gets the cap
            (s(0), ms(0), s(60), s(0), s(0)),
        ] {
            let draws: Vec<Duration> = (0..2000).map(|_| slow_down_delay(after, window, cap, &mut rng)).collect();
            let (min, max) = (*draws.iter().min().unwrap(), *draws.iter().max().unwrap());
            assert!(min >= lo && max <= hi, "{after:?} {window:?} {cap:?}: {min:?}..{max:?} outside {lo:?}..{hi:?}");
            let span = hi - lo;
            assert!(max - min >= span * 9 / 10, "{after:?} {window:?}: jitter covers the range: {min:?}..{max:?}");
        }
    }

    #[test]
    fn the_backoff_window_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(1));
        let windows: Vec<u128> = (0..5).map(|_| b.grow().as_millis()).collect();
        assert_eq!(windows, [250, 500, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.grow(), Duration::from_millis(250));
    }
}
