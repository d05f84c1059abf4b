//! The POS API on 127.0.0.1: journal writes, stock and price lookups, the journal itself, and status.
//!
//! It has no authentication of its own: it listens on loopback only, for the POS on the same machine. Every error
//! is `{"error": code, "detail": text}`; a write is answered only after its COMMIT returned.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use storesync_shared::event::{BodyType, parse_request};
use storesync_shared::wire::{JournalEvent, Receipt};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::AgentState;
use crate::journal::{AppendError, AppendOutcome, journal_page, journal_status};

/// The largest request body the POS API reads.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// The most journal entries one page returns.
pub const MAX_PAGE: usize = 1000;

/// Every error this API answers with.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError { status, code, detail: detail.into() }
    }

    fn internal(e: anyhow::Error) -> ApiError {
        tracing::error!(error = %format!("{e:#}"), "internal error in the POS API");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the agent's log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("storesync_agent_errors_total", "code" => self.code).increment(1);
        (self.status, Json(json!({"error": self.code, "detail": self.detail}))).into_response()
    }
}

impl From<AppendError> for ApiError {
    fn from(e: AppendError) -> ApiError {
        match e {
            AppendError::Conflict { code, detail } => ApiError::new(StatusCode::CONFLICT, code, detail),
            AppendError::Invalid { code, detail } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail),
            AppendError::Unavailable(detail) => {
                tracing::error!(error = %detail, "journal unavailable; refusing the write");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "journal_unavailable", detail)
            }
        }
    }
}

/// The raw body, with size-limit rejections in our error shape.
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(Body(b)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
            )),
            Err(e) => Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text())),
        }
    }
}

pub fn router(state: Arc<AgentState>) -> Router {
    // Install the metrics recorder before the first request records anything.
    storesync_shared::metrics::handle();
    Router::new()
        .route("/v1/sales", post(|s, b| write(s, BodyType::Sale, b)))
        .route("/v1/returns", post(|s, b| write(s, BodyType::Return, b)))
        .route("/v1/voids", post(|s, b| write(s, BodyType::Void, b)))
        .route("/v1/transfers", post(|s, b| write(s, BodyType::Transfer, b)))
        .route("/v1/adjustments", post(|s, b| write(s, BodyType::Adjustment, b)))
        .route("/v1/stock/{sku}", get(stock))
        .route("/v1/prices/{sku}", get(price))
        .route("/v1/journal", get(journal))
        .route("/v1/status", get(status))
        .route("/v1/sync/now", post(sync_now))
        .route("/v1/update/check", post(update_check))
        .route("/metrics", get(metrics_endpoint))
        .route("/", get(|| async { axum::response::Html(STATUS_PAGE) }))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn write(State(s): State<Arc<AgentState>>, ty: BodyType, Body(bytes): Body) -> Result<Response, ApiError> {
    let (event_id, body) = parse_request(ty, &bytes).map_err(|e| {
        let status =
            if e.code == "malformed_json" { StatusCode::BAD_REQUEST } else { StatusCode::UNPROCESSABLE_ENTITY };
        ApiError::new(status, e.code, e.detail)
    })?;
    let (status, receipt): (StatusCode, Receipt) = match s.journal.append(event_id, body).await? {
        AppendOutcome::Created(r) => {
            s.sync_wake.notify_one();
            (StatusCode::CREATED, r)
        }
        AppendOutcome::Existing(r) => (StatusCode::OK, r),
    };
    Ok((status, Json(receipt)).into_response())
}

async fn blocking<R: Send + 'static>(f: impl FnOnce() -> anyhow::Result<R> + Send + 'static) -> Result<R, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(e.into()))?.map_err(ApiError::internal)
}

fn check_sku(sku: &str) -> Result<(), ApiError> {
    storesync_shared::event::check_sku(sku, "sku").map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.code, e.detail))
}

#[derive(Serialize)]
struct StockAnswer {
    sku: String,
    on_hand: i64,
}

async fn stock(State(s): State<Arc<AgentState>>, Path(sku): Path<String>) -> Result<Json<StockAnswer>, ApiError> {
    check_sku(&sku)?;
    let reads = s.journal.reads().clone();
    let on_hand = blocking(move || Ok(reads.on_hand(&sku)).map(|n| (sku, n))).await?;
    Ok(Json(StockAnswer { sku: on_hand.0, on_hand: on_hand.1 }))
}

