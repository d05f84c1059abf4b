//! The POS API on 127.0.0.1: journal writes, stock and price lookups, the journal itself, and status.
//!
//! It has no authentication of its own: it listens on loopback only, for the POS on the same machine. Every error
//! is `{"error": code, "detail": text}`; a write is answered only after its COMMIT returned.
//!
//! Every route is a handler annotated with `#[utoipa::path]` and registered through [`routes`] with
//! `utoipa_axum::routes!`, so the router and the OpenAPI document ([`crate::openapi`], `GET /openapi.json`) are
//! built from one list and cannot name different endpoints.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use storesync_shared::event::{AdjustmentBody, BodyType, ReturnBody, SaleBody, TransferBody, VoidBody, parse_request};
use storesync_shared::wire::{ErrorBody, JournalEvent, Receipt};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, IntoResponses, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    let (router, _) = routes().split_for_parts();
    router
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Every route of the POS API with its OpenAPI operation: the one list [`router`] and [`crate::openapi::document`]
/// are both built from. A new endpoint is a handler with a `#[utoipa::path]` attribute added here with
/// `routes!(handler)` (handlers of one path, and only those, may share a `routes!`), and a line in the endpoint
/// table of docs/API.md; `crate::openapi`'s tests fail until all three agree.
pub(crate) fn routes() -> OpenApiRouter<Arc<AgentState>> {
    OpenApiRouter::with_openapi(crate::openapi::base())
        .routes(routes!(post_sale))
        .routes(routes!(post_return))
        .routes(routes!(post_void))
        .routes(routes!(post_transfer))
        .routes(routes!(post_adjustment))
        .routes(routes!(crate::reservations::list))
        .routes(routes!(crate::reservations::picked))
        .routes(routes!(crate::reservations::cancel))
        .routes(routes!(stock))
        .routes(routes!(price))
        .routes(routes!(journal))
        .routes(routes!(status))
        .routes(routes!(sync_now))
        .routes(routes!(update_check))
        .routes(routes!(metrics_endpoint))
        .routes(routes!(status_page))
        .routes(routes!(crate::openapi::openapi_json))
}

/// The answers every POS write shares, besides its own 409 and 422 (documentation only: [`write`] makes them).
#[derive(IntoResponses)]
#[allow(dead_code)]
enum WriteAnswers {
    /// Journaled (answered after its COMMIT)
    #[response(status = 201)]
    Created(Receipt),
    /// This `event_id` was journaled before with the same body; nothing was written
    #[response(status = 200)]
    Repeated(Receipt),
    /// `malformed_json` (the body is not JSON) or `bad_body` (it could not be read)
    #[response(status = 400)]
    BadBody(ErrorBody),
    /// `body_too_large`: over 256 KiB
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// `journal_unavailable`: the journal cannot be written; nothing was written
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// `POST /v1/sales`: journals a sale.
#[utoipa::path(post, path = "/v1/sales", tag = "writes",
    request_body(content = SaleBody, description = "A sale; may also carry `event_id`"),
    responses(
        WriteAnswers,
        (status = 409, description = "`event_id_conflict`: this `event_id` was journaled with another body",
            body = ErrorBody),
        (status = 422, description = "A rule is broken: `invalid_body`, `unknown_currency`, `tender_mismatch`, ... \
            (see docs/API.md)", body = ErrorBody),
    ))]
async fn post_sale(s: State<Arc<AgentState>>, b: Body) -> Result<Response, ApiError> {
    write(s, BodyType::Sale, b).await
}

/// `POST /v1/returns`: journals a return.
#[utoipa::path(post, path = "/v1/returns", tag = "writes",
    request_body(content = ReturnBody, description = "A return; may also carry `event_id`"),
    responses(
        WriteAnswers,
        (status = 409, description = "`event_id_conflict`: this `event_id` was journaled with another body",
            body = ErrorBody),
        (status = 422, description = "A rule is broken: `invalid_body`, `tender_mismatch`, `invalid_text`, ... \
            (see docs/API.md)", body = ErrorBody),
    ))]
async fn post_return(s: State<Arc<AgentState>>, b: Body) -> Result<Response, ApiError> {
    write(s, BodyType::Return, b).await
}

/// `POST /v1/voids`: cancels an earlier sale or return of this till.
#[utoipa::path(post, path = "/v1/voids", tag = "writes",
    request_body(content = VoidBody, description = "A void; may also carry `event_id`"),
    responses(
        WriteAnswers,
        (status = 409, description = "`event_id_conflict`, `already_voided`, `cannot_void_void` or `not_voidable`",
            body = ErrorBody),
        (status = 422, description = "`voided_event_not_found`, or a rule is broken (see docs/API.md)",
            body = ErrorBody),
    ))]
