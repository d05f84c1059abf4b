//! Buy online, pick up in store on two `storesync-hub serve` processes sharing one PostgreSQL database
//! (`STORESYNC_TEST_PG`; the test makes a schema of its own and drops it): head office sets the escrow through one
//! instance, then asks both instances at once for more units than the stores hold back. The database alone decides:
//! exactly the escrow is promised, the same order sent to both is one reservation, and either instance answers for
//! any reservation.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use storesync_hub::storage::postgres::ScratchSchema;
use storesync_tests::proc::{Running, hub_command, require_tool};

use crate::util::{Hub, TOKEN, client, hub_events};

/// A bound on every retry of a request the hub answered 503 (storage busy); a healthy run needs none.
const PATIENCE: Duration = Duration::from_secs(60);

/// The test database, or `None` when `STORESYNC_TEST_PG` is not set (see [`require_tool`]).
fn test_pg() -> Option<String> {
    let url = std::env::var("STORESYNC_TEST_PG").ok().filter(|u| !u.trim().is_empty());
    if url.is_none() {
        require_tool("PostgreSQL (STORESYNC_TEST_PG)", false);
    }
    url
}

/// `storesync-hub serve` on the shared database, with a data dir of its own.
fn start_hub(dir: &Path, database_url: &str) -> Running {
    let mut cmd = hub_command(dir, "127.0.0.1:0", None, TOKEN);
    cmd.args(["--database-url", database_url, "--database-pool-size", "8"]);
    Running::start(cmd, &dir.join("hub.log"))
}

/// `POST /v1/admin/reservations`, sent again while the hub answers 503 (as a web shop would; the same order_id
/// makes that safe).
async fn reserve(hub: &Hub, order: &Value) -> (u16, Value) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = hub.request(Method::POST, "/v1/admin/reservations", Some(order.clone())).await;
        if status != 503 || tokio::time::Instant::now() >= deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn order(order_id: &str, stores: &[&str]) -> Value {
    json!({"order_id": order_id, "lines": [{"sku": "A", "qty": 1}], "stores": stores,
           "pickup_by": "2099-01-01T18:00:00Z"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_on_one_database_never_promise_more_than_the_escrow() {
    let Some(url) = test_pg() else { return };
    let schema = ScratchSchema::create(&url).unwrap();
    let root = tempfile::tempdir().unwrap();
    let procs =
        [start_hub(&root.path().join("hub-a"), &schema.url()), start_hub(&root.path().join("hub-b"), &schema.url())];
    let hubs = procs.each_ref().map(|p| Hub { url: p.url.clone(), c: client() });

    // Stores S1 and S2 (known by an enrolment code each), stock on hand to cover the escrow (so the planners of
    // both instances have nothing to re-plan), escrow of A: 6 at S1 and 4 at S2, all through A.
    const ESCROW: [(&str, i64); 2] = [("S1", 6), ("S2", 4)];
    for (store, qty) in ESCROW {
        hubs[0].code(store, "T1").await;
        let receipt = json!({"store": store, "movements": [{"sku": "A", "delta": qty, "reason": "receipt"}]});
        hubs[0].admin(Method::POST, "/v1/admin/stock", Some(receipt)).await;
        let v =
            hubs[0].admin(Method::PUT, "/v1/admin/escrow", Some(json!({"store": store, "sku": "A", "qty": qty}))).await;
        assert_eq!((v["escrow"].as_i64(), v["reserved"].as_i64()), (Some(qty), Some(0)), "{v}");
    }

    // One order sent to both instances, twice each, at once: one reservation.
    let dup = order("W-dup", &["S1"]);
    let answers = futures_util::future::join_all((0..4).map(|i| reserve(&hubs[i % 2], &dup))).await;
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{answers:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{answers:?}");
    let ids: BTreeSet<&str> = answers.iter().map(|(_, v)| v["reservation_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    let dup_id = ids.into_iter().next().unwrap().to_owned();

    // 40 orders of one unit, half to each instance, all at once, listing the stores in either order: 9 units are
    // left (10 held back, 1 taken by W-dup).
    let orders: Vec<Value> =
        (0..40).map(|n| order(&format!("W-{n}"), if n % 3 == 0 { &["S2", "S1"] } else { &["S1", "S2"] })).collect();
    let answers =
        futures_util::future::join_all(orders.iter().enumerate().map(|(n, o)| reserve(&hubs[n % 2], o))).await;
    let mut made: Vec<(String, String)> = Vec::new();
    for (status, body) in &answers {
        match status {
            201 => made.push((
                body["reservation_id"].as_str().unwrap().to_owned(),
                body["store"].as_str().unwrap().to_owned(),
            )),
            409 => assert_eq!(body["error"], "unavailable", "{body}"),
            _ => panic!("{status} {body}"),
        }
    }
    assert_eq!(made.len(), 9, "exactly the escrow left is promised: {answers:?}");
    let per_store: BTreeMap<&str, i64> = made.iter().fold(BTreeMap::new(), |mut m, (_, s)| {
        *m.entry(s.as_str()).or_default() += 1;
        m
    });
    assert_eq!(per_store, BTreeMap::from([("S1", 5), ("S2", 4)]), "each store up to its escrow");

    // Either instance answers for any reservation, made by either.
    made.push((dup_id, "S1".into()));
    for (id, store) in &made {
        for hub in &hubs {
            let r = hub.get(&format!("/v1/admin/reservations/{id}")).await;
            assert_eq!((r["store"].as_str(), r["status"].as_str()), (Some(store.as_str()), Some("reserved")), "{r}");
            assert_eq!(r["history"].as_array().map(Vec::len), Some(1), "{r}");
        }
    }
    // The levels, read through B by setting the same escrow again: all of it reserved.
    for (store, qty) in ESCROW {
        let v =
            hubs[1].admin(Method::PUT, "/v1/admin/escrow", Some(json!({"store": store, "sku": "A", "qty": qty}))).await;
        assert_eq!((v["escrow"].as_i64(), v["reserved"].as_i64()), (Some(qty), Some(qty)), "{v}");
    }
    // One `reservation_reserved` event per reservation, in each store's `~hub` chain, as either instance shows.
    let events = hub_events(&hubs[1].c, &hubs[1].url).await;
    let reserved: Vec<(&str, u64)> = events
        .iter()
        .filter(|e| e["till"] == "~hub")
        .map(|e| (e["store"].as_str().unwrap(), e["seq"].as_u64().unwrap()))
        .collect();
    assert_eq!(reserved.len(), made.len(), "{reserved:?}");
    for (store, n) in [("S1", 6), ("S2", 4)] {
        let seqs: Vec<u64> = reserved.iter().filter(|(s, _)| *s == store).map(|(_, q)| *q).collect();
        assert_eq!(seqs, (1..=n).collect::<Vec<u64>>(), "{store}: one chain, no fork");
    }
    println!("bopis_postgres: 2 hubs, 41 orders of 1 unit against an escrow of 10: 10 reserved, 31 unavailable");
}
