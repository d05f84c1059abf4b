//! The engine of `storesync-loadgen` (tools/src/bin/storesync-loadgen.rs): N stores × M tills against one or more
//! hubs, speaking the agent's sync protocol with the wire types of `storesync_shared::wire`.
//!
//! A round:
//! 1. **Provision**: per till, an enrolment code from `POST /v1/admin/enrollments` and a credential from
//!    `POST /v1/enroll`; tills are spread over the hub URLs round robin. Store ids are `<prefix>-s00001`, … so a
//!    run never collides with an earlier one on the same hub.
//! 2. **Journal** ([`Scenario::Storm`]): every till journals `events` entries up front (a mix of sales and returns
//!    over the catalogue, hash-chained; [`crate::journal::Shop`]), off the clock.
//! 3. **Run**: *storm*: every till reconnects at the same instant and drains its backlog in batches, then syncs
//!    its store document; *steady*: each till journals at `rate` entries per second (Poisson), goes offline now and
//!    then (outages of exponential length), and syncs whenever it is online and has something new; at the end
//!    every till comes back and drains. At most `concurrency` tills sync at once. Slow-downs, failover and
//!    retries are the agent's (see [`till`]).
//! 4. **Verify** ([`verify`]): exactly once and stock, through the admin API.
//!
//! Times are wall-clock from the start of step 3. The drain is until the last till's last entry is acknowledged;
//! events/s is the entries journaled divided by it.

pub mod hubs;
pub mod report;
mod till;
pub mod verify;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::{StreamExt as _, TryStreamExt as _};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use hubs::{Hubs, Stats, StatsInner};
use till::{Ctx, SimTill, Stopped};
pub use verify::Problems;

use crate::journal::Shop;

/// What the tills do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Every till has `events` entries queued and all reconnect at once.
    Storm,
    /// Entries arrive at `rate` per till per second, with random outages and reconnects.
    Steady,
}

/// The steady scenario's knobs.
#[derive(Debug, Clone, Copy)]
pub struct Steady {
    pub duration: Duration,
    /// Entries per till per second.
    pub rate: f64,
    /// How often a till looks at its clock (new entries, outages, sync).
    pub tick: Duration,
    /// Outages per till per hour.
    pub outages_per_hour: f64,
    /// Mean outage length.
    pub outage_mean: Duration,
}

/// A load run.
#[derive(Debug, Clone)]
pub struct Config {
    pub hubs: Vec<String>,
    pub admin_token: String,
    pub ca_cert: Option<PathBuf>,
    /// Store ids start with this.
    pub prefix: String,
    pub stores: usize,
    pub tills: usize,
    pub scenario: Scenario,
    /// Storm: entries queued per till.
    pub events: usize,
    /// Entries per upload (the agent's default is 1,000 or 1 MiB).
    pub batch: usize,
    /// Tills syncing at once.
    pub concurrency: usize,
    pub skus: usize,
    pub returns_pct: u32,
    /// Sync the store documents (stock) as the agent does once drained.
    pub doc_sync: bool,
    /// The longest wait between two attempts of a till (the agent's `max_backoff`).
    pub retry_cap: Duration,
    pub request_timeout: Duration,
    pub seed: u64,
    /// A round that takes longer is stopped and fails.
    pub patience: Duration,
    pub steady: Steady,
}

/// What one round measured and found.
#[derive(Debug, Clone)]
pub struct RoundResult {
    pub prefix: String,
    pub load_start: String,
    pub load_end: String,
    pub tills: usize,
    /// Entries journaled by all tills.
    pub events: u64,
    pub provision_s: f64,
    pub journal_s: f64,
    /// Start of the run to the last entry acknowledged.
    pub drain_s: f64,
    /// Steady: the end of the steady phase to the last entry acknowledged.
    pub final_drain_s: Option<f64>,
    /// Start of the run to the last document session done.
    pub docs_s: Option<f64>,
    pub stats: StatsInner,
    /// Tills that stopped short, and why.
    pub stopped: Vec<String>,
    pub verify_s: f64,
    pub events_checked: u64,
    pub stock_checked: Option<usize>,
    pub problems: Problems,
}

impl RoundResult {
    /// Entries per second over the drain.
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.drain_s
    }

    /// Every till finished and the verification found nothing.
    pub fn passed(&self) -> bool {
        self.stopped.is_empty() && self.problems.is_empty()
    }
}

