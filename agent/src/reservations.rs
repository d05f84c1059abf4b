//! Buy online, pick up in store, till half: the reservations to pick, picking and cancelling them, and the
//! `held_for_online` warning.
//!
//! Design note:
//! - The till learns of its store's reservations from the store document: the hub writes each active reservation
//!   as a hold in the escrow map (`crdt::holds`), beside the escrow itself, and the ordinary CRDT sync brings them.
//!   So the list is read from the local cache and works offline; no other channel or credential is involved.
//! - Picking and cancelling are journal events like any other (`reservation_pick`, `reservation_cancel`), written
//!   through the journal writer, answered after COMMIT, uploaded like the rest; a sale with `reservation_id` is the
//!   collection. The hub applies them when it receives them. Until the hub's answer comes back in the document,
//!   the list overlays what this till journaled itself (the last 10,000 journal entries are looked at).
//! - A walk-in sale is never refused for want of stock. When it leaves less on hand than the escrow of one of its
//!   SKUs, it dipped into units held for online orders: the receipt says `"warnings":["held_for_online"]`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use storesync_shared::crdt;
use storesync_shared::event::{EventBody, TillReservationBody};
use storesync_shared::reservation::{ReservationStatus, ReservedLine};
use storesync_shared::wire::{ErrorBody, Receipt};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AgentState;
use crate::api::{ApiError, Body};
use crate::journal::{AppendOutcome, DocState};

/// The warning a sale's receipt carries when it sold units held for online orders.
pub const HELD_FOR_ONLINE: &str = "held_for_online";

/// How many of the newest journal entries are looked at for this till's own actions on reservations.
const LOCAL_WINDOW: i64 = 10_000;

/// A reservation to pick, as this till sees it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TillReservation {
    reservation_id: Uuid,
    order_id: String,
    lines: Vec<ReservedLine>,
    /// RFC 3339, UTC.
    pickup_by: String,
    /// `reserved` or `picked`.
    status: ReservationStatus,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReservationList {
    /// Oldest pickup first.
    reservations: Vec<TillReservation>,
}

/// What this till journaled about a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Local {
    Picked,
    Ended,
}

