//! End-to-end tests of the hub's store documents over real sockets and a real SQLite file: CRDT sync with tills,
//! head-office prices and stock, limits, store isolation, epoch compaction and restarts.
//!
//! The till side is played here with automerge and the shared CRDT schema, the way the agent does it: each till
//! starts from `crdt::genesis()` with its own actor, changes only its own stock slot, and syncs with
//! `POST /v1/sync/doc` rounds until neither side has anything to send.

mod common;

mod util {
    use std::collections::BTreeMap;
    use std::path::Path;

    use automerge::sync::{Message, State, SyncDoc};
    use automerge::{ActorId, Automerge};
    use serde_json::{Value, json};
    use storesync_hub::Config;

    use crate::common::Served;
    use storesync_shared::canonical::ChainInput;
    use storesync_shared::crdt;
    use storesync_shared::event::EventKind;
    use storesync_shared::wire::{EpochSnapshot, JournalEvent, UploadRequest};
    use storesync_shared::{canonical_json, event_hash, genesis_hash};
    use uuid::Uuid;

    pub(crate) use crate::common::{ADMIN, T0};
    const MAX_ROUNDS: usize = 20;

    /// A hub served by the library on 127.0.0.1:0.
    pub(crate) struct Hub(Served);

    impl std::ops::Deref for Hub {
        type Target = Served;
        fn deref(&self) -> &Served {
            &self.0
        }
    }

    impl Hub {
        pub(crate) async fn start(dir: &Path) -> Hub {
            Hub::start_with(dir, |_| {}).await
        }

        pub(crate) async fn start_with(dir: &Path, tweak: impl FnOnce(&mut Config)) -> Hub {
            Hub(Served::start(dir, tweak).await)
        }

        pub(crate) async fn stop(self) {
            self.0.stop().await;
        }

        pub(crate) async fn send(
            &self,
            method: reqwest::Method,
            path: &str,
            token: &str,
            body: Option<&Value>,
        ) -> (u16, Value) {
            let mut req = self.http.request(method, format!("{}{path}", self.url)).bearer_auth(token);
            if let Some(b) = body {
                req = req.json(b);
            }
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let text = res.text().await.unwrap();
            (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
        }

        pub(crate) async fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
            self.send(reqwest::Method::POST, path, token, Some(body)).await
        }

        pub(crate) async fn get(&self, path: &str, token: &str) -> (u16, Value) {
            self.send(reqwest::Method::GET, path, token, None).await
        }

        /// Enrols a till and returns its credential.
        pub(crate) async fn enroll(&self, store: &str, till: &str) -> String {
            let (status, body) =
                self.post("/v1/admin/enrollments", ADMIN, &json!({"store": store, "till": till})).await;
            assert_eq!(status, 201, "{body}");
            let res = self
                .http
                .post(format!("{}/v1/enroll", self.url))
                .json(&json!({"code": body["code"], "agent_version": "t/1"}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status().as_u16(), 200);
            let body: Value = res.json().await.unwrap();
            body["credential"].as_str().unwrap().to_owned()
        }

        /// One raw sync round: `(status, X-Storesync-Epoch, body)`.
        pub(crate) async fn sync_raw(
            &self,
            cred: &str,
            epoch: Option<&str>,
            body: Vec<u8>,
        ) -> (u16, Option<u64>, Vec<u8>) {
            let mut req = self
                .http
                .post(format!("{}/v1/sync/doc", self.url))
                .bearer_auth(cred)
                .header("content-type", "application/octet-stream")
                .body(body);
            if let Some(e) = epoch {
                req = req.header("x-storesync-epoch", e);
            }
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let epoch = res.headers().get("x-storesync-epoch").map(|v| v.to_str().unwrap().parse().unwrap());
            (status, epoch, res.bytes().await.unwrap().to_vec())
        }

        pub(crate) async fn stock(&self, store: &str, sku: &str) -> i64 {
            let (status, body) = self.get(&format!("/v1/admin/stores/{store}/stock/{sku}"), ADMIN).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["sku"], sku);
            body["on_hand"].as_i64().unwrap()
        }

        pub(crate) async fn receive(&self, store: &str, movements: &[(&str, i64)]) {
            let movements: Vec<Value> =
                movements.iter().map(|(sku, d)| json!({"sku": sku, "delta": d, "reason": "receipt"})).collect();
            let (status, body) =
                self.post("/v1/admin/stock", ADMIN, &json!({"store": store, "movements": movements})).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["movements"], movements.len());
        }

