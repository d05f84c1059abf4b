//! `storesync-agent enroll`: exchange a one-time code for this till's credential.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use storesync_agent::config::Config;
use storesync_agent::credential;

pub(super) fn enroll(config: &Config, hub: &str, code: &str, ca_cert: Option<&Path>) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let cred = rt.block_on(credential::enroll(&config.data_dir, hub, code, ca_cert))?;
    println!("enrolled as store {} till {} with hub {}", cred.store_id, cred.till_id, cred.hub_url);
    Ok(ExitCode::SUCCESS)
}
