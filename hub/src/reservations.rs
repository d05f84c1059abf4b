//! Buy online, pick up in store, hub half: escrow per store and SKU, and reservations against it.
//!
//! Design note:
//! - **Escrow** is how many units of a SKU a store holds back for online orders. Head office sets it with
//!   `PUT /v1/admin/escrow` (a quantity, or a policy: a share of the store's on-hand now, with a floor and a cap).
//!   The `escrow` table ([`ReservationStore`]) is the authority the reservation check runs against; the store's
//!   automerge document carries a copy (`escrow/qty\u{1f}<sku>`, written only by the hub) so every till knows it
//!   offline. The table is written first; a failed document write answers 5xx and the same PUT again repairs it
//!   (the document write is skipped when it already holds the value). Growing escrow takes effect at the hub at
//!   once and at a till when its next CRDT sync brings it; shrinking it below what active reservations hold is
//!   refused (409 `escrow_below_reserved`).
//! - **Reservations** are made only against *unreserved escrow*, never against on-hand stock: units a till may
//!   sell while offline are never promised. The check and the write are one database transaction (see
//!   `storage/reservations.rs`), so several hub instances never promise the same unit twice.
//! - Every state change writes its canonical event into the outbox in the same transaction, so ERP and CRM hear of
//!   each exactly once (deduplicating deliveries by `event_id`).
//! - **Tills learn of reservations through the store document**: each active reservation is a hold
//!   (`escrow/hold\u{1f}<id>`, JSON) that only the hub writes. So the list a till shows is in its local CRDT cache
//!   and works offline, arrives over the channel and credential a till already uses for its own store only, and is
//!   bounded: a hold is removed when its reservation ends, and compaction carries only the live ones.
//! - **The planner** ([`run`]), a background task hearing the shutdown token: after every upload (and every
//!   notification of new events) it applies the tills' actions (1); once a second it makes a full pass (1-4):
//!   1. applies what tills journaled (picked, cancelled, a sale collecting it) exactly once, by a cursor over the
//!      stored events moved in the same transaction ([`ReservationStore::consume_till_events`]);
//!   2. expires reservations not collected by `pickup_by` (releasing their units);
//!   3. re-plans a store that sold held stock: when a store's on-hand (the hub's copy of its document) no longer
//!      covers its active reservations of a SKU, the newest `reserved` ones (never a `picked` one: those goods are
//!      set aside) are rerouted to the next store of their list that can hold them, or cancelled with a reason;
//!   4. brings the holds in the documents of the stores it touched (and, every minute, of every store with active
//!      reservations) up to the reservations. A hold write that fails is retried on the next pass.
//!
//!   Every state change it makes is one storage transaction, so several hub instances running it at once at
//!   worst find a change already made.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use storesync_shared::crdt;
use storesync_shared::event::{MAX_QTY, MAX_TEXT_CHARS, check_sku, parse_timestamp};
use storesync_shared::reservation::{ReservedLine, check_lines, check_order_id};
use storesync_shared::wire::ErrorBody;
use tracing::{error, info};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::api::{AdminAuth, ApiError, AppState, JsonBody};
use crate::storage::reservations::{Change, NewReservation, Reservation, ReservationError, ReservationStore, Reserved};

/// The most stores one reservation may list.
pub const MAX_STORES: usize = 50;

/// Opens the reservation store of the hub's database.
///
/// The SQLite backend only, for now: escrow and reservations live in `<data-dir>/hub.db` beside everything else
/// (a second handle on the same file; every write is `BEGIN IMMEDIATE`, so the two handles serialise in SQLite).
/// A hub configured for PostgreSQL has none (`None`: the endpoints answer 503 `reservations_unavailable`) until
/// `postgres_reservations.rs` exists: a `hub.db` per instance would split the escrow invariant between instances.
pub fn open_store(config: &crate::Config) -> anyhow::Result<Option<Arc<dyn ReservationStore>>> {
    if config.database.is_some() {
        return Ok(None);
    }
    Ok(Some(Arc::new(crate::open_storage(&config.data_dir)?)))
}

