//! The hub's HTTP surface (`/v1/...`): enrolment, journal upload, till state, admin.
//!
//! Design note: handlers are thin. They authenticate (till credential or admin token), parse the body with
//! [`JsonBody`] (whose rejections use the same `{"error","detail"}` body as [`ApiError`]), and call one
//! [`Storage`] method on the blocking pool. The store and till of every till request come from the credential
//! alone. Every error a client sees is an [`ApiError`] with a stable code; internal errors are logged and shown as
//! `internal`/`storage_unavailable` without their details.
//!
//! Every route is a handler annotated with `#[utoipa::path]` and registered in [`routes`] with
//! `utoipa_axum::routes!`, so the router and the OpenAPI document ([`crate::openapi`], `GET /openapi.json`) are
//! built from one list; `crate::openapi` says how to add an endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use storesync_shared::crdt;
use storesync_shared::event::{MAX_QTY, MAX_TEXT_CHARS, check_currency, check_sku, parse_timestamp};
use storesync_shared::wire::{
    EPOCH_HEADER, EnrollRequest, EnrollResponse, EpochSnapshot, ErrorBody, MAX_BATCH_BYTES, TillState, UploadAck,
    UploadRefusal, UploadRequest,
};
use tracing::{error, info, warn};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::docs::{DocError, Docs, SyncLimits};
use crate::openapi::{AdminRefusals, TillRefusals};
use crate::rollout::{self, Transition};
use crate::secrets;
use crate::storage::{
    IngestError, NewEnrollment, NewMovement, NewRelease, NewRollout, NewUpdateReport, PutRelease, RedeemError,
    ReleaseOutcome, Rollout, RolloutError, Storage, StorageError, StoredEvent, TillId,
};
use crate::{Clock, Config, EnrollLimits, TillRate};

/// Enrolment codes live at most this long.
const MAX_TTL_S: i64 = 30 * 86_400;
const DEFAULT_TTL_S: i64 = 86_400;
const DEFAULT_EVENTS_LIMIT: usize = 100;
const MAX_EVENTS_LIMIT: usize = 1000;
/// The most bytes of a non-upload request body.
const MAX_SMALL_BODY: usize = 16 * 1024;
/// The most bytes of a head-office price or stock request body.
const MAX_ADMIN_BODY: usize = 2 * 1024 * 1024;

struct Inner {
    storage: Arc<dyn Storage>,
    docs: Docs,
    admin_token: String,
    clock: Arc<dyn Clock>,
    enroll_limits: EnrollLimits,
    /// One token bucket per till ("store/till"); bounded by the number of enrolled tills.
    till_rate: governor::DefaultKeyedRateLimiter<String>,
    /// Publisher keys uploads are checked against (empty: none are).
    release_keys: Vec<ed25519_dalek::VerifyingKey>,
    max_release_bytes: usize,
    /// When stores count as stale or offline in the fleet view.
    pub(crate) fleet: crate::fleet::FleetThresholds,
    /// Wakes the delivery workers after an ingest stored events.
    outbox_wake: Arc<tokio::sync::Notify>,
    /// Bounds the sync requests in flight; sheds the rest with 429 ([`crate::backpressure`]).
    admission: Arc<crate::backpressure::Admission>,
    /// Escrow and reservations ([`crate::reservations`]); `None` on a backend without them.
    reservations: Option<Arc<dyn crate::storage::reservations::ReservationStore>>,
    /// Stores whose documents' holds the reservation planner must bring up to date (bounded by the fleet: a set
    /// of store ids).
    holds_due: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(
        storage: Arc<dyn Storage>,
        admin_token: String,
        clock: Arc<dyn Clock>,
        enroll_limits: EnrollLimits,
    ) -> AppState {
        AppState::with_sync(storage, admin_token, clock, enroll_limits, SyncLimits::default(), TillRate::default())
    }

    /// [`AppState::new`] with explicit CRDT sync bounds.
    pub fn with_sync(
        storage: Arc<dyn Storage>,
        admin_token: String,
        clock: Arc<dyn Clock>,
        enroll_limits: EnrollLimits,
        sync: SyncLimits,
        till_rate: TillRate,
    ) -> AppState {
        let docs = Docs::new(storage.clone(), sync);
        let nz = |n: u32| std::num::NonZeroU32::new(n.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        let quota = governor::Quota::per_second(nz(till_rate.per_second)).allow_burst(nz(till_rate.burst));
        let till_rate = governor::RateLimiter::keyed(quota);
        AppState(Arc::new(Inner {
            storage,
            docs,
            admin_token,
            clock,
            enroll_limits,
            till_rate,
            release_keys: Vec::new(),
            max_release_bytes: crate::DEFAULT_MAX_RELEASE_BYTES,
            fleet: crate::fleet::FleetThresholds::default(),
            outbox_wake: Arc::new(tokio::sync::Notify::new()),
            admission: Arc::new(crate::backpressure::Admission::new(crate::backpressure::Settings::default())),
            reservations: None,
            holds_due: std::sync::Mutex::default(),
        }))
    }

    /// This state with escrow and reservations kept in `store`. Call it before the state is shared.
    ///
    /// # Errors
    /// A shared state.
    pub fn with_reservations(
        self,
        store: Option<Arc<dyn crate::storage::reservations::ReservationStore>>,
    ) -> anyhow::Result<AppState> {
        let mut inner = Arc::try_unwrap(self.0)
            .map_err(|_| anyhow::anyhow!("the reservation store must be set before the hub state is shared"))?;
        inner.reservations = store;
        Ok(AppState(Arc::new(inner)))
    }

    pub(crate) fn reservation_store(&self) -> Option<Arc<dyn crate::storage::reservations::ReservationStore>> {
        self.0.reservations.clone()
    }

    /// This state with other release settings. Call it before the state is shared (cloned or routed).
    ///
    /// # Errors
    /// A key that is not base64 of an ed25519 public key.
    pub fn with_releases(self, releases: &crate::ReleaseSettings) -> anyhow::Result<AppState> {
        let mut keys = Vec::with_capacity(releases.release_keys.len());
        for (i, k) in releases.release_keys.iter().enumerate() {
            keys.push(
                storesync_shared::release::parse_verifying_key(k)
                    .map_err(|e| anyhow::anyhow!("release_keys[{i}]: {e}"))?,
            );
        }
        let mut inner = Arc::try_unwrap(self.0)
            .map_err(|_| anyhow::anyhow!("release settings must be set before the hub state is shared"))?;
        inner.release_keys = keys;
        inner.max_release_bytes = releases.max_release_bytes.max(1);
        Ok(AppState(Arc::new(inner)))
    }

    /// This state with other fleet-view thresholds. Call it before the state is shared (cloned or routed).
    ///
    /// # Errors
    /// Thresholds out of order ([`crate::fleet::FleetThresholds::check`]), or a shared state.
    pub fn with_fleet(self, fleet: crate::fleet::FleetThresholds) -> anyhow::Result<AppState> {
        fleet.check().map_err(|e| anyhow::anyhow!("fleet thresholds: {e}"))?;
        let mut inner = Arc::try_unwrap(self.0)
            .map_err(|_| anyhow::anyhow!("fleet thresholds must be set before the hub state is shared"))?;
        inner.fleet = fleet;
        Ok(AppState(Arc::new(inner)))
    }

    /// This state with other sync backpressure bounds. Call it before the state is shared (cloned or routed).
    ///
    /// # Errors
    /// Bounds out of range ([`crate::backpressure::Settings::check`]), or a shared state.
    pub fn with_backpressure(self, settings: crate::backpressure::Settings) -> anyhow::Result<AppState> {
        settings.check().map_err(|e| anyhow::anyhow!("backpressure: {e}"))?;
        let mut inner = Arc::try_unwrap(self.0)
            .map_err(|_| anyhow::anyhow!("backpressure bounds must be set before the hub state is shared"))?;
        inner.admission = Arc::new(crate::backpressure::Admission::new(settings));
        Ok(AppState(Arc::new(inner)))
    }

    /// What the delivery workers need from this state ([`crate::outbox`]).
    pub fn delivery(&self, settings: crate::outbox::DeliverySettings) -> crate::outbox::Delivery {
        crate::outbox::Delivery {
            storage: self.0.storage.clone(),
            clock: self.0.clock.clone(),
            settings,
            wake: self.0.outbox_wake.clone(),
        }
    }

    pub(crate) fn outbox_wake(&self) -> &tokio::sync::Notify {
        &self.0.outbox_wake
    }

    /// Asks the reservation planner to bring `store`'s document holds up to date, and wakes it.
    pub(crate) fn holds_due(&self, store: String) {
        self.0.holds_due.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(store);
        self.0.outbox_wake.notify_waiters();
    }

    /// The stores [`AppState::holds_due`] named since the last call.
    pub(crate) fn take_holds_due(&self) -> std::collections::BTreeSet<String> {
        std::mem::take(&mut *self.0.holds_due.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The fleet view's thresholds.
    pub(crate) fn fleet_thresholds(&self) -> crate::fleet::FleetThresholds {
        self.0.fleet
    }

    /// Opens the data dir's database and admin token as `config` says.
    pub fn open(config: &Config) -> anyhow::Result<AppState> {
        let storage = crate::open_backend(&config.data_dir, config.database.as_ref())?;
        let admin_token = match &config.admin_token {
            Some(t) if !t.trim().is_empty() => t.trim().to_owned(),
            _ => {
                let path = config.data_dir.join("admin.token");
                let token = secrets::load_or_create_admin_token(&path)?;
                info!(path = %path.display(), "admin token is in this file");
                token
            }
        };
        AppState::with_sync(
            storage,
            admin_token,
            config.clock.clone(),
            config.enroll_limits,
            config.sync,
            config.till_rate,
        )
        .with_releases(&config.releases)?
        .with_fleet(config.fleet)?
        .with_backpressure(config.backpressure)
    }

    pub(crate) fn now(&self) -> i64 {
        self.0.clock.now()
    }

    /// Runs one document operation on the blocking pool.
    pub(crate) async fn docs<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Docs) -> Result<T, DocError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let state = self.clone();
        match tokio::task::spawn_blocking(move || f(&state.0.docs)).await {
            Ok(res) => res.map_err(Into::into),
            Err(err) => {
                error!(error = %err, "document task failed");
                Err(ApiError::internal())
            }
        }
    }

    /// Runs one storage call on the blocking pool.
    pub(crate) async fn db<T, E>(
        &self,
        f: impl FnOnce(&dyn Storage) -> Result<T, E> + Send + 'static,
    ) -> Result<T, ApiError>
    where
        T: Send + 'static,
        E: Into<ApiError> + Send + 'static,
    {
        let storage = self.0.storage.clone();
        match tokio::task::spawn_blocking(move || f(storage.as_ref())).await {
            Ok(res) => res.map_err(Into::into),
            Err(err) => {
                error!(error = %err, "storage task failed");
                Err(ApiError::internal())
            }
        }
    }
}

/// Builds the hub's routes on `state`.
pub fn router(state: AppState) -> Router {
    // Install the metrics recorder before the first request records anything.
    storesync_shared::metrics::handle();
    let limits = BodyLimits {
        sync_message: state.0.docs.limits().max_message_bytes,
        release: state.0.max_release_bytes,
        admission: state.0.admission.clone(),
    };
    let (router, _) = routes(&limits).split_for_parts();
    router
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(state)
}

/// The request body limits that are settings rather than constants, and the admission that guards the sync routes.
#[derive(Debug, Clone)]
pub(crate) struct BodyLimits {
    /// The most bytes of one CRDT sync message.
    pub(crate) sync_message: usize,
    /// The largest agent release upload (multipart framing gets 64 KiB on top).
    pub(crate) release: usize,
    /// Backpressure on `POST /v1/sync/upload` and `POST /v1/sync/doc` ([`crate::backpressure`]).
    pub(crate) admission: Arc<crate::backpressure::Admission>,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            sync_message: SyncLimits::default().max_message_bytes,
            release: crate::DEFAULT_MAX_RELEASE_BYTES,
            admission: Arc::new(crate::backpressure::Admission::new(crate::backpressure::Settings::default())),
        }
    }
}

