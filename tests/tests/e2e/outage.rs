//! Issue #3's outage test with the real binaries: tills sell while the hub is down, the hub comes back (and is
//! killed mid-upload), and every event reaches it exactly once, over plain HTTP and over TLS.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use storesync_shared::canonical::{ChainInput, canonical_json, event_hash};
use storesync_shared::{EventKind, genesis_hash};
use storesync_tests::proc::{Running, TlsFiles, agent_cli, enroll_code, make_tls, start_agent_with, start_hub};
use storesync_tests::sales::{SKUS, sale};
use uuid::Uuid;

use crate::util::{client, status};

const TOKEN: &str = "ssa_test_admin_token_0123456789";

/// A client for the hub: trusts the test CA when there is one.
fn hub_client(tls: Option<&TlsFiles>) -> reqwest::Client {
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if let Some(t) = tls {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&t.ca).unwrap()).unwrap());
    }
    b.build().unwrap()
}

/// Every event the hub holds, in hub order.
async fn hub_events(c: &reqwest::Client, hub: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let url = if after.is_empty() {
            format!("{hub}/v1/admin/events?limit=1000")
        } else {
            format!("{hub}/v1/admin/events?limit=1000&after={after}")
        };
        let Ok(resp) = c.get(url).bearer_auth(TOKEN).send().await else { return out };
        let Ok(page) = resp.json::<Value>().await else { return out };
        let events = page["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            return out;
        }
        after = page["next"].as_str().unwrap().to_owned();
        out.extend(events);
    }
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap()
}

