//! Signed release manifests for the agent's self-update, and the rules an agent applies before it takes one.
//!
//! A release is two files: a `.tar.gz` holding the `storesync-agent` binary, signed inside the archive with
//! zipsign (ed25519ph, checked by `self_update` at download), and a **manifest**: a small JSON document naming
//! the version, the target, the oldest version that may update to it, an expiry and the archive's SHA-256. The
//! manifest is signed on its exact bytes, so an agent can refuse an expired, older or foreign build before it
//! downloads anything, and the archive digest ties the two together.
//!
//! Nothing here trusts the hub: the hub only stores and hands out what the publisher signed. Every check an
//! agent makes is a pure function here ([`verify_manifest`], [`check_offer`]), so the hub can show the same
//! verdict and tests can drive every refusal.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The manifest layout this code reads and writes.
pub const MANIFEST_SCHEMA: u32 = 1;

/// Signed bytes are prefixed with this, so a manifest signature can never be replayed as any other signature
/// made with the same key (zipsign's archive signatures use their own context).
const SIGNING_CONTEXT: &[u8] = b"storesync release manifest v1\n";

/// The largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 8 * 1024;

/// What a release says about itself. Signed as exact bytes; never re-serialised before verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    pub schema: u32,
    /// Semantic version of the binary in the archive.
    pub version: String,
    /// The Rust target triple the binary runs on, e.g. `x86_64-unknown-linux-gnu`.
    pub target: String,
    /// Agents older than this must not install this release (they need an intermediate one first).
    pub min_version: String,
    /// After this instant (RFC 3339) the manifest is refused: a captured old release cannot be replayed forever.
    pub expires_at: String,
    /// Lower-case hex SHA-256 of the archive as published.
    pub archive_sha256: String,
    pub archive_size: u64,
}

/// Why an agent refuses a release. The code is what the agent reports to the hub and its status shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the release carries no signature")]
    Unsigned,
    #[error("the manifest signature does not verify against any trusted key")]
    BadSignature,
    #[error("the manifest is malformed: {0}")]
    Malformed(String),
    #[error("the manifest expired at {0}")]
    Expired(String),
    #[error("release {offered} is built for {target}, this agent is {ours}")]
    WrongTarget { offered: String, target: String, ours: String },
    #[error("release {offered} is not newer than the running {running}")]
    NotNewer { offered: String, running: String },
    #[error("release {offered} is older than {highest}, the highest version this agent has run")]
    Downgrade { offered: String, highest: String },
    #[error("release {offered} needs at least {min_version}; this agent is {running}")]
    BelowMinVersion { offered: String, min_version: String, running: String },
    #[error("release {0} failed its health check here before and was rolled back")]
    RolledBackBefore(String),
    #[error("the archive does not match the manifest: {0}")]
    ArchiveMismatch(String),
    #[error("the archive signature does not verify: {0}")]
    ArchiveSignature(String),
}

impl Refusal {
    /// A stable snake_case code for reports and status.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::BadSignature => "bad_signature",
            Refusal::Malformed(_) => "malformed",
            Refusal::Expired(_) => "expired",
            Refusal::WrongTarget { .. } => "wrong_target",
            Refusal::NotNewer { .. } => "not_newer",
            Refusal::Downgrade { .. } => "downgrade",
            Refusal::BelowMinVersion { .. } => "below_min_version",
            Refusal::RolledBackBefore(_) => "rolled_back_before",
            Refusal::ArchiveMismatch(_) => "archive_mismatch",
            Refusal::ArchiveSignature(_) => "archive_signature",
        }
    }
}

/// The archive's file name for a version and target. zipsign binds the archive signature to this name, so the
/// publisher signs under it and the agent downloads under it.
pub fn archive_name(version: &str, target: &str) -> String {
    format!("storesync-agent-{version}-{target}.tar.gz")
}

/// Parses a public key given as standard base64 of its 32 bytes.
pub fn parse_verifying_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes = B64.decode(text.trim()).map_err(|e| format!("not base64: {e}"))?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| "an ed25519 public key is 32 bytes".to_owned())?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an ed25519 public key: {e}"))
}

/// Parses a signing key given as standard base64 of its 32-byte seed.
pub fn parse_signing_key(text: &str) -> Result<SigningKey, String> {
    let bytes = B64.decode(text.trim()).map_err(|e| format!("not base64: {e}"))?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| "an ed25519 signing key is a 32-byte seed".to_owned())?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Base64 of a public key, the form configuration files hold.
pub fn encode_verifying_key(key: &VerifyingKey) -> String {
    B64.encode(key.as_bytes())
}

/// Signs manifest bytes; the answer is base64 of the 64-byte signature.
pub fn sign_manifest(key: &SigningKey, manifest: &[u8]) -> String {
    B64.encode(key.sign(&signed_bytes(manifest)).to_bytes())
}

