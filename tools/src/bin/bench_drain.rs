//! Issue #3's drain benchmark: how fast a backlog journaled during a hub outage reaches the hub, exactly once,
//! measured side by side with raw SQLite `synchronous=FULL` (1,000 rows per transaction) in the same run, on the
//! same disk, and (with `--pouchdb DIR`) with PouchDB pushing the same number of documents to pouchdb-server.
//!
//! One drain, with the real binaries: enrol the till(s) against a hub, kill the hub, post the sales to the
//! running agent(s) (several concurrent clients; filling is not what is measured), start the hub again on the same
//! port, poke every agent with `POST /v1/sync/now` at once (otherwise the agents' outage backoff, up to 60 s, is
//! what gets measured), and time from the hub's `listening on` line until `GET /v1/admin/stores` shows every
//! till's `hub_seq` at its count (polled every 50 ms). Then exactly once is checked by paging through
//! `GET /v1/admin/events`: per till the ids are exactly the ones the agent answered 201 for, each once, at seqs
//! 1..n. The time until the hub's stock for every SKU matches what was sold is also taken (the agents' document
//! sync runs once their journal is across).
//!
//! Each round runs, in this order: raw SQLite, the drain with `--tills` tills, the drain with `--also-tills`
//! tills, then (when `--pouchdb` is given) PouchDB and storesync with `--peer-events` events, one request each
//! from one client, in alternating order.
//!
//! Build and run (the agent and hub binaries must sit next to this one):
//! ```text
//! cargo build --release -p storesync-tools -p storesync-agent -p storesync-hub --bins
//! mkdir -p bench-tmp
//! target/release/bench_drain --dir bench-tmp --pouchdb peer --out drain.md   # peer: docs/BENCHMARKS.md says how
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use rusqlite::{Connection, params};
use serde_json::Value;
use storesync_tools::bench::{device_of, loadavg, median, pct, strip_ansi};
use storesync_tools::proc::{Running, agent_cli, bin, enroll_code, isolate, start_agent_with};
use storesync_tools::sales::{SKUS, sale};
use uuid::Uuid;

const TOKEN: &str = "ssa_bench_admin_token_0123456789";
const STORE: &str = "S001";
/// The goal: the drain rate, end to end with the hub on SQLite.
const GOAL_DRAIN_RATE: f64 = 25_000.0;
/// The goal: storesync's rate against PouchDB's push rate.
const GOAL_PEER_RATIO: f64 = 8.0;
/// How often the hub is polled while it drains.
const POLL: Duration = Duration::from_millis(50);

#[derive(Parser, Debug)]
#[command(about = "issue #3 drain benchmark: outage backlog to hub, vs raw SQLite FULL and vs PouchDB")]
struct Args {
    /// Events queued during the outage, split evenly across the tills.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Tills of the main drain.
    #[arg(long, default_value_t = 1)]
    tills: usize,
    /// Tills of the second drain in each round (same number of events in all); 0 skips it.
    #[arg(long, default_value_t = 4)]
    also_tills: usize,
    /// Rounds; each runs every measurement once, interleaved.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The PouchDB peer's directory (with `bench.js` and its node_modules); runs it in every round.
    #[arg(long)]
    pouchdb: Option<PathBuf>,
    /// Events of the side-by-side run with PouchDB (both systems).
    #[arg(long, default_value_t = 10_000)]
    peer_events: usize,
    /// PouchDB's replication batch size.
    #[arg(long, default_value_t = 100)]
    peer_batch: usize,
    /// Concurrent clients per till while filling the journal of the drain runs.
    #[arg(long, default_value_t = 16)]
    fill_clients: usize,
    /// Do not poke the agents with `POST /v1/sync/now` at hub start (then their backoff is measured too).
    #[arg(long)]
    no_sync_now: bool,
    /// Run the hub with `STORESYNC_LOG=info,storesync_hub=debug` and report the time between its per-batch
    /// "upload acknowledged" lines.
    #[arg(long)]
    hub_log: bool,
    /// Profile the hub and the agents with `perf record -e cpu-clock -g` during the main drain of each round,
    /// writing `DIR/round-N.perf`. It attaches before the agents are poked, so the timings of such a run are not
    /// the figures; run it separately.
    #[arg(long)]
    perf: Option<PathBuf>,
    /// How long one drain or one stock convergence may take before the run fails.
    #[arg(long, default_value_t = 300)]
    patience_s: u64,
    /// Where the temporary data goes. Must be on the real disk, not tmpfs.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also write the markdown report here.
    #[arg(long)]
    out: Option<PathBuf>,
}

