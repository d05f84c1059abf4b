//! The hub's HTTP surface (`/v1/...`, the dashboard, health, metrics and the OpenAPI document).
//!
//! Design note: handlers are thin. They authenticate (`auth`: a till credential or the admin token), parse the
//! body with [`JsonBody`] (whose rejections use the same `{"error","detail"}` body as [`ApiError`]), call storage
//! or the store documents on the blocking pool, and answer a typed body (`#[derive(Serialize, ToSchema)]`, made
//! from the domain type with `From`). The store and till of every till request come from the credential alone.
//! Every error a client sees is an [`ApiError`] with a stable code; internal errors are logged and shown as
//! `internal`/`storage_unavailable` without their details.
//!
//! Layout: `till` and `admin` hold the handlers, one file per resource; `routes` lists every route once
//! (the router and the OpenAPI document are both built from it); `error`, `auth`, `state`, `check` and
//! `schema` are the leaves they share. Children never import this file.

pub(crate) mod admin;
pub(crate) mod auth;
pub mod backpressure;
pub(crate) mod check;
pub(crate) mod error;
pub mod openapi;
pub(crate) mod ops;
pub(crate) mod routes;
pub(crate) mod schema;
pub(crate) mod state;
#[cfg(test)]
mod tests;
pub(crate) mod till;

use axum::Router;
use axum::http::StatusCode;

pub use admin::enrollment::{EnrollmentCode, issue_enrollment};
pub use auth::{AdminAuth, TillAuth};
pub use error::{ApiError, JsonBody};
pub use state::{AppState, HttpSettings};

/// Builds the hub's routes on `state`.
pub fn router(state: AppState) -> Router {
    // Install the metrics recorder before the first request records anything.
    storesync_shared::metrics::handle();
    let (router, _) = openapi::with_document(routes::all(&routes::BodyLimits::of(&state))).split_for_parts();
    router
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(state)
}
