//! The store staff's status page (issue #7) in a real browser: Debian's headless Chromium loads the agent's `/`
//! while head office is unreachable and again once it is back. What the page says is checked against the agent's
//! `/v1/status`, and screenshots are kept in `target/test-artifacts/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use storesync_tests::proc::{require_tool, start_agent_with, start_hub};

use crate::util::{TOKEN, client, enroll, port_of, sell, status, sync_now};

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n))).find(|p| p.is_file())
}

/// Loads `url` in headless Chromium, lets its scripts run, saves a screenshot to `shot`, and answers the DOM.
fn load(chrome: &Path, url: &str, shot: &Path, profile: &Path) -> String {
    let run = |extra: &[String]| {
        let out = Command::new(chrome)
            .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"])
            .args(["--virtual-time-budget=5000", "--window-size=900,640"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(url)
            .output()
            .expect("running chromium");
        assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    run(&[format!("--screenshot={}", shot.display())]);
    assert!(std::fs::metadata(shot).is_ok_and(|m| m.len() > 1000), "no screenshot at {}", shot.display());
    run(&["--dump-dom".to_owned()])
}

/// The text of the element with `id` in a dumped DOM.
fn text_of(dom: &str, id: &str) -> String {
    let start = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in {dom}"));
    let open = start + dom[start..].find('>').unwrap() + 1;
    let close = open + dom[open..].find('<').unwrap();
    dom[open..close].replace("&amp;", "&").trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_says_offline_then_online_in_a_real_browser() {
    let Some(chrome) = chromium() else {
        require_tool("Chromium (Debian's `chromium`; .ci/run installs it)", false);
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
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
    let profile = root.path().join("chromium");
    let dom = load(&chrome, &format!("{}/", agent.url), &artifacts.join("status-offline.png"), &profile);
    let headline = text_of(&dom, "headline");
    assert!(headline.starts_with("Offline since "), "{headline}");
    assert_eq!(text_of(&dom, "subline"), "5 sales waiting to send, all saved. Keep selling.");
    assert_eq!(text_of(&dom, "ids"), "S-PAGE / T1");
    assert_eq!(text_of(&dom, "saved"), status(&c, &agent.url).await["journal_len"].to_string());

    // Head office is back on the same address: the page says online and that everything is sent.
    let hub = start_hub(&hub_dir, &format!("127.0.0.1:{port}"), None, TOKEN);
    let s = sync_now(&c, &agent.url).await;
    assert_eq!((s["hub"].as_str(), s["unsynced"].as_u64()), (Some("reachable"), Some(0)), "{s}");
    let dom = load(&chrome, &format!("{}/", agent.url), &artifacts.join("status-online.png"), &profile);
    assert_eq!(text_of(&dom, "headline"), "Online");
    assert_eq!(text_of(&dom, "subline"), "Everything is sent to head office.");
    assert_eq!(text_of(&dom, "waiting"), "nothing");
    assert_ne!(text_of(&dom, "last-sync"), "never");
    println!("status page: offline and online rendered by Chromium; screenshots in {}", artifacts.display());
    hub.stop();
    agent.stop();
}