// ---------------------------------------------------------------- small helpers

fn port_of(url: &str) -> anyhow::Result<u16> {
    url.rsplit(':').next().unwrap_or("").trim_end_matches('/').parse().with_context(|| format!("port of {url}"))
}

fn fmt_rate(v: f64) -> String {
    if v.is_nan() { "–".into() } else { format!("{v:.0}") }
}

fn fmt_s(v: f64) -> String {
    if v.is_nan() { "–".into() } else { format!("{v:.2}") }
}

// ---------------------------------------------------------------- raw SQLite baseline

/// Rate of `rows` ~300-byte sale rows inserted 1,000 per transaction (WAL, FULL, integer key + unique UUID), and
/// the COMMIT latencies in ms.
fn raw_full(path: &Path, rows: usize) -> anyhow::Result<(f64, Vec<f64>)> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE journal (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL) STRICT;",
    )?;
    let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
    let sync: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0))?;
    ensure!(mode == "wal" && sync == 2, "raw baseline pragmas did not take: {mode} {sync}");
    // Bodies are made up front so the timed loop is SQLite and the disk only.
    let data: Vec<(String, String)> = (0..rows)
        .map(|i| {
            let id = Uuid::new_v4();
            (id.to_string(), sale(id, SKUS[i % SKUS.len()], 1).to_string())
        })
        .collect();
    let mut insert = conn.prepare_cached("INSERT INTO journal (event_id, body) VALUES (?1, ?2)")?;
    let mut commits = Vec::new();
    let start = Instant::now();
    for chunk in data.chunks(1000) {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        for (id, body) in chunk {
            insert.execute(params![id, body])?;
        }
        let t = Instant::now();
        conn.execute_batch("COMMIT")?;
        commits.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let secs = start.elapsed().as_secs_f64();
    drop(insert);
    let n: i64 = conn.query_row("SELECT count(*) FROM journal", [], |r| r.get(0))?;
    ensure!(n as usize == rows, "raw baseline wrote {n} rows, expected {rows}");
    commits.sort_by(f64::total_cmp);
    Ok((rows as f64 / secs, commits))
}

// ---------------------------------------------------------------- storesync

fn start_hub_logged(dir: &Path, listen: &str, debug: bool) -> Running {
    let mut cmd = Command::new(bin("storesync-hub"));
    cmd.args(["serve", "--listen", listen]).arg("--data-dir").arg(dir);
    isolate(&mut cmd, dir);
    cmd.env("STORESYNC_ADMIN_TOKEN", TOKEN);
    if debug {
        cmd.env("STORESYNC_LOG", "info,storesync_hub=debug");
    }
    Running::start(cmd, &dir.join("hub.log"))
}

fn enroll(dir: &Path, hub_dir: &Path, hub_url: &str, till: &str) -> anyhow::Result<()> {
    let code = enroll_code(hub_dir, STORE, till);
    let out = agent_cli(dir, &["enroll", "--hub", hub_url, "--code", &code]);
    ensure!(out.status.success(), "enroll {STORE}/{till}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(600)).no_proxy().build().expect("http client")
}

async fn get_json(c: &reqwest::Client, url: &str, admin: bool) -> anyhow::Result<Value> {
    let mut req = c.get(url);
    if admin {
        req = req.bearer_auth(TOKEN);
    }
    let resp = req.send().await?;
    let status = resp.status();
    ensure!(status.is_success(), "GET {url}: {status}");
    Ok(resp.json().await?)
}

/// Posts `n` sales to one agent from `clients` concurrent clients; returns the ids answered 201.
async fn fill(c: &reqwest::Client, url: &str, n: usize, clients: usize) -> anyhow::Result<HashSet<Uuid>> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (c, url, next) = (c.clone(), format!("{url}/v1/sales"), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(ids);
                }
                let id = Uuid::new_v4();
                let r = c.post(&url).json(&sale(id, SKUS[i % SKUS.len()], 1)).send().await?;
                ensure!(r.status() == reqwest::StatusCode::CREATED, "sale {i}: {}", r.status());
                ids.push(id);
            }
        }));
    }
    let mut all = HashSet::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    ensure!(all.len() == n, "{} distinct ids acknowledged, expected {n}", all.len());
    Ok(all)
}

