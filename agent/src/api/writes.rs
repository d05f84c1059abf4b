//! The POS API's journal writes: sales, returns, voids, transfers and adjustments, each answered with a receipt
//! once its COMMIT returned.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use storesync_shared::event::{
    AdjustmentBody, BodyType, EventBody, ReturnBody, SaleBody, TransferBody, VoidBody, parse_request,
};
use storesync_shared::wire::{ErrorBody, Receipt};
use utoipa::IntoResponses;
use uuid::Uuid;

use super::error::{ApiError, Body};
use crate::AgentState;
use crate::journal::AppendOutcome;
use crate::reservations::{receipt_warnings, walk_in_skus};

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
pub(super) async fn post_sale(s: State<Arc<AgentState>>, b: Body) -> Result<Response, ApiError> {
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
pub(super) async fn post_return(s: State<Arc<AgentState>>, b: Body) -> Result<Response, ApiError> {
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
pub(super) async fn post_void(s: State<Arc<AgentState>>, b: Body) -> Result<Response, ApiError> {
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
pub(super) async fn post_transfer(s: State<Arc<AgentState>>, b: Body) -> Result<Response, ApiError> {
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
pub(super) async fn post_adjustment(s: State<Arc<AgentState>>, b: Body) -> Result<Response, ApiError> {
    write(s, BodyType::Adjustment, b).await
}

async fn write(State(s): State<Arc<AgentState>>, ty: BodyType, Body(bytes): Body) -> Result<Response, ApiError> {
    let (event_id, body) = parse_request(ty, &bytes).map_err(|e| {
        let status =
            if e.code == "malformed_json" { StatusCode::BAD_REQUEST } else { StatusCode::UNPROCESSABLE_ENTITY };
        ApiError::new(status, e.code, e.detail)
    })?;
    journal_write(&s, event_id, body).await
}

/// Journals `body` and answers its receipt: 201 once newly journaled (and sync is woken), 200 when this `event_id`
/// was journaled before with the same body. A walk-in sale's receipt says whether it dipped into units held for
/// online orders.
pub(super) async fn journal_write(
    s: &Arc<AgentState>,
    event_id: Option<Uuid>,
    body: EventBody,
) -> Result<Response, ApiError> {
    let walk_in = walk_in_skus(&body);
    let (status, appended, warnings) = match s.journal.append(event_id, body).await? {
        AppendOutcome::Created(a) => {
            s.sync_wake.notify_one();
            let warnings = if walk_in.is_empty() { Vec::new() } else { receipt_warnings(s, walk_in).await };
            (StatusCode::CREATED, a, warnings)
        }
        AppendOutcome::Existing(a) => (StatusCode::OK, a, Vec::new()),
    };
    let receipt = Receipt { event_id: appended.event_id, seq: appended.seq, hash: appended.hash, warnings };
    Ok((status, Json(receipt)).into_response())
}
