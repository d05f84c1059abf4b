//! The crash test: SIGKILL the agent at random moments while 8 clients post sales, then check that nothing it
//! acknowledged was lost or doubled, the chain verifies, and stock equals the journaled movements.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use storesync_tests::proc::{agent_cli, start_agent};
use storesync_tests::sales::{SKUS, sale};
use uuid::Uuid;

use crate::util::{client, journal, movements, on_hand};

const ROUNDS: usize = 30;
const CLIENTS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    // Every event the agent answered 201 or 200 for, across all rounds.
    let acked: Arc<Mutex<BTreeMap<Uuid, u64>>> = Arc::default();
    let mut total_acked_before = 0;
    for round in 0..ROUNDS {
        let agent = start_agent(dir.path(), "S1", "T1");
        let url = agent.url.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let (c, url, acked, stop) = (c.clone(), url.clone(), acked.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = Uuid::new_v4();
                    let qty = 1 + (n % 3) as i64;
                    let body = sale(id, SKUS[n % SKUS.len()], qty);
                    n += 1;
                    let Ok(r) = c.post(format!("{url}/v1/sales")).json(&body).send().await else {
                        break;
                    };
                    let status = r.status().as_u16();
                    let Ok(v) = r.json::<serde_json::Value>().await else {
                        break;
                    };
                    if status == 201 || status == 200 {
                        acked.lock().unwrap().insert(id, v["seq"].as_u64().unwrap());
                    }
                }
            }));
        }
        let wait = rand::rng().random_range(20..400);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        agent.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }

        let agent = start_agent(dir.path(), "S1", "T1");
        let events = journal(&c, &agent.url).await;
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>(), "round {round}: seq has gaps");
        let ids: BTreeSet<Uuid> = events.iter().map(|e| e.event_id).collect();
        assert_eq!(ids.len(), events.len(), "round {round}: duplicate event ids");
        let by_id: BTreeMap<Uuid, u64> = events.iter().map(|e| (e.event_id, e.seq)).collect();
        let acked_now = acked.lock().unwrap().clone();
        for (id, seq) in &acked_now {
            assert_eq!(by_id.get(id), Some(seq), "round {round}: acknowledged event {id} lost or moved");
        }
        for (sku, moved) in movements(&events) {
            assert_eq!(on_hand(&c, &agent.url, &sku).await, moved, "round {round}: stock of {sku}");
        }
        let out = agent_cli(dir.path(), &["verify-journal"]);
        assert!(out.status.success(), "round {round}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(acked_now.len() >= total_acked_before);
        total_acked_before = acked_now.len();
        agent.kill();
    }
    assert!(total_acked_before > ROUNDS, "the load never got going: {total_acked_before} acknowledged");
    eprintln!("crash test: {ROUNDS} rounds, {total_acked_before} acknowledged sales, 0 lost, 0 duplicated");
}
