//! Issue #2's journal benchmark: POST-to-201 latency and 16-client throughput of a real `storesync-agent run`,
//! measured side by side with raw SQLite `synchronous=FULL` baselines in the same process, on the same disk.
//!
//! Each round runs, in this order: raw SQLite 1 row per transaction, the agent with 1 client, raw SQLite 100 rows
//! per transaction, raw SQLite 16 rows per transaction (a reference: the best a 16-client group commit could do),
//! the agent with 16 clients. So every agent figure has its baseline measured right before it, and disk drift
//! between rounds hits both. The ratios the goals are about are taken within each round.
//!
//! Build and run (the agent binary must sit next to this one):
//! ```text
//! cargo build --release -p storesync-tools -p storesync-agent --bins
//! target/release/bench_journal --rounds 5 --out bench.md
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rusqlite::{Connection, params};
use storesync_tools::bench::{device_of, loadavg, median, ms, pct, sorted, strip_ansi};
use storesync_tools::proc::{Running, bin, isolate, start_agent};
use storesync_tools::sales::{SKUS, sale};
use tokio::sync::Mutex;
use uuid::Uuid;

/// The goal for one client: its p99 may exceed the raw single-commit p99 by at most this much.
const GOAL_P99_EXTRA_MS: f64 = 1.0;
/// The goal for 16 clients: at least this share of the raw 100-rows-per-transaction rate.
const GOAL_CONCURRENT_SHARE: f64 = 0.25;
/// How many concurrent clients the throughput test uses.
const CLIENTS: usize = 16;

#[derive(Parser, Debug)]
#[command(about = "issue #2 journal benchmark: agent POST latency and group-commit throughput vs raw SQLite")]
struct Args {
    /// Rounds; each runs every measurement once, interleaved.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Requests in the 1-client agent test.
    #[arg(long, default_value_t = 2000)]
    single: usize,
    /// Seconds the 16-client agent test runs.
    #[arg(long, default_value_t = 5.0)]
    concurrent_secs: f64,
    /// Transactions in the raw 1-row-per-transaction baseline.
    #[arg(long, default_value_t = 2000)]
    raw_single: usize,
    /// Transactions in the raw 100-rows-per-transaction baseline.
    #[arg(long, default_value_t = 200)]
    raw_batches: usize,
    /// Requests each client sends before measuring (connection set-up, page cache).
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Start the agent with its writer's per-group debug line on (`group commit group=.. apply_us=.. commit_us=..`,
    /// see docs/BENCHMARKS.md) and report group sizes and writer time per phase.
    #[arg(long)]
    writer_log: bool,
    /// Where the temporary databases go. Must be on the real disk, not tmpfs.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also write the markdown table here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One round's figures. Latencies in milliseconds, rates per second.
#[derive(Debug, Clone, Default)]
struct Round {
    load_before: String,
    raw1_rate: f64,
    raw1_p50: f64,
    raw1_p99: f64,
    raw1_max: f64,
    raw100_rate: f64,
    raw100_commit_p50: f64,
    raw100_commit_p99: f64,
    raw16_rate: f64,
    raw16_commit_p50: f64,
    agent1_rate: f64,
    agent1_p50: f64,
    agent1_p99: f64,
    agent1_max: f64,
    agent1_events_per_group: f64,
    agent16_rate: f64,
    agent16_p50: f64,
    agent16_p99: f64,
    agent16_events_per_group: f64,
    errors: u64,
    /// Writer statistics per phase, with `--writer-log`.
    writer1: Option<WriterStats>,
    writer16: Option<WriterStats>,
}

/// What the writer's per-group debug lines say about one phase.
#[derive(Debug, Clone, Default)]
struct WriterStats {
    groups: usize,
    events: usize,
    apply_p50_ms: f64,
    apply_p99_ms: f64,
    commit_p50_ms: f64,
    commit_p99_ms: f64,
    /// Share of the phase's wall time the writer spent inside a group (apply + commit).
    busy: f64,
    /// Histogram of group sizes: 1, 2-4, 5-8, 9-12, 13-16, more.
    sizes: [usize; 6],
}

/// Parses the `group commit` lines in `log[from..to]`, for a phase of `secs` seconds.
fn writer_stats(log: &Path, from: usize, to: usize, secs: f64) -> Option<WriterStats> {
    let text = std::fs::read(log).ok()?;
    let text = strip_ansi(&String::from_utf8_lossy(&text[from.min(text.len())..to.min(text.len())]));
    let (mut apply, mut commit) = (Vec::new(), Vec::new());
    let mut st = WriterStats::default();
    for line in text.lines().filter(|l| l.contains("group commit")) {
        let field = |k: &str| -> Option<f64> {
            line.split_whitespace().find_map(|t| t.strip_prefix(k).and_then(|v| v.parse::<f64>().ok()))
        };
        let (Some(g), Some(a), Some(c)) = (field("group="), field("apply_us="), field("commit_us=")) else {
            continue;
        };
        st.groups += 1;
        st.events += g as usize;
        apply.push(a / 1000.0);
        commit.push(c / 1000.0);
        let bucket = match g as usize {
            0..=1 => 0,
            2..=4 => 1,
            5..=8 => 2,
            9..=12 => 3,
            13..=16 => 4,
            _ => 5,
        };
        st.sizes[bucket] += 1;
    }
    st.busy = (apply.iter().sum::<f64>() + commit.iter().sum::<f64>()) / 1000.0 / secs;
    let (apply, commit) = (sorted(apply), sorted(commit));
    st.apply_p50_ms = pct(&apply, 50.0);
    st.apply_p99_ms = pct(&apply, 99.0);
    st.commit_p50_ms = pct(&commit, 50.0);
    st.commit_p99_ms = pct(&commit, 99.0);
    Some(st)
}

fn log_len(log: &Path) -> usize {
    std::fs::metadata(log).map(|m| m.len() as usize).unwrap_or(0)
}

impl Round {
    fn p99_extra_ms(&self) -> f64 {
        self.agent1_p99 - self.raw1_p99
    }

