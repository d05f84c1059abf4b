//! End-to-end tests of the hub over real sockets, a real SQLite file in a temp dir, and reqwest.
//!
//! Most tests drive the library (`bind` + `serve`, the same code `storesync-hub serve` runs) so they can move the
//! hub's clock; `binary_*` tests spawn the built binary.

mod util {
    use std::path::Path;
    use std::sync::Arc;

    use serde_json::{Value, json};
    use storesync_hub::{Config, ManualClock};
    use storesync_shared::canonical::ChainInput;
    use storesync_shared::event::EventKind;
    use storesync_shared::wire::{JournalEvent, UploadRequest};
    use storesync_shared::{canonical_json, event_hash, genesis_hash};
    use tokio::task::JoinHandle;
    use tokio_util::sync::CancellationToken;
    use uuid::Uuid;

    pub(crate) const ADMIN: &str = "test-admin-token";
    pub(crate) const T0: i64 = 1_800_000_000;

    /// A hub served by the library on 127.0.0.1:0.
    pub(crate) struct Hub {
        pub(crate) url: String,
        pub(crate) clock: Arc<ManualClock>,
        pub(crate) http: reqwest::Client,
        shutdown: CancellationToken,
        task: Option<JoinHandle<anyhow::Result<()>>>,
    }

    impl Hub {
        pub(crate) async fn start(dir: &Path) -> Hub {
            Hub::start_with(dir, |_| {}).await
        }

        pub(crate) async fn start_with(dir: &Path, tweak: impl FnOnce(&mut Config)) -> Hub {
            let clock = Arc::new(ManualClock::new(T0));
            let mut config = Config::new(dir.to_owned());
            config.listen = "127.0.0.1:0".parse().unwrap();
            config.admin_token = Some(ADMIN.into());
            config.clock = clock.clone();
            tweak(&mut config);
            let server = storesync_hub::bind(config).await.unwrap();
            let url = server.url();
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(server.serve(shutdown.clone()));
            Hub { url, clock, http: reqwest::Client::new(), shutdown, task: Some(task) }
        }

        /// Stops the hub and waits for it to finish.
        pub(crate) async fn stop(mut self) {
            self.shutdown.cancel();
            if let Some(task) = self.task.take() {
                task.await.unwrap().unwrap();
            }
        }

        pub(crate) async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
            let mut req = self.http.post(format!("{}{path}", self.url)).json(body);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            answer(req.send().await.unwrap()).await
        }

