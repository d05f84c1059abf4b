//! Buy online, pick up in store, hub half: escrow per store and SKU, and reservations against it.
//!
//! Design note:
//! - **Escrow** is how many units of a SKU a store holds back for online orders. Head office sets it with
//!   `PUT /v1/admin/escrow` (a quantity, or a policy: a share of the store's on-hand now, with a floor and a cap).
//!   The `escrow` table ([`ReservationStore`]) is the authority the reservation check runs against; the store's
//!   automerge document carries a copy (`escrow/qty\u{1f}<sku>`, written only by the hub) so every till knows it
//!   offline. The table is written first; a failed document write answers 5xx, and the planner's next pass over the
//!   store (or the same PUT again) repairs it (the document write is skipped when it already holds the value). A
//!   policy is stored with the escrow, and the planner keeps the escrow following on-hand ([`follow_policies`]). Growing escrow takes effect at the hub at
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
//!   2. at `pickup_by`, expires the reservations still active (releasing their units), or under
//!      [`ExpiryPolicy::Reroute`] moves one not yet picked to the next store of its list with a new pickup time;
//!   3. re-plans a store that sold held stock: when a store's on-hand (the hub's copy of its document) no longer
//!      covers its active reservations of a SKU, the newest `reserved` ones (never a `picked` one: those goods are
//!      set aside) are rerouted to the next store of their list that can hold them, or cancelled with a reason;
//!   4. brings the documents of the stores it touched, and of those a new reservation or a head-office cancel
//!      named ([`AppState::holds_due`]: so a reservation's answer waits for one commit, not two, and one document
//!      write carries every reservation made meanwhile), and every minute of every store with active
//!      reservations, up to the tables: escrow levels and holds. A write that fails is retried on the next pass;
//!   5. every `policy_every` full passes, moves each policy escrow with its store's on-hand.
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
use storesync_shared::reservation::{ReservationStatus, ReservedLine, check_lines, check_order_id};
use storesync_shared::wire::ErrorBody;
use tracing::{error, info};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::api::{AdminAuth, ApiError, AppState, JsonBody};
use crate::storage::reservations::{
    Change, NewReservation, PolicyEscrow, Reservation, ReservationError, ReservationStore, Reserved,
};

/// The most stores one reservation may list.
pub const MAX_STORES: usize = 50;

