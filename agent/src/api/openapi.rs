//! The POS API's OpenAPI 3.1 document, served at `GET /openapi.json` (loopback and unauthenticated, like the rest
//! of the POS API).
//!
//! Completeness: the router and this document are built from one list, `api::routes::routes`, where every route is
//! registered with `utoipa_axum::routes!` from its `#[utoipa::path]` handler; this file holds the document's frame
//! ([`base`]), its finishing touches ([`finish`]), and the handler that serves it. The router publishes the
//! document it was built with ([`publish`]), so this file needs nothing of the route list. The tests below check
//! the rest: every documented (method, path) is served (it reaches a handler, not the fallback, and is not 405), a
//! documented path answers 405 to every method the document does not give it, and the endpoint table in
//! docs/API.md (between `<!-- endpoints: agent -->` and `<!-- /endpoints -->`) names exactly the document's
//! endpoints, as does every `` `METHOD /path` `` the POS API section of docs/API.md mentions.

use std::sync::OnceLock;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};

use storesync_shared::wire::{ErrorBody, Receipt};

use super::error::ApiError;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "storesync agent: POS API",
        description = "The store agent's POS API on 127.0.0.1: journal writes (answered after their COMMIT), stock \
                       and price lookups, the journal, status and sync. Loopback only, no authentication. Every \
                       error is `{\"error\": code, \"detail\": text}`. See docs/API.md."
    ),
    components(schemas(Receipt, ErrorBody)),
    tags(
        (name = "writes", description = "Journal writes: each answers a receipt once its COMMIT returned"),
        (name = "reads", description = "Stock, prices, the journal and the status, from the local journal and cache"),
        (name = "sync", description = "Sync with the hub and self-update, on demand"),
        (name = "operations", description = "The staff status page, metrics and this document"),
    )
)]
struct ApiDoc;

/// The document's info and tags, before the routes add their operations.
pub(super) fn base() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = crate::version::VERSION.to_owned();
    doc
}

/// The POS write bodies: `event_id` travels beside the body ([`storesync_shared::event::parse_request`] takes it
/// out before the body is read), so their schemas gain it here.
const WRITE_BODIES: [&str; 5] = ["SaleBody", "ReturnBody", "VoidBody", "TransferBody", "AdjustmentBody"];

/// The routes' document made whole: the write bodies gain their `event_id`.
pub(super) fn finish(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    if let Some(components) = doc.components.as_mut() {
        for name in WRITE_BODIES {
            if let Some(RefOr::T(Schema::Object(obj))) = components.schemas.get_mut(name) {
                let event_id = ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
                    .description(Some(
                        "The event's id; the agent assigns one when it is absent. A write repeated \
                                       with the same id and body is journaled once.",
                    ));
                obj.properties.insert("event_id".to_owned(), event_id.into());
            }
        }
    }
    doc
}

/// The served document, encoded once (`None`: it cannot be encoded).
static SERVED: OnceLock<Option<String>> = OnceLock::new();

