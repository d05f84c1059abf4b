//! Store documents at the hub: automerge sync with tills, head-office writes, and epoch compaction.
//!
//! Design note:
//! - The hub copy of every store's document lives in storage ([`crate::storage::DocStore::doc_load`] / [`crate::storage::DocStore::doc_apply`]): a
//!   snapshot plus the `save_after` chunks written since, folded into a new snapshot every
//!   [`SyncLimits::fold_every`] chunks. Memory holds only a bounded cache ([`SyncLimits::cache_stores`] documents,
//!   least recently used evicted) that catches up from storage before every use: by the chunks written after the
//!   version it holds, or by a full reload when the epoch changed or a fold passed it. So another hub instance may
//!   write the same store; correctness never depends on the cache.
//! - Every write is optimistic: the document is changed in the cache, its chunk is stored by `doc_apply` only if
//!   the store is still at the epoch and version the change was made on. On a conflict (or any error) the cached
//!   document is dropped, reloaded, and the write is retried (at most [`MAX_ATTEMPTS`] times). A failed write
//!   therefore never leaves a change in memory that storage does not have.
//! - One HTTP sync request is one sync round: the hub loads its `sync::State` for (store, till, epoch), receives
//!   the till's message (if any), generates its answer, and stores the chunk and the state in one transaction. Only
//!   `State::encode` (the shared heads) survives between rounds, so "nothing to send" is decided here: no changes,
//!   nothing needed, and the till already has the hub's heads (its message said so, or, for an empty request, the
//!   stored shared heads are the hub's heads).
//! - Epochs: see [`crate::storage::DocStore::compact`]. The new document is `crdt::genesis()` plus one change by a fresh actor that
//!   holds the base counters (journal effects through the cuts plus all head-office movements, computed by storage
//!   from the journal, not from CRDT state) and the prices still in force or scheduled.
//! - Locks: one `std::sync::Mutex` per cached store, taken only on the blocking pool (never across an `.await`);
//!   a write touching several stores locks them in name order.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use automerge::sync::{Message, State, SyncDoc};
use automerge::transaction::CommitOptions;
use automerge::{ActorId, Automerge};
use storesync_shared::crdt;

use crate::storage::{CompactError, DocLoad, DocMeta, DocWrite, EpochRecord, NewMovement, Storage, StorageError};

/// How many times a write is retried after losing an optimistic-concurrency race.
pub const MAX_ATTEMPTS: usize = 8;

/// Bounds of the CRDT sync surface.
#[derive(Debug, Clone, Copy)]
pub struct SyncLimits {
    /// The most bytes of one sync message (a bigger body is refused 413 before it is decoded).
    pub max_message_bytes: usize,
    /// The most bytes a store's stored document may reach; a write past it is refused.
    pub max_doc_bytes: u64,
    /// Compact once the epoch holds more than this many changes...
    pub compact_after_changes: u64,
    /// ...or once the stored document has grown by more than this since the epoch's first document. Load time
    /// grows with the document (automerge 0.12 loads ~2-4 MB/s of history here), so this bounds how long a till
    /// or the hub takes to load a store's document; see docs/BENCHMARKS.md, CRDT section.
    pub compact_after_bytes: u64,
    /// Fold the stored chunks into a new snapshot every this many chunks.
    pub fold_every: u64,
    /// How many store documents the in-memory cache holds.
    pub cache_stores: usize,
}

impl Default for SyncLimits {
    fn default() -> Self {
        SyncLimits {
            max_message_bytes: 8 * 1024 * 1024,
            max_doc_bytes: 32 * 1024 * 1024,
            compact_after_changes: 10_000,
            compact_after_bytes: 512 * 1024,
            fold_every: 1_000,
            cache_stores: 256,
        }
    }
}

