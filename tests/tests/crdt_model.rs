//! Model test of the store document: stock and prices converge, and every counter equals its movements, under
//! random interleavings of till events, head-office writes, journal uploads, lossy CRDT sync and compactions.
//!
//! The model is three tills and the hub, written the way the real code works, from the same pure functions
//! (`storesync_shared::crdt`) and the real automerge sync protocol:
//! - a till keeps a journal (events with seq = position + 1) and a document; the stock movements of a run of journal
//!   entries become one automerge change on the till's own counters, tagged `journal a..b`, through
//!   `crdt::apply_stock_known` (the agent's writer folds once `FOLD_EVERY` entries are waiting, and always before a
//!   sync session: agent/src/journal/writer.rs; here every group commit is such a run); a CRDT sync session is the
//!   agent's `doc_session` (agent/src/sync.rs): reset the in-flight part of the sync state, then rounds of
//!   generate → encoded message → hub → encoded answer → receive, persisting `State::encode` after every receive,
//!   until the hub answers nothing to a till that sent nothing; an `epoch_mismatch` installs the hub's snapshot once
//!   per session (`install` in agent/src/journal/doc.rs, reached through `Journal::install_epoch`; here
//!   `crdt::rebase_on_snapshot`, which it calls);
//! - the hub keeps per till the events the till uploaded (`hub_seq` = how many; uploads lag and are a separate
//!   channel from CRDT sync), its document, per-till sync states that survive between rounds only as
//!   `State::encode`, the epoch, the cuts and the journal part of the base; a round is `Docs::sync_round`
//!   (hub/src/docs.rs), including the own-slot check (`check_own_slot`) and the "nothing to send" rule; compaction
//!   is `Docs::compact` (hub/src/docs.rs) + `DocStore::compact` (hub/src/storage/docs.rs, one transaction in
//!   storage/sqlite/docs.rs or storage/postgres/docs.rs): the journal base grows by each till's effects between its
//!   previous and its new cut, the base adds every head-office movement, the new document is `crdt::epoch_doc`;
//! - a message may be lost either way, which ends the session (the agent's request fails); the hub may compact
//!   between two rounds of one session; the hub may drop its cached document and reload it; a till may restart
//!   (reload its document and its persisted sync state).
//!
//! At the end every till syncs until quiescent, without uploading anything more, and then every copy must be equal
//! and every counter must equal its movements: on_hand(sku) = Σ receipts + Σ journal effects of every till.
//!
//! `PROPTEST_CASES=1000 cargo test -p storesync-tests --test crdt_model` runs a longer search.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use automerge::sync::{Message, State, SyncDoc};
use automerge::transaction::CommitOptions;
use automerge::{ActorId, Automerge};
use proptest::prelude::*;
use serde_json::{Value, json};
use storesync_shared::EventKind;
use storesync_shared::crdt::{self, Price, PriceView};
use uuid::Uuid;

const TILLS: [&str; 3] = ["T1", "T2", "T3"];
/// "A" is a prefix of "AB": the per-SKU key ranges must not mix them up.
const SKUS: [&str; 5] = ["A", "AB", "B", "C-1", "D"];
const T0: i64 = 1_800_000_000;
/// agent/src/sync.rs `MAX_DOC_ROUNDS`.
const MAX_DOC_ROUNDS: usize = 32;

type Event = (Uuid, EventKind, Value);

fn instant(t: i64) -> String {
    crdt::normalize_instant(time::OffsetDateTime::from_unix_timestamp(t).unwrap())
}

fn lines(l: &[(usize, i64)]) -> (Vec<Value>, i64) {
    let v = l.iter().map(|(s, q)| json!({"sku": SKUS[*s], "qty": q, "unit_price_minor": 100})).collect();
    (v, l.iter().map(|(_, q)| q * 100).sum())
}

// ---------------------------------------------------------------------------------------------------------------
// Tills

struct Till {
    name: &'static str,
    journal: Vec<Event>,
    voided: BTreeSet<Uuid>,
    doc: Automerge,
    sync: State,
    /// What `doc_sync` holds: the state as of the last received message (none after an epoch switch).
    persisted_sync: Option<Vec<u8>>,
    epoch: u64,
    /// The cut of the epoch this till installed (0 in epoch 0).
    cut: u64,
    /// The agent's `DocState::own_keys`: the keys of this till's counters, recomputed whenever the document is
    /// replaced, so that the group commit increments them without reading them (`crdt::apply_stock_known`).
    own_keys: HashSet<String>,
}

