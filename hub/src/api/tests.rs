//! The HTTP surface against its OpenAPI document and docs/API.md: every documented endpoint is routed behind the
//! security it declares, no undocumented method is served, and docs/API.md's hub table is the document.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use tower::ServiceExt as _;
use utoipa::openapi::path::Operation;

use storesync_apidoc::{self as apidoc, Endpoint, sample_path};

use super::openapi::{ADMIN_TOKEN, TILL_CREDENTIAL, document};
use super::{AppState, router};
use crate::{EnrollLimits, ManualClock};

/// docs/API.md, whose hub API section the tests hold to the document.
const API_MD: &str = include_str!("../../../docs/API.md");

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
    let code =
        serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| v["error"].as_str().map(str::to_owned));
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
    rt.block_on(check(&router(state)));
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
                assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path} needs a credential it does not document");
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
