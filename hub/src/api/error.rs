//! The one error of the hub's HTTP surface, [`ApiError`] (`{"error": code, "detail": text}` plus optional
//! fields), how the domain's errors map onto it, and [`JsonBody`], the JSON extractor whose rejections use the same
//! body. Internal errors are logged here and shown as `internal`/`storage_unavailable` without their details.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;
use storesync_shared::wire::UploadRefusal;
use tracing::{error, warn};

use crate::docs::DocError;
use crate::storage::reservations::ReservationError;
use crate::storage::{IngestError, RedeemError, RolloutError, StorageError};

/// Every error the hub answers with: `{"error": code, "detail": text}` plus optional extra fields.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    pub(crate) detail: String,
    expected_seq: Option<u64>,
    seq: Option<u64>,
    retry_after: Option<u64>,
    /// The hub's epoch, for `epoch_mismatch`.
    pub(crate) epoch: Option<u64>,
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

    pub(crate) fn internal() -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }

    pub(crate) fn unauthorized() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing, unknown or revoked credential")
    }
}

/// 422 with `code`: a request field the hub refuses.
pub(crate) fn invalid(code: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
}

/// 404 `unknown_store`.
pub(crate) fn unknown_store() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "unknown_store", "no till of this store is known to the hub")
}

/// 400 `bad_path`: a path parameter that does not parse.
pub(crate) fn bad_path(rej: &axum::extract::rejection::PathRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_path", rej.body_text())
}

/// 422 `invalid_query`: a query string that does not parse.
pub(crate) fn invalid_query(rej: &axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_query", rej.body_text())
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
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_busy", "the hub is busy, retry").with_retry_after(1)
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

impl From<ReservationError> for ApiError {
    fn from(err: ReservationError) -> ApiError {
        match err {
            ReservationError::NotFound => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_reservation", "no reservation has this id")
            }
            ReservationError::EscrowBelowReserved { .. } => {
                ApiError::new(StatusCode::CONFLICT, "escrow_below_reserved", err.to_string())
            }
            ReservationError::OrderConflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "order_id_conflict", err.to_string())
            }
            ReservationError::Finished { .. } => {
                ApiError::new(StatusCode::CONFLICT, "reservation_finished", err.to_string())
            }
            ReservationError::Storage(e) => e.into(),
        }
    }
}

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
pub(crate) fn body_rejection(rej: BytesRejection) -> ApiError {
    if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "request body is too large")
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", rej.body_text())
    }
}
