//! Enrolment codes and revocation: `POST /v1/admin/enrollments` (a one-time code for a store and till) and
//! `POST /v1/admin/revoke` (the till's credential stops working).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use storesync_shared::wire::ErrorBody;
use tracing::info;
use utoipa::ToSchema;

use crate::api::auth::AdminAuth;
use crate::api::check::check_ids;
use crate::api::error::{ApiError, JsonBody};
use crate::api::schema::AdminRefusals;
use crate::api::state::AppState;
use crate::secrets;
use crate::storage::{NewEnrollment, Storage, StorageError, TillId};
use crate::time_fmt::rfc3339;

/// Enrolment codes live at most this long.
const MAX_TTL_S: i64 = 30 * 86_400;
const DEFAULT_TTL_S: i64 = 86_400;

/// The answer to a revocation.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Revoked {
    store: String,
    till: String,
    /// Always true.
    revoked: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateEnrollment {
    store: String,
    till: String,
    #[serde(default)]
    ttl_s: Option<i64>,
}

/// The answer to a new enrolment code.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentCode {
    pub code: String,
    pub store: String,
    pub till: String,
    pub expires_at: String,
}

/// Issues a one-time enrolment code. Shared by the admin API and the `enroll-code` CLI verb.
pub fn issue_enrollment(
    storage: &dyn Storage,
    till: &TillId,
    ttl_s: i64,
    now: i64,
) -> Result<EnrollmentCode, StorageError> {
    let code = secrets::new_enrollment_code();
    let normalized = secrets::normalize_code(&code).unwrap_or_default();
    let expires_at = now.saturating_add(ttl_s);
    storage.create_enrollment(&NewEnrollment {
        code_hash: secrets::digest(&normalized),
        till: till.clone(),
        created_at: now,
        expires_at,
    })?;
    Ok(EnrollmentCode { code, store: till.store.clone(), till: till.till.clone(), expires_at: rfc3339(expires_at) })
}

#[utoipa::path(post, path = "/v1/admin/enrollments", tag = "admin", security(("admin_token" = [])),
    request_body = CreateEnrollment,
    responses(
        (status = 201, description = "A one-time enrolment code", body = EnrollmentCode),
        (status = 400, description = "`malformed_json`: the body is not JSON", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 422, description = "`invalid_id`, `invalid_ttl` or `invalid_body`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn admin_create_enrollment(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CreateEnrollment>,
) -> Result<(StatusCode, Json<EnrollmentCode>), ApiError> {
    let till = check_ids(&req.store, &req.till)?;
    let ttl = req.ttl_s.unwrap_or(DEFAULT_TTL_S);
    if !(1..=MAX_TTL_S).contains(&ttl) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_ttl",
            format!("ttl_s must be between 1 and {MAX_TTL_S}"),
        ));
    }
    let now = state.now();
    let code = state.db(move |s| issue_enrollment(s, &till, ttl, now)).await?;
    info!(store_id = %code.store, till_id = %code.till, expires_at = %code.expires_at, "enrolment code issued");
    Ok((StatusCode::CREATED, Json(code)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeRequest {
    store: String,
    till: String,
}

#[utoipa::path(post, path = "/v1/admin/revoke", tag = "admin", security(("admin_token" = [])),
    request_body = RevokeRequest,
    responses(
        (status = 200, description = "Revoked", body = Revoked),
        (status = 400, description = "`malformed_json`: the body is not JSON", body = ErrorBody),
        (status = 404, description = "`unknown_till`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 422, description = "`invalid_id` or `invalid_body`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn admin_revoke(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<RevokeRequest>,
) -> Result<Json<Revoked>, ApiError> {
    let till = check_ids(&req.store, &req.till)?;
    let now = state.now();
    let t = till.clone();
    if !state.db(move |s| s.revoke(&t, now)).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_till", "no such store and till"));
    }
    info!(store_id = %till.store, till_id = %till.till, "till revoked");
    Ok(Json(Revoked { store: till.store, till: till.till, revoked: true }))
}
