//! Issue #3's outage test with the real binaries: tills sell while the hub is down, the hub comes back (and is
//! killed mid-upload), and every event reaches it exactly once, over plain HTTP and over TLS.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use storesync_tests::proc::{Running, agent_cli, enroll_code, make_tls, start_agent_with, start_hub};
use uuid::Uuid;

use crate::util::{TOKEN, check_exactly_once, client, enroll, hub_client, port_of, sell, status, wait_for_events};

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
