//! `storesync-loadgen` (issue #9), the real binary against a real hub: a small storm and a short steady run with
//! outages both end with the exactly-once and stock verification passing. The hub runs with tight backpressure
//! bounds so the tills are slowed down, and a second `--hub` URL that refuses connections makes half of the tills
//! fail over; the report must show both.

use std::path::Path;
use std::process::{Command, Output};

use storesync_tests::proc::{Running, bin, hub_command};

use crate::util::TOKEN;

fn loadgen(dir: &Path, hubs: &[&str], args: &[&str]) -> (Output, String) {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let out_file = dir.join(format!("report-{}.md", RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    let mut cmd = Command::new(bin("storesync-loadgen"));
    for h in hubs {
        cmd.args(["--hub", h]);
    }
    cmd.args(args).arg("--out").arg(&out_file).env("STORESYNC_ADMIN_TOKEN", TOKEN);
    let out = cmd.output().expect("running storesync-loadgen");
    let report = std::fs::read_to_string(&out_file).unwrap_or_default();
    (out, report)
}

/// A URL nothing listens on.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

fn assert_passed(what: &str, out: &Output, report: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("verification: passed"),
        "{what}: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("**passed**") && !report.contains("FAILED"), "{what}: {report}");
}

#[test]
fn the_load_generator_drains_a_storm_and_a_steady_run_and_verifies_exactly_once_and_stock() {
    let root = tempfile::tempdir().unwrap();
    let hub_dir = root.path().join("hub");
    let mut cmd = hub_command(&hub_dir, "127.0.0.1:0", None, TOKEN);
    cmd.args(["--max-inflight-syncs", "2", "--max-queued-syncs", "2", "--sync-queue-timeout-ms", "20"]);
    let hub = Running::start(cmd, &hub_dir.join("hub.log"));
    let dead = dead_url();

    let storm = ["--stores", "20", "--tills", "2", "--events", "50", "--batch", "20", "--retry-cap-s", "2"];
    let (out, report) = loadgen(root.path(), &[&dead, &hub.url], &[&storm[..], &["--prefix", "e2e-storm"]].concat());
    assert_passed("storm", &out, &report);
    assert!(report.contains("| 40 | 2000 |"), "40 tills, 2,000 events: {report}");
    assert!(report.contains("connection failed (failed over)"), "tills of the dead URL failed over: {report}");
    assert!(report.contains("stock of 240 (store, SKU) pairs"), "20 stores × 12 SKUs: {report}");

    let steady = [
        "--scenario",
        "steady",
        "--stores",
        "5",
        "--tills",
        "2",
        "--duration-s",
        "4",
        "--rate",
        "4",
        "--tick-ms",
        "200",
        "--outages-per-hour",
        "3600",
        "--outage-mean-s",
        "1",
        "--retry-cap-s",
        "2",
        "--prefix",
        "e2e-steady",
    ];
    let (out, report) = loadgen(root.path(), &[&hub.url], &steady);
    assert_passed("steady", &out, &report);

    // A failed round fails the run: re-enrolling the storm's store ids makes new journals where the hub holds
    // others (`journal_mismatch`), so those tills give up and the exit status says so.
    let again = ["--stores", "2", "--events", "5", "--retry-cap-s", "1", "--prefix", "e2e-storm"];
    let (out, report) = loadgen(root.path(), &[&hub.url], &again);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("gave up") && report.contains("FAILED"), "{report}");
    hub.stop();
}