/// Every route of the hub with its OpenAPI operation: the one list [`router`] and [`crate::openapi::document`] are
/// both built from. Register a handler with `.routes(routes!(handler))` (handlers of one path, and only those, may
/// share a `routes!`), never with a plain `.route()`; see `crate::openapi` for the whole recipe. Body limits are
/// per group: 16 KiB for everything merged before the `MAX_SMALL_BODY` layer (the fleet's routes included). The two
/// sync routes that do storage work are guarded by the admission ([`crate::backpressure`]), nothing else is.
pub(crate) fn routes(limits: &BodyLimits) -> OpenApiRouter<AppState> {
    use crate::backpressure::guard;
    let upload = OpenApiRouter::default().routes(routes!(upload)).layer(DefaultBodyLimit::max(MAX_BATCH_BYTES));
    let upload = guard(upload, &limits.admission, MAX_BATCH_BYTES);
    let sync_doc = OpenApiRouter::default().routes(routes!(sync_doc)).layer(DefaultBodyLimit::max(limits.sync_message));
    let sync_doc = guard(sync_doc, &limits.admission, limits.sync_message);
    // Release uploads carry whole agent binaries; multipart framing gets 64 KiB on top of the limit.
    let release_upload = OpenApiRouter::default()
        .routes(routes!(admin_upload_release, admin_list_releases))
        .layer(DefaultBodyLimit::max(limits.release.saturating_add(64 * 1024)));
    let head_office = OpenApiRouter::default()
        .routes(routes!(admin_put_prices))
        .routes(routes!(admin_post_stock))
        .layer(DefaultBodyLimit::max(MAX_ADMIN_BODY));
    OpenApiRouter::with_openapi(crate::openapi::base())
        .routes(routes!(enroll))
        .routes(routes!(sync_state))
        .routes(routes!(admin_create_enrollment))
        .routes(routes!(admin_revoke))
        .routes(routes!(admin_stores))
        .routes(routes!(admin_events))
        .routes(routes!(admin_quarantine))
        .routes(routes!(admin_release))
        .routes(routes!(sync_snapshot))
        .routes(routes!(admin_stock))
        .routes(routes!(admin_price))
        .routes(routes!(admin_compact))
        .routes(routes!(admin_doc))
        .routes(routes!(admin_start_rollout, admin_list_rollouts))
        .routes(routes!(admin_promote))
        .routes(routes!(admin_halt))
        .routes(routes!(admin_resume))
        .routes(routes!(sync_update))
        .routes(routes!(sync_update_report))
        .routes(routes!(sync_release_archive))
        .routes(routes!(healthz))
        .routes(routes!(metrics_endpoint))
        .routes(routes!(crate::openapi::openapi_json))
        .merge(crate::fleet::routes())
        .merge(crate::reservations::routes())
        .merge(crate::subscriptions::routes())
        .layer(DefaultBodyLimit::max(MAX_SMALL_BODY))
        .merge(upload)
        .merge(sync_doc)
        .merge(head_office)
        .merge(release_upload)
}