/// The reservation routes (see [`crate::openapi`] for how a route is added).
pub fn routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::default()
        .routes(routes!(admin_put_escrow))
        .routes(routes!(admin_post_reservation))
        .routes(routes!(admin_get_reservation))
        .routes(routes!(admin_cancel_reservation))
}

fn invalid(code: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
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

/// Runs one reservation-store call on the blocking pool.
pub(crate) async fn store_call<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&dyn ReservationStore) -> Result<T, ReservationError> + Send + 'static,
) -> Result<T, ApiError> {
    let Some(store) = state.reservation_store() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "reservations_unavailable",
            "this hub's storage keeps no reservations",
        ));
    };
    match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
        Ok(res) => res.map_err(Into::into),
        Err(err) => {
            error!(error = %err, "reservation task failed");
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error"))
        }
    }
}

/// A share of on-hand to hold back: `qty = clamp(on_hand × share_pct / 100, floor, cap)`, rounded down.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EscrowPolicy {
    /// 0 to 100.
    pub share_pct: i64,
    #[serde(default)]
    pub floor: i64,
    pub cap: i64,
}

impl EscrowPolicy {
    /// The escrow this policy gives at `on_hand` (negative stock holds back the floor).
    pub fn qty(&self, on_hand: i64) -> i64 {
        (on_hand.max(0).saturating_mul(self.share_pct) / 100).clamp(self.floor, self.cap)
    }
}

/// `PUT /v1/admin/escrow`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EscrowRequest {
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
pub struct EscrowAnswer {
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
        crate::openapi::AdminRefusals,
    ))]
async fn admin_put_escrow(
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
    let store = crate::api::known_store(&state, &req.store).await?;
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
    let level = store_call(&state, move |r| r.escrow_set(&s, &sku, qty, now)).await?;
    let (s, sku) = (store.clone(), req.sku.clone());
    state.docs(move |d| d.set_escrow(&s, &[(sku, qty)], now)).await?;
    info!(store_id = %store, sku = %req.sku, escrow = qty, "escrow set");
    Ok(Json(EscrowAnswer { store, sku: req.sku, escrow: level.escrow, reserved: level.reserved, on_hand }))
}

/// `POST /v1/admin/reservations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReservationRequest {
    /// The online order: the same id again answers the same reservation.
    pub order_id: String,
    pub lines: Vec<ReservedLine>,
    /// Stores to try, in order of preference.
    pub stores: Vec<String>,
    /// RFC 3339: released (expired) when not collected by then.
    pub pickup_by: String,
}

/// Checks a reservation request and turns it into what storage takes.
pub fn new_reservation(req: ReservationRequest) -> Result<NewReservation, ApiError> {
    check_order_id(&req.order_id).map_err(|e| invalid(e.code, e.detail))?;
    check_lines(&req.lines).map_err(|e| invalid(e.code, e.detail))?;
    if req.stores.is_empty() || req.stores.len() > MAX_STORES {
        return Err(invalid("invalid_stores", format!("stores must list 1 to {MAX_STORES} stores")));
    }
    let mut seen = std::collections::BTreeSet::new();
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
        (status = 201, description = "`{\"reservation_id\",\"store\",\"status\":\"reserved\"}`", body = Object),
        (status = 200, description = "This `order_id` was reserved before with the same request: that reservation",
            body = Object),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 409, description = "`unavailable`: no listed store's unreserved escrow covers every line; or \
            `order_id_conflict`: the order was reserved before with another request", body = ErrorBody),
        (status = 422, description = "`invalid_order_id`, `invalid_lines`, `invalid_sku`, `invalid_qty`, \
            `duplicate_sku`, `invalid_stores`, `invalid_pickup_by` or `invalid_body`", body = ErrorBody),
        crate::openapi::AdminRefusals,
    ))]