/// `hub_seq` of every till of the store, from `GET /v1/admin/stores`.
async fn hub_seqs(c: &reqwest::Client, hub: &str) -> anyhow::Result<BTreeMap<String, (u64, bool)>> {
    let v = get_json(c, &format!("{hub}/v1/admin/stores"), true).await?;
    let mut out = BTreeMap::new();
    for s in v["stores"].as_array().into_iter().flatten().filter(|s| s["store"] == STORE) {
        for t in s["tills"].as_array().into_iter().flatten() {
            let till = t["till"].as_str().unwrap_or_default().to_owned();
            out.insert(till, (t["hub_seq"].as_u64().unwrap_or(0), t["chain_ok"].as_bool().unwrap_or(false)));
        }
    }
    Ok(out)
}

/// Pages through `GET /v1/admin/events` and checks exactly once against what each till acknowledged.
async fn check_exactly_once(
    c: &reqwest::Client,
    hub: &str,
    acked: &BTreeMap<String, HashSet<Uuid>>,
) -> anyhow::Result<usize> {
    let mut by_till: BTreeMap<String, Vec<(u64, Uuid)>> = BTreeMap::new();
    let mut after = String::new();
    let mut total = 0;
    loop {
        let url = format!("{hub}/v1/admin/events?store={STORE}&limit=1000&after={after}");
        let page = get_json(c, &url, true).await?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            break;
        }
        for e in &events {
            let till = e["till"].as_str().context("till")?.to_owned();
            let seq = e["seq"].as_u64().context("seq")?;
            let id: Uuid = e["event_id"].as_str().context("event_id")?.parse()?;
            by_till.entry(till).or_default().push((seq, id));
        }
        total += events.len();
        after = page["next"].as_str().context("next")?.to_owned();
    }
    let expected: usize = acked.values().map(HashSet::len).sum();
    ensure!(total == expected, "the hub holds {total} events, the tills acknowledged {expected}");
    ensure!(
        by_till.keys().collect::<Vec<_>>() == acked.keys().collect::<Vec<_>>(),
        "tills at the hub {:?} differ from the tills sold on {:?}",
        by_till.keys().collect::<Vec<_>>(),
        acked.keys().collect::<Vec<_>>()
    );
    for (till, mut evs) in by_till {
        evs.sort_unstable();
        for (i, (seq, _)) in evs.iter().enumerate() {
            ensure!(*seq == i as u64 + 1, "{till}: seq {seq} at position {i} (gap or duplicate)");
        }
        let ids: HashSet<Uuid> = evs.iter().map(|(_, id)| *id).collect();
        ensure!(ids.len() == evs.len(), "{till}: duplicate event ids at the hub");
        ensure!(ids == acked[&till], "{till}: the hub's ids differ from the ids the till acknowledged");
    }
    Ok(total)
}

/// The stock every SKU should show once every sale is in: each sale took one of its SKU and one bag.
fn expected_stock(n_per_till: &[usize]) -> BTreeMap<String, i64> {
    let mut m: BTreeMap<String, i64> = BTreeMap::new();
    for &n in n_per_till {
        for i in 0..n {
            *m.entry(SKUS[i % SKUS.len()].to_owned()).or_default() -= 1;
        }
        *m.entry("BAG".to_owned()).or_default() -= n as i64;
    }
    m
}

/// Whether every SKU's stock at `url_of(sku)` is as expected.
async fn stock_matches(
    c: &reqwest::Client,
    expected: &BTreeMap<String, i64>,
    url_of: impl Fn(&str) -> String,
    admin: bool,
) -> bool {
    for (sku, want) in expected {
        match get_json(c, &url_of(sku), admin).await {
            Ok(v) if v["on_hand"].as_i64() == Some(*want) => {}
            _ => return false,
        }
    }
    true
}

/// Per-batch intervals (ms) between the hub's "upload acknowledged" debug lines, from its log.
fn hub_batch_gaps(log: &Path, from: usize) -> Vec<f64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut times = Vec::new();
    for line in text.get(from..).unwrap_or("").lines().filter(|l| l.contains("upload acknowledged")) {
        let line = strip_ansi(line);
        let stamp = line.split_whitespace().next().unwrap_or("");
        if let Ok(t) = time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339) {
            times.push(t);
        }
    }
    let mut gaps: Vec<f64> = times.windows(2).map(|w| (w[1] - w[0]).as_seconds_f64() * 1000.0).collect();
    gaps.sort_by(f64::total_cmp);
    gaps
}