/// `GET /healthz`: the hub answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "`{\"status\":\"ok\"}`", body = Object)))]
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /metrics`: Prometheus text (the admin token: the series name stores and tills).
#[utoipa::path(get, path = "/metrics", tag = "operations", security(("admin_token" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition",
            body = String, content_type = "text/plain; version=0.0.4"),
        AdminRefusals,
    ))]
async fn metrics_endpoint(_: AdminAuth, State(state): State<AppState>) -> impl IntoResponse {
    state.0.admission.refresh();
    ([(header::CONTENT_TYPE, storesync_shared::metrics::CONTENT_TYPE)], storesync_shared::metrics::render())
}

// ---------------------------------------------------------------------------------------------------------------
// Errors

/// Every error the hub answers with: `{"error": code, "detail": text}` plus optional extra fields.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    expected_seq: Option<u64>,
    seq: Option<u64>,
    retry_after: Option<u64>,
    /// The hub's epoch, for `epoch_mismatch`.
    epoch: Option<u64>,
}

impl ApiError {
    /// The stable error code of the answer.
    pub(crate) fn code(&self) -> &'static str {
        self.code
    }

    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError { status, code, detail: detail.into(), expected_seq: None, seq: None, retry_after: None, epoch: None }
    }

    /// This error with a `Retry-After` of `secs` seconds.
    pub(crate) fn with_retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    fn internal() -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }

    fn unauthorized() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing, unknown or revoked credential")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("storesync_hub_errors_total", "code" => self.code).increment(1);
        let body = UploadRefusal {
            error: self.code.into(),
            detail: self.detail,
            expected_seq: self.expected_seq,
            seq: self.seq,
        };
        let mut res = match self.epoch {
            None => (self.status, Json(body)).into_response(),
            Some(epoch) => {
                let mut value = serde_json::to_value(body).unwrap_or_else(|_| json!({}));
                value["epoch"] = json!(epoch);
                (self.status, Json(value)).into_response()
            }
        };
        if let Some(secs) = self.retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

impl From<StorageError> for ApiError {
    fn from(err: StorageError) -> ApiError {
        if err.is_retryable() {
            warn!(error = %err, "storage busy");
            let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_busy", "the hub is busy, retry");
            e.retry_after = Some(1);
            e
        } else {
            error!(error = %err, "storage failed");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", "the hub cannot reach its storage")
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(err: IngestError) -> ApiError {
        let status = match &err {
            IngestError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE, // answered by `From<StorageError>`
            IngestError::BatchTooLarge { .. }
            | IngestError::NotConsecutive { .. }
            | IngestError::ZeroSeq
            | IngestError::ChainBroken { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            IngestError::JournalMismatch { .. }
            | IngestError::SeqGap { .. }
            | IngestError::SequenceRegression { .. }
            | IngestError::DuplicateEventId { .. } => StatusCode::CONFLICT,
            IngestError::UnknownTill => StatusCode::UNAUTHORIZED,
        };
        let mut api = ApiError::new(status, err.code(), err.to_string());
        match err {
            IngestError::Storage(e) => return e.into(),
            IngestError::SeqGap { expected, .. } => api.expected_seq = Some(expected),
            IngestError::ChainBroken { seq, .. }
            | IngestError::SequenceRegression { seq }
            | IngestError::NotConsecutive { seq }
            | IngestError::DuplicateEventId { seq, .. } => api.seq = Some(seq),
            _ => {}
        }
        api
    }
}

impl From<RedeemError> for ApiError {
    fn from(err: RedeemError) -> ApiError {
        match err {
            RedeemError::InvalidCode => ApiError::new(StatusCode::UNAUTHORIZED, "invalid_code", err.to_string()),
            RedeemError::Expired => ApiError::new(StatusCode::GONE, "code_expired", err.to_string()),
            RedeemError::Used => ApiError::new(StatusCode::GONE, "code_used", err.to_string()),
            RedeemError::Storage(e) => e.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Extractors

/// A JSON body whose rejections are [`ApiError`]s: 413 `body_too_large`, 400 `malformed_json`, 422 `invalid_body`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(body_rejection)?;
        serde_json::from_slice::<T>(&bytes).map(JsonBody).map_err(|err| {
            use serde_json::error::Category;
            match err.classify() {
                Category::Syntax | Category::Eof | Category::Io => {
                    ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("body is not valid JSON: {err}"))
                }
                Category::Data => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", err.to_string()),
            }
        })
    }
}

/// A body that could not be read: 413 `body_too_large` over the route's limit, else 400 `bad_request`.
fn body_rejection(rej: BytesRejection) -> ApiError {
    if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "request body is too large")
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", rej.body_text())
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A request authenticated by a till credential: the store and till it names.
pub struct TillAuth(pub TillId);

impl FromRequestParts<AppState> for TillAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token =
            bearer(parts).filter(|t| t.starts_with(secrets::CREDENTIAL_PREFIX)).ok_or_else(ApiError::unauthorized)?;
        let hash = secrets::digest(token);
        let till = state.db(move |s| s.authenticate(&hash)).await?.ok_or_else(ApiError::unauthorized)?;
        let key = format!("{}/{}", till.store, till.till);
        if let Err(not_until) = state.0.till_rate.check_key(&key) {
            use governor::clock::Clock as _;
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            warn!(store = %till.store, till = %till.till, "till over its request rate");
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("till {key} is over its request rate; retry in {} ms", wait.as_millis().max(1)),
            );
            e.retry_after = Some(wait.as_secs().max(1));
            return Err(e);
        }
        Ok(TillAuth(till))
    }
}

/// A request authenticated by the admin token.
pub struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match bearer(parts) {
            Some(token) if secrets::constant_time_eq(token, &state.0.admin_token) => Ok(AdminAuth),
            _ => Err(ApiError::unauthorized()),
        }
    }
}

/// The client's IP address, as the connection saw it (no proxy headers are trusted).
struct ClientIp(String);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(a)| a.ip().to_string());
        Ok(ClientIp(ip.unwrap_or_else(|| "unknown".into())))
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Enrolment

#[utoipa::path(post, path = "/v1/enroll", tag = "till", request_body = EnrollRequest,
    responses(
        (status = 200, description = "Enrolled: the credential is shown this once", body = EnrollResponse),
        (status = 400, description = "`malformed_json`: the body is not JSON", body = ErrorBody),
        (status = 401, description = "`invalid_code`", body = ErrorBody),
        (status = 410, description = "`code_expired` or `code_used`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 422, description = "`invalid_body`", body = ErrorBody),
        (status = 429, description = "`too_many_attempts`: too many failures from this client IP (`Retry-After`)",
            body = ErrorBody),
        (status = 503, description = "`storage_busy` (with `Retry-After`) or `storage_unavailable`", body = ErrorBody),
    ))]
async fn enroll(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(req): JsonBody<EnrollRequest>,
) -> Result<Json<EnrollResponse>, ApiError> {
    let now = state.now();
    let limits = state.0.enroll_limits;
    let ip_q = ip.clone();
    let (failures, oldest) = state.db(move |s| s.failed_attempts_since(&ip_q, now - limits.window_s + 1)).await?;
    if failures >= limits.max_failures {
        let retry = oldest.map_or(limits.window_s, |t| t + limits.window_s - now).max(1);
        warn!(client = %ip, failures, "enrolment attempts rate-limited");
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            format!("too many failed enrolment attempts; retry in {retry} s"),
        );
        e.retry_after = Some(u64::try_from(retry).unwrap_or(1));
        return Err(e);
    }
    let credential = secrets::new_credential();
    let outcome = match secrets::normalize_code(&req.code) {
        None => Err(ApiError::from(RedeemError::InvalidCode)),
        Some(code) => {
            let (code_hash, cred_hash) = (secrets::digest(&code), secrets::digest(&credential));
            let version = req.agent_version.clone();
            state.db(move |s| s.redeem_enrollment(&code_hash, &cred_hash, &version, now)).await
        }
    };
    match outcome {
        Ok(till) => {
            info!(store_id = %till.store, till_id = %till.till, client = %ip, "till enrolled");
            Ok(Json(EnrollResponse { store_id: till.store, till_id: till.till, credential }))
        }
        Err(err) => {
            if matches!(err.code, "invalid_code" | "code_expired" | "code_used") {
                warn!(client = %ip, error = err.code(), "enrolment refused");
                let ip_q = ip.clone();
                state.db(move |s| s.record_failed_attempt(&ip_q, now)).await?;
            }
            Err(err)
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateEnrollment {
    store: String,
    till: String,
    #[serde(default)]
    ttl_s: Option<i64>,
}

/// The answer to a new enrolment code.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentCode {
    pub code: String,
    pub store: String,
    pub till: String,
    pub expires_at: String,
}

fn check_ids(store: &str, till: &str) -> Result<TillId, ApiError> {
    for (what, id) in [("store", store), ("till", till)] {
        if !secrets::valid_id(id) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_id",
                format!("{what} id must be 1 to 64 characters of A-Z a-z 0-9 . _ -"),
            ));
        }
    }
    Ok(TillId { store: store.to_owned(), till: till.to_owned() })
}

/// Issues a one-time enrolment code. Shared by the admin API and the `enroll-code` CLI verb.
pub fn issue_enrollment(
    storage: &dyn Storage,
    till: &TillId,
    ttl_s: i64,
    now: i64,
) -> Result<EnrollmentCode, StorageError> {
    let code = secrets::new_enrollment_code();
    let normalized = secrets::normalize_code(&code).unwrap_or_default();
    let expires_at = now.saturating_add(ttl_s);
    storage.create_enrollment(&NewEnrollment {
        code_hash: secrets::digest(&normalized),
        till: till.clone(),
        created_at: now,
        expires_at,
    })?;
    Ok(EnrollmentCode { code, store: till.store.clone(), till: till.till.clone(), expires_at: rfc3339(expires_at) })
}

#[utoipa::path(post, path = "/v1/admin/enrollments", tag = "admin", security(("admin_token" = [])),
    request_body = CreateEnrollment,
    responses(
        (status = 201, description = "A one-time enrolment code", body = EnrollmentCode),
        (status = 400, description = "`malformed_json`: the body is not JSON", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 422, description = "`invalid_id`, `invalid_ttl` or `invalid_body`", body = ErrorBody),
        AdminRefusals,
    ))]
async fn admin_create_enrollment(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CreateEnrollment>,
) -> Result<(StatusCode, Json<EnrollmentCode>), ApiError> {
    let till = check_ids(&req.store, &req.till)?;
    let ttl = req.ttl_s.unwrap_or(DEFAULT_TTL_S);
    if !(1..=MAX_TTL_S).contains(&ttl) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_ttl",
            format!("ttl_s must be between 1 and {MAX_TTL_S}"),
        ));
    }
    let now = state.now();
    let code = state.db(move |s| issue_enrollment(s, &till, ttl, now)).await?;
    info!(store_id = %code.store, till_id = %code.till, expires_at = %code.expires_at, "enrolment code issued");
    Ok((StatusCode::CREATED, Json(code)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    store: String,
    till: String,
}

#[utoipa::path(post, path = "/v1/admin/revoke", tag = "admin", security(("admin_token" = [])),
    request_body = RevokeRequest,
    responses(
        (status = 200, description = "`{\"store\",\"till\",\"revoked\":true}`", body = Object),
        (status = 400, description = "`malformed_json`: the body is not JSON", body = ErrorBody),
        (status = 404, description = "`unknown_till`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 422, description = "`invalid_id` or `invalid_body`", body = ErrorBody),
        AdminRefusals,
    ))]
async fn admin_revoke(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<RevokeRequest>,
) -> Result<Json<Value>, ApiError> {
    let till = check_ids(&req.store, &req.till)?;
    let now = state.now();
    let t = till.clone();
    if !state.db(move |s| s.revoke(&t, now)).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_till", "no such store and till"));
    }
    info!(store_id = %till.store, till_id = %till.till, "till revoked");
    Ok(Json(json!({"store": till.store, "till": till.till, "revoked": true})))
}

// ---------------------------------------------------------------------------------------------------------------
// Sync

#[utoipa::path(post, path = "/v1/sync/upload", tag = "till", security(("till_credential" = [])),
    request_body = UploadRequest,
    responses(
        (status = 200, description = "Stored through `acked_through` (quarantined seqs listed)", body = UploadAck),
        (status = 400, description = "`malformed_json`", body = UploadRefusal),
        (status = 409, description = "`seq_gap` (`expected_seq`: resend from there), `sequence_regression` (`seq`), \
            `journal_mismatch` or `duplicate_event_id` (`seq`)", body = UploadRefusal),
        (status = 413, description = "`body_too_large`: over 4 MiB", body = UploadRefusal),
        (status = 422, description = "`batch_too_large`, `not_consecutive` (`seq`), `invalid_seq`, `chain_broken` \
            (`seq`) \
            or `invalid_body`", body = UploadRefusal),
        TillRefusals,
    ))]
async fn upload(
    TillAuth(till): TillAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<UploadRequest>,
) -> Result<Json<UploadAck>, ApiError> {
    let now = state.now();
    let n = req.events.len();
    let t = till.clone();
    let (last_seq, oldest_age) = (req.last_seq, req.oldest_unsynced_age_s);
    let started = std::time::Instant::now();
    let res = state.db(move |s| s.append_batch(&t, &req, now)).await;
    metrics::histogram!("storesync_hub_ingest_duration_seconds").record(started.elapsed().as_secs_f64());
    match &res {
        Ok(ack) => {
            metrics::histogram!("storesync_hub_upload_batch_events").record(n as f64);
            metrics::counter!("storesync_hub_uploaded_events_total").increment(n as u64);
            let backlog = last_seq.saturating_sub(ack.acked_through);
            let labels = [("store", till.store.clone()), ("till", till.till.clone())];
            metrics::gauge!("storesync_hub_till_backlog_events", &labels).set(backlog as f64);
            let age = if backlog == 0 { 0 } else { oldest_age };
            metrics::gauge!("storesync_hub_till_oldest_unsynced_age_seconds", &labels).set(age as f64);
            tracing::debug!(store_id = %till.store, till_id = %till.till, events = n,
                            acked_through = ack.acked_through, "upload acknowledged");
            if n > 0 {
                state.outbox_wake().notify_waiters();
            }
            if !ack.quarantined.is_empty() {
                warn!(store_id = %till.store, till_id = %till.till, seqs = ?ack.quarantined,
                      "events stored in quarantine: this hub cannot process their bodies (see /v1/admin/quarantine)");
            }
        }
        Err(err) => warn!(store_id = %till.store, till_id = %till.till, error = err.code(),
                          detail = %err.detail, "upload refused"),
    }
    res.map(Json)
}

