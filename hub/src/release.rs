//! The publisher's side of a release: key generation, the signed `.tar.gz` archive and the signed manifest
//! (`storesync-hub release keygen|sign`). The hub server itself never holds the signing key.
//!
//! Design note:
//! - The archive holds one entry, `storesync-agent` (`storesync-agent.exe` for a Windows target), mode 0755, with a
//!   fixed mtime, so the same binary gives the same archive. It is signed **inside** the archive with zipsign
//!   (ed25519ph over the gzip stream; the signature is an extra gzip member at the end), which is what
//!   `self_update`'s `verify_signature` checks at download.
//! - zipsign binds the signature to a context, and `self_update` 1.3 passes **the archive's file name** as that
//!   context (`verify_signature` → `verify_tar(.., Some(file_name))`). So the archive is signed with the context
//!   [`archive_file_name`]`(version, target)` = `storesync-agent-{version}-{target}.tar.gz`, and an agent must save
//!   the download under exactly that name before verifying it.
//! - The manifest (`storesync_shared::release::ReleaseManifest`, signed on its exact bytes) names the SHA-256 and
//!   size of the **signed** archive, the bytes the hub stores and serves.
//! - Files are written to a temporary name in the output directory and renamed into place, so a failed run never
//!   leaves a half-written archive under the final name.

use std::io::{Cursor, Write as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use storesync_shared::release::{
    MANIFEST_SCHEMA, ReleaseManifest, encode_verifying_key, parse_manifest, parse_signing_key, sign_manifest,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Name of the private key file `keygen` writes.
pub const KEY_FILE: &str = "release.key";
/// Name of the public key file `keygen` writes.
pub const PUB_FILE: &str = "release.pub";
/// Name of the manifest `sign` writes.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Name of the manifest signature `sign` writes.
pub const SIGNATURE_FILE: &str = "manifest.sig";

/// Why a publisher command failed.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid release: {0}")]
    Invalid(String),
    #[error("invalid signing key in {path}: {detail}")]
    Key { path: PathBuf, detail: String },
    #[error("signing the archive failed: {0}")]
    Sign(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ReleaseError + 'a {
    move |source| ReleaseError::Io { what, path: path.to_owned(), source }
}

/// The archive's file name, also the zipsign context its signature is bound to.
pub fn archive_file_name(version: &str, target: &str) -> String {
    format!("storesync-agent-{version}-{target}.tar.gz")
}

/// The name of the binary inside the archive.
pub fn binary_entry_name(target: &str) -> &'static str {
    if target.contains("windows") { "storesync-agent.exe" } else { "storesync-agent" }
}

/// A key pair `keygen` wrote.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    pub key: PathBuf,
    pub public: PathBuf,
    /// Base64 of the public key: the form the agents' `update_keys` and the hub's `release_keys` take.
    pub public_b64: String,
}

/// Writes a new signing key (`release.key`, base64 of the 32-byte seed, mode 0600 on unix) and its public key
/// (`release.pub`) into `dir`. Refuses when either file exists.
pub fn keygen(dir: &Path) -> Result<KeyFiles, ReleaseError> {
    let key_path = dir.join(KEY_FILE);
    let pub_path = dir.join(PUB_FILE);
    for p in [&key_path, &pub_path] {
        if p.exists() {
            return Err(ReleaseError::Exists(p.clone()));
        }
    }
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    let public_b64 = encode_verifying_key(&key.verifying_key());
    write_new(&key_path, format!("{}\n", B64.encode(seed)).as_bytes(), true)?;
    write_new(&pub_path, format!("{public_b64}\n").as_bytes(), false)?;
    Ok(KeyFiles { key: key_path, public: pub_path, public_b64 })
}

/// Creates a file that must not exist yet; `secret` makes it 0600 on unix.
fn write_new(path: &Path, bytes: &[u8], secret: bool) -> Result<(), ReleaseError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => ReleaseError::Exists(path.to_owned()),
        _ => ReleaseError::Io { what: "creating", path: path.to_owned(), source: e },
    })?;
    f.write_all(bytes).map_err(io("writing", path))?;
    f.sync_all().map_err(io("syncing", path))
}

/// Reads a signing key file written by [`keygen`].
pub fn read_signing_key(path: &Path) -> Result<SigningKey, ReleaseError> {
    let text = std::fs::read_to_string(path).map_err(io("reading", path))?;
    parse_signing_key(&text).map_err(|detail| ReleaseError::Key { path: path.to_owned(), detail })
}

/// Writes `bytes` to `path` through a temporary file in the same directory.
fn write_replace(path: &Path, bytes: &[u8]) -> Result<(), ReleaseError> {
    let tmp = path.with_extension("partial");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(bytes).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io("renaming into", path))
}

/// The unsigned `.tar.gz` of one binary.
fn tar_gz(binary: &[u8], entry: &str) -> Result<Vec<u8>, std::io::Error> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_size(binary.len() as u64);
    header.set_mode(0o755);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, entry, binary)?;
    tar.into_inner()?.finish()
}