async fn price(State(s): State<Arc<AgentState>>, Path(sku): Path<String>) -> Result<Response, ApiError> {
    check_sku(&sku)?;
    let reads = s.journal.reads().clone();
    let key = sku.clone();
    let view = blocking(move || Ok(reads.price(&key, OffsetDateTime::now_utc()))).await?;
    let Some(current) = view.current else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no_price", format!("no price in force for sku {sku:?}")));
    };
    let next = view
        .next
        .map(|n| json!({"price_minor": n.price_minor, "currency": n.currency, "effective_from": n.effective_from}));
    Ok(Json(json!({
        "sku": sku,
        "price_minor": current.price_minor,
        "currency": current.currency,
        "effective_from": current.effective_from,
        "next": next,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JournalQuery {
    #[serde(default)]
    after_seq: u64,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

#[derive(Serialize)]
struct JournalPage {
    events: Vec<JournalEvent>,
}

async fn journal(
    State(s): State<Arc<AgentState>>,
    q: Result<Query<JournalQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<JournalPage>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    if !(1..=MAX_PAGE).contains(&q.limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    let reads = s.journal.reads().clone();
    let events = blocking(move || reads.with(|c| journal_page(c, q.after_seq, q.limit))).await?;
    Ok(Json(JournalPage { events }))
}

async fn status(State(s): State<Arc<AgentState>>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(status_value(&s).await?))
}

/// The status document: the journal's figures plus the sync state.
pub async fn status_value(s: &Arc<AgentState>) -> Result<serde_json::Value, ApiError> {
    let reads = s.journal.reads().clone();
    let js = blocking(move || reads.with(journal_status)).await?;
    let sync = s.sync_status();
    let mut v = serde_json::to_value(&js).map_err(|e| ApiError::internal(e.into()))?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("hub".into(), json!(sync.hub));
        obj.insert("hub_url".into(), json!(sync.hub_url));
        obj.insert("last_sync_at".into(), json!(sync.last_sync_at.and_then(|t| t.format(&Rfc3339).ok())));
        obj.insert("last_error".into(), json!(sync.last_error));
        obj.insert("offline_since".into(), json!(sync.offline_since.and_then(|t| t.format(&Rfc3339).ok())));
        obj.insert("version".into(), json!(crate::update::VERSION));
        obj.insert("target".into(), json!(crate::update::TARGET));
        let upd = s.update.lock().map(|u| u.clone()).unwrap_or_default();
        let (dir, cfg) = (s.data_dir.clone(), s.update_cfg.clone());
        let update = blocking(move || Ok(crate::update::status_json(&dir, &cfg, &upd))).await?;
        obj.insert("update".into(), update);
        obj.insert("queue_depth".into(), json!(s.journal.queue_depth()));
        obj.insert("epoch".into(), json!(s.journal.epoch()));
        let (groups, events) = s.journal.writer_stats().get();
        obj.insert("writer".into(), json!({"group_commits": groups, "events": events}));
    }
    Ok(v)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncNowQuery {
    #[serde(default = "default_sync_wait")]
    wait_s: u64,
}

fn default_sync_wait() -> u64 {
    60
}

/// `POST /v1/sync/now?wait_s=N`: syncs at once, waiting up to `wait_s` seconds for the backlog to drain or for
/// the hub to answer with an error, and answers the status.
async fn sync_now(
    State(s): State<Arc<AgentState>>,
    q: Result<Query<SyncNowQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
        let v = status_value(&s).await?;
        if !ok || v["unsynced"].as_u64() == Some(0) || v["last_error"].is_string() {
            return Ok(Json(v));
        }
    }
}

/// `POST /v1/update/check`: asks the hub for a release now and answers what came of it (`installing` means the
/// agent restarts into the new version as soon as this answer is sent).
async fn update_check(State(s): State<Arc<AgentState>>) -> Result<Json<crate::update::CheckResult>, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let busy = || ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", "the agent is stopping");
    s.update_checks.send(tx).await.map_err(|_| busy())?;
    Ok(Json(rx.await.map_err(|_| busy())?))
}

/// The store staff's status page (`GET /`): one HTML file, no build step, that polls `/v1/status`.
const STATUS_PAGE: &str = include_str!("status.html");

/// `GET /metrics`: Prometheus text. The journal's figures are read at scrape time.
async fn metrics_endpoint(State(s): State<Arc<AgentState>>) -> Result<Response, ApiError> {
    let reads = s.journal.reads().clone();
    let js = blocking(move || reads.with(journal_status)).await?;
    metrics::gauge!("storesync_agent_unsynced_events").set(js.unsynced as f64);
    metrics::gauge!("storesync_agent_oldest_unsynced_age_seconds").set(js.oldest_unsynced_age_s as f64);
    metrics::gauge!("storesync_agent_journal_last_seq").set(js.last_seq as f64);
    metrics::gauge!("storesync_agent_writer_queue_depth").set(s.journal.queue_depth() as f64);
    let ct = [(axum::http::header::CONTENT_TYPE, storesync_shared::metrics::CONTENT_TYPE)];
    Ok((ct, storesync_shared::metrics::render()).into_response())
}
