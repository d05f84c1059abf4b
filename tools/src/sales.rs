//! Valid canonical events for tests and benchmarks.

use serde_json::{Value, json};
use uuid::Uuid;

/// The SKUs test sales draw from.
pub const SKUS: [&str; 5] = ["4006381333931", "5012345678900", "0001", "COFFEE-1KG", "MILK-1L"];

/// A valid sale of `qty` of `sku` (plus one unit of a second SKU), paid by card, with a client event id.
pub fn sale(event_id: Uuid, sku: &str, qty: i64) -> Value {
    json!({
        "event_id": event_id,
        "occurred_at": "2026-11-26T14:05:00+01:00",
        "currency": "EUR",
        "lines": [
            {"sku": sku, "qty": qty, "unit_price_minor": 249, "discount_minor": 0},
            {"sku": "BAG", "qty": 1, "unit_price_minor": 10, "discount_minor": 0}
        ],
        "payments": [{"method": "card", "amount_minor": qty * 249 + 10}]
    })
}

/// A valid return of `qty` of `sku`.
pub fn return_of(event_id: Uuid, sku: &str, qty: i64) -> Value {
    json!({
        "event_id": event_id,
        "occurred_at": "2026-11-26T14:07:00+01:00",
        "currency": "EUR",
        "lines": [{"sku": sku, "qty": qty, "unit_price_minor": 249}],
        "refunds": [{"method": "cash", "amount_minor": qty * 249}],
        "reason": "faulty"
    })
}
