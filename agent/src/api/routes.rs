//! The one list of the POS API's routes, and what is built from it: the router and the OpenAPI document.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, MAX_BODY_BYTES};
use super::{journal, on_demand, openapi, reads, reservations, status, writes};
use crate::AgentState;

/// The POS API, ready to serve.
pub fn router(state: Arc<AgentState>) -> Router {
    // Install the metrics recorder before the first request records anything.
    storesync_shared::metrics::handle();
    let (router, doc) = routes().split_for_parts();
    openapi::publish(doc);
    router
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The POS API's OpenAPI document: the operations of every route [`router`] serves.
pub fn document() -> utoipa::openapi::OpenApi {
    openapi::finish(routes().into_openapi())
}

/// Every route of the POS API with its OpenAPI operation: the one list [`router`] and [`document`] are both built
/// from. A new endpoint is a handler with a `#[utoipa::path]` attribute added here with `routes!(handler)`
/// (handlers of one path, and only those, may share a `routes!`), and a line in the endpoint table of docs/API.md;
/// the tests in `api/openapi.rs` fail until all three agree.
fn routes() -> OpenApiRouter<Arc<AgentState>> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(writes::post_sale))
        .routes(routes!(writes::post_return))
        .routes(routes!(writes::post_void))
        .routes(routes!(writes::post_transfer))
        .routes(routes!(writes::post_adjustment))
        .routes(routes!(reservations::list))
        .routes(routes!(reservations::picked))
        .routes(routes!(reservations::cancel))
        .routes(routes!(reads::stock))
        .routes(routes!(reads::price))
        .routes(routes!(journal::journal))
        .routes(routes!(status::status))
        .routes(routes!(on_demand::sync_now))
        .routes(routes!(on_demand::update_check))
        .routes(routes!(status::metrics_endpoint))
        .routes(routes!(status::status_page))
        .routes(routes!(openapi::openapi_json))
}
