//! Agent releases, head office's side: `POST /v1/admin/releases` (a signed release, checked against the
//! publisher keys when the hub has any; the hub is not a trust anchor, agents verify) and
//! `GET /v1/admin/releases`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::http::StatusCode;
use serde::Serialize;
use storesync_shared::wire::ErrorBody;
use tracing::{error, info};
use utoipa::ToSchema;

use crate::api::auth::AdminAuth;
use crate::api::error::{ApiError, invalid};
use crate::api::schema::{AdminRefusals, ReleaseUpload};
use crate::api::state::AppState;
use crate::storage::{NewRelease, PutRelease, ReleaseInfo};
use crate::time_fmt::rfc3339;

/// A stored release, as the upload answers it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ReleaseStored {
    version: String,
    target: String,
    archive_sha256: String,
    archive_size: u64,
    /// Whether a manifest signature was uploaded with it.
    signed: bool,
}

/// `GET /v1/admin/releases`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReleasesAnswer {
    /// Newest version first.
    releases: Vec<ReleaseEntry>,
}

/// A stored release, as the listing shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReleaseEntry {
    version: String,
    target: String,
    min_version: String,
    expires_at: String,
    archive_sha256: String,
    archive_size: u64,
    signed: bool,
    uploaded_at: String,
}

impl From<ReleaseInfo> for ReleaseEntry {
    fn from(r: ReleaseInfo) -> ReleaseEntry {
        ReleaseEntry {
            version: r.version,
            target: r.target,
            min_version: r.min_version,
            expires_at: r.expires_at,
            archive_sha256: r.archive_sha256,
            archive_size: r.archive_size,
            signed: r.signed,
            uploaded_at: rfc3339(r.uploaded_at),
        }
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The parts of a release upload.
#[derive(Default)]
struct UploadParts {
    manifest: Option<Bytes>,
    signature: Option<Bytes>,
    archive: Option<Bytes>,
}

async fn read_release_parts(multipart: Result<Multipart, MultipartRejection>) -> Result<UploadParts, ApiError> {
    let mut multipart = multipart.map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_multipart", format!("expected multipart/form-data: {e}"))
    })?;
    let part_err = |e: MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the release upload is too large")
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_multipart", e.body_text())
        }
    };
    let mut parts = UploadParts::default();
    while let Some(field) = multipart.next_field().await.map_err(part_err)? {
        let name = field.name().unwrap_or_default().to_owned();
        let slot = match name.as_str() {
            "manifest" => &mut parts.manifest,
            "signature" => &mut parts.signature,
            "archive" => &mut parts.archive,
            _ => {
                return Err(invalid(
                    "unknown_part",
                    format!("unexpected part {name:?}: send manifest, signature and archive"),
                ));
            }
        };
        if slot.is_some() {
            return Err(invalid("duplicate_part", format!("part {name:?} is sent twice")));
        }
        *slot = Some(field.bytes().await.map_err(part_err)?);
    }
    Ok(parts)
}

