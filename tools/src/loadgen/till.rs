//! One simulated till: its hash-chained journal (kept serialized: a 2,000-store storm holds a million entries),
//! its upload loop, and its store-document session, each doing what agent/src/sync.rs does.
//!
//! - **Upload**: at (re)connection `GET /v1/sync/state`, then runs of at most `batch` consecutive entries from the
//!   hub's `hub_seq + 1`, marking them acknowledged only through `acked_through` and only if the hub's
//!   `last_hash` is this journal's hash at that seq. `seq_gap` resends from `expected_seq`.
//! - **Pauses**: 429/503 with `Retry-After` wait [`slow_down_delay`] (the agent's own function); a connection
//!   error moves the till to the next hub URL and waits the agent's capped exponential backoff with full jitter;
//!   any other refusal waits that backoff too, and [`MAX_FAILURES`] in a row make the till give up (the run then
//!   fails its verification).
//! - **Document**: once drained, the journal's stock movements since the last fold become one automerge change
//!   on this till's own counters, then automerge sync rounds with `POST /v1/sync/doc` until the hub has nothing
//!   to say; `epoch_mismatch` installs the hub's snapshot and re-applies the movements after this till's cut.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::sync::{Message, State, SyncDoc as _};
use automerge::transaction::CommitOptions;
use automerge::{ActorId, Automerge};
use base64::Engine as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use storesync_agent::sync::{Backoff, slow_down_delay};
use storesync_shared::crdt;
use storesync_shared::wire::{EPOCH_HEADER, EpochSnapshot, TillState, UploadAck, UploadRequest};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use storesync_agent::sync::error_chain;

use super::hubs::{Hubs, Kind, Stats, refusal};
use crate::journal::{Shop, chain_from, stock_effect};

/// Refusals in a row (slow-downs do not count) after which a till gives up.
pub(crate) const MAX_FAILURES: u32 = 30;
/// The most message exchanges of one document session (agent/src/sync.rs `MAX_DOC_ROUNDS`).
const MAX_DOC_ROUNDS: usize = 32;
/// The agent's first retry delay.
const MIN_BACKOFF: Duration = Duration::from_millis(250);

/// What every till task shares.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) hubs: Hubs,
    pub(crate) stats: Arc<Stats>,
    pub(crate) shop: Arc<Shop>,
    pub(crate) batch: usize,
    pub(crate) retry_cap: Duration,
    pub(crate) doc_sync: bool,
    pub(crate) stop: CancellationToken,
}

/// Why a till stopped short.
#[derive(Debug)]
pub(crate) enum Stopped {
    /// The run was cancelled (its patience ran out).
    Cancelled,
    /// [`MAX_FAILURES`] refusals in a row; the last one.
    GaveUp(String),
}

/// A simulated till.
pub(crate) struct SimTill {
    pub(crate) store: String,
    pub(crate) till: String,
    credential: String,
    journal_id: Uuid,
    /// The hub this till talks to now (an index into [`Hubs`]).
    hub: usize,
    /// Journal entries as JSON, `[seq - 1]`.
    events: Vec<Box<[u8]>>,
    ids: Vec<Uuid>,
    hashes: Vec<String>,
    /// Each entry's stock movement, `(SKU index, delta)`.
    effects: Vec<Box<[(u16, i32)]>>,
    /// Earlier sales lines a return may take back.
    sold: Vec<(usize, i64)>,
    rng: StdRng,
    /// The `occurred_at` of the next entry.
    clock: time::OffsetDateTime,
    /// The hub holds this till's journal through this seq (as last learned); `None` before asking.
    hub_seq: Option<u64>,
    doc: Automerge,
    sync: State,
    epoch: u64,
    /// Entries folded into the document (their movements are in this till's counters).
    folded: u64,
    own_keys: HashSet<String>,
    backoff: Backoff,
}

impl std::fmt::Debug for SimTill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimTill").field("store", &self.store).field("till", &self.till).finish_non_exhaustive()
    }
}