/// One storesync outage-and-drain run.
#[derive(Debug, Clone)]
struct Drain {
    tills: usize,
    events: usize,
    fill_clients: usize,
    /// Sales per second while filling the journals (POST to 201).
    fill_rate: f64,
    /// Spawning the hub to its `listening on` line.
    hub_start_s: f64,
    /// `listening on` to the first event stored at the hub.
    first_s: f64,
    /// `listening on` to every event at the hub: the measured drain.
    drain_s: f64,
    /// `listening on` to every agent's `sync-now` answering with nothing unsynced.
    agents_done_s: f64,
    /// `listening on` to the hub's stock of every SKU matching the sales.
    stock_s: f64,
    /// A fresh till of the same store enrolled after the drain: its start to its stock matching.
    fresh_pull_s: f64,
    polls: usize,
    hub_gaps_ms: Vec<f64>,
}

impl Drain {
    fn rate(&self) -> f64 {
        self.events as f64 / self.drain_s
    }
}

struct DrainOpts {
    tills: usize,
    events: usize,
    fill_clients: usize,
    sync_now: bool,
    hub_log: bool,
    fresh_pull: bool,
    patience: Duration,
    perf: Option<PathBuf>,
}

async fn drain(base: &Path, o: &DrainOpts) -> anyhow::Result<Drain> {
    let root = tempfile::tempdir_in(base)?;
    let hub_dir = root.path().join("hub");
    std::fs::create_dir_all(&hub_dir)?;
    let hub = start_hub_logged(&hub_dir, "127.0.0.1:0", o.hub_log);
    let hub_url = hub.url.trim_end_matches('/').to_owned();
    let port = port_of(&hub_url)?;
    let names: Vec<String> = (1..=o.tills).map(|i| format!("T{i:02}")).collect();
    let per_till: Vec<usize> = (0..o.tills).map(|i| o.events / o.tills + usize::from(i < o.events % o.tills)).collect();
    for t in &names {
        enroll(&root.path().join(t), &hub_dir, &hub_url, t)?;
    }
    hub.kill();
    let mut agents = Vec::new();
    for t in &names {
        agents.push(start_agent_with(&root.path().join(t), None, None));
    }
    let c = client();

    // The outage: every sale is journaled while the hub is down.
    let t = Instant::now();
    let mut fills = Vec::new();
    for (a, n) in agents.iter().zip(&per_till) {
        let (c, url, n, k) = (c.clone(), a.url.clone(), *n, o.fill_clients);
        fills.push(tokio::spawn(async move { fill(&c, &url, n, k).await }));
    }
    let mut acked: BTreeMap<String, HashSet<Uuid>> = BTreeMap::new();
    for (name, f) in names.iter().zip(fills) {
        acked.insert(name.clone(), f.await??);
    }
    let fill_rate = o.events as f64 / t.elapsed().as_secs_f64();
    for (a, n) in agents.iter().zip(&per_till) {
        let st = get_json(&c, &format!("{}/v1/status", a.url), false).await?;
        ensure!(st["unsynced"].as_u64() == Some(*n as u64), "before the hub is back: {st}");
        ensure!(st["hub"] != "reachable", "the hub should be down: {st}");
    }
    let log_from = std::fs::metadata(hub_dir.join("hub.log")).map(|m| m.len() as usize).unwrap_or(0);

    // The hub comes back on the same port: the clock starts at its `listening on` line.
    let spawned = Instant::now();
    let hub = start_hub_logged(&hub_dir, &format!("127.0.0.1:{port}"), o.hub_log);
    let mut t0 = Instant::now();
    let hub_start_s = (t0 - spawned).as_secs_f64();
    let perf = match &o.perf {
        None => None,
        Some(out) => {
            let pids: Vec<String> = std::iter::once(&hub).chain(&agents).map(|r| r.child.id().to_string()).collect();
            let p = Command::new("perf")
                .args(["record", "-q", "-e", "cpu-clock", "-F", "2000", "-g", "-p", &pids.join(","), "-o"])
                .arg(out)
                .stdout(std::process::Stdio::null())
                .spawn()
                .context("starting perf")?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            t0 = Instant::now();
            Some(p)
        }
    };
    let mut pokes = Vec::new();
    if o.sync_now {
        for a in &agents {
            let (c, url) = (c.clone(), format!("{}/v1/sync/now?wait_s={}", a.url, o.patience.as_secs()));
            pokes.push(tokio::spawn(async move {
                let v: Value = c.post(url).send().await?.json().await?;
                Ok::<_, anyhow::Error>((t0.elapsed().as_secs_f64(), v))
            }));
        }
    }
    let mut first_s = f64::NAN;
    let mut polls = 0;
    let drain_s = loop {
        let seqs = hub_seqs(&c, &hub_url).await?;
        polls += 1;
        let elapsed = t0.elapsed().as_secs_f64();
        if first_s.is_nan() && seqs.values().any(|(s, _)| *s > 0) {
            first_s = elapsed;
        }
        if names.iter().zip(&per_till).all(|(name, n)| seqs.get(name).is_some_and(|(s, _)| *s >= *n as u64)) {
            ensure!(seqs.values().all(|(_, ok)| *ok), "a till's chain is not ok at the hub: {seqs:?}");
            break elapsed;
        }
        ensure!(t0.elapsed() < o.patience, "not drained after {:?}: {seqs:?}", o.patience);
        tokio::time::sleep(POLL).await;
    };
    if let Some(mut p) = perf {
        let _ = Command::new("kill").args(["-INT", &p.id().to_string()]).status();
        let _ = p.wait();
    }
    let mut agents_done_s = f64::NAN;
    for p in pokes {
        let (at, v) = p.await??;
        ensure!(v["unsynced"].as_u64() == Some(0), "sync-now answered {v}");
        agents_done_s = if agents_done_s.is_nan() { at } else { agents_done_s.max(at) };
    }

    // Stock convergence at the hub: the agents' document sync runs once their journal is across.
    let expected = expected_stock(&per_till);
    let stock_s = loop {
        let url_of = |sku: &str| format!("{hub_url}/v1/admin/stores/{STORE}/stock/{sku}");
        if stock_matches(&c, &expected, url_of, true).await {
            break t0.elapsed().as_secs_f64();
        }
        ensure!(t0.elapsed() < o.patience, "hub stock not converged after {:?}", o.patience);
        tokio::time::sleep(POLL).await;
    };
    let hub_gaps_ms = if o.hub_log { hub_batch_gaps(&hub_dir.join("hub.log"), log_from) } else { Vec::new() };

    let total = check_exactly_once(&c, &hub_url, &acked).await?;
    ensure!(total == o.events, "{total} events at the hub, expected {}", o.events);

    // A fresh till of the same store pulls the store's state.
    let mut fresh_pull_s = f64::NAN;
    if o.fresh_pull {
        let dir = root.path().join("T99");
        enroll(&dir, &hub_dir, &hub_url, "T99")?;
        let spawned = Instant::now();
        let fresh = start_agent_with(&dir, None, None);
        fresh_pull_s = loop {
            let url_of = |sku: &str| format!("{}/v1/stock/{sku}", fresh.url);
            if stock_matches(&c, &expected, url_of, false).await {
                break spawned.elapsed().as_secs_f64();
            }
            ensure!(spawned.elapsed() < o.patience, "a fresh till's stock not converged after {:?}", o.patience);
            tokio::time::sleep(POLL).await;
        };
        fresh.stop();
    }
    hub.stop();
    for a in agents {
        a.stop();
    }
    Ok(Drain {
        tills: o.tills,
        events: o.events,
        fill_clients: o.fill_clients,
        fill_rate,
        hub_start_s,
        first_s,
        drain_s,
        agents_done_s,
        stock_s,
        fresh_pull_s,
        polls,
        hub_gaps_ms,
    })
}

