//! The till's credential: what `storesync-agent enroll` got from the hub, kept in the data dir with mode 0600.
//!
//! `<data-dir>/credential.json` holds the hub URL, the store and till ids the hub bound to the credential, and the
//! secret itself. `<data-dir>/hub-ca.pem`, when present, is the CA the hub's certificate must chain to (copied from
//! `--ca-cert` at enrolment). The file is written to a temp name, fsynced and renamed, so a crash leaves either the
//! old credential or the new one.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use storesync_shared::wire::{EnrollRequest, EnrollResponse, ErrorBody};

pub const CREDENTIAL_FILE: &str = "credential.json";
pub const CA_FILE: &str = "hub-ca.pem";

/// A till credential.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub hub_url: String,
    pub store_id: String,
    pub till_id: String,
    pub credential: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("hub_url", &self.hub_url)
            .field("store_id", &self.store_id)
            .field("till_id", &self.till_id)
            .finish_non_exhaustive()
    }
}

pub fn credential_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CREDENTIAL_FILE)
}

/// Reads the credential, if the till is enrolled.
pub fn load(data_dir: &Path) -> anyhow::Result<Option<Credential>> {
    let path = credential_path(data_dir);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes `bytes` to `path` with mode 0600, atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Builds the HTTP client for the hub: rustls, the enrolment CA if there is one, bounded timeouts.
pub fn http_client(data_dir: &Path, timeout: std::time::Duration) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(timeout)
        .user_agent(format!("storesync-agent/{}", crate::version::VERSION))
        .tcp_nodelay(true);
    let ca = data_dir.join(CA_FILE);
    if ca.exists() {
        let pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).context("parsing the hub CA certificate")?);
    }
    b.build().context("building the HTTP client")
}

/// `storesync-agent enroll`: exchanges a one-time code for this till's credential.
///
/// Refuses when the journal in `data_dir` already belongs to another store or till: the credential would name a
/// different identity than the events already journaled.
pub async fn enroll(data_dir: &Path, hub_url: &str, code: &str, ca_cert: Option<&Path>) -> anyhow::Result<Credential> {
    let hub_url = hub_url.trim_end_matches('/').to_owned();
    if !(hub_url.starts_with("http://") || hub_url.starts_with("https://")) {
        bail!("--hub {hub_url:?} must be an http:// or https:// URL");
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let pem = match ca_cert {
        Some(p) => {
            let pem = std::fs::read(p).with_context(|| format!("reading --ca-cert {}", p.display()))?;
            reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("--ca-cert {} is not a PEM certificate", p.display()))?;
            Some(pem)
        }
        None => None,
    };
    let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
    if let Some(pem) = &pem {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(pem)?);
    }
    let client = b.build()?;
    let req = EnrollRequest { code: code.trim().to_owned(), agent_version: crate::version::VERSION.to_owned() };
    let resp = client
        .post(format!("{hub_url}/v1/enroll"))
        .json(&req)
        .send()
        .await
        .with_context(|| format!("reaching the hub at {hub_url}"))?;
    let status = resp.status();
    if !status.is_success() {
        let body: Option<ErrorBody> = resp.json().await.ok();
        match body {
            Some(e) => bail!("the hub refused the code ({status}): {}: {}", e.error, e.detail),
            None => bail!("the hub refused the code ({status})"),
        }
    }
    let got: EnrollResponse = resp.json().await.context("reading the hub's enrolment answer")?;
    let db = data_dir.join(crate::journal::DB_FILE);
    if db.exists() {
        let (_, identity) = crate::journal::open_read_only(&db)?;
        if identity.store_id != got.store_id || identity.till_id != got.till_id {
            bail!(
                "this data dir's journal belongs to store {} till {}, but the code enrols store {} till {}; \
                 nothing was saved",
                identity.store_id,
                identity.till_id,
                got.store_id,
                got.till_id
            );
        }
    }
    if let Some(pem) = &pem {
        write_private(&data_dir.join(CA_FILE), pem)?;
    }
    let cred = Credential { hub_url, store_id: got.store_id, till_id: got.till_id, credential: got.credential };
    write_private(&credential_path(data_dir), &serde_json::to_vec_pretty(&cred)?)?;
    Ok(cred)
}
