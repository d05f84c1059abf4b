//! The agent journal through the real binary: durability across restarts, bad input, tampering.

use serde_json::{Value, json};
use storesync_tests::proc::{agent_cli, start_agent};
use storesync_tests::sales::{SKUS, return_of, sale};
use uuid::Uuid;

use crate::util::{client, journal, movements, on_hand, status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_sales_survive_a_restart_in_order_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(dir.path(), "S1", "T1");
    let c = client();
    let mut acked = Vec::new();
    for i in 0..1000u32 {
        let id = Uuid::new_v4();
        let body = if i % 10 == 9 {
            return_of(id, SKUS[i as usize % 5], 1)
        } else {
            sale(id, SKUS[i as usize % 5], 1 + i64::from(i % 3))
        };
        let path = if i % 10 == 9 { "returns" } else { "sales" };
        let r = c.post(format!("{}/v1/{path}", agent.url)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["event_id"], json!(id));
        acked.push((v["seq"].as_u64().unwrap(), id, v["hash"].as_str().unwrap().to_owned()));
    }
    agent.stop();

    let agent = start_agent(dir.path(), "S1", "T1");
    let events = journal(&c, &agent.url).await;
    assert_eq!(events.len(), 1000);
    for (e, (seq, id, hash)) in events.iter().zip(&acked) {
        assert_eq!((e.seq, e.event_id, &e.hash), (*seq, *id, hash));
    }
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=1000).collect::<Vec<_>>());
    for (sku, moved) in movements(&events) {
        assert_eq!(on_hand(&c, &agent.url, &sku).await, moved, "{sku}");
    }
    let st = status(&c, &agent.url).await;
    assert_eq!(
        (st["journal_len"].as_u64(), st["last_seq"].as_u64(), st["unsynced"].as_u64()),
        (Some(1000), Some(1000), Some(1000))
    );
    assert_eq!(st["hub"], "not_configured");
    let out = agent_cli(dir.path(), &["verify-journal"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    agent.stop();

    // The export is the same journal, line for line.
    let out = agent_cli(dir.path(), &["export", "--format", "jsonl"]);
    assert!(out.status.success());
    let lines: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1000);
    assert_eq!(lines[999]["hash"], json!(acked[999].2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_voids_and_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(dir.path(), "S1", "T1");
    let c = client();
    let url = &agent.url;
    let id = Uuid::new_v4();
    let first = c.post(format!("{url}/v1/sales")).json(&sale(id, "A", 2)).send().await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    // The same event again: 200 with the same answer, nothing written.
    let again = c.post(format!("{url}/v1/sales")).json(&sale(id, "A", 2)).send().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    // The same id with another body: 409.
    let clash = c.post(format!("{url}/v1/sales")).json(&sale(id, "A", 3)).send().await.unwrap();
    assert_eq!(clash.status(), 409);
    assert_eq!(clash.json::<Value>().await.unwrap()["error"], "event_id_conflict");
    assert_eq!(on_hand(&c, url, "A").await, -2);

    // A void reverses the sale's stock; a second void and a void of the void are refused.
    let void = json!({"occurred_at": "2026-11-26T14:06:00Z", "voided_event_id": id, "reason": "customer left"});
    let r = c.post(format!("{url}/v1/voids")).json(&void).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let void_id = r.json::<Value>().await.unwrap()["event_id"].clone();
    assert_eq!(on_hand(&c, url, "A").await, 0);
    let r = c.post(format!("{url}/v1/voids")).json(&void).send().await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "already_voided");
    let vv = json!({"occurred_at": "2026-11-26T14:06:00Z", "voided_event_id": void_id, "reason": "x"});
    let r = c.post(format!("{url}/v1/voids")).json(&vv).send().await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "cannot_void_void");

    // Transfers and adjustments move stock; an adjustment cannot be voided.
    let t = json!({"occurred_at": "2026-11-26T14:06:00Z", "direction": "in", "other_store": "S2", "transfer_id": "TR-9",
                   "lines": [{"sku": "A", "qty": 10}]});
    assert_eq!(c.post(format!("{url}/v1/transfers")).json(&t).send().await.unwrap().status(), 201);
    let adj_id = Uuid::new_v4();
    let a =
        json!({"event_id": adj_id, "occurred_at": "2026-11-26T14:06:00Z", "sku": "A", "delta": -3, "reason": "damage"});
    assert_eq!(c.post(format!("{url}/v1/adjustments")).json(&a).send().await.unwrap().status(), 201);
    assert_eq!(on_hand(&c, url, "A").await, 7);
    let va = json!({"occurred_at": "2026-11-26T14:06:00Z", "voided_event_id": adj_id, "reason": "x"});
    let r = c.post(format!("{url}/v1/voids")).json(&va).send().await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_voidable");
    assert_eq!(c.get(format!("{url}/v1/prices/A")).send().await.unwrap().status(), 404);
    agent.stop();
}

