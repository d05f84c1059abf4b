//! Buy online, pick up in store, head office's side (the planner and the design are [`crate::reservations`]):
//! `PUT /v1/admin/escrow`, `POST /v1/admin/reservations`, `GET /v1/admin/reservations/{id}` and
//! `POST /v1/admin/reservations/{id}/cancel`. A reservation's document holds are written by the planner, which a
//! new or cancelled reservation wakes.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use storesync_shared::crdt;
use storesync_shared::event::{MAX_QTY, MAX_TEXT_CHARS, check_sku, parse_timestamp};
use storesync_shared::reservation::{ReservationStatus, ReservedLine, check_lines, check_order_id};
use storesync_shared::wire::ErrorBody;
use tracing::info;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::api::auth::AdminAuth;
use crate::api::error::{ApiError, JsonBody, bad_path, invalid};
use crate::api::schema::AdminRefusals;
use crate::api::state::AppState;
use crate::reservations::{EscrowPolicy, MAX_STORES};
use crate::storage::reservations::{Change, NewReservation, Reservation, ReservationError, Reserved};

/// The answer to a new reservation.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReservationMade {
    reservation_id: Uuid,
    store: String,
    /// `reserved`.
    status: ReservationStatus,
}

/// `PUT /v1/admin/escrow`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EscrowRequest {
    pub store: String,
    pub sku: String,
    /// Units to hold back; or give `policy`.
    #[serde(default)]
    pub qty: Option<i64>,
    #[serde(default)]
    pub policy: Option<EscrowPolicy>,
}

/// The answer to `PUT /v1/admin/escrow`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EscrowAnswer {
    pub store: String,
    pub sku: String,
    pub escrow: i64,
    /// Units active reservations hold against it.
    pub reserved: i64,
    /// The hub's on-hand when a policy was applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_hand: Option<i64>,
}

/// `PUT /v1/admin/escrow`: sets how many units of a SKU a store holds back for online orders.
#[utoipa::path(put, path = "/v1/admin/escrow", tag = "admin", security(("admin_token" = [])),
    request_body = EscrowRequest,
    responses(
        (status = 200, description = "Set: at the hub now, at the tills by their next sync", body = EscrowAnswer),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 404, description = "`unknown_store`", body = ErrorBody),
        (status = 409, description = "`escrow_below_reserved`: active reservations hold more; nothing written",
            body = ErrorBody),
        (status = 422, description = "`invalid_sku`, `invalid_qty`, `invalid_policy` or `invalid_body`",
            body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn admin_put_escrow(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<EscrowRequest>,
) -> Result<Json<EscrowAnswer>, ApiError> {
    check_sku(&req.sku, "sku").map_err(|e| invalid(e.code, e.detail))?;
    let fixed = match (req.qty, req.policy) {
        (Some(q), None) if (0..=MAX_QTY).contains(&q) => Some(q),
        (Some(_), None) => return Err(invalid("invalid_qty", format!("qty must be an integer from 0 to {MAX_QTY}"))),
        (None, Some(p)) => {
            let ok = (0..=100).contains(&p.share_pct) && 0 <= p.floor && p.floor <= p.cap && p.cap <= MAX_QTY;
            if !ok {
                return Err(invalid(
                    "invalid_policy",
                    format!("policy needs share_pct 0 to 100 and 0 <= floor <= cap <= {MAX_QTY}"),
                ));
            }
            None
        }
        _ => return Err(invalid("invalid_qty", "give exactly one of qty and policy")),
    };
    let store = state.known_store(&req.store).await?;
    let now = state.now();
    let (qty, on_hand) = match (fixed, req.policy) {
        (Some(q), _) => (q, None),
        (None, Some(p)) => {
            let (s, sku) = (store.clone(), req.sku.clone());
            let on_hand = state
                .docs(move |d| {
                    d.read(&s, |doc, _| {
                        crdt::root_map(doc, crdt::STOCK).map_or(0, |st| crdt::on_hand(doc, &st, &sku, None))
                    })
                })
                .await?;
            (p.qty(on_hand), Some(on_hand))
        }
        (None, None) => return Err(invalid("invalid_qty", "give exactly one of qty and policy")),
    };
    let (s, sku) = (store.clone(), req.sku.clone());
    let policy = req.policy;
    let level = state.reservations(move |r| r.escrow_set(&s, &sku, qty, policy.as_ref(), now)).await?;
    let (s, sku) = (store.clone(), req.sku.clone());
    state.docs(move |d| d.set_escrow(&s, &[(sku, qty)], now)).await?;
    info!(store_id = %store, sku = %req.sku, escrow = qty, "escrow set");
    Ok(Json(EscrowAnswer { store, sku: req.sku, escrow: level.escrow, reserved: level.reserved, on_hand }))
}

/// `POST /v1/admin/reservations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReservationRequest {
    /// The online order: the same id again answers the same reservation.
    pub order_id: String,
    pub lines: Vec<ReservedLine>,
    /// Stores to try, in order of preference.
    pub stores: Vec<String>,
    /// RFC 3339: released (expired) when not collected by then.
    pub pickup_by: String,
}