// ---------------------------------------------------------------- PouchDB

#[derive(Debug, Clone)]
struct Pouch {
    write_rate: f64,
    push_s: f64,
    push_rate: f64,
    pull_s: f64,
}

/// The number right after `key` in `line` (e.g. `in ` → seconds, `= ` → rate).
fn number_after(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(key)? + key.len()..];
    let num: String = rest.chars().take_while(|ch| ch.is_ascii_digit() || *ch == '.').collect();
    num.parse().ok()
}

fn parse_pouch(out: &str, n: usize) -> anyhow::Result<Pouch> {
    let find = |what: &str| out.lines().find(|l| l.contains(what)).with_context(|| format!("no {what:?} line:\n{out}"));
    let write = find("offline local writes")?;
    let push = find("push replication")?;
    let pull = find("pull to fresh store")?;
    let written = number_after(push, "docs_written=").context("docs_written")? as usize;
    let count = number_after(push, "doc_count=").context("doc_count")? as usize;
    ensure!(written == n && count == n, "PouchDB pushed {written} docs, the server holds {count}; expected {n}");
    Ok(Pouch {
        write_rate: number_after(write, "= ").context("write rate")?,
        push_s: number_after(push, " in ").context("push time")?,
        push_rate: number_after(push, "= ").context("push rate")?,
        pull_s: number_after(pull, " in ").context("pull time")?,
    })
}