/// How a sync session ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Neither side had anything more to say.
    Quiescent,
    /// A request or its answer was lost.
    Lost,
    /// The session hit its round limit.
    RoundLimit,
    /// A second `epoch_mismatch` in one session.
    EpochMoved,
}

impl Till {
    fn new(name: &'static str) -> Till {
        Till {
            name,
            journal: Vec::new(),
            voided: BTreeSet::new(),
            doc: crdt::genesis().with_actor(ActorId::random()),
            sync: State::new(),
            persisted_sync: None,
            epoch: 0,
            cut: 0,
            own_keys: HashSet::new(),
        }
    }

    fn lookup(&self, id: Uuid) -> Option<(EventKind, Value)> {
        self.journal.iter().find(|e| e.0 == id).map(|e| (e.1, e.2.clone()))
    }

    /// One group commit: journals the events the till accepts and commits their summed effect as one change.
    fn commit(&mut self, events: &[Ev], ids: &mut u128, now: i64) {
        let at = instant(now);
        let first = self.journal.len();
        for ev in events {
            let (kind, body) = match ev {
                Ev::Sale(l) => {
                    let (ls, total) = lines(l);
                    let body = json!({"occurred_at": at, "currency": "EUR", "lines": ls,
                                      "payments": [{"method": "card", "amount_minor": total}]});
                    (EventKind::Sale, body)
                }
                Ev::Return(l) => {
                    let (ls, total) = lines(l);
                    let body = json!({"occurred_at": at, "currency": "EUR", "lines": ls, "reason": "faulty",
                                      "refunds": [{"method": "cash", "amount_minor": total}]});
                    (EventKind::Return, body)
                }
                Ev::Adjust(sku, delta) => {
                    let body = json!({"occurred_at": at, "sku": SKUS[*sku], "delta": delta, "reason": "count"});
                    (EventKind::Adjustment, body)
                }
                Ev::Void(pick) => {
                    // The till refuses a void of a void, of an adjustment and a second void of one event.
                    let voidable: Vec<Uuid> = self
                        .journal
                        .iter()
                        .filter(|e| matches!(e.1, EventKind::Sale | EventKind::Return) && !self.voided.contains(&e.0))
                        .map(|e| e.0)
                        .collect();
                    if voidable.is_empty() {
                        continue;
                    }
                    let target = voidable[pick % voidable.len()];
                    self.voided.insert(target);
                    let body = json!({"occurred_at": at, "voided_event_id": target, "reason": "mistake"});
                    (EventKind::Void, body)
                }
            };
            *ids += 1;
            self.journal.push((Uuid::from_u128(*ids), kind, body));
        }
        let group = self.journal[first..].to_vec();
        if group.is_empty() {
            return;
        }
        let deltas = crdt::journal_effects(group, |id| self.lookup(id)).unwrap();
        if deltas.is_empty() {
            return;
        }
        let stock = crdt::root_map(&self.doc, crdt::STOCK).unwrap();
        let mut tx = self.doc.transaction();
        crdt::apply_stock_known(&mut tx, &stock, self.name, &deltas, &mut self.own_keys).unwrap();
        let message = format!("journal {}..{}", first + 1, self.journal.len());
        tx.commit_with(CommitOptions::default().with_message(message).with_time(now));
    }

    /// The effect of the journal after `cut`, voids resolved against the whole journal.
    fn effects_after(&self, cut: u64) -> BTreeMap<String, i64> {
        crdt::journal_effects(self.journal[cut as usize..].iter().cloned(), |id| self.lookup(id)).unwrap()
    }

    /// agent/src/journal/doc.rs `install`.
    fn install(&mut self, snap: &Snapshot) {
        let cut = snap.cuts.get(self.name).copied().unwrap_or(0);
        assert!(cut <= self.journal.len() as u64, "{}: the hub counts past the journal's end", self.name);
        let effects = self.effects_after(cut);
        let message = format!("journal {}..{} (epoch {})", cut + 1, self.journal.len(), snap.epoch);
        self.doc = crdt::rebase_on_snapshot(&snap.doc, ActorId::random(), self.name, &effects, &message).unwrap();
        self.persisted_sync = None;
        self.sync = State::new();
        self.epoch = snap.epoch;
        self.cut = cut;
        self.replaced();
    }