        pub(crate) async fn post_raw(&self, path: &str, token: &str, body: Vec<u8>) -> (u16, Value) {
            let req = self
                .http
                .post(format!("{}{path}", self.url))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body);
            answer(req.send().await.unwrap()).await
        }

        pub(crate) async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
            let mut req = self.http.get(format!("{}{path}", self.url));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            answer(req.send().await.unwrap()).await
        }

        pub(crate) async fn code(&self, store: &str, till: &str) -> String {
            let (status, body) =
                self.post("/v1/admin/enrollments", Some(ADMIN), &json!({"store": store, "till": till})).await;
            assert_eq!(status, 201, "{body}");
            body["code"].as_str().unwrap().to_owned()
        }

        /// Enrols a till and returns its credential.
        pub(crate) async fn enroll(&self, store: &str, till: &str) -> String {
            let code = self.code(store, till).await;
            let (status, body) = self.post("/v1/enroll", None, &json!({"code": code, "agent_version": "t/1"})).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!((body["store_id"].as_str(), body["till_id"].as_str()), (Some(store), Some(till)));
            body["credential"].as_str().unwrap().to_owned()
        }

        pub(crate) async fn upload(&self, cred: &str, events: &[JournalEvent]) -> (u16, Value) {
            self.post("/v1/sync/upload", Some(cred), &serde_json::to_value(upload_req(events)).unwrap()).await
        }

        /// Every event the hub holds, paging through `/v1/admin/events` with a small page size.
        pub(crate) async fn all_events(&self, store: Option<&str>) -> Vec<Value> {
            let mut out = Vec::new();
            let mut after = String::new();
            loop {
                let mut q = format!("/v1/admin/events?limit=3&after={after}");
                if let Some(s) = store {
                    q.push_str(&format!("&store={s}"));
                }
                let (status, body) = self.get(&q, Some(ADMIN)).await;
                assert_eq!(status, 200, "{body}");
                let page = body["events"].as_array().unwrap().clone();
                if page.is_empty() {
                    assert!(body["next"].is_null());
                    return out;
                }
                after = body["next"].as_str().unwrap().to_owned();
                assert_eq!(page.last().unwrap()["cursor"].as_str().unwrap(), after);
                out.extend(page);
            }
        }

        /// `(store, till, seq)` of every stored event, in hub order.
        pub(crate) async fn stored(&self) -> Vec<(String, String, u64)> {
            self.all_events(None)
                .await
                .iter()
                .map(|e| {
                    (
                        e["store"].as_str().unwrap().into(),
                        e["till"].as_str().unwrap().into(),
                        e["seq"].as_u64().unwrap(),
                    )
                })
                .collect()
        }

        pub(crate) async fn till_view(&self, store: &str, till: &str) -> Value {
            let (status, body) = self.get("/v1/admin/stores", Some(ADMIN)).await;
            assert_eq!(status, 200, "{body}");
            body["stores"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["store"] == store)
                .and_then(|s| s["tills"].as_array().unwrap().iter().find(|t| t["till"] == till).cloned())
                .unwrap_or_else(|| panic!("no {store}/{till} in {body}"))
        }
    }

    impl Drop for Hub {
        fn drop(&mut self) {
            self.shutdown.cancel();
        }
    }

    async fn answer(res: reqwest::Response) -> (u16, Value) {
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub(crate) fn journal_id() -> Uuid {
        Uuid::from_u128(0xfeed)
    }

    pub(crate) fn upload_req(events: &[JournalEvent]) -> UploadRequest {
        UploadRequest {
            journal_id: journal_id(),
            agent_version: "t/1".into(),
            backlog: 0,
            oldest_unsynced_age_s: 0,
            last_seq: events.last().map_or(0, |e| e.seq),
            events: events.to_vec(),
        }
    }

    /// A valid chain of `n` sales of a till; `salt` changes the content (and so the hashes).
    pub(crate) fn chain(store: &str, till: &str, n: u64, salt: i64) -> Vec<JournalEvent> {
        let mut prev = genesis_hash(store, till);
        (1..=n)
            .map(|seq| {
                let price = 100 + salt + seq as i64;
                let body = json!({
                    "occurred_at": "2026-11-26T14:05:00+01:00",
                    "currency": "EUR",
                    "lines": [{"sku": "A", "qty": 2, "unit_price_minor": price, "discount_minor": 0},
                              {"sku": "B", "qty": 1, "unit_price_minor": 100}],
                    "payments": [{"method": "card", "amount_minor": 2 * price + 100}]
                });
                let event_id = Uuid::new_v4();
                let hash = event_hash(&ChainInput {
                    store,
                    till,
                    seq,
                    event_id,
                    kind: EventKind::Sale,
                    body: &canonical_json(&body),
                    prev_hash: &prev,
                });
                JournalEvent {
                    seq,
                    event_id,
                    kind: EventKind::Sale,
                    occurred_at: "2026-11-26T14:05:00+01:00".into(),
                    body,
                    prev_hash: std::mem::replace(&mut prev, hash.clone()),
                    hash,
                }
            })
            .collect()
    }

    pub(crate) fn seqs(store: &str, till: &str, range: std::ops::RangeInclusive<u64>) -> Vec<(String, String, u64)> {
        range.map(|s| (store.to_owned(), till.to_owned(), s)).collect()
    }
}

use serde_json::json;
use util::{ADMIN, Hub, chain, seqs};

