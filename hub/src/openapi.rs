//! The hub's OpenAPI 3.1 document, served without authentication at `GET /openapi.json` (it holds no data).
//!
//! Completeness: the router and this document are built from one list, [`crate::api::routes`], where every route
//! is registered with `utoipa_axum::routes!` from its `#[utoipa::path]` handler; [`crate::fleet::routes`] is
//! merged into it the same way. The tests below check the rest: every documented (method, path) is served (it
//! reaches a handler, not the fallback, and is not 405); an operation that declares a security scheme answers 401
//! without a credential and one that declares none does not; a documented path answers 405 to every method the
//! document does not give it; and the endpoint table in docs/API.md (between `<!-- endpoints: hub -->` and
//! `<!-- /endpoints -->`) names exactly the document's endpoints, as does every `` `METHOD /path` `` the hub API
//! section of docs/API.md mentions.
//!
//! Adding an endpoint (here or in another module such as `fleet`):
//! 1. annotate its handler with `#[utoipa::path(METHOD, path = "...", tag = "...", params(...),
//!    request_body = ..., security(("admin_token" = [])) or security(("till_credential" = [])),
//!    responses((status = 200, ...), ..., AdminRefusals or TillRefusals))`; request and response bodies derive
//!    `utoipa::ToSchema` (a `serde_json::Value` answer is `body = Object` with its fields in the description);
//! 2. register it with `.routes(utoipa_axum::routes!(handler))` on an `OpenApiRouter<AppState>` (handlers of one
//!    path, and only those, may share one `routes!`), never with a plain `.route()`;
//! 3. add a row to the endpoint table in docs/API.md.

use std::sync::LazyLock;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use storesync_shared::wire::ErrorBody;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::ApiError;

/// The security scheme of the admin endpoints: `Authorization: Bearer <admin token>`.
pub const ADMIN_TOKEN: &str = "admin_token";
/// The security scheme of the till endpoints: `Authorization: Bearer sst_…` (a till credential).
pub const TILL_CREDENTIAL: &str = "till_credential";

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            ADMIN_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The hub's admin token: `STORESYNC_ADMIN_TOKEN`, or the generated `<data-dir>/admin.token`",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            TILL_CREDENTIAL,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("sst_…")
                    .description(Some(
                        "A till credential from `POST /v1/enroll`; the store and till of a request are the \
                         credential's, never a request field",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "storesync hub",
        description = "The head-office hub: till enrolment, exactly-once journal ingest, store documents (CRDT \
                       sync, head-office prices and stock), agent releases and staged rollouts, and the admin \
                       views. Every error is `{\"error\": code, \"detail\": text}` (upload refusals may add \
                       `expected_seq` or `seq`). See docs/API.md."
    ),
    modifiers(&SecuritySchemes),
    components(schemas(ErrorBody)),
    tags(
        (name = "till", description = "Enrolment and sync, for tills (a till credential)"),
        (name = "admin", description = "Head office (the admin token)"),
        (name = "releases", description = "Agent releases and staged rollouts"),
        (name = "operations", description = "Health, metrics and this document"),
    )
)]
struct ApiDoc;