async fn post_void(s: State<Arc<AgentState>>, b: Body) -> Result<Response, ApiError> {
    write(s, BodyType::Void, b).await
}

/// `POST /v1/transfers`: journals a transfer out of or into this store (kind `transfer_out` or `transfer_in`).
#[utoipa::path(post, path = "/v1/transfers", tag = "writes",
    request_body(content = TransferBody, description = "A transfer; may also carry `event_id`"),
    responses(
        WriteAnswers,
        (status = 409, description = "`event_id_conflict`: this `event_id` was journaled with another body",
            body = ErrorBody),
        (status = 422, description = "A rule is broken: `invalid_body`, `invalid_sku`, `invalid_qty`, `invalid_text`, \
            ... \
            (see docs/API.md)", body = ErrorBody),
    ))]
async fn post_transfer(s: State<Arc<AgentState>>, b: Body) -> Result<Response, ApiError> {
    write(s, BodyType::Transfer, b).await
}

/// `POST /v1/adjustments`: journals a stock adjustment.
#[utoipa::path(post, path = "/v1/adjustments", tag = "writes",
    request_body(content = AdjustmentBody, description = "An adjustment; may also carry `event_id`"),
    responses(
        WriteAnswers,
        (status = 409, description = "`event_id_conflict`: this `event_id` was journaled with another body",
            body = ErrorBody),
        (status = 422, description = "A rule is broken: `invalid_body`, `invalid_sku`, `invalid_delta`, ... \
            (see docs/API.md)", body = ErrorBody),
    ))]
async fn post_adjustment(s: State<Arc<AgentState>>, b: Body) -> Result<Response, ApiError> {
    write(s, BodyType::Adjustment, b).await
}

async fn write(State(s): State<Arc<AgentState>>, ty: BodyType, Body(bytes): Body) -> Result<Response, ApiError> {
    let (event_id, body) = parse_request(ty, &bytes).map_err(|e| {
        let status =
            if e.code == "malformed_json" { StatusCode::BAD_REQUEST } else { StatusCode::UNPROCESSABLE_ENTITY };
        ApiError::new(status, e.code, e.detail)
    })?;
    let walk_in = crate::reservations::walk_in_skus(&body);
    let (status, receipt): (StatusCode, Receipt) = match s.journal.append(event_id, body).await? {
        AppendOutcome::Created(mut r) => {
            s.sync_wake.notify_one();
            if !walk_in.is_empty() {
                r.warnings = crate::reservations::receipt_warnings(&s, walk_in).await;
            }
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

#[derive(Serialize, ToSchema)]
struct StockAnswer {
    sku: String,
    /// Units on hand as this till sees them (may be negative: a sale is never refused for want of stock).
    on_hand: i64,
}

/// What a `sku` path parameter may be.
const SKU_PARAM: &str = "1 to 64 characters, no control characters";

/// `GET /v1/stock/{sku}`: stock on hand.
#[utoipa::path(get, path = "/v1/stock/{sku}", tag = "reads",
    params(("sku" = String, Path, description = SKU_PARAM)),
    responses(
        (status = 200, description = "On hand", body = StockAnswer),
        (status = 400, description = "`invalid_sku`", body = ErrorBody),
    ))]
async fn stock(State(s): State<Arc<AgentState>>, Path(sku): Path<String>) -> Result<Json<StockAnswer>, ApiError> {
    check_sku(&sku)?;
    let reads = s.journal.reads().clone();
    let on_hand = blocking(move || Ok(reads.on_hand(&sku)).map(|n| (sku, n))).await?;
    Ok(Json(StockAnswer { sku: on_hand.0, on_hand: on_hand.1 }))
}

/// A scheduled price.
#[derive(Serialize, ToSchema)]
struct PriceAt {
    price_minor: i64,
    currency: String,
    /// When it takes effect (UTC, RFC 3339).
    effective_from: String,
}

/// The price in force now and the next scheduled change.
#[derive(Serialize, ToSchema)]
struct PriceAnswer {
    sku: String,
    price_minor: i64,
    currency: String,
    /// When the price in force took effect (UTC, RFC 3339).
    effective_from: String,
    /// The next scheduled price, if any.
    next: Option<PriceAt>,
}

/// `GET /v1/prices/{sku}`: the price in force now and the next scheduled one.
#[utoipa::path(get, path = "/v1/prices/{sku}", tag = "reads",
    params(("sku" = String, Path, description = SKU_PARAM)),
    responses(
        (status = 200, description = "The price in force", body = PriceAnswer),
        (status = 400, description = "`invalid_sku`", body = ErrorBody),
        (status = 404, description = "`no_price`: no price is in force for this SKU", body = ErrorBody),
    ))]
