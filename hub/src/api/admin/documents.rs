//! The store documents as head office edits and reads them: `PUT /v1/admin/prices` and `POST /v1/admin/stock`
//! (head-office prices and stock movements), `GET /v1/admin/stores/{store}/stock/{sku}` and
//! `.../prices/{sku}` (what the hub's copy of a store's document says), and the document's size and compaction
//! (`GET .../doc`, `POST .../compact`). Document work itself is [`crate::docs`].

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use storesync_shared::crdt;
use storesync_shared::event::{MAX_QTY, MAX_TEXT_CHARS, check_currency, check_sku, parse_timestamp};
use storesync_shared::wire::ErrorBody;
use tracing::info;
use utoipa::ToSchema;

use crate::api::auth::AdminAuth;
use crate::api::error::{ApiError, JsonBody, bad_path, invalid};
use crate::api::schema::AdminRefusals;
use crate::api::state::AppState;
use crate::storage::{DocMeta, NewMovement};

/// The answer to `PUT /v1/admin/prices`: the stores written and how many prices each got.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PricesSet {
    stores: Vec<String>,
    prices: usize,
}

/// The answer to `POST /v1/admin/stock`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MovementsRecorded {
    store: String,
    movements: usize,
}

/// A SKU's stock on hand, as the hub's copy of the store document says.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OnHand {
    sku: String,
    on_hand: i64,
}

/// A price and when it takes effect.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PriceEntry {
    price_minor: i64,
    currency: String,
    effective_from: String,
}

impl From<&crdt::Price> for PriceEntry {
    fn from(p: &crdt::Price) -> PriceEntry {
        PriceEntry {
            price_minor: p.price_minor,
            currency: p.currency.clone(),
            effective_from: p.effective_from.clone(),
        }
    }
}

/// A SKU's price view: the price in force (its fields null when only a future price is set) and `next`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SkuPrice {
    sku: String,
    price_minor: Option<i64>,
    currency: Option<String>,
    effective_from: Option<String>,
    /// The next scheduled price, or null.
    next: Option<PriceEntry>,
}

impl SkuPrice {
    pub(crate) fn new(sku: String, view: &crdt::PriceView) -> SkuPrice {
        let current = view.current.as_ref();
        SkuPrice {
            sku,
            price_minor: current.map(|p| p.price_minor),
            currency: current.map(|p| p.currency.clone()),
            effective_from: current.map(|p| p.effective_from.clone()),
            next: view.next.as_ref().map(PriceEntry::from),
        }
    }
}

/// The answer to a compaction: the store's new epoch.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Compacted {
    store: String,
    epoch: u64,
}

/// The size of a store's document.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DocSize {
    epoch: u64,
    changes_since_epoch: u64,
    saved_bytes: u64,
    epoch_bytes: u64,
}

impl From<DocMeta> for DocSize {
    fn from(m: DocMeta) -> DocSize {
        DocSize {
            epoch: m.epoch,
            changes_since_epoch: m.changes_since_epoch,
            saved_bytes: m.saved_bytes,
            epoch_bytes: m.epoch_bytes,
        }
    }
}

/// `GET /v1/admin/stores/{store}/doc`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DocAnswer {
    store: String,
    #[serde(flatten)]
    size: DocSize,
}