    fn concurrent_share(&self) -> f64 {
        self.agent16_rate / self.raw100_rate
    }
}

/// A ~300-byte canonical sale body, and its event id.
fn sale_body(i: usize) -> (Uuid, String) {
    let id = Uuid::new_v4();
    let body = sale(id, SKUS[i % SKUS.len()], 1 + (i % 3) as i64);
    (id, serde_json::to_string(&body).expect("serializing a sale"))
}

// ---------------------------------------------------------------- raw SQLite baselines

fn raw_open(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE journal (
             seq      INTEGER PRIMARY KEY,
             event_id TEXT NOT NULL UNIQUE,
             body     TEXT NOT NULL
         ) STRICT;",
    )?;
    let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
    let sync: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0))?;
    if mode != "wal" || sync != 2 {
        bail!("raw baseline pragmas did not take: journal_mode={mode} synchronous={sync}");
    }
    Ok(conn)
}

/// Inserts `txns` transactions of `per_txn` rows each. Returns the total time and each COMMIT's latency.
fn raw_run(path: &Path, txns: usize, per_txn: usize) -> anyhow::Result<(Duration, Vec<f64>)> {
    let conn = raw_open(path)?;
    // Bodies are made up front so the timed loop is SQLite and the disk only.
    let rows: Vec<(String, String)> = (0..txns * per_txn).map(sale_body).map(|(id, b)| (id.to_string(), b)).collect();
    let mut insert = conn.prepare_cached("INSERT INTO journal (event_id, body) VALUES (?1, ?2)")?;
    let mut commits = Vec::with_capacity(txns);
    let start = Instant::now();
    for chunk in rows.chunks(per_txn) {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        for (id, body) in chunk {
            insert.execute(params![id, body])?;
        }
        let t = Instant::now();
        conn.execute_batch("COMMIT")?;
        commits.push(ms(t.elapsed()));
    }
    let total = start.elapsed();
    drop(insert);
    let n: i64 = conn.query_row("SELECT count(*) FROM journal", [], |r| r.get(0))?;
    if n as usize != txns * per_txn {
        bail!("raw baseline wrote {n} rows, expected {}", txns * per_txn);
    }
    Ok((total, commits))
}