async fn price(State(s): State<Arc<AgentState>>, Path(sku): Path<String>) -> Result<Json<PriceAnswer>, ApiError> {
    check_sku(&sku)?;
    let reads = s.journal.reads().clone();
    let key = sku.clone();
    let view = blocking(move || Ok(reads.price(&key, OffsetDateTime::now_utc()))).await?;
    let Some(current) = view.current else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no_price", format!("no price in force for sku {sku:?}")));
    };
    let next = view.next.map(|n| PriceAt {
        price_minor: n.price_minor,
        currency: n.currency,
        effective_from: n.effective_from,
    });
    Ok(Json(PriceAnswer {
        sku,
        price_minor: current.price_minor,
        currency: current.currency,
        effective_from: current.effective_from,
        next,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct JournalQuery {
    /// Answer the entries after this seq (default 0: from the start).
    #[serde(default)]
    after_seq: u64,
    /// The most entries to answer, 1 to 1000 (default 100).
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

#[derive(Serialize, ToSchema)]
struct JournalPage {
    /// In seq order.
    events: Vec<JournalEvent>,
}

/// `GET /v1/journal`: a page of this till's journal.
#[utoipa::path(get, path = "/v1/journal", tag = "reads",
    params(JournalQuery),
    responses(
        (status = 200, description = "Journal entries after `after_seq`, in seq order", body = JournalPage),
        (status = 400, description = "`bad_query`: an unknown parameter, or `limit` out of 1 to 1000",
            body = ErrorBody),
    ))]
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

/// The status document's description in the OpenAPI document.
const STATUS_DOC: &str = "The status: `store_id`, `till_id`, `journal_id`, `journal_len`, `last_seq`, `acked_seq`, \
    `unsynced`, `oldest_unsynced_age_s`, `hub` (`not_configured`, `reachable`, `unreachable`), `hub_url`, \
    `last_sync_at`, `last_error`, `offline_since`, `version`, `target`, `update`, `queue_depth`, `epoch`, \
    `writer`, `inbox` (the drop folder: backlog, parse errors, last error; see docs/API.md)";

/// `GET /v1/status`: the journal's figures and the sync state.
#[utoipa::path(get, path = "/v1/status", tag = "reads",
    responses((status = 200, description = STATUS_DOC, body = Object)))]
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
        obj.insert("inbox".into(), json!(s.inbox.view()));
    }
    Ok(v)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SyncNowQuery {
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
            body = Object),
        (status = 400, description = "`bad_query`", body = ErrorBody),
        (status = 409, description = "`not_enrolled`: this till has no hub credential", body = ErrorBody),
    ))]
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
#[utoipa::path(post, path = "/v1/update/check", tag = "sync",
    responses(
        (status = 200, description = "`{\"outcome\",\"version\"?,\"reason\"?,\"detail\"?,\"checked_at\"}`; `outcome` \
            is `disabled`, \
            `not_enrolled`, `up_to_date`, `refused`, `installing`, `unreachable` or `failed`", body = Object),
        (status = 503, description = "`stopping`: the agent is stopping", body = ErrorBody),
    ))]
async fn update_check(State(s): State<Arc<AgentState>>) -> Result<Json<crate::update::CheckResult>, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let busy = || ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", "the agent is stopping");
    s.update_checks.send(tx).await.map_err(|_| busy())?;
    Ok(Json(rx.await.map_err(|_| busy())?))
}

/// The store staff's status page (`GET /`): one HTML file, no build step, that polls `/v1/status`.
const STATUS_PAGE: &str = include_str!("status.html");

/// `GET /`: the status page for store staff.
#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, description = "The status page (HTML; it polls `/v1/status`)",
        body = String, content_type = "text/html")))]
async fn status_page() -> axum::response::Html<&'static str> {
    axum::response::Html(STATUS_PAGE)
}

/// `GET /metrics`: Prometheus text. The journal's figures are read at scrape time.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", body = String,
               content_type = "text/plain; version=0.0.4")))]
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