async fn admin_post_reservation(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<ReservationRequest>,
) -> Result<Response, ApiError> {
    let r = new_reservation(req)?;
    let now = state.now();
    let order = r.order_id.clone();
    let (status, made) = match store_call(&state, move |s| s.reserve(&r, now)).await? {
        Reserved::Created(made) => {
            state.outbox_wake().notify_waiters();
            sync_holds_logged(&state, vec![made.store.clone()]).await;
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
    let body = json!({"reservation_id": made.reservation_id, "store": made.store, "status": made.status});
    Ok((status, Json(body)).into_response())
}

fn reservation_id(path: Result<Path<String>, PathRejection>) -> Result<Uuid, ApiError> {
    let Path(id) = path.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_path", e.body_text()))?;
    Uuid::parse_str(&id)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "unknown_reservation", "no reservation has this id"))
}

/// `GET /v1/admin/reservations/{id}`: a reservation and its history.
#[utoipa::path(get, path = "/v1/admin/reservations/{id}", tag = "admin", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The reservation id")),
    responses(
        (status = 200, description = "The reservation, with every state change", body = Reservation),
        (status = 404, description = "`unknown_reservation`", body = ErrorBody),
        crate::openapi::AdminRefusals,
    ))]
async fn admin_get_reservation(
    _: AdminAuth,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Reservation>, ApiError> {
    let id = reservation_id(path)?;
    store_call(&state, move |s| s.reservation(id)?.ok_or(ReservationError::NotFound)).await.map(Json)
}

/// `POST /v1/admin/reservations/{id}/cancel`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    pub reason: String,
}

/// Checks a cancellation reason.
pub fn check_reason(reason: &str) -> Result<(), ApiError> {
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
        crate::openapi::AdminRefusals,
    ))]
async fn admin_cancel_reservation(
    _: AdminAuth,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<CancelRequest>,
) -> Result<Json<Reservation>, ApiError> {
    let id = reservation_id(path)?;
    check_reason(&req.reason)?;
    let now = state.now();
    let change = Change::Cancelled { reason: req.reason };
    let r = store_call(&state, move |s| s.change(id, &change, now)).await?;
    state.outbox_wake().notify_waiters();
    sync_holds_logged(&state, vec![r.store.clone()]).await;
    Ok(Json(r))
}

/// What a store's document should hold for `r`.
fn hold_of(r: &Reservation) -> crdt::Hold {
    crdt::Hold {
        reservation_id: r.reservation_id,
        order_id: r.order_id.clone(),
        lines: r.lines.iter().map(|(sku, qty)| ReservedLine { sku: sku.clone(), qty: *qty }).collect(),
        pickup_by: r.pickup_by.clone(),
        status: r.status,
    }
}

/// Makes the holds of each of `stores`' documents match its active reservations; answers the stores that failed.
pub async fn sync_holds(state: &AppState, stores: Vec<String>) -> Vec<String> {
    let mut failed = Vec::new();
    for store in stores {
        let s = store.clone();
        let active = match store_call(state, move |r| Ok(r.active(Some(&s))?)).await {
            Ok(a) => a,
            Err(_) => {
                failed.push(store);
                continue;
            }
        };
        let want: Vec<crdt::Hold> = active.iter().map(hold_of).collect();
        let (s, now) = (store.clone(), state.now());
        match state.docs(move |d| d.set_holds(&s, &want, now)).await {
            Ok(_) => {}
            Err(e) if e.code() == "unknown_store" => {} // no till yet: nothing to carry it to
            Err(_) => failed.push(store),
        }
    }
    failed
}

async fn sync_holds_logged(state: &AppState, stores: Vec<String>) {
    for store in sync_holds(state, stores).await {
        tracing::warn!(store_id = %store, "the store document's holds were not updated; the planner retries");
    }
}

/// The planner's settings.
#[derive(Debug, Clone, Copy)]
pub struct PlannerSettings {
    /// Time between full passes (expiry and re-planning); uploads in between only get their till actions applied.
    pub interval: std::time::Duration,
    /// Bring every store with active reservations up to date every this many passes.
    pub full_every: u32,
    /// Till events applied per transaction.
    pub batch: usize,
}