// ---------------------------------------------------------------- the agent

#[derive(Default)]
struct Errors {
    count: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl Errors {
    async fn record(&self, what: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut s = self.samples.lock().await;
        if s.len() < 10 {
            s.push(what);
        }
    }
}

/// One keep-alive HTTP/1.1 connection to the agent, driven by hyper's bare client connection: the POS side of the
/// benchmark shares the agent's 2 cores, so it should cost as little CPU as it can (reqwest's pool, timeouts and
/// redirect handling cost about as much CPU as the agent's own request handling).
struct Conn {
    send: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    url: hyper::Uri,
    host: String,
}

impl Conn {
    async fn open(url: &str) -> anyhow::Result<Conn> {
        let url: hyper::Uri = url.parse()?;
        let host = url.authority().context("url without host")?.to_string();
        let stream = tokio::net::TcpStream::connect(&host).await?;
        stream.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("bench connection ended: {e}");
            }
        });
        Ok(Conn { send, url, host })
    }
}

/// POSTs one sale; `true` on 201, `false` (recorded as an error) on anything else.
async fn post_sale(conn: &mut Conn, i: usize, errors: &Errors) -> bool {
    use http_body_util::BodyExt;
    let (_, body) = sale_body(i);
    let req = hyper::Request::post(conn.url.clone())
        .header(hyper::header::HOST, &conn.host)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)));
    let req = match req {
        Ok(r) => r,
        Err(e) => {
            errors.record(format!("building a request: {e}")).await;
            return false;
        }
    };
    if let Err(e) = conn.send.ready().await {
        errors.record(format!("connection not ready: {e}")).await;
        return false;
    }
    let res = match conn.send.send_request(req).await {
        Ok(r) => r,
        Err(e) => {
            errors.record(format!("request failed: {e}")).await;
            return false;
        }
    };
    let status = res.status();
    match res.into_body().collect().await {
        Ok(_) if status == hyper::StatusCode::CREATED => true,
        Ok(b) => {
            errors.record(format!("{status}: {}", String::from_utf8_lossy(&b.to_bytes()))).await;
            false
        }
        Err(e) => {
            errors.record(format!("reading a {status} body: {e}")).await;
            false
        }
    }
}

/// (group commits, events) the agent's writer has made so far, from its status (`writer`).
async fn writer_counts(client: &reqwest::Client, sales_url: &str) -> Option<(u64, u64)> {
    let url = sales_url.replace("/v1/sales", "/v1/status");
    let v: serde_json::Value = client.get(url).send().await.ok()?.json().await.ok()?;
    Some((v["writer"]["group_commits"].as_u64()?, v["writer"]["events"].as_u64()?))
}

