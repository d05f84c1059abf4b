//! Issue #4's CRDT benchmark: the store document after 1,000,000 sales, with and without epoch compaction.
//!
//! The replay works like the real system, in one process, with the same pure functions (`storesync_shared::crdt`)
//! and the real automerge sync protocol:
//! - head office stocks the store (one receipt and one price per SKU, `--skus` SKUs) before the first sale;
//! - `--tills` tills take turns selling; every till journals its sales (compactly here, as (SKU, qty) lines; they
//!   become real sale bodies for `crdt::journal_effects`) and commits one automerge change per group of `--group`
//!   sales on its own counters (`crdt::apply_stock_known`), like the agent's fold (the agent folds its journal's
//!   stock movements into one change before every sync session, and after at most 4,096 entries);
//! - every `--sync-every` groups a till uploads its journal (the hub's `hub_seq` catches up) and runs a CRDT sync
//!   session with the hub (encoded messages both ways, the hub's per-till `sync::State` kept as `State::encode`
//!   between rounds, like `Docs::sync_round`); head office books a receipt every `--receipt-every` sessions;
//! - after a sync round the hub compacts when the epoch holds more than `--compact-after` changes or its stored
//!   bytes (the epoch snapshot plus every change received since, as the hub stores them) pass
//!   `--compact-after-bytes` (hub/src/docs.rs `SyncLimits::compact_after_changes` / `compact_after_bytes`, whose
//!   defaults these are): base = journal effects up to each till's cut (`crdt::journal_effects`)
//!   plus every head-office movement, new document = `crdt::epoch_doc`; a till in an older epoch installs the
//!   snapshot and re-applies its journal after its cut (`crdt::rebase_on_snapshot`), like the agent.
//!
//! Then it measures, for the hub's document and a till's: the saved size; the load time (median of 5
//! `Automerge::load`, each in a fresh child process: `bench_crdt --measure-load FILE`) and that process's VmRSS
//! before and after the load and its peak (VmHWM); and a fresh till's bootstrap: load the epoch snapshot, then sync
//! with the hub's document until quiescent.
//!
//! ```text
//! cargo build --release -p storesync-tools --bin bench_crdt
//! target/release/bench_crdt --sales 1000000                    # with compaction
//! target/release/bench_crdt --sales 1000000 --compact-after 0  # without
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, bail};
use automerge::sync::{Message, State, SyncDoc};
use automerge::transaction::CommitOptions;
use automerge::{ActorId, Automerge};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use storesync_hub::docs::SyncLimits;
use storesync_shared::EventKind;
use storesync_shared::crdt::{self, Price};
use uuid::Uuid;

const T0: i64 = 1_800_000_000;
/// agent/src/sync.rs `MAX_DOC_ROUNDS`.
const MAX_DOC_ROUNDS: usize = 32;

#[derive(Debug, Parser)]
struct Args {
    /// Sales to replay.
    #[arg(long, default_value_t = 1_000_000)]
    sales: u64,
    /// Catalogue size.
    #[arg(long, default_value_t = 50_000)]
    skus: u32,
    #[arg(long, default_value_t = 3)]
    tills: usize,
    /// Sales per automerge change (the agent folds all its sales since the last sync session into one change).
    #[arg(long, default_value_t = 512)]
    group: usize,
    /// A till uploads and syncs every this many groups.
    #[arg(long, default_value_t = 1)]
    sync_every: usize,
    /// Head office books a receipt every this many sync sessions.
    #[arg(long, default_value_t = 10)]
    receipt_every: u64,
    /// Compact once the epoch holds more than this many changes; 0 never compacts.
    #[arg(long, default_value_t = SyncLimits::default().compact_after_changes)]
    compact_after: u64,
    /// ...or once the hub stores more than this many bytes of it; 0 never compacts on size.
    #[arg(long, default_value_t = SyncLimits::default().compact_after_bytes)]
    compact_after_bytes: u64,
    /// Where the saved documents go (default: `bench_crdt` in the system's temporary folder).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("bench_crdt"))]
    dir: PathBuf,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Internal: load FILE once and print `load_us rss_before_kb rss_after_kb hwm_kb`.
    #[arg(long, hide = true)]
    measure_load: Option<PathBuf>,
}