#[utoipa::path(get, path = "/v1/sync/state", tag = "till", security(("till_credential" = [])),
    responses((status = 200, description = "Where the hub stands for this till", body = TillState), TillRefusals))]
async fn sync_state(TillAuth(till): TillAuth, State(state): State<AppState>) -> Result<Json<TillState>, ApiError> {
    state.db(move |s| s.till_state(&till)).await?.map(Json).ok_or_else(ApiError::unauthorized)
}

// ---------------------------------------------------------------------------------------------------------------
// Admin views

fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

#[utoipa::path(get, path = "/v1/admin/stores", tag = "admin", security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{\"stores\":[{\"store\",\"tills\":[{\"till\",\"last_seen\",\"last_seq\",\
            \"hub_seq\",\"backlog\",\"oldest_unsynced_age_s\",\"version\",\"chain_ok\",\"last_error\",\"enrolled\",\
            \"revoked\",\"quarantined\"}]}]}`",
            body = Object),
        AdminRefusals,
    ))]
async fn admin_stores(_: AdminAuth, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let stores = state.db(|s| s.list_stores()).await?;
    let stores: Vec<Value> = stores
        .into_iter()
        .map(|s| {
            let tills: Vec<Value> = s
                .tills
                .into_iter()
                .map(|t| {
                    json!({
                        "till": t.till,
                        "last_seen": t.last_seen.map(rfc3339),
                        "last_seq": t.last_seq,
                        "hub_seq": t.hub_seq,
                        "backlog": t.backlog,
                        "oldest_unsynced_age_s": t.oldest_unsynced_age_s,
                        "version": t.version,
                        "chain_ok": t.chain_ok,
                        "last_error": t.last_error,
                        "enrolled": t.enrolled,
                        "revoked": t.revoked,
                        "quarantined": t.quarantined,
                    })
                })
                .collect();
            json!({"store": s.store, "tills": tills})
        })
        .collect();
    Ok(Json(json!({ "stores": stores })))
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    store: Option<String>,
    after: Option<String>,
    limit: Option<String>,
    /// `GET /v1/admin/quarantine` only: also list released events.
    released: Option<String>,
}

/// A page of an event listing: `(store filter, after cursor, limit)`, each checked.
fn events_page(
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<(Option<String>, i64, usize, EventsQuery), ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_query", e.body_text()))?;
    let after = match q.after.as_deref().filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => s.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_cursor", "after must be a cursor from `next`")
        })?,
    };
    let limit = match q.limit.as_deref() {
        None => DEFAULT_EVENTS_LIMIT,
        Some(s) => s.parse::<usize>().ok().filter(|v| *v >= 1).ok_or_else(|| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_limit", "limit must be a positive integer")
        })?,
    }
    .min(MAX_EVENTS_LIMIT);
    let store = q.store.clone().filter(|s| !s.is_empty());
    Ok((store, after, limit, q))
}

pub(crate) fn event_json(e: StoredEvent) -> Value {
    let body: Value = serde_json::from_str(&e.body).unwrap_or(Value::Null);
    json!({
        "cursor": e.hub_pos.to_string(),
        "event_id": e.event_id,
        "store": e.store,
        "till": e.till,
        "seq": e.seq,
        "kind": e.kind,
        "occurred_at": e.occurred_at,
        "body": body,
        "hash": e.hash,
        "quarantined": e.quarantined,
    })
}

#[utoipa::path(get, path = "/v1/admin/events", tag = "admin", security(("admin_token" = [])),
    params(
        ("store" = Option<String>, Query, description = "Only this store's events"),
        ("after" = Option<String>, Query, description = "A cursor: the `next` of the previous page"),
        ("limit" = Option<usize>, Query, description = "At most this many (default 100, at most 1000)"),
    ),
    responses(
        (status = 200, description = "`{\"events\":[{\"cursor\",\"event_id\",\"store\",\"till\",\"seq\",\"kind\",\
            \"occurred_at\",\"body\",\"hash\",\"quarantined\"}],\"next\"}` in hub order", body = Object),
        (status = 422, description = "`invalid_query`, `invalid_cursor` or `invalid_limit`", body = ErrorBody),
        AdminRefusals,
    ))]
async fn admin_events(
    _: AdminAuth,
    State(state): State<AppState>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let (store, after, limit, _) = events_page(query)?;
    let events = state.db(move |s| s.list_events(store.as_deref(), after, limit)).await?;
    let next = events.last().map(|e| e.hub_pos.to_string());
    let events: Vec<Value> = events.into_iter().map(event_json).collect();
    Ok(Json(json!({ "events": events, "next": next })))
}

// ---------------------------------------------------------------------------------------------------------------
// Quarantine: events stored in the chain that this hub cannot process

#[utoipa::path(get, path = "/v1/admin/quarantine", tag = "admin", security(("admin_token" = [])),
    params(
        ("store" = Option<String>, Query, description = "Only this store's events"),
        ("after" = Option<String>, Query, description = "A cursor: the `next` of the previous page"),
        ("limit" = Option<usize>, Query, description = "At most this many (default 100, at most 1000)"),
        ("released" = Option<bool>, Query, description = "Also list released events (default false)"),
    ),
    responses(
        (status = 200, description = "`{\"quarantined\":[{...an event..., \
            \"reason\",\"quarantined_at\",\"released_at\"}],\"next\"}`",
            body = Object),
        (status = 422, description = "`invalid_query`, `invalid_cursor` or `invalid_limit`", body = ErrorBody),
        AdminRefusals,
    ))]
async fn admin_quarantine(
    _: AdminAuth,
    State(state): State<AppState>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let (store, after, limit, q) = events_page(query)?;
    let released = match q.released.as_deref() {
        None | Some("" | "false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_query",
                "released must be true or false",
            ));
        }
    };
    let found = state.db(move |s| s.list_quarantine(store.as_deref(), released, after, limit)).await?;
    let next = found.last().map(|q| q.event.hub_pos.to_string());
    let items: Vec<Value> = found
        .into_iter()
        .map(|q| {
            let mut v = event_json(q.event);
            v["reason"] = json!(q.reason);
            v["quarantined_at"] = json!(rfc3339(q.quarantined_at));
            v["released_at"] = json!(q.released_at.map(rfc3339));
            v
        })
        .collect();
    Ok(Json(json!({ "quarantined": items, "next": next })))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReleaseRequest {
    store: String,
    till: String,
    seq: u64,
}

/// Whether this hub can now process a stored event: the body check of the upload path.
fn recheck(e: &StoredEvent) -> Result<(), String> {
    let kind = storesync_shared::EventKind::parse(&e.kind).ok_or_else(|| format!("unknown kind {}", e.kind))?;
    let body: Value = serde_json::from_str(&e.body).map_err(|err| format!("stored body: {err}"))?;
    storesync_shared::wire::check_body(e.seq, kind, &e.occurred_at, &body).map_err(|err| err.to_string())
}

#[utoipa::path(post, path = "/v1/admin/quarantine/release", tag = "admin", security(("admin_token" = [])),
    request_body = ReleaseRequest,
    responses(
        (status = 200, description = "`{\"store\",\"till\",\"seq\",\"released\":true}`", body = Object),
        (status = 400, description = "`malformed_json`: the body is not JSON", body = ErrorBody),
        (status = 404, description = "`not_quarantined`", body = ErrorBody),
        (status = 409, description = "`still_invalid`: the hub still cannot process the event", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 422, description = "`invalid_id` or `invalid_body`", body = ErrorBody),
        AdminRefusals,
    ))]
async fn admin_release(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<ReleaseRequest>,
) -> Result<Json<Value>, ApiError> {
    let till = check_ids(&req.store, &req.till)?;
    let now = state.now();
    let (t, seq) = (till.clone(), req.seq);
    match state.db(move |s| s.release_quarantined(&t, seq, now, &recheck)).await? {
        ReleaseOutcome::Released => {
            info!(store_id = %till.store, till_id = %till.till, seq, "quarantined event released");
            Ok(Json(json!({"store": till.store, "till": till.till, "seq": seq, "released": true})))
        }
        ReleaseOutcome::NotQuarantined => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_quarantined",
            format!("no quarantined event at store {} till {} seq {seq}", till.store, till.till),
        )),
        ReleaseOutcome::StillInvalid(why) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "still_invalid",
            format!("this hub still cannot process the event: {why}"),
        )),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Store documents: CRDT sync, head-office prices and stock, epochs

impl From<DocError> for ApiError {
    fn from(err: DocError) -> ApiError {
        match err {
            DocError::EpochMismatch { till, hub } => {
                let mut e = ApiError::new(
                    StatusCode::CONFLICT,
                    "epoch_mismatch",
                    format!("the till is in epoch {till} but the hub is in epoch {hub}: load GET /v1/sync/snapshot"),
                );
                e.epoch = Some(hub);
                e
            }
            DocError::BadMessage(detail) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_sync_message", detail),
            DocError::DocumentTooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "document_too_large", err.to_string())
            }
            DocError::UnknownStore => unknown_store(),
            DocError::Forbidden(detail) => ApiError::new(StatusCode::FORBIDDEN, "forbidden_change", detail),
            DocError::Corrupt(detail) => {
                error!(error = %detail, "store document unusable");
                ApiError::internal()
            }
            DocError::Storage(e) => e.into(),
        }
    }
}

fn unknown_store() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "unknown_store", "no till of this store is known to the hub")
}

fn invalid(code: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
}

const OCTET_STREAM: &str = "application/octet-stream";

fn with_epoch(mut res: Response, epoch: Option<u64>) -> Response {
    if let Some(epoch) = epoch {
        res.headers_mut().insert(EPOCH_HEADER, HeaderValue::from(epoch));
    }
    res
}