/// Why a document operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("the till is in epoch {till}, the hub is in epoch {hub}")]
    EpochMismatch { till: u64, hub: u64 },
    #[error("not a valid automerge sync message: {0}")]
    BadMessage(String),
    #[error("the document would be {size} bytes, more than the {max} allowed")]
    DocumentTooLarge { size: u64, max: u64 },
    #[error("no till of this store is known")]
    UnknownStore,
    /// A till sent a change outside its own stock slot.
    #[error("{0}")]
    Forbidden(String),
    /// The stored document (or the hub's own change to it) is unusable: a bug or corruption, not the client's fault.
    #[error("store document is unusable: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<CompactError> for DocError {
    fn from(err: CompactError) -> Self {
        match err {
            CompactError::UnknownStore => DocError::UnknownStore,
            CompactError::Storage(e) => DocError::Storage(e),
            other => DocError::Corrupt(other.to_string()),
        }
    }
}

struct Cached {
    doc: Automerge,
    meta: DocMeta,
}

type Slot = Arc<Mutex<Option<Cached>>>;

/// The hub's store documents: storage plus a bounded cache.
pub struct Docs {
    storage: Arc<dyn Storage>,
    limits: SyncLimits,
    cache: Mutex<HashMap<String, (Slot, u64)>>,
    tick: AtomicU64,
}

impl std::fmt::Debug for Docs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Docs").field("limits", &self.limits).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a slot dropped nothing storage has; the worst left behind is a stale cache entry,
    // which the next use catches up or reloads.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Loads a document from a snapshot (or genesis) plus chunks, with a fresh actor for the hub's own changes.
fn load_doc(snapshot: Option<&[u8]>, chunks: &[Vec<u8>]) -> Result<Automerge, String> {
    let mut doc = match snapshot {
        Some(bytes) => Automerge::load(bytes).map_err(|e| format!("loading snapshot: {e}"))?,
        None => crdt::genesis(),
    };
    for chunk in chunks {
        doc.load_incremental(chunk).map_err(|e| format!("loading chunk: {e}"))?;
    }
    Ok(doc.with_actor(ActorId::random()))
}

/// Refuses the changes after `before` unless every one only touches `till`'s own stock counters
/// ([`crdt::foreign_op`]).
fn check_own_slot(doc: &Automerge, before: &[automerge::ChangeHash], till: &str) -> Result<(), DocError> {
    match crdt::foreign_op(doc, before, till) {
        None => Ok(()),
        Some(what) => Err(DocError::Forbidden(format!("{what}: a till may only change its own stock counters"))),
    }
}

/// What a write adds to its `DocWrite` besides the document chunk.
#[derive(Debug, Default)]
pub struct Extra {
    pub sync_state: Option<(String, Vec<u8>)>,
    pub movements: Vec<NewMovement>,
}

/// The hub's answer to one sync round.
#[derive(Debug)]
pub struct SyncAnswer {
    /// The encoded sync message for the till, or `None` when the hub has nothing to send.
    pub reply: Option<Vec<u8>>,
    pub meta: DocMeta,
}

impl Docs {
    pub fn new(storage: Arc<dyn Storage>, limits: SyncLimits) -> Docs {
        Docs { storage, limits, cache: Mutex::new(HashMap::new()), tick: AtomicU64::new(0) }
    }

    pub fn limits(&self) -> SyncLimits {
        self.limits
    }