impl Default for PlannerSettings {
    fn default() -> Self {
        PlannerSettings { interval: std::time::Duration::from_secs(1), full_every: 60, batch: 500 }
    }
}

/// What one planner pass changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub applied: usize,
    pub expired: usize,
    pub rerouted: usize,
    pub cancelled: usize,
}

/// The reservations to move off a store so that, for every SKU, its on-hand covers what stays: the newest
/// `reserved` ones first, never a `picked` one. `active` is oldest first; `on_hand(sku)` is the store's stock as
/// the hub sees it.
pub fn short_reservations(active: &[Reservation], on_hand: impl Fn(&str) -> i64) -> Vec<Uuid> {
    let mut held: BTreeMap<&str, i64> = BTreeMap::new();
    for r in active {
        for (sku, q) in &r.lines {
            *held.entry(sku.as_str()).or_insert(0) += q;
        }
    }
    let mut out: Vec<Uuid> = Vec::new();
    for (sku, total) in held {
        let mut short = total - on_hand(sku);
        for r in active.iter().rev() {
            if short <= 0 {
                break;
            }
            let Some(q) = r.lines.get(sku) else { continue };
            if r.status != storesync_shared::reservation::ReservationStatus::Reserved {
                continue;
            }
            if !out.contains(&r.reservation_id) {
                out.push(r.reservation_id);
            }
            short -= q;
        }
    }
    out
}

