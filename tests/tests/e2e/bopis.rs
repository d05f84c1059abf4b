//! Issue 11, buy online and pick up in store, with the real binaries: a hub, one real agent per store, and a real
//! webhook receiver subscribed to the hub's events.
//!
//! - a store sells its escrowed units while offline; when it reconnects, its order is rerouted to the next store;
//! - a till cancels a reservation before pickup: its escrow is released and the compensating event goes out; then
//!   an order is picked and collected by a sale carrying its `reservation_id`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use reqwest::Method;
use serde_json::{Value, json};
use storesync_tests::proc::{Running, start_agent_with, start_hub};

use crate::util::{Hub, TOKEN, client, enroll, port_of, sync_now};

const SECRET: &str = "whsec_storesync_bopis_0123456789";

/// Every event a webhook delivery carried, in arrival order.
type Received = Arc<Mutex<Vec<Value>>>;

async fn receive(State(log): State<Received>, body: axum::body::Bytes) -> &'static str {
    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
        log.lock().unwrap().extend(v["events"].as_array().cloned().unwrap_or_default());
    }
    "ok"
}

async fn receiver() -> (String, Received) {
    let log: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = Router::new().route("/hook", post(receive)).with_state(log.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, log)
}

/// The reservation events received, as `(kind, order_id, store)`, one per distinct event id.
fn reservation_events(log: &Received) -> Vec<(String, String, String)> {
    let mut seen = std::collections::BTreeSet::new();
    log.lock()
        .unwrap()
        .iter()
        .filter(|e| e["till"] == "~hub")
        .filter(|e| seen.insert(e["event_id"].to_string()))
        .map(|e| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (s(&e["kind"]), s(&e["body"]["order_id"]), s(&e["store"]))
        })
        .collect()
}

/// Polls `f` every 250 ms for up to 60 s; panics with `what` when it never holds.
async fn until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..240 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("never happened: {what}");
}

struct Scene {
    _root: tempfile::TempDir,
    hub_dir: PathBuf,
    hub: Option<Running>,
    api: Hub,
    agents: Vec<Running>,
    received: Received,
}

/// A hub with a webhook subscription, stores S1 and S2 with one real till each, 5 units of A received at each, 2
/// of them held back for online orders, and order W-1 (2 × A, stores S1 then S2) reserved at S1 and shown by S1's
/// till.
async fn scene() -> (Scene, String) {
    let root = tempfile::tempdir().unwrap();
    let hub_dir = root.path().join("hub");
    std::fs::create_dir_all(&hub_dir).unwrap();
    let hub = start_hub(&hub_dir, "127.0.0.1:0", None, TOKEN);
    let api = Hub { url: hub.url.clone(), c: client() };
    let (hook, received) = receiver().await;
    api.admin(Method::POST, "/v1/admin/subscriptions", Some(json!({"kind": "webhook", "url": hook, "secret": SECRET})))
        .await;
    let mut agents = Vec::new();
    for store in ["S1", "S2"] {
        let dir = root.path().join(store);
        enroll(&dir, &hub_dir, &hub.url, store, "T1", None);
        agents.push(start_agent_with(&dir, None, None));
        let receipt = json!({"store": store, "movements": [{"sku": "A", "delta": 5, "reason": "receipt"}]});
        api.admin(Method::POST, "/v1/admin/stock", Some(receipt)).await;
        let v = api.admin(Method::PUT, "/v1/admin/escrow", Some(json!({"store": store, "sku": "A", "qty": 2}))).await;
        assert_eq!((v["escrow"].as_i64(), v["reserved"].as_i64()), (Some(2), Some(0)), "{v}");
    }
    let order = json!({"order_id": "W-1", "lines": [{"sku": "A", "qty": 2}], "stores": ["S1", "S2"],
                       "pickup_by": "2099-01-01T18:00:00Z"});
    let (status, made) = api.request(Method::POST, "/v1/admin/reservations", Some(order.clone())).await;
    assert_eq!(
        (status, made["store"].as_str(), made["status"].as_str()),
        (201, Some("S1"), Some("reserved")),
        "{made}"
    );
    let id = made["reservation_id"].as_str().unwrap().to_owned();
    // The same order again: the same reservation, not a second one.
    let (status, again) = api.request(Method::POST, "/v1/admin/reservations", Some(order)).await;
    assert_eq!((status, &again["reservation_id"]), (200, &made["reservation_id"]), "{again}");
    let scene = Scene { _root: root, hub_dir, hub: Some(hub), api, agents, received };
    let till = scene.agents[0].url.clone();
    until("S1's till lists W-1", || async { listed(&till).await.contains(&id) }).await;
    assert_eq!(on_hand(&till, "A").await, 5);
    (scene, id)
}