#[tokio::test]
async fn enrolment_happy_path_and_one_time_codes() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path()).await;
    let code = hub.code("S1", "T1").await;
    assert_eq!(code.len(), 19, "grouped 16-char code: {code}");
    // Typed back in lowercase without dashes still works.
    let typed = code.replace('-', "").to_lowercase();
    let (status, body) = hub.post("/v1/enroll", None, &json!({"code": typed, "agent_version": "t/1"})).await;
    assert_eq!(status, 200, "{body}");
    let cred = body["credential"].as_str().unwrap();
    assert!(cred.starts_with("sst_"));
    let (status, state) = hub.get("/v1/sync/state", Some(cred)).await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["hub_seq"], 0);
    assert_eq!(state["last_hash"], storesync_shared::genesis_hash("S1", "T1"));

    let (status, body) = hub.post("/v1/enroll", None, &json!({"code": code})).await;
    assert_eq!((status, body["error"].as_str()), (410, Some("code_used")), "{body}");

    // Expiry, with the hub's clock moved rather than waited for.
    let (status, body) =
        hub.post("/v1/admin/enrollments", Some(ADMIN), &json!({"store": "S1", "till": "T2", "ttl_s": 60})).await;
    assert_eq!(status, 201, "{body}");
    hub.clock.advance(61);
    let (status, body) = hub.post("/v1/enroll", None, &json!({"code": body["code"]})).await;
    assert_eq!((status, body["error"].as_str()), (410, Some("code_expired")), "{body}");

    let (status, body) = hub.post("/v1/enroll", None, &json!({"code": "0000-0000-0000-0000"})).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_code")), "{body}");

    // Re-enrolment issues a new credential and revokes the old one.
    let new_cred = hub.enroll("S1", "T1").await;
    assert_eq!(hub.get("/v1/sync/state", Some(cred)).await.0, 401);
    assert_eq!(hub.get("/v1/sync/state", Some(&new_cred)).await.0, 200);

    // Bad ids and bad bodies.
    for (body, code) in [
        (json!({"store": "S 1", "till": "T1"}), "invalid_id"),
        (json!({"store": "S1", "till": "x".repeat(65)}), "invalid_id"),
        (json!({"store": "S1", "till": "T1", "ttl_s": 0}), "invalid_ttl"),
        (json!({"store": "S1"}), "invalid_body"),
    ] {
        let (status, got) = hub.post("/v1/admin/enrollments", Some(ADMIN), &body).await;
        assert_eq!((status, got["error"].as_str()), (422, Some(code)), "{body} -> {got}");
    }
    hub.stop().await;
}

#[tokio::test]
async fn failed_enrolments_are_rate_limited_per_client() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path()).await;
    let good = hub.code("S1", "T1").await;
    for _ in 0..10 {
        let (status, _) = hub.post("/v1/enroll", None, &json!({"code": "AAAA-AAAA-AAAA-AAAA"})).await;
        assert_eq!(status, 401);
    }
    let res = hub.http.post(format!("{}/v1/enroll", hub.url)).json(&json!({"code": good})).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 429, "even a good code waits once the limit is hit");
    let retry: i64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry), "{retry}");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "too_many_attempts");
    // Once the window has passed the good code works.
    hub.clock.advance(retry);
    let (status, body) = hub.post("/v1/enroll", None, &json!({"code": good})).await;
    assert_eq!(status, 200, "{body}");
    hub.stop().await;
}

#[tokio::test]
async fn revoke_ends_access_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path()).await;
    let cred = hub.enroll("S1", "T1").await;
    assert_eq!(hub.upload(&cred, &chain("S1", "T1", 1, 0)).await.0, 200);
    let (status, body) = hub.post("/v1/admin/revoke", Some(ADMIN), &json!({"store": "S1", "till": "T1"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = hub.upload(&cred, &[]).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")));
    assert_eq!(hub.get("/v1/sync/state", Some(&cred)).await.0, 401);
    let view = hub.till_view("S1", "T1").await;
    assert_eq!(view["revoked"], true);
    let (status, body) = hub.post("/v1/admin/revoke", Some(ADMIN), &json!({"store": "S9", "till": "T1"})).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("unknown_till")));
    hub.stop().await;
}