/// The most bytes of a head-office price or stock request body.
pub(crate) const MAX_ADMIN_BODY: usize = 2 * 1024 * 1024;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PriceInput {
    sku: String,
    price_minor: i64,
    currency: String,
    #[serde(default)]
    effective_from: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PricesRequest {
    stores: Vec<String>,
    prices: Vec<PriceInput>,
}

/// The most prices one request may set.
const MAX_PRICES: usize = 10_000;
/// The largest price, in minor units.
const MAX_PRICE_MINOR: i64 = 1_000_000_000_000;
/// The most movements one request may carry.
const MAX_MOVEMENTS: usize = 500;

/// `PUT /v1/admin/prices`: head-office prices for some stores or every store (`["*"]`), all or nothing.
#[utoipa::path(put, path = "/v1/admin/prices", tag = "admin", security(("admin_token" = [])),
    request_body = PricesRequest,
    responses(
        (status = 200, description = "Set in every store, or in none", body = PricesSet),
        (status = 400, description = "`malformed_json`: the body is not JSON", body = ErrorBody),
        (status = 404, description = "`unknown_store`", body = ErrorBody),
        (status = 413, description = "`body_too_large`: over 2 MiB", body = ErrorBody),
        (status = 422, description = "`no_prices`, `too_many_prices`, `invalid_sku`, `invalid_price`, \
            `unknown_currency`, \
            `invalid_effective_from`, `duplicate_price`, `no_stores`, `invalid_stores` or `invalid_body`",
            body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn admin_put_prices(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<PricesRequest>,
) -> Result<Json<PricesSet>, ApiError> {
    let now = state.now();
    if req.prices.is_empty() {
        return Err(invalid("no_prices", "prices must hold at least one price"));
    }
    if req.prices.len() > MAX_PRICES {
        return Err(invalid("too_many_prices", format!("at most {MAX_PRICES} prices per request")));
    }
    let mut prices = Vec::with_capacity(req.prices.len());
    let mut keys = std::collections::BTreeSet::new();
    for (i, p) in req.prices.into_iter().enumerate() {
        check_sku(&p.sku, &format!("prices[{i}].sku")).map_err(|e| invalid(e.code, e.detail))?;
        if !(0..=MAX_PRICE_MINOR).contains(&p.price_minor) {
            return Err(invalid(
                "invalid_price",
                format!("prices[{i}].price_minor must be an integer from 0 to {MAX_PRICE_MINOR}"),
            ));
        }
        check_currency(&p.currency).map_err(|e| invalid(e.code, format!("prices[{i}].currency: {}", e.detail)))?;
        let at = match p.effective_from.as_deref() {
            None => crate::time_fmt::instant(now).ok_or_else(ApiError::internal)?,
            Some(s) => parse_timestamp(s).ok_or_else(|| {
                invalid(
                    "invalid_effective_from",
                    format!("prices[{i}].effective_from must be RFC 3339 with an offset; got {s:?}"),
                )
            })?,
        };
        let effective_from = crdt::normalize_instant(at);
        if !keys.insert((p.sku.clone(), effective_from.clone())) {
            return Err(invalid(
                "duplicate_price",
                format!("prices[{i}]: {} already has a price from {effective_from} in this request", p.sku),
            ));
        }
        prices.push((p.sku, crdt::Price { price_minor: p.price_minor, currency: p.currency, effective_from }));
    }
    let stores = if req.stores == ["*"] {
        state.db(|s| s.list_stores()).await?.into_iter().map(|v| v.store).collect::<Vec<_>>()
    } else {
        if req.stores.is_empty() {
            return Err(invalid("no_stores", "stores must name at least one store, or be [\"*\"]"));
        }
        if req.stores.iter().any(|s| s == "*") {
            return Err(invalid("invalid_stores", "\"*\" must be the only entry of stores"));
        }
        let mut out = Vec::with_capacity(req.stores.len());
        for store in &req.stores {
            out.push(state.known_store(store).await?);
        }
        out.sort();
        out.dedup();
        out
    };
    let n = prices.len();
    let written = stores.clone();
    if !stores.is_empty() {
        state.docs(move |d| d.set_prices(&stores, &prices, now)).await?;
    }
    info!(stores = written.len(), prices = n, "head-office prices set");
    Ok(Json(PricesSet { stores: written, prices: n }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MovementInput {
    sku: String,
    delta: i64,
    reason: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StockRequest {
    store: String,
    movements: Vec<MovementInput>,
}

/// `POST /v1/admin/stock`: head-office stock movements (receipts, corrections) of one store.
#[utoipa::path(post, path = "/v1/admin/stock", tag = "admin", security(("admin_token" = [])),
    request_body = StockRequest,
    responses(
        (status = 200, description = "Recorded", body = MovementsRecorded),
        (status = 400, description = "`malformed_json`: the body is not JSON", body = ErrorBody),
        (status = 404, description = "`unknown_store`", body = ErrorBody),
        (status = 413, description = "`body_too_large`: over 2 MiB", body = ErrorBody),
        (status = 422, description = "`no_movements`, `too_many_movements`, `invalid_sku`, `invalid_delta`, \
            `invalid_reason` \
            or `invalid_body`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn admin_post_stock(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<StockRequest>,
) -> Result<Json<MovementsRecorded>, ApiError> {
    if req.movements.is_empty() {
        return Err(invalid("no_movements", "movements must hold at least one movement"));
    }
    if req.movements.len() > MAX_MOVEMENTS {
        return Err(invalid("too_many_movements", format!("at most {MAX_MOVEMENTS} movements per request")));
    }
    let mut movements = Vec::with_capacity(req.movements.len());
    for (i, m) in req.movements.into_iter().enumerate() {
        check_sku(&m.sku, &format!("movements[{i}].sku")).map_err(|e| invalid(e.code, e.detail))?;
        if m.delta == 0 || m.delta.unsigned_abs() > MAX_QTY.unsigned_abs() {
            return Err(invalid(
                "invalid_delta",
                format!("movements[{i}].delta must be a non-zero integer of at most {MAX_QTY} either way"),
            ));
        }
        if m.reason.trim().is_empty() || m.reason.chars().count() > MAX_TEXT_CHARS {
            return Err(invalid(
                "invalid_reason",
                format!("movements[{i}].reason must be non-blank and at most {MAX_TEXT_CHARS} characters"),
            ));
        }
        movements.push(NewMovement { sku: m.sku, delta: m.delta, reason: m.reason });
    }
    let store = state.known_store(&req.store).await?;
    let now = state.now();
    let n = movements.len();
    let s = store.clone();
    state.docs(move |d| d.add_movements(&s, &movements, now)).await?;
    info!(store_id = %store, movements = n, "head-office stock movements recorded");
    Ok(Json(MovementsRecorded { store, movements: n }))
}

type StoreSku = Result<Path<(String, String)>, PathRejection>;

fn path_pair(path: StoreSku) -> Result<(String, String), ApiError> {
    let Path((store, sku)) = path.map_err(|e| bad_path(&e))?;
    check_sku(&sku, "sku").map_err(|e| invalid(e.code, e.detail))?;
    Ok((store, sku))
}

/// `GET /v1/admin/stores/{store}/stock/{sku}`: on hand as the hub's copy of the store document says.
#[utoipa::path(get, path = "/v1/admin/stores/{store}/stock/{sku}", tag = "admin", security(("admin_token" = [])),
    params(("store" = String, Path, description = "A store id"), ("sku" = String, Path, description = "A SKU")),
    responses(
        (status = 200, description = "On hand", body = OnHand),
        (status = 400, description = "`bad_path`", body = ErrorBody),
        (status = 404, description = "`unknown_store`", body = ErrorBody),
        (status = 422, description = "`invalid_sku`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn admin_stock(
    _: AdminAuth,
    State(state): State<AppState>,
    path: StoreSku,
) -> Result<Json<OnHand>, ApiError> {
    let (store, sku) = path_pair(path)?;
    let store = state.known_store(&store).await?;
    let k = sku.clone();
    let on_hand = state
        .docs(move |d| {
            d.read(&store, |doc, _| {
                crdt::root_map(doc, crdt::STOCK).map_or(0, |obj| crdt::on_hand(doc, &obj, &k, None))
            })
        })
        .await?;
    Ok(Json(OnHand { sku, on_hand }))
}

/// `GET /v1/admin/stores/{store}/prices/{sku}`: the price in force now and the next scheduled one.
///
/// With only a future price, `price_minor`, `currency` and `effective_from` are null and `next` holds it.
#[utoipa::path(get, path = "/v1/admin/stores/{store}/prices/{sku}", tag = "admin", security(("admin_token" = [])),
    params(("store" = String, Path, description = "A store id"), ("sku" = String, Path, description = "A SKU")),
    responses(
        (status = 200, description = "The price in force and the next one", body = SkuPrice),
        (status = 400, description = "`bad_path`", body = ErrorBody),
        (status = 404, description = "`unknown_store` or `no_price`", body = ErrorBody),
        (status = 422, description = "`invalid_sku`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn admin_price(
    _: AdminAuth,
    State(state): State<AppState>,
    path: StoreSku,
) -> Result<Json<SkuPrice>, ApiError> {
    let (store, sku) = path_pair(path)?;
    let store = state.known_store(&store).await?;
    let now = crdt::normalize_instant(state.now_instant()?);
    let k = sku.clone();
    let view = state
        .docs(move |d| {
            d.read(&store, |doc, _| {
                crdt::root_map(doc, crdt::PRICES)
                    .map(|obj| crdt::price_at(doc, &obj, &k, &now, None))
                    .unwrap_or_default()
            })
        })
        .await?;
    if view.current.is_none() && view.next.is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no_price", format!("no price is set for {sku}")));
    }
    Ok(Json(SkuPrice::new(sku, &view)))
}

/// `POST /v1/admin/stores/{store}/compact`: closes the store's epoch now.
#[utoipa::path(post, path = "/v1/admin/stores/{store}/compact", tag = "admin", security(("admin_token" = [])),
    params(("store" = String, Path, description = "A store id")),
    responses(
        (status = 200, description = "The new epoch", body = Compacted),
        (status = 404, description = "`unknown_store`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn admin_compact(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(store): Path<String>,
) -> Result<Json<Compacted>, ApiError> {
    let store = state.known_store(&store).await?;
    let now = state.now();
    let s = store.clone();
    let rec = state.docs(move |d| d.compact(&s, now)).await?;
    info!(store_id = %store, epoch = rec.epoch, cuts = ?rec.cuts, "store document compacted on request");
    Ok(Json(Compacted { store, epoch: rec.epoch }))
}

/// `GET /v1/admin/stores/{store}/doc`: the size of the store's document.
#[utoipa::path(get, path = "/v1/admin/stores/{store}/doc", tag = "admin", security(("admin_token" = [])),
    params(("store" = String, Path, description = "A store id")),
    responses(
        (status = 200, description = "The size of the store's document", body = DocAnswer),
        (status = 404, description = "`unknown_store`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn admin_doc(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(store): Path<String>,
) -> Result<Json<DocAnswer>, ApiError> {
    let store = state.known_store(&store).await?;
    let s = store.clone();
    let meta = state.docs(move |d| d.read(&s, |_, meta| *meta)).await?;
    Ok(Json(DocAnswer { store, size: meta.into() }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn price(minor: i64, from: &str) -> crdt::Price {
        crdt::Price { price_minor: minor, currency: "EUR".into(), effective_from: from.into() }
    }

    #[test]
    fn a_sku_price_has_null_current_fields_when_only_a_future_price_is_set() {
        let only_next = crdt::PriceView { current: None, next: Some(price(250, "2027-02-01T00:00:00Z")) };
        assert_eq!(
            serde_json::to_value(SkuPrice::new("A".into(), &only_next)).unwrap(),
            json!({"sku": "A", "price_minor": null, "currency": null, "effective_from": null,
                   "next": {"price_minor": 250, "currency": "EUR", "effective_from": "2027-02-01T00:00:00Z"}})
        );
        let only_current = crdt::PriceView { current: Some(price(199, "2027-01-01T00:00:00Z")), next: None };
        assert_eq!(
            serde_json::to_value(SkuPrice::new("A".into(), &only_current)).unwrap(),
            json!({"sku": "A", "price_minor": 199, "currency": "EUR", "effective_from": "2027-01-01T00:00:00Z",
                   "next": null})
        );
    }

    #[test]
    fn the_doc_answer_is_flat() {
        let size = DocSize { epoch: 2, changes_since_epoch: 3, saved_bytes: 400, epoch_bytes: 100 };
        assert_eq!(
            serde_json::to_value(DocAnswer { store: "S1".into(), size }).unwrap(),
            json!({"store": "S1", "epoch": 2, "changes_since_epoch": 3, "saved_bytes": 400, "epoch_bytes": 100})
        );
    }
}