        pub(crate) async fn upload(&self, cred: &str, events: &[JournalEvent]) {
            let req = UploadRequest {
                journal_id: Uuid::from_u128(0xfeed),
                agent_version: "t/1".into(),
                backlog: 0,
                oldest_unsynced_age_s: 0,
                last_seq: events.last().map_or(0, |e| e.seq),
                events: events.to_vec(),
            };
            let (status, body) = self.post("/v1/sync/upload", cred, &serde_json::to_value(req).unwrap()).await;
            assert_eq!(status, 200, "{body}");
        }
    }

    /// The till side of CRDT sync, as the agent plays it.
    pub(crate) struct Till {
        pub(crate) name: String,
        pub(crate) cred: String,
        pub(crate) doc: Automerge,
        pub(crate) state: State,
        pub(crate) epoch: u64,
    }

    impl Till {
        pub(crate) fn new(name: &str, cred: String) -> Till {
            Till {
                name: name.into(),
                cred,
                doc: crdt::genesis().with_actor(ActorId::random()),
                state: State::new(),
                epoch: 0,
            }
        }

        /// Adds `deltas` to this till's own slot in one change.
        pub(crate) fn apply(&mut self, deltas: &[(&str, i64)]) {
            let stock = crdt::root_map(&self.doc, crdt::STOCK).unwrap();
            let deltas: BTreeMap<String, i64> = deltas.iter().map(|(s, d)| ((*s).to_owned(), *d)).collect();
            let mut tx = self.doc.transaction();
            crdt::apply_stock(&mut tx, &stock, &self.name, &deltas).unwrap();
            tx.commit();
        }

        pub(crate) fn on_hand(&self, sku: &str) -> i64 {
            crdt::on_hand(&self.doc, &crdt::root_map(&self.doc, crdt::STOCK).unwrap(), sku, None)
        }

        pub(crate) fn price(&self, sku: &str, now: &str) -> crdt::PriceView {
            crdt::price_at(&self.doc, &crdt::root_map(&self.doc, crdt::PRICES).unwrap(), sku, now, None)
        }

        /// Sync rounds until neither side has anything to send; returns the status of a refused round.
        pub(crate) async fn try_sync(&mut self, hub: &Hub) -> Result<usize, (u16, Value)> {
            for round in 1..=MAX_ROUNDS {
                let out = self.doc.generate_sync_message(&mut self.state);
                let sent = out.is_some();
                let epoch = self.epoch.to_string();
                let (status, hub_epoch, body) =
                    hub.sync_raw(&self.cred, Some(&epoch), out.map(Message::encode).unwrap_or_default()).await;
                match status {
                    200 => {
                        assert_eq!(hub_epoch, Some(self.epoch));
                        let msg = Message::decode(&body).unwrap();
                        self.doc.receive_sync_message(&mut self.state, msg).unwrap();
                    }
                    204 => {
                        assert_eq!(hub_epoch, Some(self.epoch));
                        if !sent {
                            return Ok(round);
                        }
                    }
                    _ => {
                        assert!(hub_epoch.is_some(), "every answer names the hub's epoch");
                        return Err((status, serde_json::from_slice(&body).unwrap_or(Value::Null)));
                    }
                }
            }
            panic!("{}: sync did not settle in {MAX_ROUNDS} rounds", self.name)
        }

        pub(crate) async fn sync(&mut self, hub: &Hub) -> usize {
            self.try_sync(hub).await.unwrap_or_else(|e| panic!("{}: sync refused: {e:?}", self.name))
        }

        /// Switches to the hub's current epoch: its snapshot, then this till's own events after its cut.
        pub(crate) async fn load_snapshot(&mut self, hub: &Hub, journal: &[BTreeMap<String, i64>]) -> EpochSnapshot {
            let (status, body) = hub.get("/v1/sync/snapshot", &self.cred).await;
            assert_eq!(status, 200, "{body}");
            let snap: EpochSnapshot = serde_json::from_value(body).unwrap();
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD.decode(snap.doc.as_ref().unwrap()).unwrap();
            self.doc = Automerge::load(&bytes).unwrap().with_actor(ActorId::random());
            self.state = State::new();
            self.epoch = snap.epoch;
            let cut = snap.cuts.get(&self.name).copied().unwrap_or(0) as usize;
            let stock = crdt::root_map(&self.doc, crdt::STOCK).unwrap();
            let mut tx = self.doc.transaction();
            for effect in &journal[cut.min(journal.len())..] {
                crdt::apply_stock(&mut tx, &stock, &self.name, effect).unwrap();
            }
            tx.commit();
            snap
        }
    }

    /// A valid chain of `n` sales of a till, each selling 2 A and 1 B, and each event's stock effect.
    pub(crate) fn sales(store: &str, till: &str, n: u64) -> (Vec<JournalEvent>, Vec<BTreeMap<String, i64>>) {
        let mut prev = genesis_hash(store, till);
        let events: Vec<JournalEvent> = (1..=n)
            .map(|seq| {
                let body = json!({
                    "occurred_at": "2026-11-26T14:05:00+01:00",
                    "currency": "EUR",
                    "lines": [{"sku": "A", "qty": 2, "unit_price_minor": 250},
                              {"sku": "B", "qty": 1, "unit_price_minor": 100}],
                    "payments": [{"method": "card", "amount_minor": 600}]
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
            .collect();
        let effects = events
            .iter()
            .map(|e| storesync_shared::crdt::effects_of([(e.event_id, e.kind, e.body.clone())]).unwrap())
            .collect();
        (events, effects)
    }

    pub(crate) fn as_pairs(effect: &BTreeMap<String, i64>) -> Vec<(&str, i64)> {
        effect.iter().map(|(k, v)| (k.as_str(), *v)).collect()
    }
}

use automerge::ReadDoc as _;
use serde_json::json;
use storesync_shared::crdt;
use util::{ADMIN, Hub, T0, Till, as_pairs, sales};

fn instant(t: i64) -> String {
    crdt::normalize_instant(time::OffsetDateTime::from_unix_timestamp(t).unwrap())
}

#[tokio::test]
async fn stock_and_prices_converge_between_tills_and_hub() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path()).await;
    let mut t1 = Till::new("T1", hub.enroll("S1", "T1").await);
    let mut t2 = Till::new("T2", hub.enroll("S1", "T2").await);
    hub.receive("S1", &[("A", 100), ("B", 50)]).await;
    assert_eq!(hub.stock("S1", "A").await, 100);

    t1.sync(&hub).await;
    assert_eq!(t1.on_hand("A"), 100, "a first sync brings the hub's state");
    // Offline sales on both tills, T2 never synced before.
    t1.apply(&[("A", -3)]);
    t1.apply(&[("B", -1)]);
    t2.apply(&[("A", -5)]);
    t2.sync(&hub).await;
    t1.sync(&hub).await;
    t2.sync(&hub).await;
    hub.receive("S1", &[("A", 10)]).await;
    t1.sync(&hub).await;
    t2.sync(&hub).await;
    assert_eq!(hub.stock("S1", "A").await, 102);
    assert_eq!(hub.stock("S1", "B").await, 49);
    for t in [&t1, &t2] {
        assert_eq!((t.on_hand("A"), t.on_hand("B")), (102, 49), "{}", t.name);
    }
    // A synced till with nothing new settles in one empty round.
    assert_eq!(t1.sync(&hub).await, 1);

    // A brand-new till gets everything on its first sync.
    let mut t3 = Till::new("T3", hub.enroll("S1", "T3").await);
    t3.sync(&hub).await;
    assert_eq!((t3.on_hand("A"), t3.on_hand("B")), (102, 49));

    // Prices: one in force now, one scheduled.
    let tomorrow = "2027-01-16T09:00:00+01:00";
    let (status, body) = hub
        .send(
            reqwest::Method::PUT,
            "/v1/admin/prices",
            ADMIN,
            Some(&json!({"stores": ["*"], "prices": [
                {"sku": "A", "price_minor": 250, "currency": "EUR"},
                {"sku": "A", "price_minor": 300, "currency": "EUR", "effective_from": tomorrow},
                {"sku": "B", "price_minor": 0, "currency": "EUR", "effective_from": "2020-01-01T00:00:00Z"},
            ]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"stores": ["S1"], "prices": 3}));
    let (status, body) = hub.get("/v1/admin/stores/S1/prices/A", ADMIN).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"sku": "A", "price_minor": 250, "currency": "EUR", "effective_from": instant(T0),
               "next": {"price_minor": 300, "currency": "EUR", "effective_from": "2027-01-16T08:00:00Z"}})
    );
    let (status, body) = hub.get("/v1/admin/stores/S1/prices/B", ADMIN).await;
    assert_eq!((status, body["price_minor"].as_i64(), &body["next"]), (200, Some(0), &json!(null)));
    let (status, body) = hub.get("/v1/admin/stores/S1/prices/C", ADMIN).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("no_price")));
    for t in [&mut t1, &mut t2, &mut t3] {
        t.sync(&hub).await;
        let view = t.price("A", &instant(T0));
        assert_eq!(view.current.map(|p| p.price_minor), Some(250), "{}", t.name);
        assert_eq!(view.next.map(|p| p.price_minor), Some(300), "{}", t.name);
        assert_eq!(t.price("A", "2027-01-16T08:00:00Z").current.map(|p| p.price_minor), Some(300));
    }
    hub.stop().await;
}