/// Builds the zipsign-signed archive of `binary` in memory (module note).
pub fn signed_archive_bytes(
    binary: &[u8],
    version: &str,
    target: &str,
    key: &SigningKey,
) -> Result<Vec<u8>, ReleaseError> {
    let unsigned =
        tar_gz(binary, binary_entry_name(target)).map_err(|e| ReleaseError::Sign(format!("building tar.gz: {e}")))?;
    let context = archive_file_name(version, target);
    let mut out = Cursor::new(Vec::with_capacity(unsigned.len() + 256));
    zipsign_api::sign::copy_and_sign_tar(
        &mut Cursor::new(unsigned),
        &mut out,
        std::slice::from_ref(key),
        Some(context.as_bytes()),
    )
    .map_err(|e| ReleaseError::Sign(format!("{e:#}")))?;
    Ok(out.into_inner())
}

/// Builds `out_dir/storesync-agent-{version}-{target}.tar.gz` from the binary at `binary`, signed in place with
/// zipsign. Returns its path.
pub fn build_signed_archive(
    binary: &Path,
    version: &str,
    target: &str,
    key: &SigningKey,
    out_dir: &Path,
) -> Result<PathBuf, ReleaseError> {
    check_names(version, target)?;
    let bytes = std::fs::read(binary).map_err(io("reading", binary))?;
    let signed = signed_archive_bytes(&bytes, version, target, key)?;
    std::fs::create_dir_all(out_dir).map_err(io("creating", out_dir))?;
    let path = out_dir.join(archive_file_name(version, target));
    write_replace(&path, &signed)?;
    Ok(path)
}

/// Checks version and target the way the manifest parser will, before anything is built.
fn check_names(version: &str, target: &str) -> Result<(), ReleaseError> {
    let probe = ReleaseManifest {
        schema: MANIFEST_SCHEMA,
        version: version.into(),
        target: target.into(),
        min_version: "0.0.0".into(),
        expires_at: "2000-01-01T00:00:00Z".into(),
        archive_sha256: "0".repeat(64),
        archive_size: 0,
    };
    let bytes = serde_json::to_vec(&probe).map_err(|e| ReleaseError::Invalid(e.to_string()))?;
    parse_manifest(&bytes).map(|_| ()).map_err(ReleaseError::Invalid)
}

/// What `release sign` is asked to publish.
#[derive(Debug, Clone)]
pub struct ReleaseSpec<'a> {
    pub binary: &'a Path,
    pub version: &'a str,
    pub target: &'a str,
    pub min_version: &'a str,
    pub expires_at: OffsetDateTime,
}

/// The three files of a release.
#[derive(Debug, Clone)]
pub struct ReleaseFiles {
    pub archive: PathBuf,
    pub manifest: PathBuf,
    pub signature: PathBuf,
}

/// Builds and signs the archive, then writes `manifest.json` (naming the signed archive's SHA-256 and size) and
/// `manifest.sig` into `out_dir`.
pub fn write_release(spec: &ReleaseSpec<'_>, key: &SigningKey, out_dir: &Path) -> Result<ReleaseFiles, ReleaseError> {
    check_names(spec.version, spec.target)?;
    let expires_at = spec.expires_at.format(&Rfc3339).map_err(|e| ReleaseError::Invalid(e.to_string()))?;
    let archive = build_signed_archive(spec.binary, spec.version, spec.target, key, out_dir)?;
    let bytes = std::fs::read(&archive).map_err(io("reading", &archive))?;
    let manifest = ReleaseManifest {
        schema: MANIFEST_SCHEMA,
        version: spec.version.into(),
        target: spec.target.into(),
        min_version: spec.min_version.into(),
        expires_at,
        archive_sha256: hex::encode(Sha256::digest(&bytes)),
        archive_size: bytes.len() as u64,
    };
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| ReleaseError::Invalid(e.to_string()))?;
    parse_manifest(&manifest_bytes).map_err(ReleaseError::Invalid)?;
    let manifest_path = out_dir.join(MANIFEST_FILE);
    let sig_path = out_dir.join(SIGNATURE_FILE);
    write_replace(&manifest_path, &manifest_bytes)?;
    write_replace(&sig_path, sign_manifest(key, &manifest_bytes).as_bytes())?;
    Ok(ReleaseFiles { archive, manifest: manifest_path, signature: sig_path })
}