/// One planner pass (see the module note). `touched` collects the stores whose holds must be brought up to date.
/// A pass that is not `full` only applies the tills' actions; expiry and re-planning, which read every active
/// reservation, run in full passes only (the planner makes one per `interval`, however often it is woken).
pub async fn plan_once(
    state: &AppState,
    settings: &PlannerSettings,
    touched: &mut BTreeSet<String>,
    full: bool,
) -> Result<Pass, ApiError> {
    let mut pass = Pass::default();
    let now = state.now();
    loop {
        let batch = settings.batch.max(1);
        let got = store_call(state, move |r| Ok(r.consume_till_events(batch, now)?)).await?;
        pass.applied += got.changed.len();
        touched.extend(got.changed.iter().map(|r| r.store.clone()));
        if got.read < batch {
            break;
        }
    }
    if !full {
        if pass.applied > 0 {
            state.outbox_wake().notify_waiters();
        }
        return Ok(pass);
    }
    let active = store_call(state, |r| Ok(r.active(None)?)).await?;
    let now_key = crdt::normalize_instant(crate::api::now_instant(now)?);
    let mut by_store: BTreeMap<String, Vec<Reservation>> = BTreeMap::new();
    for r in active {
        if r.pickup_by.as_str() < now_key.as_str() {
            let id = r.reservation_id;
            if store_call(state, move |s| s.change(id, &Change::Expired, now)).await.is_ok() {
                pass.expired += 1;
                touched.insert(r.store.clone());
            }
            continue;
        }
        by_store.entry(r.store.clone()).or_default().push(r);
    }
    for (store, active) in by_store {
        let skus: Vec<String> = active.iter().flat_map(|r| r.lines.keys().cloned()).collect();
        let s = store.clone();
        let stock = state
            .docs(move |d| {
                d.read(&s, |doc, _| {
                    let st = crdt::root_map(doc, crdt::STOCK);
                    skus.iter()
                        .map(|k| (k.clone(), st.as_ref().map_or(0, |st| crdt::on_hand(doc, st, k, None))))
                        .collect::<BTreeMap<String, i64>>()
                })
            })
            .await;
        let stock = match stock {
            Ok(s) => s,
            Err(e) if e.code() == "unknown_store" => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        for id in short_reservations(&active, |sku| stock.get(sku).copied().unwrap_or(0)) {
            let reason = format!("{store} sold units held for this order");
            let r = store_call(state, move |s| s.change(id, &Change::Reroute { reason }, now)).await?;
            touched.insert(store.clone());
            touched.insert(r.store.clone());
            if r.status == storesync_shared::reservation::ReservationStatus::Cancelled {
                pass.cancelled += 1;
            } else {
                pass.rerouted += 1;
            }
        }
    }
    if pass != Pass::default() {
        state.outbox_wake().notify_waiters();
        info!(
            applied = pass.applied,
            expired = pass.expired,
            rerouted = pass.rerouted,
            cancelled = pass.cancelled,
            "reservations re-planned"
        );
    }
    Ok(pass)
}

/// The planner: runs [`plan_once`] every `interval` and after every upload, until `shutdown`.
pub async fn run(state: AppState, settings: PlannerSettings, shutdown: tokio_util::sync::CancellationToken) {
    if state.reservation_store().is_none() {
        return;
    }
    let mut touched: BTreeSet<String> = BTreeSet::new();
    let mut passes: u32 = 0;
    let mut next_full = tokio::time::Instant::now();
    loop {
        let full = tokio::time::Instant::now() >= next_full;
        if full {
            next_full = tokio::time::Instant::now() + settings.interval;
        }
        if let Err(e) = plan_once(&state, &settings, &mut touched, full).await {
            tracing::warn!(error = e.code(), "reservation planner pass failed; retrying");
        }
        passes = passes.wrapping_add(u32::from(full));
        if full
            && passes.is_multiple_of(settings.full_every.max(1))
            && let Ok(all) = store_call(&state, |r| Ok(r.active(None)?)).await
        {
            touched.extend(all.into_iter().map(|r| r.store));
        }
        let stores: Vec<String> = std::mem::take(&mut touched).into_iter().collect();
        touched.extend(sync_holds(&state, stores).await);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = state.outbox_wake().notified() => {}
            () = tokio::time::sleep_until(next_full) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reservation(
        n: u128,
        status: storesync_shared::reservation::ReservationStatus,
        lines: &[(&str, i64)],
    ) -> Reservation {
        Reservation {
            reservation_id: Uuid::from_u128(n),
            order_id: format!("W-{n}"),
            store: "S1".into(),
            status,
            lines: lines.iter().map(|(s, q)| ((*s).to_owned(), *q)).collect(),
            stores: vec!["S1".into()],
            pickup_by: "2027-01-01T00:00:00Z".into(),
            created_at: 0,
            updated_at: 0,
            history: vec![],
        }
    }

    #[test]
    fn the_newest_reserved_orders_move_first_and_picked_ones_never() {
        use storesync_shared::reservation::ReservationStatus::{Picked, Reserved};
        let active = [
            reservation(1, Reserved, &[("A", 2)]),
            reservation(2, Picked, &[("A", 1), ("B", 1)]),
            reservation(3, Reserved, &[("A", 1)]),
            reservation(4, Reserved, &[("B", 2)]),
        ];
        let check = |a: i64, b: i64, want: &[u128]| {
            let got = short_reservations(&active, |sku| if sku == "A" { a } else { b });
            assert_eq!(got, want.iter().map(|n| Uuid::from_u128(*n)).collect::<Vec<_>>(), "A {a}, B {b}");
        };
        check(4, 3, &[]);
        check(3, 3, &[3]);
        check(2, 3, &[3, 1]);
        check(0, 0, &[3, 1, 4]);
        check(4, 2, &[4]);
    }

    #[test]
    fn a_policy_holds_back_a_share_within_floor_and_cap() {
        let p = EscrowPolicy { share_pct: 30, floor: 2, cap: 10 };
        for (on_hand, want) in [(-5, 2), (0, 2), (9, 2), (10, 3), (33, 9), (40, 10), (1_000, 10)] {
            assert_eq!(p.qty(on_hand), want, "on_hand {on_hand}");
        }
    }
}

#[cfg(test)]
#[path = "reservations_sim.rs"]
mod simulation;