#[tokio::test]
async fn head_office_writes_are_validated_and_admin_only() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path()).await;
    let cred = hub.enroll("S1", "T1").await;
    let price = |p: serde_json::Value| json!({"stores": ["S1"], "prices": [p]});
    for (body, status, code) in [
        (price(json!({"sku": "A", "price_minor": -1, "currency": "EUR"})), 422, "invalid_price"),
        (price(json!({"sku": "A", "price_minor": 1.5, "currency": "EUR"})), 422, "invalid_body"),
        (price(json!({"sku": "A", "price_minor": 1, "currency": "EUX"})), 422, "unknown_currency"),
        (price(json!({"sku": "A\u{1f}x", "price_minor": 1, "currency": "EUR"})), 422, "invalid_sku"),
        (
            price(json!({"sku": "A", "price_minor": 1, "currency": "EUR", "effective_from": "tomorrow"})),
            422,
            "invalid_effective_from",
        ),
        (
            price(json!({"sku": "A", "price_minor": 1, "currency": "EUR", "effective_from": "2027-01-01T00:00:00"})),
            422,
            "invalid_effective_from",
        ),
        (json!({"stores": ["S1"], "prices": []}), 422, "no_prices"),
        (json!({"stores": [], "prices": [{"sku": "A", "price_minor": 1, "currency": "EUR"}]}), 422, "no_stores"),
        (
            json!({"stores": ["S1", "S9"], "prices": [{"sku": "A", "price_minor": 1, "currency": "EUR"}]}),
            404,
            "unknown_store",
        ),
        (
            json!({"stores": ["S1"], "prices": [{"sku": "A", "price_minor": 1, "currency": "EUR"},
                                              {"sku": "A", "price_minor": 2, "currency": "EUR"}]}),
            422,
            "duplicate_price",
        ),
    ] {
        let (got, answer) = hub.send(reqwest::Method::PUT, "/v1/admin/prices", ADMIN, Some(&body)).await;
        assert_eq!((got, answer["error"].as_str()), (status, Some(code)), "{body} -> {answer}");
    }
    let mv = |m: serde_json::Value| json!({"store": "S1", "movements": [m]});
    let many: Vec<_> = (0..501).map(|_| json!({"sku": "A", "delta": 1, "reason": "r"})).collect();
    for (body, status, code) in [
        (mv(json!({"sku": "A", "delta": 0, "reason": "r"})), 422, "invalid_delta"),
        (mv(json!({"sku": "A", "delta": 1_000_001, "reason": "r"})), 422, "invalid_delta"),
        (mv(json!({"sku": "A", "delta": 1, "reason": "  "})), 422, "invalid_reason"),
        (mv(json!({"sku": "A", "delta": 1, "reason": "x".repeat(201)})), 422, "invalid_reason"),
        (mv(json!({"sku": "", "delta": 1, "reason": "r"})), 422, "invalid_sku"),
        (json!({"store": "S1", "movements": many}), 422, "too_many_movements"),
        (json!({"store": "S9", "movements": [{"sku": "A", "delta": 1, "reason": "r"}]}), 404, "unknown_store"),
    ] {
        let (got, answer) = hub.post("/v1/admin/stock", ADMIN, &body).await;
        assert_eq!((got, answer["error"].as_str()), (status, Some(code)), "{body} -> {answer}");
    }
    assert_eq!(hub.stock("S1", "A").await, 0, "nothing was written by refused requests");
    let (status, body) = hub.get("/v1/admin/stores/S1/prices/A", ADMIN).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("no_price")));
    let (status, body) = hub.get("/v1/admin/stores/S9/stock/A", ADMIN).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("unknown_store")));
    let (status, body) = hub.post("/v1/admin/stores/S9/compact", ADMIN, &json!({})).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("unknown_store")));

    // A till credential opens none of the head-office endpoints.
    let ok_price = json!({"stores": ["S1"], "prices": [{"sku": "A", "price_minor": 1, "currency": "EUR"}]});
    assert_eq!(hub.send(reqwest::Method::PUT, "/v1/admin/prices", &cred, Some(&ok_price)).await.0, 401);
    let ok_stock = json!({"store": "S1", "movements": [{"sku": "A", "delta": 1, "reason": "r"}]});
    assert_eq!(hub.post("/v1/admin/stock", &cred, &ok_stock).await.0, 401);
    for path in ["/v1/admin/stores/S1/stock/A", "/v1/admin/stores/S1/prices/A", "/v1/admin/stores/S1/doc"] {
        assert_eq!(hub.get(path, &cred).await.0, 401, "{path}");
    }
    assert_eq!(hub.post("/v1/admin/stores/S1/compact", &cred, &json!({})).await.0, 401);
    // And the admin token is not a till credential.
    assert_eq!(hub.sync_raw(ADMIN, None, vec![]).await.0, 401);
    assert_eq!(hub.get("/v1/sync/snapshot", ADMIN).await.0, 401);
    hub.stop().await;
}

