//! Helpers for talking to a running agent and a running hub.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use storesync_shared::canonical::{ChainInput, canonical_json, event_hash};
use storesync_shared::event::negate;
use storesync_shared::wire::{JournalEvent, UploadRequest};
use storesync_shared::{EventBody, EventKind, genesis_hash};
pub(crate) use storesync_tests::journal::{Entry, chain};
use storesync_tests::proc::{TlsFiles, agent_cli, enroll_code};
use storesync_tests::sales::{SKUS, sale};
use uuid::Uuid;

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

pub(crate) const TOKEN: &str = "ssa_test_admin_token_0123456789";

/// A client for the hub: trusts the test CA when there is one.
pub(crate) fn hub_client(tls: Option<&TlsFiles>) -> reqwest::Client {
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if let Some(t) = tls {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&t.ca).unwrap()).unwrap());
    }
    b.build().unwrap()
}

/// Every event the hub holds, in hub order.
pub(crate) async fn hub_events(c: &reqwest::Client, hub: &str) -> Vec<Value> {
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

pub(crate) fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap()
}

pub(crate) fn enroll(dir: &Path, hub_dir: &Path, hub_url: &str, store: &str, till: &str, tls: Option<&TlsFiles>) {
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
pub(crate) async fn wait_for_events(c: &reqwest::Client, hub: &str, n: usize, patience: Duration) -> Vec<Value> {
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
pub(crate) fn check_exactly_once(events: &[Value], acked: &BTreeMap<(String, String), BTreeSet<Uuid>>) {
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
pub(crate) async fn sell(c: reqwest::Client, url: String, n: usize) -> BTreeSet<Uuid> {
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let id = Uuid::new_v4();
        let r = c.post(format!("{url}/v1/sales")).json(&sale(id, SKUS[i % SKUS.len()], 1)).send().await.unwrap();
        assert_eq!(r.status(), 201);
        ids.insert(id);
    }
    ids
}

/// `POST /v1/sync/now?wait_s=20` at an agent; answers its status.
pub(crate) async fn sync_now(c: &reqwest::Client, url: &str) -> Value {
    let t = std::time::Instant::now();
    let r = c.post(format!("{url}/v1/sync/now?wait_s=20")).send().await;
    let r = r.unwrap_or_else(|e| panic!("sync-now at {url} after {:?}: {e}", t.elapsed()));
    r.json().await.unwrap()
}

/// `GET url` with a bearer token; answers the JSON body.
pub(crate) async fn get_json(c: &reqwest::Client, url: String, token: &str) -> Value {
    c.get(url).bearer_auth(token).send().await.unwrap().json().await.unwrap()
}

/// The hub's stock of `sku` in `store`.
pub(crate) async fn hub_on_hand(c: &reqwest::Client, hub: &str, token: &str, store: &str, sku: &str) -> i64 {
    let v = get_json(c, format!("{hub}/v1/admin/stores/{store}/stock/{sku}"), token).await;
    v["on_hand"].as_i64().unwrap_or_else(|| panic!("{v}"))
}

/// libfaketime's preload library, where Debian's `faketime` package puts it.
pub(crate) fn libfaketime() -> Option<std::path::PathBuf> {
    ["/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

/// A till played by a test over the sync protocol: its whole journal is made up front.
pub(crate) struct Till {
    pub(crate) store: String,
    pub(crate) till: String,
    pub(crate) credential: String,
    pub(crate) journal_id: Uuid,
    pub(crate) events: Vec<JournalEvent>,
}

/// `n` chained sales of a till; the seqs in `bad_bodies` carry a body the hub cannot process (its `occurred_at`
/// differs from the entry's), which the chain still covers, so the hub stores them in quarantine.
pub(crate) fn sales_journal(store: &str, till: &str, n: u64, bad_bodies: &[u64]) -> Vec<JournalEvent> {
    chain(
        store,
        till,
        (1..=n).map(|seq| {
            let occurred_at = "2026-11-26T14:05:00+01:00";
            let body_time = if bad_bodies.contains(&seq) { "2026-11-26T14:06:00+01:00" } else { occurred_at };
            let price = 100 + seq as i64;
            let body = json!({
                "occurred_at": body_time,
                "currency": "EUR",
                "lines": [{"sku": "SKU-1", "qty": 1, "unit_price_minor": price, "discount_minor": 0}],
                "payments": [{"method": "card", "amount_minor": price}]
            });
            Entry { event_id: Uuid::new_v4(), kind: EventKind::Sale, occurred_at: occurred_at.into(), body }
        }),
    )
}

/// A hub's HTTP API as head office and scripted tills use it.
pub(crate) struct Hub {
    pub(crate) url: String,
    pub(crate) c: reqwest::Client,
}

impl Hub {
    /// An admin request; answers the status and the JSON body (null when the body is not JSON).
    pub(crate) async fn request(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.c.request(method, format!("{}{path}", self.url)).bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// An admin request that must succeed; answers its JSON body.
    pub(crate) async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.request(method, path, body).await;
        assert!((200..300).contains(&status), "{path}: {status} {v}");
        v
    }

    pub(crate) async fn get(&self, path: &str) -> Value {
        self.admin(reqwest::Method::GET, path, None).await
    }

    pub(crate) async fn code(&self, store: &str, till: &str) -> String {
        let body = json!({"store": store, "till": till});
        let v = self.admin(reqwest::Method::POST, "/v1/admin/enrollments", Some(body)).await;
        v["code"].as_str().unwrap().to_owned()
    }

    /// Enrols a scripted till whose journal is `n` sales (see [`sales_journal`]).
    pub(crate) async fn till(&self, store: &str, till: &str, n: u64, bad_bodies: &[u64]) -> Till {
        self.till_with(store, till, sales_journal(store, till, n, bad_bodies)).await
    }

    /// Enrols a scripted till with the journal `events`.
    pub(crate) async fn till_with(&self, store: &str, till: &str, events: Vec<JournalEvent>) -> Till {
        let code = self.code(store, till).await;
        let r = self.c.post(format!("{}/v1/enroll", self.url)).json(&json!({"code": code, "agent_version": "0.1.0"}));
        let v: Value = r.send().await.unwrap().json().await.unwrap();
        Till {
            store: store.into(),
            till: till.into(),
            credential: v["credential"].as_str().unwrap_or_else(|| panic!("enrolling {store}/{till}: {v}")).into(),
            journal_id: Uuid::new_v4(),
            events,
        }
    }

    /// The till uploads its entries `from..=through`, saying it has journaled `reported` in all.
    pub(crate) async fn upload(&self, t: &Till, from: u64, through: u64, reported: u64) -> (u16, Value) {
        let events = t.events.iter().filter(|e| (from..=through).contains(&e.seq)).cloned().collect();
        let req = UploadRequest {
            journal_id: t.journal_id,
            agent_version: "0.1.0".into(),
            backlog: reported.saturating_sub(from.saturating_sub(1)),
            oldest_unsynced_age_s: 300,
            last_seq: reported,
            events,
        };
        let r = self.c.post(format!("{}/v1/sync/upload", self.url)).bearer_auth(&t.credential).json(&req);
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    pub(crate) async fn upload_ok(&self, t: &Till, from: u64, through: u64, reported: u64) {
        let (status, v) = self.upload(t, from, through, reported).await;
        assert_eq!(status, 200, "{}/{}: {v}", t.store, t.till);
    }
}