fn enroll(dir: &Path, hub_dir: &Path, hub_url: &str, store: &str, till: &str, tls: Option<&TlsFiles>) {
    let code = enroll_code(hub_dir, store, till);
    let mut args = vec!["enroll", "--hub", hub_url, "--code", &code];
    let ca;
    if let Some(t) = tls {
        ca = t.ca.to_string_lossy().into_owned();
        args.extend(["--ca-cert", &ca]);
    }
    let out = agent_cli(dir, &args);
    assert!(out.status.success(), "enroll {store}/{till}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Polls until the hub holds `n` events or the patience runs out; returns what it holds.
async fn wait_for_events(c: &reqwest::Client, hub: &str, n: usize, patience: Duration) -> Vec<Value> {
    let start = std::time::Instant::now();
    loop {
        let events = hub_events(c, hub).await;
        if events.len() >= n || start.elapsed() > patience {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks the hub's events against what the tills acknowledged: exactly once, no gaps, chains verify.
fn check_exactly_once(events: &[Value], acked: &BTreeMap<(String, String), BTreeSet<Uuid>>) {
    let total: usize = acked.values().map(BTreeSet::len).sum();
    assert_eq!(events.len(), total, "the hub holds {} events, the tills acknowledged {total}", events.len());
    let ids: BTreeSet<&str> = events.iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "duplicate event ids at the hub");
    let mut by_till: BTreeMap<(String, String), Vec<&Value>> = BTreeMap::new();
    for e in events {
        by_till.entry((e["store"].as_str().unwrap().into(), e["till"].as_str().unwrap().into())).or_default().push(e);
    }
    assert_eq!(by_till.keys().collect::<Vec<_>>(), acked.keys().collect::<Vec<_>>());
    for ((store, till), mut evs) in by_till {
        evs.sort_by_key(|e| e["seq"].as_u64());
        let got: BTreeSet<Uuid> = evs.iter().map(|e| e["event_id"].as_str().unwrap().parse().unwrap()).collect();
        assert_eq!(&got, &acked[&(store.clone(), till.clone())], "{store}/{till}: ids differ");
        let mut prev = genesis_hash(&store, &till);
        for (i, e) in evs.iter().enumerate() {
            let seq = e["seq"].as_u64().unwrap();
            assert_eq!(seq, i as u64 + 1, "{store}/{till}: gap before seq {seq}");
            let body = canonical_json(&e["body"]);
            let hash = event_hash(&ChainInput {
                store: &store,
                till: &till,
                seq,
                event_id: e["event_id"].as_str().unwrap().parse().unwrap(),
                kind: EventKind::parse(e["kind"].as_str().unwrap()).unwrap(),
                body: &body,
                prev_hash: &prev,
            });
            assert_eq!(e["hash"].as_str(), Some(hash.as_str()), "{store}/{till}: chain broken at seq {seq}");
            prev = hash;
        }
    }
}

/// Posts `n` sales to one agent, returning the ids it acknowledged.
async fn sell(c: reqwest::Client, url: String, n: usize) -> BTreeSet<Uuid> {
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let id = Uuid::new_v4();
        let r = c.post(format!("{url}/v1/sales")).json(&sale(id, SKUS[i % SKUS.len()], 1)).send().await.unwrap();
        assert_eq!(r.status(), 201);
        ids.insert(id);
    }
    ids
}

struct Till {
    store: &'static str,
    till: &'static str,
    dir: PathBuf,
    agent: Option<Running>,
}

async fn outage(tls: bool) {
    let root = tempfile::tempdir().unwrap();
    let hub_dir = root.path().join("hub");
    std::fs::create_dir_all(&hub_dir).unwrap();
    let tls_files = tls.then(|| make_tls(root.path()));
    let hub = start_hub(&hub_dir, "127.0.0.1:0", tls_files.as_ref(), TOKEN);
    // Agents must reach the hub by a name its certificate holds.
    let hub_url = hub.url.replace("127.0.0.1", if tls { "localhost" } else { "127.0.0.1" });
    let port = port_of(&hub_url);
    let hc = hub_client(tls_files.as_ref());

    let mut tills: Vec<Till> = [("S1", "T1"), ("S1", "T2"), ("S1", "T3"), ("S2", "T1")]
        .into_iter()
        .map(|(store, till)| Till { store, till, dir: root.path().join(format!("{store}-{till}")), agent: None })
        .collect();
    // Two tills enrol before the outage; the other two journal before they are ever enrolled.
    for t in &tills[..2] {
        enroll(&t.dir, &hub_dir, &hub_url, t.store, t.till, tls_files.as_ref());
    }
    if let Some(t) = &tls_files {
        // A till that does not trust the hub's CA refuses to talk to it.
        let code = enroll_code(&hub_dir, "S9", "T9");
        let out = agent_cli(&root.path().join("untrusting"), &["enroll", "--hub", &hub_url, "--code", &code]);
        assert!(!out.status.success(), "a till without the CA enrolled");
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(err.contains("certificate") || err.contains("reaching the hub"), "{err}");
        let _ = t;
    }
    hub.kill();

    for (i, t) in tills.iter_mut().enumerate() {
        let ids = (i >= 2).then_some((t.store, t.till));
        t.agent = Some(start_agent_with(&t.dir, ids, None));
    }
    let c = client();
    let mut tasks = Vec::new();
    for t in &tills {
        tasks.push(tokio::spawn(sell(c.clone(), t.agent.as_ref().unwrap().url.clone(), 500)));
    }
    let mut acked: BTreeMap<(String, String), BTreeSet<Uuid>> = BTreeMap::new();
    for (t, task) in tills.iter().zip(tasks) {
        acked.insert((t.store.into(), t.till.into()), task.await.unwrap());
    }
    for t in &tills[..2] {
        let st = status(&c, &t.agent.as_ref().unwrap().url).await;
        assert_eq!(st["unsynced"], 500, "{st}");
        assert_ne!(st["hub"], "reachable", "{st}");
    }

    // The hub comes back on the same address; the two unenrolled tills enrol while running.
    let hub = start_hub(&hub_dir, &format!("127.0.0.1:{port}"), tls_files.as_ref(), TOKEN);
    for t in &tills[2..] {
        enroll(&t.dir, &hub_dir, &hub_url, t.store, t.till, tls_files.as_ref());
    }
    let events = wait_for_events(&hc, &hub_url, 2000, Duration::from_secs(120)).await;
    check_exactly_once(&events, &acked);
    let stores: Value =
        hc.get(format!("{hub_url}/v1/admin/stores")).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
    for s in stores["stores"].as_array().unwrap() {
        for t in s["tills"].as_array().unwrap() {
            if s["store"] == "S9" {
                continue;
            }
            assert_eq!((t["hub_seq"].as_u64(), t["chain_ok"].as_bool()), (Some(500), Some(true)), "{s}");
        }
    }
    for t in &tills {
        let out = agent_cli(&t.dir, &["verify-journal"]);
        assert!(out.status.success());
    }
    hub.stop();
    for t in tills {
        t.agent.unwrap().stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_then_exactly_once_over_http() {
    outage(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_then_exactly_once_over_tls() {
    outage(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_killed_mid_upload_still_exactly_once() {
    let root = tempfile::tempdir().unwrap();
    let hub_dir = root.path().join("hub");
    std::fs::create_dir_all(&hub_dir).unwrap();
    let hub = start_hub(&hub_dir, "127.0.0.1:0", None, TOKEN);
    let port = port_of(&hub.url);
    let hub_url = hub.url.clone();
    // Small batches, so the hub is killed between and inside many uploads.
    let config = root.path().join("agent.toml");
    std::fs::write(&config, "upload_batch_events = 25\n").unwrap();
    let tills = [("S1", "T1"), ("S1", "T2")];
    let mut agents = Vec::new();
    for (store, till) in tills {
        let dir = root.path().join(format!("{store}-{till}"));
        enroll(&dir, &hub_dir, &hub_url, store, till, None);
        agents.push(((store, till), start_agent_with(&dir, None, Some(&config))));
    }
    hub.kill();
    let c = client();
    let mut acked = BTreeMap::new();
    for ((store, till), a) in &agents {
        acked.insert((store.to_string(), till.to_string()), sell(c.clone(), a.url.clone(), 1500).await);
    }
    let hc = hub_client(None);
    let mut kills = 0;
    let mut seen = 0;
    while kills < 4 {
        let hub = start_hub(&hub_dir, &format!("127.0.0.1:{port}"), None, TOKEN);
        // Let some progress happen, then kill it without warning.
        let target = seen + 300;
        let n = wait_for_events(&hc, &hub_url, target, Duration::from_secs(60)).await.len();
        assert!(n > seen || n == 3000, "no progress after restart {kills}: {n}");
        seen = n;
        hub.kill();
        kills += 1;
        if seen == 3000 {
            break;
        }
    }
    let hub = start_hub(&hub_dir, &format!("127.0.0.1:{port}"), None, TOKEN);
    let events = wait_for_events(&hc, &hub_url, 3000, Duration::from_secs(120)).await;
    check_exactly_once(&events, &acked);
    for (_, a) in &agents {
        let r: Value = c.post(format!("{}/v1/sync/now?wait_s=60", a.url)).send().await.unwrap().json().await.unwrap();
        assert_eq!(r["unsynced"], 0, "{r}");
    }
    hub.stop();
    for (_, a) in agents {
        a.stop();
    }
    assert!(kills >= 1);
}
