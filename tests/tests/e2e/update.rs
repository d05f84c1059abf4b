//! Self-update end to end, with four real builds of the agent: this workspace's (0.1.0, playing the packaged
//! binary), a 0.2.0, a 0.3.0 that fails its health check and a 0.4.0 that crashes before confirming, the last
//! three built here with `STORESYNC_VERSION_OVERRIDE` and `STORESYNC_BUILD_FAULT`. Releases are signed with `storesync-hub release keygen|sign` and published to a
//! real hub, which rolls them out; a till sells throughout, retrying each sale (same event id) while its agent
//! restarts.
//!
//! Two refusals need a hub that offers what an honest hub never would (a release for another target, an older
//! version): a small hostile server stands in for a compromised hub, reached by rewriting the till's credential
//! file to point at it, as a hijacked DNS name would.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use storesync_shared::release::{self, MANIFEST_SCHEMA, ReleaseManifest};
use storesync_tests::proc::{Running, bin, isolate, start_hub};
use storesync_tests::sales::sale;
use uuid::Uuid;

use crate::util::{TOKEN, check_exactly_once, client, enroll, get_json, hub_client, journal, status, wait_for_events};

/// Builds the agent with `env` into its own target dir (dependencies built once, unoptimised, no debug info,
/// since these builds only have to run) and copies the binary to `out`. `.ci/run` makes the same builds in
/// advance, with the same flags, so that here they are already fresh: keep the two in step.
fn build_agent(env: &[(&str, &str)], out: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = root.join("target").join("update-e2e");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "-q", "-p", "storesync-agent", "--bin", "storesync-agent"])
        .args(["--config", "profile.dev.package.\"*\".opt-level=0"])
        .args(["--config", "profile.dev.opt-level=0", "--config", "profile.dev.debug=false"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("STORESYNC_VERSION_OVERRIDE")
        .env_remove("STORESYNC_BUILD_FAULT")
        .env_remove("STORESYNC_UPDATE_KEYS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd.status().expect("running cargo");
    assert!(status.success(), "building the agent with {env:?} failed");
    std::fs::copy(target_dir.join("debug").join("storesync-agent"), out).expect("copying the built agent");
}

pub(crate) fn hub_cli(args: &[&str], dir: &Path) -> String {
    let mut cmd = Command::new(bin("storesync-hub"));
    cmd.args(args);
    isolate(&mut cmd, dir);
    let out = cmd.output().expect("running storesync-hub");
    assert!(out.status.success(), "storesync-hub {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A release as files: the signed archive, `manifest.json` and `manifest.sig`.
pub(crate) struct Published {
    archive: Vec<u8>,
    manifest: Vec<u8>,
    signature: Option<String>,
}

/// `storesync-hub release sign` for `binary` as `version` for this agent's target.
fn sign(dir: &Path, key: &Path, binary: &Path, version: &str) -> Published {
    sign_for(dir, key, binary, version, storesync_agent::update::TARGET)
}

/// `storesync-hub release sign` for `binary` as `version` for `target`.
pub(crate) fn sign_for(dir: &Path, key: &Path, binary: &Path, version: &str, target: &str) -> Published {
    let out = dir.join(format!("release-{version}"));
    hub_cli(
        &[
            "release",
            "sign",
            "--key",
            key.to_str().unwrap(),
            "--binary",
            binary.to_str().unwrap(),
            "--version",
            version,
            "--target",
            target,
            "--out",
            out.to_str().unwrap(),
        ],
        dir,
    );
    let name = release::archive_name(version, target);
    Published {
        archive: std::fs::read(out.join(name)).unwrap(),
        manifest: std::fs::read(out.join("manifest.json")).unwrap(),
        signature: Some(std::fs::read_to_string(out.join("manifest.sig")).unwrap()),
    }
}

/// A manifest for `archive` made by hand: `edit` changes it before it is signed with `key` (if any).
fn forge(archive: &[u8], key: Option<&str>, edit: impl FnOnce(&mut ReleaseManifest)) -> Published {
    let mut m = ReleaseManifest {
        schema: MANIFEST_SCHEMA,
        version: "0.0.0".into(),
        target: storesync_agent::update::TARGET.into(),
        min_version: "0.0.0".into(),
        expires_at: (time::OffsetDateTime::now_utc() + time::Duration::days(30))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap(),
        archive_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(archive)),
        archive_size: archive.len() as u64,
    };
    edit(&mut m);
    let bytes = serde_json::to_vec(&m).unwrap();
    let signature = key.map(|k| release::sign_manifest(&release::parse_signing_key(k).unwrap(), &bytes));
    Published { archive: archive.to_vec(), manifest: bytes, signature }
}

pub(crate) async fn publish(c: &reqwest::Client, hub: &str, p: &Published) {
    let mut form = reqwest::multipart::Form::new()
        .part("manifest", reqwest::multipart::Part::bytes(p.manifest.clone()).file_name("manifest.json"))
        .part("archive", reqwest::multipart::Part::bytes(p.archive.clone()).file_name("archive.tar.gz"));
    if let Some(s) = &p.signature {
        form = form.text("signature", s.clone());
    }
    let r = c.post(format!("{hub}/v1/admin/releases")).bearer_auth(TOKEN).multipart(form).send().await.unwrap();
    let status = r.status();
    assert!(status.is_success(), "publishing: {status} {}", r.text().await.unwrap());
}

async fn roll_out(c: &reqwest::Client, hub: &str, version: &str) {
    roll_out_for(c, hub, version, storesync_agent::update::TARGET).await;
}

/// Starts a rollout of `version` for `target` to every store (canary 100 %).
pub(crate) async fn roll_out_for(c: &reqwest::Client, hub: &str, version: &str, target: &str) {
    let body = json!({"version": version, "target": target, "canary_percent": 100});
    let r = c.post(format!("{hub}/v1/admin/rollouts")).bearer_auth(TOKEN).json(&body).send().await.unwrap();
    let status = r.status();
    assert!(status.is_success(), "rollout of {version}: {status} {}", r.text().await.unwrap());
}

pub(crate) async fn check_now(c: &reqwest::Client, agent: &str) -> Value {
    let r = c.post(format!("{agent}/v1/update/check")).send().await.unwrap();
    assert!(r.status().is_success(), "update check: {}", r.status());
    r.json().await.unwrap()
}

/// Waits until the agent at `url` answers with `version` and no trial in progress.
async fn wait_for_version(c: &reqwest::Client, url: &str, version: &str, agent: &mut Running) -> Value {
    for _ in 0..600 {
        if let Ok(Some(exit)) = agent.child.try_wait() {
            panic!("the agent exited ({exit}); log:\n{}", storesync_tests::proc::tail(&agent.log));
        }
        if let Ok(r) = c.get(format!("{url}/v1/status")).send().await
            && let Ok(v) = r.json::<Value>().await
            && v["version"] == version
            && v["update"]["trial"].is_null()
        {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the agent never ran {version} healthy; log:\n{}", storesync_tests::proc::tail(&agent.log));
}

/// Starts the packaged binary `a` as the service would, on a fixed port.
fn start_packaged(a: &Path, port: u16, data: &Path, config: &Path) -> Running {
    let mut cmd = Command::new(a);
    cmd.args(["run", "--listen", &format!("127.0.0.1:{port}")]).arg("--data-dir").arg(data).arg("--config").arg(config);
    isolate(&mut cmd, data);
    Running::start(cmd, &data.join("agent.log"))
}

/// Waits until the hub has halted the rollout of `version`.
pub(crate) async fn wait_for_halt(hc: &reqwest::Client, hub: &str, version: &str) {
    let mut stage = Value::Null;
    for _ in 0..300 {
        let v = get_json(hc, format!("{hub}/v1/admin/rollouts"), TOKEN).await;
        let rollouts = v["rollouts"].as_array().unwrap();
        stage = rollouts.iter().find(|r| r["version"] == version).map(|r| r["stage"].clone()).unwrap_or_default();
        if stage == "halted" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the rollout of {version} is {stage}, not halted, after the canary's rollback");
}

/// A stand-in for a compromised hub: offers one canned release to whoever asks.
async fn hostile_hub(offer: Value) -> (String, tokio::task::JoinHandle<()>) {
    use axum::routing::{get, post};
    let app = axum::Router::new()
        .route("/v1/sync/update", get(move || async move { axum::Json(offer.clone()) }))
        .route("/v1/sync/update/report", post(|| async { axum::Json(json!({})) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (url, tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }))
}

/// Points the till's credential at another hub URL; answers the old one.
fn repoint(data: &Path, url: &str) -> String {
    let path = data.join("credential.json");
    let mut cred: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let old = cred["hub_url"].as_str().unwrap().to_owned();
    cred["hub_url"] = json!(url);
    std::fs::write(&path, serde_json::to_vec(&cred).unwrap()).unwrap();
    old
}

fn offer_of(p: &Published) -> Value {
    use base64::Engine;
    json!({
        "manifest": base64::engine::general_purpose::STANDARD.encode(&p.manifest),
        "signature": p.signature,
        "archive_path": "/nowhere",
        "ring": "all",
    })
}

/// Sells until told to stop, retrying a sale (same event id) through restarts; answers the acknowledged ids.
async fn sell_throughout(c: reqwest::Client, url: String, stop: Arc<AtomicBool>) -> BTreeSet<Uuid> {
    let mut acked = BTreeSet::new();
    while !stop.load(Ordering::SeqCst) {
        let id = Uuid::new_v4();
        loop {
            match c.post(format!("{url}/v1/sales")).json(&sale(id, "SKU-1", 1)).send().await {
                Ok(r) if r.status().is_success() => {
                    acked.insert(id);
                    break;
                }
                // Refused connections and drains while the agent restarts: the POS tries the same sale again.
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_updates_install_refuse_and_roll_back_while_the_till_sells() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // The builds: A is this workspace's agent, copied where a package would put it.
    let [a, b, c_bin, d_bin] = ["pkg", "b", "c", "d"].map(|d| root.join(d).join("storesync-agent"));
    for p in [&a, &b, &c_bin, &d_bin] {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    }
    std::fs::copy(bin("storesync-agent"), &a).unwrap();
    let (b2, c2, d2) = (b.clone(), c_bin.clone(), d_bin.clone());
    tokio::task::spawn_blocking(move || {
        build_agent(&[("STORESYNC_VERSION_OVERRIDE", "0.2.0")], &b2);
        build_agent(&[("STORESYNC_VERSION_OVERRIDE", "0.3.0"), ("STORESYNC_BUILD_FAULT", "unhealthy")], &c2);
        build_agent(&[("STORESYNC_VERSION_OVERRIDE", "0.4.0"), ("STORESYNC_BUILD_FAULT", "crash")], &d2);
    })
    .await
    .unwrap();
    let running = storesync_agent::update::VERSION;
    assert_eq!(running, "0.1.0", "the workspace agent is the old version here");

    // Keys: the chain's release key, and a stranger's.
    let keys = root.join("keys");
    let public = hub_cli(&["release", "keygen", "--out", keys.to_str().unwrap()], root);
    let public = public.lines().last().unwrap().trim().to_owned();
    let stranger = root.join("stranger");
    hub_cli(&["release", "keygen", "--out", stranger.to_str().unwrap()], root);
    let key_text = std::fs::read_to_string(keys.join("release.key")).unwrap();
    let stranger_text = std::fs::read_to_string(stranger.join("release.key")).unwrap();

    let hub_dir = root.join("hub");
    let hub = start_hub(&hub_dir, "127.0.0.1:0", None, TOKEN);
    let hc = hub_client(None);
    let data = root.join("till");
    enroll(&data, &hub_dir, &hub.url, "S-UPD", "T1", None);
    let config = root.join("agent.toml");
    std::fs::write(
        &config,
        format!("update_keys = [\"{public}\"]\nupdate_check_interval_s = 86400\nupdate_health_timeout_s = 20\n"),
    )
    .unwrap();
    // A fixed port: the POS keeps talking to the same address across restarts.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let start = || start_packaged(&a, port, &data, &config);
    let mut agent = start();
    let url = agent.url.clone();
    let pid = agent.child.id();
    let c = client();
    assert_eq!(status(&c, &url).await["update"]["enabled"], true);

    let stop = Arc::new(AtomicBool::new(false));
    let seller = tokio::spawn(sell_throughout(c.clone(), url.clone(), stop.clone()));

    // Refused through the real hub. The archive is B's, signed; the manifests around it are not all honest.
    let good_b = sign(root, &keys.join("release.key"), &b, "0.2.0");
    let mut flipped_archive = good_b.archive.clone();
    let mid = flipped_archive.len() / 2;
    flipped_archive[mid] ^= 0x01;
    let mut flipped = forge(&good_b.archive, Some(&key_text), |m| m.version = "0.5.2".into());
    let at = String::from_utf8_lossy(&flipped.manifest).find("\"min_version\":\"0.0.0\"").unwrap() + 19;
    flipped.manifest[at] ^= 0x01; // "0.0.0" becomes "0.0.1": still a manifest, no longer the signed one
    let cases = [
        ("unsigned", forge(&good_b.archive, None, |m| m.version = "0.5.0".into()), "unsigned"),
        ("wrong key", forge(&good_b.archive, Some(&stranger_text), |m| m.version = "0.5.1".into()), "bad_signature"),
        ("one flipped byte in the manifest", flipped, "bad_signature"),
        (
            "an expired manifest",
            forge(&good_b.archive, Some(&key_text), |m| {
                m.version = "0.5.3".into();
                m.expires_at = "2026-01-01T00:00:00Z".into();
            }),
            "expired",
        ),
        (
            "one flipped byte in the archive",
            forge(&flipped_archive, Some(&key_text), |m| m.version = "0.5.4".into()),
            "archive_signature",
        ),
    ];
    for (what, published, code) in &cases {
        let version = release::parse_manifest(&published.manifest).unwrap().version;
        publish(&hc, &hub.url, published).await;
        roll_out(&hc, &hub.url, &version).await;
        let got = check_now(&c, &url).await;
        assert_eq!(got["outcome"], "refused", "{what}: {got}");
        assert_eq!(got["reason"], *code, "{what}: {got}");
        let s = status(&c, &url).await;
        assert_eq!(s["version"], running, "{what}: the old agent keeps running");
    }
    // Refused from a compromised hub: an older version, and a build for another target, both properly signed.
    for (what, published, code) in [
        ("an older version", forge(&good_b.archive, Some(&key_text), |m| m.version = "0.0.9".into()), "not_newer"),
        (
            "the wrong target",
            forge(&good_b.archive, Some(&key_text), |m| {
                m.version = "0.6.0".into();
                m.target = "aarch64-unknown-linux-gnu".into();
            }),
            "wrong_target",
        ),
    ] {
        let (evil, server) = hostile_hub(offer_of(&published)).await;
        let honest = repoint(&data, &evil);
        let got = check_now(&c, &url).await;
        repoint(&data, &honest);
        server.abort();
        assert_eq!(got["outcome"], "refused", "{what}: {got}");
        assert_eq!(got["reason"], code, "{what}: {got}");
        assert_eq!(status(&c, &url).await["version"], running, "{what}: the old agent keeps running");
    }
    assert!(agent.child.try_wait().unwrap().is_none(), "the old agent is still the same process");

    // A good update: 0.2.0 is installed, restarts in place (same process, exec) and confirms its health.
    publish(&hc, &hub.url, &good_b).await;
    roll_out(&hc, &hub.url, "0.2.0").await;
    let got = check_now(&c, &url).await;
    assert_eq!(got["outcome"], "installing", "{got}");
    let s = wait_for_version(&c, &url, "0.2.0", &mut agent).await;
    assert_eq!(agent.child.id(), pid);
    assert_eq!(s["update"]["highest_seen"], "0.2.0");
    assert_eq!(s["update"]["previous"], running);

    // A bad update: 0.3.0 fails its health check and 0.2.0 comes back by itself; the hub halts the rollout.
    let bad_c = sign(root, &keys.join("release.key"), &c_bin, "0.3.0");
    publish(&hc, &hub.url, &bad_c).await;
    roll_out(&hc, &hub.url, "0.3.0").await;
    let got = check_now(&c, &url).await;
    assert_eq!(got["outcome"], "installing", "{got}");
    let mut rolled_back = Value::Null;
    for _ in 0..600 {
        let s = wait_for_version(&c, &url, "0.2.0", &mut agent).await;
        if s["update"]["rolled_back"].as_array().is_some_and(|r| r.iter().any(|v| v == "0.3.0")) {
            rolled_back = s;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!rolled_back.is_null(), "0.3.0 was never rolled back; log:\n{}", storesync_tests::proc::tail(&agent.log));
    let log = std::fs::read_to_string(&agent.log).unwrap();
    assert!(log.contains("failed its health check"), "the rollback is logged");
    wait_for_halt(&hc, &hub.url, "0.3.0").await;
    assert_eq!(check_now(&c, &url).await["outcome"], "up_to_date", "a halted rollout offers nothing");
    assert_eq!(agent.child.id(), pid);

    // A new version that crashes before confirming: the process dies; the service manager (here, the test, as
    // systemd's Restart=on-failure would) starts the packaged binary, which finds the dead trial and rolls back.
    let crash_d = sign(root, &keys.join("release.key"), &d_bin, "0.4.0");
    publish(&hc, &hub.url, &crash_d).await;
    roll_out(&hc, &hub.url, "0.4.0").await;
    let got = check_now(&c, &url).await;
    assert_eq!(got["outcome"], "installing", "{got}");
    let exit = agent.child.wait().unwrap();
    assert!(!exit.success(), "the crashing build dies: {exit}");
    agent = start();
    let s = wait_for_version(&c, &url, "0.2.0", &mut agent).await;
    assert!(s["update"]["rolled_back"].as_array().unwrap().iter().any(|v| v == "0.4.0"), "{s}");
    wait_for_halt(&hc, &hub.url, "0.4.0").await;

    // Every sale acknowledged through the restarts is in the journal once, and reaches the hub once.
    stop.store(true, Ordering::SeqCst);
    let acked = seller.await.unwrap();
    assert!(acked.len() >= 20, "the till sold throughout ({} sales)", acked.len());
    let events = journal(&c, &url).await;
    let ids: BTreeSet<Uuid> = events.iter().map(|e| e.event_id).collect();
    assert_eq!(events.len(), ids.len(), "no sale journaled twice");
    assert_eq!(ids, acked, "every acknowledged sale is in the journal");
    let _ = crate::util::sync_now(&c, &url).await;
    let at_hub = wait_for_events(&hc, &hub.url, acked.len(), Duration::from_secs(30)).await;
    let mut by_till = std::collections::BTreeMap::new();
    by_till.insert(("S-UPD".to_owned(), "T1".to_owned()), acked.clone());
    check_exactly_once(&at_hub, &by_till);
    let spread = get_json(&hc, format!("{}/v1/admin/rollouts", hub.url), TOKEN).await["version_spread"].clone();
    assert_eq!(spread, json!([{"version": "0.2.0", "tills": 1}]), "the fleet view shows the version that runs");
    eprintln!(
        "self-update: {} sales acknowledged through 6 restarts (install, install, rollback, install, crash, rollback), all journaled once and uploaded once; 7 refusals",
        acked.len()
    );
    agent.stop();
}