/// Checks an upload and builds the row to store (CPU-bound: runs on the blocking pool).
fn check_release(parts: UploadParts, keys: &[ed25519_dalek::VerifyingKey], now: i64) -> Result<NewRelease, ApiError> {
    let missing = |p: &str| invalid("missing_part", format!("the {p} part is missing"));
    let manifest = parts.manifest.ok_or_else(|| missing("manifest"))?;
    let archive = parts.archive.ok_or_else(|| missing("archive"))?;
    if manifest.len() > storesync_shared::release::MAX_MANIFEST_BYTES {
        return Err(invalid(
            "invalid_manifest",
            format!("a manifest is at most {} bytes", storesync_shared::release::MAX_MANIFEST_BYTES),
        ));
    }
    let m = storesync_shared::release::parse_manifest(&manifest).map_err(|e| invalid("invalid_manifest", e))?;
    let signature = match parts.signature {
        None => None,
        Some(b) => {
            let text = std::str::from_utf8(&b).map(str::trim).unwrap_or("\u{0}");
            if text.is_empty() {
                None
            } else {
                use base64::Engine as _;
                match b64().decode(text) {
                    Ok(sig) if sig.len() == 64 => Some(text.to_owned()),
                    _ => return Err(invalid("invalid_signature", "signature must be base64 of 64 bytes")),
                }
            }
        }
    };
    let sha = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&archive))
    };
    if sha != m.archive_sha256 || archive.len() as u64 != m.archive_size {
        return Err(invalid(
            "archive_mismatch",
            format!(
                "the archive is {} bytes with SHA-256 {sha}; the manifest says {} bytes with {}",
                archive.len(),
                m.archive_size,
                m.archive_sha256
            ),
        ));
    }
    if !keys.is_empty() {
        storesync_shared::release::verify_manifest(&manifest, signature.as_deref(), keys)
            .map_err(|r| invalid(r.code(), format!("{r}; this hub only takes releases of its release_keys")))?;
        crate::release::verify_archive(&archive, &m.version, &m.target, keys)
            .map_err(|e| invalid("bad_archive_signature", format!("the archive signature does not verify: {e}")))?;
    }
    Ok(NewRelease {
        version: m.version,
        target: m.target,
        manifest: manifest.to_vec(),
        signature,
        archive: archive.to_vec(),
        archive_sha256: sha,
        archive_size: m.archive_size,
        min_version: m.min_version,
        expires_at: m.expires_at,
        uploaded_at: now,
    })
}

/// `POST /v1/admin/releases` (multipart: `manifest`, `signature`?, `archive`): stores a release.
#[utoipa::path(post, path = "/v1/admin/releases", tag = "releases", security(("admin_token" = [])),
    request_body(content = inline(ReleaseUpload), content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Stored", body = ReleaseStored),
        (status = 200, description = "Exactly these bytes were stored before (same body)", body = ReleaseStored),
        (status = 400, description = "`bad_multipart`", body = ErrorBody),
        (status = 409, description = "`release_exists`: other bytes are stored for this version and target",
            body = ErrorBody),
        (status = 413, description = "`body_too_large`: over `max_release_bytes` plus 64 KiB", body = ErrorBody),
        (status = 422, description = "`missing_part`, `unknown_part`, `duplicate_part`, `invalid_manifest`, \
            `invalid_signature`, `archive_mismatch`, `unsigned`, `bad_signature` or `bad_archive_signature`",
            body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn admin_upload_release(
    _: AdminAuth,
    State(state): State<AppState>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<ReleaseStored>), ApiError> {
    let parts = read_release_parts(multipart).await?;
    let now = state.now();
    let st = state.clone();
    let release = match tokio::task::spawn_blocking(move || check_release(parts, &st.http.release_keys, now)).await {
        Ok(r) => r?,
        Err(err) => {
            error!(error = %err, "release check task failed");
            return Err(ApiError::internal());
        }
    };
    let answer = ReleaseStored {
        version: release.version.clone(),
        target: release.target.clone(),
        archive_sha256: release.archive_sha256.clone(),
        archive_size: release.archive_size,
        signed: release.signature.is_some(),
    };
    let (version, target) = (release.version.clone(), release.target.clone());
    match state.db(move |s| s.put_release(&release)).await? {
        PutRelease::Created => {
            info!(version = %version, target = %target, "agent release stored");
            Ok((StatusCode::CREATED, Json(answer)))
        }
        PutRelease::Identical => Ok((StatusCode::OK, Json(answer))),
        PutRelease::Conflict => Err(ApiError::new(
            StatusCode::CONFLICT,
            "release_exists",
            format!("another release {version} for {target} is stored; publish a new version"),
        )),
    }
}

/// `GET /v1/admin/releases`: every stored release, newest version first.
#[utoipa::path(get, path = "/v1/admin/releases", tag = "releases", security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every stored release, newest version first", body = ReleasesAnswer),
        AdminRefusals,
    ))]
pub(crate) async fn admin_list_releases(
    _: AdminAuth,
    State(state): State<AppState>,
) -> Result<Json<ReleasesAnswer>, ApiError> {
    let releases = state.db(|s| s.list_releases()).await?;
    Ok(Json(ReleasesAnswer { releases: releases.into_iter().map(ReleaseEntry::from).collect() }))
}
