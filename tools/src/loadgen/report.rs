//! The markdown report of a load run, in the house style of the bench binaries: what was run on what machine, one
//! row per round with the load average, a median row, then the answers by kind and the verification.

use std::fmt::Write as _;

use super::{Config, RoundResult, Scenario};
use crate::bench::{median, pct, sorted};

/// `N cpus (model), M GiB RAM`, from `/proc`.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_else(|| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb: f64 = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN);
    format!("{cpus} cpus ({model}), {:.1} GiB RAM", kb / 1024.0 / 1024.0)
}

fn f0(v: f64) -> String {
    if v.is_nan() { "–".into() } else { format!("{v:.0}") }
}

fn f1(v: f64) -> String {
    if v.is_nan() { "–".into() } else { format!("{v:.1}") }
}

fn f2(v: f64) -> String {
    if v.is_nan() { "–".into() } else { format!("{v:.2}") }
}

/// What the run was, for the report's first lines.
pub fn header(cfg: &Config, rounds: usize) -> String {
    let what = match cfg.scenario {
        Scenario::Storm => format!(
            "storm: {} stores × {} till(s), {} events queued per till, all reconnecting at once",
            cfg.stores, cfg.tills, cfg.events
        ),
        Scenario::Steady => format!(
            "steady: {} stores × {} till(s) for {} s, {} events/s per till, {} outages per till-hour (mean {} s)",
            cfg.stores,
            cfg.tills,
            cfg.steady.duration.as_secs(),
            cfg.steady.rate,
            cfg.steady.outages_per_hour,
            cfg.steady.outage_mean.as_secs()
        ),
    };
    format!(
        "storesync-loadgen {what}; {rounds} round(s)\nhubs: {}; batches of {} events; at most {} tills syncing at \
         once; store documents synced: {}; {} SKUs, {}% returns; retry cap {} s, request timeout {} s; seed {}\n\
         machine: {}; store ids {}-…\n",
        cfg.hubs.join(", "),
        cfg.batch,
        cfg.concurrency,
        if cfg.doc_sync { "yes" } else { "no" },
        cfg.skus,
        cfg.returns_pct,
        cfg.retry_cap.as_secs(),
        cfg.request_timeout.as_secs(),
        cfg.seed,
        machine(),
        cfg.prefix,
    )
}

/// The whole report.
pub fn markdown(cfg: &Config, rounds: &[RoundResult]) -> String {
    let mut s = header(cfg, rounds.len());
    s.push('\n');
    let steady = cfg.scenario == Scenario::Steady;
    s.push_str(
        "| round | load (1/5/15 min) | tills | events | provision | **drain** | **events/s** | upload p50 / p99 ms | \
         batch p50 / p99 ms (with waits) | 429/503 answers | to a 429, p99 ms | errors | documents synced | \
         verified |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let mut cols: [Vec<f64>; 11] = Default::default();
    for (i, r) in rounds.iter().enumerate() {
        let (up, batch, shed) =
            (sorted(r.stats.upload_ms.clone()), sorted(r.stats.batch_ms.clone()), sorted(r.stats.shed_ms.clone()));
        let row = [
            r.provision_s,
            r.drain_s,
            r.rate(),
            pct(&up, 50.0),
            pct(&up, 99.0),
            pct(&batch, 50.0),
            pct(&batch, 99.0),
            r.stats.slow_downs() as f64,
            pct(&shed, 99.0),
            r.stats.errors() as f64,
            r.docs_s.unwrap_or(f64::NAN),
        ];
        let drain = match r.final_drain_s {
            Some(fin) => format!("{} s (final {} s)", f2(r.drain_s), f2(fin)),
            None => format!("{} s", f2(r.drain_s)),
        };
        let _ = writeln!(
            s,
            "| {} | {} → {} | {} | {} | {} s | **{drain}** | **{}** | {} / {} | {} / {} | {} | {} | {} | {} | {} |",
            i + 1,
            r.load_start,
            r.load_end,
            r.tills,
            r.events,
            f1(row[0]),
            f0(row[2]),
            f1(row[3]),
            f1(row[4]),
            f1(row[5]),
            f1(row[6]),
            row[7],
            f1(row[8]),
            row[9],
            r.docs_s.map_or_else(|| "not synced".into(), |d| format!("{} s", f2(d))),
            if r.passed() { "**passed**" } else { "**FAILED**" },
        );
        for (c, v) in cols.iter_mut().zip(row) {
            c.push(v);
        }
    }
    if rounds.len() > 1 {
        let m: Vec<f64> = cols.iter().map(|c| median(c.clone())).collect();
        let _ = writeln!(
            s,
            "| **median** | | | | {} s | **{} s** | **{}** | {} / {} | {} / {} | {} | {} | {} | {} | |",
            f1(m[0]),
            f2(m[1]),
            f0(m[2]),
            f1(m[3]),
            f1(m[4]),
            f1(m[5]),
            f1(m[6]),
            f0(m[7]),
            f1(m[8]),
            f0(m[9]),
            if m[10].is_nan() { "–".into() } else { format!("{} s", f2(m[10])) },
        );
    }
    if steady {
        s.push_str("\n(steady: the drain runs from the start to the last entry acknowledged after the steady phase; events/s is over it.)\n");
    }
    s.push_str("\n### Answers other than success\n\n| round | answer | count | error |\n| --- | --- | --- | --- |\n");
    let mut any = false;
    for (i, r) in rounds.iter().enumerate() {
        for (kind, (n, err)) in &r.stats.kinds {
            any = true;
            let _ = writeln!(s, "| {} | {kind} | {n} | {} |", i + 1, if *err { "yes" } else { "no" });
        }
    }
    if !any {
        s.push_str("| | none | 0 | |\n");
    }
    for (i, r) in rounds.iter().enumerate() {
        for (kind, list) in &r.stats.examples {
            for e in list {
                let _ = writeln!(s, "\n- round {}, {kind}: `{}`", i + 1, e.replace('`', "'"));
            }
        }
    }
    s.push_str("\n### Verification\n\n");
    for (i, r) in rounds.iter().enumerate() {
        let stock = match r.stock_checked {
            Some(n) => format!("stock of {n} (store, SKU) pairs compared with the journaled movements"),
            None => "stock not checked (documents not synced)".into(),
        };
        let _ = writeln!(
            s,
            "- round {} ({}-…): {} events of {} tills checked exactly once against GET /v1/admin/events and \
             /v1/admin/stores; {stock}; {:.1} s: **{}**",
            i + 1,
            r.prefix,
            r.events_checked,
            r.tills,
            r.verify_s,
            if r.passed() {
                "passed".to_owned()
            } else {
                format!("FAILED ({} problems)", r.problems.count + r.stopped.len())
            },
        );
        for p in r.stopped.iter().take(10).chain(&r.problems.listed) {
            let _ = writeln!(s, "  - {p}");
        }
    }
    s
}