/// `POST /v1/sync/doc`: one automerge sync round with the calling till (see `crate::docs`).
#[utoipa::path(post, path = "/v1/sync/doc", tag = "till", security(("till_credential" = [])),
    params(("x-storesync-epoch" = Option<u64>, Header, description = "The till's CRDT epoch (absent: 0)")),
    request_body(content = inline(crate::openapi::Binary), content_type = "application/octet-stream",
        description = "The till's automerge sync message, or empty"),
    responses(
        (status = 200, description = "The hub's next sync message",
            body = inline(crate::openapi::Binary), content_type = "application/octet-stream",
            headers(("x-storesync-epoch" = u64, description = "The hub's epoch"))),
        (status = 204, description = "The hub has nothing to say", headers(("x-storesync-epoch" = u64))),
        (status = 400, description = "`invalid_epoch` or `bad_request`", body = ErrorBody),
        (status = 403, description = "`forbidden_change`: a change touches more than the till's own stock counters",
            body = ErrorBody),
        (status = 409, description = "`epoch_mismatch` (with `\"epoch\"`): load `GET /v1/sync/snapshot`",
            body = ErrorBody),
        (status = 413, description = "`message_too_large` or `document_too_large`", body = ErrorBody),
        (status = 422, description = "`bad_sync_message`", body = ErrorBody),
        TillRefusals,
    ))]
async fn sync_doc(
    TillAuth(till): TillAuth,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let store = till.store.clone();
    let hub_epoch = |state: AppState, store: String| async move {
        state.docs(move |d| d.read(&store, |_, meta| meta.epoch)).await.ok()
    };
    let body = match body {
        Ok(b) => b,
        Err(rej) => {
            let err = if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "message_too_large", "the sync message is too large")
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", rej.body_text())
            };
            return with_epoch(err.into_response(), hub_epoch(state, store).await);
        }
    };
    let till_epoch = match headers.get(EPOCH_HEADER).map(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()))
    {
        None => 0,
        Some(Some(e)) => e,
        Some(None) => {
            let err = ApiError::new(StatusCode::BAD_REQUEST, "invalid_epoch", "X-Storesync-Epoch must be an integer");
            return with_epoch(err.into_response(), hub_epoch(state, store).await);
        }
    };
    let now = state.now();
    let (s, t) = (till.store.clone(), till.till.clone());
    let res = state
        .docs(move |d| {
            let answer = d.sync_round(&s, &t, till_epoch, &body, now)?;
            if d.due(&answer.meta) {
                match d.compact(&s, now) {
                    Ok(rec) => info!(store_id = %s, epoch = rec.epoch, "store document compacted"),
                    Err(err) => warn!(store_id = %s, error = %err, "compaction failed"),
                }
            }
            Ok(answer)
        })
        .await;
    match res {
        Ok(answer) => {
            let res = match answer.reply {
                Some(bytes) => ([(header::CONTENT_TYPE, OCTET_STREAM)], bytes).into_response(),
                None => StatusCode::NO_CONTENT.into_response(),
            };
            with_epoch(res, Some(answer.meta.epoch))
        }
        Err(err) => {
            if err.code != "epoch_mismatch" {
                warn!(store_id = %till.store, till_id = %till.till, error = err.code(), detail = %err.detail,
                      "sync round refused");
            }
            let epoch = match err.epoch {
                Some(e) => Some(e),
                None => hub_epoch(state, store).await,
            };
            with_epoch(err.into_response(), epoch)
        }
    }
}

/// `GET /v1/sync/snapshot`: the document the store's current epoch started from.
#[utoipa::path(get, path = "/v1/sync/snapshot", tag = "till", security(("till_credential" = [])),
    responses(
        (status = 200, description = "The store document as the current epoch started", body = EpochSnapshot,
            headers(("x-storesync-epoch" = u64, description = "The hub's epoch"))),
        TillRefusals,
    ))]
async fn sync_snapshot(TillAuth(till): TillAuth, State(state): State<AppState>) -> Result<Response, ApiError> {
    let store = till.store.clone();
    let rec = state.db(move |s| s.epoch_record(&store)).await?;
    let snap = match rec {
        None => EpochSnapshot { epoch: 0, cuts: Default::default(), doc: None },
        Some(rec) => {
            use base64::Engine as _;
            EpochSnapshot {
                epoch: rec.epoch,
                cuts: rec.cuts,
                doc: Some(base64::engine::general_purpose::STANDARD.encode(&rec.doc)),
            }
        }
    };
    let epoch = snap.epoch;
    Ok(with_epoch(Json(snap).into_response(), Some(epoch)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PriceInput {
    sku: String,
    price_minor: i64,
    currency: String,
    #[serde(default)]
    effective_from: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PricesRequest {
    stores: Vec<String>,
    prices: Vec<PriceInput>,
}

/// The most prices one request may set.
const MAX_PRICES: usize = 10_000;
/// The largest price, in minor units.
const MAX_PRICE_MINOR: i64 = 1_000_000_000_000;
/// The most movements one request may carry.
const MAX_MOVEMENTS: usize = 500;

pub(crate) fn now_instant(now: i64) -> Result<time::OffsetDateTime, ApiError> {
    time::OffsetDateTime::from_unix_timestamp(now).map_err(|_| ApiError::internal())
}

/// Checks a store id from a path or body; an impossible id is an unknown store.
pub(crate) async fn known_store(state: &AppState, store: &str) -> Result<String, ApiError> {
    if !secrets::valid_id(store) {
        return Err(unknown_store());
    }
    let s = store.to_owned();
    if state.db(move |st| st.store_known(&s)).await? { Ok(store.to_owned()) } else { Err(unknown_store()) }
}

/// `PUT /v1/admin/prices`: head-office prices for some stores or every store (`["*"]`), all or nothing.
#[utoipa::path(put, path = "/v1/admin/prices", tag = "admin", security(("admin_token" = [])),
    request_body = PricesRequest,
    responses(
        (status = 200, description = "`{\"stores\":[...],\"prices\":N}`: set in every store, or in none",
            body = Object),
        (status = 400, description = "`malformed_json`: the body is not JSON", body = ErrorBody),
        (status = 404, description = "`unknown_store`", body = ErrorBody),
        (status = 413, description = "`body_too_large`: over 2 MiB", body = ErrorBody),
        (status = 422, description = "`no_prices`, `too_many_prices`, `invalid_sku`, `invalid_price`, \
            `unknown_currency`, \
            `invalid_effective_from`, `duplicate_price`, `no_stores`, `invalid_stores` or `invalid_body`",
            body = ErrorBody),
        AdminRefusals,
    ))]
async fn admin_put_prices(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<PricesRequest>,
) -> Result<Json<Value>, ApiError> {
    let now = state.now();
    if req.prices.is_empty() {
        return Err(invalid("no_prices", "prices must hold at least one price"));
    }
    if req.prices.len() > MAX_PRICES {
        return Err(invalid("too_many_prices", format!("at most {MAX_PRICES} prices per request")));
    }
    let mut prices = Vec::with_capacity(req.prices.len());
    let mut keys = std::collections::BTreeSet::new();
    for (i, p) in req.prices.into_iter().enumerate() {
        check_sku(&p.sku, &format!("prices[{i}].sku")).map_err(|e| invalid(e.code, e.detail))?;
        if !(0..=MAX_PRICE_MINOR).contains(&p.price_minor) {
            return Err(invalid(
                "invalid_price",
                format!("prices[{i}].price_minor must be an integer from 0 to {MAX_PRICE_MINOR}"),
            ));
        }
        check_currency(&p.currency).map_err(|e| invalid(e.code, format!("prices[{i}].currency: {}", e.detail)))?;
        let at = match p.effective_from.as_deref() {
            None => now_instant(now)?,
            Some(s) => parse_timestamp(s).ok_or_else(|| {
                invalid(
                    "invalid_effective_from",
                    format!("prices[{i}].effective_from must be RFC 3339 with an offset; got {s:?}"),
                )
            })?,
        };
        let effective_from = crdt::normalize_instant(at);
        if !keys.insert((p.sku.clone(), effective_from.clone())) {
            return Err(invalid(
                "duplicate_price",
                format!("prices[{i}]: {} already has a price from {effective_from} in this request", p.sku),
            ));
        }
        prices.push((p.sku, crdt::Price { price_minor: p.price_minor, currency: p.currency, effective_from }));
    }
    let stores = if req.stores == ["*"] {
        state.db(|s| s.list_stores()).await?.into_iter().map(|v| v.store).collect::<Vec<_>>()
    } else {
        if req.stores.is_empty() {
            return Err(invalid("no_stores", "stores must name at least one store, or be [\"*\"]"));
        }
        if req.stores.iter().any(|s| s == "*") {
            return Err(invalid("invalid_stores", "\"*\" must be the only entry of stores"));
        }
        let mut out = Vec::with_capacity(req.stores.len());
        for store in &req.stores {
            out.push(known_store(&state, store).await?);
        }
        out.sort();
        out.dedup();
        out
    };
    let n = prices.len();
    let written = stores.clone();
    if !stores.is_empty() {
        state.docs(move |d| d.set_prices(&stores, &prices, now)).await?;
    }
    info!(stores = written.len(), prices = n, "head-office prices set");
    Ok(Json(json!({"stores": written, "prices": n})))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MovementInput {
    sku: String,
    delta: i64,
    reason: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct StockRequest {
    store: String,
    movements: Vec<MovementInput>,
}

/// `POST /v1/admin/stock`: head-office stock movements (receipts, corrections) of one store.
#[utoipa::path(post, path = "/v1/admin/stock", tag = "admin", security(("admin_token" = [])),
    request_body = StockRequest,
    responses(
        (status = 200, description = "`{\"store\",\"movements\":N}`", body = Object),
        (status = 400, description = "`malformed_json`: the body is not JSON", body = ErrorBody),
        (status = 404, description = "`unknown_store`", body = ErrorBody),
        (status = 413, description = "`body_too_large`: over 2 MiB", body = ErrorBody),
        (status = 422, description = "`no_movements`, `too_many_movements`, `invalid_sku`, `invalid_delta`, \
            `invalid_reason` \
            or `invalid_body`", body = ErrorBody),
        AdminRefusals,
    ))]
async fn admin_post_stock(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<StockRequest>,
) -> Result<Json<Value>, ApiError> {
    if req.movements.is_empty() {
        return Err(invalid("no_movements", "movements must hold at least one movement"));
    }
    if req.movements.len() > MAX_MOVEMENTS {
        return Err(invalid("too_many_movements", format!("at most {MAX_MOVEMENTS} movements per request")));
    }
    let mut movements = Vec::with_capacity(req.movements.len());
    for (i, m) in req.movements.into_iter().enumerate() {
        check_sku(&m.sku, &format!("movements[{i}].sku")).map_err(|e| invalid(e.code, e.detail))?;
        if m.delta == 0 || m.delta.unsigned_abs() > MAX_QTY.unsigned_abs() {
            return Err(invalid(
                "invalid_delta",
                format!("movements[{i}].delta must be a non-zero integer of at most {MAX_QTY} either way"),
            ));
        }
        if m.reason.trim().is_empty() || m.reason.chars().count() > MAX_TEXT_CHARS {
            return Err(invalid(
                "invalid_reason",
                format!("movements[{i}].reason must be non-blank and at most {MAX_TEXT_CHARS} characters"),
            ));
        }
        movements.push(NewMovement { sku: m.sku, delta: m.delta, reason: m.reason });
    }
    let store = known_store(&state, &req.store).await?;
    let now = state.now();
    let n = movements.len();
    let s = store.clone();
    state.docs(move |d| d.add_movements(&s, &movements, now)).await?;
    info!(store_id = %store, movements = n, "head-office stock movements recorded");
    Ok(Json(json!({"store": store, "movements": n})))
}

type StoreSku = Result<Path<(String, String)>, PathRejection>;

fn path_pair(path: StoreSku) -> Result<(String, String), ApiError> {
    let Path((store, sku)) = path.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_path", e.body_text()))?;
    check_sku(&sku, "sku").map_err(|e| invalid(e.code, e.detail))?;
    Ok((store, sku))
}

/// `GET /v1/admin/stores/{store}/stock/{sku}`: on hand as the hub's copy of the store document says.
#[utoipa::path(get, path = "/v1/admin/stores/{store}/stock/{sku}", tag = "admin", security(("admin_token" = [])),
    params(("store" = String, Path, description = "A store id"), ("sku" = String, Path, description = "A SKU")),
    responses(
        (status = 200, description = "`{\"sku\",\"on_hand\"}`", body = Object),
        (status = 400, description = "`bad_path`", body = ErrorBody),
        (status = 404, description = "`unknown_store`", body = ErrorBody),
        (status = 422, description = "`invalid_sku`", body = ErrorBody),
        AdminRefusals,
    ))]