#[tokio::test]
async fn sync_messages_are_bounded_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start_with(dir.path(), |c| {
        c.sync.max_message_bytes = 64 * 1024;
        c.sync.max_doc_bytes = 8 * 1024;
    })
    .await;
    let cred = hub.enroll("S1", "T1").await;
    let (status, epoch, body) = hub.sync_raw(&cred, None, vec![0u8; 64 * 1024 + 1]).await;
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, epoch, body["error"].as_str()), (413, Some(0), Some("message_too_large")));
    let (status, epoch, body) = hub.sync_raw(&cred, None, b"certainly not automerge".to_vec()).await;
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, epoch, body["error"].as_str()), (422, Some(0), Some("bad_sync_message")));
    let (status, _, body) = hub.sync_raw(&cred, Some("one"), vec![]).await;
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_epoch")));
    assert_eq!(hub.sync_raw("sst_not-a-credential", None, vec![]).await.0, 401);

    // A change that would push the stored document past its bound is refused and not stored.
    let mut till = Till::new("T1", cred);
    till.apply(&[("A", -1)]);
    till.sync(&hub).await;
    let skus: Vec<String> = (0..600).map(|i| format!("SKU-{i:05}-{}", uuid::Uuid::new_v4())).collect();
    let big: Vec<(&str, i64)> = skus.iter().map(|s| (s.as_str(), 1)).collect();
    till.apply(&big);
    let (status, body) = till.try_sync(&hub).await.unwrap_err();
    assert_eq!((status, body["error"].as_str()), (413, Some("document_too_large")), "{body}");
    assert_eq!(hub.stock("S1", &skus[0]).await, 0);
    assert_eq!(hub.stock("S1", "A").await, -1);
    hub.stop().await;
}

