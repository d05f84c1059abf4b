//! Self-update, the till's side: `GET /v1/sync/update` (the release this till's store is offered by its target's
//! rollout, see [`crate::rollout`]), `GET /v1/sync/releases/{version}/{target}/archive` (the signed archive) and
//! `POST /v1/sync/update/report` (what became of a release at this till, which may halt the rollout).

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use storesync_shared::wire::ErrorBody;
use tracing::{info, warn};
use utoipa::{IntoParams, ToSchema};

use crate::api::auth::TillAuth;
use crate::api::check::{MAX_NOTE_CHARS, check_target, check_version};
use crate::api::error::{ApiError, JsonBody, bad_path, invalid, invalid_query};
use crate::api::schema::{Binary, TillRefusals};
use crate::api::state::AppState;
use crate::rollout;
use crate::storage::NewUpdateReport;

/// The answer to an update report: the stage and failures of the rollout the report counted against; both absent
/// (`{}`) when it counted against none.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReportAnswer {
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failures: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UpdateQuery {
    /// The version the till runs (semantic version).
    version: String,
    /// The till's target triple.
    target: String,
}

/// `GET /v1/sync/update?version=<running>&target=<triple>`: the release this till's store is offered, or 204.
#[utoipa::path(get, path = "/v1/sync/update", tag = "releases", security(("till_credential" = [])), params(UpdateQuery),
    responses(
        (status = 200, description = "The release offered to this till's store",
            body = storesync_shared::release::UpdateOffer),
        (status = 204, description = "Nothing newer is offered"),
        (status = 422, description = "`invalid_query`, `invalid_version` or `invalid_target`", body = ErrorBody),
        TillRefusals,
    ))]
pub(crate) async fn sync_update(
    TillAuth(till): TillAuth,
    State(state): State<AppState>,
    query: Result<Query<UpdateQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| invalid_query(&e))?;
    check_version("version", &q.version)?;
    check_target(&q.target)?;
    let running = storesync_shared::release::version(&q.version).map_err(|e| invalid("invalid_version", e))?;
    let now = state.now();
    let t = till.clone();
    let (version, target) = (q.version.clone(), q.target.clone());
    let Some(cand) = state.db(move |s| s.check_update(&t, &version, &target, now)).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let r = &cand.rollout;
    let newer = storesync_shared::release::version(&r.version).is_ok_and(|v| v > running);
    match rollout::offered_ring(r.stage, r.canary_percent, &till.store) {
        Some(ring) if newer => {
            use base64::Engine as _;
            let offer = storesync_shared::release::UpdateOffer {
                manifest: base64::engine::general_purpose::STANDARD.encode(&cand.manifest),
                signature: cand.signature.clone(),
                archive_path: format!("/v1/sync/releases/{}/{}/archive", r.version, r.target),
                ring: ring.to_owned(),
            };
            tracing::debug!(store_id = %till.store, till_id = %till.till, version = %r.version, ring,
                            "update offered");
            Ok(Json(offer).into_response())
        }
        _ => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// `GET /v1/sync/releases/{version}/{target}/archive`: the signed archive, as uploaded.
#[utoipa::path(get, path = "/v1/sync/releases/{version}/{target}/archive", tag = "releases",
    security(("till_credential" = [])),
    params(
        ("version" = String, Path, description = "The release version"),
        ("target" = String, Path, description = "A target triple"),
    ),
    responses(
        (status = 200, description = "The archive as uploaded (save it under the `Content-Disposition` name: the \
            zipsign signature is bound to it)",
            body = inline(Binary), content_type = "application/gzip",
            headers(("content-disposition" = String))),
        (status = 400, description = "`bad_path`", body = ErrorBody),
        (status = 404, description = "`unknown_release`", body = ErrorBody),
        TillRefusals,
    ))]
pub(crate) async fn sync_release_archive(
    TillAuth(_): TillAuth,
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((version, target)) = path.map_err(|e| bad_path(&e))?;
    let unknown = || ApiError::new(StatusCode::NOT_FOUND, "unknown_release", "no such release");
    if check_version("version", &version).is_err() || check_target(&target).is_err() {
        return Err(unknown());
    }
    let (v, t) = (version.clone(), target.clone());
    let archive = state.db(move |s| s.release_archive(&v, &t)).await?.ok_or_else(unknown)?;
    let disposition = format!("attachment; filename=\"{}\"", crate::release::archive_file_name(&version, &target));
    let disposition = HeaderValue::from_str(&disposition).map_err(|_| ApiError::internal())?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/gzip")),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        archive,
    )
        .into_response())
}

/// `POST /v1/sync/update/report`: what became of a release at this till (the till is the credential's).
#[utoipa::path(post, path = "/v1/sync/update/report", tag = "releases", security(("till_credential" = [])),
    request_body = storesync_shared::release::UpdateReport,
    responses(
        (status = 200, description = "The stage and failures of the rollout the report counted against, or `{}`",
            body = ReportAnswer),
        (status = 400, description = "`malformed_json`: the body is not JSON", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 422, description = "`invalid_body`, `invalid_version` or `invalid_target`", body = ErrorBody),
        TillRefusals,
    ))]
pub(crate) async fn sync_update_report(
    TillAuth(till): TillAuth,
    State(state): State<AppState>,
    JsonBody(report): JsonBody<storesync_shared::release::UpdateReport>,
) -> Result<Json<ReportAnswer>, ApiError> {
    check_version("version", &report.version)?;
    check_version("running_version", &report.running_version)?;
    check_target(&report.target)?;
    for (field, text) in [("reason", &report.reason), ("detail", &report.detail)] {
        if text.as_ref().is_some_and(|t| t.chars().count() > MAX_NOTE_CHARS) {
            return Err(invalid("invalid_body", format!("{field} is at most {MAX_NOTE_CHARS} characters")));
        }
    }
    let new = NewUpdateReport {
        version: report.version,
        target: report.target,
        outcome: report.outcome,
        running_version: report.running_version,
        reason: report.reason,
        detail: report.detail,
    };
    let now = state.now();
    let t = till.clone();
    let outcome = new.outcome;
    let (version, reason) = (new.version.clone(), new.reason.clone());
    let effect = state.db(move |s| s.record_update_report(&t, &new, now)).await?;
    info!(store_id = %till.store, till_id = %till.till, version = %version, outcome = ?outcome,
          reason = reason.as_deref().unwrap_or(""), "update report");
    if effect.halted_now
        && let Some(r) = &effect.rollout
    {
        warn!(target_triple = %r.target, version = %r.version, failures = r.failures,
              reason = r.halted_reason.as_deref().unwrap_or(""), "rollout halted automatically");
    }
    Ok(Json(ReportAnswer {
        stage: effect.rollout.as_ref().map(|r| r.stage.as_str()),
        failures: effect.rollout.as_ref().map(|r| r.failures),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_that_counted_against_no_rollout_answers_an_empty_object() {
        let none = ReportAnswer { stage: None, failures: None };
        assert_eq!(serde_json::to_value(none).unwrap(), serde_json::json!({}));
        let some = ReportAnswer { stage: Some("halted"), failures: Some(2) };
        assert_eq!(serde_json::to_value(some).unwrap(), serde_json::json!({"stage": "halted", "failures": 2}));
    }
}