async fn admin_stock(_: AdminAuth, State(state): State<AppState>, path: StoreSku) -> Result<Json<Value>, ApiError> {
    let (store, sku) = path_pair(path)?;
    let store = known_store(&state, &store).await?;
    let k = sku.clone();
    let on_hand = state
        .docs(move |d| {
            d.read(&store, |doc, _| {
                crdt::root_map(doc, crdt::STOCK).map_or(0, |obj| crdt::on_hand(doc, &obj, &k, None))
            })
        })
        .await?;
    Ok(Json(json!({"sku": sku, "on_hand": on_hand})))
}

fn price_json(p: &crdt::Price) -> Value {
    json!({"price_minor": p.price_minor, "currency": p.currency, "effective_from": p.effective_from})
}

/// `GET /v1/admin/stores/{store}/prices/{sku}`: the price in force now and the next scheduled one.
///
/// With only a future price, `price_minor`, `currency` and `effective_from` are null and `next` holds it.
#[utoipa::path(get, path = "/v1/admin/stores/{store}/prices/{sku}", tag = "admin", security(("admin_token" = [])),
    params(("store" = String, Path, description = "A store id"), ("sku" = String, Path, description = "A SKU")),
    responses(
        (status = 200, description = "`{\"sku\",\"price_minor\",\"currency\",\"effective_from\",\"next\"}`",
            body = Object),
        (status = 400, description = "`bad_path`", body = ErrorBody),
        (status = 404, description = "`unknown_store` or `no_price`", body = ErrorBody),
        (status = 422, description = "`invalid_sku`", body = ErrorBody),
        AdminRefusals,
    ))]
async fn admin_price(_: AdminAuth, State(state): State<AppState>, path: StoreSku) -> Result<Json<Value>, ApiError> {
    let (store, sku) = path_pair(path)?;
    let store = known_store(&state, &store).await?;
    let now = crdt::normalize_instant(now_instant(state.now())?);
    let k = sku.clone();
    let view = state
        .docs(move |d| {
            d.read(&store, |doc, _| {
                crdt::root_map(doc, crdt::PRICES)
                    .map(|obj| crdt::price_at(doc, &obj, &k, &now, None))
                    .unwrap_or_default()
            })
        })
        .await?;
    if view.current.is_none() && view.next.is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no_price", format!("no price is set for {sku}")));
    }
    Ok(Json(price_view_json(&sku, &view)))
}

/// A SKU's price view as the admin endpoints answer it: the price in force (nulls when only a future one is set)
/// and `next`.
pub(crate) fn price_view_json(sku: &str, view: &crdt::PriceView) -> Value {
    let mut out = match &view.current {
        Some(p) => price_json(p),
        None => json!({"price_minor": null, "currency": null, "effective_from": null}),
    };
    out["sku"] = json!(sku);
    out["next"] = view.next.as_ref().map_or(Value::Null, price_json);
    out
}

/// `POST /v1/admin/stores/{store}/compact`: closes the store's epoch now.
#[utoipa::path(post, path = "/v1/admin/stores/{store}/compact", tag = "admin", security(("admin_token" = [])),
    params(("store" = String, Path, description = "A store id")),
    responses(
        (status = 200, description = "`{\"store\",\"epoch\"}`: the new epoch", body = Object),
        (status = 404, description = "`unknown_store`", body = ErrorBody),
        AdminRefusals,
    ))]
async fn admin_compact(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(store): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = known_store(&state, &store).await?;
    let now = state.now();
    let s = store.clone();
    let rec = state.docs(move |d| d.compact(&s, now)).await?;
    info!(store_id = %store, epoch = rec.epoch, cuts = ?rec.cuts, "store document compacted on request");
    Ok(Json(json!({"store": store, "epoch": rec.epoch})))
}

/// `GET /v1/admin/stores/{store}/doc`: the size of the store's document.
#[utoipa::path(get, path = "/v1/admin/stores/{store}/doc", tag = "admin", security(("admin_token" = [])),
    params(("store" = String, Path, description = "A store id")),
    responses(
        (status = 200, description = "`{\"store\",\"epoch\",\"changes_since_epoch\",\"saved_bytes\",\"epoch_bytes\"}`",
            body = Object),
        (status = 404, description = "`unknown_store`", body = ErrorBody),
        AdminRefusals,
    ))]
async fn admin_doc(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(store): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = known_store(&state, &store).await?;
    let s = store.clone();
    let meta = state.docs(move |d| d.read(&s, |_, meta| *meta)).await?;
    Ok(Json(json!({
        "store": store,
        "epoch": meta.epoch,
        "changes_since_epoch": meta.changes_since_epoch,
        "saved_bytes": meta.saved_bytes,
        "epoch_bytes": meta.epoch_bytes,
    })))
}

// ---------------------------------------------------------------------------------------------------------------
// Agent releases and staged rollouts (see `crate::rollout`; the hub is not a trust anchor, agents verify)

impl From<RolloutError> for ApiError {
    fn from(err: RolloutError) -> ApiError {
        match err {
            RolloutError::UnknownRelease { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_release", err.to_string())
            }
            RolloutError::NoRollout(_) => ApiError::new(StatusCode::NOT_FOUND, "no_rollout", err.to_string()),
            RolloutError::Transition(t) => ApiError::new(StatusCode::CONFLICT, t.code(), t.to_string()),
            RolloutError::Storage(e) => e.into(),
        }
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The parts of a release upload.
#[derive(Default)]
struct UploadParts {
    manifest: Option<Bytes>,
    signature: Option<Bytes>,
    archive: Option<Bytes>,
}

async fn read_release_parts(
    multipart: Result<axum::extract::Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<UploadParts, ApiError> {
    let mut multipart = multipart.map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_multipart", format!("expected multipart/form-data: {e}"))
    })?;
    let part_err = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the release upload is too large")
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_multipart", e.body_text())
        }
    };
    let mut parts = UploadParts::default();
    while let Some(field) = multipart.next_field().await.map_err(part_err)? {
        let name = field.name().unwrap_or_default().to_owned();
        let slot = match name.as_str() {
            "manifest" => &mut parts.manifest,
            "signature" => &mut parts.signature,
            "archive" => &mut parts.archive,
            _ => {
                return Err(invalid(
                    "unknown_part",
                    format!("unexpected part {name:?}: send manifest, signature and archive"),
                ));
            }
        };
        if slot.is_some() {
            return Err(invalid("duplicate_part", format!("part {name:?} is sent twice")));
        }
        *slot = Some(field.bytes().await.map_err(part_err)?);
    }
    Ok(parts)
}