fn events_per_group(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> f64 {
    match (before, after) {
        (Some((g0, e0)), Some((g1, e1))) if g1 > g0 => (e1 - e0) as f64 / (g1 - g0) as f64,
        _ => f64::NAN,
    }
}

struct AgentFigures {
    single_rate: f64,
    single_p50: f64,
    single_p99: f64,
    single_max: f64,
    single_epg: f64,
    secs: f64,
}

async fn agent_single(client: &reqwest::Client, url: &str, args: &Args, errors: &Errors) -> AgentFigures {
    let mut conn = match Conn::open(url).await {
        Ok(c) => c,
        Err(e) => {
            errors.record(format!("connecting: {e:#}")).await;
            return AgentFigures {
                single_rate: f64::NAN,
                single_p50: f64::NAN,
                single_p99: f64::NAN,
                single_max: f64::NAN,
                single_epg: f64::NAN,
                secs: f64::NAN,
            };
        }
    };
    for i in 0..args.warmup {
        post_sale(&mut conn, i, errors).await;
    }
    let before = writer_counts(client, url).await;
    let mut lat = Vec::with_capacity(args.single);
    let start = Instant::now();
    let mut ok = 0u64;
    for i in 0..args.single {
        let t = Instant::now();
        if post_sale(&mut conn, i, errors).await {
            lat.push(ms(t.elapsed()));
            ok += 1;
        }
    }
    let total = start.elapsed();
    let after = writer_counts(client, url).await;
    let lat = sorted(lat);
    AgentFigures {
        single_rate: ok as f64 / total.as_secs_f64(),
        single_p50: pct(&lat, 50.0),
        single_p99: pct(&lat, 99.0),
        single_max: lat.last().copied().unwrap_or(f64::NAN),
        single_epg: events_per_group(before, after),
        secs: total.as_secs_f64(),
    }
}

/// 16 tasks, each posting sequentially until the deadline. Returns (201s per second, p50, p99, events per group).
async fn agent_concurrent(
    client: &reqwest::Client,
    url: &str,
    args: &Args,
    errors: &Arc<Errors>,
) -> (f64, f64, f64, f64, f64) {
    // Every client opens its connection and warms it first; the clock starts once all are warm.
    let warmed = Arc::new(tokio::sync::Barrier::new(CLIENTS + 1));
    let barrier = Arc::new(tokio::sync::Barrier::new(CLIENTS + 1));
    let secs = Duration::from_secs_f64(args.concurrent_secs);
    let warmup = args.warmup.min(10);
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (url, errors, barrier, warmed) = (url.to_owned(), errors.clone(), barrier.clone(), warmed.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut conn = match Conn::open(&url).await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        errors.record(format!("connecting: {e:#}")).await;
                        None
                    }
                };
                if let Some(conn) = conn.as_mut() {
                    for i in 0..warmup {
                        post_sale(conn, c * 1000 + i, &errors).await;
                    }
                }
                warmed.wait().await;
                barrier.wait().await;
                let Some(mut conn) = conn else { return lat };
                let deadline = Instant::now() + secs;
                let mut i = c;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if post_sale(&mut conn, i, &errors).await {
                        lat.push(ms(t.elapsed()));
                    }
                    i += CLIENTS;
                }
                lat
            })
        })
        .collect();
    warmed.wait().await;
    let before = writer_counts(client, url).await;
    barrier.wait().await;
    let start = Instant::now();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("client task"));
    }
    let total = start.elapsed();
    let after = writer_counts(client, url).await;
    let ok = lat.len() as u64;
    let lat = sorted(lat);
    let epg = events_per_group(before, after);
    (ok as f64 / total.as_secs_f64(), pct(&lat, 50.0), pct(&lat, 99.0), epg, total.as_secs_f64())
}

// ---------------------------------------------------------------- one round

