//! `storesync-agent sync-now`: ask the running agent to sync now, show progress, and wait for the backlog to
//! drain. Exit 0 only when nothing is left unsynced and the round had no error.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use storesync_agent::config::Config;

pub(super) fn sync_now(config: &Config, wait_s: u64) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let client = reqwest::Client::new();
    let bar = progress_bar();
    let answer: anyhow::Result<serde_json::Value> = rt.block_on(async {
        tokio::select! {
            v = ask(&client, config.listen, wait_s) => v,
            never = show_progress(&client, config.listen, &bar) => match never {},
        }
    });
    bar.finish_and_clear();
    let v = answer?;
    println!("hub: {}  unsynced: {}  last sync: {}", v["hub"], v["unsynced"], v["last_sync_at"]);
    if let Some(e) = v["last_error"].as_str() {
        eprintln!("last error: {e}");
    }
    let ok = v["unsynced"].as_u64() == Some(0) && v["last_error"].is_null();
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `POST /v1/sync/now?wait_s=…` to the agent at `listen`: its status once the round is done, or its error.
async fn ask(client: &reqwest::Client, listen: SocketAddr, wait_s: u64) -> anyhow::Result<serde_json::Value> {
    let url = format!("http://{listen}/v1/sync/now?wait_s={wait_s}");
    let resp = client
        .post(&url)
        .timeout(Duration::from_secs(wait_s + 30))
        .send()
        .await
        .with_context(|| format!("reaching the running agent at {url} (is `storesync-agent run` up?)"))?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.context("reading the agent's answer")?;
    if !status.is_success() {
        anyhow::bail!("{}: {}", v["error"].as_str().unwrap_or("error"), v["detail"].as_str().unwrap_or(""));
    }
    Ok(v)
}

/// The progress bar: events sent, with rate and ETA, on stderr. indicatif draws nothing when stderr is not a
/// terminal, so scripts and tests see only the final lines.
fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(
        "syncing {bar:40.cyan/blue} {pos}/{len} events sent ({rate}, ETA {eta})",
    )
    .map(|s| {
        s.with_key("rate", |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0} events/s", state.per_sec());
        })
    })
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// Polls the agent's `GET /v1/status` every 250 ms and moves `bar`: its length is `unsynced` at the first answer,
/// its position how many fewer are unsynced since. A failed poll is skipped. Runs until it is dropped.
async fn show_progress(
    client: &reqwest::Client,
    listen: SocketAddr,
    bar: &indicatif::ProgressBar,
) -> std::convert::Infallible {
    let url = format!("http://{listen}/v1/status");
    let mut start = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let answer = client.get(&url).timeout(Duration::from_secs(2)).send().await;
        let status = match answer {
            Ok(resp) => resp.json::<serde_json::Value>().await.ok(),
            Err(_) => None,
        };
        let Some(unsynced) = status.and_then(|v| v["unsynced"].as_u64()) else { continue };
        let start = *start.get_or_insert_with(|| {
            bar.set_length(unsynced);
            bar.reset_eta();
            unsynced
        });
        bar.set_position(start.saturating_sub(unsynced));
    }
}