/// Checks a reservation request and turns it into what storage takes.
pub(crate) fn new_reservation(req: ReservationRequest) -> Result<NewReservation, ApiError> {
    check_order_id(&req.order_id).map_err(|e| invalid(e.code, e.detail))?;
    check_lines(&req.lines).map_err(|e| invalid(e.code, e.detail))?;
    if req.stores.is_empty() || req.stores.len() > MAX_STORES {
        return Err(invalid("invalid_stores", format!("stores must list 1 to {MAX_STORES} stores")));
    }
    let mut seen = BTreeSet::new();
    for (i, s) in req.stores.iter().enumerate() {
        if !crate::secrets::valid_id(s) || !seen.insert(s.as_str()) {
            return Err(invalid("invalid_stores", format!("stores[{i}] is not a store id, or is listed twice")));
        }
    }
    let pickup_by = parse_timestamp(&req.pickup_by)
        .map(crdt::normalize_instant)
        .ok_or_else(|| invalid("invalid_pickup_by", "pickup_by must be RFC 3339 with an offset"))?;
    Ok(NewReservation {
        id: Uuid::new_v4(),
        order_id: req.order_id,
        lines: req.lines.into_iter().map(|l| (l.sku, l.qty)).collect(),
        stores: req.stores,
        pickup_by,
    })
}

/// `POST /v1/admin/reservations`: reserves an online order's lines at the first listed store that can cover them.
#[utoipa::path(post, path = "/v1/admin/reservations", tag = "admin", security(("admin_token" = [])),
    request_body = ReservationRequest,
    responses(
        (status = 201, description = "Reserved", body = ReservationMade),
        (status = 200, description = "This `order_id` was reserved before with the same request: that reservation",
            body = ReservationMade),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 409, description = "`unavailable`: no listed store's unreserved escrow covers every line; or \
            `order_id_conflict`: the order was reserved before with another request", body = ErrorBody),
        (status = 422, description = "`invalid_order_id`, `invalid_lines`, `invalid_sku`, `invalid_qty`, \
            `duplicate_sku`, `invalid_stores`, `invalid_pickup_by` or `invalid_body`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn admin_post_reservation(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<ReservationRequest>,
) -> Result<(StatusCode, Json<ReservationMade>), ApiError> {
    let r = new_reservation(req)?;
    let now = state.now();
    let order = r.order_id.clone();
    let (status, made) = match state.reservations(move |s| s.reserve(&r, now)).await? {
        Reserved::Created(made) => {
            // The till learns of it through the store document, which the planner writes next (one document write
            // for every reservation made meanwhile, off this request's path; the reservation is committed).
            state.planner.holds_due(made.store.clone());
            state.outbox.wake();
            (StatusCode::CREATED, made)
        }
        Reserved::Existing(made) => (StatusCode::OK, made),
        Reserved::Unavailable => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "unavailable",
                format!("no listed store can hold every line of order {order}"),
            ));
        }
    };
    Ok((status, Json(ReservationMade { reservation_id: made.reservation_id, store: made.store, status: made.status })))
}

fn reservation_id(path: Result<Path<String>, PathRejection>) -> Result<Uuid, ApiError> {
    let Path(id) = path.map_err(|e| bad_path(&e))?;
    Uuid::parse_str(&id)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "unknown_reservation", "no reservation has this id"))
}

/// `GET /v1/admin/reservations/{id}`: a reservation and its history.
#[utoipa::path(get, path = "/v1/admin/reservations/{id}", tag = "admin", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The reservation id")),
    responses(
        (status = 200, description = "The reservation, with every state change", body = Reservation),
        (status = 404, description = "`unknown_reservation`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn admin_get_reservation(
    _: AdminAuth,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Reservation>, ApiError> {
    let id = reservation_id(path)?;
    state.reservations(move |s| s.reservation(id)?.ok_or(ReservationError::NotFound)).await.map(Json)
}

/// `POST /v1/admin/reservations/{id}/cancel`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CancelRequest {
    pub reason: String,
}

/// Checks a cancellation reason.
pub(crate) fn check_reason(reason: &str) -> Result<(), ApiError> {
    if reason.trim().is_empty() || reason.chars().count() > MAX_TEXT_CHARS {
        return Err(invalid(
            "invalid_reason",
            format!("reason must be non-blank and at most {MAX_TEXT_CHARS} characters"),
        ));
    }
    Ok(())
}

/// `POST /v1/admin/reservations/{id}/cancel`: head office cancels (the customer cancelled online).
#[utoipa::path(post, path = "/v1/admin/reservations/{id}/cancel", tag = "admin", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The reservation id")),
    request_body = CancelRequest,
    responses(
        (status = 200, description = "Cancelled (or it was already): its units are released", body = Reservation),
        (status = 404, description = "`unknown_reservation`", body = ErrorBody),
        (status = 409, description = "`reservation_finished`: it was collected or expired", body = ErrorBody),
        (status = 422, description = "`invalid_reason` or `invalid_body`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn admin_cancel_reservation(
    _: AdminAuth,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<CancelRequest>,
) -> Result<Json<Reservation>, ApiError> {
    let id = reservation_id(path)?;
    check_reason(&req.reason)?;
    let now = state.now();
    let change = Change::Cancelled { reason: req.reason };
    let r = state.reservations(move |s| s.change(id, &change, now)).await?;
    state.planner.holds_due(r.store.clone());
    state.outbox.wake();
    Ok(Json(r))
}