#[tokio::test]
async fn a_till_only_ever_touches_its_own_stores_document() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path()).await;
    let mut a = Till::new("T1", hub.enroll("SA", "T1").await);
    let mut b = Till::new("T1", hub.enroll("SB", "T1").await);
    hub.receive("SB", &[("X", 40)]).await;
    a.apply(&[("X", -7)]);
    a.sync(&hub).await;
    b.sync(&hub).await;
    assert_eq!((hub.stock("SA", "X").await, hub.stock("SB", "X").await), (-7, 40));
    assert_eq!((a.on_hand("X"), b.on_hand("X")), (-7, 40));
    // Till A replaying B's document at the hub lands in A's document, where writing anything but its own slot is
    // refused: nothing of it is stored, in either store.
    let mut forged = Till::new("T1", a.cred.clone());
    forged.doc = b.doc.fork().with_actor(automerge::ActorId::random());
    forged.apply(&[("X", -1000)]);
    let (status, body) = forged.try_sync(&hub).await.unwrap_err();
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden_change")), "{body}");
    assert_eq!((hub.stock("SA", "X").await, hub.stock("SB", "X").await), (-7, 40));
    b.sync(&hub).await;
    assert_eq!(b.on_hand("X"), 40);
    // Nor may a till write another till's slot, the hub's, or prices.
    let mut other = Till::new("T9", a.cred.clone());
    other.apply(&[("X", 5)]);
    assert_eq!(other.try_sync(&hub).await.unwrap_err().0, 403);
    let mut pricer = Till::new("T1", a.cred.clone());
    let prices = crdt::root_map(&pricer.doc, crdt::PRICES).unwrap();
    let mut tx = pricer.doc.transaction();
    let p = crdt::Price { price_minor: 1, currency: "EUR".into(), effective_from: "2020-01-01T00:00:00Z".into() };
    crdt::set_price(&mut tx, &prices, "X", &p).unwrap();
    tx.commit();
    assert_eq!(pricer.try_sync(&hub).await.unwrap_err().0, 403);
    a.apply(&[("X", -1)]);
    a.sync(&hub).await;
    assert_eq!(hub.stock("SA", "X").await, -8);
    let (_, sb) = hub.get("/v1/admin/stores/SB/doc", ADMIN).await;
    let (_, snap) = hub.get("/v1/sync/snapshot", &a.cred).await;
    assert_eq!(snap, json!({"epoch": 0, "cuts": {}, "doc": null}));
    assert_eq!(sb["epoch"], 0);
    hub.stop().await;
}

