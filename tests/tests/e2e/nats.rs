//! The hub's NATS JetStream publisher (issue #8) against a real NATS server (`STORESYNC_TEST_NATS`): 2,000 events
//! from four tills reach a stream exactly once, under the subjects the contract names, with the event id as the
//! message id, each till's in seq order, through a hub killed with SIGKILL in the middle of publishing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use storesync_tests::proc::{Running, hub_command, require_tool};
use uuid::Uuid;

use crate::util::{Hub, TOKEN, Till, client};

/// A bound on every wait; a healthy run needs a fraction of it.
const PATIENCE: Duration = Duration::from_secs(120);

fn start_hub(dir: &std::path::Path, listen: &str) -> Running {
    let mut cmd = hub_command(dir, listen, None, TOKEN);
    cmd.args(["--delivery-backoff-max-s", "2"]);
    Running::start(cmd, &dir.join("hub.log"))
}

async fn stored(stream: &mut async_nats::jetstream::stream::Stream) -> u64 {
    stream.info().await.map(|i| i.state.messages).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_jetstream_exactly_once_through_a_hub_kill() {
    let Some(url) = std::env::var("STORESYNC_TEST_NATS").ok().filter(|u| !u.trim().is_empty()) else {
        require_tool("NATS with JetStream (STORESYNC_TEST_NATS)", false);
        return;
    };
    let nats = async_nats::connect(url.as_str()).await.unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    let js = async_nats::jetstream::new(nats);
    let tag = hex::encode(rand::random::<[u8; 4]>());
    let (stream_name, prefix) = (format!("STORESYNC_TEST_{tag}"), format!("sstest{tag}"));

    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("hub");
    let hub_proc = start_hub(&dir, "127.0.0.1:0");
    let listen = hub_proc.url.trim_start_matches("http://").to_owned();
    let hub = Hub { url: hub_proc.url.clone(), c: client() };
    // One store id holds a dot, which a subject token cannot: it goes out as `%2E`.
    let ids = [("S1", "T1"), ("S1", "T2"), ("S.2", "T1"), ("S3", "T1")];
    let mut tills: Vec<Till> = Vec::new();
    for (store, till) in ids {
        tills.push(hub.till(store, till, 500, &[]).await);
    }
    for t in &tills {
        for from in (1..=500).step_by(100) {
            hub.upload_ok(t, from, from + 99, 500).await;
        }
    }
    // One event per publish batch, so that the kill below lands while the hub is publishing.
    let (status, sub) = hub
        .request(
            reqwest::Method::POST,
            "/v1/admin/subscriptions",
            Some(json!({"kind": "nats", "url": url, "stream": stream_name, "subject_prefix": prefix,
                        "batch_size": 1})),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    assert_eq!((sub["stream"].as_str(), sub["subject_prefix"].as_str()), (Some(&*stream_name), Some(&*prefix)));
    let id = sub["id"].as_str().unwrap().to_owned();

    // Kill the hub while it publishes, once the stream holds a quarter of the events; restart it on its data.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut stream = loop {
        if let Ok(s) = js.get_stream(&stream_name).await {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "the hub never made the stream {stream_name}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    loop {
        let n = stored(&mut stream).await;
        if n >= 500 {
            assert!(n < 2000, "publishing finished before the kill ({n} stored); the kill must land mid-delivery");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {n} events reached the stream");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    hub_proc.kill();
    let at_kill = stored(&mut stream).await;
    let hub_proc = start_hub(&dir, &listen);

    // Everything arrives, and the hub's view agrees: nothing left, nothing dead.
    loop {
        let subs = hub.get("/v1/admin/subscriptions").await;
        let row = subs["subscriptions"].as_array().unwrap().iter().find(|s| s["id"] == json!(id)).unwrap().clone();
        if row["lag"] == 0 && stored(&mut stream).await == 2000 {
            assert_eq!(row["dead_letters"], 0, "{row}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not delivered: {row}; stream has {}",
            stored(&mut stream).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Read the stream back: each event once, with its id as the message id, on its subject, in till order.
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.fetch().max_messages(2000).expires(Duration::from_secs(10)).messages().await.unwrap();
    let mut seen: BTreeSet<Uuid> = BTreeSet::new();
    let mut last: BTreeMap<(String, String), u64> = BTreeMap::new();
    while let Some(msg) = messages.next().await {
        let msg = msg.unwrap();
        let event: Value = serde_json::from_slice(&msg.payload).unwrap();
        let event_id: Uuid = event["event_id"].as_str().unwrap().parse().unwrap();
        let msg_id = msg.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str().to_owned());
        assert_eq!(msg_id, Some(event_id.to_string()), "the message id is the event id");
        let (store, till) = (event["store"].as_str().unwrap().to_owned(), event["till"].as_str().unwrap().to_owned());
        let want = format!("{prefix}.{}.{}", event["kind"].as_str().unwrap(), store.replace('.', "%2E"));
        assert_eq!(msg.subject.as_str(), want);
        let seq = event["seq"].as_u64().unwrap();
        let prev = last.insert((store.clone(), till.clone()), seq).unwrap_or(0);
        assert!(seq > prev, "{store}/{till}: seq {seq} after {prev}");
        assert!(seen.insert(event_id), "{event_id} is in the stream twice");
    }
    let uploaded: BTreeSet<Uuid> = tills.iter().flat_map(|t| t.events.iter().map(|e| e.event_id)).collect();
    assert_eq!(seen, uploaded, "the stream holds exactly the uploaded events");
    println!("nats: 2,000 events in {stream_name} exactly once; the hub was killed with {at_kill} stored");
    js.delete_stream(&stream_name).await.unwrap();
    hub_proc.stop();
}