fn round(n: usize, base: &Path, args: &Args, rt: &tokio::runtime::Runtime) -> anyhow::Result<Round> {
    let dir = tempfile::Builder::new().prefix(&format!("bench-journal-{n}-")).tempdir_in(base)?;
    let mut r = Round { load_before: loadavg(), ..Round::default() };

    // 1. raw SQLite, 1 row per transaction.
    let (total, commits) = raw_run(&dir.path().join("raw1.db"), args.raw_single, 1).context("raw 1/txn")?;
    let commits = sorted(commits);
    r.raw1_rate = args.raw_single as f64 / total.as_secs_f64();
    r.raw1_p50 = pct(&commits, 50.0);
    r.raw1_p99 = pct(&commits, 99.0);
    r.raw1_max = commits.last().copied().unwrap_or(f64::NAN);

    // 2. the agent, 1 client.
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir)?;
    let agent = if args.writer_log {
        let mut cmd = std::process::Command::new(bin("storesync-agent"));
        cmd.args(["run", "--listen", "127.0.0.1:0", "--store-id", "bench-store", "--till-id", "till-1"])
            .arg("--data-dir")
            .arg(&agent_dir);
        isolate(&mut cmd, &agent_dir);
        cmd.env("STORESYNC_LOG", "info,storesync_agent::journal::writer=debug").env("NO_COLOR", "1");
        Running::start(cmd, &agent_dir.join("agent.log"))
    } else {
        start_agent(&agent_dir, "bench-store", "till-1")
    };
    let url = format!("{}/v1/sales", agent.url);
    let errors = Arc::new(Errors::default());
    let client = reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(CLIENTS * 2)
        .timeout(Duration::from_secs(30))
        .build()?;
    let mark = log_len(&agent.log);
    let single = rt.block_on(agent_single(&client, &url, args, &errors));
    if args.writer_log {
        // The warm-up's groups are in the slice too; they are few next to the measured ones.
        r.writer1 = writer_stats(&agent.log, mark, log_len(&agent.log), single.secs);
    }
    r.agent1_rate = single.single_rate;
    r.agent1_p50 = single.single_p50;
    r.agent1_p99 = single.single_p99;
    r.agent1_max = single.single_max;
    r.agent1_events_per_group = single.single_epg;

    // 3. raw SQLite, 100 rows per transaction (the agent idles meanwhile).
    let (total, commits) = raw_run(&dir.path().join("raw100.db"), args.raw_batches, 100).context("raw 100/txn")?;
    let commits = sorted(commits);
    r.raw100_rate = (args.raw_batches * 100) as f64 / total.as_secs_f64();
    r.raw100_commit_p50 = pct(&commits, 50.0);
    r.raw100_commit_p99 = pct(&commits, 99.0);

    // 4. raw SQLite, 16 rows per transaction: what a perfect group commit of 16 clients could reach on this disk.
    let txns16 = args.raw_batches * 100 / CLIENTS;
    let (total, commits) = raw_run(&dir.path().join("raw16.db"), txns16, CLIENTS).context("raw 16/txn")?;
    r.raw16_rate = (txns16 * CLIENTS) as f64 / total.as_secs_f64();
    r.raw16_commit_p50 = pct(&sorted(commits), 50.0);

    // 5. the agent, 16 clients.
    let mark = log_len(&agent.log);
    let (rate, p50, p99, epg, secs) = rt.block_on(agent_concurrent(&client, &url, args, &errors));
    if args.writer_log {
        r.writer16 = writer_stats(&agent.log, mark, log_len(&agent.log), secs);
    }
    r.agent16_rate = rate;
    r.agent16_p50 = p50;
    r.agent16_p99 = p99;
    r.agent16_events_per_group = epg;

    drop(client);
    agent.stop();
    r.errors = errors.count.load(Ordering::Relaxed);
    for s in rt.block_on(errors.samples.lock()).iter() {
        eprintln!("round {n}: non-201: {s}");
    }
    Ok(r)
}

// ---------------------------------------------------------------- output

