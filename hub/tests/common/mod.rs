//! What the hub's integration test files share: the library's hub served on 127.0.0.1:0 with a test clock and admin
//! token, and stopped cleanly.

use std::path::Path;
use std::sync::Arc;

use storesync_hub::{Config, ManualClock};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(crate) const ADMIN: &str = "test-admin-token";
pub(crate) const T0: i64 = 1_800_000_000;

/// A hub serving in this process.
pub(crate) struct Served {
    pub(crate) url: String,
    pub(crate) http: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Served {
    /// Serves a hub on `dir`, its clock at [`T0`] and its admin token [`ADMIN`]; `tweak` adjusts the rest.
    pub(crate) async fn start(dir: &Path, tweak: impl FnOnce(&mut Config)) -> Served {
        let mut config = Config::new(dir.to_owned());
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.admin_token = Some(ADMIN.into());
        config.clock = Arc::new(ManualClock::new(T0));
        tweak(&mut config);
        let server = storesync_hub::bind(config).await.unwrap();
        let url = server.url();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.serve(shutdown.clone()));
        Served { url, http: reqwest::Client::new(), shutdown, task: Some(task) }
    }

    /// Stops the hub and checks that it stopped cleanly.
    pub(crate) async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