fn local_actions(conn: &rusqlite::Connection) -> anyhow::Result<HashMap<Uuid, Local>> {
    let mut stmt = conn.prepare_cached(
        "SELECT kind, body FROM journal WHERE seq > (SELECT COALESCE(MAX(seq), 0) FROM journal) - ?1
           AND (kind IN ('reservation_pick', 'reservation_cancel')
                OR (kind = 'sale' AND body LIKE '%\"reservation_id\"%'))
         ORDER BY seq",
    )?;
    let rows = stmt.query_map([LOCAL_WINDOW], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = HashMap::new();
    for row in rows {
        let (kind, body) = row?;
        let Some(kind) = storesync_shared::EventKind::parse(&kind) else { continue };
        let Ok(value) = serde_json::from_str(&body) else { continue };
        match EventBody::from_stored(kind, value) {
            Ok(EventBody::ReservationPick(b)) => {
                out.entry(b.reservation_id).or_insert(Local::Picked);
            }
            Ok(EventBody::ReservationCancel(b)) => {
                out.insert(b.reservation_id, Local::Ended);
            }
            Ok(EventBody::Sale(b)) => {
                if let Some(id) = b.reservation_id {
                    out.insert(id, Local::Ended);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The holds in this till's copy of the store document, as last committed.
fn holds(s: &AgentState) -> Vec<crdt::Hold> {
    let Ok(d) = s.journal.docs().read() else { return Vec::new() };
    crdt::root_map(&d.doc, crdt::ESCROW).map(|e| crdt::holds(&d.doc, &e, Some(&d.committed_heads))).unwrap_or_default()
}

/// `GET /v1/reservations`: the store's reservations to pick, from the local copy (works offline).
#[utoipa::path(get, path = "/v1/reservations", tag = "reads",
    responses((status = 200, description = "Active reservations of this store, oldest pickup first; what this till \
        picked, cancelled or collected itself shows at once", body = ReservationList)))]
pub(crate) async fn list(State(s): State<Arc<AgentState>>) -> Result<Json<ReservationList>, ApiError> {
    let state = s.clone();
    let (holds, local) = tokio::task::spawn_blocking(move || {
        let local = state.journal.reads().with(local_actions)?;
        Ok::<_, anyhow::Error>((holds(&state), local))
    })
    .await
    .map_err(|e| internal(e.into()))?
    .map_err(internal)?;
    let mut reservations: Vec<TillReservation> = holds
        .into_iter()
        .filter_map(|h| {
            let status = match local.get(&h.reservation_id) {
                Some(Local::Ended) => return None,
                Some(Local::Picked) => ReservationStatus::Picked,
                None => h.status,
            };
            Some(TillReservation {
                reservation_id: h.reservation_id,
                order_id: h.order_id,
                lines: h.lines,
                pickup_by: h.pickup_by,
                status,
            })
        })
        .collect();
    reservations.sort_by(|a, b| (&a.pickup_by, a.reservation_id).cmp(&(&b.pickup_by, b.reservation_id)));
    Ok(Json(ReservationList { reservations }))
}

fn internal(e: anyhow::Error) -> ApiError {
    tracing::error!(error = %format!("{e:#}"), "internal error in the reservations API");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the agent's log")
}

/// The body of `POST /v1/reservations/{id}/picked` and `/cancel` (all optional for a pick).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActionRequest {
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
        None => OffsetDateTime::now_utc().format(&Rfc3339).map_err(|e| internal(e.into()))?,
    };
    let b = TillReservationBody { schema: 1, occurred_at, reservation_id: id, reason: req.reason };
    let body = if cancel { EventBody::ReservationCancel(b) } else { EventBody::ReservationPick(b) };
    body.validate().map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.code, e.detail))?;
    let state = s.clone();
    let known = tokio::task::spawn_blocking(move || holds(&state).iter().any(|h| h.reservation_id == id))
        .await
        .map_err(|e| internal(e.into()))?;
    if !known {
        return Err(unknown());
    }
    let (status, receipt): (StatusCode, Receipt) = match s.journal.append(req.event_id, body).await? {
        AppendOutcome::Created(r) => {
            s.sync_wake.notify_one();
            (StatusCode::CREATED, r)
        }
        AppendOutcome::Existing(r) => (StatusCode::OK, r),
    };
    Ok((status, Json(receipt)).into_response())
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
pub(crate) async fn picked(
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
pub(crate) async fn cancel(
    State(s): State<Arc<AgentState>>,
    path: Result<Path<String>, PathRejection>,
    Body(bytes): Body,
) -> Result<Response, ApiError> {
    act(s, path, &bytes, true).await
}

/// The SKUs of `body` whose sale may dip into escrow: a sale's, unless it collects a reservation.
pub(crate) fn walk_in_skus(body: &EventBody) -> Vec<String> {
    match body {
        EventBody::Sale(b) if b.reservation_id.is_none() => b.lines.iter().map(|l| l.sku.clone()).collect(),
        _ => Vec::new(),
    }
}

/// The warnings for a journaled walk-in sale of `skus`: [`HELD_FOR_ONLINE`] when, now, one of them has less on
/// hand than its escrow. Read under one lock of the store document.
fn warnings(d: &DocState, skus: &[String]) -> Vec<String> {
    let dipped = skus.iter().any(|sku| d.escrow.get(sku).is_some_and(|&held| held > 0 && d.on_hand(sku) < held));
    if dipped { vec![HELD_FOR_ONLINE.to_owned()] } else { Vec::new() }
}

/// [`warnings`] for a sale's receipt. Every walk-in sale asks, so it reads the in-memory document right here
/// when the lock is free (a few microseconds) and takes the blocking pool only while the writer holds the lock
/// (a fold), instead of a thread hop per sale.
pub(crate) async fn receipt_warnings(s: &Arc<AgentState>, skus: Vec<String>) -> Vec<String> {
    // The guard must be gone before any await (it is not `Send`), so the lock is tried in its own statement.
    let now = match s.journal.docs().try_read() {
        Ok(d) => Some(warnings(&d, &skus)),
        Err(std::sync::TryLockError::WouldBlock) => None,
        Err(std::sync::TryLockError::Poisoned(_)) => Some(Vec::new()),
    };
    if let Some(w) = now {
        return w;
    }
    let docs = s.journal.docs().clone();
    tokio::task::spawn_blocking(move || docs.read().map(|d| warnings(&d, &skus)).unwrap_or_default())
        .await
        .unwrap_or_default()
}
