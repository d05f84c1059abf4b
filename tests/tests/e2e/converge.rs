//! Issue #4's outage test with the real binaries: three tills of a store sell offline while head office books a
//! receipt and sets prices; once they can talk, stock and prices are equal everywhere, and a price scheduled for
//! the future switches on time at a till that is offline.

use std::time::Duration;

use serde_json::{Value, json};
use storesync_tests::proc::{agent_cli, enroll_code, start_agent_with, start_hub};
use storesync_tests::sales::sale;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::util::{client, hub_on_hand, on_hand, sync_now};

const TOKEN: &str = "ssa_test_admin_token_converge";
const SKUS: [&str; 4] = ["A-1", "B-2", "C-3", "D-4"];
const RECEIPT: i64 = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_and_prices_converge_after_an_outage() {
    let root = tempfile::tempdir().unwrap();
    let hub_dir = root.path().join("hub");
    std::fs::create_dir_all(&hub_dir).unwrap();
    let hub = start_hub(&hub_dir, "127.0.0.1:0", None, TOKEN);
    let hub_url = hub.url.clone();
    let port = hub_url.rsplit(':').next().unwrap().to_owned();
    let c = client();

    let mut agents = Vec::new();
    for till in ["T1", "T2", "T3"] {
        let dir = root.path().join(till);
        let code = enroll_code(&hub_dir, "S1", till);
        let out = agent_cli(&dir, &["enroll", "--hub", &hub_url, "--code", &code]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        agents.push(start_agent_with(&dir, None, None));
    }
    // 1. Head office books a receipt; every till learns it.
    let movements: Vec<Value> = SKUS.iter().map(|s| json!({"sku": s, "delta": RECEIPT, "reason": "receipt"})).collect();
    let r = c
        .post(format!("{hub_url}/v1/admin/stock"))
        .bearer_auth(TOKEN)
        .json(&json!({"store": "S1", "movements": movements}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    for a in &agents {
        let st = sync_now(&c, &a.url).await;
        assert_eq!(st["last_error"], Value::Null, "{st}");
        assert_eq!(on_hand(&c, &a.url, "A-1").await, RECEIPT);
    }

    // 2. The hub goes down; the tills sell 2,000 items between them.
    hub.kill();
    let mut sold = [0i64; 4];
    let mut tasks = Vec::new();
    for (t, a) in agents.iter().enumerate() {
        let (c, url) = (c.clone(), a.url.clone());
        tasks.push(tokio::spawn(async move {
            let mut sold = [0i64; 4];
            // 667 + 667 + 666 items.
            let items = if t == 2 { 666 } else { 667 };
            for i in 0..items {
                let sku = (i + t) % SKUS.len();
                let r =
                    c.post(format!("{url}/v1/sales")).json(&sale(Uuid::new_v4(), SKUS[sku], 1)).send().await.unwrap();
                assert_eq!(r.status(), 201);
                sold[sku] += 1;
            }
            sold
        }));
    }
    for t in tasks {
        for (i, n) in t.await.unwrap().into_iter().enumerate() {
            sold[i] += n;
        }
    }
    assert_eq!(sold.iter().sum::<i64>(), 2000);

    // 3. The hub comes back, and head office sets a price now and another for a few seconds from now.
    let hub = start_hub(&hub_dir, &format!("127.0.0.1:{port}"), None, TOKEN);
    let switch_at = OffsetDateTime::now_utc() + Duration::from_secs(8);
    let switch_text = switch_at.format(&Rfc3339).unwrap();
    let r = c
        .put(format!("{hub_url}/v1/admin/prices"))
        .bearer_auth(TOKEN)
        .json(&json!({"stores": ["S1"], "prices": [
            {"sku": "A-1", "price_minor": 199, "currency": "EUR"},
            {"sku": "A-1", "price_minor": 149, "currency": "EUR", "effective_from": switch_text},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // 4. Once they can talk: stock equal everywhere, the price at every till.
    for _ in 0..2 {
        for a in &agents {
            let st = sync_now(&c, &a.url).await;
            assert_eq!((st["unsynced"].as_u64(), &st["last_error"]), (Some(0), &Value::Null), "{st}");
        }
    }
    for (i, sku) in SKUS.iter().enumerate() {
        let want = RECEIPT - sold[i];
        assert_eq!(hub_on_hand(&c, &hub_url, TOKEN, "S1", sku).await, want, "hub {sku}");
        for a in &agents {
            assert_eq!(on_hand(&c, &a.url, sku).await, want, "till {sku}");
        }
    }
    for a in &agents {
        let p: Value = c.get(format!("{}/v1/prices/A-1", a.url)).send().await.unwrap().json().await.unwrap();
        assert_eq!((p["price_minor"].as_i64(), p["currency"].as_str()), (Some(199), Some("EUR")), "{p}");
        assert_eq!(p["next"]["price_minor"], 149, "{p}");
    }

    // 5. The hub goes away again; the scheduled price still switches on time at the offline tills.
    hub.kill();
    while OffsetDateTime::now_utc() < switch_at {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for a in &agents {
        let p: Value = c.get(format!("{}/v1/prices/A-1", a.url)).send().await.unwrap().json().await.unwrap();
        assert_eq!(p["price_minor"], 149, "{p}");
        assert_eq!(p["next"], Value::Null, "{p}");
    }
    for a in agents {
        a.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_till_offline_across_a_compaction_converges_and_a_new_till_gets_everything() {
    let root = tempfile::tempdir().unwrap();
    let hub_dir = root.path().join("hub");
    std::fs::create_dir_all(&hub_dir).unwrap();
    let hub = start_hub(&hub_dir, "127.0.0.1:0", None, TOKEN);
    let hub_url = hub.url.clone();
    let c = client();
    let enroll = |till: &str| {
        let dir = root.path().join(till);
        let code = enroll_code(&hub_dir, "S1", till);
        let out = agent_cli(&dir, &["enroll", "--hub", &hub_url, "--code", &code]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        dir
    };
    let (d1, d2) = (enroll("T1"), enroll("T2"));
    let t1 = start_agent_with(&d1, None, None);
    let t2 = start_agent_with(&d2, None, None);
    let r = c
        .post(format!("{hub_url}/v1/admin/stock"))
        .bearer_auth(TOKEN)
        .json(&json!({"store": "S1", "movements": [{"sku": "A-1", "delta": 100, "reason": "receipt"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for i in 0..10 {
        for t in [&t1, &t2] {
            let r = c
                .post(format!("{}/v1/sales", t.url))
                .json(&sale(Uuid::new_v4(), "A-1", 1 + i % 2))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
    }
    sync_now(&c, &t1.url).await;
    sync_now(&c, &t2.url).await;
    // T2 goes offline and keeps selling; head office compacts twice meanwhile.
    t2.stop();
    let compact = || async {
        let r = c.post(format!("{hub_url}/v1/admin/stores/S1/compact")).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    };
    compact().await;
    for _ in 0..5 {
        let r = c.post(format!("{}/v1/sales", t1.url)).json(&sale(Uuid::new_v4(), "A-1", 1)).send().await.unwrap();
        assert_eq!(r.status(), 201);
    }
    sync_now(&c, &t1.url).await;
    compact().await;
    // T2's offline sales (its agent is down, so journal them by restarting it without the hub's help first).
    let t2 = start_agent_with(&d2, None, None);
    for _ in 0..3 {
        let r = c.post(format!("{}/v1/sales", t2.url)).json(&sale(Uuid::new_v4(), "A-1", 2)).send().await.unwrap();
        assert_eq!(r.status(), 201);
    }
    // Everybody syncs; a brand-new till joins and gets the full state on its first sync.
    let t3 = start_agent_with(&enroll("T3"), None, None);
    for _ in 0..2 {
        for t in [&t1, &t2, &t3] {
            let st = sync_now(&c, &t.url).await;
            assert_eq!((st["unsynced"].as_u64(), &st["last_error"]), (Some(0), &Value::Null), "{st}");
        }
    }
    // 100 received; T1 and T2 sold 15 each in the first phase, T1 5 more, T2 6 more.
    let want = 100 - 15 - 15 - 5 - 6;
    assert_eq!(hub_on_hand(&c, &hub_url, TOKEN, "S1", "A-1").await, want);
    for t in [&t1, &t2, &t3] {
        assert_eq!(on_hand(&c, &t.url, "A-1").await, want);
        let st: Value = c.get(format!("{}/v1/status", t.url)).send().await.unwrap().json().await.unwrap();
        assert_eq!(st["epoch"], 2, "{st}");
    }
    for t in [t1, t2, t3] {
        t.stop();
    }
    hub.stop();
}