    /// The agent's `DocState::replace`.
    fn replaced(&mut self) {
        let stock = crdt::root_map(&self.doc, crdt::STOCK).unwrap();
        self.own_keys = crdt::writer_keys(&self.doc, &stock, self.name);
    }

    /// The agent's `doc_sync_receive`.
    fn receive(&mut self, bytes: &[u8]) {
        let msg = Message::decode(bytes).expect("the hub's message decodes");
        self.doc.receive_sync_message(&mut self.sync, msg).expect("the till accepts the hub's message");
        self.persisted_sync = Some(self.sync.encode());
    }

    /// The agent's `doc_session`, with the `lose`-th exchange lost (request or answer) and the hub compacting after
    /// the `compact_after`-th round.
    fn session(
        &mut self,
        hub: &mut Hub,
        rounds: usize,
        lose: Option<(usize, Lost)>,
        compact_after: Option<usize>,
    ) -> End {
        // DocCommand::Begin: keep only what both sides durably share.
        self.sync = State::decode(&self.sync.encode()).unwrap_or_default();
        let mut installed = false;
        for round in 0..rounds.min(MAX_DOC_ROUNDS) {
            let msg = self.doc.generate_sync_message(&mut self.sync).map(Message::encode);
            let sent = msg.is_some();
            if lose == Some((round, Lost::Request)) {
                return End::Lost;
            }
            match hub.round(self.name, self.epoch, &msg.unwrap_or_default()) {
                Err(Mismatch) if !installed => {
                    let snap = hub.snapshot();
                    self.install(&snap);
                    installed = true;
                    self.sync = State::decode(&self.sync.encode()).unwrap_or_default();
                    continue;
                }
                // The hub compacted again within this session: the agent ends the session with the 409 and
                // installs the newer snapshot in the next one.
                Err(Mismatch) => return End::EpochMoved,
                Ok(reply) => {
                    if compact_after == Some(round) {
                        hub.compact();
                    }
                    if lose == Some((round, Lost::Response)) {
                        return End::Lost;
                    }
                    match reply {
                        Some(bytes) => self.receive(&bytes),
                        None if !sent => return End::Quiescent,
                        None => {}
                    }
                }
            }
        }
        End::RoundLimit
    }