/// The reservation ids a till lists, after asking it to sync.
async fn listed(till: &str) -> Vec<String> {
    sync_now(&client(), till).await;
    let v: Value = client().get(format!("{till}/v1/reservations")).send().await.unwrap().json().await.unwrap();
    v["reservations"].as_array().unwrap().iter().map(|r| r["reservation_id"].as_str().unwrap().to_owned()).collect()
}

async fn on_hand(till: &str, sku: &str) -> i64 {
    crate::util::on_hand(&client(), till, sku).await
}

async fn post_json(url: String, body: Value) -> (u16, Value) {
    let r = client().post(url).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn sale(qty: i64, reservation_id: Option<&str>) -> Value {
    let mut v = json!({"occurred_at": "2026-11-27T10:00:00Z", "currency": "EUR",
        "lines": [{"sku": "A", "qty": qty, "unit_price_minor": 500}],
        "payments": [{"method": "card", "amount_minor": qty * 500}]});
    if let Some(id) = reservation_id {
        v["reservation_id"] = json!(id);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_sells_held_units_offline_has_its_order_rerouted_when_it_reconnects() {
    let (mut scene, id) = scene().await;
    let (s1, s2) = (scene.agents[0].url.clone(), scene.agents[1].url.clone());
    let port = port_of(&scene.api.url);
    scene.hub.take().unwrap().kill();

    // Offline: a walk-in sale of 2 leaves 3 on hand, above the escrow of 2: no warning.
    let (status, r) = post_json(format!("{s1}/v1/sales"), sale(2, None)).await;
    assert_eq!((status, r.get("warnings")), (201, None), "{r}");
    // Another 2: 1 left, below the escrow. Never refused; the cashier is told.
    let (status, r) = post_json(format!("{s1}/v1/sales"), sale(2, None)).await;
    assert_eq!((status, &r["warnings"]), (201, &json!(["held_for_online"])), "{r}");
    assert_eq!(on_hand(&s1, "A").await, 1);

    // Back online: the hub learns of the sales and moves W-1 to S2, whose escrow still covers it.
    let hub = start_hub(&scene.hub_dir, &format!("127.0.0.1:{port}"), None, TOKEN);
    scene.hub = Some(hub);
    let api = &scene.api;
    let path = format!("/v1/admin/reservations/{id}");
    until("W-1 moved to S2", || async {
        sync_now(&client(), &s1).await;
        api.get(&path).await["store"] == "S2"
    })
    .await;
    let r = api.get(&path).await;
    assert_eq!(r["status"], "reserved", "{r}");
    let history: Vec<(&str, &str)> = r["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["change"].as_str().unwrap(), h["store"].as_str().unwrap()))
        .collect();
    assert_eq!(history, [("reserved", "S1"), ("rerouted", "S2")], "{r}");
    assert!(r["history"][1]["reason"].as_str().unwrap().contains("S1 sold"), "{r}");
    until("S2's till lists W-1", || async { listed(&s2).await.contains(&id) }).await;
    until("S1's till no longer lists W-1", || async { !listed(&s1).await.contains(&id) }).await;
    // ERP and CRM heard of each change once.
    let received = scene.received.clone();
    until("both changes delivered", || async { reservation_events(&received).len() >= 2 }).await;
    assert_eq!(
        reservation_events(&scene.received),
        [
            ("reservation_reserved".into(), "W-1".into(), "S1".into()),
            ("reservation_rerouted".into(), "W-1".into(), "S1".into()),
        ]
    );
    // S1 holds nothing for it any more; S2 cannot take a second order of 2.
    let order = json!({"order_id": "W-2", "lines": [{"sku": "A", "qty": 1}], "stores": ["S2"],
                       "pickup_by": "2099-01-01T18:00:00Z"});
    let (status, v) = api.request(Method::POST, "/v1/admin/reservations", Some(order)).await;
    assert_eq!((status, v["error"].as_str()), (409, Some("unavailable")), "{v}");
    for a in scene.agents.drain(..) {
        a.stop();
    }
    if let Some(h) = scene.hub.take() {
        h.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_at_the_till_releases_the_escrow_and_tells_erp() {
    let (mut scene, id) = scene().await;
    let s1 = scene.agents[0].url.clone();
    let api = &scene.api;
    // Bad input writes nothing.
    let (status, v) = post_json(format!("{s1}/v1/reservations/{id}/cancel"), json!({})).await;
    assert_eq!((status, v["error"].as_str()), (422, Some("invalid_text")), "{v}");
    let (status, v) = post_json(format!("{s1}/v1/reservations/{}/picked", uuid::Uuid::new_v4()), json!({})).await;
    assert_eq!((status, v["error"].as_str()), (404, Some("unknown_reservation")), "{v}");
    let (status, v) =
        post_json(format!("{s1}/v1/reservations/{id}/cancel"), json!({"reason": "customer phoned"})).await;
    assert_eq!(status, 201, "{v}");
    // The till shows it gone at once, offline or not.
    let v: Value = client().get(format!("{s1}/v1/reservations")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["reservations"], json!([]), "{v}");
    let path = format!("/v1/admin/reservations/{id}");
    until("the hub cancelled W-1", || async {
        sync_now(&client(), &s1).await;
        api.get(&path).await["status"] == "cancelled"
    })
    .await;
    let r = api.get(&path).await;
    assert_eq!(r["history"][1]["reason"], "customer phoned", "{r}");
    // Released: S1's escrow takes a new order of 2, which the till picks and hands over.
    let order = json!({"order_id": "W-2", "lines": [{"sku": "A", "qty": 2}], "stores": ["S1"],
                       "pickup_by": "2099-01-01T18:00:00Z"});
    let (status, made) = api.request(Method::POST, "/v1/admin/reservations", Some(order)).await;
    assert_eq!((status, made["store"].as_str()), (201, Some("S1")), "{made}");
    let w2 = made["reservation_id"].as_str().unwrap().to_owned();
    until("S1's till lists W-2", || async { listed(&s1).await.contains(&w2) }).await;
    let (status, v) = post_json(format!("{s1}/v1/reservations/{w2}/picked"), json!({})).await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = post_json(format!("{s1}/v1/sales"), sale(2, Some(&w2))).await;
    assert_eq!((status, v.get("warnings")), (201, None), "a collection is not a walk-in sale: {v}");
    let path = format!("/v1/admin/reservations/{w2}");
    until("the hub saw W-2 collected", || async {
        sync_now(&client(), &s1).await;
        api.get(&path).await["status"] == "collected"
    })
    .await;
    let received = scene.received.clone();
    until("every change delivered", || async { reservation_events(&received).len() >= 5 }).await;
    let kinds: Vec<(String, String)> =
        reservation_events(&scene.received).into_iter().map(|(k, o, _)| (k, o)).collect();
    assert_eq!(
        kinds,
        [
            ("reservation_reserved".into(), "W-1".into()),
            ("reservation_cancelled".into(), "W-1".into()),
            ("reservation_reserved".into(), "W-2".into()),
            ("reservation_picked".into(), "W-2".into()),
            ("reservation_collected".into(), "W-2".into()),
        ]
    );
    assert_eq!(on_hand(&s1, "A").await, 3);
    for a in scene.agents.drain(..) {
        a.stop();
    }
    if let Some(h) = scene.hub.take() {
        h.stop();
    }
}
