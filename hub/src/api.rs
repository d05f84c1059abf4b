//! The hub's HTTP surface (`/v1/...`): enrolment, journal upload, till state, admin.
//!
//! Design note: handlers are thin. They authenticate (till credential or admin token), parse the body with
//! [`JsonBody`] (whose rejections use the same `{"error","detail"}` body as [`ApiError`]), and call one
//! [`Storage`] method on the blocking pool. The store and till of every till request come from the credential
//! alone. Every error a client sees is an [`ApiError`] with a stable code; internal errors are logged and shown as
//! `internal`/`storage_unavailable` without their details.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use storesync_shared::wire::{
    EnrollRequest, EnrollResponse, MAX_BATCH_BYTES, TillState, UploadAck, UploadRefusal, UploadRequest,
};
use tracing::{error, info, warn};

use crate::secrets;
use crate::storage::{IngestError, NewEnrollment, RedeemError, Storage, StorageError, TillId};
use crate::{Clock, Config, EnrollLimits};

/// Enrolment codes live at most this long.
const MAX_TTL_S: i64 = 30 * 86_400;
const DEFAULT_TTL_S: i64 = 86_400;
const DEFAULT_EVENTS_LIMIT: usize = 100;
const MAX_EVENTS_LIMIT: usize = 1000;
/// The most bytes of a non-upload request body.
const MAX_SMALL_BODY: usize = 16 * 1024;

struct Inner {
    storage: Arc<dyn Storage>,
    admin_token: String,
    clock: Arc<dyn Clock>,
    enroll_limits: EnrollLimits,
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
        AppState(Arc::new(Inner { storage, admin_token, clock, enroll_limits }))
    }

    /// Opens the data dir's database and admin token as `config` says.
    pub fn open(config: &Config) -> anyhow::Result<AppState> {
        let storage = crate::open_storage(&config.data_dir)?;
        let admin_token = match &config.admin_token {
            Some(t) if !t.trim().is_empty() => t.trim().to_owned(),
            _ => {
                let path = config.data_dir.join("admin.token");
                let token = secrets::load_or_create_admin_token(&path)?;
                info!(path = %path.display(), "admin token is in this file");
                token
            }
        };
        Ok(AppState::new(Arc::new(storage), admin_token, config.clock.clone(), config.enroll_limits))
    }

    fn now(&self) -> i64 {
        self.0.clock.now()
    }

    /// Runs one storage call on the blocking pool.
    async fn db<T, E>(&self, f: impl FnOnce(&dyn Storage) -> Result<T, E> + Send + 'static) -> Result<T, ApiError>
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
    let upload = Router::new().route("/v1/sync/upload", post(upload)).layer(DefaultBodyLimit::max(MAX_BATCH_BYTES));
    Router::new()
        .route("/v1/enroll", post(enroll))
        .route("/v1/sync/state", get(sync_state))
        .route("/v1/admin/enrollments", post(admin_create_enrollment))
        .route("/v1/admin/revoke", post(admin_revoke))
        .route("/v1/admin/stores", get(admin_stores))
        .route("/v1/admin/events", get(admin_events))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .layer(DefaultBodyLimit::max(MAX_SMALL_BODY))
        .merge(upload)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(state)
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
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError { status, code, detail: detail.into(), expected_seq: None, seq: None, retry_after: None }
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
        let body = UploadRefusal {
            error: self.code.into(),
            detail: self.detail,
            expected_seq: self.expected_seq,
            seq: self.seq,
        };
        let mut res = (self.status, Json(body)).into_response();
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
        let bytes = Bytes::from_request(req, state).await.map_err(|rej: BytesRejection| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "request body is too large")
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", rej.body_text())
            }
        })?;
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
        let till = state.db(move |s| s.authenticate(&hash)).await?;
        till.map(TillAuth).ok_or_else(ApiError::unauthorized)
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
                warn!(client = %ip, error = err.code, "enrolment refused");
                let ip_q = ip.clone();
                state.db(move |s| s.record_failed_attempt(&ip_q, now)).await?;
            }
            Err(err)
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateEnrollment {
    store: String,
    till: String,
    #[serde(default)]
    ttl_s: Option<i64>,
}

/// The answer to a new enrolment code.
#[derive(Debug, Serialize, Deserialize)]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    store: String,
    till: String,
}

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

async fn upload(
    TillAuth(till): TillAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<UploadRequest>,
) -> Result<Json<UploadAck>, ApiError> {
    let now = state.now();
    let n = req.events.len();
    let t = till.clone();
    let res = state.db(move |s| s.append_batch(&t, &req, now)).await;
    match &res {
        Ok(ack) => tracing::debug!(store_id = %till.store, till_id = %till.till, events = n,
                                   acked_through = ack.acked_through, "upload acknowledged"),
        Err(err) => warn!(store_id = %till.store, till_id = %till.till, error = err.code,
                          detail = %err.detail, "upload refused"),
    }
    res.map(Json)
}

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
}

async fn admin_events(
    _: AdminAuth,
    State(state): State<AppState>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
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
    let store = q.store.filter(|s| !s.is_empty());
    let events = state.db(move |s| s.list_events(store.as_deref(), after, limit)).await?;
    let next = events.last().map(|e| e.hub_pos.to_string());
    let events: Vec<Value> = events
        .into_iter()
        .map(|e| {
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
            })
        })
        .collect();
    Ok(Json(json!({ "events": events, "next": next })))
}
