//! The till's reservation endpoints (buy online, pick up in store): the list to pick, and picking and cancelling
//! one. What they read and journal is described in [`crate::reservations`].

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use storesync_shared::crdt::Hold;
use storesync_shared::event::{EventBody, TillReservationBody};
use storesync_shared::reservation::{ReservationStatus, ReservedLine};
use storesync_shared::wire::{ErrorBody, Receipt};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{ApiError, Body, blocking};
use super::writes::journal_write;
use crate::AgentState;
use crate::reservations::{is_held, to_pick};

/// A reservation to pick, as this till sees it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TillReservation {
    reservation_id: Uuid,
    order_id: String,
    lines: Vec<ReservedLine>,
    /// RFC 3339, UTC.
    pickup_by: String,
    /// `reserved` or `picked`.
    status: ReservationStatus,
}

impl From<Hold> for TillReservation {
    fn from(h: Hold) -> TillReservation {
        TillReservation {
            reservation_id: h.reservation_id,
            order_id: h.order_id,
            lines: h.lines,
            pickup_by: h.pickup_by,
            status: h.status,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ReservationList {
    /// Oldest pickup first.
    reservations: Vec<TillReservation>,
}

/// `GET /v1/reservations`: the store's reservations to pick, from the local copy (works offline).
#[utoipa::path(get, path = "/v1/reservations", tag = "reads",
    responses((status = 200, description = "Active reservations of this store, oldest pickup first; what this till \
        picked, cancelled or collected itself shows at once", body = ReservationList)))]
pub(super) async fn list(State(s): State<Arc<AgentState>>) -> Result<Json<ReservationList>, ApiError> {
    let holds = blocking(move || to_pick(&s)).await?;
    Ok(Json(ReservationList { reservations: holds.into_iter().map(TillReservation::from).collect() }))
}

/// The body of `POST /v1/reservations/{id}/picked` and `/cancel` (all optional for a pick).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ActionRequest {
    /// As for every write: the same id again is answered with the first receipt.
    #[serde(default)]
    event_id: Option<Uuid>,
    /// RFC 3339 with an offset; default now.
    #[serde(default)]
    occurred_at: Option<String>,
    /// Required to cancel; refused on a pick.
    #[serde(default)]
    reason: Option<String>,
}

async fn act(
    s: Arc<AgentState>,
    path: Result<Path<String>, PathRejection>,
    bytes: &[u8],
    cancel: bool,
) -> Result<Response, ApiError> {
    let Path(id) = path.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_path", e.body_text()))?;
    let unknown =
        || ApiError::new(StatusCode::NOT_FOUND, "unknown_reservation", "this store holds no such reservation");
    let id = Uuid::parse_str(&id).map_err(|_| unknown())?;
    let req: ActionRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        ActionRequest::default()
    } else {
        serde_json::from_slice(bytes).map_err(|e| {
            if e.is_data() {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", e.to_string())
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("request body is not valid JSON: {e}"))
            }
        })?
    };
    let occurred_at = match req.occurred_at {
        Some(t) => t,
        None => OffsetDateTime::now_utc().format(&Rfc3339).map_err(|e| ApiError::internal(e.into()))?,
    };
    let b = TillReservationBody { schema: 1, occurred_at, reservation_id: id, reason: req.reason };
    let body = if cancel { EventBody::ReservationCancel(b) } else { EventBody::ReservationPick(b) };
    body.validate().map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.code, e.detail))?;
    let state = s.clone();
    if !blocking(move || Ok(is_held(&state, id))).await? {
        return Err(unknown());
    }
    journal_write(&s, req.event_id, body).await
}

/// `POST /v1/reservations/{id}/picked`: the goods are set aside for the customer (journaled, works offline).
#[utoipa::path(post, path = "/v1/reservations/{id}/picked", tag = "writes",
    params(("id" = String, Path, description = "The reservation id")),
    request_body(content = ActionRequest, description = "Optional: `event_id`, `occurred_at`"),
    responses(
        (status = 201, description = "Journaled (kind `reservation_pick`)", body = Receipt),
        (status = 200, description = "This `event_id` was journaled before", body = Receipt),
        (status = 404, description = "`unknown_reservation`: this store's copy holds no such reservation",
            body = ErrorBody),
        (status = 422, description = "`unexpected_reason`, `invalid_occurred_at` or `invalid_body`", body = ErrorBody),
        (status = 503, description = "`journal_unavailable`", body = ErrorBody),
    ))]
pub(super) async fn picked(
    State(s): State<Arc<AgentState>>,
    path: Result<Path<String>, PathRejection>,
    Body(bytes): Body,
) -> Result<Response, ApiError> {
    act(s, path, &bytes, false).await
}

/// `POST /v1/reservations/{id}/cancel`: the store cancels, with a reason (journaled, works offline).
#[utoipa::path(post, path = "/v1/reservations/{id}/cancel", tag = "writes",
    params(("id" = String, Path, description = "The reservation id")),
    request_body(content = ActionRequest, description = "`reason` (required), `event_id`, `occurred_at`"),
    responses(
        (status = 201, description = "Journaled (kind `reservation_cancel`)", body = Receipt),
        (status = 200, description = "This `event_id` was journaled before", body = Receipt),
        (status = 404, description = "`unknown_reservation`", body = ErrorBody),
        (status = 422, description = "`invalid_text` (no reason), `invalid_occurred_at` or `invalid_body`",
            body = ErrorBody),
        (status = 503, description = "`journal_unavailable`", body = ErrorBody),
    ))]
pub(super) async fn cancel(
    State(s): State<Arc<AgentState>>,
    path: Result<Path<String>, PathRejection>,
    Body(bytes): Body,
) -> Result<Response, ApiError> {
    act(s, path, &bytes, true).await
}