fn signed_bytes(manifest: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + manifest.len());
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(manifest);
    m
}

/// Checks the manifest's signature against `keys` and parses it. An empty key set verifies nothing, so it is
/// refused here too (agents also refuse to start with one).
pub fn verify_manifest(
    manifest: &[u8],
    signature: Option<&str>,
    keys: &[VerifyingKey],
) -> Result<ReleaseManifest, Refusal> {
    let Some(signature) = signature.filter(|s| !s.trim().is_empty()) else { return Err(Refusal::Unsigned) };
    if keys.is_empty() || manifest.len() > MAX_MANIFEST_BYTES {
        return Err(Refusal::BadSignature);
    }
    let sig = B64.decode(signature.trim()).map_err(|_| Refusal::BadSignature)?;
    let sig = Signature::from_slice(&sig).map_err(|_| Refusal::BadSignature)?;
    let msg = signed_bytes(manifest);
    if !keys.iter().any(|k| k.verify(&msg, &sig).is_ok()) {
        return Err(Refusal::BadSignature);
    }
    parse_manifest(manifest).map_err(Refusal::Malformed)
}

/// Parses and sanity-checks manifest bytes without looking at any signature (the hub does this on upload).
pub fn parse_manifest(manifest: &[u8]) -> Result<ReleaseManifest, String> {
    let m: ReleaseManifest = serde_json::from_slice(manifest).map_err(|e| e.to_string())?;
    if m.schema != MANIFEST_SCHEMA {
        return Err(format!("schema {} is not {MANIFEST_SCHEMA}", m.schema));
    }
    version(&m.version).map_err(|e| format!("version: {e}"))?;
    version(&m.min_version).map_err(|e| format!("min_version: {e}"))?;
    OffsetDateTime::parse(&m.expires_at, &Rfc3339).map_err(|e| format!("expires_at: {e}"))?;
    if m.target.is_empty()
        || m.target.len() > 100
        || !m.target.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        return Err(format!("target {:?} is not a target triple", m.target));
    }
    if m.archive_sha256.len() != 64
        || !m.archive_sha256.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    {
        return Err("archive_sha256 must be 64 lower-case hex digits".into());
    }
    Ok(m)
}

/// Parses a semantic version.
pub fn version(text: &str) -> Result<semver::Version, String> {
    semver::Version::parse(text).map_err(|e| format!("{text:?} is not a semantic version: {e}"))
}

/// What the agent knows about itself when it judges an offer.
#[derive(Debug, Clone)]
pub struct AgentView<'a> {
    pub running: &'a str,
    /// The highest version this agent has ever confirmed healthy (never goes down).
    pub highest_seen: Option<&'a str>,
    pub target: &'a str,
    pub now: OffsetDateTime,
    /// Versions that failed their health check here; they are never tried again.
    pub rolled_back: &'a [String],
}

/// The rules after the signature: target, expiry, version order, `min_version`, earlier rollbacks.
pub fn check_offer(m: &ReleaseManifest, me: &AgentView<'_>) -> Result<(), Refusal> {
    let malformed = |e: String| Refusal::Malformed(e);
    if m.target != me.target {
        return Err(Refusal::WrongTarget {
            offered: m.version.clone(),
            target: m.target.clone(),
            ours: me.target.into(),
        });
    }
    let expires = OffsetDateTime::parse(&m.expires_at, &Rfc3339).map_err(|e| malformed(e.to_string()))?;
    if expires <= me.now {
        return Err(Refusal::Expired(m.expires_at.clone()));
    }
    let offered = version(&m.version).map_err(malformed)?;
    let running = version(me.running).map_err(malformed)?;
    if let Some(h) = me.highest_seen {
        let highest = version(h).map_err(malformed)?;
        if offered < highest {
            return Err(Refusal::Downgrade { offered: m.version.clone(), highest: h.into() });
        }
    }
    if offered <= running {
        return Err(Refusal::NotNewer { offered: m.version.clone(), running: me.running.into() });
    }
    if running < version(&m.min_version).map_err(malformed)? {
        return Err(Refusal::BelowMinVersion {
            offered: m.version.clone(),
            min_version: m.min_version.clone(),
            running: me.running.into(),
        });
    }
    if me.rolled_back.iter().any(|v| v == &m.version) {
        return Err(Refusal::RolledBackBefore(m.version.clone()));
    }
    Ok(())
}

/// `GET /v1/sync/update?version=<running>&target=<triple>`: the release the hub's rollout assigns to this till's
/// store, when it differs from the running version (otherwise `204 No Content`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpdateOffer {
    /// Base64 of the exact manifest bytes that were signed.
    pub manifest: String,
    /// Base64 of the manifest signature, absent when the publisher uploaded none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Path on the hub (same credential) that serves the archive.
    pub archive_path: String,
    /// `canary` or `all`: the ring that made this store eligible.
    pub ring: String,
}

