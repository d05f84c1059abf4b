//! The POS API's error answer ([`ApiError`], always `{"error": code, "detail": text}`), the mapping of journal
//! refusals to HTTP status codes, and the raw-body extractor whose rejections answer in the same shape.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::journal::AppendError;

/// The largest request body the POS API reads.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

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

    /// A failure the client cannot do anything about: logged in full, answered without internals.
    pub(crate) fn internal(e: anyhow::Error) -> ApiError {
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
    /// A conflict with the journal is a 409, an invalid request a 422, an unavailable journal a 503.
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

/// Runs blocking work (a journal read) on the blocking pool; a failure is an internal error.
pub(crate) async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<R> + Send + 'static,
) -> Result<R, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(e.into()))?.map_err(ApiError::internal)
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