impl SimTill {
    pub(crate) fn new(store: String, till: String, credential: String, hub: usize, seed: u64, cap: Duration) -> Self {
        let start = time::macros::datetime!(2026-11-26 08:00 +01:00);
        SimTill {
            store,
            till,
            credential,
            journal_id: Uuid::new_v4(),
            hub,
            events: Vec::new(),
            ids: Vec::new(),
            hashes: Vec::new(),
            effects: Vec::new(),
            sold: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            clock: start,
            hub_seq: None,
            doc: crdt::genesis().with_actor(ActorId::random()),
            sync: State::new(),
            epoch: 0,
            folded: 0,
            own_keys: HashSet::new(),
            backoff: Backoff::new(MIN_BACKOFF, cap),
        }
    }

    /// The last seq journaled.
    pub(crate) fn last_seq(&self) -> u64 {
        self.events.len() as u64
    }

    pub(crate) fn ids(&self) -> &[Uuid] {
        &self.ids
    }

    pub(crate) fn hashes(&self) -> &[String] {
        &self.hashes
    }

    /// Journals `n` more entries of the shop's mix.
    ///
    /// # Errors
    /// An entry the shared event rules refuse (a bug in [`Shop`]).
    pub(crate) fn journal(&mut self, shop: &Shop, n: usize) -> anyhow::Result<()> {
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            self.clock += time::Duration::seconds(self.rng.random_range(5..120));
            entries.push(shop.next_entry(&mut self.rng, &mut self.sold, self.clock));
        }
        let prev =
            self.hashes.last().cloned().unwrap_or_else(|| storesync_shared::genesis_hash(&self.store, &self.till));
        let index: BTreeMap<&str, u16> =
            shop.catalogue.iter().enumerate().map(|(i, (sku, _))| (sku.as_str(), i as u16)).collect();
        for e in chain_from(&self.store, &self.till, self.last_seq() + 1, &prev, entries) {
            let effect: Vec<(u16, i32)> = stock_effect(&e)
                .map_err(|err| anyhow::anyhow!("generated entry {}: {err}", e.seq))?
                .into_iter()
                .map(|(sku, d)| (index.get(sku.as_str()).copied().unwrap_or(u16::MAX), d as i32))
                .collect();
            self.effects.push(effect.into_boxed_slice());
            self.ids.push(e.event_id);
            self.hashes.push(e.hash.clone());
            self.events.push(serde_json::to_vec(&e)?.into_boxed_slice());
        }
        Ok(())
    }

    /// The sum of the stock movements of entries `(after, through]`, by SKU index.
    pub(crate) fn movements(&self, after: u64, through: u64) -> BTreeMap<u16, i64> {
        let mut out = BTreeMap::new();
        for effect in self.effects.iter().take(through as usize).skip(after as usize) {
            for (sku, d) in effect.iter() {
                *out.entry(*sku).or_insert(0) += i64::from(*d);
            }
        }
        out.retain(|_, d| *d != 0);
        out
    }

    /// Whether the hub holds everything journaled.
    pub(crate) fn drained(&self) -> bool {
        self.hub_seq == Some(self.last_seq())
    }

    /// The body of an upload of entries `from..=through` (the wire's [`UploadRequest`], with the entries spliced
    /// in as they were serialized when journaled).
    pub(crate) fn upload_body(&self, from: u64, through: u64) -> anyhow::Result<Vec<u8>> {
        let head = UploadRequest {
            journal_id: self.journal_id,
            agent_version: concat!("loadgen-", env!("CARGO_PKG_VERSION")).into(),
            backlog: self.last_seq().saturating_sub(through),
            oldest_unsynced_age_s: 0,
            last_seq: self.last_seq(),
            events: Vec::new(),
        };
        let events = self.events.get(from.saturating_sub(1) as usize..through as usize).unwrap_or(&[]);
        splice_events(&head, events)
    }

    fn next_hub(&mut self, hubs: &Hubs) {
        self.hub = (self.hub + 1) % hubs.len().max(1);
    }

    /// Waits `d` unless the run stops first.
    async fn pause(ctx: &Ctx, d: Duration) -> Result<(), Stopped> {
        tokio::select! {
            () = ctx.stop.cancelled() => Err(Stopped::Cancelled),
            () = tokio::time::sleep(d) => Ok(()),
        }
    }

    /// After a refusal or a connection failure: counts it, fails over on a connection failure, and waits the
    /// backoff; gives up after [`MAX_FAILURES`] in a row.
    async fn failed(&mut self, ctx: &Ctx, kind: Kind, detail: &str, failures: &mut u32) -> Result<(), Stopped> {
        if matches!(kind, Kind::Connect | Kind::Timeout) {
            self.next_hub(&ctx.hubs);
        }
        *failures += 1;
        if *failures >= MAX_FAILURES {
            return Err(Stopped::GaveUp(format!("{}: {detail}", kind.label())));
        }
        let d = self.backoff.delay();
        Self::pause(ctx, d).await
    }

    async fn slow_down(&mut self, ctx: &Ctx, wait: Duration) -> Result<(), Stopped> {
        let d = slow_down_delay(wait, self.backoff.grow(), ctx.retry_cap, &mut self.rng);
        Self::pause(ctx, d).await
    }

    /// `GET path` with this till's credential; a refusal (with its `Retry-After`) or a failed connection comes
    /// back classified.
    async fn get(&self, ctx: &Ctx, path: &str) -> Result<reqwest::Response, (Kind, String, Duration)> {
        let resp = ctx
            .hubs
            .client
            .get(ctx.hubs.url(self.hub, path))
            .bearer_auth(&self.credential)
            .send()
            .await
            .map_err(|e| (Kind::of_send_error(&e), error_chain(&e), Duration::ZERO))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let (kind, _, wait) = refusal(resp).await;
        Err((kind, format!("GET {path}"), wait))
    }

    /// `GET /v1/sync/state`, as the agent does when it (re)connects.
    async fn learn_hub_seq(&mut self, ctx: &Ctx) -> Result<u64, (Kind, String, Duration)> {
        let resp = self.get(ctx, "/v1/sync/state").await?;
        let st: TillState =
            resp.json().await.map_err(|e| (Kind::BadAnswer, format!("sync state: {e}"), Duration::ZERO))?;
        if st.journal_id.is_some_and(|id| id != self.journal_id) {
            let detail = format!("the hub holds journal {:?} for this till", st.journal_id);
            return Err((Kind::BadAnswer, detail, Duration::ZERO));
        }
        Ok(st.hub_seq)
    }

    /// Uploads until the hub holds every journaled entry; on `reconnect` it first asks where the hub stands.
    pub(crate) async fn drain(&mut self, ctx: &Ctx, reconnect: bool) -> Result<(), Stopped> {
        if reconnect {
            self.hub_seq = None;
        }
        let mut failures = 0;
        let mut batch_started: Option<Instant> = None;
        loop {
            if ctx.stop.is_cancelled() {
                return Err(Stopped::Cancelled);
            }
            let hub_seq = match self.hub_seq {
                Some(s) => s,
                None => match self.learn_hub_seq(ctx).await {
                    Ok(s) => {
                        self.hub_seq = Some(s);
                        s
                    }
                    Err((kind, detail, wait)) => {
                        ctx.stats.count(&kind, None);
                        ctx.stats.example(&kind, &detail);
                        if matches!(kind, Kind::SlowDown { .. }) {
                            self.slow_down(ctx, wait).await?;
                        } else {
                            self.failed(ctx, kind, &detail, &mut failures).await?;
                        }
                        continue;
                    }
                },
            };
            if hub_seq >= self.last_seq() {
                if hub_seq > self.last_seq() {
                    return Err(Stopped::GaveUp(format!("the hub holds seq {hub_seq}, the journal ends earlier")));
                }
                return Ok(());
            }
            let through = self.last_seq().min(hub_seq + ctx.batch as u64);
            let body = self.upload_body(hub_seq + 1, through).map_err(|e| Stopped::GaveUp(format!("{e:#}")))?;
            let sent = Instant::now();
            batch_started.get_or_insert(sent);
            let res = ctx
                .hubs
                .client
                .post(ctx.hubs.url(self.hub, "/v1/sync/upload"))
                .bearer_auth(&self.credential)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await;
            let resp = match res {
                Ok(r) => r,
                Err(e) => {
                    let (kind, detail) = (Kind::of_send_error(&e), error_chain(&e));
                    ctx.stats.count(&kind, Some(sent));
                    ctx.stats.example(&kind, &detail);
                    self.hub_seq = None;
                    self.failed(ctx, kind, &detail, &mut failures).await?;
                    continue;
                }
            };
            if !resp.status().is_success() {
                let (kind, expected, wait) = refusal(resp).await;
                ctx.stats.count(&kind, Some(sent));
                match kind {
                    Kind::SlowDown { .. } => self.slow_down(ctx, wait).await?,
                    Kind::SeqGap if expected.is_some_and(|e| e >= 1) => {
                        self.hub_seq = expected.map(|e| e - 1);
                    }
                    other => {
                        self.hub_seq = None;
                        let detail = format!("upload of {}..={through}", hub_seq + 1);
                        self.failed(ctx, other, &detail, &mut failures).await?;
                    }
                }
                continue;
            }
            let ack: UploadAck = match resp.json().await {
                Ok(a) => a,
                Err(e) => {
                    let detail = format!("reading the ack: {}", error_chain(&e));
                    ctx.stats.count(&Kind::BadAnswer, Some(sent));
                    ctx.stats.example(&Kind::BadAnswer, &detail);
                    self.hub_seq = None;
                    self.failed(ctx, Kind::BadAnswer, &detail, &mut failures).await?;
                    continue;
                }
            };
            let ours = ack.acked_through.checked_sub(1).and_then(|i| self.hashes.get(i as usize));
            let hash_ok = match ours {
                Some(h) => *h == ack.last_hash,
                None => ack.acked_through == 0,
            };
            if ack.acked_through > self.last_seq() || !hash_ok {
                ctx.stats.count(&Kind::BadAnswer, Some(sent));
                self.hub_seq = None;
                let detail = format!("ack through {} with hash {}", ack.acked_through, ack.last_hash);
                ctx.stats.example(&Kind::BadAnswer, &detail);
                self.failed(ctx, Kind::BadAnswer, &detail, &mut failures).await?;
                continue;
            }
            let newly = ack.acked_through.saturating_sub(hub_seq);
            ctx.stats.uploaded(sent, batch_started.take(), newly);
            self.hub_seq = Some(ack.acked_through);
            self.backoff.reset();
            failures = 0;
        }
    }

    /// Folds the movements of entries after the last fold into one change on this till's counters.
    fn fold(&mut self, shop: &Shop) -> anyhow::Result<()> {
        let through = self.last_seq();
        let deltas: BTreeMap<String, i64> = self
            .movements(self.folded, through)
            .into_iter()
            .filter_map(|(i, d)| shop.catalogue.get(usize::from(i)).map(|(sku, _)| (sku.clone(), d)))
            .collect();
        if !deltas.is_empty() {
            let stock = crdt::root_map(&self.doc, crdt::STOCK).ok_or_else(|| anyhow::anyhow!("no stock map"))?;
            let mut tx = self.doc.transaction();
            crdt::apply_stock_known(&mut tx, &stock, &self.till, &deltas, &mut self.own_keys)?;
            tx.commit_with(CommitOptions::default().with_message(format!("journal {}..{through}", self.folded + 1)));
        }
        self.folded = through;
        Ok(())
    }

    /// One document session, retried after slow-downs and failures until it completes.
    pub(crate) async fn doc_sync(&mut self, ctx: &Ctx) -> Result<(), Stopped> {
        self.fold(&ctx.shop).map_err(|e| Stopped::GaveUp(format!("folding: {e:#}")))?;
        let mut failures = 0;
        loop {
            if ctx.stop.is_cancelled() {
                return Err(Stopped::Cancelled);
            }
            match self.doc_session(ctx).await {
                Ok(()) => {
                    self.backoff.reset();
                    return Ok(());
                }
                Err((Kind::SlowDown { .. }, _, wait)) => self.slow_down(ctx, wait).await?,
                Err((kind, detail, _)) => self.failed(ctx, kind, &detail, &mut failures).await?,
            }
        }
    }

    async fn doc_session(&mut self, ctx: &Ctx) -> Result<(), (Kind, String, Duration)> {
        let fail = |kind: Kind, detail: String| (kind, detail, Duration::ZERO);
        // Forget what an interrupted session had in flight, as the agent does.
        self.sync = State::decode(&self.sync.encode()).unwrap_or_else(|_| State::new());
        let mut installed = false;
        for _ in 0..MAX_DOC_ROUNDS {
            let msg = self.doc.generate_sync_message(&mut self.sync).map(Message::encode);
            let sent_msg = msg.is_some();
            let sent = Instant::now();
            let resp = ctx
                .hubs
                .client
                .post(ctx.hubs.url(self.hub, "/v1/sync/doc"))
                .bearer_auth(&self.credential)
                .header(EPOCH_HEADER, self.epoch.to_string())
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(msg.unwrap_or_default())
                .send()
                .await
                .map_err(|e| {
                    let (kind, detail) = (Kind::of_send_error(&e), error_chain(&e));
                    ctx.stats.count(&kind, Some(sent));
                    ctx.stats.example(&kind, &detail);
                    fail(kind, detail)
                })?;
            match resp.status().as_u16() {
                200 => {
                    let bytes = resp.bytes().await.map_err(|e| fail(Kind::Connect, e.to_string()))?;
                    ctx.stats.doc_round(sent);
                    let m = Message::decode(&bytes).map_err(|e| fail(Kind::BadAnswer, format!("sync message: {e}")))?;
                    self.doc
                        .receive_sync_message(&mut self.sync, m)
                        .map_err(|e| fail(Kind::BadAnswer, format!("applying the hub's message: {e}")))?;
                }
                204 => {
                    ctx.stats.doc_round(sent);
                    if !sent_msg {
                        return Ok(());
                    }
                }
                _ => {
                    let (kind, _, wait) = refusal(resp).await;
                    ctx.stats.count(&kind, Some(sent));
                    if kind == Kind::EpochMismatch && !installed {
                        self.install_snapshot(ctx).await?;
                        installed = true;
                        continue;
                    }
                    return Err((kind, "document sync".into(), wait));
                }
            }
        }
        Ok(())
    }

    /// Installs the hub's epoch snapshot and re-applies this till's movements after its cut.
    async fn install_snapshot(&mut self, ctx: &Ctx) -> Result<(), (Kind, String, Duration)> {
        let bad = |detail: String| (Kind::BadAnswer, detail, Duration::ZERO);
        let resp = self.get(ctx, "/v1/sync/snapshot").await?;
        let snap: EpochSnapshot = resp.json().await.map_err(|e| bad(format!("snapshot: {e}")))?;
        let bytes = match &snap.doc {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| bad(format!("snapshot base64: {e}")))?,
            None => crdt::genesis().save(),
        };
        let cut = snap.cuts.get(&self.till).copied().unwrap_or(0).min(self.folded);
        let effects: BTreeMap<String, i64> = self
            .movements(cut, self.folded)
            .into_iter()
            .filter_map(|(i, d)| ctx.shop.catalogue.get(usize::from(i)).map(|(sku, _)| (sku.clone(), d)))
            .collect();
        let message = format!("journal {}..{} (epoch {})", cut + 1, self.folded, snap.epoch);
        let doc = crdt::rebase_on_snapshot(&bytes, ActorId::random(), &self.till, &effects, &message)
            .map_err(|e| bad(format!("rebasing on the snapshot: {e}")))?;
        let stock = crdt::root_map(&doc, crdt::STOCK).ok_or_else(|| bad("snapshot without stock".into()))?;
        self.own_keys = crdt::writer_keys(&doc, &stock, &self.till);
        self.doc = doc;
        self.sync = State::new();
        self.epoch = snap.epoch;
        Ok(())
    }

    /// Drains, then brings the store document up to date when the run syncs documents.
    pub(crate) async fn sync_all(&mut self, ctx: &Ctx, reconnect: bool) -> Result<(), Stopped> {
        self.drain(ctx, reconnect).await?;
        if ctx.doc_sync {
            self.doc_sync(ctx).await?;
        }
        Ok(())
    }
}

