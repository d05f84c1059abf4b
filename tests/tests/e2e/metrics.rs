//! Prometheus `/metrics` on both binaries (issue #7): the series a fleet operator scrapes, with values checked
//! against what the test did.

use storesync_tests::proc::{start_agent_with, start_hub};

use crate::util::{TOKEN, client, enroll, hub_client, sell, sync_now};

/// The value of the series `name` (exact text before the value, labels included).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_binaries_expose_backlog_batches_durations_and_errors() {
    let root = tempfile::tempdir().unwrap();
    let hub_dir = root.path().join("hub");
    let hub = start_hub(&hub_dir, "127.0.0.1:0", None, TOKEN);
    let data = root.path().join("till");
    enroll(&data, &hub_dir, &hub.url, "S-MET", "T1", None);
    let agent = start_agent_with(&data, None, None);
    let (c, hc) = (client(), hub_client(None));
    let sold = sell(c.clone(), agent.url.clone(), 30).await;
    assert_eq!(sync_now(&c, &agent.url).await["unsynced"], 0);
    // One refused write, to be counted by its code.
    let r = c.post(format!("{}/v1/sales", agent.url)).body("{").send().await.unwrap();
    assert_eq!(r.status(), 400);

    let text = c.get(format!("{}/metrics", agent.url)).send().await.unwrap().text().await.unwrap();
    assert_eq!(value(&text, "storesync_agent_unsynced_events"), Some(0.0), "{text}");
    assert_eq!(value(&text, "storesync_agent_oldest_unsynced_age_seconds"), Some(0.0), "{text}");
    assert_eq!(value(&text, "storesync_agent_journal_last_seq"), Some(sold.len() as f64), "{text}");
    assert!(value(&text, "storesync_agent_sync_round_duration_seconds_count").is_some_and(|n| n >= 1.0), "{text}");
    assert!(text.contains("storesync_agent_sync_round_duration_seconds_bucket{le=\"0.005\"}"), "a histogram: {text}");
    let batched = value(&text, "storesync_agent_upload_batch_events_sum").unwrap_or_default();
    assert!(batched >= sold.len() as f64, "every sale went up in some batch: {text}");
    let error_line = text.lines().find(|l| l.starts_with("storesync_agent_errors_total{")).unwrap_or_default();
    assert!(error_line.ends_with(" 1"), "the refused write is counted by code: {text}");

    assert_eq!(hc.get(format!("{}/metrics", hub.url)).send().await.unwrap().status(), 401, "admin token needed");
    let text = hc.get(format!("{}/metrics", hub.url)).bearer_auth(TOKEN).send().await.unwrap().text().await.unwrap();
    assert_eq!(value(&text, "storesync_hub_till_backlog_events{store=\"S-MET\",till=\"T1\"}"), Some(0.0), "{text}");
    assert_eq!(
        value(&text, "storesync_hub_till_oldest_unsynced_age_seconds{store=\"S-MET\",till=\"T1\"}"),
        Some(0.0),
        "{text}"
    );
    let uploaded = value(&text, "storesync_hub_uploaded_events_total").unwrap_or_default();
    assert!(uploaded >= sold.len() as f64, "{text}");
    assert!(value(&text, "storesync_hub_ingest_duration_seconds_count").is_some_and(|n| n >= 1.0), "{text}");
    assert!(value(&text, "storesync_hub_errors_total{code=\"unauthorized\"}").is_some_and(|n| n >= 1.0), "{text}");
    let doc = text.lines().find(|l| l.starts_with("storesync_hub_store_doc_bytes{store=\"S-MET\"}"));
    assert!(doc.is_some_and(|l| !l.ends_with(" 0")), "the store document's size: {text}");
    println!("metrics: agent and hub series checked after {} sales", sold.len());
}
