//! Agent releases and staged rollouts over real sockets: uploads, rollout stages, update offers by ring, archive
//! downloads, reports that halt a rollout, and the `release keygen|sign` CLI feeding a real hub.

mod common;

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{ADMIN, Served};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use sha2::Digest as _;
use storesync_hub::Config;
use storesync_shared::release::{
    MANIFEST_SCHEMA, ReleaseManifest, UpdateOffer, encode_verifying_key, sign_manifest, verify_manifest,
};

const LINUX: &str = "x86_64-unknown-linux-gnu";
/// Bucket 0: in the canary ring of any percentage above 0.
const CANARY_STORE: &str = "s17";
/// Bucket 93: outside a 10% canary ring.
const OTHER_STORE: &str = "S1";

struct Hub(Served);

impl std::ops::Deref for Hub {
    type Target = Served;
    fn deref(&self) -> &Served {
        &self.0
    }
}

impl Hub {
    async fn start(dir: &Path, tweak: impl FnOnce(&mut Config)) -> Hub {
        Hub(Served::start(dir, tweak).await)
    }

    async fn stop(self) {
        self.0.stop().await;
    }

    async fn send(&self, req: reqwest::RequestBuilder, token: Option<&str>) -> (u16, Value) {
        let req = match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() })
    }

    async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.url)).json(body), token).await
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.url)), token).await
    }

    /// Uploads a release as multipart parts `(name, bytes)`.
    async fn upload(&self, token: Option<&str>, parts: &[(&str, &[u8])]) -> (u16, Value) {
        let boundary = "----storesync-test-boundary-7f3a";
        let mut body = Vec::new();
        for (name, bytes) in parts {
            body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\n").as_bytes(),
            );
            body.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\n");
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let req = self
            .http
            .post(format!("{}/v1/admin/releases", self.url))
            .header("content-type", format!("multipart/form-data; boundary={boundary}"))
            .body(body);
        self.send(req, token).await
    }

    /// Enrols a till and returns its credential.
    async fn enroll(&self, store: &str, till: &str) -> String {
        let (status, body) =
            self.post("/v1/admin/enrollments", Some(ADMIN), &json!({"store": store, "till": till})).await;
        assert_eq!(status, 201, "{body}");
        let code = body["code"].as_str().unwrap().to_owned();
        let (status, body) = self.post("/v1/enroll", None, &json!({"code": code, "agent_version": "0.1.0"})).await;
        assert_eq!(status, 200, "{body}");
        body["credential"].as_str().unwrap().to_owned()
    }

    /// `GET /v1/sync/update` as a till running `version`.
    async fn check(&self, cred: &str, version: &str) -> (u16, Value) {
        self.get(&format!("/v1/sync/update?version={version}&target={LINUX}"), Some(cred)).await
    }

    async fn report(&self, cred: &str, version: &str, outcome: &str, running: &str) -> (u16, Value) {
        let body = json!({"version": version, "target": LINUX, "outcome": outcome, "running_version": running});
        self.post("/v1/sync/update/report", Some(cred), &body).await
    }
}

