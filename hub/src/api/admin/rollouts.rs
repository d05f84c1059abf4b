//! Staged rollouts of agent releases (see [`crate::rollout`]): `POST /v1/admin/rollouts` (start one),
//! `GET /v1/admin/rollouts` (every target's, with the fleet's version spread) and `.../{target}/promote`, `halt`
//! and `resume`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use storesync_shared::wire::ErrorBody;
use tracing::info;
use utoipa::ToSchema;

use crate::api::auth::AdminAuth;
use crate::api::check::{MAX_NOTE_CHARS, check_target, check_version};
use crate::api::error::{ApiError, JsonBody, bad_path, body_rejection, invalid};
use crate::api::schema::AdminRefusals;
use crate::api::state::AppState;
use crate::rollout::{self, Transition};
use crate::storage::{NewRollout, Rollout};
use crate::time_fmt::rfc3339;

/// A target's rollout as head office sees it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RolloutView {
    target: String,
    version: String,
    /// `canary`, `general` or `halted`.
    stage: &'static str,
    canary_percent: u8,
    /// How many of the hub's stores are in the canary ring.
    canary_stores: usize,
    max_failures: u32,
    failures: u32,
    installed: u64,
    refused: u64,
    halted_reason: Option<String>,
    started_at: String,
    updated_at: String,
}

impl RolloutView {
    /// `r`, with its canary ring counted among `stores`.
    fn new(r: &Rollout, stores: &[String]) -> RolloutView {
        RolloutView {
            target: r.target.clone(),
            version: r.version.clone(),
            stage: r.stage.as_str(),
            canary_percent: r.canary_percent,
            canary_stores: stores.iter().filter(|s| rollout::in_canary(s, r.canary_percent)).count(),
            max_failures: r.max_failures,
            failures: r.failures,
            installed: r.installed,
            refused: r.refused,
            halted_reason: r.halted_reason.clone(),
            started_at: rfc3339(r.started_at),
            updated_at: rfc3339(r.updated_at),
        }
    }
}

/// How many tills run a version.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct VersionTills {
    version: String,
    tills: u64,
}

/// `GET /v1/admin/rollouts`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RolloutsAnswer {
    rollouts: Vec<RolloutView>,
    version_spread: Vec<VersionTills>,
}

/// Every store the hub knows, for `canary_stores`.
async fn store_ids(state: &AppState) -> Result<Vec<String>, ApiError> {
    Ok(state.db(|s| s.list_stores()).await?.into_iter().map(|v| v.store).collect())
}

