//! Backpressure (issue #9): an overloaded hub answers the sync endpoints `429 overloaded` with `Retry-After` at
//! once, keeps serving head office, and once it has room again every till's events land exactly once; a real agent
//! told to slow down waits and keeps its status healthy.
//!
//! The overload is made deterministic, not raced: the hub runs with one sync slot (`--max-inflight-syncs 1
//! --max-queued-syncs 0`), and the test takes that slot with an upload whose body it never finishes (the guard
//! holds a slot while it reads a body). While it is held, every upload and document sync is shed; the test then
//! lets go and the tills, scripted over the real protocol, retry as the agent does (`Retry-After` plus jitter, the
//! agent's own `slow_down_delay`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use storesync_agent::sync::slow_down_delay;
use storesync_tests::proc::{Running, hub_command, start_agent_with};
use tokio::io::AsyncWriteExt as _;
use uuid::Uuid;

use crate::util::{Hub, TOKEN, Till, check_exactly_once, client, enroll, hub_client, hub_events, sell, status};

/// A bound on every wait for something the test set in motion; a healthy run needs a fraction of it.
const PATIENCE: Duration = Duration::from_secs(120);

/// The value of the series `name` in Prometheus text (labels included in `series`).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn metrics(c: &reqwest::Client, url: &str, token: Option<&str>) -> String {
    let mut req = c.get(format!("{url}/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().text().await.unwrap()
}

/// Polls `probe` until it holds or the patience runs out (then panics with `what`).
async fn wait_until<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !probe().await {
        assert!(start.elapsed() < PATIENCE, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts an upload of `t` whose body never completes: the hub's guard takes the sync slot and waits for the body.
async fn hold_the_slot(hub: &str, t: &Till) -> tokio::net::TcpStream {
    let addr = hub.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/sync/upload HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: 100000\r\n\r\n{{\"journal_id\":",
        t.credential
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.flush().await.unwrap();
    s
}

/// Uploads all of `t`'s entries in batches of 40 the way an agent does, honouring 429 with `Retry-After` plus
/// jitter; any other refusal, a 5xx or a timeout fails the test. Answers how many 429s it was given.
async fn upload_all(hub: &Hub, t: &Till) -> u32 {
    let (mut next, last) = (1, t.events.len() as u64);
    let (mut shed, mut window) = (0, Duration::from_millis(250));
    while next <= last {
        let through = last.min(next + 39);
        let (status, body) = hub.upload(t, next, through, last).await;
        match status {
            200 => {
                next = body["acked_through"].as_u64().unwrap() + 1;
                window = Duration::from_millis(250);
            }
            429 => {
                assert_eq!(body["error"], "overloaded", "{}/{}: {body}", t.store, t.till);
                shed += 1;
                let wait = slow_down_delay(Duration::from_secs(1), window, Duration::from_secs(3), &mut rand::rng());
                window = (window * 2).min(Duration::from_secs(3));
                tokio::time::sleep(wait).await;
            }
            other => panic!("{}/{}: {other} {body} (only 200 and 429 are expected)", t.store, t.till),
        }
    }
    shed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_hub_sheds_sync_with_429_and_retry_after_and_every_event_lands_once_after_retries() {
    let root = tempfile::tempdir().unwrap();
    let hub_dir = root.path().join("hub");
    let mut cmd = hub_command(&hub_dir, "127.0.0.1:0", None, TOKEN);
    cmd.args(["--max-inflight-syncs", "1", "--max-queued-syncs", "0", "--sync-queue-timeout-ms", "100"]);
    let running = Running::start(cmd, &hub_dir.join("hub.log"));
    let hub = Hub { url: running.url.clone(), c: hub_client(None) };
    let mut tills = Vec::new();
    for i in 0..12 {
        tills.push(hub.till(&format!("S-BP{}", i % 4), &format!("T{}", i / 4 + 1), 120, &[]).await);
    }
    // A real agent with a backlog, enrolled before the overload.
    let agent_dir = root.path().join("agent");
    enroll(&agent_dir, &hub_dir, &hub.url, "S-BP-AGENT", "T1", None);
    let agent = start_agent_with(&agent_dir, None, None);
    let c = client();
    assert_eq!(crate::util::sync_now(&c, &agent.url).await["unsynced"], 0, "the agent syncs before the overload");

    let holder = hold_the_slot(&hub.url, &tills[0]).await;
    wait_until("the held upload takes the sync slot", || async {
        value(&metrics(&hub.c, &hub.url, Some(TOKEN)).await, "storesync_hub_sync_queued") == Some(1.0)
    })
    .await;

    // Every upload is shed at once with Retry-After; the document sync too.
    let shed = futures_util::future::join_all(tills.iter().map(|t| async {
        let n = t.events.len() as u64;
        let req =
            hub.c.post(format!("{}/v1/sync/upload", hub.url)).bearer_auth(&t.credential).json(&serde_json::json!({
                "journal_id": t.journal_id, "last_seq": n, "events": t.events[..10].to_vec()
            }));
        let r = req.send().await.unwrap();
        let retry = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        (r.status().as_u16(), retry, r.json::<Value>().await.unwrap())
    }))
    .await;
    for (status, retry, body) in &shed {
        assert_eq!(*status, 429, "{body}");
        assert_eq!(body["error"], "overloaded", "{body}");
        assert!(body["detail"].as_str().is_some_and(|d| d.contains("retry in")), "{body}");
        assert!(retry.is_some_and(|s| (1..=30).contains(&s)), "Retry-After of 1 to 30 s: {retry:?}");
    }
    // Big bodies too: the hub reads and drops a shed body, so a client still sending one reads the 429 rather than
    // a connection reset under its feet.
    let events: Vec<Value> =
        tills[1].events.iter().map(|e| serde_json::to_value(e).unwrap()).cycle().take(9000).collect();
    let big = serde_json::to_vec(&serde_json::json!({"journal_id": tills[1].journal_id, "events": events})).unwrap();
    assert!((3 << 20..4 << 20).contains(&big.len()), "3 to 4 MiB: {}", big.len());
    let big_shed = futures_util::future::join_all((0..4).map(|_| {
        let req = hub.c.post(format!("{}/v1/sync/upload", hub.url)).bearer_auth(&tills[1].credential);
        req.header("content-type", "application/json").body(big.clone()).send()
    }))
    .await;
    for r in big_shed {
        let r = r.unwrap_or_else(|e| {
            panic!("a shed 3 MiB upload must read its 429: {}", storesync_agent::sync::error_chain(&e))
        });
        assert_eq!(r.status(), 429);
    }
    let doc = hub.c.post(format!("{}/v1/sync/doc", hub.url)).bearer_auth(&tills[1].credential).send().await.unwrap();
    assert_eq!(doc.status(), 429, "document sync is guarded too");
    // Head office is not shed.
    let (admin, _) = hub.request(reqwest::Method::GET, "/v1/admin/stores", None).await;
    assert_eq!(admin, 200, "admin endpoints are not behind the sync guard");
    let health = hub.c.get(format!("{}/healthz", hub.url)).send().await.unwrap();
    assert_eq!(health.status(), 200);

    // The agent's sales meet the overload: it is told to slow down, and stays healthy.
    let sold = sell(c.clone(), agent.url.clone(), 25).await;
    let _ = c.post(format!("{}/v1/sync/now?wait_s=1", agent.url)).send().await.unwrap();
    wait_until("the agent is told to slow down", || async {
        value(&metrics(&c, &agent.url, None).await, "storesync_agent_sync_slow_downs_total").is_some_and(|n| n >= 1.0)
    })
    .await;
    let st = status(&c, &agent.url).await;
    assert_eq!(st["hub"], "reachable", "a slow-down is not an outage: {st}");
    assert!(st["last_error"].is_null(), "a slow-down is not an error shown to staff: {st}");
    assert!(st["unsynced"].as_u64().is_some_and(|n| n > 0), "{st}");
    let agent_metrics = metrics(&c, &agent.url, None).await;
    assert!(
        !agent_metrics.contains("storesync_agent_sync_failures_total{kind=\"slow_down\"}"),
        "slow-downs are not counted as failures: {agent_metrics}"
    );

    // Let go: the held request's body never comes, the slot frees, everyone retries.
    drop(holder);
    let retried: Vec<u32> = futures_util::future::join_all(tills.iter().map(|t| upload_all(&hub, t))).await;
    println!("backpressure: 429s while retrying per till: {retried:?}");
    wait_until("the agent drains after its pause", || async {
        crate::util::sync_now(&c, &agent.url).await["unsynced"] == 0
    })
    .await;

    let mut acked: BTreeMap<(String, String), BTreeSet<Uuid>> = BTreeMap::new();
    for t in &tills {
        acked.insert((t.store.clone(), t.till.clone()), t.events.iter().map(|e| e.event_id).collect());
    }
    // The agent took no sale before the overload: the hub holds exactly the ones it took during it.
    acked.insert(("S-BP-AGENT".into(), "T1".into()), sold);
    check_exactly_once(&hub_events(&hub.c, &hub.url).await, &acked);

    let text = metrics(&hub.c, &hub.url, Some(TOKEN)).await;
    let queue_full = value(&text, "storesync_hub_shed_requests_total{reason=\"queue_full\"}").unwrap_or_default();
    assert!(queue_full >= 18.0, "16 uploads, a document sync and the agent were shed: {text}");
    assert!(value(&text, "storesync_hub_errors_total{code=\"overloaded\"}").is_some_and(|n| n >= queue_full), "{text}");
    assert_eq!(value(&text, "storesync_hub_sync_inflight"), Some(0.0), "every permit given back: {text}");
    agent.stop();
    running.stop();
}
