//! The fleet view over HTTP (the view itself is [`crate::fleet`]): the dashboard page at `/`, and the admin
//! endpoints it reads: `GET /v1/admin/fleet`, `GET /v1/admin/fleet/stores/{store}` and
//! `GET /v1/admin/stores/{store}/prices` (a store's whole price book).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use serde::{Deserialize, Serialize};
use storesync_shared::crdt;
use storesync_shared::wire::ErrorBody;
use utoipa::ToSchema;

use super::documents::{DocSize, SkuPrice};
use super::events::EventView;
use crate::api::auth::AdminAuth;
use crate::api::error::ApiError;
use crate::api::schema::AdminRefusals;
use crate::api::state::AppState;
use crate::fleet::{Alert, FleetInput, FleetView, StoreRow, fleet};
use crate::storage::StorageError;

/// `GET /v1/admin/fleet/stores/{store}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FleetStoreAnswer {
    generated_at: String,
    store: StoreRow,
    alerts: Vec<Alert>,
    doc: DocSize,
    /// Newest first, as `GET /v1/admin/events` lists them.
    recent_events: Vec<EventView>,
}

/// `GET /v1/admin/stores/{store}/prices`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PriceBook {
    store: String,
    /// The instant the prices are read at.
    at: String,
    /// By SKU.
    prices: Vec<SkuPrice>,
}

/// The dashboard: one HTML file with its script and styles, no build step. It holds no data; everything it shows
/// comes from the admin endpoints, with the token the user types in (kept in the tab's `sessionStorage`).
const DASHBOARD: &str = include_str!("../../dashboard.html");

/// `GET /`: the dashboard page.
#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, body = String, content_type = "text/html",
        description = "The fleet dashboard (no data: it signs in with the admin token and reads the admin endpoints)")))]
pub(crate) async fn dashboard() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
                 img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
        ],
        Html(DASHBOARD),
    )
}

/// Reads what [`fleet`] needs, on the blocking pool, and builds the view at the hub's now.
async fn fleet_now(state: &AppState) -> Result<FleetView, ApiError> {
    let now = state.now();
    let t = state.http.fleet;
    let since =
        now.saturating_sub(i64::try_from(t.forecast_window_s.saturating_add(t.offline_after_s)).unwrap_or(i64::MAX));
    let input = state
        .db(move |s| -> Result<FleetInput, StorageError> {
            Ok(FleetInput {
                stores: s.list_stores()?,
                samples: s.progress_samples(since)?,
                doc_sizes: s.doc_sizes()?,
                rollouts: s.list_rollouts()?,
                subscriptions: s.list_subscriptions(false)?,
            })
        })
        .await?;
    Ok(fleet(&input, now, &t))
}

/// `GET /v1/admin/fleet`: the whole fleet view.
#[utoipa::path(get, path = "/v1/admin/fleet", tag = "admin", security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every store with its tills' link state, backlog, drain forecast and alerts",
            body = FleetView),
        AdminRefusals,
    ))]
pub(crate) async fn admin_fleet(_: AdminAuth, State(state): State<AppState>) -> Result<Json<FleetView>, ApiError> {
    Ok(Json(fleet_now(&state).await?))
}

#[derive(Debug, Deserialize)]
pub(crate) struct StoreQuery {
    events: Option<String>,
}

/// Recent events a store page lists by default, and at most.
const RECENT_EVENTS: usize = 20;
const MAX_RECENT_EVENTS: usize = 200;

/// `GET /v1/admin/fleet/stores/{store}?events=N`: one store's row of the fleet view, its document's size and its
/// newest `N` events (default 20, at most 200), newest first.
#[utoipa::path(get, path = "/v1/admin/fleet/stores/{store}", tag = "admin", security(("admin_token" = [])),
    params(("store" = String, Path, description = "A store id"),
        ("events" = Option<u32>, Query, description = "How many recent events (1 to 200, default 20)")),
    responses(
        (status = 200, description = "The store's row of the fleet view, its alerts, its document's size and its \
            newest events, newest first", body = FleetStoreAnswer),
        (status = 404, description = "`unknown_store`", body = ErrorBody),
        (status = 422, description = "`invalid_query`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn admin_fleet_store(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(store): Path<String>,
    query: Result<Query<StoreQuery>, QueryRejection>,
) -> Result<Json<FleetStoreAnswer>, ApiError> {
    let bad = |detail: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_query", detail);
    let Query(q) = query.map_err(|e| bad(e.body_text()))?;
    let limit = match q.events.as_deref() {
        None => RECENT_EVENTS,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if (1..=MAX_RECENT_EVENTS).contains(&n) => n,
            _ => return Err(bad(format!("events must be a whole number from 1 to {MAX_RECENT_EVENTS}"))),
        },
    };
    let store = state.known_store(&store).await?;
    let view = fleet_now(&state).await?;
    let Some(row) = view.stores.into_iter().find(|s| s.store == store) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_store", "no such store"));
    };
    let alerts: Vec<Alert> = view.alerts.into_iter().filter(|a| a.store.as_deref() == Some(store.as_str())).collect();
    let s = store.clone();
    let events = state.db(move |st| st.recent_events(&s, limit)).await?;
    let s = store.clone();
    let doc = state.docs(move |d| d.read(&s, |_, meta| *meta)).await?;
    Ok(Json(FleetStoreAnswer {
        generated_at: view.generated_at,
        store: row,
        alerts,
        doc: doc.into(),
        recent_events: events.into_iter().map(EventView::from).collect(),
    }))
}

/// `GET /v1/admin/stores/{store}/prices`: the store's whole price book as its document holds it now: per SKU, the
/// price in force and the next scheduled one, by SKU.
#[utoipa::path(get, path = "/v1/admin/stores/{store}/prices", tag = "admin", security(("admin_token" = [])),
    params(("store" = String, Path, description = "A store id")),
    responses(
        (status = 200, description = "The store's price book by SKU; the current fields are null when only a \
            future price is set", body = PriceBook),
        (status = 404, description = "`unknown_store`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn admin_price_book(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(store): Path<String>,
) -> Result<Json<PriceBook>, ApiError> {
    let store = state.known_store(&store).await?;
    let at = crdt::normalize_instant(state.now_instant()?);
    let now = at.clone();
    let s = store.clone();
    let book = state
        .docs(move |d| {
            d.read(&s, |doc, _| {
                let Some(obj) = crdt::root_map(doc, crdt::PRICES) else { return Vec::new() };
                crdt::all_prices(doc, &obj)
                    .into_keys()
                    .map(|sku| {
                        let view = crdt::price_at(doc, &obj, &sku, &now, None);
                        (sku, view)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .await?;
    let prices = book.into_iter().map(|(sku, view)| SkuPrice::new(sku, &view)).collect();
    Ok(Json(PriceBook { store, at, prices }))
}