/// A release as the publisher makes it: `(manifest bytes, signature, signed archive)`.
fn publish(key: &SigningKey, version: &str, binary: &[u8]) -> (Vec<u8>, String, Vec<u8>) {
    let archive = storesync_hub::release::signed_archive_bytes(binary, version, LINUX, key).unwrap();
    let manifest = serde_json::to_vec(&ReleaseManifest {
        schema: MANIFEST_SCHEMA,
        version: version.into(),
        target: LINUX.into(),
        min_version: "0.0.0".into(),
        expires_at: "2030-01-01T00:00:00Z".into(),
        archive_sha256: hex::encode(sha2::Sha256::digest(&archive)),
        archive_size: archive.len() as u64,
    })
    .unwrap();
    let sig = sign_manifest(key, &manifest);
    (manifest, sig, archive)
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

#[tokio::test]
async fn release_uploads_are_checked_and_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path(), |_| {}).await;
    let (manifest, sig, archive) = publish(&key(), "0.2.0", b"agent 0.2.0");
    let good: [(&str, &[u8]); 3] = [("manifest", &manifest), ("signature", sig.as_bytes()), ("archive", &archive)];

    // Refusals first: nothing is stored by any of them.
    let cred = hub.enroll("S9", "T1").await;
    for token in [None, Some("wrong"), Some(cred.as_str())] {
        assert_eq!(hub.upload(token, &good).await.0, 401, "{token:?}");
    }
    let other_archive = publish(&key(), "0.2.0", b"tampered").2;
    for (parts, status, code) in [
        (vec![("manifest", &manifest[..]), ("signature", sig.as_bytes())], 422, "missing_part"),
        (vec![("signature", sig.as_bytes()), ("archive", &archive[..])], 422, "missing_part"),
        (vec![("manifest", &b"{\"schema\":1}"[..]), ("archive", &archive[..])], 422, "invalid_manifest"),
        (vec![("manifest", &manifest[..]), ("archive", &other_archive[..])], 422, "archive_mismatch"),
        (
            vec![("manifest", &manifest[..]), ("signature", &b"not base64!"[..]), ("archive", &archive[..])],
            422,
            "invalid_signature",
        ),
        (
            vec![("manifest", &manifest[..]), ("signature", &b"c2ln"[..]), ("archive", &archive[..])],
            422,
            "invalid_signature",
        ),
        (
            vec![("manifest", &manifest[..]), ("archive", &archive[..]), ("archive", &archive[..])],
            422,
            "duplicate_part",
        ),
        (vec![("manifest", &manifest[..]), ("archive", &archive[..]), ("store", &b"S1"[..])], 422, "unknown_part"),
    ] {
        let (s, body) = hub.upload(Some(ADMIN), &parts).await;
        assert_eq!((s, body["error"].as_str()), (status, Some(code)), "{body}");
    }
    let (s, body) = hub.get("/v1/admin/releases", Some(ADMIN)).await;
    assert_eq!((s, body["releases"].as_array().unwrap().len()), (200, 0), "{body}");

    let (s, body) = hub.upload(Some(ADMIN), &good).await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["signed"], true);
    assert_eq!(body["archive_size"], archive.len());
    assert_eq!(hub.upload(Some(ADMIN), &good).await.0, 200, "the same bytes again are a no-op");
    let (new_manifest, new_sig, new_archive) = publish(&key(), "0.2.0", b"a different build");
    let (s, body) = hub
        .upload(
            Some(ADMIN),
            &[("manifest", &new_manifest), ("signature", new_sig.as_bytes()), ("archive", &new_archive)],
        )
        .await;
    assert_eq!((s, body["error"].as_str()), (409, Some("release_exists")), "{body}");

    // Unsigned releases are stored too (agents refuse them), listed newest first.
    let (m3, _, a3) = publish(&key(), "0.10.0", b"agent 0.10.0");
    let (s, body) = hub.upload(Some(ADMIN), &[("manifest", &m3), ("archive", &a3)]).await;
    assert_eq!((s, &body["signed"]), (201, &json!(false)), "{body}");
    let (_, body) = hub.get("/v1/admin/releases", Some(ADMIN)).await;
    let listed: Vec<(&str, bool)> = body["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["version"].as_str().unwrap(), r["signed"].as_bool().unwrap()))
        .collect();
    assert_eq!(listed, [("0.10.0", false), ("0.2.0", true)]);
    assert_eq!(body["releases"][1]["uploaded_at"], "2027-01-15T08:00:00Z");
    assert_eq!(hub.get("/v1/admin/releases", Some(&cred)).await.0, 401);
    hub.stop().await;
}

