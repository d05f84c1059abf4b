//! The hub's fleet dashboard (issue #7) in a real browser, on 50 stores in mixed states.
//!
//! The hub binary runs under libfaketime with its clock read from a file, so the test moves the hub's time on by
//! hours between rounds of uploads instead of waiting for it: stores last heard from two hours ago are offline,
//! some are stale, some drain a backlog, some sell faster than they send, one has a broken chain, two hold
//! quarantined events, some were never seen, and two are real agents. 48 stores are tills scripted over the real
//! sync protocol (hash-chained journals, per-till credentials from real enrolment codes). Headless Chromium,
//! driven over WebDriver, signs in with the admin token, and what the page shows (counts, every store row,
//! alerts, filters, sorting, a store's page with its tills, events, stock and price book) is checked against the
//! hub's API. Screenshots are kept in `target/test-artifacts/`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};
use storesync_tests::proc::{Running, hub_command, require_tool, start_agent_with};

use crate::browser::Browser;
use crate::util::{Hub, TOKEN, Till, client, enroll, libfaketime, sell, sync_now};

/// Sets the hub's clock to `minutes` past the test's start.
fn set_clock(file: &Path, minutes: u64) {
    std::fs::write(file, format!("+{}\n", minutes * 60)).unwrap();
}

/// What the dashboard writes for a forecast (its `forecastText`).
fn forecast_text(f: &Value) -> String {
    match f["status"].as_str().unwrap() {
        "drained" => "nothing waiting".into(),
        "draining" => format!("drains in {}", storesync_hub::fleet::human_duration(f["eta_s"].as_u64().unwrap())),
        "waiting_for_link" => "waiting for link".into(),
        "growing" => "growing: sells faster than it sends".into(),
        "stalled" => "not draining".into(),
        "measuring" => "measuring…".into(),
        other => other.into(),
    }
}

