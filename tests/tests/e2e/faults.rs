//! Issue #5's fault scenarios, with the real binaries behind the in-process fault proxy
//! (`storesync_tests::fault`). Every scenario prints one `RELIABILITY` line (scenario, rounds, operations, lost,
//! duplicated, other failures) for docs/RELIABILITY.md. `STORESYNC_LONG=1` runs a ten times longer campaign.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use storesync_tests::fault::Proxy;
use storesync_tests::proc::start_agent_with;
use storesync_tests::proc::start_hub;
use uuid::Uuid;

use crate::util::{TOKEN, check_exactly_once, client, enroll, hub_client, sell, status, wait_for_events};

/// How much longer a `STORESYNC_LONG=1` campaign runs.
fn scale() -> usize {
    if std::env::var("STORESYNC_LONG").is_ok_and(|v| v == "1") { 10 } else { 1 }
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").trim_end_matches('/').parse().expect("hub address")
}

/// Lost acknowledgements: the proxy resets 20 % of upload connections after the hub has answered (so the hub
/// committed the batch, and the agent never heard) while two tills journal 20,000 sales between them. The hub ends
/// with every acknowledged event exactly once, in order, with its chain intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_acknowledgements_lose_and_double_nothing() {
    let per_till = 10_000 * scale();
    let root = tempfile::tempdir().unwrap();
    let hub_dir = root.path().join("hub");
    std::fs::create_dir_all(&hub_dir).unwrap();
    let hub = start_hub(&hub_dir, "127.0.0.1:0", None, TOKEN);
    let proxy = Proxy::start(addr_of(&hub.url)).await.unwrap();
    // Small batches, so there are many uploads to lose the answers of.
    let config = root.path().join("agent.toml");
    std::fs::write(&config, "upload_batch_events = 200\n").unwrap();
    let tills = [("S1", "T1"), ("S1", "T2")];
    let mut agents = Vec::new();
    for (store, till) in tills {
        let dir = root.path().join(format!("{store}-{till}"));
        enroll(&dir, &hub_dir, &proxy.url(), store, till, None);
        agents.push(((store, till), dir.clone(), start_agent_with(&dir, None, Some(&config))));
    }
    proxy.faults.set(|f| {
        f.reset_after_request = 0.2;
        f.only_requests_starting_with = Some(b"POST /v1/sync/upload".to_vec());
    });

    let c = client();
    let tasks: Vec<_> = agents.iter().map(|(_, _, a)| tokio::spawn(sell(c.clone(), a.url.clone(), per_till))).collect();
    let mut acked: BTreeMap<(String, String), BTreeSet<Uuid>> = BTreeMap::new();
    for (((store, till), _, _), task) in agents.iter().zip(tasks) {
        acked.insert((store.to_string(), till.to_string()), task.await.unwrap());
    }
    let total = per_till * tills.len();
    let hc = hub_client(None);
    let events = wait_for_events(&hc, &hub.url, total, Duration::from_secs(300)).await;
    let counts = &proxy.faults.counts;
    let (uploads, resets) =
        (counts.requests_matched.load(Ordering::Relaxed), counts.resets_after_request.load(Ordering::Relaxed));
    let ids: BTreeSet<&str> = events.iter().filter_map(|e| e["event_id"].as_str()).collect();
    let acked_ids: BTreeSet<String> = acked.values().flatten().map(Uuid::to_string).collect();
    let lost = acked_ids.iter().filter(|id| !ids.contains(id.as_str())).count();
    let duplicated = events.len() - ids.len();
    println!(
        "RELIABILITY | lost acknowledgements (20% of upload answers reset after the hub committed) | 1 | {total} \
         sales, {uploads} uploads, {resets} answers reset | {lost} | {duplicated} | 0 |"
    );
    assert!(resets >= 10, "the proxy reset only {resets} of {uploads} upload answers");
    check_exactly_once(&events, &acked);
    for ((_, _), dir, agent) in &agents {
        // The hub has everything; the agent learns it at its next successful upload round (its last answer may
        // have been one of the resets).
        let mut st: Value = status(&c, &agent.url).await;
        for _ in 0..300 {
            if st["unsynced"] == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            st = status(&c, &agent.url).await;
        }
        assert_eq!(st["unsynced"], 0, "{st}");
        let out = storesync_tests::proc::agent_cli(dir, &["verify-journal"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    drop(proxy);
    hub.stop();
    for (_, _, a) in agents {
        a.stop();
    }
}