#[tokio::test]
async fn epoch_compaction_is_exact_and_never_double_counts() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path()).await;
    let mut t1 = Till::new("T1", hub.enroll("S1", "T1").await);
    let mut t2 = Till::new("T2", hub.enroll("S1", "T2").await);
    hub.receive("S1", &[("A", 100), ("B", 50)]).await;
    let (j1, e1) = sales("S1", "T1", 5);
    let (j2, e2) = sales("S1", "T2", 2);
    // T1 journaled 3 sales, uploaded 2; T2 journaled and uploaded 1. Both synced all their slots.
    for e in &e1[..3] {
        t1.apply(&as_pairs(e));
    }
    t2.apply(&as_pairs(&e2[0]));
    hub.upload(&t1.cred, &j1[..2]).await;
    hub.upload(&t2.cred, &j2[..1]).await;
    t1.sync(&hub).await;
    t2.sync(&hub).await;
    t1.sync(&hub).await;
    assert_eq!((hub.stock("S1", "A").await, hub.stock("S1", "B").await), (100 - 8, 50 - 4));

    let (status, body) = hub.post("/v1/admin/stores/S1/compact", ADMIN, &json!({})).await;
    assert_eq!((status, &body), (200, &json!({"store": "S1", "epoch": 1})));
    let (_, doc) = hub.get("/v1/admin/stores/S1/doc", ADMIN).await;
    assert_eq!((doc["epoch"].as_u64(), doc["changes_since_epoch"].as_u64()), (Some(1), Some(0)));
    // The base holds exactly the journal through the cuts plus the movements.
    assert_eq!((hub.stock("S1", "A").await, hub.stock("S1", "B").await), (100 - 6, 50 - 3));

    // A till still in epoch 0 is told to switch, and nothing it sends is applied.
    t1.apply(&as_pairs(&e1[3]));
    let (status, body) = t1.try_sync(&hub).await.unwrap_err();
    assert_eq!((status, body["error"].as_str(), body["epoch"].as_u64()), (409, Some("epoch_mismatch"), Some(1)));
    assert_eq!(hub.stock("S1", "A").await, 100 - 6);

    // Each till loads the snapshot and re-applies its journal after its cut.
    let snap = t1.load_snapshot(&hub, &e1[..4]).await;
    assert_eq!(snap.epoch, 1);
    assert_eq!(snap.cuts, [("T1".to_owned(), 2), ("T2".to_owned(), 1)].into());
    let base = crdt::root_map(&t1.doc, crdt::STOCK).unwrap();
    let base_a = t1.doc.get(&base, crdt::stock_key("A", crdt::BASE_WRITER).as_str()).unwrap().unwrap().0.as_i64();
    assert_eq!(base_a, Some(100 - 4 - 2));
    t2.load_snapshot(&hub, &e2[..1]).await;
    t1.sync(&hub).await;
    t2.sync(&hub).await;
    t1.sync(&hub).await;
    let journal_a = |n1: usize, n2: usize| e1[..n1].iter().chain(&e2[..n2]).map(|e| e["A"]).sum::<i64>();
    let journal_b = |n1: usize, n2: usize| e1[..n1].iter().chain(&e2[..n2]).map(|e| e["B"]).sum::<i64>();
    assert_eq!(hub.stock("S1", "A").await, 100 + journal_a(4, 1));
    assert_eq!(hub.stock("S1", "B").await, 50 + journal_b(4, 1));
    for t in [&t1, &t2] {
        assert_eq!((t.on_hand("A"), t.on_hand("B")), (100 + journal_a(4, 1), 50 + journal_b(4, 1)), "{}", t.name);
    }

    // Life goes on in epoch 1, then a second compaction with new cuts.
    t1.apply(&as_pairs(&e1[4]));
    t2.apply(&as_pairs(&e2[1]));
    hub.upload(&t1.cred, &j1[2..5]).await;
    hub.upload(&t2.cred, &j2[1..2]).await;
    hub.receive("S1", &[("A", 7)]).await;
    t1.sync(&hub).await;
    t2.sync(&hub).await;
    assert_eq!(hub.stock("S1", "A").await, 107 + journal_a(5, 2));
    let (status, body) = hub.post("/v1/admin/stores/S1/compact", ADMIN, &json!({})).await;
    assert_eq!((status, body["epoch"].as_u64()), (200, Some(2)));
    assert_eq!(hub.stock("S1", "A").await, 107 + journal_a(5, 2), "everything is now in the base");
    let snap = t1.load_snapshot(&hub, &e1).await;
    assert_eq!(snap.cuts, [("T1".to_owned(), 5), ("T2".to_owned(), 2)].into());
    t2.load_snapshot(&hub, &e2).await;
    t1.sync(&hub).await;
    t2.sync(&hub).await;
    assert_eq!((hub.stock("S1", "A").await, hub.stock("S1", "B").await), (107 + journal_a(5, 2), 50 + journal_b(5, 2)));
    assert_eq!((t1.on_hand("A"), t2.on_hand("A")), (107 + journal_a(5, 2), 107 + journal_a(5, 2)));
    hub.stop().await;
}