#[tokio::test]
async fn replays_duplicates_reorders_and_truncations_never_duplicate_or_gap() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path()).await;
    let cred = hub.enroll("S1", "T1").await;
    let events = chain("S1", "T1", 10, 0);

    let ack = |n: u64| json!({"acked_through": n, "last_hash": events[n as usize - 1].hash});
    assert_eq!(hub.upload(&cred, &events[0..4]).await, (200, ack(4)));
    // Exact replay (a lost response) and a replay of a middle part.
    assert_eq!(hub.upload(&cred, &events[0..4]).await, (200, ack(4)));
    assert_eq!(hub.upload(&cred, &events[1..3]).await, (200, ack(4)));
    // Reordered batch: refused as a whole.
    let mut reordered = events[4..7].to_vec();
    reordered.swap(0, 1);
    let (status, body) = hub.upload(&cred, &reordered).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("not_consecutive")), "{body}");
    // Gap.
    let (status, body) = hub.upload(&cred, &events[5..7]).await;
    assert_eq!((status, body["error"].as_str(), body["expected_seq"].as_u64()), (409, Some("seq_gap"), Some(5)));
    // A batch cut short mid-JSON stores nothing.
    let full = serde_json::to_vec(&util::upload_req(&events[4..8])).unwrap();
    let (status, body) = hub.post_raw("/v1/sync/upload", &cred, full[..full.len() / 2].to_vec()).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("malformed_json")), "{body}");
    assert_eq!(hub.stored().await, seqs("S1", "T1", 1..=4));
    // A batch cut short by events (the agent sent fewer than it had) is fine: it is acked as far as it goes.
    assert_eq!(hub.upload(&cred, &events[4..6]).await, (200, ack(6)));
    // Overlapping the end.
    assert_eq!(hub.upload(&cred, &events[3..10]).await, (200, ack(10)));
    // Old batches again, after everything is stored.
    assert_eq!(hub.upload(&cred, &events[0..10]).await, (200, ack(10)));
    // A fork of already-stored seqs.
    let fork = chain("S1", "T1", 3, 9);
    let (status, body) = hub.upload(&cred, &fork).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("sequence_regression")), "{body}");
    assert_eq!(hub.till_view("S1", "T1").await["chain_ok"], false);

    assert_eq!(hub.stored().await, seqs("S1", "T1", 1..=10));
    let stored = hub.all_events(None).await;
    let ids: Vec<String> = stored.iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect();
    let want: Vec<String> = events.iter().map(|e| e.event_id.to_string()).collect();
    assert_eq!(ids, want);
    assert_eq!(stored[0]["body"], events[0].body);
    assert_eq!(stored[0]["kind"], "sale");
    let view = hub.till_view("S1", "T1").await;
    assert_eq!((view["hub_seq"].as_u64(), view["last_seq"].as_u64()), (Some(10), Some(3)));
    hub.stop().await;
}

#[tokio::test]
async fn broken_chains_store_nothing_and_heartbeats_report_health() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path()).await;
    let cred = hub.enroll("S1", "T1").await;
    let events = chain("S1", "T1", 5, 0);
    assert_eq!(hub.upload(&cred, &events[0..2]).await.0, 200);
    let mut tampered = events[2..5].to_vec();
    tampered[2].body["payments"][0]["method"] = json!("cash"); // hash no longer matches
    let (status, body) = hub.upload(&cred, &tampered).await;
    assert_eq!((status, body["error"].as_str(), body["seq"].as_u64()), (422, Some("chain_broken"), Some(5)), "{body}");
    assert_eq!(hub.stored().await, seqs("S1", "T1", 1..=2), "seqs 3 and 4 of the refused batch are not kept");
    let view = hub.till_view("S1", "T1").await;
    assert_eq!(view["chain_ok"], false);
    assert!(view["last_error"].as_str().unwrap().contains("chain_broken"), "{view}");

    // Heartbeat: no events, reports health.
    hub.clock.advance(30);
    let mut hb = util::upload_req(&[]);
    hb.backlog = 3;
    hb.oldest_unsynced_age_s = 77;
    hb.last_seq = 5;
    hb.agent_version = "t/2".into();
    let (status, body) = hub.post("/v1/sync/upload", Some(&cred), &serde_json::to_value(&hb).unwrap()).await;
    assert_eq!((status, body["acked_through"].as_u64()), (200, Some(2)));
    let view = hub.till_view("S1", "T1").await;
    assert_eq!(
        (view["backlog"].as_u64(), view["oldest_unsynced_age_s"].as_u64(), view["last_seq"].as_u64()),
        (Some(3), Some(77), Some(5))
    );
    assert_eq!(view["version"], "t/2");
    assert_eq!(view["last_seen"], "2027-01-15T08:00:30Z");
    // The good events heal the till.
    assert_eq!(hub.upload(&cred, &events[2..5]).await.0, 200);
    let view = hub.till_view("S1", "T1").await;
    assert_eq!((view["chain_ok"].as_bool(), view["last_error"].is_null()), (Some(true), true));
    hub.stop().await;
}