fn state_text(s: &str) -> &str {
    if s == "never_seen" { "never seen" } else { s }
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// The store table as the browser rendered it: per store, per column, the text and the data attributes.
const READ_TABLE: &str = r#"return [...document.querySelectorAll('#stores tbody tr')].map(tr => ({
  store: tr.dataset.store,
  tills: [...tr.querySelectorAll('.tillline')].map(s => [s.dataset.till, s.innerText.trim()]),
  cells: Object.fromEntries([...tr.cells].map(td => [td.dataset.col,
    {text: td.innerText.trim(), value: td.dataset.value ?? null, status: td.dataset.status ?? null}]))
}));"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_fifty_stores_as_the_api_does() {
    let Some(lib) = libfaketime() else {
        require_tool("libfaketime (Debian package `faketime`)", false);
        return;
    };
    let Some(browser) = Browser::start().await else { return };
    let root = tempfile::tempdir().unwrap();
    let hub_dir = root.path().join("hub");
    let clock = root.path().join("hub-clock");
    set_clock(&clock, 0);
    let mut cmd = hub_command(&hub_dir, "127.0.0.1:0", None, TOKEN);
    cmd.args(["--stale-after-s", "600", "--offline-after-s", "1200", "--alert-offline-after-s", "3600"])
        .args(["--forecast-window-s", "600"])
        .env("LD_PRELOAD", &lib)
        .env("FAKETIME_TIMESTAMP_FILE", &clock)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    let hub_proc = Running::start(cmd, &hub_dir.join("hub.log"));
    let hub = Hub { url: hub_proc.url.clone(), c: client() };
    let id = |i: usize| format!("S{i:02}");

    // Minute 0. S01-S10 send 5 sales and are never heard from again. S21-S23 only get codes; S24-S25 enrol and
    // never upload. S48 and S49 are real agents.
    let mut tills: BTreeMap<String, Till> = BTreeMap::new();
    for i in (1..=20).chain(24..=47).chain([50]) {
        let (n, bad): (u64, &[u64]) = match i {
            26..=30 => (600 + 100 * (i as u64 - 26) + 20, &[]),
            31..=33 => (700, &[]),
            35 | 36 => (12, &[4, 9]),
            _ => (5, &[]),
        };
        tills.insert(id(i), hub.till(&id(i), "T1", n, bad).await);
    }
    let revoked = hub.till("S47", "T2", 5, &[]).await;
    hub.admin(reqwest::Method::POST, "/v1/admin/revoke", Some(json!({"store": "S47", "till": "T2"}))).await;
    drop(revoked);
    for i in 21..=23 {
        hub.code(&id(i), "T1").await;
    }
    for i in 1..=10 {
        hub.upload_ok(&tills[&id(i)], 1, 5, 5).await;
    }
    let c = client();
    let mut agents = Vec::new();
    for store in ["S48", "S49"] {
        let dir = root.path().join(store);
        enroll(&dir, &hub_dir, &hub.url, store, "T1", None);
        let agent = start_agent_with(&dir, None, None);
        sell(c.clone(), agent.url.clone(), 3).await;
        agents.push(agent);
    }

    // Minute 110: S19-S20 are heard from (offline at the end, but not long enough to alert).
    set_clock(&clock, 110);
    for i in 19..=20 {
        hub.upload_ok(&tills[&id(i)], 1, 5, 5).await;
    }
    // Minute 118: S11-S18 (stale at the end).
    set_clock(&clock, 118);
    for i in 11..=18 {
        hub.upload_ok(&tills[&id(i)], 1, 5, 5).await;
    }
    // Minutes 124, 127, 130: S26-S30 drain a backlog while selling a little; S31-S33 sell faster than they send.
    let growing = [(300, 100), (500, 200), (700, 300)];
    for (round, minute) in [124, 127, 130].into_iter().enumerate() {
        set_clock(&clock, minute);
        for i in 26..=30 {
            let n = 600 + 100 * (i as u64 - 26);
            let (from, through) = [(1, 100), (101, 300), (301, 500)][round];
            hub.upload_ok(&tills[&id(i)], from, through, n + 10 * round as u64).await;
        }
        for i in 31..=33 {
            let (reported, through) = growing[round];
            let from = if round == 0 { 1 } else { growing[round - 1].1 + 1 };
            hub.upload_ok(&tills[&id(i)], from, through, reported).await;
        }
    }
    // Minute 130, the end: everyone else is online.
    let s34 = &tills["S34"];
    hub.upload_ok(s34, 1, 3, 5).await;
    let mut forged = s34.events[3..5].to_vec();
    forged[0].prev_hash = "0".repeat(64);
    let broken = Till { events: forged, ..clone_till(s34) };
    let (status, v) = hub.upload(&broken, 4, 5, 5).await;
    assert_eq!((status, v["error"].as_str()), (422, Some("chain_broken")), "{v}");
    for i in [35, 36] {
        let (status, v) = hub.upload(&tills[&id(i)], 1, 12, 12).await;
        assert_eq!((status, &v["quarantined"]), (200, &json!([4, 9])), "{v}");
    }
    for i in (37..=47).chain([50]) {
        hub.upload_ok(&tills[&id(i)], 1, 5, 5).await;
    }
    for agent in &agents {
        let s = sync_now(&c, &agent.url).await;
        assert_eq!(s["unsynced"].as_u64(), Some(0), "{s}");
    }
    // S50's document: a price book (one change scheduled) and stock.
    hub.admin(
        reqwest::Method::PUT,
        "/v1/admin/prices",
        Some(json!({"stores": ["S50"], "prices": [
            {"sku": "SKU-1", "price_minor": 1299, "currency": "EUR"},
            {"sku": "SKU-2", "price_minor": 450, "currency": "EUR"},
            {"sku": "SKU-2", "price_minor": 399, "currency": "EUR", "effective_from": "2030-01-01T00:00:00+00:00"},
        ]})),
    )
    .await;
    let movements = json!({"store": "S50", "movements": [{"sku": "SKU-1", "delta": 40, "reason": "receipt"}]});
    hub.admin(reqwest::Method::POST, "/v1/admin/stock", Some(movements)).await;

    let fleet = hub.get("/v1/admin/fleet").await;
    let summary = &fleet["summary"];
    // The scenario is what it says, independently of the page.
    let by_store: BTreeMap<&str, &Value> =
        fleet["stores"].as_array().unwrap().iter().map(|s| (s["store"].as_str().unwrap(), s)).collect();
    assert_eq!(by_store.len(), 50);
    let states = |range: std::ops::RangeInclusive<usize>| -> Vec<String> {
        range.map(|i| by_store[id(i).as_str()]["state"].as_str().unwrap().to_owned()).collect()
    };
    assert!(states(1..=10).iter().all(|s| s == "offline"), "{:?}", states(1..=10));
    assert!(states(11..=18).iter().all(|s| s == "stale"), "{:?}", states(11..=18));
    assert!(states(19..=20).iter().all(|s| s == "offline"));
    assert!(states(21..=25).iter().all(|s| s == "never_seen"));
    assert!(states(26..=50).iter().all(|s| s == "online"), "{:?}", states(26..=50));
    assert_eq!(
        (
            summary["online"].as_u64(),
            summary["stale"].as_u64(),
            summary["offline"].as_u64(),
            summary["never_seen"].as_u64()
        ),
        (Some(25), Some(8), Some(12), Some(5))
    );
    // S26: 600 journaled at minute 124 with 100 sent (500 waiting), 620 at 130 with 500 sent (120): 380 fewer
    // in 360 s, so 120 drain in ceil(120 * 360 / 380) = 114 s.
    let s26 = &by_store["S26"]["forecast"];
    assert_eq!((s26["status"].as_str(), s26["eta_s"].as_u64()), (Some("draining"), Some(114)), "{s26}");
    assert_eq!(by_store["S33"]["forecast"]["status"], "growing");
    assert_eq!(by_store["S05"]["forecast"]["status"], "drained");
    let alerts: Vec<(String, String)> = fleet["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["kind"].as_str().unwrap().to_owned(), a["store"].as_str().unwrap().to_owned()))
        .collect();
    let count = |k: &str| alerts.iter().filter(|(kind, _)| kind == k).count();
    assert_eq!(
        (count("chain_broken"), count("offline"), count("backlog_growing"), count("quarantined")),
        (1, 10, 3, 2),
        "{alerts:?}"
    );
    assert!(by_store["S50"]["doc_bytes"].as_u64().unwrap() > 0);

    // Without the token the page shows nothing; a wrong token is refused.
    browser.goto(&format!("{}/", hub.url)).await;
    assert!(browser.shown("#login").await);
    assert!(!browser.shown("#fleet").await);
    assert!(browser.find_all("#stores tbody tr").await.is_empty());
    browser.type_into("#token", "not-the-token").await;
    browser.click("#sign-in").await;
    browser.wait_text("#login-error", |t| t == "The hub refused that token.").await;
    assert!(!browser.shown("#fleet").await);

    browser.type_into("#token", TOKEN).await;
    browser.click("#sign-in").await;
    browser.wait_text("#count-stores", |t| t == "50").await;

    // The counts.
    for (css, key) in [
        ("#count-stores", "stores"),
        ("#count-online", "online"),
        ("#count-stale", "stale"),
        ("#count-offline", "offline"),
        ("#count-never", "never_seen"),
        ("#count-backlog", "backlog"),
        ("#count-alerts", "alerts"),
    ] {
        assert_eq!(digits(&browser.text(css).await), summary[key].to_string(), "{css}");
    }
    // Every store row.
    let rows = browser.eval(READ_TABLE).await;
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 50);
    for row in rows {
        let store = row["store"].as_str().unwrap();
        let api = by_store[store];
        let cell = |col: &str| &row["cells"][col];
        assert_eq!(cell("state")["text"], state_text(api["state"].as_str().unwrap()), "{store}");
        assert_eq!(cell("backlog")["value"], api["backlog"].to_string(), "{store}");
        let live: Vec<&Value> = api["tills"].as_array().unwrap().iter().filter(|t| t["revoked"] == false).collect();
        let lines: Vec<(String, String)> = live
            .iter()
            .map(|t| {
                (t["till"].as_str().unwrap().to_owned(), format!("{}: {}", t["till"].as_str().unwrap(), t["backlog"]))
            })
            .collect();
        let shown: Vec<(String, String)> = serde_json::from_value(row["tills"].clone()).unwrap();
        assert_eq!(shown.iter().map(|(t, l)| (t.clone(), l.replace(',', ""))).collect::<Vec<_>>(), lines, "{store}");
        assert_eq!(cell("last_seen")["value"], api["last_seen"].as_str().unwrap_or(""), "{store}");
        assert_eq!(cell("forecast")["status"], api["forecast"]["status"], "{store}");
        assert_eq!(cell("forecast")["text"], forecast_text(&api["forecast"]), "{store}");
        assert_eq!(cell("chain")["text"], if api["chain_ok"] == true { "ok" } else { "broken" }, "{store}");
        assert_eq!(cell("last_error")["text"], api["last_error"].as_str().unwrap_or(""), "{store}");
        let versions: Vec<&str> = api["versions"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let versions = if versions.is_empty() { "–".to_owned() } else { versions.join(", ") };
        assert_eq!(cell("version")["text"], versions, "{store}");
        assert_eq!(cell("doc")["value"], api["doc_bytes"].to_string(), "{store}");
        assert_eq!(cell("oldest")["value"], api["oldest_unsynced_at"].as_str().unwrap_or(""), "{store}");
    }
    // The alerts, in the API's order.
    let shown: Vec<(String, String)> = serde_json::from_value(
        browser.eval("return [...document.querySelectorAll('#alerts li[data-kind]')].map(li => [li.dataset.kind, li.dataset.store]);").await,
    )
    .unwrap();
    assert_eq!(shown, alerts);

    // Filters: offline stores whose id has "S0"; then only those with alerts.
    browser.click("#filter-state option[value=offline]").await;
    let want = by_store.values().filter(|s| s["state"] == "offline").count();
    browser.wait_text("#shown", |t| t == format!("showing {want} of 50")).await;
    browser.type_into("#filter-text", "s0").await;
    let want: Vec<&str> =
        by_store.iter().filter(|(k, s)| s["state"] == "offline" && k.contains("S0")).map(|(k, _)| *k).collect();
    browser.wait_text("#shown", |t| t == format!("showing {} of 50", want.len())).await;
    let listed: Vec<String> = serde_json::from_value(
        browser.eval("return [...document.querySelectorAll('#stores tbody tr')].map(tr => tr.dataset.store);").await,
    )
    .unwrap();
    assert_eq!(listed, want);
    browser.type_into("#filter-text", "").await;
    browser.click("#filter-state option[value='']").await;
    browser.click("#filter-alerts").await;
    let with_alerts = by_store.values().filter(|s| s["alerts"].as_u64() > Some(0)).count();
    browser.wait_text("#shown", |t| t == format!("showing {with_alerts} of 50")).await;
    browser.click("#filter-alerts").await;
    browser.wait_text("#shown", |t| t == "showing 50 of 50").await;

    // Sorting by backlog: largest first, then smallest first (ties by store id).
    let mut by_backlog: Vec<(u64, &str)> = by_store.iter().map(|(k, s)| (s["backlog"].as_u64().unwrap(), *k)).collect();
    by_backlog.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    browser.click("th[data-sort=backlog]").await;
    assert_eq!(
        browser.find("#stores tbody tr").await.attr("data-store").await.unwrap().as_deref(),
        Some(by_backlog[0].1)
    );
    let shot = browser.screenshot("dashboard-fleet.png").await;
    browser.click("th[data-sort=backlog]").await;
    let smallest = by_backlog.iter().filter(|(b, _)| *b == by_backlog.last().unwrap().0).map(|(_, s)| *s).min();
    assert_eq!(browser.find("#stores tbody tr").await.attr("data-store").await.unwrap().as_deref(), smallest);

    // A store's page: tills, forecast and rates, recent events, stock lookup, price book.
    browser.click("#stores a[href='#/store/S26']").await;
    browser.wait_text("#store-title", |t| t == "Store S26").await;
    let detail = hub.get("/v1/admin/fleet/stores/S26").await;
    let t1 = &detail["store"]["tills"][0];
    assert_eq!(browser.text("#tills tr[data-till=T1] td[data-col=backlog]").await, t1["backlog"].to_string());
    assert_eq!(browser.text("#tills tr[data-till=T1] td[data-col=forecast]").await, forecast_text(&t1["forecast"]));
    let row = browser.text("#tills tr[data-till=T1]").await;
    assert!(row.contains(&format!("{}/s", t1["forecast"]["upload_rate_eps"])), "{row} / {t1}");

    browser.goto(&format!("{}/#/store/S50", hub.url)).await;
    browser.wait_text("#store-title", |t| t == "Store S50").await;
    let detail = hub.get("/v1/admin/fleet/stores/S50").await;
    let events: Vec<String> = serde_json::from_value(
        browser
            .eval("return [...document.querySelectorAll('#events tr[data-event]')].map(tr => tr.dataset.event);")
            .await,
    )
    .unwrap();
    let want: Vec<String> = detail["recent_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, want);
    assert_eq!(events.len(), 5);
    assert_eq!(events[0], tills["S50"].events[4].event_id.to_string(), "newest first");
    browser.type_into("#sku", "SKU-1").await;
    browser.click("#lookup").await;
    // The receipt alone: scripted tills upload journals but do not sync the store document.
    let on_hand = hub.get("/v1/admin/stores/S50/stock/SKU-1").await["on_hand"].clone();
    assert_eq!(on_hand, json!(40));
    browser.wait_text("#stock-result", |t| t == "40 on hand of SKU-1 at the hub").await;
    let book = hub.get("/v1/admin/stores/S50/prices").await;
    let shown: Vec<(String, String)> = serde_json::from_value(
        browser.eval("return [...document.querySelectorAll('#prices tr[data-sku]')].map(tr => [tr.dataset.sku, tr.querySelector('[data-col=price]').dataset.value]);").await,
    )
    .unwrap();
    let want: Vec<(String, String)> = book["prices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["sku"].as_str().unwrap().to_owned(), p["price_minor"].to_string()))
        .collect();
    assert_eq!(shown, want);
    assert_eq!(want, vec![("SKU-1".to_owned(), "1299".to_owned()), ("SKU-2".to_owned(), "450".to_owned())]);
    assert_eq!(book["prices"][1]["next"]["price_minor"], 399);
    let detail_shot = browser.screenshot("dashboard-store.png").await;

    // Signing out clears what was shown.
    browser.click("#sign-out").await;
    browser.wait_text("#login h2", |t| t == "Sign in").await;
    assert!(browser.shown("#login").await);
    assert!(browser.find_all("#stores tbody tr").await.is_empty());
    println!(
        "dashboard: 50 stores checked against the API; screenshots {} and {}",
        shot.display(),
        detail_shot.display()
    );
    browser.close().await;
    for a in agents {
        a.stop();
    }
    hub_proc.stop();
}

fn clone_till(t: &Till) -> Till {
    Till {
        store: t.store.clone(),
        till: t.till.clone(),
        credential: t.credential.clone(),
        journal_id: t.journal_id,
        events: Vec::new(),
    }
}