/// The refusals every admin endpoint can answer, besides its own.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only describes responses; `ApiError` makes them.
pub(crate) enum AdminRefusals {
    /// `unauthorized`: no admin token, or a wrong one (`WWW-Authenticate: Bearer`)
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `storage_busy` (with `Retry-After`) or `storage_unavailable`
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The refusals every till endpoint can answer, besides its own.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only describes responses; `ApiError` makes them.
pub(crate) enum TillRefusals {
    /// `unauthorized`: a missing, unknown or revoked credential (`WWW-Authenticate: Bearer`)
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `rate_limited`: the till is over its request rate; `overloaded` (upload and document sync): the hub sheds
    /// load (both with `Retry-After`)
    #[response(status = 429)]
    RateLimited(ErrorBody),
    /// `storage_busy` (with `Retry-After`) or `storage_unavailable`
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

// Documentation only: the schema of a raw body (`application/octet-stream`, `application/gzip`).
/// Raw bytes.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // Only describes a body.
pub(crate) struct Binary(Vec<u8>);

// Documentation only: `admin_upload_release` reads the parts itself.
/// A release upload: `manifest`, `signature` (optional) and `archive`; nothing is stored on any refusal.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Only describes the form.
pub(crate) struct ReleaseUpload {
    /// The exact bytes of `manifest.json` (at most 8 KiB).
    #[schema(value_type = String, format = Binary)]
    manifest: Vec<u8>,
    /// The base64 text of `manifest.sig`.
    signature: Option<String>,
    /// The signed `.tar.gz`.
    #[schema(value_type = String, format = Binary)]
    archive: Vec<u8>,
}

/// The document's info, security schemes and tags, before the routes add their operations.
pub(crate) fn base() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// The hub's OpenAPI document: the operations of every route [`crate::api::router`] serves.
pub fn document() -> utoipa::openapi::OpenApi {
    crate::api::routes(&crate::api::BodyLimits::default()).into_openapi()
}

/// The served document, encoded once.
static DOCUMENT: LazyLock<Option<String>> = LazyLock::new(|| document().to_json().ok());

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The hub's OpenAPI 3.1 document", body = Object)))]
pub(crate) async fn openapi_json() -> Response {
    match DOCUMENT.as_deref() {
        Some(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        None => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the document cannot be encoded")
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use axum::Router;
    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use tower::ServiceExt as _;
    use utoipa::openapi::path::Operation;

    use storesync_shared::apidoc::{self, Endpoint, sample_path};

    use super::*;
    use crate::api::AppState;
    use crate::{EnrollLimits, ManualClock};

    /// docs/API.md, whose hub API section the tests hold to the document.
    const API_MD: &str = include_str!("../../docs/API.md");

    /// `(METHOD, /path)` pairs.
    type Endpoints = BTreeSet<Endpoint>;

    /// Every documented endpoint with the security schemes its operation names.
    fn documented() -> BTreeMap<Endpoint, BTreeSet<String>> {
        let doc = document();
        apidoc::operations(&doc)
            .into_iter()
            .map(|(method, path, op)| ((method.to_owned(), path.to_owned()), schemes(op)))
            .collect()
    }

    fn schemes(op: &Operation) -> BTreeSet<String> {
        let value = serde_json::to_value(op.security.clone().unwrap_or_default()).unwrap();
        value
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|req| req.as_object())
            .flat_map(|req| req.keys().cloned())
            .collect()
    }

    /// The hub API section of docs/API.md.
    fn api_md_section() -> &'static str {
        apidoc::section(API_MD, "## The hub API").expect("docs/API.md has a hub API section")
    }

    /// Sends one bodiless request without credentials; answers the status and the `error` code of a JSON body.
    async fn send(app: &Router, method: &str, path: &str) -> (StatusCode, Option<String>) {
        let req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 22).await.unwrap();
        let code = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned));
        (status, code)
    }

    /// Runs `check` against the real router on a fresh database.
    fn with_router(check: impl AsyncFnOnce(&Router)) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(crate::open_storage(dir.path()).unwrap());
        let state = AppState::new(
            storage,
            "admin-token".into(),
            Arc::new(ManualClock::new(1_800_000_000)),
            EnrollLimits::default(),
        );
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(check(&crate::api::router(state)));
    }

    #[test]
    fn every_documented_endpoint_reaches_a_handler_behind_its_security() {
        let endpoints = documented();
        assert!(endpoints.len() >= 30, "{endpoints:?}");
        let known: BTreeSet<String> = [ADMIN_TOKEN, TILL_CREDENTIAL].map(str::to_owned).into();
        with_router(async |app| {
            for ((method, path), schemes) in &endpoints {
                assert!(schemes.is_subset(&known), "{method} {path}: unknown security scheme in {schemes:?}");
                let (status, code) = send(app, method, &sample_path(path)).await;
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: documented, not routed");
                assert!(
                    !(status == StatusCode::NOT_FOUND && code.as_deref() == Some("not_found")),
                    "{method} {path}: documented, but it reaches the fallback"
                );
                if schemes.is_empty() {
                    assert_ne!(
                        status,
                        StatusCode::UNAUTHORIZED,
                        "{method} {path} needs a credential it does not document"
                    );
                } else {
                    assert_eq!(
                        (status, code.as_deref()),
                        (StatusCode::UNAUTHORIZED, Some("unauthorized")),
                        "{method} {path} documents {schemes:?} but answers without a credential"
                    );
                }
            }
            // The check can fail: the fallback is what an unknown endpoint gets.
            assert_eq!(send(app, "GET", "/v1/no-such-thing").await, (StatusCode::NOT_FOUND, Some("not_found".into())));
        });
    }

    #[test]
    fn a_documented_path_serves_no_other_method() {
        let endpoints: Endpoints = documented().into_keys().collect();
        with_router(async |app| {
            for (method, path) in apidoc::other_methods(&endpoints) {
                let (status, _) = send(app, &method, &sample_path(&path)).await;
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is served but not documented");
            }
        });
    }

    #[test]
    fn the_api_md_endpoint_table_is_the_document() {
        let section = api_md_section();
        let rows: BTreeMap<Endpoint, Vec<String>> = apidoc::endpoint_table(section, "hub")
            .unwrap_or_else(|e| panic!("docs/API.md: {e}"))
            .into_iter()
            .map(|row| (row.endpoint(), row.rest))
            .collect();
        let table: Endpoints = rows.keys().cloned().collect();
        let documented = documented();
        let doc: Endpoints = documented.keys().cloned().collect();
        let missing: Vec<_> = doc.difference(&table).collect();
        let extra: Vec<_> = table.difference(&doc).collect();
        assert!(missing.is_empty(), "in the OpenAPI document but not in docs/API.md's hub table: {missing:?}");
        assert!(extra.is_empty(), "in docs/API.md's hub table but not in the OpenAPI document: {extra:?}");
        for (endpoint, schemes) in &documented {
            let auth = match schemes.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                [] => "none",
                [ADMIN_TOKEN] => "admin",
                [TILL_CREDENTIAL] => "till",
                _ => "several",
            };
            assert_eq!(
                rows[endpoint].first().map(String::as_str),
                Some(auth),
                "{endpoint:?}: docs/API.md's auth column differs from the document"
            );
        }
        let unknown: Vec<_> = apidoc::mentioned(section).into_iter().filter(|e| !doc.contains(e)).collect();
        assert!(unknown.is_empty(), "docs/API.md's hub API section names endpoints the document lacks: {unknown:?}");
    }

    #[test]
    fn the_served_document_is_the_document_and_needs_no_token() {
        with_router(async |app| {
            let req = Request::get("/openapi.json").body(Body::empty()).unwrap();
            let res = app.clone().oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let bytes = axum::body::to_bytes(res.into_body(), 1 << 22).await.unwrap();
            let served: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(served, serde_json::to_value(document()).unwrap());
            let schemes = &served["components"]["securitySchemes"];
            assert_eq!(schemes[ADMIN_TOKEN]["scheme"], "bearer");
            assert_eq!(schemes[TILL_CREDENTIAL]["scheme"], "bearer");
            assert!(served["components"]["schemas"]["UploadRequest"]["properties"]["events"].is_object());
        });
    }

    #[test]
    fn every_schema_reference_resolves() {
        let doc = serde_json::to_value(document()).unwrap();
        assert!(!apidoc::refs(&doc).is_empty());
        let unresolved = apidoc::unresolved_refs(&doc);
        assert!(unresolved.is_empty(), "these references name no schema of the document: {unresolved:?}");
    }
}
