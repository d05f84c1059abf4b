//! `storesync-loadgen`: simulates N stores × M tills against one or more hubs (issue #9), with the agent's sync
//! protocol, pauses and failover, and ends with a check of exactly-once delivery and stock through the admin API.
//! Exits 1 when a round fails its verification. The engine is `storesync_tools::loadgen`; its note says what a
//! round does and how times are taken.
//!
//! ```text
//! cargo build --release -p storesync-tools -p storesync-hub --bins
//! STORESYNC_ADMIN_TOKEN=… target/release/storesync-loadgen --hub http://127.0.0.1:8080 \
//!     --stores 2000 --tills 1 --events 500 --concurrency 2000 --out storm.md
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use storesync_tools::loadgen::{self, Config, Scenario, Steady, report};

#[derive(Debug, Parser)]
#[command(name = "storesync-loadgen", version, about = "simulate stores and tills against storesync hubs")]
struct Args {
    /// A hub URL; repeat for several instances (tills are spread round robin and fail over).
    #[arg(long = "hub", required = true)]
    hubs: Vec<String>,
    /// The hubs' admin token.
    #[arg(long, env = "STORESYNC_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// A PEM CA certificate to trust for https hubs.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Scenario::Storm)]
    scenario: Scenario,
    #[arg(long, default_value_t = 20)]
    stores: usize,
    /// Tills per store.
    #[arg(long, default_value_t = 1)]
    tills: usize,
    /// Storm: events queued on each till.
    #[arg(long, default_value_t = 500)]
    events: usize,
    /// Events per upload.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Tills syncing at once (each has at most one request in flight, like an agent).
    #[arg(long, default_value_t = 1000)]
    concurrency: usize,
    /// SKUs in the catalogue.
    #[arg(long, default_value_t = 12)]
    skus: usize,
    /// Percent of entries that are returns.
    #[arg(long, default_value_t = 8)]
    returns_pct: u32,
    /// Skip the store document sync (then stock is not checked).
    #[arg(long)]
    no_doc_sync: bool,
    /// The longest wait between two attempts of a till, in seconds (the agent's default).
    #[arg(long, default_value_t = 60)]
    retry_cap_s: u64,
    /// Request timeout, in seconds (the agent's default).
    #[arg(long, default_value_t = 30)]
    request_timeout_s: u64,
    /// Steady: how long, in seconds.
    #[arg(long, default_value_t = 60)]
    duration_s: u64,
    /// Steady: events per till per second.
    #[arg(long, default_value_t = 0.2)]
    rate: f64,
    /// Steady: how often each till looks at its clock, in ms.
    #[arg(long, default_value_t = 1000)]
    tick_ms: u64,
    /// Steady: outages per till per hour.
    #[arg(long, default_value_t = 6.0)]
    outages_per_hour: f64,
    /// Steady: mean outage length, in seconds.
    #[arg(long, default_value_t = 20)]
    outage_mean_s: u64,
    /// Store ids start with this [default: lg-<random>].
    #[arg(long)]
    prefix: Option<String>,
    /// Rounds, each with fresh stores (`<prefix>-rN-…`).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A round still running after this many seconds is stopped and fails.
    #[arg(long, default_value_t = 1800)]
    patience_s: u64,
    /// Also write the markdown report here.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("storesync-loadgen: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<bool> {
    let a = Args::parse();
    anyhow::ensure!(a.rounds >= 1, "--rounds must be at least 1");
    let cfg = Config {
        hubs: a.hubs,
        admin_token: a.admin_token,
        ca_cert: a.ca_cert,
        prefix: a.prefix.unwrap_or_else(|| format!("lg-{:08x}", rand::random::<u32>())),
        stores: a.stores,
        tills: a.tills,
        scenario: a.scenario,
        events: a.events,
        batch: a.batch,
        concurrency: a.concurrency,
        skus: a.skus,
        returns_pct: a.returns_pct,
        doc_sync: !a.no_doc_sync,
        retry_cap: Duration::from_secs(a.retry_cap_s.max(1)),
        request_timeout: Duration::from_secs(a.request_timeout_s.max(1)),
        seed: a.seed,
        patience: Duration::from_secs(a.patience_s),
        steady: Steady {
            duration: Duration::from_secs(a.duration_s),
            rate: a.rate,
            tick: Duration::from_millis(a.tick_ms.max(10)),
            outages_per_hour: a.outages_per_hour,
            outage_mean: Duration::from_secs(a.outage_mean_s),
        },
    };
    loadgen::check(&cfg)?;
    eprint!("{}", report::header(&cfg, a.rounds));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let mut rounds = Vec::new();
    for n in 1..=a.rounds {
        let r = rt.block_on(loadgen::run_round(&cfg, n, a.rounds)).with_context(|| format!("round {n}"))?;
        eprintln!(
            "round {n}: {} events from {} tills drained in {:.2} s = {:.0} events/s; {} slow-downs, {} errors; \
             verification {}",
            r.events,
            r.tills,
            r.drain_s,
            r.rate(),
            r.stats.slow_downs(),
            r.stats.errors(),
            if r.passed() { "passed" } else { "FAILED" }
        );
        rounds.push(r);
    }
    let text = report::markdown(&cfg, &rounds);
    println!("{text}");
    if let Some(out) = &a.out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
    }
    let passed = rounds.iter().all(loadgen::RoundResult::passed);
    println!("verification: {}", if passed { "passed" } else { "FAILED" });
    Ok(passed)
}