#[tokio::test]
async fn release_keys_make_the_hub_refuse_what_they_did_not_sign() {
    let dir = tempfile::tempdir().unwrap();
    let public = encode_verifying_key(&key().verifying_key());
    let hub = Hub::start(dir.path(), |c| c.releases.release_keys = vec![public]).await;
    let (manifest, sig, archive) = publish(&key(), "0.2.0", b"agent");
    let (s, body) = hub.upload(Some(ADMIN), &[("manifest", &manifest), ("archive", &archive)]).await;
    assert_eq!((s, body["error"].as_str()), (422, Some("unsigned")), "{body}");
    let foreign = sign_manifest(&SigningKey::from_bytes(&[8; 32]), &manifest);
    let (s, body) = hub
        .upload(Some(ADMIN), &[("manifest", &manifest), ("signature", foreign.as_bytes()), ("archive", &archive)])
        .await;
    assert_eq!((s, body["error"].as_str()), (422, Some("bad_signature")), "{body}");
    // A manifest signed by the right key over an archive signed by another one.
    let (m2, _, a2) = publish(&SigningKey::from_bytes(&[8; 32]), "0.3.0", b"agent");
    let s2 = sign_manifest(&key(), &m2);
    let (s, body) = hub.upload(Some(ADMIN), &[("manifest", &m2), ("signature", s2.as_bytes()), ("archive", &a2)]).await;
    assert_eq!((s, body["error"].as_str()), (422, Some("bad_archive_signature")), "{body}");
    let (s, body) =
        hub.upload(Some(ADMIN), &[("manifest", &manifest), ("signature", sig.as_bytes()), ("archive", &archive)]).await;
    assert_eq!(s, 201, "{body}");
    hub.stop().await;
}