/// One bad request: where it goes, what it sends, which status and error code it must get.
struct Bad {
    path: &'static str,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn bad(path: &'static str, body: Value, status: u16, code: &'static str) -> Bad {
    Bad { path, body: serde_json::to_vec(&body).unwrap(), status, code }
}

fn with(mut v: Value, f: impl FnOnce(&mut Value)) -> Value {
    f(&mut v);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_precise_4xx_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(dir.path(), "S1", "T1");
    let c = client();
    let url = &agent.url;
    let s = || sale(Uuid::new_v4(), "A", 1);
    let ts = "2026-11-26T14:06:00Z";
    let cases = vec![
        Bad { path: "sales", body: b"{\"currency\": ".to_vec(), status: 400, code: "malformed_json" },
        Bad { path: "sales", body: b"[1,2]".to_vec(), status: 422, code: "invalid_body" },
        bad("sales", with(s(), |v| v["lines"][0]["qty"] = json!(0)), 422, "invalid_qty"),
        bad("sales", with(s(), |v| v["lines"][0]["qty"] = json!(-1)), 422, "invalid_qty"),
        bad("sales", with(s(), |v| v["lines"][0]["qty"] = json!(1.5)), 422, "invalid_body"),
        bad("sales", with(s(), |v| v["currency"] = json!("EURO")), 422, "unknown_currency"),
        bad("sales", with(s(), |v| v["lines"][0]["sku"] = json!("")), 422, "invalid_sku"),
        bad("sales", with(s(), |v| v["lines"][0]["sku"] = json!("S".repeat(65))), 422, "invalid_sku"),
        bad("sales", with(s(), |v| v["payments"][0]["amount_minor"] = json!(1)), 422, "tender_mismatch"),
        bad("sales", with(s(), |v| v["lines"][0]["unit_price_minor"] = json!(i64::MAX)), 422, "amount_overflow"),
        bad("sales", with(s(), |v| v["store_id"] = json!("S2")), 422, "invalid_body"),
        bad("sales", with(s(), |v| v["seq"] = json!(7)), 422, "invalid_body"),
        bad("sales", with(s(), |v| v["hash"] = json!("00")), 422, "invalid_body"),
        bad("sales", with(s(), |v| v["occurred_at"] = json!("yesterday")), 422, "invalid_occurred_at"),
        bad("sales", with(s(), |v| v["event_id"] = json!(42)), 422, "invalid_event_id"),
        bad(
            "sales",
            with(s(), |v| v["lines"] = json!(vec![json!({"sku": "A", "qty": 1, "unit_price_minor": 0}); 501])),
            422,
            "too_many_lines",
        ),
        Bad { path: "sales", body: vec![b' '; 300 * 1024], status: 413, code: "body_too_large" },
        bad(
            "returns",
            json!({"occurred_at": ts, "currency": "EUR", "lines": [{"sku": "A", "qty": 1, "unit_price_minor": 5}],
                              "refunds": [{"method": "cash", "amount_minor": 5}]}),
            422,
            "invalid_body",
        ),
        bad(
            "voids",
            json!({"occurred_at": ts, "voided_event_id": Uuid::new_v4(), "reason": "x"}),
            422,
            "voided_event_not_found",
        ),
        bad(
            "transfers",
            json!({"occurred_at": ts, "direction": "up", "other_store": "S2", "transfer_id": "T", "lines": []}),
            422,
            "invalid_body",
        ),
        bad(
            "transfers",
            json!({"occurred_at": ts, "direction": "out", "other_store": "S2", "transfer_id": "T", "lines": []}),
            422,
            "no_lines",
        ),
        bad("adjustments", json!({"occurred_at": ts, "sku": "A", "delta": 0, "reason": "count"}), 422, "invalid_delta"),
        bad("adjustments", json!({"occurred_at": ts, "sku": "A", "delta": 2, "reason": "lost"}), 422, "invalid_body"),
    ];
    for case in cases {
        let r = c
            .post(format!("{url}/v1/{}", case.path))
            .header("content-type", "application/json")
            .body(case.body.clone())
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!((code, v["error"].as_str()), (case.status, Some(case.code)), "{} {v}", case.path);
        assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
        assert_eq!(status(&c, url).await["journal_len"], 0, "{} wrote something", case.path);
    }
    for (q, code) in [("limit=0", 400), ("limit=1001", 400), ("after_seq=-1", 400), ("bogus=1", 400)] {
        assert_eq!(c.get(format!("{url}/v1/journal?{q}")).send().await.unwrap().status(), code, "{q}");
    }
    assert_eq!(c.get(format!("{url}/v1/stock/{}", "x".repeat(65))).send().await.unwrap().status(), 400);
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_detected_and_names_the_seq() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(dir.path(), "S1", "T1");
    let c = client();
    for i in 0..20 {
        let r =
            c.post(format!("{}/v1/sales", agent.url)).json(&sale(Uuid::new_v4(), SKUS[i % 5], 1)).send().await.unwrap();
        assert_eq!(r.status(), 201);
    }
    agent.stop();
    let pristine = dir.path().join("pristine.db");
    std::fs::copy(dir.path().join("journal.db"), &pristine).unwrap();

    // The triggers refuse changes while they stand.
    let conn = rusqlite::Connection::open(dir.path().join("journal.db")).unwrap();
    let err = conn.execute("UPDATE journal SET body = '{}' WHERE seq = 3", []).unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    assert!(conn.execute("DELETE FROM journal WHERE seq = 3", []).is_err());
    drop(conn);

    let attacks: Vec<(&str, &str, &str)> = vec![
        ("alter a body", "UPDATE journal SET body = replace(body, '\"qty\":1', '\"qty\":9') WHERE seq = 7", "seq 7"),
        ("alter a kind", "UPDATE journal SET kind = 'return' WHERE seq = 12", "seq 12"),
        ("alter a link", "UPDATE journal SET prev_hash = hash WHERE seq = 5", "seq 5"),
        ("delete a row", "DELETE FROM journal WHERE seq = 9", "seq 9"),
        (
            "insert a row",
            "INSERT INTO journal SELECT 21, 'a5f1d7c2-0000-4000-8000-000000000001', kind, occurred_at, recorded_at, body, hash, hash \
             FROM journal WHERE seq = 20",
            "seq 21",
        ),
    ];
    for (what, sql, seq) in attacks {
        std::fs::copy(&pristine, dir.path().join("journal.db")).unwrap();
        let _ = std::fs::remove_file(dir.path().join("journal.db-wal"));
        let conn = rusqlite::Connection::open(dir.path().join("journal.db")).unwrap();
        conn.execute_batch("DROP TRIGGER journal_no_update; DROP TRIGGER journal_no_delete;").unwrap();
        assert_eq!(conn.execute(sql, []).unwrap(), 1, "{what}");
        drop(conn);
        let out = agent_cli(dir.path(), &["verify-journal"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: verify-journal passed");
        assert!(stderr.contains(&format!("journal broken at {seq}")), "{what}: {stderr}");
    }
    // Dropping the triggers alone is reported too.
    std::fs::copy(&pristine, dir.path().join("journal.db")).unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("journal.db")).unwrap();
    conn.execute_batch("DROP TRIGGER journal_no_delete;").unwrap();
    drop(conn);
    let out = agent_cli(dir.path(), &["verify-journal"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("journal_no_delete"));
}

/// A stop with a POS request stuck in flight (a client that sent half a body and went quiet) still ends, after
/// `shutdown_deadline_s`, with exit 0: the journal commits what it holds, nothing answered is lost, and the
/// unanswered request was never journaled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_ends_at_its_deadline_with_a_request_stuck_in_flight() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "shutdown_deadline_s = 1\n").unwrap();
    let agent = storesync_tests::proc::start_agent_with(dir.path(), Some(("S1", "T1")), Some(&config));
    let c = client();
    let mut sold = Vec::new();
    for sku in SKUS {
        let id = Uuid::new_v4();
        let r = c.post(format!("{}/v1/sales", agent.url)).json(&sale(id, sku, 1)).send().await.unwrap();
        assert_eq!(r.status(), 201);
        sold.push(id);
    }
    let addr = agent.url.trim_start_matches("http://").to_owned();
    let mut stuck = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // One whole request first, so the connection is surely being served; then half of the next one.
    stuck.write_all(b"GET /v1/status HTTP/1.1\r\nHost: till\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 4096];
    let n = tokio::io::AsyncReadExt::read(&mut stuck, &mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    let head = "POST /v1/sales HTTP/1.1\r\nHost: till\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n";
    stuck.write_all(format!("{head}{{\"currency\":").as_bytes()).await.unwrap();
    // Give the agent a moment to read that head (not a timing assertion: it only makes the stop meet it).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = agent.log.clone();
    tokio::task::spawn_blocking(move || agent.stop()).await.unwrap(); // SIGTERM; panics unless it exits 0
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("stopping without them"), "the deadline was not what ended the stop:\n{text}");
    drop(stuck);

    let agent = start_agent(dir.path(), "S1", "T1");
    let ids: Vec<Uuid> = journal(&c, &agent.url).await.iter().map(|e| e.event_id).collect();
    assert_eq!(ids, sold, "every answered sale, and nothing else");
    agent.stop();
    let out = agent_cli(dir.path(), &["verify-journal"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