fn table(rounds: &[Round]) -> String {
    let mut s = String::new();
    s.push_str(
        "| round | load (1/5/15 min) | raw 1/txn rate/s | raw 1/txn commit p50 ms | raw 1/txn commit p99 ms \
         | raw 100/txn rows/s | raw 100/txn commit p99 ms | agent 1 client p50 ms | agent 1 client p99 ms \
         | p99 − raw p99 ms (goal ≤ 1) | agent 16 clients sales/s | 16-client / raw 100/txn (goal ≥ 25%) \
         | errors |\n",
    );
    s.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (i, r) in rounds.iter().enumerate() {
        s.push_str(&format!(
            "| {} | {} | {:.0} | {:.3} | {:.3} | {:.0} | {:.3} | {:.3} | {:.3} | {:+.3} | {:.0} | {:.1}% | {} |\n",
            i + 1,
            r.load_before,
            r.raw1_rate,
            r.raw1_p50,
            r.raw1_p99,
            r.raw100_rate,
            r.raw100_commit_p99,
            r.agent1_p50,
            r.agent1_p99,
            r.p99_extra_ms(),
            r.agent16_rate,
            100.0 * r.concurrent_share(),
            r.errors
        ));
    }
    let m = |f: fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    s.push_str(&format!(
        "| **median** | | {:.0} | {:.3} | {:.3} | {:.0} | {:.3} | {:.3} | {:.3} | **{:+.3}** | {:.0} | **{:.1}%** | {} |\n",
        m(|r| r.raw1_rate),
        m(|r| r.raw1_p50),
        m(|r| r.raw1_p99),
        m(|r| r.raw100_rate),
        m(|r| r.raw100_commit_p99),
        m(|r| r.agent1_p50),
        m(|r| r.agent1_p99),
        m(Round::p99_extra_ms),
        m(|r| r.agent16_rate),
        100.0 * m(Round::concurrent_share),
        rounds.iter().map(|r| r.errors).sum::<u64>()
    ));
    s
}

fn detail_table(rounds: &[Round]) -> String {
    const COLS: usize = 12;
    let mut s = String::new();
    s.push_str(
        "| round | raw 1/txn commit max ms | raw 100/txn commit p50 ms | raw 16/txn rows/s | raw 16/txn commit p50 ms | raw 16/txn ÷ raw 100/txn \
         | agent 1 client sales/s | agent 1 client max ms | agent 1 client events/group | agent 16 clients p50 ms \
         | agent 16 clients p99 ms | agent 16 clients events/group | 16-client / raw 16/txn |\n",
    );
    s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    let row = |label: String, v: [f64; COLS]| {
        format!(
            "| {label} | {:.3} | {:.3} | {:.0} | {:.3} | {:.1}% | {:.0} | {:.3} | {:.2} | {:.3} | {:.3} | {:.2} | {:.1}% |\n",
            v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11]
        )
    };
    let vals = |r: &Round| {
        [
            r.raw1_max,
            r.raw100_commit_p50,
            r.raw16_rate,
            r.raw16_commit_p50,
            100.0 * r.raw16_rate / r.raw100_rate,
            r.agent1_rate,
            r.agent1_max,
            r.agent1_events_per_group,
            r.agent16_p50,
            r.agent16_p99,
            r.agent16_events_per_group,
            100.0 * r.agent16_rate / r.raw16_rate,
        ]
    };
    for (i, r) in rounds.iter().enumerate() {
        s.push_str(&row((i + 1).to_string(), vals(r)));
    }
    let med: Vec<f64> = (0..COLS).map(|k| median(rounds.iter().map(|r| vals(r)[k]).collect())).collect();
    s.push_str(&row("**median**".into(), med.try_into().expect("COLS columns")));
    s
}

fn writer_table(rounds: &[Round]) -> String {
    if rounds.iter().all(|r| r.writer1.is_none() && r.writer16.is_none()) {
        return String::new();
    }
    let mut s = String::from(
        "| round | phase | groups | events/group | apply p50 ms | apply p99 ms | commit p50 ms | commit p99 ms \
         | writer busy | group sizes 1 / 2-4 / 5-8 / 9-12 / 13-16 / >16 |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    for (i, r) in rounds.iter().enumerate() {
        for (phase, w) in [("1 client", &r.writer1), ("16 clients", &r.writer16)] {
            let Some(w) = w.as_ref().filter(|w| w.groups > 0) else {
                s.push_str(&format!(
                    "| {} | {phase} | no `group commit` lines in the agent log | | | | | | | |\n",
                    i + 1
                ));
                continue;
            };
            let sizes: Vec<String> = w.sizes.iter().map(ToString::to_string).collect();
            s.push_str(&format!(
                "| {} | {phase} | {} | {:.2} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0}% | {} |\n",
                i + 1,
                w.groups,
                w.events as f64 / w.groups.max(1) as f64,
                w.apply_p50_ms,
                w.apply_p99_ms,
                w.commit_p50_ms,
                w.commit_p99_ms,
                100.0 * w.busy,
                sizes.join(" / ")
            ));
        }
    }
    s.push('\n');
    s
}