/// Checks an upload and builds the row to store (CPU-bound: runs on the blocking pool).
fn check_release(parts: UploadParts, keys: &[ed25519_dalek::VerifyingKey], now: i64) -> Result<NewRelease, ApiError> {
    let missing = |p: &str| invalid("missing_part", format!("the {p} part is missing"));
    let manifest = parts.manifest.ok_or_else(|| missing("manifest"))?;
    let archive = parts.archive.ok_or_else(|| missing("archive"))?;
    if manifest.len() > storesync_shared::release::MAX_MANIFEST_BYTES {
        return Err(invalid(
            "invalid_manifest",
            format!("a manifest is at most {} bytes", storesync_shared::release::MAX_MANIFEST_BYTES),
        ));
    }
    let m = storesync_shared::release::parse_manifest(&manifest).map_err(|e| invalid("invalid_manifest", e))?;
    let signature = match parts.signature {
        None => None,
        Some(b) => {
            let text = std::str::from_utf8(&b).map(str::trim).unwrap_or("\u{0}");
            if text.is_empty() {
                None
            } else {
                use base64::Engine as _;
                match b64().decode(text) {
                    Ok(sig) if sig.len() == 64 => Some(text.to_owned()),
                    _ => return Err(invalid("invalid_signature", "signature must be base64 of 64 bytes")),
                }
            }
        }
    };
    let sha = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&archive))
    };
    if sha != m.archive_sha256 || archive.len() as u64 != m.archive_size {
        return Err(invalid(
            "archive_mismatch",
            format!(
                "the archive is {} bytes with SHA-256 {sha}; the manifest says {} bytes with {}",
                archive.len(),
                m.archive_size,
                m.archive_sha256
            ),
        ));
    }
    if !keys.is_empty() {
        storesync_shared::release::verify_manifest(&manifest, signature.as_deref(), keys)
            .map_err(|r| invalid(r.code(), format!("{r}; this hub only takes releases of its release_keys")))?;
        crate::release::verify_archive(&archive, &m.version, &m.target, keys)
            .map_err(|e| invalid("bad_archive_signature", format!("the archive signature does not verify: {e}")))?;
    }
    Ok(NewRelease {
        version: m.version,
        target: m.target,
        manifest: manifest.to_vec(),
        signature,
        archive: archive.to_vec(),
        archive_sha256: sha,
        archive_size: m.archive_size,
        min_version: m.min_version,
        expires_at: m.expires_at,
        uploaded_at: now,
    })
}

/// `POST /v1/admin/releases` (multipart: `manifest`, `signature`?, `archive`): stores a release.
#[utoipa::path(post, path = "/v1/admin/releases", tag = "releases", security(("admin_token" = [])),
    request_body(content = inline(crate::openapi::ReleaseUpload), content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Stored: \
            `{\"version\",\"target\",\"archive_sha256\",\"archive_size\",\"signed\"}`",
            body = Object),
        (status = 200, description = "Exactly these bytes were stored before (same body)", body = Object),
        (status = 400, description = "`bad_multipart`", body = ErrorBody),
        (status = 409, description = "`release_exists`: other bytes are stored for this version and target",
            body = ErrorBody),
        (status = 413, description = "`body_too_large`: over `max_release_bytes` plus 64 KiB", body = ErrorBody),
        (status = 422, description = "`missing_part`, `unknown_part`, `duplicate_part`, `invalid_manifest`, \
            `invalid_signature`, `archive_mismatch`, `unsigned`, `bad_signature` or `bad_archive_signature`",
            body = ErrorBody),
        AdminRefusals,
    ))]
async fn admin_upload_release(
    _: AdminAuth,
    State(state): State<AppState>,
    multipart: Result<axum::extract::Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let parts = read_release_parts(multipart).await?;
    let now = state.now();
    let st = state.clone();
    let release = match tokio::task::spawn_blocking(move || check_release(parts, &st.0.release_keys, now)).await {
        Ok(r) => r?,
        Err(err) => {
            error!(error = %err, "release check task failed");
            return Err(ApiError::internal());
        }
    };
    let answer = json!({
        "version": release.version,
        "target": release.target,
        "archive_sha256": release.archive_sha256,
        "archive_size": release.archive_size,
        "signed": release.signature.is_some(),
    });
    let (version, target) = (release.version.clone(), release.target.clone());
    match state.db(move |s| s.put_release(&release)).await? {
        PutRelease::Created => {
            info!(version = %version, target = %target, "agent release stored");
            Ok((StatusCode::CREATED, Json(answer)))
        }
        PutRelease::Identical => Ok((StatusCode::OK, Json(answer))),
        PutRelease::Conflict => Err(ApiError::new(
            StatusCode::CONFLICT,
            "release_exists",
            format!("another release {version} for {target} is stored; publish a new version"),
        )),
    }
}

/// `GET /v1/admin/releases`: every stored release, newest version first.
#[utoipa::path(get, path = "/v1/admin/releases", tag = "releases", security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{\"releases\":[{\"version\",\"target\",\"min_version\",\"expires_at\",\
            \"archive_sha256\",\"archive_size\",\"signed\",\"uploaded_at\"}]}`, newest version first", body = Object),
        AdminRefusals,
    ))]
async fn admin_list_releases(_: AdminAuth, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let releases = state.db(|s| s.list_releases()).await?;
    let releases: Vec<Value> = releases
        .into_iter()
        .map(|r| {
            json!({
                "version": r.version,
                "target": r.target,
                "min_version": r.min_version,
                "expires_at": r.expires_at,
                "archive_sha256": r.archive_sha256,
                "archive_size": r.archive_size,
                "signed": r.signed,
                "uploaded_at": rfc3339(r.uploaded_at),
            })
        })
        .collect();
    Ok(Json(json!({ "releases": releases })))
}

fn rollout_json(r: &Rollout, stores: &[String]) -> Value {
    json!({
        "target": r.target,
        "version": r.version,
        "stage": r.stage.as_str(),
        "canary_percent": r.canary_percent,
        "canary_stores": stores.iter().filter(|s| rollout::in_canary(s, r.canary_percent)).count(),
        "max_failures": r.max_failures,
        "failures": r.failures,
        "installed": r.installed,
        "refused": r.refused,
        "halted_reason": r.halted_reason,
        "started_at": rfc3339(r.started_at),
        "updated_at": rfc3339(r.updated_at),
    })
}

/// Every store the hub knows, for `canary_stores`.
async fn store_ids(state: &AppState) -> Result<Vec<String>, ApiError> {
    Ok(state.db(|s| s.list_stores()).await?.into_iter().map(|v| v.store).collect())
}

async fn rollout_answer(state: &AppState, r: &Rollout) -> Result<Json<Value>, ApiError> {
    Ok(Json(rollout_json(r, &store_ids(state).await?)))
}

fn check_target(target: &str) -> Result<(), ApiError> {
    let ok = !target.is_empty()
        && target.len() <= 100
        && target.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if ok { Ok(()) } else { Err(invalid("invalid_target", format!("{target:?} is not a target triple"))) }
}

fn check_version(field: &str, version: &str) -> Result<(), ApiError> {
    storesync_shared::release::version(version)
        .map(|_| ())
        .map_err(|e| invalid("invalid_version", format!("{field}: {e}")))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct StartRollout {
    version: String,
    target: String,
    #[serde(default)]
    canary_percent: Option<u32>,
    #[serde(default)]
    max_failures: Option<u32>,
}

/// The default share of stores in the canary ring.
const DEFAULT_CANARY_PERCENT: u8 = 10;

/// `POST /v1/admin/rollouts`: starts a rollout of a stored release, replacing the target's active one.
#[utoipa::path(post, path = "/v1/admin/rollouts", tag = "releases", security(("admin_token" = [])),
    request_body = StartRollout,
    responses(
        (status = 201, description = "The rollout: \
            `{\"target\",\"version\",\"stage\",\"canary_percent\",\"canary_stores\",\"max_failures\",\
            \"failures\",\"installed\",\"refused\",\"halted_reason\",\"started_at\",\"updated_at\"}`",
            body = Object),
        (status = 400, description = "`malformed_json`: the body is not JSON", body = ErrorBody),
        (status = 404, description = "`unknown_release`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 422, description = "`invalid_version`, `invalid_target`, `invalid_canary_percent`, \
            `invalid_max_failures` or `invalid_body`", body = ErrorBody),
        AdminRefusals,
    ))]
async fn admin_start_rollout(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<StartRollout>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_version("version", &req.version)?;
    check_target(&req.target)?;
    let canary_percent = match req.canary_percent {
        None => DEFAULT_CANARY_PERCENT,
        Some(p) => u8::try_from(p)
            .ok()
            .filter(|p| *p <= 100)
            .ok_or_else(|| invalid("invalid_canary_percent", "canary_percent must be 0 to 100"))?,
    };
    let max_failures = req.max_failures.unwrap_or(1);
    if max_failures == 0 {
        return Err(invalid("invalid_max_failures", "max_failures must be at least 1"));
    }
    let new = NewRollout { target: req.target, version: req.version, canary_percent, max_failures };
    let now = state.now();
    let r = state.db(move |s| s.start_rollout(&new, now)).await?;
    info!(target_triple = %r.target, version = %r.version, canary_percent, stage = r.stage.as_str(),
          "rollout started");
    Ok((StatusCode::CREATED, rollout_answer(&state, &r).await?))
}

async fn change_rollout(
    state: &AppState,
    target: Result<Path<String>, PathRejection>,
    change: Transition,
) -> Result<Json<Value>, ApiError> {
    let Path(target) = target.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_path", e.body_text()))?;
    check_target(&target)?;
    let now = state.now();
    let what = match &change {
        Transition::Promote => "promoted",
        Transition::Halt(_) => "halted",
        Transition::Resume => "resumed",
    };
    let r = state.db(move |s| s.change_rollout(&target, &change, now)).await?;
    info!(target_triple = %r.target, version = %r.version, stage = r.stage.as_str(), "rollout {what}");
    rollout_answer(state, &r).await
}

/// `POST /v1/admin/rollouts/{target}/promote`: offer the release to every store.
#[utoipa::path(post, path = "/v1/admin/rollouts/{target}/promote", tag = "releases", security(("admin_token" = [])),
    params(("target" = String, Path, description = "A target triple")),
    responses(
        (status = 200, description = "The rollout: \
            `{\"target\",\"version\",\"stage\",\"canary_percent\",\"canary_stores\",\"max_failures\",\
            \"failures\",\"installed\",\"refused\",\"halted_reason\",\"started_at\",\"updated_at\"}`",
            body = Object),
        (status = 400, description = "`bad_path`, `bad_request`", body = ErrorBody),
        (status = 404, description = "`no_rollout`", body = ErrorBody),
        (status = 409, description = "`halted` (promote) or `not_halted` (resume)", body = ErrorBody),
        (status = 422, description = "`invalid_target`, `invalid_reason` or `invalid_body`", body = ErrorBody),
        AdminRefusals,
    ))]