/// Opens the reservation store of the hub's database: the database the rest of the hub's storage is in, so the
/// escrow invariant is checked where every instance sees it.
///
/// - SQLite: `<data-dir>/hub.db`, a second handle on the same file (every write is `BEGIN IMMEDIATE`, so the two
///   handles serialise in SQLite).
/// - PostgreSQL (`config.database`): a [`crate::storage::postgres::PostgresStorage`] on the same database, with a
///   pool of its own of at most 4 connections (fewer when the hub is configured with fewer). Reservation calls are
///   short transactions from admin requests and the one planner task, and writes against one store's escrow wait
///   for each other on its rows anyway, so more connections would add no throughput; they would only take from
///   the database's `max_connections`, shared by every instance. Opening it runs the migrations again, which
///   finds nothing to do.
pub fn open_store(config: &crate::Config) -> anyhow::Result<Option<Arc<dyn ReservationStore>>> {
    let Some(pg) = &config.database else {
        return Ok(Some(Arc::new(crate::open_storage(&config.data_dir)?)));
    };
    let settings = crate::storage::postgres::PgSettings { url: pg.url.clone(), pool_size: pg.pool_size.clamp(1, 4) };
    let store = crate::storage::postgres::PostgresStorage::open(&settings).map_err(|e| {
        anyhow::anyhow!(e).context(format!(
            "opening the PostgreSQL database {} for reservations",
            crate::storage::postgres::redact_url(&pg.url)
        ))
    })?;
    Ok(Some(Arc::new(store)))
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

pub use crate::storage::reservations::EscrowPolicy;

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
    let policy = req.policy;
    let level = store_call(&state, move |r| r.escrow_set(&s, &sku, qty, policy.as_ref(), now)).await?;
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
            // The till learns of it through the store document, which the planner writes next (one document write
            // for every reservation made meanwhile, off this request's path; the reservation is committed).
            state.holds_due(made.store.clone());
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
    state.holds_due(r.store.clone());
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

/// Makes each of `stores`' documents carry what the reservation tables say: its escrow levels and, as holds, its
/// active reservations. The tables are the authority and are written first (each change in one transaction); the
/// documents follow here, so a hub that stopped between the two (or a document write that failed) is repaired by
/// the next pass that touches the store, and by the planner's periodic pass over every store with reservations.
/// Writes nothing where the document already agrees. Answers the stores that failed.
pub async fn sync_holds(state: &AppState, stores: Vec<String>) -> Vec<String> {
    let mut failed = Vec::new();
    for store in stores {
        let s = store.clone();
        let tables = store_call(state, move |r| Ok((r.active(Some(&s))?, r.escrow_levels(&s)?))).await;
        let Ok((active, levels)) = tables else {
            failed.push(store);
            continue;
        };
        let want: Vec<crdt::Hold> = active.iter().map(hold_of).collect();
        let escrow: Vec<(String, i64)> = levels.into_iter().map(|(sku, l)| (sku, l.escrow)).collect();
        let (s, now) = (store.clone(), state.now());
        let wrote = state
            .docs(move |d| {
                d.set_escrow(&s, &escrow, now)?;
                d.set_holds(&s, &want, now)
            })
            .await;
        match wrote {
            Ok(_) => {}
            Err(e) if e.code() == "unknown_store" => {} // no till yet: nothing to carry it to
            Err(_) => failed.push(store),
        }
    }
    failed
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
    /// Recompute the escrows set by a policy from on-hand every this many full passes.
    pub policy_every: u32,
    /// What happens to a reservation not picked by its `pickup_by`.
    pub on_expiry: ExpiryPolicy,
}

impl Default for PlannerSettings {
    fn default() -> Self {
        PlannerSettings {
            interval: std::time::Duration::from_secs(1),
            full_every: 60,
            batch: 500,
            policy_every: 10,
            on_expiry: ExpiryPolicy::Release,
        }
    }
}

/// What the planner does with a reservation still active at its `pickup_by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExpiryPolicy {
    /// Expire it and release its units (`reservation_expired`), picked or not.
    #[default]
    Release,
    /// One the store has not picked moves to the next store of its list that can hold it
    /// (`reservation_rerouted`), with a new `pickup_by` as far after now as the original was after the order
    /// (at least an hour); when no store can, it expires. One that was picked (the customer did not come)
    /// expires.
    Reroute,
}

/// The least time a reservation rerouted at expiry gets to be picked at its new store.
const MIN_REROUTE_WINDOW_S: i64 = 3600;