async fn rollout_answer(state: &AppState, r: &Rollout) -> Result<Json<RolloutView>, ApiError> {
    Ok(Json(RolloutView::new(r, &store_ids(state).await?)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartRollout {
    version: String,
    target: String,
    #[serde(default)]
    canary_percent: Option<u32>,
    #[serde(default)]
    max_failures: Option<u32>,
}

/// The default share of stores in the canary ring.
const DEFAULT_CANARY_PERCENT: u8 = 10;

/// `POST /v1/admin/rollouts`: starts a rollout of a stored release, replacing the target's active one.
#[utoipa::path(post, path = "/v1/admin/rollouts", tag = "releases", security(("admin_token" = [])),
    request_body = StartRollout,
    responses(
        (status = 201, description = "The rollout", body = RolloutView),
        (status = 400, description = "`malformed_json`: the body is not JSON", body = ErrorBody),
        (status = 404, description = "`unknown_release`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 422, description = "`invalid_version`, `invalid_target`, `invalid_canary_percent`, \
            `invalid_max_failures` or `invalid_body`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn admin_start_rollout(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<StartRollout>,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    check_version("version", &req.version)?;
    check_target(&req.target)?;
    let canary_percent = match req.canary_percent {
        None => DEFAULT_CANARY_PERCENT,
        Some(p) => u8::try_from(p)
            .ok()
            .filter(|p| *p <= 100)
            .ok_or_else(|| invalid("invalid_canary_percent", "canary_percent must be 0 to 100"))?,
    };
    let max_failures = req.max_failures.unwrap_or(1);
    if max_failures == 0 {
        return Err(invalid("invalid_max_failures", "max_failures must be at least 1"));
    }
    let new = NewRollout { target: req.target, version: req.version, canary_percent, max_failures };
    let now = state.now();
    let r = state.db(move |s| s.start_rollout(&new, now)).await?;
    info!(target_triple = %r.target, version = %r.version, canary_percent, stage = r.stage.as_str(),
          "rollout started");
    Ok((StatusCode::CREATED, rollout_answer(&state, &r).await?))
}

async fn change_rollout(
    state: &AppState,
    target: Result<Path<String>, PathRejection>,
    change: Transition,
) -> Result<Json<RolloutView>, ApiError> {
    let Path(target) = target.map_err(|e| bad_path(&e))?;
    check_target(&target)?;
    let now = state.now();
    let what = match &change {
        Transition::Promote => "promoted",
        Transition::Halt(_) => "halted",
        Transition::Resume => "resumed",
    };
    let r = state.db(move |s| s.change_rollout(&target, &change, now)).await?;
    info!(target_triple = %r.target, version = %r.version, stage = r.stage.as_str(), "rollout {what}");
    rollout_answer(state, &r).await
}

/// `POST /v1/admin/rollouts/{target}/promote`: offer the release to every store.
#[utoipa::path(post, path = "/v1/admin/rollouts/{target}/promote", tag = "releases", security(("admin_token" = [])),
    params(("target" = String, Path, description = "A target triple")),
    responses(
        (status = 200, description = "The rollout", body = RolloutView),
        (status = 400, description = "`bad_path`, `bad_request`", body = ErrorBody),
        (status = 404, description = "`no_rollout`", body = ErrorBody),
        (status = 409, description = "`halted` (promote) or `not_halted` (resume)", body = ErrorBody),
        (status = 422, description = "`invalid_target`, `invalid_reason` or `invalid_body`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn admin_promote(
    _: AdminAuth,
    State(state): State<AppState>,
    target: Result<Path<String>, PathRejection>,
) -> Result<Json<RolloutView>, ApiError> {
    change_rollout(&state, target, Transition::Promote).await
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct HaltRequest {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /v1/admin/rollouts/{target}/halt` `{"reason"?}` (the body may be empty): offer it to nobody.
#[utoipa::path(post, path = "/v1/admin/rollouts/{target}/halt", tag = "releases", security(("admin_token" = [])),
    params(("target" = String, Path, description = "A target triple")),
    request_body(content = HaltRequest, description = "Optional: the body may be empty"),
    responses(
        (status = 200, description = "The rollout", body = RolloutView),
        (status = 400, description = "`bad_path`, `bad_request`", body = ErrorBody),
        (status = 404, description = "`no_rollout`", body = ErrorBody),
        (status = 409, description = "`halted` (promote) or `not_halted` (resume)", body = ErrorBody),
        (status = 422, description = "`invalid_target`, `invalid_reason` or `invalid_body`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn admin_halt(
    _: AdminAuth,
    State(state): State<AppState>,
    target: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RolloutView>, ApiError> {
    let body = body.map_err(body_rejection)?;
    let req: HaltRequest = if body.iter().all(u8::is_ascii_whitespace) {
        HaltRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| invalid("invalid_body", e.to_string()))?
    };
    let reason = req.reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty());
    if reason.as_ref().is_some_and(|r| r.chars().count() > MAX_NOTE_CHARS) {
        return Err(invalid("invalid_reason", format!("reason is at most {MAX_NOTE_CHARS} characters")));
    }
    let reason = reason.or_else(|| Some("halted by head office".to_owned()));
    change_rollout(&state, target, Transition::Halt(reason)).await
}

/// `POST /v1/admin/rollouts/{target}/resume`: back to the canary ring, failures reset.
#[utoipa::path(post, path = "/v1/admin/rollouts/{target}/resume", tag = "releases", security(("admin_token" = [])),
    params(("target" = String, Path, description = "A target triple")),
    responses(
        (status = 200, description = "The rollout", body = RolloutView),
        (status = 400, description = "`bad_path`, `bad_request`", body = ErrorBody),
        (status = 404, description = "`no_rollout`", body = ErrorBody),
        (status = 409, description = "`halted` (promote) or `not_halted` (resume)", body = ErrorBody),
        (status = 422, description = "`invalid_target`, `invalid_reason` or `invalid_body`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn admin_resume(
    _: AdminAuth,
    State(state): State<AppState>,
    target: Result<Path<String>, PathRejection>,
) -> Result<Json<RolloutView>, ApiError> {
    change_rollout(&state, target, Transition::Resume).await
}

/// `GET /v1/admin/rollouts`: every target's rollout and the fleet's version spread.
#[utoipa::path(get, path = "/v1/admin/rollouts", tag = "releases", security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every target's rollout and the fleet's version spread", body = RolloutsAnswer),
        AdminRefusals,
    ))]
pub(crate) async fn admin_list_rollouts(
    _: AdminAuth,
    State(state): State<AppState>,
) -> Result<Json<RolloutsAnswer>, ApiError> {
    let rollouts = state.db(|s| s.list_rollouts()).await?;
    let spread = state.db(|s| s.version_spread()).await?;
    let stores = store_ids(&state).await?;
    Ok(Json(RolloutsAnswer {
        rollouts: rollouts.iter().map(|r| RolloutView::new(r, &stores)).collect(),
        version_spread: spread.into_iter().map(|(version, tills)| VersionTills { version, tills }).collect(),
    }))
}