/// What became of an offered release at a till.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpdateOutcome {
    /// The new version passed its health check and runs.
    Installed,
    /// The new version failed its health check and the previous one runs again.
    RolledBack,
    /// The agent refused the release before installing it.
    Refused,
}

/// `POST /v1/sync/update/report`: a till tells the hub what became of a release. The till is the credential's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateReport {
    /// The release the report is about.
    pub version: String,
    pub target: String,
    pub outcome: UpdateOutcome,
    /// The version running after the outcome.
    pub running_version: String,
    /// The refusal code ([`Refusal::code`]) or the failed health check, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn manifest(version: &str, target: &str, expires_at: &str) -> Vec<u8> {
        serde_json::to_vec(&ReleaseManifest {
            schema: MANIFEST_SCHEMA,
            version: version.into(),
            target: target.into(),
            min_version: "0.1.0".into(),
            expires_at: expires_at.into(),
            archive_sha256: "ab".repeat(32),
            archive_size: 10,
        })
        .unwrap()
    }

    const T: &str = "x86_64-unknown-linux-gnu";

    fn view<'a>(rolled_back: &'a [String]) -> AgentView<'a> {
        AgentView {
            running: "0.2.0",
            highest_seen: Some("0.2.0"),
            target: T,
            now: datetime!(2026-11-26 12:00 UTC),
            rolled_back,
        }
    }

    /// Verifies and checks one offer; `Ok(())` or the refusal's code.
    fn check(
        bytes: &[u8],
        sig: Option<&str>,
        keys: &[VerifyingKey],
        rolled_back: &[String],
    ) -> Result<(), &'static str> {
        let m = verify_manifest(bytes, sig, keys).map_err(|r| r.code())?;
        check_offer(&m, &view(rolled_back)).map_err(|r| r.code())
    }

    #[test]
    fn every_refusal_has_its_reason() {
        let k = key(7);
        let keys = [k.verifying_key()];
        let good = manifest("0.3.0", T, "2026-12-01T00:00:00Z");
        let sig = sign_manifest(&k, &good);
        assert_eq!(check(&good, Some(&sig), &keys, &[]), Ok(()));
        assert_eq!(check(&good, None, &keys, &[]), Err("unsigned"));
        assert_eq!(check(&good, Some(""), &keys, &[]), Err("unsigned"));
        assert_eq!(check(&good, Some(&sign_manifest(&key(8), &good)), &keys, &[]), Err("bad_signature"));
        assert_eq!(check(&good, Some(&sig), &[], &[]), Err("bad_signature"), "no keys verifies nothing");
        assert_eq!(check(&good, Some("not base64!"), &keys, &[]), Err("bad_signature"));
        for i in 0..good.len() {
            let mut flipped = good.clone();
            flipped[i] ^= 0x01;
            assert_eq!(check(&flipped, Some(&sig), &keys, &[]), Err("bad_signature"), "byte {i}");
        }
        let signed = |b: &[u8]| (b.to_vec(), sign_manifest(&k, b));
        for (bytes, want) in [
            (manifest("0.1.9", T, "2026-12-01T00:00:00Z"), "downgrade"),
            (manifest("0.2.0", T, "2026-12-01T00:00:00Z"), "not_newer"),
            (manifest("0.3.0", T, "2026-11-26T11:59:59Z"), "expired"),
            (manifest("0.3.0", "aarch64-unknown-linux-gnu", "2026-12-01T00:00:00Z"), "wrong_target"),
            (b"{\"schema\":1}".to_vec(), "malformed"),
        ] {
            let (b, s) = signed(&bytes);
            assert_eq!(check(&b, Some(&s), &keys, &[]), Err(want));
        }
        assert_eq!(check(&good, Some(&sig), &keys, &["0.3.0".to_owned()]), Err("rolled_back_before"));
        let mut needs_newer: ReleaseManifest = serde_json::from_slice(&good).unwrap();
        needs_newer.min_version = "0.2.5".into();
        let b = serde_json::to_vec(&needs_newer).unwrap();
        assert_eq!(check(&b, Some(&sign_manifest(&k, &b)), &keys, &[]), Err("below_min_version"));
    }

    #[test]
    fn keys_round_trip_through_base64() {
        let k = key(3);
        let text = encode_verifying_key(&k.verifying_key());
        assert_eq!(parse_verifying_key(&text).unwrap(), k.verifying_key());
        assert!(parse_verifying_key("AAAA").is_err());
        assert!(parse_signing_key("!!").is_err());
    }
}
