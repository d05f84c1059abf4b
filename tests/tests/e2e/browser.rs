//! A real browser for the web-page tests: Debian's headless Chromium driven over WebDriver (`chromedriver`) with
//! fantoccini. Screenshots go to `target/test-artifacts/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use storesync_tests::proc::require_tool;

/// How long a page may take to show what a test waits for. A bound on waiting, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(30);

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).flat_map(|d| names.iter().map(move |n| d.join(n))).find(|p| p.is_file())
}

/// Where the browser tests keep their screenshots.
pub(crate) fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A headless Chromium session; `close` ends it and its chromedriver.
pub(crate) struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session, or answers `None` (after [`require_tool`]: skipped, or
    /// a failure under `STORESYNC_REQUIRE_ALL=1`) when either is missing.
    pub(crate) async fn start() -> Option<Browser> {
        let chromium = on_path(&["chromium", "chromium-browser"]);
        let driver = on_path(&["chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            require_tool(
                "Chromium and chromedriver (Debian's `chromium` and `chromium-driver`; .ci/run installs them)",
                false,
            );
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = artifacts().join(format!("chromedriver-{port}.log"));
        let mut driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--hide-scrollbars", "--no-first-run", "--window-size=1400,1000",
                         format!("--user-data-dir={}", profile.path().display())],
            }
        });
        let serde_json::Value::Object(caps) = caps else { unreachable!() };
        let url = format!("http://127.0.0.1:{port}");
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let client = loop {
            match ClientBuilder::new(connector.clone()).capabilities(caps.clone()).connect(&url).await {
                Ok(c) => break c,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    if let Ok(Some(status)) = driver.try_wait() {
                        panic!("chromedriver exited ({status}); its log is {}", log.display());
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    let _ = driver.kill();
                    panic!("no WebDriver session from chromedriver on {url}: {e}; its log is {}", log.display());
                }
            }
        };
        Some(Browser { client, driver, _profile: profile })
    }

    pub(crate) async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("loading {url}: {e}"));
    }

    /// The element at `css`, once it exists.
    pub(crate) async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
    }

    /// Every element at `css` now.
    pub(crate) async fn find_all(&self, css: &str) -> Vec<fantoccini::elements::Element> {
        self.client.find_all(Locator::Css(css)).await.unwrap_or_else(|e| panic!("finding {css}: {e}"))
    }

    /// The visible text of the element at `css`.
    pub(crate) async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap_or_else(|e| panic!("text of {css}: {e}")).trim().to_owned()
    }

    /// Waits until `ok` holds for the text at `css`, and answers that text; panics with the last text seen.
    pub(crate) async fn wait_text(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let text = match self.client.find(Locator::Css(css)).await {
                Ok(e) => e.text().await.unwrap_or_default().trim().to_owned(),
                Err(_) => String::new(),
            };
            if ok(&text) {
                return text;
            }
            assert!(tokio::time::Instant::now() < deadline, "{css} never showed what was expected; last: {text:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the element at `css` is displayed.
    pub(crate) async fn shown(&self, css: &str) -> bool {
        self.find(css).await.is_displayed().await.unwrap_or(false)
    }

    /// Types `text` into the input at `css`.
    pub(crate) async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap_or_else(|err| panic!("typing into {css}: {err}"));
    }

    pub(crate) async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap_or_else(|e| panic!("clicking {css}: {e}"));
    }

    /// Runs `script` in the page and answers its result.
    pub(crate) async fn eval(&self, script: &str) -> serde_json::Value {
        self.client.execute(script, vec![]).await.unwrap_or_else(|e| panic!("running {script}: {e}"))
    }

    /// Saves a PNG of the window as `target/test-artifacts/<name>` and answers its path.
    pub(crate) async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        assert!(png.len() > 1000 && png.starts_with(b"\x89PNG"), "not a screenshot");
        let path = artifacts().join(name);
        std::fs::write(&path, png).unwrap();
        path
    }

    pub(crate) async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}
