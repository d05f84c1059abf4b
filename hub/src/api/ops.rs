//! Operations: `GET /healthz` (the hub answers) and `GET /metrics` (Prometheus text, behind the admin token: the
//! series name stores and tills).

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::AdminAuth;
use super::schema::AdminRefusals;
use super::state::AppState;

/// The answer of `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok`.
    status: &'static str,
}

/// `GET /healthz`: the hub answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The hub answers", body = Health)))]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `GET /metrics`: Prometheus text (the admin token: the series name stores and tills).
#[utoipa::path(get, path = "/metrics", tag = "operations", security(("admin_token" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition",
            body = String, content_type = "text/plain; version=0.0.4"),
        AdminRefusals,
    ))]
pub(crate) async fn metrics_endpoint(_: AdminAuth, State(state): State<AppState>) -> impl IntoResponse {
    state.http.admission.refresh();
    ([(header::CONTENT_TYPE, storesync_shared::metrics::CONTENT_TYPE)], storesync_shared::metrics::render())
}