#[tokio::test]
async fn rollouts_offer_by_ring_and_halt_on_canary_rollbacks() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path(), |_| {}).await;
    let canary = hub.enroll(CANARY_STORE, "T1").await;
    let other = hub.enroll(OTHER_STORE, "T1").await;
    let rollout = |v: &str| json!({"version": v, "target": LINUX, "canary_percent": 10, "max_failures": 1});

    let (s, body) = hub.post("/v1/admin/rollouts", Some(ADMIN), &rollout("0.2.0")).await;
    assert_eq!((s, body["error"].as_str()), (404, Some("unknown_release")), "{body}");
    let (manifest, sig, archive) = publish(&key(), "0.2.0", b"agent 0.2.0");
    let (s, _) =
        hub.upload(Some(ADMIN), &[("manifest", &manifest), ("signature", sig.as_bytes()), ("archive", &archive)]).await;
    assert_eq!(s, 201);
    for (bad, code) in [
        (json!({"version": "0.2.0", "target": LINUX, "canary_percent": 101}), "invalid_canary_percent"),
        (json!({"version": "0.2.0", "target": LINUX, "max_failures": 0}), "invalid_max_failures"),
        (json!({"version": "two", "target": LINUX}), "invalid_version"),
        (json!({"version": "0.2.0", "target": "x86/64"}), "invalid_target"),
    ] {
        let (s, body) = hub.post("/v1/admin/rollouts", Some(ADMIN), &bad).await;
        assert_eq!((s, body["error"].as_str()), (422, Some(code)), "{body}");
    }
    let (s, body) = hub.post("/v1/admin/rollouts", Some(ADMIN), &rollout("0.2.0")).await;
    assert_eq!(s, 201, "{body}");
    assert_eq!((body["stage"].as_str(), body["canary_stores"].as_u64()), (Some("canary"), Some(1)));

    // Canary stage: only the canary store is offered the release, and only while it runs something older.
    let (s, offer) = hub.check(&canary, "0.1.0").await;
    assert_eq!(s, 200, "{offer}");
    let offer: UpdateOffer = serde_json::from_value(offer).unwrap();
    assert_eq!(offer.ring, "canary");
    assert_eq!(offer.archive_path, format!("/v1/sync/releases/0.2.0/{LINUX}/archive"));
    let offered = B64.decode(&offer.manifest).unwrap();
    assert_eq!(offered, manifest, "the exact signed bytes");
    verify_manifest(&offered, offer.signature.as_deref(), &[key().verifying_key()]).unwrap();
    assert_eq!(hub.check(&other, "0.1.0").await.0, 204);
    assert_eq!(hub.check(&canary, "0.2.0").await.0, 204);
    assert_eq!(hub.check(&canary, "0.3.0").await.0, 204, "never offered a downgrade");

    // The archive, as uploaded, to any enrolled till.
    let res = hub.http.get(format!("{}{}", hub.url, offer.archive_path)).bearer_auth(&canary).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/gzip");
    assert_eq!(res.headers()["content-length"], archive.len().to_string().as_str());
    assert_eq!(
        res.headers()["content-disposition"],
        format!("attachment; filename=\"storesync-agent-0.2.0-{LINUX}.tar.gz\"").as_str()
    );
    assert_eq!(res.bytes().await.unwrap(), archive);
    let (s, body) = hub.get(&format!("/v1/sync/releases/0.9.9/{LINUX}/archive"), Some(&canary)).await;
    assert_eq!((s, body["error"].as_str()), (404, Some("unknown_release")));
    assert_eq!(hub.get(&offer.archive_path, None).await.0, 401);

    // Promote: every store. Halt: nobody. Resume: the canary ring again.
    let (s, body) = hub.post(&format!("/v1/admin/rollouts/{LINUX}/promote"), Some(ADMIN), &json!({})).await;
    assert_eq!((s, body["stage"].as_str()), (200, Some("all")), "{body}");
    let (s, offer) = hub.check(&other, "0.1.0").await;
    assert_eq!((s, offer["ring"].as_str()), (200, Some("all")));
    let (s, body) =
        hub.post(&format!("/v1/admin/rollouts/{LINUX}/halt"), Some(ADMIN), &json!({"reason": "support calls"})).await;
    assert_eq!(
        (s, body["stage"].as_str(), body["halted_reason"].as_str()),
        (200, Some("halted"), Some("support calls"))
    );
    assert_eq!(hub.check(&canary, "0.1.0").await.0, 204);
    assert_eq!(hub.check(&other, "0.1.0").await.0, 204);
    let (s, body) = hub.post(&format!("/v1/admin/rollouts/{LINUX}/promote"), Some(ADMIN), &json!({})).await;
    assert_eq!((s, body["error"].as_str()), (409, Some("halted")), "{body}");
    let (s, body) = hub.post(&format!("/v1/admin/rollouts/{LINUX}/resume"), Some(ADMIN), &json!({})).await;
    assert_eq!((s, body["stage"].as_str(), &body["halted_reason"]), (200, Some("canary"), &Value::Null));
    let (s, body) = hub.post(&format!("/v1/admin/rollouts/{LINUX}/resume"), Some(ADMIN), &json!({})).await;
    assert_eq!((s, body["error"].as_str()), (409, Some("not_halted")), "{body}");
    let huge = json!({"reason": "x".repeat(20_000)});
    let (s, body) = hub.post(&format!("/v1/admin/rollouts/{LINUX}/halt"), Some(ADMIN), &huge).await;
    assert_eq!((s, body["error"].as_str()), (413, Some("body_too_large")), "{body}");
    let (s, body) = hub.post("/v1/admin/rollouts/aarch64-unknown-linux-gnu/halt", Some(ADMIN), &json!({})).await;
    assert_eq!((s, body["error"].as_str()), (404, Some("no_rollout")), "{body}");

    // Reports: installs are counted; a rollback outside the canary ring does not count during `canary`; one
    // rollback from the canary ring halts the rollout (max_failures 1).
    let (s, body) = hub.report(&canary, "0.2.0", "installed", "0.2.0").await;
    assert_eq!((s, body["stage"].as_str()), (200, Some("canary")), "{body}");
    let (s, body) = hub.report(&other, "0.2.0", "rolled_back", "0.1.0").await;
    assert_eq!((s, body["stage"].as_str(), body["failures"].as_u64()), (200, Some("canary"), Some(0)), "{body}");
    let (s, body) = hub.report(&other, "0.1.9", "refused", "0.1.0").await;
    assert_eq!((s, body), (200, json!({})), "a report about another release");
    let (s, body) = hub.report(&canary, "0.2.0", "rolled_back", "0.1.0").await;
    assert_eq!((s, body["stage"].as_str(), body["failures"].as_u64()), (200, Some("halted"), Some(1)), "{body}");
    assert_eq!(hub.check(&canary, "0.1.0").await.0, 204);

    let (s, body) = hub.get("/v1/admin/rollouts", Some(ADMIN)).await;
    assert_eq!(s, 200, "{body}");
    let r = &body["rollouts"][0];
    assert_eq!(
        (r["target"].as_str(), r["version"].as_str(), r["stage"].as_str()),
        (Some(LINUX), Some("0.2.0"), Some("halted"))
    );
    assert_eq!(r["halted_reason"], "canary health regressed: 1 rollback");
    assert_eq!((r["installed"].as_u64(), r["refused"].as_u64(), r["failures"].as_u64()), (Some(1), Some(0), Some(1)));
    assert_eq!(body["version_spread"], json!([{"version": "0.1.0", "tills": 2}]));

    // A new rollout of the target replaces the halted one.
    let (m3, s3, a3) = publish(&key(), "0.2.1", b"agent 0.2.1");
    assert_eq!(
        hub.upload(Some(ADMIN), &[("manifest", &m3), ("signature", s3.as_bytes()), ("archive", &a3)]).await.0,
        201
    );
    let (s, body) = hub
        .post("/v1/admin/rollouts", Some(ADMIN), &json!({"version": "0.2.1", "target": LINUX, "canary_percent": 100}))
        .await;
    assert_eq!((s, body["stage"].as_str(), body["failures"].as_u64()), (201, Some("all"), Some(0)), "{body}");
    assert_eq!(body["canary_stores"], 2);
    assert_eq!(hub.check(&other, "0.1.0").await.0, 200);
    hub.stop().await;
}

