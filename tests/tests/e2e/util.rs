//! Helpers for talking to a running agent.

use std::collections::BTreeMap;

use serde_json::Value;
use storesync_shared::EventBody;
use storesync_shared::event::negate;
use storesync_shared::wire::JournalEvent;

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build().unwrap()
}

/// Every journal entry, through `GET /v1/journal` pages.
pub(crate) async fn journal(c: &reqwest::Client, url: &str) -> Vec<JournalEvent> {
    let mut out: Vec<JournalEvent> = Vec::new();
    loop {
        let after = out.last().map_or(0, |e| e.seq);
        let page: Value =
            c.get(format!("{url}/v1/journal?after_seq={after}&limit=1000")).send().await.unwrap().json().await.unwrap();
        let events: Vec<JournalEvent> = serde_json::from_value(page["events"].clone()).unwrap();
        if events.is_empty() {
            return out;
        }
        out.extend(events);
    }
}

/// The stock movements the journal records, per SKU, voids included.
pub(crate) fn movements(events: &[JournalEvent]) -> BTreeMap<String, i64> {
    let mut by_id = BTreeMap::new();
    let mut total: BTreeMap<String, i64> = BTreeMap::new();
    for e in events {
        let body = EventBody::from_stored(e.kind, e.body.clone()).unwrap();
        let effect = match &body {
            EventBody::Void(v) => negate(&by_id[&v.voided_event_id]),
            other => other.stock_effect(),
        };
        for (sku, d) in &effect {
            *total.entry(sku.clone()).or_insert(0) += d;
        }
        by_id.insert(e.event_id, body.stock_effect());
    }
    total
}

pub(crate) async fn on_hand(c: &reqwest::Client, url: &str, sku: &str) -> i64 {
    let v: Value = c.get(format!("{url}/v1/stock/{sku}")).send().await.unwrap().json().await.unwrap();
    v["on_hand"].as_i64().unwrap()
}

pub(crate) async fn status(c: &reqwest::Client, url: &str) -> Value {
    c.get(format!("{url}/v1/status")).send().await.unwrap().json().await.unwrap()
}