/// Makes `doc` (the routes' document, before [`finish`]) the one `GET /openapi.json` serves. The first router
/// built publishes it; every router is built from the same routes, so later ones would publish the same.
pub(super) fn publish(doc: utoipa::openapi::OpenApi) {
    SERVED.get_or_init(|| finish(doc).to_json().ok());
}

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The POS API's OpenAPI 3.1 document", body = Object)))]
pub(super) async fn openapi_json() -> Response {
    match SERVED.get().and_then(Option::as_deref) {
        Some(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        None => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the document cannot be encoded")
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use axum::Router;
    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use tower::ServiceExt as _;

    use storesync_apidoc::{self as apidoc, Endpoint, sample_path};

    use crate::AgentState;
    use crate::api::{document, router};
    use crate::journal::{IdentityClaim, Journal};

    /// docs/API.md, whose POS API section the tests hold to the document.
    const API_MD: &str = include_str!("../../../docs/API.md");

    /// `(METHOD, /path)` pairs.
    type Endpoints = BTreeSet<Endpoint>;

    fn documented() -> Endpoints {
        let doc = document();
        apidoc::operations(&doc).into_iter().map(|(method, path, _)| (method.to_owned(), path.to_owned())).collect()
    }

    /// The POS API section of docs/API.md.
    fn api_md_section() -> &'static str {
        apidoc::section(API_MD, "## The POS API").expect("docs/API.md has a POS API section")
    }

    fn state(dir: &std::path::Path) -> (Arc<AgentState>, std::thread::JoinHandle<()>) {
        let claim = IdentityClaim { store_id: Some("S1".into()), till_id: Some("T1".into()) };
        let (journal, writer) = Journal::open(dir, &claim).unwrap();
        // No update task listens: `POST /v1/update/check` answers 503 `stopping` at once.
        let (update_checks, _) = tokio::sync::mpsc::channel(1);
        let state =
            Arc::new(AgentState::new(journal, dir.to_owned(), crate::update::UpdateConfig::default(), update_checks));
        (state, writer)
    }

    /// Sends one bodiless request; answers the status and the `error` code of a JSON error body.
    async fn send(app: &Router, method: &str, path: &str) -> (StatusCode, Option<String>) {
        let req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        let code = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned));
        (status, code)
    }

    /// Runs `check` against the real router on a fresh journal.
    fn with_router(check: impl AsyncFnOnce(&Router)) {
        let dir = tempfile::tempdir().unwrap();
        let (state, writer) = state(dir.path());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(check(&router(state)));
        writer.join().unwrap();
    }

    #[test]
    fn every_documented_endpoint_reaches_a_handler() {
        let endpoints = documented();
        assert!(endpoints.len() >= 14, "{endpoints:?}");
        with_router(async |app| {
            for (method, path) in &endpoints {
                let (status, code) = send(app, method, &sample_path(path)).await;
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: documented, not routed");
                assert!(
                    !(status == StatusCode::NOT_FOUND && code.as_deref() == Some("not_found")),
                    "{method} {path}: documented, but it reaches the fallback"
                );
            }
            // The check can fail: the fallback is what an unknown endpoint gets.
            assert_eq!(send(app, "GET", "/v1/no-such-thing").await, (StatusCode::NOT_FOUND, Some("not_found".into())));
        });
    }

    #[test]
    fn a_documented_path_serves_no_other_method() {
        let endpoints = documented();
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
        let table: Endpoints = apidoc::endpoint_table(section, "agent")
            .unwrap_or_else(|e| panic!("docs/API.md: {e}"))
            .iter()
            .map(apidoc::TableRow::endpoint)
            .collect();
        let doc = documented();
        let missing: Vec<_> = doc.difference(&table).collect();
        let extra: Vec<_> = table.difference(&doc).collect();
        assert!(missing.is_empty(), "in the OpenAPI document but not in docs/API.md's agent table: {missing:?}");
        assert!(extra.is_empty(), "in docs/API.md's agent table but not in the OpenAPI document: {extra:?}");
        let unknown: Vec<_> = apidoc::mentioned(section).into_iter().filter(|e| !doc.contains(e)).collect();
        assert!(unknown.is_empty(), "docs/API.md's POS API section names endpoints the document lacks: {unknown:?}");
    }

    #[test]
    fn the_served_document_is_the_document() {
        with_router(async |app| {
            let req = Request::get("/openapi.json").body(Body::empty()).unwrap();
            let res = app.clone().oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let bytes = axum::body::to_bytes(res.into_body(), 1 << 22).await.unwrap();
            let served: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(served, serde_json::to_value(document()).unwrap());
            let sale = &served["components"]["schemas"]["SaleBody"]["properties"];
            assert_eq!(sale["event_id"]["format"], "uuid", "write bodies document event_id");
            assert!(sale["lines"].is_object());
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