/// What the planner asks of `r`, active past its `pickup_by` at `now`, under `policy`.
pub fn expiry_change(r: &Reservation, policy: ExpiryPolicy, now: i64) -> Change {
    if policy == ExpiryPolicy::Release || r.status != ReservationStatus::Reserved {
        return Change::Expired;
    }
    // The window it was given at its store: from the order (or its last move) to its pickup time.
    let due = parse_timestamp(&r.pickup_by).map_or(now, |t| t.unix_timestamp());
    let window = due.saturating_sub(r.updated_at).max(MIN_REROUTE_WINDOW_S);
    match time::OffsetDateTime::from_unix_timestamp(now.saturating_add(window)) {
        Ok(t) => Change::Reroute {
            reason: format!("not picked at {} by {}", r.store, r.pickup_by),
            pickup_by: Some(crdt::normalize_instant(t)),
        },
        Err(_) => Change::Expired,
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
            if r.status != ReservationStatus::Reserved {
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
            let (id, from) = (r.reservation_id, r.store.clone());
            let change = expiry_change(&r, settings.on_expiry, now);
            let after = store_call(state, move |s| s.change(id, &change, now)).await;
            match after {
                Ok(after) if after.store != from => {
                    pass.rerouted += 1;
                    touched.insert(after.store);
                }
                Ok(_) => pass.expired += 1,
                Err(_) => {}
            }
            touched.insert(from);
            continue;
        }
        by_store.entry(r.store.clone()).or_default().push(r);
    }
    for (store, active) in by_store {
        let skus: BTreeSet<String> = active.iter().flat_map(|r| r.lines.keys().cloned()).collect();
        let stock = on_hand_of(state, &store, skus).await?;
        for id in short_reservations(&active, |sku| stock.get(sku).copied().unwrap_or(0)) {
            let reason = format!("{store} sold units held for this order");
            let r = store_call(state, move |s| s.change(id, &Change::Reroute { reason, pickup_by: None }, now)).await?;
            touched.insert(store.clone());
            touched.insert(r.store.clone());
            if r.status == ReservationStatus::Cancelled {
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

/// A store's on-hand of `skus` as the hub sees it (its copy of the store document); none for a store without one.
async fn on_hand_of(state: &AppState, store: &str, skus: BTreeSet<String>) -> Result<BTreeMap<String, i64>, ApiError> {
    let s = store.to_owned();
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
    match stock {
        Ok(s) => Ok(s),
        Err(e) if e.code() == "unknown_store" => Ok(BTreeMap::new()),
        Err(e) => Err(e),
    }
}

/// Moves every escrow set by a policy to what its policy gives at the store's on-hand now, never below what
/// active reservations hold ([`ReservationStore::escrow_follow`]). `touched` collects the stores whose escrow
/// moved (their documents must carry it). Answers how many escrows moved.
pub async fn follow_policies(state: &AppState, touched: &mut BTreeSet<String>) -> Result<usize, ApiError> {
    let all = store_call(state, |r| Ok(r.escrow_policies()?)).await?;
    let mut by_store: BTreeMap<String, Vec<PolicyEscrow>> = BTreeMap::new();
    for p in all {
        by_store.entry(p.store.clone()).or_default().push(p);
    }
    let (now, mut moved) = (state.now(), 0);
    for (store, list) in by_store {
        let stock = on_hand_of(state, &store, list.iter().map(|p| p.sku.clone()).collect()).await?;
        for p in list {
            let want = p.policy.qty(stock.get(&p.sku).copied().unwrap_or(0));
            if want.max(p.level.reserved) == p.level.escrow {
                continue;
            }
            let (s, sku, policy) = (store.clone(), p.sku.clone(), p.policy);
            if store_call(state, move |r| Ok(r.escrow_follow(&s, &sku, &policy, want, now)?)).await?.is_some() {
                moved += 1;
                touched.insert(store.clone());
                info!(store_id = %store, sku = %p.sku, escrow = want.max(p.level.reserved), "escrow follows on-hand");
            }
        }
    }
    Ok(moved)
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
        touched.extend(state.take_holds_due());
        let full = tokio::time::Instant::now() >= next_full;
        if full {
            next_full = tokio::time::Instant::now() + settings.interval;
        }
        if let Err(e) = plan_once(&state, &settings, &mut touched, full).await {
            tracing::warn!(error = e.code(), "reservation planner pass failed; retrying");
        }
        passes = passes.wrapping_add(u32::from(full));
        if full
            && passes.is_multiple_of(settings.policy_every.max(1))
            && let Err(e) = follow_policies(&state, &mut touched).await
        {
            tracing::warn!(error = e.code(), "escrow policies not followed this pass; retrying");
        }
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
    fn at_pickup_time_a_waiting_order_moves_on_by_policy_and_a_picked_one_expires() {
        use storesync_shared::reservation::ReservationStatus::{Picked, Reserved};
        // Ordered at 2027-01-01T00:00:00Z (updated_at) for pickup 6 hours later.
        let mut r = reservation(1, Reserved, &[("A", 1)]);
        r.updated_at = 1_798_761_600;
        r.pickup_by = "2027-01-01T06:00:00Z".into();
        let now = 1_798_761_600 + 7 * 3600;
        assert_eq!(expiry_change(&r, ExpiryPolicy::Release, now), Change::Expired);
        let Change::Reroute { reason, pickup_by } = expiry_change(&r, ExpiryPolicy::Reroute, now) else {
            panic!("a waiting order is rerouted");
        };
        assert_eq!(pickup_by.as_deref(), Some("2027-01-01T13:00:00Z"), "the same 6-hour window from now");
        assert!(reason.starts_with("not picked at S1"), "{reason}");
        // A window shorter than an hour gets an hour.
        r.pickup_by = "2027-01-01T00:10:00Z".into();
        let Change::Reroute { pickup_by, .. } = expiry_change(&r, ExpiryPolicy::Reroute, now) else { panic!() };
        assert_eq!(pickup_by.as_deref(), Some("2027-01-01T08:00:00Z"));
        // Picked: the goods wait at the counter and the customer did not come.
        let picked = reservation(2, Picked, &[("A", 1)]);
        assert_eq!(expiry_change(&picked, ExpiryPolicy::Reroute, now), Change::Expired);
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