/// Checks the zipsign signature of archive bytes against `keys` the way `self_update` does, with the archive's
/// file name as the context. The hub uses it on upload when `release_keys` is configured.
pub fn verify_archive(archive: &[u8], version: &str, target: &str, keys: &[VerifyingKey]) -> Result<(), String> {
    let context = archive_file_name(version, target);
    zipsign_api::verify::verify_tar(&mut Cursor::new(archive), keys, Some(context.as_bytes()))
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use storesync_shared::release::{parse_verifying_key, verify_manifest};

    const T: &str = "x86_64-unknown-linux-gnu";

    /// Verifies a signed archive file exactly as `self_update::verify_signature` does.
    fn self_update_verify(path: &Path, keys: &[VerifyingKey]) -> Result<usize, String> {
        let context = path.file_name().and_then(|s| s.to_str()).unwrap().as_bytes();
        let mut f = std::fs::File::open(path).unwrap();
        zipsign_api::verify::verify_tar(&mut f, keys, Some(context)).map_err(|e| e.to_string())
    }

    #[test]
    fn keygen_sign_verify_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("keys");
        let kf = keygen(&keys_dir).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&kf.key).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(matches!(keygen(&keys_dir), Err(ReleaseError::Exists(_))), "never overwrites a key");
        let public = parse_verifying_key(&std::fs::read_to_string(&kf.public).unwrap()).unwrap();
        assert_eq!(encode_verifying_key(&public), kf.public_b64);
        let key = read_signing_key(&kf.key).unwrap();
        assert_eq!(key.verifying_key(), public);

        let binary = dir.path().join("storesync-agent");
        std::fs::write(&binary, b"\x7fELF pretend agent binary").unwrap();
        let out = dir.path().join("out");
        let spec = ReleaseSpec {
            binary: &binary,
            version: "0.2.0",
            target: T,
            min_version: "0.1.0",
            expires_at: OffsetDateTime::now_utc() + time::Duration::days(30),
        };
        let files = write_release(&spec, &key, &out).unwrap();
        assert_eq!(files.archive, out.join("storesync-agent-0.2.0-x86_64-unknown-linux-gnu.tar.gz"));

        // The archive: signed for self_update, and holding the binary as `storesync-agent`, mode 0755.
        assert_eq!(self_update_verify(&files.archive, &[public]), Ok(0));
        let other = SigningKey::from_bytes(&[9; 32]).verifying_key();
        assert!(self_update_verify(&files.archive, &[other]).is_err(), "another key does not verify");
        let bytes = std::fs::read(&files.archive).unwrap();
        let mut entries = tar::Archive::new(flate2::read::MultiGzDecoder::new(&bytes[..]));
        let mut names = Vec::new();
        for e in entries.entries().unwrap() {
            let mut e = e.unwrap();
            names.push((e.path().unwrap().to_string_lossy().into_owned(), e.header().mode().unwrap()));
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut content).unwrap();
            assert_eq!(content, b"\x7fELF pretend agent binary");
        }
        assert_eq!(names, [("storesync-agent".to_owned(), 0o755)]);

        // The manifest: verifies with the keygen'd public key and names the signed archive.
        let manifest = std::fs::read(&files.manifest).unwrap();
        let sig = std::fs::read_to_string(&files.signature).unwrap();
        let m = verify_manifest(&manifest, Some(&sig), &[public]).unwrap();
        assert_eq!((m.version.as_str(), m.target.as_str(), m.min_version.as_str()), ("0.2.0", T, "0.1.0"));
        assert_eq!(m.archive_sha256, hex::encode(Sha256::digest(&bytes)));
        assert_eq!(m.archive_size, bytes.len() as u64);
        assert_eq!(verify_archive(&bytes, "0.2.0", T, &[public]), Ok(()));
        assert!(verify_archive(&bytes, "0.2.1", T, &[public]).is_err(), "bound to its file name");

        // One flipped byte anywhere in the signed data: self_update refuses the archive.
        for i in [0, 4, 12, 20] {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x01;
            let path = dir.path().join(format!("flip-{i}")).join(archive_file_name("0.2.0", T));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &flipped).unwrap();
            assert!(self_update_verify(&path, &[public]).is_err(), "byte {i}");
        }
    }

    #[test]
    fn windows_targets_get_an_exe_and_bad_names_are_refused() {
        assert_eq!(binary_entry_name("x86_64-pc-windows-msvc"), "storesync-agent.exe");
        assert_eq!(binary_entry_name(T), "storesync-agent");
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[1; 32]);
        let binary = dir.path().join("bin");
        std::fs::write(&binary, b"x").unwrap();
        for (version, target) in [("1.0", T), ("0.2.0", "x86/64"), ("0.2.0", "")] {
            let err = build_signed_archive(&binary, version, target, &key, dir.path()).unwrap_err();
            assert!(matches!(err, ReleaseError::Invalid(_)), "{version} {target}: {err}");
        }
        let missing = build_signed_archive(&dir.path().join("nope"), "0.2.0", T, &key, dir.path()).unwrap_err();
        assert!(matches!(missing, ReleaseError::Io { .. }), "{missing}");
        // Same input, same archive: a rebuilt release has the same digest.
        let a = signed_archive_bytes(b"x", "0.2.0", T, &key).unwrap();
        assert_eq!(a, signed_archive_bytes(b"x", "0.2.0", T, &key).unwrap());
    }
}
