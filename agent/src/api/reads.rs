//! The POS API's lookups: stock on hand and prices, read from the store document at its last committed heads.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use storesync_shared::wire::ErrorBody;
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::error::{ApiError, blocking};
use crate::AgentState;

fn check_sku(sku: &str) -> Result<(), ApiError> {
    storesync_shared::event::check_sku(sku, "sku").map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.code, e.detail))
}

/// Stock on hand of one SKU.
#[derive(Serialize, ToSchema)]
pub(super) struct StockAnswer {
    sku: String,
    /// Units on hand as this till sees them (may be negative: a sale is never refused for want of stock).
    on_hand: i64,
}

/// What a `sku` path parameter may be.
const SKU_PARAM: &str = "1 to 64 characters, no control characters";

/// `GET /v1/stock/{sku}`: stock on hand.
#[utoipa::path(get, path = "/v1/stock/{sku}", tag = "reads",
    params(("sku" = String, Path, description = SKU_PARAM)),
    responses(
        (status = 200, description = "On hand", body = StockAnswer),
        (status = 400, description = "`invalid_sku`", body = ErrorBody),
    ))]
pub(super) async fn stock(
    State(s): State<Arc<AgentState>>,
    Path(sku): Path<String>,
) -> Result<Json<StockAnswer>, ApiError> {
    check_sku(&sku)?;
    let reads = s.journal.reads().clone();
    let on_hand = blocking(move || Ok(reads.on_hand(&sku)).map(|n| (sku, n))).await?;
    Ok(Json(StockAnswer { sku: on_hand.0, on_hand: on_hand.1 }))
}

/// A scheduled price.
#[derive(Serialize, ToSchema)]
pub(super) struct PriceAt {
    price_minor: i64,
    currency: String,
    /// When it takes effect (UTC, RFC 3339).
    effective_from: String,
}

/// The price in force now and the next scheduled change.
#[derive(Serialize, ToSchema)]
pub(super) struct PriceAnswer {
    sku: String,
    price_minor: i64,
    currency: String,
    /// When the price in force took effect (UTC, RFC 3339).
    effective_from: String,
    /// The next scheduled price, if any.
    next: Option<PriceAt>,
}

/// `GET /v1/prices/{sku}`: the price in force now and the next scheduled one.
#[utoipa::path(get, path = "/v1/prices/{sku}", tag = "reads",
    params(("sku" = String, Path, description = SKU_PARAM)),
    responses(
        (status = 200, description = "The price in force", body = PriceAnswer),
        (status = 400, description = "`invalid_sku`", body = ErrorBody),
        (status = 404, description = "`no_price`: no price is in force for this SKU", body = ErrorBody),
    ))]
pub(super) async fn price(
    State(s): State<Arc<AgentState>>,
    Path(sku): Path<String>,
) -> Result<Json<PriceAnswer>, ApiError> {
    check_sku(&sku)?;
    let reads = s.journal.reads().clone();
    let key = sku.clone();
    let view = blocking(move || Ok(reads.price(&key, OffsetDateTime::now_utc()))).await?;
    let Some(current) = view.current else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no_price", format!("no price in force for sku {sku:?}")));
    };
    let next = view.next.map(|n| PriceAt {
        price_minor: n.price_minor,
        currency: n.currency,
        effective_from: n.effective_from,
    });
    Ok(Json(PriceAnswer {
        sku,
        price_minor: current.price_minor,
        currency: current.currency,
        effective_from: current.effective_from,
        next,
    }))
}