async fn admin_promote(
    _: AdminAuth,
    State(state): State<AppState>,
    target: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    change_rollout(&state, target, Transition::Promote).await
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct HaltRequest {
    #[serde(default)]
    reason: Option<String>,
}

/// The most characters of a halt reason, or of a report's reason or detail.
const MAX_NOTE_CHARS: usize = 2000;

/// `POST /v1/admin/rollouts/{target}/halt` `{"reason"?}` (the body may be empty): offer it to nobody.
#[utoipa::path(post, path = "/v1/admin/rollouts/{target}/halt", tag = "releases", security(("admin_token" = [])),
    params(("target" = String, Path, description = "A target triple")),
    request_body(content = HaltRequest, description = "Optional: the body may be empty"),
    responses(
        (status = 200, description = "The rollout: \
            `{\"target\",\"version\",\"stage\",\"canary_percent\",\"canary_stores\",\"max_failures\",\
            \"failures\",\"installed\",\"refused\",\"halted_reason\",\"started_at\",\"updated_at\"}`",
            body = Object),
        (status = 400, description = "`bad_path`, `bad_request`", body = ErrorBody),
        (status = 404, description = "`no_rollout`", body = ErrorBody),
        (status = 409, description = "`halted` (promote) or `not_halted` (resume)", body = ErrorBody),
        (status = 422, description = "`invalid_target`, `invalid_reason` or `invalid_body`", body = ErrorBody),
        AdminRefusals,
    ))]
async fn admin_halt(
    _: AdminAuth,
    State(state): State<AppState>,
    target: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(body_rejection)?;
    let req: HaltRequest = if body.iter().all(u8::is_ascii_whitespace) {
        HaltRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| invalid("invalid_body", e.to_string()))?
    };
    let reason = req.reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty());
    if reason.as_ref().is_some_and(|r| r.chars().count() > MAX_NOTE_CHARS) {
        return Err(invalid("invalid_reason", format!("reason is at most {MAX_NOTE_CHARS} characters")));
    }
    let reason = reason.or_else(|| Some("halted by head office".to_owned()));
    change_rollout(&state, target, Transition::Halt(reason)).await
}

/// `POST /v1/admin/rollouts/{target}/resume`: back to the canary ring, failures reset.
#[utoipa::path(post, path = "/v1/admin/rollouts/{target}/resume", tag = "releases", security(("admin_token" = [])),
    params(("target" = String, Path, description = "A target triple")),
    responses(
        (status = 200, description = "The rollout: \
            `{\"target\",\"version\",\"stage\",\"canary_percent\",\"canary_stores\",\"max_failures\",\
            \"failures\",\"installed\",\"refused\",\"halted_reason\",\"started_at\",\"updated_at\"}`",
            body = Object),
        (status = 400, description = "`bad_path`, `bad_request`", body = ErrorBody),
        (status = 404, description = "`no_rollout`", body = ErrorBody),
        (status = 409, description = "`halted` (promote) or `not_halted` (resume)", body = ErrorBody),
        (status = 422, description = "`invalid_target`, `invalid_reason` or `invalid_body`", body = ErrorBody),
        AdminRefusals,
    ))]
async fn admin_resume(
    _: AdminAuth,
    State(state): State<AppState>,
    target: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    change_rollout(&state, target, Transition::Resume).await
}

/// `GET /v1/admin/rollouts`: every target's rollout and the fleet's version spread.
#[utoipa::path(get, path = "/v1/admin/rollouts", tag = "releases", security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{\"rollouts\":[rollout],\"version_spread\":[{\"version\",\"tills\"}]}`",
            body = Object),
        AdminRefusals,
    ))]
async fn admin_list_rollouts(_: AdminAuth, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let rollouts = state.db(|s| s.list_rollouts()).await?;
    let spread = state.db(|s| s.version_spread()).await?;
    let stores = store_ids(&state).await?;
    let rollouts: Vec<Value> = rollouts.iter().map(|r| rollout_json(r, &stores)).collect();
    let spread: Vec<Value> = spread.into_iter().map(|(v, n)| json!({"version": v, "tills": n})).collect();
    Ok(Json(json!({"rollouts": rollouts, "version_spread": spread})))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct UpdateQuery {
    /// The version the till runs (semantic version).
    version: String,
    /// The till's target triple.
    target: String,
}

/// `GET /v1/sync/update?version=<running>&target=<triple>`: the release this till's store is offered, or 204.
#[utoipa::path(get, path = "/v1/sync/update", tag = "releases", security(("till_credential" = [])), params(UpdateQuery),
    responses(
        (status = 200, description = "The release offered to this till's store",
            body = storesync_shared::release::UpdateOffer),
        (status = 204, description = "Nothing newer is offered"),
        (status = 422, description = "`invalid_query`, `invalid_version` or `invalid_target`", body = ErrorBody),
        TillRefusals,
    ))]
async fn sync_update(
    TillAuth(till): TillAuth,
    State(state): State<AppState>,
    query: Result<Query<UpdateQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_query", e.body_text()))?;
    check_version("version", &q.version)?;
    check_target(&q.target)?;
    let running = storesync_shared::release::version(&q.version).map_err(|e| invalid("invalid_version", e))?;
    let now = state.now();
    let t = till.clone();
    let (version, target) = (q.version.clone(), q.target.clone());
    let Some(cand) = state.db(move |s| s.check_update(&t, &version, &target, now)).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let r = &cand.rollout;
    let newer = storesync_shared::release::version(&r.version).is_ok_and(|v| v > running);
    match rollout::offered_ring(r.stage, r.canary_percent, &till.store) {
        Some(ring) if newer => {
            use base64::Engine as _;
            let offer = storesync_shared::release::UpdateOffer {
                manifest: b64().encode(&cand.manifest),
                signature: cand.signature.clone(),
                archive_path: format!("/v1/sync/releases/{}/{}/archive", r.version, r.target),
                ring: ring.to_owned(),
            };
            tracing::debug!(store_id = %till.store, till_id = %till.till, version = %r.version, ring,
                            "update offered");
            Ok(Json(offer).into_response())
        }
        _ => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// `GET /v1/sync/releases/{version}/{target}/archive`: the signed archive, as uploaded.
#[utoipa::path(get, path = "/v1/sync/releases/{version}/{target}/archive", tag = "releases",
    security(("till_credential" = [])),
    params(
        ("version" = String, Path, description = "The release version"),
        ("target" = String, Path, description = "A target triple"),
    ),
    responses(
        (status = 200, description = "The archive as uploaded (save it under the `Content-Disposition` name: the \
            zipsign signature is bound to it)",
            body = inline(crate::openapi::Binary), content_type = "application/gzip",
            headers(("content-disposition" = String))),
        (status = 400, description = "`bad_path`", body = ErrorBody),
        (status = 404, description = "`unknown_release`", body = ErrorBody),
        TillRefusals,
    ))]
async fn sync_release_archive(
    TillAuth(_): TillAuth,
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((version, target)) =
        path.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_path", e.body_text()))?;
    let unknown = || ApiError::new(StatusCode::NOT_FOUND, "unknown_release", "no such release");
    if check_version("version", &version).is_err() || check_target(&target).is_err() {
        return Err(unknown());
    }
    let (v, t) = (version.clone(), target.clone());
    let archive = state.db(move |s| s.release_archive(&v, &t)).await?.ok_or_else(unknown)?;
    let disposition = format!("attachment; filename=\"{}\"", crate::release::archive_file_name(&version, &target));
    let disposition = HeaderValue::from_str(&disposition).map_err(|_| ApiError::internal())?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/gzip")),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        archive,
    )
        .into_response())
}

/// `POST /v1/sync/update/report`: what became of a release at this till (the till is the credential's).
#[utoipa::path(post, path = "/v1/sync/update/report", tag = "releases", security(("till_credential" = [])),
    request_body = storesync_shared::release::UpdateReport,
    responses(
        (status = 200, description = "`{\"stage\",\"failures\"}` of the rollout the report counted against, or `{}`",
            body = Object),
        (status = 400, description = "`malformed_json`: the body is not JSON", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 422, description = "`invalid_body`, `invalid_version` or `invalid_target`", body = ErrorBody),
        TillRefusals,
    ))]
async fn sync_update_report(
    TillAuth(till): TillAuth,
    State(state): State<AppState>,
    JsonBody(report): JsonBody<storesync_shared::release::UpdateReport>,
) -> Result<Json<Value>, ApiError> {
    check_version("version", &report.version)?;
    check_version("running_version", &report.running_version)?;
    check_target(&report.target)?;
    for (field, text) in [("reason", &report.reason), ("detail", &report.detail)] {
        if text.as_ref().is_some_and(|t| t.chars().count() > MAX_NOTE_CHARS) {
            return Err(invalid("invalid_body", format!("{field} is at most {MAX_NOTE_CHARS} characters")));
        }
    }
    let new = NewUpdateReport {
        version: report.version,
        target: report.target,
        outcome: report.outcome,
        running_version: report.running_version,
        reason: report.reason,
        detail: report.detail,
    };
    let now = state.now();
    let t = till.clone();
    let outcome = new.outcome;
    let (version, reason) = (new.version.clone(), new.reason.clone());
    let effect = state.db(move |s| s.record_update_report(&t, &new, now)).await?;
    info!(store_id = %till.store, till_id = %till.till, version = %version, outcome = ?outcome,
          reason = reason.as_deref().unwrap_or(""), "update report");
    if effect.halted_now
        && let Some(r) = &effect.rollout
    {
        warn!(target_triple = %r.target, version = %r.version, failures = r.failures,
              reason = r.halted_reason.as_deref().unwrap_or(""), "rollout halted automatically");
    }
    Ok(Json(match &effect.rollout {
        Some(r) => json!({"stage": r.stage.as_str(), "failures": r.failures}),
        None => json!({}),
    }))
}