/// `head` (an upload request with no events) serialized, with `events` (serialized [`JournalEvent`]s) as its
/// `events` list.
///
/// # Errors
/// When the serialized head does not end in an empty `events` list (the wire type changed shape).
pub(crate) fn splice_events(head: &UploadRequest, events: &[Box<[u8]>]) -> anyhow::Result<Vec<u8>> {
    const TAIL: &[u8] = b"\"events\":[]}";
    let mut out = serde_json::to_vec(head)?;
    anyhow::ensure!(out.ends_with(TAIL), "UploadRequest no longer serializes `events` last");
    out.truncate(out.len() - 2);
    out.reserve(events.iter().map(|e| e.len() + 1).sum::<usize>() + 2);
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}

/// The entries `from..=through` of `events`, parsed back (for tests).
#[cfg(test)]
fn parse_upload(body: &[u8]) -> UploadRequest {
    serde_json::from_slice(body).unwrap()
}

#[cfg(test)]
mod tests {
    use storesync_shared::wire::JournalEvent;

    use super::*;

    #[test]
    fn an_upload_body_is_the_wire_request_with_exactly_the_entries_asked_for() {
        let shop = Shop::new(6, 10);
        let mut t = SimTill::new("S1".into(), "T1".into(), "sst_x".into(), 0, 3, Duration::from_secs(60));
        t.journal(&shop, 30).unwrap();
        t.journal(&shop, 20).unwrap();
        assert_eq!(t.last_seq(), 50);
        let req = parse_upload(&t.upload_body(11, 25).unwrap());
        assert_eq!((req.journal_id, req.last_seq, req.backlog), (t.journal_id, 50, 25));
        let seqs: Vec<u64> = req.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (11..=25).collect::<Vec<_>>());
        assert_eq!(req.events[0].prev_hash, t.hashes[9], "the second journal() call continues the chain");
        let all: Vec<JournalEvent> = parse_upload(&t.upload_body(1, 50).unwrap()).events;
        let mut prev = storesync_shared::genesis_hash("S1", "T1");
        for e in &all {
            assert_eq!(e.prev_hash, prev);
            prev = e.hash.clone();
        }
        assert!(parse_upload(&t.upload_body(51, 50).unwrap()).events.is_empty(), "an empty run is a heartbeat");
        // The movements the till folds are the entries' stock effects.
        let mut want: BTreeMap<u16, i64> = BTreeMap::new();
        for e in &all[10..25] {
            for (sku, d) in stock_effect(e).unwrap() {
                let i = shop.catalogue.iter().position(|(s, _)| *s == sku).unwrap() as u16;
                *want.entry(i).or_default() += d;
            }
        }
        want.retain(|_, d| *d != 0);
        assert_eq!(t.movements(10, 25), want);
    }
}