/// One journaled sale: its lines as (SKU index, qty).
type Sale = Vec<(u32, i64)>;

fn sku(i: u32) -> String {
    format!("SKU-{i:05}")
}

fn sale_body(lines: &Sale) -> Value {
    let ls: Vec<Value> =
        lines.iter().map(|(s, q)| json!({"sku": sku(*s), "qty": q, "unit_price_minor": 100})).collect();
    let total: i64 = lines.iter().map(|(_, q)| q * 100).sum();
    json!({"occurred_at": "2027-01-15T10:00:00Z", "currency": "EUR", "lines": ls,
           "payments": [{"method": "card", "amount_minor": total}]})
}

/// `crdt::journal_effects` of journal entries `from..to` (0-based, so seqs `from + 1 ..= to`).
fn effects(journal: &[Sale], from: usize, to: usize, till: usize) -> anyhow::Result<BTreeMap<String, i64>> {
    let events = journal[from..to]
        .iter()
        .enumerate()
        .map(|(i, s)| (Uuid::from_u128(((till as u128) << 64) | (from + i) as u128), EventKind::Sale, sale_body(s)));
    crdt::journal_effects(events, |_| None).map_err(|e| anyhow::anyhow!("{e}"))
}

fn add_into(into: &mut BTreeMap<String, i64>, from: &BTreeMap<String, i64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_insert(0) += v;
    }
}

struct Hub {
    doc: Automerge,
    epoch: u64,
    changes_since_epoch: u64,
    /// What the hub's storage holds of the epoch: its snapshot plus every change received or made since.
    stored_bytes: u64,
    /// The size of the epoch's snapshot (0 for epoch 0).
    epoch_bytes: u64,
    states: BTreeMap<usize, Vec<u8>>,
    hub_seq: Vec<usize>,
    cuts: Vec<usize>,
    journal_base: BTreeMap<String, i64>,
    movements: BTreeMap<String, i64>,
    snapshot: Option<Vec<u8>>,
    now: i64,
    bytes_in: u64,
    bytes_out: u64,
}

struct Epochless;

impl Hub {
    /// `Docs::sync_round` (without storage): decode, receive, answer, keep `State::encode`.
    fn round(
        &mut self,
        till: usize,
        till_epoch: u64,
        body: &[u8],
    ) -> anyhow::Result<Result<Option<Vec<u8>>, Epochless>> {
        if till_epoch != self.epoch {
            return Ok(Err(Epochless));
        }
        self.bytes_in += body.len() as u64;
        let message = if body.is_empty() { None } else { Some(Message::decode(body)?) };
        let mut state = self.states.get(&till).and_then(|b| State::decode(b).ok()).unwrap_or_default();
        let their_heads = message.as_ref().map(|m| m.heads.clone());
        if let Some(m) = message {
            let before = self.doc.get_heads();
            self.doc.receive_sync_message(&mut state, m)?;
            let changes = self.doc.get_changes(&before);
            self.changes_since_epoch += changes.len() as u64;
            self.stored_bytes += changes.iter().map(|c| c.raw_bytes().len() as u64).sum::<u64>();
        }
        let ours = self.doc.get_heads();
        let reply = self.doc.generate_sync_message(&mut state);
        let reply =
            crdt::reply_if_needed(reply, their_heads.as_deref(), &state.shared_heads, &ours).map(Message::encode);
        self.bytes_out += reply.as_ref().map_or(0, |r| r.len() as u64);
        self.states.insert(till, state.encode());
        Ok(Ok(reply))
    }

    fn commit_stock(&mut self, deltas: &BTreeMap<String, i64>) -> anyhow::Result<()> {
        add_into(&mut self.movements, deltas);
        let stock = crdt::root_map(&self.doc, crdt::STOCK).context("no stock map")?;
        let mut tx = self.doc.transaction();
        crdt::apply_stock(&mut tx, &stock, crdt::HUB_WRITER, deltas)?;
        tx.commit_with(CommitOptions::default().with_time(self.now).with_message("head-office stock".to_owned()));
        self.changes_since_epoch += 1;
        self.stored_bytes += self.doc.get_last_local_change().map_or(0, |c| c.raw_bytes().len() as u64);
        Ok(())
    }

