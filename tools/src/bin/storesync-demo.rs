//! `storesync-demo`: storesync's main job in one command, on the embedded defaults.
//!
//! Starts a hub on embedded SQLite and one enrolled store agent in this process, prints the hub URL, the admin
//! token and the POS API URL, and runs until ctrl-c. Data lives in `./storesync-demo/` (hub and agent each in a
//! subfolder), so a second run picks up where the first stopped.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "Run a storesync hub and one enrolled store agent until ctrl-c")]
struct Args {
    /// Where the demo keeps its data.
    #[arg(long, default_value = "storesync-demo")]
    data_dir: PathBuf,
    /// The hub's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    hub_listen: SocketAddr,
    /// The agent's POS API address.
    #[arg(long, default_value = "127.0.0.1:7171")]
    pos_listen: SocketAddr,
    /// Store and till of the demo agent.
    #[arg(long, default_value = "S001")]
    store: String,
    #[arg(long, default_value = "T01")]
    till: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STORESYNC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let hub_dir = args.data_dir.join("hub");
    let agent_dir = args.data_dir.join("agent");
    let shutdown = CancellationToken::new();

    let mut hub_config = storesync_hub::Config::new(hub_dir.clone());
    hub_config.listen = args.hub_listen;
    let hub = storesync_hub::bind(hub_config).await.context("starting the hub")?;
    let hub_url = hub.url();
    let mut hub_task = tokio::spawn(hub.serve(shutdown.clone()));
    let token = std::fs::read_to_string(hub_dir.join("admin.token")).ok().map(|t| t.trim().to_owned());
    let token = std::env::var("STORESYNC_ADMIN_TOKEN").ok().or(token).context("reading the hub's admin token")?;

    if storesync_agent::credential::load(&agent_dir)?.is_none() {
        let client = reqwest::Client::new();
        let resp: serde_json::Value = client
            .post(format!("{hub_url}/v1/admin/enrollments"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"store": args.store, "till": args.till}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let code = resp["code"].as_str().context("enrolment code")?;
        storesync_agent::credential::enroll(&agent_dir, &hub_url, code, None).await?;
    }

    let agent_config = storesync_agent::config::Config::for_dir(&agent_dir, args.pos_listen);
    let mut agent_task = tokio::spawn(storesync_agent::run(agent_config, shutdown.clone()));
    println!();
    println!("storesync demo is running (ctrl-c to stop)");
    println!("  hub:          {hub_url}   admin token: {token}");
    println!("  POS API:      http://{}   (store {}, till {})", args.pos_listen, args.store, args.till);
    println!("  dashboard:    {hub_url}/   (sign in with the admin token)");
    println!("  status page:  http://{}/   (what the store staff see)", args.pos_listen);
    println!("  data:         {}", args.data_dir.display());
    println!();
    println!("try:");
    println!(
        "  curl -s -XPOST http://{}/v1/sales -H 'content-type: application/json' -d \
         '{{\"occurred_at\":\"2026-11-26T14:05:00+01:00\",\"currency\":\"EUR\",\"lines\":[{{\"sku\":\"COFFEE-1KG\",\"qty\":1,\"unit_price_minor\":1299,\"discount_minor\":0}}],\"payments\":[{{\"method\":\"card\",\"amount_minor\":1299}}]}}'",
        args.pos_listen
    );
    println!("  curl -s http://{}/v1/status", args.pos_listen);
    println!("  curl -s -H 'authorization: Bearer {token}' {hub_url}/v1/admin/stores");

    tokio::select! {
        () = storesync_agent::shutdown_signal() => {}
        r = &mut agent_task => return r.context("agent task")?.context("the agent stopped"),
        r = &mut hub_task => return r.context("hub task")?.context("the hub stopped"),
    }
    shutdown.cancel();
    agent_task.await.context("agent task")??;
    hub_task.await.context("hub task")??;
    Ok(())
}