#[tokio::test]
async fn tills_only_ever_touch_their_own_data() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path()).await;
    let a = hub.enroll("A", "T1").await;
    let b = hub.enroll("B", "T1").await;
    // B uploads A's chain: the events are bound to A's store by their hashes, so B's upload is refused, and it
    // could never land on A anyway.
    let a_events = chain("A", "T1", 2, 0);
    let (status, body) = hub.upload(&b, &a_events).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("chain_broken")), "{body}");
    assert_eq!(hub.upload(&a, &a_events).await.0, 200);
    assert_eq!(hub.upload(&b, &chain("B", "T1", 1, 0)).await.0, 200);
    assert_eq!(hub.get("/v1/sync/state", Some(&b)).await.1["store_id"], "B");
    assert_eq!(hub.stored().await, [seqs("A", "T1", 1..=2), seqs("B", "T1", 1..=1)].concat());
    let only_b: Vec<_> = hub.all_events(Some("B")).await.iter().map(|e| e["store"].clone()).collect();
    assert_eq!(only_b, vec![json!("B")]);

    // A store or seq smuggled into the body is refused, not used.
    for (field, value) in [("store_id", json!("A")), ("till_id", json!("T1")), ("seq", json!(1))] {
        let mut body = serde_json::to_value(util::upload_req(&[])).unwrap();
        body[field] = value;
        let (status, got) = hub.post("/v1/sync/upload", Some(&b), &body).await;
        assert_eq!((status, got["error"].as_str()), (422, Some("invalid_body")), "{field}: {got}");
    }

    // Every admin endpoint refuses till credentials (of the store named or another), no token and a wrong token.
    for token in [Some(a.as_str()), Some(b.as_str()), None, Some("wrong")] {
        for path in [
            "/v1/admin/stores",
            "/v1/admin/events",
            "/v1/admin/events?store=A",
            "/v1/admin/stores/A/stock/SKU-1",
            "/v1/admin/stores/A/prices/SKU-1",
            "/v1/admin/stores/A/doc",
            "/v1/admin/quarantine",
            "/v1/admin/quarantine?store=A&released=true",
        ] {
            let (status, body) = hub.get(path, token).await;
            assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")), "{path} {token:?}");
        }
        let posts = [
            ("/v1/admin/enrollments", json!({"store": "A", "till": "T9"})),
            ("/v1/admin/revoke", json!({"store": "B", "till": "T1"})),
            ("/v1/admin/stock", json!({"store": "A", "movements": [{"sku": "SKU-1", "delta": 5, "reason": "x"}]})),
            ("/v1/admin/stores/A/compact", json!({})),
            ("/v1/admin/quarantine/release", json!({"store": "A", "till": "T1", "seq": 1})),
        ];
        for (path, body) in posts {
            let (status, got) = hub.post(path, token, &body).await;
            assert_eq!((status, got["error"].as_str()), (401, Some("unauthorized")), "{path} {token:?}");
        }
        let mut req = hub.http.put(format!("{}/v1/admin/prices", hub.url)).json(&json!({"stores": ["A"],
            "prices": [{"sku": "SKU-1", "price_minor": 1, "currency": "EUR"}]}));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        assert_eq!(req.send().await.unwrap().status().as_u16(), 401, "PUT /v1/admin/prices {token:?}");
    }
    // None of that wrote anything: A's stock is untouched, B is still enrolled.
    assert_eq!(hub.get("/v1/admin/stores/A/stock/SKU-1", Some(ADMIN)).await.1["on_hand"], 0);
    assert_eq!(hub.get("/v1/sync/state", Some(&b)).await.0, 200);
    // And the admin token is not a till credential.
    assert_eq!(hub.upload(ADMIN, &[]).await.0, 401);
    hub.stop().await;
}