    /// A restart: the document reloaded from disk with a new actor, the sync state from `doc_sync`.
    fn restart(&mut self) {
        self.doc = Automerge::load(&self.doc.save()).unwrap().with_actor(ActorId::random());
        self.sync = self.persisted_sync.as_deref().and_then(|b| State::decode(b).ok()).unwrap_or_default();
        self.replaced();
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The hub

#[derive(Debug)]
struct Mismatch;

/// `GET /v1/sync/snapshot`.
struct Snapshot {
    epoch: u64,
    cuts: BTreeMap<String, u64>,
    doc: Vec<u8>,
}

struct Hub {
    doc: Automerge,
    epoch: u64,
    /// Per till, the events it uploaded, in seq order; `hub_seq` is their count.
    uploaded: BTreeMap<&'static str, Vec<Event>>,
    /// Every head-office movement, per SKU.
    movements: BTreeMap<String, i64>,
    /// `sync_states` of the current epoch: `State::encode` per till.
    sync_states: BTreeMap<&'static str, Vec<u8>>,
    cuts: BTreeMap<String, u64>,
    journal_base: BTreeMap<String, i64>,
    snapshot: Option<Vec<u8>>,
    now: i64,
}

impl Hub {
    fn new() -> Hub {
        Hub {
            doc: crdt::genesis().with_actor(ActorId::random()),
            epoch: 0,
            uploaded: TILLS.iter().map(|t| (*t, Vec::new())).collect(),
            movements: BTreeMap::new(),
            sync_states: BTreeMap::new(),
            cuts: BTreeMap::new(),
            journal_base: BTreeMap::new(),
            snapshot: None,
            now: T0,
        }
    }

    /// `Docs::sync_round`.
    fn round(&mut self, till: &'static str, till_epoch: u64, body: &[u8]) -> Result<Option<Vec<u8>>, Mismatch> {
        let message = (!body.is_empty()).then(|| Message::decode(body).expect("the till's message decodes"));
        if self.epoch != till_epoch {
            return Err(Mismatch);
        }
        let mut state = self.sync_states.get(till).and_then(|b| State::decode(b).ok()).unwrap_or_default();
        let their_heads = message.as_ref().map(|m| m.heads.clone());
        if let Some(m) = message {
            let before = self.doc.get_heads();
            self.doc.receive_sync_message(&mut state, m).expect("the hub accepts the till's message");
            // hub/src/docs.rs `check_own_slot`, as an assertion.
            if let Some(what) = crdt::foreign_op(&self.doc, &before, till) {
                panic!("{till} sent a change outside its own slot: {what}");
            }
        }
        let ours = self.doc.get_heads();
        let reply = self.doc.generate_sync_message(&mut state);
        let reply = crdt::reply_if_needed(reply, their_heads.as_deref(), &state.shared_heads, &ours);
        self.sync_states.insert(till, state.encode());
        Ok(reply.map(Message::encode))
    }

    /// `Docs::add_movements`.
    fn receipt(&mut self, sku: &str, delta: i64) {
        *self.movements.entry(sku.to_owned()).or_insert(0) += delta;
        let stock = crdt::root_map(&self.doc, crdt::STOCK).unwrap();
        let mut tx = self.doc.transaction();
        crdt::apply_stock(&mut tx, &stock, crdt::HUB_WRITER, &BTreeMap::from([(sku.to_owned(), delta)])).unwrap();
        tx.commit_with(CommitOptions::default().with_time(self.now).with_message("head-office stock".to_owned()));
    }

    /// `Docs::set_prices`.
    fn set_price(&mut self, sku: &str, price: &Price) {
        let prices = crdt::root_map(&self.doc, crdt::PRICES).unwrap();
        let mut tx = self.doc.transaction();
        crdt::set_price(&mut tx, &prices, sku, price).unwrap();
        tx.commit_with(CommitOptions::default().with_time(self.now).with_message("head-office prices".to_owned()));
    }

    /// `POST /v1/sync/upload` of the next `max` events of `till`.
    fn upload(&mut self, till: &Till, max: usize) {
        let have = self.uploaded[till.name].len();
        let more = till.journal.iter().skip(have).take(max).cloned();
        self.uploaded.get_mut(till.name).unwrap().extend(more);
    }

    /// `SqliteStorage::compact` with `Docs::compact`'s builder.
    fn compact(&mut self) {
        let cuts: BTreeMap<String, u64> = self.uploaded.iter().map(|(t, e)| (t.to_string(), e.len() as u64)).collect();
        for (till, cut) in &cuts {
            let after = self.cuts.get(till).copied().unwrap_or(0).min(*cut);
            let events = &self.uploaded[till.as_str()];
            let lookup = |id: Uuid| events.iter().find(|e| e.0 == id).map(|e| (e.1, e.2.clone()));
            let effects = crdt::journal_effects(events[after as usize..*cut as usize].iter().cloned(), lookup).unwrap();
            for (sku, d) in effects {
                *self.journal_base.entry(sku).or_insert(0) += d;
            }
        }
        let mut base = self.journal_base.clone();
        for (sku, d) in &self.movements {
            *base.entry(sku.clone()).or_insert(0) += d;
        }
        let prices = crdt::all_prices(&self.doc, &crdt::root_map(&self.doc, crdt::PRICES).unwrap());
        let fresh = crdt::epoch_doc(ActorId::random(), &base, &prices, &instant(self.now), self.now).unwrap();
        let bytes = fresh.save();
        self.doc = Automerge::load(&bytes).unwrap().with_actor(ActorId::random());
        self.snapshot = Some(bytes);
        self.epoch += 1;
        self.cuts = cuts;
        self.sync_states.clear();
    }

    /// `GET /v1/sync/snapshot`.
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            epoch: self.epoch,
            cuts: self.cuts.clone(),
            doc: self.snapshot.clone().unwrap_or_else(|| crdt::genesis().save()),
        }
    }