    /// `SqliteStorage::compact` + `Docs::compact`.
    fn compact(&mut self, journals: &[Vec<Sale>]) -> anyhow::Result<()> {
        for (t, journal) in journals.iter().enumerate() {
            let cut = self.hub_seq[t];
            add_into(&mut self.journal_base, &effects(journal, self.cuts[t].min(cut), cut, t)?);
        }
        self.cuts = self.hub_seq.clone();
        let mut base = self.journal_base.clone();
        add_into(&mut base, &self.movements);
        let prices = crdt::all_prices(&self.doc, &crdt::root_map(&self.doc, crdt::PRICES).context("no prices")?);
        let now = crdt::normalize_instant(time::OffsetDateTime::from_unix_timestamp(self.now)?);
        let bytes = crdt::epoch_doc(ActorId::random(), &base, &prices, &now, self.now)?.save();
        self.doc = Automerge::load(&bytes)?.with_actor(ActorId::random());
        self.stored_bytes = bytes.len() as u64;
        self.epoch_bytes = bytes.len() as u64;
        self.snapshot = Some(bytes);
        self.epoch += 1;
        self.changes_since_epoch = 0;
        self.states.clear();
        Ok(())
    }

    fn snapshot_bytes(&self) -> Vec<u8> {
        self.snapshot.clone().unwrap_or_else(|| crdt::genesis().save())
    }
}

struct Till {
    doc: Automerge,
    sync: State,
    epoch: u64,
    /// The agent's `DocState::own_keys` (see `crdt::apply_stock_known`).
    own_keys: HashSet<String>,
}

impl Till {
    fn fresh() -> Till {
        Till {
            doc: crdt::genesis().with_actor(ActorId::random()),
            sync: State::new(),
            epoch: 0,
            own_keys: HashSet::new(),
        }
    }

    /// The agent's `doc_session`; `install` gives the effects to re-apply after this till's cut.
    fn session(
        &mut self,
        id: usize,
        hub: &mut Hub,
        install: &mut dyn FnMut(&Hub) -> anyhow::Result<BTreeMap<String, i64>>,
    ) -> anyhow::Result<usize> {
        self.sync = State::decode(&self.sync.encode()).unwrap_or_default();
        let mut installed = false;
        for round in 0..MAX_DOC_ROUNDS {
            let msg = self.doc.generate_sync_message(&mut self.sync).map(Message::encode);
            let sent = msg.is_some();
            match hub.round(id, self.epoch, msg.as_deref().unwrap_or_default())? {
                Err(Epochless) if !installed => {
                    let effects = install(hub)?;
                    self.doc = crdt::rebase_on_snapshot(
                        &hub.snapshot_bytes(),
                        ActorId::random(),
                        &format!("T{id}"),
                        &effects,
                        "journal after the cut",
                    )?;
                    self.sync = State::new();
                    self.epoch = hub.epoch;
                    let stock = crdt::root_map(&self.doc, crdt::STOCK).context("no stock map")?;
                    self.own_keys = crdt::writer_keys(&self.doc, &stock, &format!("T{id}"));
                    installed = true;
                }
                Err(Epochless) => bail!("still in the wrong epoch"),
                Ok(Some(reply)) => {
                    self.doc.receive_sync_message(&mut self.sync, Message::decode(&reply)?)?;
                    let _persisted = self.sync.encode();
                }
                Ok(None) if !sent => return Ok(round + 1),
                Ok(None) => {}
            }
        }
        bail!("no quiescence in {MAX_DOC_ROUNDS} rounds")
    }

    fn commit(&mut self, id: usize, deltas: &BTreeMap<String, i64>, first: usize, last: usize) -> anyhow::Result<()> {
        let stock = crdt::root_map(&self.doc, crdt::STOCK).context("no stock map")?;
        let mut tx = self.doc.transaction();
        crdt::apply_stock_known(&mut tx, &stock, &format!("T{id}"), deltas, &mut self.own_keys)?;
        tx.commit_with(CommitOptions::default().with_message(format!("journal {first}..{last}")).with_time(T0));
        Ok(())
    }
}