fn verdicts(rounds: &[Round]) -> String {
    let extra = median(rounds.iter().map(Round::p99_extra_ms).collect());
    let share = median(rounds.iter().map(Round::concurrent_share).collect());
    let extra_met = rounds.iter().filter(|r| r.p99_extra_ms() <= GOAL_P99_EXTRA_MS).count();
    let share_met = rounds.iter().filter(|r| r.concurrent_share() >= GOAL_CONCURRENT_SHARE).count();
    let yes = |b: bool| if b { "MET" } else { "NOT MET" };
    format!(
        "- 1 client: median of per-round (agent p99 − raw 1/txn commit p99) = {extra:+.3} ms (goal ≤ +{GOAL_P99_EXTRA_MS} \
         ms): {}; met in {extra_met} of {} rounds.\n\
         - 16 clients: median of per-round (agent sales/s ÷ raw 100/txn rows/s) = {:.1}% (goal ≥ {:.0}%): {}; met in \
         {share_met} of {} rounds.\n",
        yes(extra <= GOAL_P99_EXTRA_MS),
        rounds.len(),
        100.0 * share,
        100.0 * GOAL_CONCURRENT_SHARE,
        yes(share >= GOAL_CONCURRENT_SHARE),
        rounds.len()
    )
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench_journal: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    if args.rounds == 0 || args.single == 0 || args.raw_single == 0 || args.raw_batches == 0 {
        bail!("--rounds, --single, --raw-single and --raw-batches must be at least 1");
    }
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)?;
    let (device, fstype) = device_of(&base);
    if fstype == "tmpfs" || fstype == "ramfs" {
        bail!("{} is on {fstype}: fsync is free there, so the baseline would mean nothing; pass --dir", base.display());
    }
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let header = format!(
        "bench_journal: {} rounds; raw 1/txn {} commits; raw 100/txn {} commits; agent 1 client {} requests; agent \
         {CLIENTS} clients {} s; warm-up {}\ndir {} on {device} ({fstype}); {nproc} cpus; load at start {}\n",
        args.rounds,
        args.raw_single,
        args.raw_batches,
        args.single,
        args.concurrent_secs,
        args.warmup,
        base.display(),
        loadavg()
    );
    eprint!("{header}");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut rounds = Vec::new();
    for n in 1..=args.rounds {
        let r = round(n, &base, &args, &rt)?;
        eprintln!(
            "round {n}: raw1 {:.0}/s p50 {:.3} p99 {:.3} | agent1 p50 {:.3} p99 {:.3} (Δp99 {:+.3}) | raw100 {:.0}/s \
             commit p99 {:.3} | agent16 {:.0}/s ({:.1}%, {:.2} events/group) | errors {} | load {}",
            r.raw1_rate,
            r.raw1_p50,
            r.raw1_p99,
            r.agent1_p50,
            r.agent1_p99,
            r.p99_extra_ms(),
            r.raw100_rate,
            r.raw100_commit_p99,
            r.agent16_rate,
            100.0 * r.concurrent_share(),
            r.agent16_events_per_group,
            r.errors,
            r.load_before
        );
        rounds.push(r);
    }
    let errors: u64 = rounds.iter().map(|r| r.errors).sum();
    let report = format!(
        "{header}load at end {}\n\n{}\n{}\n{}{}",
        loadavg(),
        table(&rounds),
        detail_table(&rounds),
        writer_table(&rounds),
        verdicts(&rounds)
    );
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    if errors > 0 {
        eprintln!("bench_journal: {errors} requests were not answered 201; see above");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