    /// The cache dropped the document: a full load from storage, with a new actor.
    fn reload(&mut self) {
        self.doc = Automerge::load(&self.doc.save()).unwrap().with_actor(ActorId::random());
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Operations

#[derive(Debug, Clone)]
enum Ev {
    Sale(Vec<(usize, i64)>),
    Return(Vec<(usize, i64)>),
    /// A void of one of the till's still-voidable events (picked at run time), refused when there is none.
    Void(usize),
    Adjust(usize, i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lost {
    Request,
    Response,
}

#[derive(Debug, Clone)]
enum Op {
    /// One group commit of a till.
    Commit {
        till: usize,
        events: Vec<Ev>,
    },
    /// A head-office stock movement (a receipt when positive).
    Receipt {
        sku: usize,
        delta: i64,
    },
    /// A head-office price, in force now or from `days` ahead.
    Price {
        sku: usize,
        amount: i64,
        days: Option<u8>,
    },
    /// A journal upload of at most `max` events.
    Upload {
        till: usize,
        max: usize,
    },
    /// A CRDT sync session of at most `rounds` rounds.
    Sync {
        till: usize,
        rounds: usize,
        lose: Option<(usize, Lost)>,
        compact_after: Option<usize>,
    },
    Compact,
    Tick {
        hours: i64,
    },
    HubReload,
    TillRestart {
        till: usize,
    },
}

struct World {
    tills: Vec<Till>,
    hub: Hub,
    ids: u128,
    /// Every price ever set: (sku, effective_from) → amount.
    prices: BTreeMap<(String, String), i64>,
}

impl World {
    fn new() -> World {
        World { tills: TILLS.iter().map(|t| Till::new(t)).collect(), hub: Hub::new(), ids: 0, prices: BTreeMap::new() }
    }

    fn run(&mut self, op: &Op) {
        let now = self.hub.now;
        match op {
            Op::Commit { till, events } => self.tills[*till].commit(events, &mut self.ids, now),
            Op::Receipt { sku, delta } => self.hub.receipt(SKUS[*sku], *delta),
            Op::Price { sku, amount, days } => {
                let from = instant(now + i64::from(days.unwrap_or(0)) * 86_400);
                let price = Price { price_minor: *amount, currency: "EUR".into(), effective_from: from.clone() };
                self.hub.set_price(SKUS[*sku], &price);
                self.prices.insert((SKUS[*sku].to_owned(), from), *amount);
            }
            Op::Upload { till, max } => self.hub.upload(&self.tills[*till], *max),
            Op::Sync { till, rounds, lose, compact_after } => {
                self.tills[*till].session(&mut self.hub, *rounds, *lose, *compact_after);
            }
            Op::Compact => self.hub.compact(),
            Op::Tick { hours } => self.hub.now += hours * 3600,
            Op::HubReload => self.hub.reload(),
            Op::TillRestart { till } => self.tills[*till].restart(),
        }
        self.check_own_counters();
    }

    /// At every step, a till's own counters hold exactly its journal's effects after its epoch's cut.
    fn check_own_counters(&self) {
        for t in &self.tills {
            let stock = crdt::root_map(&t.doc, crdt::STOCK).unwrap();
            let own: BTreeMap<String, i64> =
                SKUS.iter().map(|s| (s.to_string(), t.doc_counter(&stock, s))).filter(|(_, v)| *v != 0).collect();
            assert_eq!(own, t.effects_after(t.cut), "{}'s own counters (epoch {}, cut {})", t.name, t.epoch, t.cut);
        }
    }

    /// Syncs every till until every copy has the hub's heads (no uploads, no losses, no compaction).
    fn sync_all(&mut self) {
        for _pass in 0..4 {
            for t in &mut self.tills {
                let mut sessions = 0;
                while t.session(&mut self.hub, MAX_DOC_ROUNDS, None, None) != End::Quiescent {
                    sessions += 1;
                    assert!(sessions < 8, "{} never became quiescent", t.name);
                }
            }
            let heads = self.hub.doc.get_heads();
            if self.tills.iter().all(|t| crdt::same_heads(&t.doc.get_heads(), &heads)) {
                return;
            }
        }
        panic!("the copies did not converge in 4 passes");
    }

    /// The expected price schedule of `sku` at `at`.
    fn expected_price(&self, sku: &str, at: &str) -> Option<i64> {
        self.prices
            .range((sku.to_owned(), String::new())..)
            .take_while(|((s, _), _)| s == sku)
            .fold(None, |cur, ((_, from), amount)| if from.as_str() <= at { Some(*amount) } else { cur })
    }

    /// Every copy equal, every counter equal to its movements, every price as set.
    fn check_converged(&self) {
        let hub_stock = crdt::root_map(&self.hub.doc, crdt::STOCK).unwrap();
        let mut expected = self.hub.movements.clone();
        for t in &self.tills {
            for (sku, d) in crdt::effects_of(t.journal.iter().cloned()).unwrap() {
                *expected.entry(sku).or_insert(0) += d;
            }
        }
        expected.retain(|_, d| *d != 0);
        let mut stock = crdt::all_stock(&self.hub.doc, &hub_stock, None);
        stock.retain(|_, d| *d != 0);
        assert_eq!(stock, expected, "hub stock = receipts + journal effects of every till");
        for sku in SKUS {
            assert_eq!(crdt::on_hand(&self.hub.doc, &hub_stock, sku, None), expected.get(sku).copied().unwrap_or(0));
        }
        let times = [self.hub.now, self.hub.now + 3 * 86_400, self.hub.now + 400 * 86_400].map(instant);
        let view = |doc: &Automerge, sku: &str, at: &str| -> PriceView {
            crdt::price_at(doc, &crdt::root_map(doc, crdt::PRICES).unwrap(), sku, at, None)
        };
        for at in &times {
            for sku in SKUS {
                let got = view(&self.hub.doc, sku, at).current.map(|p| p.price_minor);
                assert_eq!(got, self.expected_price(sku, at), "hub price of {sku} at {at}");
            }
        }
        for t in &self.tills {
            assert_eq!(t.epoch, self.hub.epoch, "{} is in the hub's epoch", t.name);
            let stock = crdt::root_map(&t.doc, crdt::STOCK).unwrap();
            let mut theirs = crdt::all_stock(&t.doc, &stock, None);
            theirs.retain(|_, d| *d != 0);
            assert_eq!(theirs, expected, "{}'s stock", t.name);
            for at in &times {
                for sku in SKUS {
                    assert_eq!(view(&t.doc, sku, at), view(&self.hub.doc, sku, at), "{}'s price of {sku}", t.name);
                }
            }
        }
    }
}

impl Till {
    fn doc_counter(&self, stock: &automerge::ObjId, sku: &str) -> i64 {
        use automerge::ReadDoc;
        match self.doc.get(stock, crdt::stock_key(sku, self.name).as_str()) {
            Ok(Some((v, _))) => v.as_i64().unwrap_or(0),
            _ => 0,
        }
    }
}

fn lines_strategy() -> impl Strategy<Value = Vec<(usize, i64)>> {
    prop::collection::vec((0..SKUS.len(), 1i64..4), 1..=3)
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        6 => lines_strategy().prop_map(Ev::Sale),
        2 => lines_strategy().prop_map(Ev::Return),
        2 => any::<u16>().prop_map(|p| Ev::Void(usize::from(p))),
        1 => (0..SKUS.len(), prop_oneof![-5i64..0, 1i64..6]).prop_map(|(s, d)| Ev::Adjust(s, d)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let till = 0..TILLS.len();
    let lose = prop::option::weighted(0.3, (0usize..4, prop_oneof![Just(Lost::Request), Just(Lost::Response)]));
    let compact_after = prop::option::weighted(0.1, 0usize..4);
    prop_oneof![
        12 => (till.clone(), prop::collection::vec(ev(), 1..=3)).prop_map(|(till, events)| Op::Commit { till, events }),
        3 => (0..SKUS.len(), prop_oneof![1i64..50, -5i64..0]).prop_map(|(sku, delta)| Op::Receipt { sku, delta }),
        2 => (0..SKUS.len(), 50i64..500, prop::option::of(1u8..5))
            .prop_map(|(sku, amount, days)| Op::Price { sku, amount, days }),
        5 => (till.clone(), 1usize..6).prop_map(|(till, max)| Op::Upload { till, max }),
        10 => (till.clone(), prop_oneof![3 => Just(MAX_DOC_ROUNDS), 1 => 1usize..4], lose, compact_after)
            .prop_map(|(till, rounds, lose, compact_after)| Op::Sync { till, rounds, lose, compact_after }),
        3 => Just(Op::Compact),
        2 => (1i64..48).prop_map(|hours| Op::Tick { hours }),
        1 => Just(Op::HubReload),
        1 => till.prop_map(|till| Op::TillRestart { till }),
    ]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn every_copy_converges_and_every_counter_equals_its_movements(ops in prop::collection::vec(op(), 1..60)) {
        let mut w = World::new();
        for op in &ops {
            w.run(op);
        }
        w.sync_all();
        w.check_converged();
    }
}

/// T3 stays offline across two compactions, with part of its journal uploaded before the first, and comes back
/// with events on both sides of its cut, including a void of an event the epoch base already counts.
#[test]
fn a_till_offline_across_two_compactions_converges_exactly() {
    use Op::*;
    let sync = |till| Sync { till, rounds: MAX_DOC_ROUNDS, lose: None, compact_after: None };
    let (a, b) = (0, 2); // SKUS[0] = "A", SKUS[2] = "B"
    let mut w = World::new();
    let ops = [
        Receipt { sku: a, delta: 100 },
        Receipt { sku: b, delta: 50 },
        Price { sku: a, amount: 250, days: None },
        sync(0),
        sync(2),
        // T3 (index 2) goes offline now, in epoch 0.
        Commit { till: 2, events: vec![Ev::Sale(vec![(a, 3)])] }, // seq 1: A -3
        Commit { till: 2, events: vec![Ev::Sale(vec![(a, 2), (b, 1)])] }, // seq 2: A -2, B -1
        Upload { till: 2, max: 1 },                               // the hub has T3's seq 1 only
        Commit { till: 0, events: vec![Ev::Sale(vec![(a, 5)])] }, // T1 seq 1: A -5
        sync(0),
        Compact, // epoch 1: cuts T1 0, T2 0, T3 1; base A 100 - 3 = 97, B 50
        Commit { till: 2, events: vec![Ev::Return(vec![(b, 4)])] }, // T3 seq 3: B +4
        Commit { till: 2, events: vec![Ev::Void(0)] }, // T3 seq 4: void seq 1: A +3
        Receipt { sku: b, delta: 10 },
        Price { sku: a, amount: 300, days: Some(2) },
        Upload { till: 0, max: 10 },
        sync(0), // T1 switches to epoch 1 and re-applies its seq 1
        Commit { till: 0, events: vec![Ev::Sale(vec![(b, 7)])] }, // T1 seq 2: B -7
        sync(0),
        Tick { hours: 24 },
        Compact, // epoch 2: cuts T1 1, T2 0, T3 1; base A 97 - 5 = 92, B 60
    ];
    for op in &ops {
        w.run(op);
    }
    assert_eq!((w.hub.epoch, w.tills[2].epoch), (2, 0));
    assert_eq!(w.hub.cuts, BTreeMap::from([("T1".into(), 1), ("T2".into(), 0), ("T3".into(), 1)]));
    // T3 comes back: epoch 2's snapshot with its seq 2..4 re-applied: A -2 + 3, B -1 + 4.
    w.run(&sync(2));
    assert_eq!((w.tills[2].epoch, w.tills[2].cut), (2, 1));
    w.sync_all();
    w.check_converged();
    let stock = crdt::root_map(&w.hub.doc, crdt::STOCK).unwrap();
    // A: 100 receipts - 3 - 2 (T3) - 5 (T1) + 3 (void of T3's seq 1) = 93.
    assert_eq!(crdt::on_hand(&w.hub.doc, &stock, "A", None), 93);
    // B: 50 + 10 receipts - 1 + 4 (T3) - 7 (T1) = 56.
    assert_eq!(crdt::on_hand(&w.hub.doc, &stock, "B", None), 56);
    let t3 = &w.tills[2];
    assert_eq!(crdt::on_hand(&t3.doc, &stock, "A", None), 93);
    let mut base_then_slots = BTreeMap::new();
    for item in automerge::ReadDoc::map_range(&t3.doc, &stock, ..) {
        let v = match item.value {
            automerge::ValueRef::Scalar(s) => s.as_i64(),
            _ => 0,
        };
        base_then_slots.insert(item.key.to_string(), v);
    }
    let key = |sku: &str, w: &str| crdt::stock_key(sku, w);
    assert_eq!(
        base_then_slots,
        BTreeMap::from([
            (key("A", "T3"), 1),
            (key("A", crdt::BASE_WRITER), 92),
            (key("B", "T1"), -7),
            (key("B", "T3"), 3),
            (key("B", crdt::BASE_WRITER), 60),
        ]),
        "epoch 2 = base (journal ≤ cuts + head office) + each till's journal after its cut"
    );
    // The price set for two days ahead is in force a day after the compaction, and kept by it.
    let prices = crdt::root_map(&t3.doc, crdt::PRICES).unwrap();
    let price = |at: i64| crdt::price_at(&t3.doc, &prices, "A", &instant(at), None).current.map(|p| p.price_minor);
    assert_eq!((price(w.hub.now), price(w.hub.now + 86_400)), (Some(250), Some(300)));
}