/// A fresh till's bootstrap.
struct Boot {
    ms: f64,
    rounds: usize,
    snapshot_bytes: usize,
    /// Snapshot plus every sync message both ways.
    bytes: u64,
}

/// A fresh till (empty journal) joins: it loads the hub's epoch snapshot (`GET /v1/sync/snapshot`), then syncs
/// with the hub until quiescent; both sides' work is timed, in this one process.
fn bootstrap(hub: &mut Hub, id: usize) -> anyhow::Result<Boot> {
    let (in0, out0) = (hub.bytes_in, hub.bytes_out);
    let snap = hub.snapshot_bytes();
    let started = Instant::now();
    let mut fresh = Till {
        doc: crdt::rebase_on_snapshot(&snap, ActorId::random(), "NEW", &BTreeMap::new(), "")?,
        sync: State::new(),
        epoch: hub.epoch,
        own_keys: HashSet::new(),
    };
    let rounds = fresh.session(id, hub, &mut |_| Ok(BTreeMap::new()))?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if !crdt::same_heads(&fresh.doc.get_heads(), &hub.doc.get_heads()) {
        bail!("the fresh till did not converge");
    }
    hub.states.remove(&id);
    Ok(Boot {
        ms,
        rounds,
        snapshot_bytes: snap.len(),
        bytes: snap.len() as u64 + hub.bytes_in - in0 + hub.bytes_out - out0,
    })
}

fn vm_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|r| r.trim().trim_end_matches("kB").trim().parse().unwrap_or(0)))
        .unwrap_or(0)
}

fn measure_load(path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path)?;
    let before = vm_kb("VmRSS:");
    let start = Instant::now();
    let doc = Automerge::load(&bytes)?;
    let us = start.elapsed().as_micros();
    let after = vm_kb("VmRSS:");
    let hwm = vm_kb("VmHWM:");
    println!("{us} {before} {after} {hwm} {}", doc.get_heads().len());
    Ok(())
}