#[tokio::test]
async fn a_till_over_its_request_rate_gets_429_and_other_tills_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start_with(dir.path(), |c| c.till_rate = storesync_hub::TillRate { per_second: 1, burst: 3 }).await;
    let a = hub.enroll("A", "T1").await;
    let b = hub.enroll("B", "T1").await;
    let mut limited = None;
    for _ in 0..10 {
        let res = hub.http.get(format!("{}/v1/sync/state", hub.url)).bearer_auth(&a).send().await.unwrap();
        if res.status().as_u16() == 429 {
            limited = Some(res);
            break;
        }
        assert_eq!(res.status().as_u16(), 200);
    }
    let res = limited.expect("10 requests at once never hit a 3-request burst");
    let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited", "{body}");
    // Another store's till is unaffected, and so is an upload from it.
    assert_eq!(hub.get("/v1/sync/state", Some(&b)).await.0, 200);
    assert_eq!(hub.upload(&b, &chain("B", "T1", 1, 0)).await.0, 200);
    hub.stop().await;
}

#[tokio::test]
async fn upload_limits_and_bad_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path()).await;
    let cred = hub.enroll("S1", "T1").await;
    let big = vec![b' '; storesync_shared::wire::MAX_BATCH_BYTES + 1];
    let (status, body) = hub.post_raw("/v1/sync/upload", &cred, big).await;
    assert_eq!((status, body["error"].as_str()), (413, Some("body_too_large")), "{body}");
    let one = chain("S1", "T1", 1, 0);
    let many = vec![one[0].clone(); storesync_shared::wire::MAX_BATCH_EVENTS + 1];
    let (status, body) = hub.upload(&cred, &many).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("batch_too_large")), "{body}");
    let (status, body) = hub.post_raw("/v1/sync/upload", &cred, b"{\"events\": 3}".to_vec()).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("invalid_body")), "{body}");
    let (status, body) = hub.get("/v1/admin/events?after=abc", Some(ADMIN)).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("invalid_cursor")), "{body}");
    let (status, body) = hub.get("/v1/admin/quarantine?released=maybe", Some(ADMIN)).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("invalid_query")), "{body}");
    for (req, code) in [
        (json!({"store": "S1", "till": "T1", "seq": 1}), (404, "not_quarantined")),
        (json!({"store": "S 1", "till": "T1", "seq": 1}), (422, "invalid_id")),
        (json!({"store": "S1", "till": "T1", "seq": -1}), (422, "invalid_body")),
        (json!({"store": "S1", "till": "T1", "seq": 1, "released_at": 5}), (422, "invalid_body")),
    ] {
        let (status, body) = hub.post("/v1/admin/quarantine/release", Some(ADMIN), &req).await;
        assert_eq!((status, body["error"].as_str()), (code.0, Some(code.1)), "{req}: {body}");
    }
    assert!(hub.stored().await.is_empty());
    hub.stop().await;
}

#[tokio::test]
async fn data_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path()).await;
    let cred = hub.enroll("S1", "T1").await;
    let events = chain("S1", "T1", 6, 0);
    assert_eq!(hub.upload(&cred, &events[0..4]).await.0, 200);
    drop(hub); // cancelled without waiting: as close to a kill as a test in one process gets
    tokio::task::yield_now().await;
    let hub = Hub::start(dir.path()).await;
    assert_eq!(hub.get("/v1/sync/state", Some(&cred)).await.1["hub_seq"], 4);
    assert_eq!(hub.upload(&cred, &events[2..6]).await.1["acked_through"], 6);
    assert_eq!(hub.stored().await, seqs("S1", "T1", 1..=6));
    hub.stop().await;
    let hub = Hub::start(dir.path()).await;
    assert_eq!(hub.stored().await, seqs("S1", "T1", 1..=6));
    hub.stop().await;
}

