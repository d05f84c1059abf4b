//! The hub's OpenAPI 3.1 document, served without authentication at `GET /openapi.json` (it holds no data).
//!
//! Completeness: the router and this document are built from one list, `routes::all`, where every route
//! is registered with `utoipa_axum::routes!` from its `#[utoipa::path]` handler, plus this document's own route
//! (`with_document`). Answers are typed (`#[derive(Serialize, utoipa::ToSchema)]`), so their shapes are derived,
//! not described. The tests below check the rest: every documented (method, path) is served (it reaches a handler,
//! not the fallback, and is not 405); an operation that declares a security scheme answers 401 without a credential
//! and one that declares none does not; a documented path answers 405 to every method the document does not give
//! it; and the endpoint table in docs/API.md (between `<!-- endpoints: hub -->` and `<!-- /endpoints -->`) names
//! exactly the document's endpoints, as does every `` `METHOD /path` `` the hub API section of docs/API.md
//! mentions.
//!
//! Adding an endpoint (in the `till` or `admin` module of its resource):
//! 1. annotate its handler with `#[utoipa::path(METHOD, path = "...", tag = "...", params(...),
//!    request_body = ..., security(("admin_token" = [])) or security(("till_credential" = [])),
//!    responses((status = 200, ...), ..., AdminRefusals or TillRefusals))`; request and response bodies derive
//!    `utoipa::ToSchema`;
//! 2. register it with `.routes(utoipa_axum::routes!(handler))` in the module's `routes()` (handlers of one path,
//!    and only those, may share one `routes!`), never with a plain `.route()`;
//! 3. add a row to the endpoint table in docs/API.md.

use std::sync::LazyLock;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;

use super::error::ApiError;
use super::routes::{self, BodyLimits};
pub use super::schema::{ADMIN_TOKEN, TILL_CREDENTIAL};
use super::state::AppState;

/// The hub's OpenAPI document: the operations of every route [`super::router`] serves.
pub fn document() -> utoipa::openapi::OpenApi {
    with_document(routes::all(&BodyLimits::default())).into_openapi()
}

/// `routes` with `GET /openapi.json` added.
pub(crate) fn with_document(routes: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    routes.routes(utoipa_axum::routes!(openapi_json))
}

/// The served document, encoded once.
static DOCUMENT: LazyLock<Option<String>> = LazyLock::new(|| document().to_json().ok());

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The hub's OpenAPI 3.1 document", body = Object)))]
async fn openapi_json() -> Response {
    match DOCUMENT.as_deref() {
        Some(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        None => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the document cannot be encoded")
            .into_response(),
    }
}
