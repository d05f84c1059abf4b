//! What the POS (or staff) can ask the agent to do now: sync with the hub, or check for a release.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use storesync_shared::wire::ErrorBody;
use utoipa::IntoParams;

use super::error::ApiError;
use super::status::{StatusAnswer, status_answer};
use crate::AgentState;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct SyncNowQuery {
    /// How long to wait for the backlog to drain, in seconds (default 60, at most 3600).
    #[serde(default = "default_sync_wait")]
    wait_s: u64,
}

fn default_sync_wait() -> u64 {
    60
}

/// `POST /v1/sync/now?wait_s=N`: syncs at once, waiting up to `wait_s` seconds for the backlog to drain or for
/// the hub to answer with an error, and answers the status.
#[utoipa::path(post, path = "/v1/sync/now", tag = "sync",
    params(SyncNowQuery),
    responses(
        (status = 200, description = "The status once the backlog drained, the hub refused, or `wait_s` passed (see \
            `GET /v1/status`)",
            body = StatusAnswer),
        (status = 400, description = "`bad_query`", body = ErrorBody),
        (status = 409, description = "`not_enrolled`: this till has no hub credential", body = ErrorBody),
    ))]
pub(super) async fn sync_now(
    State(s): State<Arc<AgentState>>,
    q: Result<Query<SyncNowQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<StatusAnswer>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    if s.sync_status().hub_url.is_none() && crate::credential::load(&s.data_dir).ok().flatten().is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_enrolled",
            "this till is not enrolled with a hub; run `storesync-agent enroll` first",
        ));
    }
    let mut served = s.sync_served.subscribe();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(q.wait_s.min(3600));
    // Ask for a round and wait for it; keep asking while rounds make progress and something is still waiting.
    loop {
        let ticket = s.sync_requested.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        s.sync_now.notify_one();
        s.sync_wake.notify_one();
        let ok = tokio::time::timeout_at(deadline, served.wait_for(|n| *n >= ticket)).await.is_ok_and(|r| r.is_ok());
        let status = status_answer(&s).await?;
        if !ok || status.unsynced == 0 || status.last_error.is_some() {
            return Ok(Json(status));
        }
    }
}
/// `POST /v1/update/check`: asks the hub for a release now and answers what came of it (`installing` means the
/// agent restarts into the new version as soon as this answer is sent).
#[utoipa::path(post, path = "/v1/update/check", tag = "sync",
    responses(
        (status = 200, description = "`{\"outcome\",\"version\"?,\"reason\"?,\"detail\"?,\"checked_at\"}`; `outcome` \
            is `disabled`, \
            `not_enrolled`, `up_to_date`, `refused`, `installing`, `unreachable` or `failed`", body = Object),
        (status = 503, description = "`stopping`: the agent is stopping", body = ErrorBody),
    ))]
pub(super) async fn update_check(
    State(s): State<Arc<AgentState>>,
) -> Result<Json<crate::update::CheckResult>, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let busy = || ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", "the agent is stopping");
    s.update_checks.send(tx).await.map_err(|_| busy())?;
    Ok(Json(rx.await.map_err(|_| busy())?))
}
