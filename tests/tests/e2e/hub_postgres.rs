//! Several `storesync-hub serve` processes on one PostgreSQL database (`STORESYNC_TEST_PG`; each test makes a schema
//! of its own and drops it): tills enrolled through one instance upload through both at once, the same batches to
//! each, and either instance's admin API shows every event exactly once with each till's chain intact. A real agent
//! then syncs through an instance that is killed and replaced by a third one at the same address, as behind a load
//! balancer, and nothing is lost or doubled.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use storesync_hub::storage::postgres::ScratchSchema;
use storesync_tests::proc::{Running, agent_cli, bin, hub_command, isolate, require_tool, start_agent_with};
use uuid::Uuid;

use crate::util::{Hub, TOKEN, Till, check_exactly_once, client, hub_events, port_of, sell, sync_now, wait_for_events};

/// A bound on every wait; a healthy run needs a fraction of it.
const PATIENCE: Duration = Duration::from_secs(120);

/// The test database, or `None` when `STORESYNC_TEST_PG` is not set (see [`require_tool`]).
fn test_pg() -> Option<String> {
    let url = std::env::var("STORESYNC_TEST_PG").ok().filter(|u| !u.trim().is_empty());
    if url.is_none() {
        require_tool("PostgreSQL (STORESYNC_TEST_PG)", false);
    }
    url
}

/// `storesync-hub serve` on the shared database, with a data dir of its own.
fn start_hub(dir: &Path, listen: &str, database_url: &str) -> Running {
    let mut cmd = hub_command(dir, listen, None, TOKEN);
    cmd.args(["--database-url", database_url, "--database-pool-size", "8"]);
    Running::start(cmd, &dir.join("hub.log"))
}

/// Uploads `from..=through` until the hub takes it: a 503 (storage busy) or 429 (shedding load) is sent again, as
/// an agent does. Answers the acknowledged seq.
async fn upload_until_taken(hub: &Hub, t: &Till, from: u64, through: u64) -> u64 {
    let reported = t.events.len() as u64;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = hub.upload(t, from, through, reported).await;
        match status {
            200 => return body["acked_through"].as_u64().unwrap(),
            429 | 503 if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => panic!("{}/{} {from}..={through} at {}: {status} {body}", t.store, t.till, hub.url),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_on_one_database_store_the_same_batches_once() {
    let Some(url) = test_pg() else { return };
    let schema = ScratchSchema::create(&url).unwrap();
    let root = tempfile::tempdir().unwrap();
    let procs = [
        start_hub(&root.path().join("hub-a"), "127.0.0.1:0", &schema.url()),
        start_hub(&root.path().join("hub-b"), "127.0.0.1:0", &schema.url()),
    ];
    let hubs = procs.each_ref().map(|p| Hub { url: p.url.clone(), c: client() });

    // Enrolled through A; a code issued by the CLI against the database is redeemed at B.
    const EVENTS: u64 = 600;
    let mut tills = Vec::new();
    for (store, till) in [("S1", "T1"), ("S1", "T2"), ("S2", "T1")] {
        tills.push(hubs[0].till(store, till, EVENTS, &[]).await);
    }
    let mut cli = Command::new(bin("storesync-hub"));
    cli.args(["enroll-code", "--store", "S3", "--till", "T1", "--database-url", &schema.url()]);
    cli.arg("--data-dir").arg(root.path().join("cli"));
    isolate(&mut cli, &root.path().join("cli"));
    let out = cli.output().unwrap();
    assert!(out.status.success(), "enroll-code: {}", String::from_utf8_lossy(&out.stderr));
    let code = String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim().to_owned();
    let enrolled: Value = hubs[1]
        .c
        .post(format!("{}/v1/enroll", hubs[1].url))
        .json(&serde_json::json!({"code": code, "agent_version": "0.1.0"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    tills.push(Till {
        store: "S3".into(),
        till: "T1".into(),
        credential: enrolled["credential"].as_str().unwrap_or_else(|| panic!("{enrolled}")).into(),
        journal_id: Uuid::new_v4(),
        events: crate::util::sales_journal("S3", "T1", EVENTS, &[]),
    });

    // Every till sends every batch of 100 to both instances at once, in order on each: each batch reaches the
    // database twice, concurrently, through two processes.
    let mut tasks = Vec::new();
    for t in &tills {
        for hub in &hubs {
            tasks.push(async move {
                for from in (1..=EVENTS).step_by(100) {
                    let acked = upload_until_taken(hub, t, from, from + 99).await;
                    assert!(acked >= from + 99, "{}/{}: acknowledged through {acked}", t.store, t.till);
                }
            });
        }
    }
    futures_util::future::join_all(tasks).await;

    let acked: BTreeMap<(String, String), BTreeSet<Uuid>> = tills
        .iter()
        .map(|t| ((t.store.clone(), t.till.clone()), t.events.iter().map(|e| e.event_id).collect()))
        .collect();
    let seen = [hub_events(&hubs[0].c, &hubs[0].url).await, hub_events(&hubs[1].c, &hubs[1].url).await];
    check_exactly_once(&seen[0], &acked);
    assert_eq!(seen[0], seen[1], "both instances show the same events in the same order");
    let fleet = hubs[1].get("/v1/admin/stores").await;
    for s in fleet["stores"].as_array().unwrap() {
        for t in s["tills"].as_array().unwrap() {
            assert_eq!((t["hub_seq"].as_u64(), t["chain_ok"].as_bool()), (Some(EVENTS), Some(true)), "{t}");
        }
    }
    println!(
        "hub_postgres: {} tills x {EVENTS} events, every batch sent to 2 hubs at once: {} stored, each once",
        tills.len(),
        seen[0].len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_keeps_syncing_when_its_hub_instance_is_replaced() {
    let Some(url) = test_pg() else { return };
    let schema = ScratchSchema::create(&url).unwrap();
    let root = tempfile::tempdir().unwrap();
    let first = start_hub(&root.path().join("hub-a"), "127.0.0.1:0", &schema.url());
    let watcher = start_hub(&root.path().join("hub-b"), "127.0.0.1:0", &schema.url());
    let (address, port) = (first.url.clone(), port_of(&first.url));
    let c = client();

    // The agent knows one address (a load balancer's, say); the instance behind it changes.
    let code = Hub { url: address.clone(), c: c.clone() }.code("S1", "T1").await;
    let agent_dir = root.path().join("agent");
    let out = agent_cli(&agent_dir, &["enroll", "--hub", &address, "--code", &code]);
    assert!(out.status.success(), "enroll: {}", String::from_utf8_lossy(&out.stderr));
    let agent = start_agent_with(&agent_dir, None, None);
    let mut ids = sell(c.clone(), agent.url.clone(), 150).await;
    let st = sync_now(&c, &agent.url).await;
    assert_eq!(st["unsynced"], 0, "{st}");

    // The instance dies; another one with its own data dir takes its address. The agent sells on and syncs.
    first.kill();
    let replacement = start_hub(&root.path().join("hub-c"), &format!("127.0.0.1:{port}"), &schema.url());
    ids.extend(sell(c.clone(), agent.url.clone(), 150).await);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let st = sync_now(&c, &agent.url).await;
        if st["unsynced"] == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the agent never caught up: {st}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The instance the agent never spoke to holds everything, once.
    let events = wait_for_events(&c, &watcher.url, 300, PATIENCE).await;
    check_exactly_once(&events, &BTreeMap::from([(("S1".to_owned(), "T1".to_owned()), ids)]));
    drop(replacement);
    agent.kill();
}