    fn slot(&self, store: &str) -> Slot {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut cache = lock(&self.cache);
        if let Some((slot, used)) = cache.get_mut(store) {
            *used = tick;
            return slot.clone();
        }
        if cache.len() >= self.limits.cache_stores.max(1) {
            let oldest = cache.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                cache.remove(&k);
            }
        }
        let slot: Slot = Arc::new(Mutex::new(None));
        cache.insert(store.to_owned(), (slot.clone(), tick));
        slot
    }

    /// Brings a cached document up to what storage holds.
    fn refresh<'a>(&self, store: &str, slot: &'a mut Option<Cached>) -> Result<&'a mut Cached, DocError> {
        let since = slot.as_ref().map(|c| (c.meta.epoch, c.meta.version));
        match self.storage.doc_load(store, since)? {
            DocLoad::Delta { meta, chunks } if slot.is_some() => {
                if let Some(cached) = slot.as_mut() {
                    for chunk in &chunks {
                        if let Err(e) = cached.doc.load_incremental(chunk) {
                            *slot = None;
                            return Err(DocError::Corrupt(format!("loading chunk: {e}")));
                        }
                    }
                    cached.meta = meta;
                }
            }
            DocLoad::Delta { .. } => return Err(DocError::Corrupt("storage answered a delta to a full load".into())),
            DocLoad::Full { meta, snapshot, chunks } => {
                let doc = load_doc(snapshot.as_deref(), &chunks).map_err(DocError::Corrupt)?;
                *slot = Some(Cached { doc, meta });
            }
        }
        slot.as_mut().ok_or_else(|| DocError::Corrupt("document not loaded".into()))
    }

    /// Reads a store's document as storage holds it now.
    pub fn read<T>(&self, store: &str, f: impl FnOnce(&Automerge, &DocMeta) -> T) -> Result<T, DocError> {
        let slot = self.slot(store);
        let mut guard = lock(&slot);
        let cached = self.refresh(store, &mut guard)?;
        Ok(f(&cached.doc, &cached.meta))
    }

    /// Changes the documents of `stores` (in one storage transaction) with `f`, retrying on conflicts.
    ///
    /// `f` is called once per store per attempt, on the up-to-date document; what it commits is stored. An error
    /// from `f` aborts the whole write and drops the cached documents it may have touched.
    pub fn write<T>(
        &self,
        stores: &[String],
        now: i64,
        mut f: impl FnMut(&str, &mut Automerge, &DocMeta) -> Result<(Extra, T), DocError>,
    ) -> Result<Vec<(T, DocMeta)>, DocError> {
        let mut names: Vec<&String> = stores.iter().collect();
        names.sort();
        names.dedup();
        let slots: Vec<Slot> = names.iter().map(|s| self.slot(s)).collect();
        for _ in 0..MAX_ATTEMPTS {
            let mut guards: Vec<MutexGuard<'_, Option<Cached>>> = slots.iter().map(|s| lock(s)).collect();
            let res = self.attempt(&names, &mut guards, now, &mut f);
            match res {
                Ok(out) => return Ok(out),
                Err(err) => {
                    // Whatever `f` or a failed transaction left in memory is not in storage: forget it.
                    guards.iter_mut().for_each(|g| **g = None);
                    if !matches!(err, DocError::Storage(StorageError::Conflict)) {
                        return Err(err);
                    }
                }
            }
        }
        Err(DocError::Storage(StorageError::Conflict))
    }

    fn attempt<T>(
        &self,
        names: &[&String],
        guards: &mut [MutexGuard<'_, Option<Cached>>],
        now: i64,
        f: &mut impl FnMut(&str, &mut Automerge, &DocMeta) -> Result<(Extra, T), DocError>,
    ) -> Result<Vec<(T, DocMeta)>, DocError> {
        let mut writes = Vec::with_capacity(names.len());
        let mut outs = Vec::with_capacity(names.len());
        for (store, guard) in names.iter().zip(guards.iter_mut()) {
            let cached = self.refresh(store, guard)?;
            let before = cached.doc.get_heads();
            let (extra, out) = f(store, &mut cached.doc, &cached.meta)?;
            let changes = cached.doc.get_changes(&before).len() as u64;
            let chunk = if changes > 0 { cached.doc.save_after(&before) } else { Vec::new() };
            let size = cached.meta.saved_bytes + chunk.len() as u64;
            if size > self.limits.max_doc_bytes {
                return Err(DocError::DocumentTooLarge { size, max: self.limits.max_doc_bytes });
            }
            let fold = (!chunk.is_empty() && cached.meta.chunks + 1 >= self.limits.fold_every.max(1))
                .then(|| cached.doc.save());
            writes.push(DocWrite {
                store: (*store).clone(),
                epoch: cached.meta.epoch,
                base_version: cached.meta.version,
                chunk,
                changes,
                fold,
                sync_state: extra.sync_state,
                movements: extra.movements,
            });
            outs.push(out);
        }
        if writes.iter().all(|w| w.chunk.is_empty() && w.sync_state.is_none() && w.movements.is_empty()) {
            // Nothing to store (a round in which neither side had news): no write transaction at all.
            let metas = guards.iter().map(|g| g.as_ref().map(|c| c.meta).unwrap_or_default());
            return Ok(outs.into_iter().zip(metas).collect());
        }
        let metas = self.storage.doc_apply(&writes, now)?;
        for (w, meta) in writes.iter().zip(&metas) {
            metrics::gauge!("storesync_hub_store_doc_bytes", "store" => w.store.clone()).set(meta.saved_bytes as f64);
        }
        for (guard, meta) in guards.iter_mut().zip(&metas) {
            if let Some(cached) = guard.as_mut() {
                cached.meta = *meta;
            }
        }
        Ok(outs.into_iter().zip(metas).collect())
    }

    /// One sync round with a till: receive its message (`body` empty = none), answer with the hub's.
    pub fn sync_round(
        &self,
        store: &str,
        till: &str,
        till_epoch: u64,
        body: &[u8],
        now: i64,
    ) -> Result<SyncAnswer, DocError> {
        let message =
            if body.is_empty() { None } else { Some(crdt::decode_sync_message(body).map_err(DocError::BadMessage)?) };
        let stores = [store.to_owned()];
        let mut out = self.write(&stores, now, |store, doc, meta| {
            if meta.epoch != till_epoch {
                return Err(DocError::EpochMismatch { till: till_epoch, hub: meta.epoch });
            }
            let stored = self.storage.sync_state(store, till, meta.epoch)?;
            // An unreadable state only costs a bigger Bloom filter: start afresh.
            let mut state = stored.as_deref().and_then(|b| State::decode(b).ok()).unwrap_or_default();
            let their_heads = message.as_ref().map(|m| m.heads.clone());
            if let Some(m) = message.clone() {
                let before = doc.get_heads();
                doc.receive_sync_message(&mut state, m).map_err(|e| DocError::BadMessage(e.to_string()))?;
                check_own_slot(doc, &before, till)?;
            }
            let ours = doc.get_heads();
            let reply = doc.generate_sync_message(&mut state);
            let reply = crdt::reply_if_needed(reply, their_heads.as_deref(), &state.shared_heads, &ours);
            let encoded = state.encode();
            let sync_state = (stored.as_ref() != Some(&encoded)).then(|| (till.to_owned(), encoded));
            let extra = Extra { sync_state, movements: Vec::new() };
            Ok((extra, reply.map(Message::encode)))
        })?;
        let (reply, meta) = out.pop().ok_or_else(|| DocError::Corrupt("no write result".into()))?;
        Ok(SyncAnswer { reply, meta })
    }

    /// Records prices in the documents of `stores`, all in one transaction.
    pub fn set_prices(&self, stores: &[String], prices: &[(String, crdt::Price)], now: i64) -> Result<(), DocError> {
        self.write(stores, now, |_, doc, _| {
            let obj = crdt::root_map(doc, crdt::PRICES).ok_or_else(|| DocError::Corrupt("no prices map".into()))?;
            let mut tx = doc.transaction();
            for (sku, price) in prices {
                crdt::set_price(&mut tx, &obj, sku, price).map_err(|e| DocError::Corrupt(e.to_string()))?;
            }
            tx.commit_with(CommitOptions::default().with_time(now).with_message("head-office prices".to_owned()));
            Ok((Extra::default(), ()))
        })?;
        Ok(())
    }

    /// Records head-office stock movements and adds them to the store document's hub slot, in one transaction.
    pub fn add_movements(&self, store: &str, movements: &[NewMovement], now: i64) -> Result<DocMeta, DocError> {
        let mut deltas: BTreeMap<String, i64> = BTreeMap::new();
        for m in movements {
            *deltas.entry(m.sku.clone()).or_insert(0) += m.delta;
        }
        let mut out = self.write(&[store.to_owned()], now, |_, doc, _| {
            let obj = crdt::root_map(doc, crdt::STOCK).ok_or_else(|| DocError::Corrupt("no stock map".into()))?;
            let mut tx = doc.transaction();
            crdt::apply_stock(&mut tx, &obj, crdt::HUB_WRITER, &deltas)
                .map_err(|e| DocError::Corrupt(e.to_string()))?;
            tx.commit_with(CommitOptions::default().with_time(now).with_message("head-office stock".to_owned()));
            Ok((Extra { sync_state: None, movements: movements.to_vec() }, ()))
        })?;
        out.pop().map(|(_, meta)| meta).ok_or_else(|| DocError::Corrupt("no write result".into()))
    }

    /// Sets head office's escrow registers (`(sku, qty)`) in a store's document, in one transaction. The hub's
    /// `escrow` table is the authority (see `storage/reservations.rs`); this carries it to the tills.
    pub fn set_escrow(&self, store: &str, escrow: &[(String, i64)], now: i64) -> Result<DocMeta, DocError> {
        let mut out = self.write(&[store.to_owned()], now, |_, doc, _| {
            let obj = crdt::root_map(doc, crdt::ESCROW).ok_or_else(|| DocError::Corrupt("no escrow map".into()))?;
            let stale = escrow.iter().any(|(sku, qty)| crdt::escrow_of(doc, &obj, sku, None) != *qty);
            if stale {
                let mut tx = doc.transaction();
                for (sku, qty) in escrow {
                    crdt::set_escrow(&mut tx, &obj, sku, *qty).map_err(|e| DocError::Corrupt(e.to_string()))?;
                }
                tx.commit_with(CommitOptions::default().with_time(now).with_message("head-office escrow".to_owned()));
            }
            Ok((Extra::default(), ()))
        })?;
        out.pop().map(|(_, meta)| meta).ok_or_else(|| DocError::Corrupt("no write result".into()))
    }

    /// Makes the holds in a store's document (`crdt::holds`) exactly `want` (the store's active reservations), in
    /// one transaction; writes nothing when they already are. Answers whether it wrote.
    pub fn set_holds(&self, store: &str, want: &[crdt::Hold], now: i64) -> Result<bool, DocError> {
        let mut out = self.write(&[store.to_owned()], now, |_, doc, _| {
            let obj = crdt::root_map(doc, crdt::ESCROW).ok_or_else(|| DocError::Corrupt("no escrow map".into()))?;
            let have = crdt::holds(doc, &obj, None);
            let put: Vec<&crdt::Hold> = want.iter().filter(|h| !have.contains(h)).collect();
            let gone: Vec<uuid::Uuid> = have
                .iter()
                .filter(|h| !want.iter().any(|w| w.reservation_id == h.reservation_id))
                .map(|h| h.reservation_id)
                .collect();
            if put.is_empty() && gone.is_empty() {
                return Ok((Extra::default(), false));
            }
            let mut tx = doc.transaction();
            for h in put {
                crdt::put_hold(&mut tx, &obj, h).map_err(|e| DocError::Corrupt(e.to_string()))?;
            }
            for id in gone {
                crdt::remove_hold(&mut tx, &obj, id).map_err(|e| DocError::Corrupt(e.to_string()))?;
            }
            tx.commit_with(CommitOptions::default().with_time(now).with_message("head-office holds".to_owned()));
            Ok((Extra::default(), true))
        })?;
        out.pop().map(|(wrote, _)| wrote).ok_or_else(|| DocError::Corrupt("no write result".into()))
    }

    /// Whether a store's epoch is due for compaction: too many changes, or it has grown by more than
    /// `compact_after_bytes` since its first document (so a catalogue whose snapshot alone is big does not compact
    /// after every change).
    pub fn due(&self, meta: &DocMeta) -> bool {
        meta.changes_since_epoch > self.limits.compact_after_changes
            || meta.saved_bytes.saturating_sub(meta.epoch_bytes) > self.limits.compact_after_bytes
    }

    /// Closes the store's epoch and starts the next one (see the module note).
    pub fn compact(&self, store: &str, now: i64) -> Result<EpochRecord, DocError> {
        let slot = self.slot(store);
        let mut guard = lock(&slot);
        let instant = time::OffsetDateTime::from_unix_timestamp(now)
            .map_err(|e| DocError::Corrupt(format!("clock out of range: {e}")))?;
        let now_key = crdt::normalize_instant(instant);
        let res = self.storage.compact(store, now, &mut |input| {
            let doc = load_doc(input.snapshot.as_deref(), &input.chunks)?;
            let prices = crdt::root_map(&doc, crdt::PRICES).map(|p| crdt::all_prices(&doc, &p)).unwrap_or_default();
            let mut fresh = crdt::epoch_doc(ActorId::random(), &input.base, &prices, &now_key, now)
                .map_err(|e| format!("building the epoch document: {e}"))?;
            let (escrow, holds) = crdt::root_map(&doc, crdt::ESCROW)
                .map(|e| (crdt::all_escrow(&doc, &e), crdt::holds(&doc, &e, None)))
                .unwrap_or_default();
            crdt::carry_escrow(&mut fresh, &escrow, &holds, now).map_err(|e| format!("carrying the escrow: {e}"))?;
            Ok(fresh.save())
        });
        *guard = None;
        Ok(res?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;
    use storesync_shared::crdt::Price;
    use storesync_shared::event::EventKind;
    use uuid::Uuid;

    use super::*;
    use crate::storage::sqlite::SqliteStorage;
    use crate::storage::{NewEnrollment, TillId};

    const NOW: i64 = 1_800_000_000;

    fn price(amount: i64, at: &str) -> Price {
        Price { price_minor: amount, currency: "EUR".into(), effective_from: at.into() }
    }

    #[test]
    fn epoch_doc_keeps_the_current_and_future_prices_and_the_base() {
        let prices = BTreeMap::from([
            (
                "A".to_owned(),
                vec![
                    price(1, "2020-01-01T00:00:00Z"),
                    price(2, "2026-01-01T00:00:00Z"),
                    price(3, "2027-01-01T00:00:00Z"),
                ],
            ),
            ("B".to_owned(), vec![price(9, "2028-01-01T00:00:00Z")]),
        ]);
        let base = BTreeMap::from([("A".to_owned(), 7), ("C".to_owned(), -2)]);
        let doc = crdt::epoch_doc(ActorId::random(), &base, &prices, "2026-06-01T00:00:00Z", NOW).unwrap();
        let doc = Automerge::load(&doc.save()).unwrap();
        let kept = crdt::all_prices(&doc, &crdt::root_map(&doc, crdt::PRICES).unwrap());
        assert_eq!(kept["A"], vec![price(2, "2026-01-01T00:00:00Z"), price(3, "2027-01-01T00:00:00Z")]);
        assert_eq!(kept["B"], vec![price(9, "2028-01-01T00:00:00Z")]);
        let stock = crdt::root_map(&doc, crdt::STOCK).unwrap();
        assert_eq!(crdt::all_stock(&doc, &stock, None), base);
        assert_eq!(doc.get_changes(&[]).len(), 2, "genesis plus one change");
        assert_eq!(crdt::root_map(&doc, crdt::STOCK), crdt::root_map(&crdt::genesis(), crdt::STOCK));
    }

    #[test]
    fn compaction_is_due_on_growth_since_the_epoch_not_on_the_snapshot_size() {
        let dir = tempfile::tempdir().unwrap();
        let limits = SyncLimits { compact_after_changes: 100, compact_after_bytes: 1_000, ..SyncLimits::default() };
        let docs = Docs::new(Arc::new(SqliteStorage::open(&dir.path().join("hub.db")).unwrap()), limits);
        let meta = |changes, saved_bytes, epoch_bytes| DocMeta {
            epoch: 1,
            version: 1,
            changes_since_epoch: changes,
            saved_bytes,
            chunks: 0,
            epoch_bytes,
        };
        // A big catalogue's snapshot alone is over the byte limit: not due.
        assert!(!docs.due(&meta(1, 5_000, 4_500)));
        assert!(!docs.due(&meta(1, 5_500, 4_500)));
        assert!(docs.due(&meta(1, 5_501, 4_500)));
        assert!(docs.due(&meta(101, 10, 0)));
        assert!(!docs.due(&meta(100, 1_000, 0)));
    }

    #[test]
    fn journal_effects_resolve_voids_in_the_run_and_before_it() {
        let sale = |sku: &str, qty: i64| {
            json!({"occurred_at": "2026-11-26T14:05:00+01:00", "currency": "EUR",
                   "lines": [{"sku": sku, "qty": qty, "unit_price_minor": 100}],
                   "payments": [{"method": "card", "amount_minor": 100 * qty}]})
        };
        let void = |id: u128| json!({"occurred_at": "2026-11-26T14:06:00+01:00", "voided_event_id": Uuid::from_u128(id), "reason": "x"});
        let earlier = (EventKind::Sale, sale("OLD", 4));
        let run = vec![
            (Uuid::from_u128(1), EventKind::Sale, sale("A", 2)),
            (Uuid::from_u128(2), EventKind::Void, void(1)),
            (Uuid::from_u128(3), EventKind::Sale, sale("A", 1)),
            (Uuid::from_u128(4), EventKind::Void, void(99)),
            (Uuid::from_u128(5), EventKind::Void, void(2)),
        ];
        let got = crdt::journal_effects(run.clone(), |id| (id == Uuid::from_u128(99)).then(|| earlier.clone()));
        assert_eq!(got.unwrap(), BTreeMap::from([("A".to_owned(), -1), ("OLD".to_owned(), 4)]));
        assert_eq!(crdt::effects_of(run).unwrap(), BTreeMap::from([("A".to_owned(), -1)]));
    }

    fn storage(path: &std::path::Path) -> Arc<dyn Storage> {
        Arc::new(SqliteStorage::open(path).unwrap())
    }

    #[test]
    fn two_hub_instances_on_one_database_never_lose_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let till = TillId { store: "S1".into(), till: "T1".into() };
        storage(&path)
            .create_enrollment(&NewEnrollment { code_hash: "c".into(), till, created_at: NOW, expires_at: NOW + 1 })
            .unwrap();
        let limits = SyncLimits { fold_every: 5, ..SyncLimits::default() };
        let instances: Vec<Arc<Docs>> = (0..2).map(|_| Arc::new(Docs::new(storage(&path), limits))).collect();
        std::thread::scope(|scope| {
            for i in 0..4 {
                let docs = instances[i % 2].clone();
                scope.spawn(move || {
                    for _ in 0..10 {
                        let m = NewMovement { sku: "A".into(), delta: 1, reason: "receipt".into() };
                        docs.add_movements("S1", &[m], NOW).unwrap();
                    }
                });
            }
        });
        let fresh = Docs::new(storage(&path), limits);
        let on_hand = |d: &Docs| {
            d.read("S1", |doc, _| crdt::on_hand(doc, &crdt::root_map(doc, crdt::STOCK).unwrap(), "A", None)).unwrap()
        };
        assert_eq!(on_hand(&fresh), 40);
        assert_eq!(on_hand(&instances[0]), 40, "a cached document catches up with the other instance's writes");
        assert_eq!(fresh.storage.movement_totals("S1").unwrap().1, 40);
        let rec = instances[1].compact("S1", NOW).unwrap();
        assert_eq!(rec.base, BTreeMap::from([("A".to_owned(), 40)]));
        assert_eq!(on_hand(&instances[0]), 40, "the other instance reloads the new epoch");
        assert_eq!(instances[0].read("S1", |_, m| m.epoch).unwrap(), 1);
    }

    /// A till's first sync message after it committed one change to its own slot.
    fn a_till_message() -> Vec<u8> {
        let mut till = crdt::genesis().with_actor(ActorId::random());
        let stock = crdt::root_map(&till, crdt::STOCK).unwrap();
        let mut tx = till.transaction();
        crdt::apply_stock(&mut tx, &stock, "T1", &BTreeMap::from([("A".to_owned(), -2)])).unwrap();
        tx.commit();
        till.generate_sync_message(&mut State::new()).map(Message::encode).unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)))]
        /// Protocol fuzzing of the hub's sync handling: arbitrary bytes and mutations of a real till message are
        /// refused or applied, never a panic, and the store's document stays usable. CI runs 64 cases; see
        /// docs/RELIABILITY.md for longer campaigns (`PROPTEST_CASES`).
        #[test]
        fn sync_rounds_survive_arbitrary_and_mutated_messages(
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            byte in proptest::prelude::any::<u8>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let docs = Docs::new(storage(&dir.path().join("hub.db")), SyncLimits::default());
            let _ = docs.sync_round("S1", "T1", 0, &junk, NOW);
            let mut msg = a_till_message();
            let i = at.index(msg.len());
            msg[i] = byte;
            let _ = docs.sync_round("S1", "T1", 0, &msg, NOW);
            let _ = docs.sync_round("S1", "T1", 0, &msg[..i], NOW);
            // Still usable: another till's round is answered, and the document reads.
            docs.sync_round("S1", "T2", 0, &[], NOW).unwrap();
            docs.read("S1", |doc, _| crdt::root_map(doc, crdt::STOCK).is_some()).unwrap();
        }
    }

    /// Head office's escrow reaches a till through the ordinary sync rounds, and survives a compaction.
    #[test]
    fn escrow_reaches_the_tills_and_survives_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let till_id = TillId { store: "S1".into(), till: "T1".into() };
        storage(&path)
            .create_enrollment(&NewEnrollment {
                code_hash: "c".into(),
                till: till_id,
                created_at: NOW,
                expires_at: NOW + 1,
            })
            .unwrap();
        let docs = Docs::new(storage(&path), SyncLimits::default());
        docs.set_escrow("S1", &[("A".into(), 4), ("B".into(), 1)], NOW).unwrap();
        let version = docs.read("S1", |_, m| m.version).unwrap();
        docs.set_escrow("S1", &[("A".into(), 4)], NOW).unwrap();
        assert_eq!(docs.read("S1", |_, m| m.version).unwrap(), version, "an unchanged escrow writes nothing");
        let mut till = crdt::genesis().with_actor(ActorId::random());
        let mut state = State::new();
        for _ in 0..4 {
            let msg = till.generate_sync_message(&mut state).map(Message::encode).unwrap_or_default();
            match docs.sync_round("S1", "T1", 0, &msg, NOW).unwrap().reply {
                Some(reply) => till.receive_sync_message(&mut state, Message::decode(&reply).unwrap()).unwrap(),
                None => break,
            }
        }
        let escrow = crdt::root_map(&till, crdt::ESCROW).unwrap();
        assert_eq!(crdt::all_escrow(&till, &escrow), BTreeMap::from([("A".into(), 4), ("B".into(), 1)]));
        let rec = docs.compact("S1", NOW).unwrap();
        let snap = Automerge::load(&rec.doc).unwrap();
        let escrow = crdt::root_map(&snap, crdt::ESCROW).unwrap();
        assert_eq!(crdt::all_escrow(&snap, &escrow), BTreeMap::from([("A".into(), 4), ("B".into(), 1)]));
    }

    #[test]
    fn a_sync_round_with_nothing_to_say_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let docs = Docs::new(storage(&dir.path().join("hub.db")), SyncLimits::default());
        // A till with the genesis document only: the first answer names the hub's heads, later ones are empty.
        let mut till = crdt::genesis().with_actor(ActorId::random());
        let mut state = State::new();
        let first = docs.sync_round("S1", "T1", 0, &[], NOW).unwrap();
        let reply = Message::decode(&first.reply.unwrap()).unwrap();
        till.receive_sync_message(&mut state, reply).unwrap();
        let msg = till.generate_sync_message(&mut state).map(Message::encode).unwrap_or_default();
        assert!(docs.sync_round("S1", "T1", 0, &msg, NOW).unwrap().reply.is_none());
        assert!(docs.sync_round("S1", "T1", 0, &[], NOW).unwrap().reply.is_none());
        assert!(matches!(docs.sync_round("S1", "T1", 1, &[], NOW), Err(DocError::EpochMismatch { till: 1, hub: 0 })));
        assert!(till.get_changes(&[]).len() == 1);
    }
}