#[tokio::test]
async fn till_endpoints_take_the_store_from_the_credential_and_admin_ones_need_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path(), |_| {}).await;
    let other = hub.enroll(OTHER_STORE, "T1").await;
    let (manifest, sig, archive) = publish(&key(), "0.2.0", b"agent");
    hub.upload(Some(ADMIN), &[("manifest", &manifest), ("signature", sig.as_bytes()), ("archive", &archive)]).await;
    hub.post("/v1/admin/rollouts", Some(ADMIN), &json!({"version": "0.2.0", "target": LINUX})).await;

    // Naming the canary store anywhere in the request changes nothing: the credential's store is not a canary.
    let q = format!("/v1/sync/update?version=0.1.0&target={LINUX}&store={CANARY_STORE}");
    assert_eq!(hub.get(&q, Some(&other)).await.0, 204);
    let body = json!({"version": "0.2.0", "target": LINUX, "outcome": "rolled_back", "running_version": "0.1.0",
                      "store": CANARY_STORE});
    let (s, body) = hub.post("/v1/sync/update/report", Some(&other), &body).await;
    assert_eq!((s, body["error"].as_str()), (422, Some("invalid_body")), "{body}");
    let (_, body) = hub.get("/v1/admin/rollouts", Some(ADMIN)).await;
    assert_eq!(body["rollouts"][0]["failures"], 0);

    for (q, code) in [
        ("/v1/sync/update", "invalid_query"),
        (&*format!("/v1/sync/update?version=latest&target={LINUX}"), "invalid_version"),
        ("/v1/sync/update?version=0.1.0&target=a%2Fb", "invalid_target"),
    ] {
        let (s, body) = hub.get(q, Some(&other)).await;
        assert_eq!((s, body["error"].as_str()), (422, Some(code)), "{q}: {body}");
    }
    let bad_outcome = json!({"version": "0.2.0", "target": LINUX, "outcome": "exploded", "running_version": "0.1.0"});
    assert_eq!(hub.post("/v1/sync/update/report", Some(&other), &bad_outcome).await.0, 422);

    // Till endpoints need a till credential (the admin token is not one); admin endpoints need the admin token.
    for path in
        [format!("/v1/sync/update?version=0.1.0&target={LINUX}"), format!("/v1/sync/releases/0.2.0/{LINUX}/archive")]
    {
        assert_eq!(hub.get(&path, None).await.0, 401, "{path}");
        assert_eq!(hub.get(&path, Some(ADMIN)).await.0, 401, "{path}");
    }
    let report = json!({"version": "0.2.0", "target": LINUX, "outcome": "installed", "running_version": "0.2.0"});
    assert_eq!(hub.post("/v1/sync/update/report", Some(ADMIN), &report).await.0, 401);
    for path in ["/v1/admin/rollouts", "/v1/admin/releases"] {
        assert_eq!(hub.get(path, Some(&other)).await.0, 401, "{path}");
    }
    for path in [
        "/v1/admin/rollouts".to_owned(),
        format!("/v1/admin/rollouts/{LINUX}/promote"),
        format!("/v1/admin/rollouts/{LINUX}/halt"),
        format!("/v1/admin/rollouts/{LINUX}/resume"),
    ] {
        assert_eq!(hub.post(&path, Some(&other), &json!({})).await.0, 401, "{path}");
        assert_eq!(hub.post(&path, None, &json!({})).await.0, 401, "{path}");
    }
    hub.stop().await;
}