#[tokio::test]
async fn documents_survive_restarts_and_compact_by_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let tweak = |c: &mut storesync_hub::Config| {
        c.sync.fold_every = 3;
        c.sync.compact_after_changes = 12;
    };
    let hub = Hub::start_with(dir.path(), tweak).await;
    let cred = hub.enroll("S1", "T1").await;
    let mut t1 = Till::new("T1", cred.clone());
    hub.receive("S1", &[("A", 30)]).await;
    for _ in 0..4 {
        t1.apply(&[("A", -1)]);
        t1.sync(&hub).await;
    }
    let (_, before) = hub.get("/v1/admin/stores/S1/doc", ADMIN).await;
    assert!(before["saved_bytes"].as_u64().unwrap() > 0, "{before}");
    hub.stop().await;

    let hub = Hub::start_with(dir.path(), tweak).await;
    assert_eq!(hub.stock("S1", "A").await, 26, "the hub's documents are stored, not only in memory");
    let (_, after) = hub.get("/v1/admin/stores/S1/doc", ADMIN).await;
    assert_eq!(before, after);
    assert_eq!(t1.sync(&hub).await, 1, "the stored sync state says the till is current");
    let mut t2 = Till::new("T2", hub.enroll("S1", "T2").await);
    t2.sync(&hub).await;
    assert_eq!(t2.on_hand("A"), 26);

    // Past `compact_after_changes` the hub starts a new epoch on its own.
    for _ in 0..10 {
        t2.apply(&[("A", -1)]);
        if let Err((status, body)) = t2.try_sync(&hub).await {
            assert_eq!((status, body["error"].as_str()), (409, Some("epoch_mismatch")));
            break;
        }
    }
    let (_, doc) = hub.get("/v1/admin/stores/S1/doc", ADMIN).await;
    assert_eq!(doc["epoch"], 1, "{doc}");
    let (status, snap) = hub.get("/v1/sync/snapshot", &cred).await;
    assert_eq!((status, snap["epoch"].as_u64()), (200, Some(1)));
    assert_eq!(snap["cuts"], json!({"T1": 0, "T2": 0}), "no journal uploaded: every slot is re-applied by its till");
    hub.stop().await;
}