#[tokio::test]
async fn tls_with_a_trusted_ca_works_and_without_it_fails() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert =
        CertificateParams::new(vec!["hub.test".to_owned()]).unwrap().signed_by(&server_key, &issuer).unwrap();
    let (cert_path, key_path) = (dir.path().join("hub.crt"), dir.path().join("hub.key"));
    std::fs::write(&cert_path, server_cert.pem()).unwrap();
    std::fs::write(&key_path, server_key.serialize_pem()).unwrap();

    let hub = Hub::start_with(&dir.path().join("data"), |c| {
        c.tls = Some(storesync_hub::TlsFiles { cert: cert_path.clone(), key: key_path.clone() })
    })
    .await;
    assert!(hub.url.starts_with("https://"), "{}", hub.url);
    let addr: std::net::SocketAddr = hub.url.trim_start_matches("https://").parse().unwrap();
    let url = format!("https://hub.test:{}/v1/admin/stores", addr.port());

    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_cert.pem().as_bytes()).unwrap())
        .resolve("hub.test", addr)
        .build()
        .unwrap();
    let res = trusting.get(&url).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);

    let stranger = reqwest::Client::builder().resolve("hub.test", addr).build().unwrap();
    let err = stranger.get(&url).bearer_auth(ADMIN).send().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    // Plain HTTP to the TLS port does not get an answer either.
    assert!(reqwest::get(format!("http://{addr}/healthz")).await.map(|r| r.status().is_success()).ok() != Some(true));
    hub.stop().await;
}

#[tokio::test]
async fn plaintext_on_a_public_address_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = storesync_hub::Config::new(dir.path().to_owned());
    config.listen = "0.0.0.0:0".parse().unwrap();
    let err = storesync_hub::bind(config.clone()).await.unwrap_err();
    assert!(format!("{err:#}").contains("refusing to serve plain HTTP"), "{err:#}");
    config.insecure_allow_plaintext = true;
    let server = storesync_hub::bind(config).await.unwrap();
    assert!(server.url().starts_with("http://0.0.0.0:"));
}

mod binary {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};

    use serde_json::json;

    use super::util::{chain, upload_req};

    const BIN: &str = env!("CARGO_BIN_EXE_storesync-hub");

    struct Serving {
        child: Child,
        url: String,
    }

    impl Drop for Serving {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn serve(dir: &std::path::Path) -> Serving {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .env("STORESYNC_ADMIN_TOKEN", "bin-admin")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).to_owned();
        Serving { child, url }
    }

    fn cli(args: &[&str], dir: &std::path::Path) -> (bool, String, String) {
        let out = Command::new(BIN).args(args).arg("--data-dir").arg(dir).output().unwrap();
        (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    }

    #[tokio::test]
    async fn binary_enrols_by_cli_code_survives_kill_and_revokes() {
        let dir = tempfile::tempdir().unwrap();
        let hub = serve(dir.path());
        let http = reqwest::Client::new();
        let (ok, stdout, stderr) = cli(&["enroll-code", "--store", "S1", "--till", "T1", "--ttl", "1h"], dir.path());
        assert!(ok, "{stderr}");
        let code = stdout.lines().last().unwrap().trim().to_owned();
        assert_eq!(code.len(), 19, "{stdout:?}");
        let res: serde_json::Value = http
            .post(format!("{}/v1/enroll", hub.url))
            .json(&json!({"code": code}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let cred = res["credential"].as_str().unwrap().to_owned();
        let events = chain("S1", "T1", 3, 0);
        let res = http
            .post(format!("{}/v1/sync/upload", hub.url))
            .bearer_auth(&cred)
            .json(&upload_req(&events))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        drop(hub); // SIGKILL

        let hub = serve(dir.path());
        let state: serde_json::Value = http
            .get(format!("{}/v1/sync/state", hub.url))
            .bearer_auth(&cred)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(state["hub_seq"], 3);
        let (ok, _, stderr) = cli(&["revoke", "--store", "S1", "--till", "T1"], dir.path());
        assert!(ok, "{stderr}");
        let res = http.get(format!("{}/v1/sync/state", hub.url)).bearer_auth(&cred).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 401);
        let (ok, _, stderr) = cli(&["revoke", "--store", "S1", "--till", "nope"], dir.path());
        assert!(!ok && stderr.contains("no till"), "{stderr}");
    }

    #[test]
    fn binary_refuses_plaintext_on_a_public_address() {
        let dir = tempfile::tempdir().unwrap();
        let out =
            Command::new(BIN).args(["serve", "--listen", "0.0.0.0:0", "--data-dir"]).arg(dir.path()).output().unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--insecure-allow-plaintext"), "{stderr}");
    }

    #[test]
    fn binary_sigterm_shuts_down_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let mut hub = serve(dir.path());
        let pid = hub.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        assert!(hub.child.wait().unwrap().success());
    }
}