#[tokio::test]
async fn binary_release_keygen_and_sign_feed_a_hub() {
    let dir = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_storesync-hub");
    let run = |args: &[&str]| std::process::Command::new(exe).args(args).output().unwrap();
    let keys = dir.path().join("keys");
    let out = run(&["release", "keygen", "--out", keys.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let public = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(std::fs::read_to_string(keys.join("release.pub")).unwrap().trim(), public);
    let again = run(&["release", "keygen", "--out", keys.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"), "{again:?}");

    let binary = dir.path().join("agent-bin");
    std::fs::write(&binary, b"agent binary 0.3.0").unwrap();
    let rel = dir.path().join("rel");
    let key_file = keys.join("release.key");
    let sign = |version: &str, expires: &str| {
        run(&[
            "release",
            "sign",
            "--key",
            key_file.to_str().unwrap(),
            "--binary",
            binary.to_str().unwrap(),
            "--version",
            version,
            "--target",
            LINUX,
            "--min-version",
            "0.1.0",
            "--expires-in",
            expires,
            "--out",
            rel.to_str().unwrap(),
        ])
    };
    for (version, expires) in [("0.3", "30d"), ("0.3.0", "soon")] {
        let bad = sign(version, expires);
        assert!(!bad.status.success(), "{version} {expires}");
    }
    let out = sign("0.3.0", "7d");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect();
    let archive_path = rel.join(format!("storesync-agent-0.3.0-{LINUX}.tar.gz"));
    assert_eq!(
        printed,
        [archive_path.clone(), rel.join("manifest.json"), rel.join("manifest.sig")].map(|p| p.display().to_string())
    );
    let manifest = std::fs::read(rel.join("manifest.json")).unwrap();
    let sig = std::fs::read_to_string(rel.join("manifest.sig")).unwrap();
    let archive = std::fs::read(&archive_path).unwrap();
    let vk = storesync_shared::release::parse_verifying_key(&public).unwrap();
    let m = verify_manifest(&manifest, Some(&sig), &[vk]).unwrap();
    assert_eq!((m.version.as_str(), m.min_version.as_str()), ("0.3.0", "0.1.0"));

    // The hub with the publisher's key takes the release as signed.
    let hub = Hub::start(dir.path().join("hub").as_path(), |c| c.releases.release_keys = vec![public]).await;
    let (s, body) =
        hub.upload(Some(ADMIN), &[("manifest", &manifest), ("signature", sig.as_bytes()), ("archive", &archive)]).await;
    assert_eq!((s, &body["signed"]), (201, &json!(true)), "{body}");
    hub.stop().await;
}
