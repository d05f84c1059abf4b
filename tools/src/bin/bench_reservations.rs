//! Issue 11's reservation benchmark: the latency (p50/p99) and throughput of `POST /v1/admin/reservations` at the
//! real hub binary, with 2,000 stores' escrow loaded.
//!
//! Method: the escrow of `--stores` stores × `--skus` SKUs (`--escrow` units each) is written into a fresh
//! `hub.db` through the hub's own `ReservationStore` (one transaction each, as `PUT /v1/admin/escrow` does, without
//! the HTTP round trip and the document write, which are not what is measured), then the hub binary is started on
//! it. Each order has 1 or 2 lines of 1 unit and lists 3 stores drawn at random (seeded); every order id is new, so
//! every request reserves (one `BEGIN IMMEDIATE` transaction with the escrow check, the reservation, its event and
//! its outbox row); the hub's planner then writes the store document's hold, off the request's path. Warm-up requests are not counted. Phase 1: one client,
//! one request at a time (latency). Phase 2: `--clients` concurrent clients (throughput, and latency under load).
//!
//! Run (the hub binary must sit next to this one):
//! ```text
//! cargo build -p storesync-hub -p storesync-tools --bins
//! mkdir -p bench-tmp
//! target/debug/bench_reservations --dir bench-tmp --out reservations.md
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use serde_json::json;
use storesync_hub::storage::reservations::ReservationStore;
use storesync_tools::bench::{device_of, loadavg, ms, pct, sorted};
use storesync_tools::proc::{Running, hub_command};

const TOKEN: &str = "ssa_bench_admin_token_0123456789";

#[derive(Parser, Debug)]
#[command(about = "issue 11 reservation benchmark: POST /v1/admin/reservations latency and throughput")]
struct Args {
    /// Where the hub's data dir is made (a fresh subdirectory).
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 2_000)]
    stores: usize,
    #[arg(long, default_value_t = 5)]
    skus: usize,
    /// Units of escrow per store and SKU.
    #[arg(long, default_value_t = 50)]
    escrow: i64,
    /// Measured requests per phase.
    #[arg(long, default_value_t = 2_000)]
    requests: usize,
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Also write the results table here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A small seeded generator, so every run asks for the same orders.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn store(i: usize) -> String {
    format!("S{i:04}")
}

fn order(rng: &mut Rng, n: usize, args: &Args) -> serde_json::Value {
    let mut lines = vec![json!({"sku": format!("SKU-{}", rng.below(args.skus)), "qty": 1})];
    if rng.below(2) == 0 {
        let sku = format!("SKU-{}", rng.below(args.skus));
        if lines[0]["sku"] != sku {
            lines.push(json!({"sku": sku, "qty": 1}));
        }
    }
    let mut stores: Vec<String> = Vec::new();
    while stores.len() < 3 {
        let s = store(rng.below(args.stores));
        if !stores.contains(&s) {
            stores.push(s);
        }
    }
    json!({"order_id": format!("B-{n}"), "lines": lines, "stores": stores, "pickup_by": "2099-01-01T00:00:00Z"})
}

async fn reserve(c: &reqwest::Client, url: &str, body: &serde_json::Value) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let r = c.post(format!("{url}/v1/admin/reservations")).bearer_auth(TOKEN).json(body).send().await?;
    let status = r.status();
    let text = r.text().await?;
    ensure!(status.as_u16() == 201, "reservation answered {status}: {text}");
    Ok(t.elapsed())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let data = args.dir.join(format!("bench-reservations-{}", std::process::id()));
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let t = Instant::now();
    {
        let storage = storesync_hub::open_storage(&data)?;
        for s in 0..args.stores {
            for k in 0..args.skus {
                storage.escrow_set(&store(s), &format!("SKU-{k}"), args.escrow, None, 1_800_000_000)?;
            }
        }
    }
    let loaded = t.elapsed();
    eprintln!("loaded {} escrow rows in {loaded:?}", args.stores * args.skus);
    let hub = Running::start(hub_command(&data, "127.0.0.1:0", None, TOKEN), &data.join("hub.log"));
    let url = hub.url.clone();
    let c = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let mut rng = Rng(0x0B0F_1511);
    let mut n = 0;
    for _ in 0..args.warmup {
        reserve(&c, &url, &order(&mut rng, n, &args)).await?;
        n += 1;
    }
    // Phase 1: one client.
    let mut one = Vec::with_capacity(args.requests);
    let t = Instant::now();
    for _ in 0..args.requests {
        one.push(ms(reserve(&c, &url, &order(&mut rng, n, &args)).await?));
        n += 1;
    }
    let one_rate = args.requests as f64 / t.elapsed().as_secs_f64();
    // Phase 2: concurrent clients.
    let per = args.requests / args.clients.max(1);
    let orders: Vec<Vec<serde_json::Value>> = (0..args.clients)
        .map(|_| {
            (0..per)
                .map(|_| {
                    n += 1;
                    order(&mut rng, n, &args)
                })
                .collect()
        })
        .collect();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for batch in orders {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(batch.len());
            for o in &batch {
                out.push(ms(reserve(&c, &url, o).await?));
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let mut many = Vec::new();
    for task in tasks {
        many.extend(task.await??);
    }
    let many_rate = many.len() as f64 / t.elapsed().as_secs_f64();
    hub.stop();
    let (one, many) = (sorted(one), sorted(many));
    let (device, fs) = device_of(&data);
    let table = format!(
        "| clients | requests | p50 ms | p99 ms | reservations/s |\n| --- | --- | --- | --- | --- |\n\
         | 1 | {} | {:.2} | {:.2} | {:.0} |\n| {} | {} | {:.2} | {:.2} | {:.0} |\n\n\
         {} stores × {} SKUs of escrow ({} rows, loaded in {:.1} s); hub on SQLite; device {device} ({fs}); \
         load average before: {}\n",
        one.len(),
        pct(&one, 50.0),
        pct(&one, 99.0),
        one_rate,
        args.clients,
        many.len(),
        pct(&many, 50.0),
        pct(&many, 99.0),
        many_rate,
        args.stores,
        args.skus,
        args.stores * args.skus,
        loaded.as_secs_f64(),
        loadavg(),
    );
    print!("{table}");
    if let Some(out) = &args.out {
        std::fs::write(out, &table).with_context(|| format!("writing {}", out.display()))?;
    }
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}