/// Load figures of one saved document: median of 5 fresh processes.
struct LoadFigures {
    bytes: usize,
    load_ms: f64,
    rss_before_mb: f64,
    rss_after_mb: f64,
    hwm_mb: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn load_figures(path: &Path) -> anyhow::Result<LoadFigures> {
    let me = std::env::current_exe()?;
    let mut runs: Vec<[f64; 4]> = Vec::new();
    for _ in 0..5 {
        let out = Command::new(&me).arg("--measure-load").arg(path).output()?;
        if !out.status.success() {
            bail!("measuring {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8(out.stdout)?;
        let f: Vec<f64> = text.split_whitespace().take(4).map(|x| x.parse().unwrap_or(0.0)).collect();
        runs.push([f[0] / 1000.0, f[1] / 1024.0, f[2] / 1024.0, f[3] / 1024.0]);
    }
    let col = |i: usize| median(runs.iter().map(|r| r[i]).collect());
    Ok(LoadFigures {
        bytes: std::fs::metadata(path)?.len() as usize,
        load_ms: col(0),
        rss_before_mb: col(1),
        rss_after_mb: col(2),
        hwm_mb: col(3),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let res = match &args.measure_load {
        Some(p) => measure_load(p),
        None => run(&args),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_crdt: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut hub = Hub {
        doc: crdt::genesis().with_actor(ActorId::random()),
        epoch: 0,
        changes_since_epoch: 0,
        stored_bytes: 0,
        epoch_bytes: 0,
        states: BTreeMap::new(),
        hub_seq: vec![0; args.tills],
        cuts: vec![0; args.tills],
        journal_base: BTreeMap::new(),
        movements: BTreeMap::new(),
        snapshot: None,
        now: T0,
        bytes_in: 0,
        bytes_out: 0,
    };
    // Head office stocks the store: one receipt and one price per SKU.
    let stocked: BTreeMap<String, i64> = (0..args.skus).map(|i| (sku(i), 1_000)).collect();
    hub.commit_stock(&stocked)?;
    let prices = crdt::root_map(&hub.doc, crdt::PRICES).context("no prices")?;
    let mut tx = hub.doc.transaction();
    for i in 0..args.skus {
        let p = Price {
            price_minor: 100 + i64::from(i % 900),
            currency: "EUR".into(),
            effective_from: "2026-01-01T00:00:00Z".into(),
        };
        crdt::set_price(&mut tx, &prices, &sku(i), &p)?;
    }
    tx.commit_with(CommitOptions::default().with_time(T0).with_message("head-office prices".to_owned()));
    hub.stored_bytes += hub.doc.get_last_local_change().map_or(0, |c| c.raw_bytes().len() as u64);

    let mut tills: Vec<Till> = (0..args.tills).map(|_| Till::fresh()).collect();
    let mut journals: Vec<Vec<Sale>> = vec![Vec::new(); args.tills];
    let mut groups = vec![0usize; args.tills];
    let (mut sessions, mut rounds, mut compactions) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    let mut sold = 0u64;
    let mut next_report = 100_000;
    let mut peak: Option<(PathBuf, u64, usize, Boot)> = None;
    let mut t = 0;
    while sold < args.sales {
        // One group commit of till t.
        let first = journals[t].len();
        let mut deltas: BTreeMap<String, i64> = BTreeMap::new();
        for _ in 0..args.group.min((args.sales - sold) as usize) {
            let n = rng.random_range(1..=3);
            let lines: Sale = (0..n).map(|_| (rng.random_range(0..args.skus), rng.random_range(1..=2))).collect();
            for (s, q) in &lines {
                *deltas.entry(sku(*s)).or_insert(0) -= q;
            }
            journals[t].push(lines);
            sold += 1;
        }
        deltas.retain(|_, d| *d != 0);
        tills[t].commit(t, &deltas, first + 1, journals[t].len())?;
        groups[t] += 1;
        if groups[t].is_multiple_of(args.sync_every) || sold >= args.sales {
            // Upload (the journal channel), then CRDT sync.
            hub.hub_seq[t] = journals[t].len();
            let journal = &journals[t];
            let mut install = |hub: &Hub| effects(journal, hub.cuts[t], journal.len(), t);
            rounds += tills[t].session(t, &mut hub, &mut install)? as u64;
            sessions += 1;
            if sessions.is_multiple_of(args.receipt_every) {
                hub.now += 60;
                let receipt = BTreeMap::from([(sku(rng.random_range(0..args.skus)), 24)]);
                hub.commit_stock(&receipt)?;
            }
            let due = (args.compact_after > 0 && hub.changes_since_epoch > args.compact_after)
                || (args.compact_after_bytes > 0
                    && hub.stored_bytes.saturating_sub(hub.epoch_bytes) > args.compact_after_bytes);
            if due {
                // The largest the document gets is right before a compaction: keep the largest such one.
                let bytes = hub.doc.save();
                let path = args.dir.join("hub-before-compaction.automerge");
                let larger = std::fs::metadata(&path).ok().is_none_or(|m| bytes.len() as u64 > m.len());
                if peak.is_none() || larger {
                    std::fs::write(&path, &bytes)?;
                    let changes = hub.doc.get_changes(&[]).len();
                    peak = Some((path, sold, changes, bootstrap(&mut hub, 99)?));
                }
                hub.compact(&journals)?;
                compactions += 1;
            }
        }
        if sold >= next_report {
            eprintln!(
                "{sold} sales, {:.1} s, epoch {}, {} changes in it",
                start.elapsed().as_secs_f64(),
                hub.epoch,
                hub.changes_since_epoch
            );
            next_report += 100_000;
        }
        t = (t + 1) % args.tills;
    }
    // Every till syncs until quiescent, twice round (so every till also has the others' last changes).
    for _ in 0..2 {
        for (i, till) in tills.iter_mut().enumerate() {
            let journal = &journals[i];
            let mut install = |hub: &Hub| effects(journal, hub.cuts[i], journal.len(), i);
            till.session(i, &mut hub, &mut install)?;
        }
    }
    let replay = start.elapsed();
    let mut expected = hub.movements.clone();
    for (i, j) in journals.iter().enumerate() {
        add_into(&mut expected, &effects(j, 0, j.len(), i)?);
    }
    expected.retain(|_, d| *d != 0);
    let stock = crdt::root_map(&hub.doc, crdt::STOCK).context("no stock")?;
    let mut got = crdt::all_stock(&hub.doc, &stock, None);
    got.retain(|_, d| *d != 0);
    if got != expected {
        bail!("the hub's stock differs from receipts + journal effects");
    }
    for till in &tills {
        if !crdt::same_heads(&till.doc.get_heads(), &hub.doc.get_heads()) {
            bail!("a till did not converge");
        }
    }

    let hub_path = args.dir.join("hub.automerge");
    let till_path = args.dir.join("till.automerge");
    let snap_path = args.dir.join("snapshot.automerge");
    std::fs::write(&hub_path, hub.doc.save())?;
    std::fs::write(&till_path, tills[0].doc.save())?;
    std::fs::write(&snap_path, hub.snapshot_bytes())?;

    // A fresh till's bootstrap: the epoch snapshot, then sync with the hub until quiescent (median of 3).
    let mut boots = Vec::new();
    for i in 0..3 {
        boots.push(bootstrap(&mut hub, 100 + i)?);
    }
    boots.sort_by(|a, b| a.ms.total_cmp(&b.ms));
    let boot = &boots[1];

    let hubf = load_figures(&hub_path)?;
    let tillf = load_figures(&till_path)?;
    let changes = hub.doc.get_changes(&[]).len();
    println!(
        "## bench_crdt --sales {} --group {} --sync-every {} --compact-after {} --compact-after-bytes {}",
        args.sales, args.group, args.sync_every, args.compact_after, args.compact_after_bytes
    );
    println!();
    println!(
        "replay {:.1} s; {} sales in {} changes; {} sync sessions ({} rounds, {:.1} MB to the hub, {:.1} MB from it); \
         {} compactions; epoch {} holds {} changes",
        replay.as_secs_f64(),
        sold,
        groups.iter().sum::<usize>(),
        sessions,
        rounds,
        hub.bytes_in as f64 / 1e6,
        hub.bytes_out as f64 / 1e6,
        compactions,
        hub.epoch,
        changes
    );
    println!();
    println!("| document | saved | load (median of 5) | RSS before load | RSS after load | peak RSS (VmHWM) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (name, f) in [("hub", &hubf), ("till T1", &tillf)] {
        println!(
            "| {name} | {:.2} MB | {:.0} ms | {:.1} MB | {:.1} MB | {:.1} MB |",
            f.bytes as f64 / 1e6,
            f.load_ms,
            f.rss_before_mb,
            f.rss_after_mb,
            f.hwm_mb
        );
    }
    println!();
    println!(
        "fresh till bootstrap (median of 3): {:.0} ms; snapshot {:.2} MB, then {} sync rounds, {:.2} MB in all",
        boot.ms,
        boot.snapshot_bytes as f64 / 1e6,
        boot.rounds,
        boot.bytes as f64 / 1e6
    );
    if let Some((path, at, changes, b)) = peak {
        let f = load_figures(&path)?;
        println!();
        println!(
            "largest hub document (right before a compaction, the largest of them: after {at} sales, {changes} changes): \
             saved {:.2} MB; load {:.0} ms (median of 5); RSS {:.1} → {:.1} MB, peak {:.1} MB; fresh till \
             bootstrap {:.0} ms (one run; snapshot {:.2} MB, then {} rounds, {:.2} MB in all)",
            f.bytes as f64 / 1e6,
            f.load_ms,
            f.rss_before_mb,
            f.rss_after_mb,
            f.hwm_mb,
            b.ms,
            b.snapshot_bytes as f64 / 1e6,
            b.rounds,
            b.bytes as f64 / 1e6
        );
    }
    Ok(())
}
