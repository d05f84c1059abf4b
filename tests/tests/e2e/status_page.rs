//! The store staff's status page (issue #7) in a real browser: headless Chromium, driven over WebDriver, loads the
//! agent's `/` while head office is unreachable and again once it is back. What the page says is checked against
//! the agent's `/v1/status` (a file dropped into its inbox that it refuses included), and screenshots are kept in
//! `target/test-artifacts/`.

use storesync_tests::proc::{start_agent_with, start_hub};

use crate::browser::Browser;
use crate::util::{TOKEN, client, enroll, port_of, sell, status, sync_now};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_says_offline_then_online_in_a_real_browser() {
    let Some(browser) = Browser::start().await else { return };
    let root = tempfile::tempdir().unwrap();
    let hub_dir = root.path().join("hub");
    let hub = start_hub(&hub_dir, "127.0.0.1:0", None, TOKEN);
    let port = port_of(&hub.url);
    let data = root.path().join("till");
    enroll(&data, &hub_dir, &hub.url, "S-PAGE", "T1", None);
    hub.stop();
    let agent = start_agent_with(&data, None, None);
    let c = client();
    sell(c.clone(), agent.url.clone(), 5).await;
    let s = sync_now(&c, &agent.url).await;
    assert_eq!((s["hub"].as_str(), s["unsynced"].as_u64()), (Some("unreachable"), Some(5)), "{s}");

    // Offline: the page says since when, how many sales wait, and that they are saved.
    browser.goto(&format!("{}/", agent.url)).await;
    let headline = browser.wait_text("#headline", |t| t.starts_with("Offline since ")).await;
    assert!(headline.len() > "Offline since ".len(), "{headline}");
    assert_eq!(browser.text("#subline").await, "5 sales waiting to send, all saved. Keep selling.");
    assert_eq!(browser.text("#ids").await, "S-PAGE / T1");
    assert_eq!(browser.text("#saved").await, status(&c, &agent.url).await["journal_len"].to_string());
    assert_eq!(browser.text("#inbox").await, "nothing waiting");
    // A file the POS dropped that cannot be read: the page tells staff to call IT.
    std::fs::write(data.join("inbox").join("broken.jsonl"), "this is not json\n").unwrap();
    browser.wait_text("#inbox", |t| t == "nothing waiting; 1 file refused, tell IT").await;
    let offline = browser.screenshot("status-offline.png").await;

    // Head office is back on the same address: the page (which polls) says online and that everything is sent.
    let hub = start_hub(&hub_dir, &format!("127.0.0.1:{port}"), None, TOKEN);
    let s = sync_now(&c, &agent.url).await;
    assert_eq!((s["hub"].as_str(), s["unsynced"].as_u64()), (Some("reachable"), Some(0)), "{s}");
    browser.wait_text("#headline", |t| t == "Online").await;
    assert_eq!(browser.text("#subline").await, "Everything is sent to head office.");
    assert_eq!(browser.text("#waiting").await, "nothing");
    assert_ne!(browser.text("#last-sync").await, "never");
    let online = browser.screenshot("status-online.png").await;
    println!("status page: offline and online in Chromium; screenshots {} and {}", offline.display(), online.display());
    browser.close().await;
    hub.stop();
    agent.stop();
}
