//! `POST /v1/enroll`: a till redeems a one-time code for its credential, within a per-client-IP failure limit.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use storesync_shared::wire::{EnrollRequest, EnrollResponse, ErrorBody};
use tracing::{info, warn};

use crate::api::auth::ClientIp;
use crate::api::error::{ApiError, JsonBody};
use crate::api::state::AppState;
use crate::secrets;
use crate::storage::RedeemError;

#[utoipa::path(post, path = "/v1/enroll", tag = "till", request_body = EnrollRequest,
    responses(
        (status = 200, description = "Enrolled: the credential is shown this once", body = EnrollResponse),
        (status = 400, description = "`malformed_json`: the body is not JSON", body = ErrorBody),
        (status = 401, description = "`invalid_code`", body = ErrorBody),
        (status = 410, description = "`code_expired` or `code_used`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 422, description = "`invalid_body`", body = ErrorBody),
        (status = 429, description = "`too_many_attempts`: too many failures from this client IP (`Retry-After`)",
            body = ErrorBody),
        (status = 503, description = "`storage_busy` (with `Retry-After`) or `storage_unavailable`", body = ErrorBody),
    ))]
pub(crate) async fn enroll(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(req): JsonBody<EnrollRequest>,
) -> Result<Json<EnrollResponse>, ApiError> {
    let now = state.now();
    let limits = state.http.enroll_limits;
    let ip_q = ip.clone();
    let (failures, oldest) = state.db(move |s| s.failed_attempts_since(&ip_q, now - limits.window_s + 1)).await?;
    if failures >= limits.max_failures {
        let retry = oldest.map_or(limits.window_s, |t| t + limits.window_s - now).max(1);
        warn!(client = %ip, failures, "enrolment attempts rate-limited");
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            format!("too many failed enrolment attempts; retry in {retry} s"),
        )
        .with_retry_after(u64::try_from(retry).unwrap_or(1)));
    }
    let credential = secrets::new_credential();
    let outcome = match secrets::normalize_code(&req.code) {
        None => Err(ApiError::from(RedeemError::InvalidCode)),
        Some(code) => {
            let (code_hash, cred_hash) = (secrets::digest(&code), secrets::digest(&credential));
            let version = req.agent_version.clone();
            state.db(move |s| s.redeem_enrollment(&code_hash, &cred_hash, &version, now)).await
        }
    };
    match outcome {
        Ok(till) => {
            info!(store_id = %till.store, till_id = %till.till, client = %ip, "till enrolled");
            Ok(Json(EnrollResponse { store_id: till.store, till_id: till.till, credential }))
        }
        Err(err) => {
            if matches!(err.code(), "invalid_code" | "code_expired" | "code_used") {
                warn!(client = %ip, error = err.code(), "enrolment refused");
                let ip_q = ip.clone();
                state.db(move |s| s.record_failed_attempt(&ip_q, now)).await?;
            }
            Err(err)
        }
    }
}