fn run_pouch(dir: &Path, n: usize, batch: usize) -> anyhow::Result<(Pouch, String)> {
    let out = Command::new("node")
        .arg("bench.js")
        .current_dir(dir)
        .env("N", n.to_string())
        .env("BATCH", batch.to_string())
        .output()
        .context("running node bench.js")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("node bench.js failed ({}):\n{text}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok((parse_pouch(&text, n)?, text))
}

// ---------------------------------------------------------------- one round, tables

#[derive(Debug, Clone)]
struct Round {
    load: String,
    raw_rate: f64,
    raw_commit_p50: f64,
    raw_commit_p99: f64,
    main: Drain,
    also: Option<Drain>,
    peer: Option<(Pouch, Drain)>,
}

fn round(n: usize, base: &Path, args: &Args, rt: &tokio::runtime::Runtime) -> anyhow::Result<Round> {
    let load = loadavg();
    let raw_dir = tempfile::tempdir_in(base)?;
    let (raw_rate, commits) = raw_full(&raw_dir.path().join("raw.db"), args.events)?;
    drop(raw_dir);
    let opts = |tills: usize, events: usize, fill_clients: usize, fresh_pull: bool| DrainOpts {
        tills,
        events,
        fill_clients,
        sync_now: !args.no_sync_now,
        hub_log: args.hub_log,
        fresh_pull,
        patience: Duration::from_secs(args.patience_s),
        perf: None,
    };
    let main_opts = DrainOpts {
        perf: args.perf.as_ref().map(|d| d.join(format!("round-{n}.perf"))),
        ..opts(args.tills, args.events, args.fill_clients, false)
    };
    let main = rt.block_on(drain(base, &main_opts))?;
    eprintln!(
        "round {n}: raw FULL 1000/txn {raw_rate:.0}/s | {} till(s): drain {:.2} s = {:.0}/s ({:.1}% of raw)",
        main.tills,
        main.drain_s,
        main.rate(),
        100.0 * main.rate() / raw_rate
    );
    let also = if args.also_tills > 0 {
        let d = rt.block_on(drain(base, &opts(args.also_tills, args.events, args.fill_clients, false)))?;
        eprintln!("round {n}: {} tills: drain {:.2} s = {:.0}/s", d.tills, d.drain_s, d.rate());
        Some(d)
    } else {
        None
    };
    let peer = match &args.pouchdb {
        None => None,
        Some(dir) => {
            let ours = || rt.block_on(drain(base, &opts(1, args.peer_events, 1, true)));
            let (pouch, mine) = if n % 2 == 1 {
                let (p, _) = run_pouch(dir, args.peer_events, args.peer_batch)?;
                (p, ours()?)
            } else {
                let m = ours()?;
                (run_pouch(dir, args.peer_events, args.peer_batch)?.0, m)
            };
            eprintln!(
                "round {n}: PouchDB push {:.2} s = {:.0}/s | storesync {:.2} s = {:.0}/s ({:.1}×)",
                pouch.push_s,
                pouch.push_rate,
                mine.drain_s,
                mine.rate(),
                mine.rate() / pouch.push_rate
            );
            Some((pouch, mine))
        }
    };
    Ok(Round {
        load,
        raw_rate,
        raw_commit_p50: pct(&commits, 50.0),
        raw_commit_p99: pct(&commits, 99.0),
        main,
        also,
        peer,
    })
}

fn drain_table(rounds: &[Round], pick: impl Fn(&Round) -> Option<&Drain>) -> String {
    let Some(first) = rounds.iter().find_map(&pick) else { return String::new() };
    let mut s = format!(
        "### {} events queued on {} till(s) (filled by {} clients per till), hub on SQLite\n\n",
        first.events, first.tills, first.fill_clients
    );
    s.push_str(
        "| round | load (1/5/15 min) | raw SQLite FULL 1,000/txn | commit p50 / p99 ms | fill (POST→201) | hub start | \
         first event | **drain** | **drain rate** | vs raw | agents done | stock converged |\n",
    );
    s.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    let mut cols: [Vec<f64>; 9] = Default::default();
    for (i, r) in rounds.iter().enumerate() {
        let Some(d) = pick(r) else { continue };
        let share = d.rate() / r.raw_rate;
        let (raw_rate, p50, p99) = (r.raw_rate, r.raw_commit_p50, r.raw_commit_p99);
        s.push_str(&format!(
            "| {} | {} | {} /s | {:.1} / {:.1} | {} /s | {:.2} s | {:.2} s | **{:.2} s** | **{} /s** | {:.0}% | {:.2} s \
             | {} s |\n",
            i + 1,
            r.load,
            fmt_rate(raw_rate),
            p50,
            p99,
            fmt_rate(d.fill_rate),
            d.hub_start_s,
            d.first_s,
            d.drain_s,
            fmt_rate(d.rate()),
            100.0 * share,
            d.agents_done_s,
            fmt_s(d.stock_s),
        ));
        for (col, v) in cols.iter_mut().zip([
            raw_rate,
            d.fill_rate,
            d.hub_start_s,
            d.first_s,
            d.drain_s,
            d.rate(),
            share,
            d.agents_done_s,
            d.stock_s,
        ]) {
            col.push(v);
        }
    }
    let m: Vec<f64> = cols.iter().map(|c| median(c.clone())).collect();
    s.push_str(&format!(
        "| **median** | | {} /s | | {} /s | {:.2} s | {:.2} s | **{:.2} s** | **{} /s** | {:.0}% | {:.2} s | {} s |\n",
        fmt_rate(m[0]),
        fmt_rate(m[1]),
        m[2],
        m[3],
        m[4],
        fmt_rate(m[5]),
        100.0 * m[6],
        m[7],
        fmt_s(m[8]),
    ));
    s
}

fn peer_table(rounds: &[Round]) -> String {
    let Some((_, first)) = rounds.iter().find_map(|r| r.peer.as_ref()) else { return String::new() };
    let mut s = format!(
        "### {} events, one request each from one client, against PouchDB 9 + pouchdb-server (batch_size 100)\n\n",
        first.events
    );
    s.push_str(
        "| round | PouchDB offline writes | storesync offline writes (POST→201) | PouchDB push | **PouchDB push rate** | \
         storesync drain | **storesync drain rate** | **ratio** | storesync stock converged | PouchDB pull (fresh \
         store, all docs) | storesync fresh till (store state) |\n",
    );
    s.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    let mut cols: [Vec<f64>; 9] = Default::default();
    for (i, r) in rounds.iter().enumerate() {
        let Some((p, d)) = &r.peer else { continue };
        let ratio = d.rate() / p.push_rate;
        s.push_str(&format!(
            "| {} | {} /s | {} /s | {:.2} s | **{} /s** | {:.2} s | **{} /s** | **{:.1}×** | {} s | {:.2} s | {} s |\n",
            i + 1,
            fmt_rate(p.write_rate),
            fmt_rate(d.fill_rate),
            p.push_s,
            fmt_rate(p.push_rate),
            d.drain_s,
            fmt_rate(d.rate()),
            ratio,
            fmt_s(d.stock_s),
            p.pull_s,
            fmt_s(d.fresh_pull_s),
        ));
        for (col, v) in cols.iter_mut().zip([
            p.write_rate,
            d.fill_rate,
            p.push_s,
            p.push_rate,
            d.drain_s,
            d.rate(),
            ratio,
            d.stock_s,
            p.pull_s,
        ]) {
            col.push(v);
        }
    }
    let fresh = median(rounds.iter().filter_map(|r| r.peer.as_ref()).map(|(_, d)| d.fresh_pull_s).collect());
    let m: Vec<f64> = cols.iter().map(|c| median(c.clone())).collect();
    s.push_str(&format!(
        "| **median** | {} /s | {} /s | {:.2} s | **{} /s** | {:.2} s | **{} /s** | **{:.1}×** | {} s | {:.2} s | {} s |\n",
        fmt_rate(m[0]),
        fmt_rate(m[1]),
        m[2],
        fmt_rate(m[3]),
        m[4],
        fmt_rate(m[5]),
        m[6],
        fmt_s(m[7]),
        m[8],
        fmt_s(fresh),
    ));
    s
}

fn gaps_table(rounds: &[Round]) -> String {
    let mut s = String::new();
    for (i, r) in rounds.iter().enumerate() {
        for d in [Some(&r.main), r.also.as_ref()].into_iter().flatten() {
            if d.hub_gaps_ms.is_empty() {
                continue;
            }
            if s.is_empty() {
                s.push_str(
                    "### Time between the hub's per-batch acknowledgements (all tills together)\n\n| round | tills | \
                     batches | p50 ms | p90 ms | p99 ms | max ms |\n| --- | --- | --- | --- | --- | --- | --- |\n",
                );
            }
            let g = &d.hub_gaps_ms;
            s.push_str(&format!(
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
                i + 1,
                d.tills,
                g.len() + 1,
                pct(g, 50.0),
                pct(g, 90.0),
                pct(g, 99.0),
                g.last().copied().unwrap_or(f64::NAN)
            ));
        }
    }
    s
}

fn verdicts(rounds: &[Round]) -> String {
    let mut s = String::from("### Goals\n\n");
    let main = median(rounds.iter().map(|r| r.main.rate()).collect());
    let raw = median(rounds.iter().map(|r| r.raw_rate).collect());
    let share = median(rounds.iter().map(|r| r.main.rate() / r.raw_rate).collect());
    let tills = rounds[0].main.tills;
    s.push_str(&format!(
        "- Drain ≥ {GOAL_DRAIN_RATE:.0} events/s ({tills} till(s)): median **{main:.0} events/s** ({:.2}× the goal; \
         {:.0}% of the raw SQLite FULL 1,000/txn rate of {raw:.0}/s measured in the same rounds): **{}**.\n",
        main / GOAL_DRAIN_RATE,
        100.0 * share,
        if main >= GOAL_DRAIN_RATE { "met" } else { "not met" }
    ));
    if let Some(also) = rounds[0].also.as_ref().map(|d| d.tills) {
        let r = median(rounds.iter().filter_map(|r| r.also.as_ref()).map(Drain::rate).collect());
        s.push_str(&format!(
            "- Drain with {also} tills: median **{r:.0} events/s** ({:.2}× the goal): **{}**.\n",
            r / GOAL_DRAIN_RATE,
            if r >= GOAL_DRAIN_RATE { "met" } else { "not met" }
        ));
    }
    if rounds.iter().any(|r| r.peer.is_some()) {
        let ratio =
            median(rounds.iter().filter_map(|r| r.peer.as_ref()).map(|(p, d)| d.rate() / p.push_rate).collect());
        s.push_str(&format!(
            "- ≥ {GOAL_PEER_RATIO:.0}× PouchDB's push rate: median ratio **{ratio:.1}×**: **{}**.\n",
            if ratio >= GOAL_PEER_RATIO { "met" } else { "not met" }
        ));
    }
    s
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_drain: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.rounds > 0 && args.events > 0 && args.tills > 0, "--rounds, --events and --tills must be ≥ 1");
    ensure!(args.events >= args.tills.max(args.also_tills), "fewer events than tills");
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)?;
    let (device, fstype) = device_of(&base);
    if fstype == "tmpfs" || fstype == "ramfs" {
        bail!("{} is on {fstype}: fsync is free there, so the baseline would mean nothing; pass --dir", base.display());
    }
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let header = format!(
        "bench_drain: {} rounds; {} events on {} till(s){}; fill {} clients per till; sync-now at hub start: {}; \
         PouchDB: {}\ndir {} on {device} ({fstype}); {nproc} cpus; load at start {}\n",
        args.rounds,
        args.events,
        args.tills,
        if args.also_tills > 0 { format!(" and on {} tills", args.also_tills) } else { String::new() },
        args.fill_clients,
        if args.no_sync_now { "no" } else { "yes" },
        args.pouchdb.as_ref().map_or_else(
            || "not run".to_owned(),
            |d| format!("{} with N={} BATCH={}", d.display(), args.peer_events, args.peer_batch)
        ),
        base.display(),
        loadavg()
    );
    eprint!("{header}");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut rounds = Vec::new();
    for n in 1..=args.rounds {
        rounds.push(round(n, &base, &args, &rt)?);
    }
    let polls: usize = rounds.iter().map(|r| r.main.polls).sum();
    let report = format!(
        "{header}load at end {}; {polls} polls of /v1/admin/stores during the main drains\n\n{}\n{}\n{}\n{}\n{}",
        loadavg(),
        drain_table(&rounds, |r| Some(&r.main)),
        drain_table(&rounds, |r| r.also.as_ref()),
        peer_table(&rounds),
        gaps_table(&rounds),
        verdicts(&rounds),
    );
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