/// Checks a config before anything is sent.
///
/// # Errors
/// A bound out of range.
pub fn check(cfg: &Config) -> anyhow::Result<()> {
    if cfg.stores == 0 || cfg.tills == 0 || cfg.concurrency == 0 || cfg.batch == 0 || cfg.skus == 0 {
        bail!("--stores, --tills, --concurrency, --batch and --skus must be at least 1");
    }
    if cfg.batch > storesync_shared::wire::MAX_BATCH_EVENTS {
        bail!("--batch must be at most {} (the hub's limit)", storesync_shared::wire::MAX_BATCH_EVENTS);
    }
    if cfg.skus > usize::from(u16::MAX) {
        bail!("--skus must be at most {}", u16::MAX);
    }
    if cfg.tills > 999 || cfg.stores > 99_999 {
        bail!("at most 99,999 stores of 999 tills");
    }
    if cfg.scenario == Scenario::Steady && !(cfg.steady.rate > 0.0 && cfg.steady.rate.is_finite()) {
        bail!("--rate must be a positive number");
    }
    if !storesync_tests_id_ok(&cfg.prefix) {
        bail!("--prefix must be 1 to 40 characters of A-Z a-z 0-9 . _ -");
    }
    Ok(())
}

fn storesync_tests_id_ok(prefix: &str) -> bool {
    (1..=40).contains(&prefix.len()) && prefix.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Enrols every till of the round, 32 at a time.
async fn provision(cfg: &Config, hubs: &Hubs, prefix: &str) -> anyhow::Result<Vec<SimTill>> {
    let specs: Vec<(usize, String, String)> = (0..cfg.stores)
        .flat_map(|s| (0..cfg.tills).map(move |t| (s, t)))
        .enumerate()
        .map(|(k, (s, t))| (k, format!("{prefix}-s{:05}", s + 1), format!("T{}", t + 1)))
        .collect();
    futures_util::stream::iter(specs)
        .map(|(k, store, till)| async move {
            let body = json!({"store": store, "till": till, "ttl_s": 86_400});
            let code = hubs.admin(reqwest::Method::POST, "/v1/admin/enrollments", Some(&body)).await?;
            let code = code["code"].as_str().context("no code in the enrolment answer")?.to_owned();
            let home = k % hubs.len();
            let mut last = String::new();
            for i in 0..hubs.len() {
                let resp = hubs
                    .client
                    .post(hubs.url(home + i, "/v1/enroll"))
                    .json(&json!({"code": code, "agent_version": concat!("loadgen-", env!("CARGO_PKG_VERSION"))}))
                    .send()
                    .await;
                match resp {
                    Ok(r) => {
                        let status = r.status();
                        let v: serde_json::Value = r.json().await.unwrap_or_default();
                        let Some(cred) = v["credential"].as_str() else {
                            bail!("enrolling {store}/{till}: {status} {v}");
                        };
                        let seed = cfg.seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                        // The till syncs with its own hub (round robin), wherever it enrolled: a dead one makes it fail over.
                        return Ok(SimTill::new(store, till, cred.to_owned(), home, seed, cfg.retry_cap));
                    }
                    Err(e) => last = storesync_agent::sync::error_chain(&e),
                }
            }
            bail!("enrolling {store}/{till}: no hub answered: {last}")
        })
        .buffered(32)
        .try_collect()
        .await
}

/// Journals `n` entries on every till, on the blocking pool, one chunk per CPU.
async fn journal_all(tills: Vec<SimTill>, shop: &Arc<Shop>, n: usize) -> anyhow::Result<Vec<SimTill>> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let per = tills.len().div_ceil(cpus).max(1);
    let mut chunks: Vec<Vec<SimTill>> = Vec::new();
    let mut it = tills.into_iter().peekable();
    while it.peek().is_some() {
        chunks.push(it.by_ref().take(per).collect());
    }
    let mut handles = Vec::new();
    for mut chunk in chunks {
        let shop = shop.clone();
        handles.push(tokio::task::spawn_blocking(move || {
            for t in &mut chunk {
                t.journal(&shop, n)?;
            }
            Ok::<_, anyhow::Error>(chunk)
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        out.extend(h.await.context("journal task")??);
    }
    Ok(out)
}

/// What a till task hands back.
struct Done {
    till: SimTill,
    /// When its last entry was acknowledged (from the start of the run).
    drained: Option<Duration>,
    /// When its last sync finished.
    finished: Duration,
    outcome: Result<(), Stopped>,
}

/// Takes a sync slot, drains the till, then syncs its store document (when the run does).
async fn finish(mut till: SimTill, ctx: &Ctx, gate: Arc<Semaphore>, t0: Instant, reconnect: bool) -> Done {
    let _permit = gate.acquire_owned().await;
    let mut outcome = till.drain(ctx, reconnect).await;
    let drained = outcome.is_ok().then(|| t0.elapsed());
    if outcome.is_ok() && ctx.doc_sync {
        outcome = till.doc_sync(ctx).await;
    }
    Done { till, drained, finished: t0.elapsed(), outcome }
}

async fn storm_till(till: SimTill, ctx: Ctx, gate: Arc<Semaphore>, t0: Instant) -> Done {
    finish(till, &ctx, gate, t0, true).await
}

/// A Poisson draw with mean `lambda` (Knuth's method; `lambda` is small here).
fn poisson(rng: &mut StdRng, lambda: f64) -> usize {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda > 30.0 {
        return lambda.round() as usize;
    }
    let limit = (-lambda).exp();
    let (mut k, mut p) = (0, 1.0);
    loop {
        p *= rng.random::<f64>();
        if p <= limit {
            return k;
        }
        k += 1;
    }
}

/// The steady phase of one till: journal at the rate, go offline now and then, sync when online with something
/// new. Answers whether the till must reconnect (it ended offline).
async fn steady_phase(
    till: &mut SimTill,
    ctx: &Ctx,
    st: Steady,
    gate: &Arc<Semaphore>,
    t0: Instant,
    seed: u64,
) -> Result<bool, Stopped> {
    let mut rng = StdRng::seed_from_u64(seed);
    let end = t0 + st.duration;
    let p_outage = (st.outages_per_hour * st.tick.as_secs_f64() / 3600.0).clamp(0.0, 1.0);
    let mut offline_until: Option<Instant> = None;
    let mut reconnect = true;
    let mut last = t0;
    // Stagger the tills over the first tick.
    let mut wait = st.tick.mul_f64(rng.random::<f64>());
    while Instant::now() + wait < end {
        if tokio::time::timeout(wait, ctx.stop.cancelled()).await.is_ok() {
            return Err(Stopped::Cancelled);
        }
        wait = st.tick.mul_f64(0.8 + 0.4 * rng.random::<f64>());
        let now = Instant::now();
        let n = poisson(&mut rng, st.rate * (now - last).as_secs_f64());
        last = now;
        till.journal(&ctx.shop, n).map_err(|e| Stopped::GaveUp(format!("{e:#}")))?;
        match offline_until {
            Some(t) if now < t => continue,
            Some(_) => {
                offline_until = None;
                reconnect = true;
            }
            None if rng.random_bool(p_outage) => {
                let mean = st.outage_mean.as_secs_f64();
                let len = -mean * (1.0 - rng.random::<f64>()).ln();
                offline_until = Some(now + Duration::from_secs_f64(len.min(mean * 10.0)));
                continue;
            }
            None => {}
        }
        if till.drained() && !reconnect {
            continue;
        }
        let _permit = gate.clone().acquire_owned().await;
        till.sync_all(ctx, reconnect).await?;
        reconnect = false;
    }
    Ok(reconnect)
}

async fn steady_till(mut till: SimTill, ctx: Ctx, st: Steady, gate: Arc<Semaphore>, t0: Instant, seed: u64) -> Done {
    let reconnect = match steady_phase(&mut till, &ctx, st, &gate, t0, seed).await {
        Ok(r) => r,
        Err(e) => return Done { till, drained: None, finished: t0.elapsed(), outcome: Err(e) },
    };
    // The end of the steady phase: every till is back and drains what it has.
    finish(till, &ctx, gate, t0, reconnect).await
}

/// Runs round `round` (from 1) of `cfg`.
///
/// # Errors
/// A hub that cannot be reached or refuses the admin calls (provisioning, verification). Tills that stop short
/// and verification problems are not errors: they are in the result.
pub async fn run_round(cfg: &Config, round: usize, rounds: usize) -> anyhow::Result<RoundResult> {
    check(cfg)?;
    let hubs = Hubs::new(&cfg.hubs, &cfg.admin_token, cfg.ca_cert.as_deref(), cfg.request_timeout, cfg.concurrency)?;
    let prefix = if rounds > 1 { format!("{}-r{round}", cfg.prefix) } else { cfg.prefix.clone() };
    let shop = Arc::new(Shop::new(cfg.skus, cfg.returns_pct));
    let started = Instant::now();
    let tills = provision(cfg, &hubs, &prefix).await.context("provisioning the tills")?;
    let provision_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let tills = match cfg.scenario {
        Scenario::Storm => journal_all(tills, &shop, cfg.events).await?,
        Scenario::Steady => tills,
    };
    let journal_s = started.elapsed().as_secs_f64();
    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let ctx = Ctx {
        hubs: hubs.clone(),
        stats: stats.clone(),
        shop: shop.clone(),
        batch: cfg.batch,
        retry_cap: cfg.retry_cap,
        doc_sync: cfg.doc_sync,
        stop: stop.clone(),
    };
    let gate = Arc::new(Semaphore::new(cfg.concurrency));
    let load_start = crate::bench::loadavg();
    let t0 = Instant::now();
    let watchdog = tokio::spawn({
        let stop = stop.clone();
        let patience = cfg.patience;
        async move {
            tokio::select! {
                () = tokio::time::sleep(patience) => stop.cancel(),
                () = stop.cancelled() => {}
            }
        }
    });
    let mut set = tokio::task::JoinSet::new();
    for (i, till) in tills.into_iter().enumerate() {
        let (ctx, gate) = (ctx.clone(), gate.clone());
        match cfg.scenario {
            Scenario::Storm => set.spawn(storm_till(till, ctx, gate, t0)),
            Scenario::Steady => set.spawn(steady_till(till, ctx, cfg.steady, gate, t0, cfg.seed ^ (i as u64 + 1))),
        };
    }
    let mut done = Vec::new();
    while let Some(d) = set.join_next().await {
        done.push(d.context("till task")?);
    }
    stop.cancel();
    let _ = watchdog.await;
    let load_end = crate::bench::loadavg();
    let drain = done.iter().filter_map(|d| d.drained).max().unwrap_or_default();
    let finished = done.iter().map(|d| d.finished).max().unwrap_or_default();
    let stopped: Vec<String> = done
        .iter()
        .filter_map(|d| match &d.outcome {
            Ok(()) => None,
            Err(Stopped::Cancelled) => {
                Some(format!("{}/{}: stopped: the run's patience ran out", d.till.store, d.till.till))
            }
            Err(Stopped::GaveUp(why)) => Some(format!("{}/{}: gave up: {why}", d.till.store, d.till.till)),
        })
        .collect();
    let tills: Vec<SimTill> = done.into_iter().map(|d| d.till).collect();
    let events: u64 = tills.iter().map(SimTill::last_seq).sum();

    let started = Instant::now();
    let records: Vec<verify::TillRecord<'_>> = tills
        .iter()
        .map(|t| verify::TillRecord { store: &t.store, till: &t.till, ids: t.ids(), hashes: t.hashes() })
        .collect();
    let stores: HashSet<String> = tills.iter().map(|t| t.store.clone()).collect();
    let hub_tills = verify::hub_tills(&hubs).await.context("reading GET /v1/admin/stores")?;
    let observed = verify::hub_events(&hubs, &stores).await.context("paging GET /v1/admin/events")?;
    let (events_checked, mut problems) = verify::exactly_once(&records, &hub_tills, observed);
    let stock_checked = if cfg.doc_sync {
        let mut expected: BTreeMap<(String, String), i64> = BTreeMap::new();
        for store in &stores {
            for (sku, _) in &shop.catalogue {
                expected.insert((store.clone(), sku.clone()), 0);
            }
        }
        for t in &tills {
            for (i, d) in t.movements(0, t.last_seq()) {
                if let Some((sku, _)) = shop.catalogue.get(usize::from(i)) {
                    *expected.entry((t.store.clone(), sku.clone())).or_insert(0) += d;
                }
            }
        }
        Some(verify::stock(&hubs, &expected, &mut problems).await.context("reading the hub's stock")?)
    } else {
        None
    };
    let verify_s = started.elapsed().as_secs_f64();
    let (drain_s, final_drain_s) = match cfg.scenario {
        Scenario::Storm => (drain.as_secs_f64(), None),
        Scenario::Steady => (drain.as_secs_f64(), Some(drain.saturating_sub(cfg.steady.duration).as_secs_f64())),
    };
    Ok(RoundResult {
        prefix,
        load_start,
        load_end,
        tills: tills.len(),
        events,
        provision_s,
        journal_s,
        drain_s,
        final_drain_s,
        docs_s: cfg.doc_sync.then_some(finished.as_secs_f64()),
        stats: stats.snapshot(),
        stopped,
        verify_s,
        events_checked,
        stock_checked,
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_draws_average_their_mean() {
        let mut rng = StdRng::seed_from_u64(5);
        for lambda in [0.0, 0.1, 2.0, 12.0] {
            let n = 20_000;
            let mean = (0..n).map(|_| poisson(&mut rng, lambda)).sum::<usize>() as f64 / n as f64;
            assert!((mean - lambda).abs() <= 0.05 * lambda.max(1.0), "{lambda}: {mean}");
        }
    }
}
