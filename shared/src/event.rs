//! Canonical retail events: the bodies the POS posts, their validation, and their effect on stock.
//!
//! Every body is versioned (`"schema": 1`, implied when absent, refused when it is anything else), refuses
//! unknown fields, and must carry `occurred_at` (RFC 3339 with an offset). `event_id` travels beside the body, never
//! inside it: [`parse_request`] takes it out, so the stored body and its hash do not depend on who chose the id.
//! Money is integer minor units with an ISO 4217 currency; all arithmetic on it is checked.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::canonical_json::canonical_json;
use crate::reservation::{ReservationChange, ReservationEvent};
pub use crate::rules::{
    MAX_LINES, MAX_QTY, MAX_SKU_CHARS, MAX_TEXT_CHARS, SCHEMA_VERSION, ValidationError, check_sku, parse_timestamp,
};

/// What happened at the till.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Sale,
    Return,
    Void,
    TransferOut,
    TransferIn,
    Adjustment,
    /// A till marks a reservation picked (set aside for the customer).
    ReservationPick,
    /// A till cancels a reservation, with a reason.
    ReservationCancel,
    /// Hub-made: a reservation's state changes ([`crate::reservation`]).
    ReservationReserved,
    ReservationRerouted,
    ReservationPicked,
    ReservationCollected,
    ReservationCancelled,
    ReservationExpired,
}

impl EventKind {
    pub const ALL: [EventKind; 14] = [
        EventKind::Sale,
        EventKind::Return,
        EventKind::Void,
        EventKind::TransferOut,
        EventKind::TransferIn,
        EventKind::Adjustment,
        EventKind::ReservationPick,
        EventKind::ReservationCancel,
        EventKind::ReservationReserved,
        EventKind::ReservationRerouted,
        EventKind::ReservationPicked,
        EventKind::ReservationCollected,
        EventKind::ReservationCancelled,
        EventKind::ReservationExpired,
    ];

    /// The kind of a reservation event recording `change`.
    pub fn of_reservation(change: ReservationChange) -> EventKind {
        match change {
            ReservationChange::Reserved => EventKind::ReservationReserved,
            ReservationChange::Rerouted => EventKind::ReservationRerouted,
            ReservationChange::Picked => EventKind::ReservationPicked,
            ReservationChange::Collected => EventKind::ReservationCollected,
            ReservationChange::Cancelled => EventKind::ReservationCancelled,
            ReservationChange::Expired => EventKind::ReservationExpired,
        }
    }

    /// Kinds only the hub makes (reservation state changes). A till may not journal them: the POS API and the drop
    /// folder refuse them, and the hub quarantines an uploaded one.
    pub fn is_hub_only(self) -> bool {
        matches!(
            self,
            EventKind::ReservationReserved
                | EventKind::ReservationRerouted
                | EventKind::ReservationPicked
                | EventKind::ReservationCollected
                | EventKind::ReservationCancelled
                | EventKind::ReservationExpired
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Sale => "sale",
            EventKind::Return => "return",
            EventKind::Void => "void",
            EventKind::TransferOut => "transfer_out",
            EventKind::TransferIn => "transfer_in",
            EventKind::Adjustment => "adjustment",
            EventKind::ReservationPick => "reservation_pick",
            EventKind::ReservationCancel => "reservation_cancel",
            EventKind::ReservationReserved => "reservation_reserved",
            EventKind::ReservationRerouted => "reservation_rerouted",
            EventKind::ReservationPicked => "reservation_picked",
            EventKind::ReservationCollected => "reservation_collected",
            EventKind::ReservationCancelled => "reservation_cancelled",
            EventKind::ReservationExpired => "reservation_expired",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn schema_v1() -> u32 {
    SCHEMA_VERSION
}

/// One line of a sale or return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Line {
    pub sku: String,
    pub qty: i64,
    pub unit_price_minor: i64,
    #[serde(default)]
    pub discount_minor: i64,
}

/// A payment taken or a refund given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Tender {
    pub method: String,
    pub amount_minor: i64,
}

/// `POST /v1/sales`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaleBody {
    #[serde(default = "schema_v1")]
    pub schema: u32,
    pub occurred_at: String,
    pub currency: String,
    pub lines: Vec<Line>,
    pub payments: Vec<Tender>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// The online reservation this sale hands over (buy online, pick up in store): the hub marks it collected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation_id: Option<Uuid>,
}

/// `POST /v1/returns`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReturnBody {
    #[serde(default = "schema_v1")]
    pub schema: u32,
    pub occurred_at: String,
    pub currency: String,
    pub lines: Vec<Line>,
    pub refunds: Vec<Tender>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_event_id: Option<Uuid>,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
}

/// `POST /v1/voids`: cancels an earlier sale or return of the same till.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoidBody {
    #[serde(default = "schema_v1")]
    pub schema: u32,
    pub occurred_at: String,
    pub voided_event_id: Uuid,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Out,
    In,
}

/// One line of a transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferLine {
    pub sku: String,
    pub qty: i64,
}

/// `POST /v1/transfers`: kind `transfer_out` or `transfer_in` by `direction`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    #[serde(default = "schema_v1")]
    pub schema: u32,
    pub occurred_at: String,
    pub direction: Direction,
    pub other_store: String,
    pub transfer_id: String,
    pub lines: Vec<TransferLine>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdjustmentReason {
    Count,
    Damage,
    Theft,
    Other,
}

/// `POST /v1/adjustments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentBody {
    #[serde(default = "schema_v1")]
    pub schema: u32,
    pub occurred_at: String,
    pub sku: String,
    pub delta: i64,
    pub reason: AdjustmentReason,
}

/// `POST /v1/reservations/{id}/picked` and `/cancel`: a till's action on a reservation (kinds `reservation_pick`
/// and `reservation_cancel`; a cancel needs a reason, a pick has none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TillReservationBody {
    #[serde(default = "schema_v1")]
    pub schema: u32,
    pub occurred_at: String,
    pub reservation_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A validated-or-not event body of any kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventBody {
    Sale(SaleBody),
    Return(ReturnBody),
    Void(VoidBody),
    Transfer(TransferBody),
    Adjustment(AdjustmentBody),
    ReservationPick(TillReservationBody),
    ReservationCancel(TillReservationBody),
    /// Hub-made only ([`EventKind::is_hub_only`]).
    Reservation(ReservationEvent),
}

/// Which body a request path (or a drop-file record) carries. Transfers pick their kind from `direction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    Sale,
    Return,
    Void,
    Transfer,
    Adjustment,
    /// A reservation event: the hub's own, never a till's.
    Reservation,
    ReservationPick,
    ReservationCancel,
}

impl BodyType {
    pub fn for_kind(kind: EventKind) -> BodyType {
        match kind {
            EventKind::Sale => BodyType::Sale,
            EventKind::Return => BodyType::Return,
            EventKind::Void => BodyType::Void,
            EventKind::TransferOut | EventKind::TransferIn => BodyType::Transfer,
            EventKind::Adjustment => BodyType::Adjustment,
            EventKind::ReservationPick => BodyType::ReservationPick,
            EventKind::ReservationCancel => BodyType::ReservationCancel,
            EventKind::ReservationReserved
            | EventKind::ReservationRerouted
            | EventKind::ReservationPicked
            | EventKind::ReservationCollected
            | EventKind::ReservationCancelled
            | EventKind::ReservationExpired => BodyType::Reservation,
        }
    }
}

/// Parses a POST body: takes `event_id` out, refuses unknown fields, and validates what is left.
pub fn parse_request(ty: BodyType, bytes: &[u8]) -> Result<(Option<Uuid>, EventBody), ValidationError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ValidationError::new("malformed_json", format!("request body is not valid JSON: {e}")))?;
    parse_request_value(ty, value)
}

/// [`parse_request`] for a body that is already a JSON value.
pub fn parse_request_value(ty: BodyType, value: Value) -> Result<(Option<Uuid>, EventBody), ValidationError> {
    if ty == BodyType::Reservation {
        return Err(ValidationError::new("hub_only_kind", "reservation events are made by the hub, never by a till"));
    }
    let Value::Object(mut map) = value else {
        return Err(ValidationError::new("invalid_body", "request body must be a JSON object"));
    };
    let event_id = match map.remove("event_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(parse_uuid(&s, "event_id")?),
        Some(_) => {
            return Err(ValidationError::new("invalid_event_id", "event_id must be a UUID string"));
        }
    };
    let body = EventBody::from_value(ty, Value::Object(map))?;
    body.validate()?;
    Ok((event_id, body))
}

fn parse_uuid(s: &str, field: &str) -> Result<Uuid, ValidationError> {
    Uuid::parse_str(s).map_err(|e| ValidationError::new("invalid_event_id", format!("{field} is not a UUID: {e}")))
}

/// Deserializes `T` from an owned [`Value`] (its strings move) or a `&Value` (nothing is cloned first).
fn from_value<'de, T, D>(value: D) -> Result<T, ValidationError>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
    D::Error: std::fmt::Display,
{
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let detail = if path == "." { inner } else { format!("{path}: {inner}") };
        ValidationError::new("invalid_body", detail)
    })
}

/// Refuses a body that names a schema version other than this build's.
fn check_schema(value: &Value) -> Result<(), ValidationError> {
    match value.get("schema") {
        Some(schema) if schema.as_u64() != Some(u64::from(SCHEMA_VERSION)) => Err(ValidationError::new(
            "unsupported_schema",
            format!("schema {schema} is not supported; this agent speaks schema {SCHEMA_VERSION}"),
        )),
        _ => Ok(()),
    }
}

impl EventBody {
    /// Deserializes a body of the given type. Does not validate; see [`EventBody::validate`].
    pub fn from_value(ty: BodyType, value: Value) -> Result<EventBody, ValidationError> {
        check_schema(&value)?;
        EventBody::typed(ty, value)
    }

    /// The typed body of `ty` from any deserializer of a JSON value whose schema was checked.
    fn typed<'de, D>(ty: BodyType, value: D) -> Result<EventBody, ValidationError>
    where
        D: serde::Deserializer<'de>,
        D::Error: std::fmt::Display,
    {
        Ok(match ty {
            BodyType::Sale => EventBody::Sale(from_value(value)?),
            BodyType::Return => EventBody::Return(from_value(value)?),
            BodyType::Void => EventBody::Void(from_value(value)?),
            BodyType::Transfer => EventBody::Transfer(from_value(value)?),
            BodyType::Adjustment => EventBody::Adjustment(from_value(value)?),
            BodyType::Reservation => EventBody::Reservation(from_value(value)?),
            BodyType::ReservationPick => EventBody::ReservationPick(from_value(value)?),
            BodyType::ReservationCancel => EventBody::ReservationCancel(from_value(value)?),
        })
    }

    /// Reads back a stored body of a known kind, checking that the kind and the body agree.
    pub fn from_stored(kind: EventKind, value: Value) -> Result<EventBody, ValidationError> {
        check_schema(&value)?;
        EventBody::checked_kind(kind, EventBody::typed(BodyType::for_kind(kind), value)?)
    }

    /// [`EventBody::from_stored`] from a borrowed body, without copying it first (the hub checks every uploaded
    /// body this way).
    pub fn from_stored_ref(kind: EventKind, value: &Value) -> Result<EventBody, ValidationError> {
        check_schema(value)?;
        EventBody::checked_kind(kind, EventBody::typed(BodyType::for_kind(kind), value)?)
    }

    fn checked_kind(kind: EventKind, body: EventBody) -> Result<EventBody, ValidationError> {
        if body.kind() != kind {
            return Err(ValidationError::new(
                "kind_mismatch",
                format!("body is a {} but the event says {kind}", body.kind()),
            ));
        }
        Ok(body)
    }

    pub fn kind(&self) -> EventKind {
        match self {
            EventBody::Sale(_) => EventKind::Sale,
            EventBody::Return(_) => EventKind::Return,
            EventBody::Void(_) => EventKind::Void,
            EventBody::Transfer(t) => match t.direction {
                Direction::Out => EventKind::TransferOut,
                Direction::In => EventKind::TransferIn,
            },
            EventBody::Adjustment(_) => EventKind::Adjustment,
            EventBody::Reservation(r) => EventKind::of_reservation(r.change),
            EventBody::ReservationPick(_) => EventKind::ReservationPick,
            EventBody::ReservationCancel(_) => EventKind::ReservationCancel,
        }
    }

    pub fn occurred_at(&self) -> &str {
        match self {
            EventBody::Sale(b) => &b.occurred_at,
            EventBody::Return(b) => &b.occurred_at,
            EventBody::Void(b) => &b.occurred_at,
            EventBody::Transfer(b) => &b.occurred_at,
            EventBody::Adjustment(b) => &b.occurred_at,
            EventBody::Reservation(b) => &b.occurred_at,
            EventBody::ReservationPick(b) | EventBody::ReservationCancel(b) => &b.occurred_at,
        }
    }

    pub fn to_value(&self) -> Value {
        let v = match self {
            EventBody::Sale(b) => serde_json::to_value(b),
            EventBody::Return(b) => serde_json::to_value(b),
            EventBody::Void(b) => serde_json::to_value(b),
            EventBody::Transfer(b) => serde_json::to_value(b),
            EventBody::Adjustment(b) => serde_json::to_value(b),
            EventBody::Reservation(b) => serde_json::to_value(b),
            EventBody::ReservationPick(b) | EventBody::ReservationCancel(b) => serde_json::to_value(b),
        };
        // Serializing plain structs of strings and integers into a Value cannot fail.
        v.unwrap_or(Value::Null)
    }

    /// The canonical JSON bytes of this body: what is stored and what is hashed.
    pub fn canonical(&self) -> Vec<u8> {
        canonical_json(&self.to_value())
    }

    /// Checks every rule a body must satisfy beyond its shape.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_occurred_at(self.occurred_at())?;
        match self {
            EventBody::Sale(b) => {
                check_currency(&b.currency)?;
                let total = check_lines(&b.lines)?;
                check_tenders(&b.payments, "payments", total)?;
                check_opt_text(b.customer_id.as_deref(), "customer_id")?;
            }
            EventBody::Return(b) => {
                check_currency(&b.currency)?;
                let total = check_lines(&b.lines)?;
                check_tenders(&b.refunds, "refunds", total)?;
                check_text(&b.reason, "reason")?;
                check_opt_text(b.customer_id.as_deref(), "customer_id")?;
            }
            EventBody::Void(b) => check_text(&b.reason, "reason")?,
            EventBody::Transfer(b) => {
                check_text(&b.other_store, "other_store")?;
                check_text(&b.transfer_id, "transfer_id")?;
                check_line_count(b.lines.len())?;
                for (i, l) in b.lines.iter().enumerate() {
                    check_sku(&l.sku, &format!("lines[{i}].sku"))?;
                    check_qty(l.qty, &format!("lines[{i}].qty"))?;
                }
            }
            EventBody::Adjustment(b) => {
                check_sku(&b.sku, "sku")?;
                if b.delta == 0 || b.delta.abs() > MAX_QTY {
                    return Err(ValidationError::new(
                        "invalid_delta",
                        format!("delta must be a non-zero integer between -{MAX_QTY} and {MAX_QTY}, got {}", b.delta),
                    ));
                }
            }
            EventBody::Reservation(b) => b.validate()?,
            EventBody::ReservationPick(b) => {
                if b.reason.is_some() {
                    return Err(ValidationError::new("unexpected_reason", "a pick carries no reason"));
                }
            }
            EventBody::ReservationCancel(b) => check_text(b.reason.as_deref().unwrap_or(""), "reason")?,
        }
        Ok(())
    }

    /// The sale or return total in minor units, if this body has one.
    pub fn total_minor(&self) -> Option<i64> {
        match self {
            EventBody::Sale(b) => check_lines(&b.lines).ok(),
            EventBody::Return(b) => check_lines(&b.lines).ok(),
            _ => None,
        }
    }

    /// How this event moves stock, per SKU (net of repeated SKUs). A void has no effect of its own: its effect is
    /// the negation of the voided event's, which only the journal knows (see [`negate`]).
    pub fn stock_effect(&self) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        let mut add = |sku: &str, d: i64| {
            *out.entry(sku.to_owned()).or_insert(0) += d;
        };
        match self {
            EventBody::Sale(b) => b.lines.iter().for_each(|l| add(&l.sku, -l.qty)),
            EventBody::Return(b) => b.lines.iter().for_each(|l| add(&l.sku, l.qty)),
            EventBody::Transfer(b) => {
                let sign = if b.direction == Direction::Out { -1 } else { 1 };
                b.lines.iter().for_each(|l| add(&l.sku, sign * l.qty));
            }
            EventBody::Adjustment(b) => add(&b.sku, b.delta),
            // A promise moves no stock; the collecting sale does.
            EventBody::Void(_)
            | EventBody::Reservation(_)
            | EventBody::ReservationPick(_)
            | EventBody::ReservationCancel(_) => {}
        }
        out.retain(|_, d| *d != 0);
        out
    }

    /// Can an event of this body be voided?
    pub fn is_voidable(&self) -> bool {
        matches!(self, EventBody::Sale(_) | EventBody::Return(_))
    }
}

/// The reverse of a stock effect.
pub fn negate(effect: &BTreeMap<String, i64>) -> BTreeMap<String, i64> {
    effect.iter().map(|(k, v)| (k.clone(), -v)).collect()
}

fn check_occurred_at(s: &str) -> Result<(), ValidationError> {
    parse_timestamp(s).map(|_| ()).ok_or_else(|| {
        ValidationError::new(
            "invalid_occurred_at",
            format!(
                "occurred_at must be an RFC 3339 timestamp with an offset, like 2026-11-26T14:05:00+01:00; got {s:?}"
            ),
        )
    })
}

/// Checks an ISO 4217 currency code (three upper-case letters of a known currency).
pub fn check_currency(code: &str) -> Result<(), ValidationError> {
    let known = code.len() == 3
        && code.bytes().all(|b| b.is_ascii_uppercase())
        && iso_currency::Currency::from_code(code).is_some();
    if known {
        Ok(())
    } else {
        Err(ValidationError::new("unknown_currency", format!("currency {code:?} is not an ISO 4217 code")))
    }
}

fn check_qty(qty: i64, field: &str) -> Result<(), ValidationError> {
    if !(1..=MAX_QTY).contains(&qty) {
        return Err(ValidationError::new(
            "invalid_qty",
            format!("{field} must be a positive integer of at most {MAX_QTY}, got {qty}"),
        ));
    }
    Ok(())
}

fn check_text(s: &str, field: &str) -> Result<(), ValidationError> {
    if s.trim().is_empty() || s.chars().count() > MAX_TEXT_CHARS {
        return Err(ValidationError::new(
            "invalid_text",
            format!("{field} must be non-blank and at most {MAX_TEXT_CHARS} characters"),
        ));
    }
    Ok(())
}

fn check_opt_text(s: Option<&str>, field: &str) -> Result<(), ValidationError> {
    s.map_or(Ok(()), |s| check_text(s, field))
}

fn check_line_count(n: usize) -> Result<(), ValidationError> {
    if n == 0 {
        return Err(ValidationError::new("no_lines", "lines must hold at least one line"));
    }
    if n > MAX_LINES {
        return Err(ValidationError::new("too_many_lines", format!("at most {MAX_LINES} lines, got {n}")));
    }
    Ok(())
}

fn overflow(what: &str) -> ValidationError {
    ValidationError::new("amount_overflow", format!("{what} overflows a 64-bit amount of minor units"))
}

/// Validates sale/return lines and returns their total in minor units.
fn check_lines(lines: &[Line]) -> Result<i64, ValidationError> {
    check_line_count(lines.len())?;
    let mut total: i64 = 0;
    for (i, l) in lines.iter().enumerate() {
        check_sku(&l.sku, &format!("lines[{i}].sku"))?;
        check_qty(l.qty, &format!("lines[{i}].qty"))?;
        if l.unit_price_minor < 0 {
            return Err(ValidationError::new(
                "invalid_amount",
                format!("lines[{i}].unit_price_minor must be zero or more, got {}", l.unit_price_minor),
            ));
        }
        if l.discount_minor < 0 {
            return Err(ValidationError::new(
                "invalid_amount",
                format!("lines[{i}].discount_minor must be zero or more, got {}", l.discount_minor),
            ));
        }
        let gross = l.qty.checked_mul(l.unit_price_minor).ok_or_else(|| overflow(&format!("lines[{i}]")))?;
        let net = gross - l.discount_minor; // both non-negative: cannot overflow
        if net < 0 {
            return Err(ValidationError::new(
                "discount_exceeds_line",
                format!("lines[{i}].discount_minor {} exceeds the line amount {gross}", l.discount_minor),
            ));
        }
        total = total.checked_add(net).ok_or_else(|| overflow("the total"))?;
    }
    Ok(total)
}

fn check_tenders(tenders: &[Tender], field: &str, total: i64) -> Result<(), ValidationError> {
    if tenders.len() > MAX_LINES {
        return Err(ValidationError::new(
            "too_many_lines",
            format!("at most {MAX_LINES} {field}, got {}", tenders.len()),
        ));
    }
    let mut sum: i64 = 0;
    for (i, t) in tenders.iter().enumerate() {
        check_text(&t.method, &format!("{field}[{i}].method"))?;
        if t.amount_minor <= 0 {
            return Err(ValidationError::new(
                "invalid_amount",
                format!("{field}[{i}].amount_minor must be positive, got {}", t.amount_minor),
            ));
        }
        sum = sum.checked_add(t.amount_minor).ok_or_else(|| overflow(field))?;
    }
    if sum != total {
        return Err(ValidationError::new(
            "tender_mismatch",
            format!("{field} sum to {sum} but the lines total {total}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    fn sale() -> Value {
        json!({
            "occurred_at": "2026-11-26T14:05:00+01:00",
            "currency": "EUR",
            "lines": [{"sku": "A", "qty": 2, "unit_price_minor": 250, "discount_minor": 50},
                      {"sku": "B", "qty": 1, "unit_price_minor": 100}],
            "payments": [{"method": "card", "amount_minor": 550}]
        })
    }

    /// One table-driven check: mutate a valid sale, expect this error code.
    fn check(ty: BodyType, mutate: impl FnOnce(&mut Value), code: &str) {
        let mut v = match ty {
            BodyType::Sale => sale(),
            BodyType::Adjustment => {
                json!({"occurred_at": "2026-11-26T14:05:00Z", "sku": "A", "delta": -1, "reason": "damage"})
            }
            BodyType::Transfer => {
                json!({"occurred_at": "2026-11-26T14:05:00Z", "direction": "out", "other_store": "S2",
                                          "transfer_id": "TR-1", "lines": [{"sku": "A", "qty": 1}]})
            }
            BodyType::Void => {
                json!({"occurred_at": "2026-11-26T14:05:00Z", "voided_event_id": Uuid::nil(), "reason": "x"})
            }
            BodyType::Return => {
                json!({"occurred_at": "2026-11-26T14:05:00Z", "currency": "EUR", "reason": "faulty",
                                        "lines": [{"sku": "A", "qty": 1, "unit_price_minor": 100}],
                                        "refunds": [{"method": "cash", "amount_minor": 100}]})
            }
            BodyType::Reservation => json!({"occurred_at": "2026-11-26T14:05:00Z"}),
            BodyType::ReservationPick | BodyType::ReservationCancel => {
                json!({"occurred_at": "2026-11-26T14:05:00Z", "reservation_id": Uuid::nil(), "reason": "gone"})
            }
        };
        mutate(&mut v);
        let err = parse_request_value(ty, v).expect_err("should be refused");
        assert_eq!(err.code, code, "{err}");
        assert!(!err.detail.is_empty());
    }

    #[test]
    fn valid_bodies_pass_and_total_is_computed() {
        let (id, body) = parse_request_value(BodyType::Sale, sale()).unwrap();
        assert_eq!(id, None);
        assert_eq!(body.total_minor(), Some(550));
        assert_eq!(body.stock_effect(), BTreeMap::from([("A".into(), -2), ("B".into(), -1)]));
    }

    #[test]
    fn bad_bodies_are_refused_precisely() {
        use BodyType::*;
        check(Sale, |v| v["lines"][0]["qty"] = json!(0), "invalid_qty");
        check(Sale, |v| v["lines"][0]["qty"] = json!(-3), "invalid_qty");
        check(Sale, |v| v["lines"][0]["qty"] = json!(1.5), "invalid_body");
        check(Sale, |v| v["currency"] = json!("XYZ"), "unknown_currency");
        check(Sale, |v| v["currency"] = json!("eur"), "unknown_currency");
        check(Sale, |v| v["lines"][0]["sku"] = json!(""), "invalid_sku");
        check(Sale, |v| v["lines"][0]["sku"] = json!("x".repeat(65)), "invalid_sku");
        check(Sale, |v| v["lines"] = json!([]), "no_lines");
        check(
            Sale,
            |v| v["lines"] = json!(vec![json!({"sku":"A","qty":1,"unit_price_minor":0}); 501]),
            "too_many_lines",
        );
        check(Sale, |v| v["extra"] = json!(1), "invalid_body");
        check(Sale, |v| v["lines"][0]["colour"] = json!("red"), "invalid_body");
        check(Sale, |v| v["payments"][0]["amount_minor"] = json!(549), "tender_mismatch");
        check(Sale, |v| v["payments"][0]["amount_minor"] = json!(0), "invalid_amount");
        check(Sale, |v| v["lines"][0]["unit_price_minor"] = json!(i64::MAX), "amount_overflow");
        check(Sale, |v| v["lines"][0]["discount_minor"] = json!(501), "discount_exceeds_line");
        check(Sale, |v| v["occurred_at"] = json!("2026-11-26 14:05"), "invalid_occurred_at");
        check(Sale, |v| v["occurred_at"] = json!("2026-11-26T14:05:00"), "invalid_occurred_at");
        check(Sale, |v| v.as_object_mut().unwrap().remove("occurred_at").map(drop).unwrap(), "invalid_body");
        check(Sale, |v| v["schema"] = json!(2), "unsupported_schema");
        check(Sale, |v| v["event_id"] = json!("not-a-uuid"), "invalid_event_id");
        check(Adjustment, |v| v["delta"] = json!(0), "invalid_delta");
        check(Adjustment, |v| v["reason"] = json!("lost"), "invalid_body");
        check(Transfer, |v| v["direction"] = json!("sideways"), "invalid_body");
        check(Transfer, |v| v["transfer_id"] = json!(" "), "invalid_text");
        check(Void, |v| v["voided_event_id"] = json!("nope"), "invalid_body");
        check(Return, |v| v["refunds"] = json!([]), "tender_mismatch");
        check(Reservation, |_| {}, "hub_only_kind");
        check(ReservationPick, |_| {}, "unexpected_reason");
        check(ReservationCancel, |v| v["reason"] = json!(" "), "invalid_text");
        check(ReservationCancel, |v| drop(v.as_object_mut().unwrap().remove("reason")), "invalid_text");
        check(Sale, |v| v["reservation_id"] = json!("W-1"), "invalid_body");
    }

    #[test]
    fn error_detail_names_the_field() {
        let mut v = sale();
        v["lines"][1]["qty"] = json!("two");
        let err = parse_request_value(BodyType::Sale, v).unwrap_err();
        assert!(err.detail.contains("lines[1].qty"), "{}", err.detail);
    }

    fn arb_sku() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_-]{1,64}"
    }

    fn arb_line() -> impl Strategy<Value = Line> {
        (arb_sku(), 1i64..1000, 0i64..100_000).prop_flat_map(|(sku, qty, price)| {
            (0..=qty * price).prop_map(move |discount| Line {
                sku: sku.clone(),
                qty,
                unit_price_minor: price,
                discount_minor: discount,
            })
        })
    }

    fn arb_body() -> impl Strategy<Value = EventBody> {
        let ts = (0i64..4_000_000_000, -12i8..14).prop_map(|(s, h)| {
            let off = time::UtcOffset::from_hms(h, 0, 0).unwrap();
            OffsetDateTime::from_unix_timestamp(s).unwrap().to_offset(off).format(&Rfc3339).unwrap()
        });
        let currency = prop::sample::select(vec!["EUR", "USD", "GBP", "JPY", "CHF"]);
        let sale = (ts.clone(), currency, prop::collection::vec(arb_line(), 1..8), prop::option::of(arb_sku()))
            .prop_map(|(occurred_at, cur, lines, customer_id)| {
                let total: i64 = lines.iter().map(|l| l.qty * l.unit_price_minor - l.discount_minor).sum();
                let payments =
                    if total == 0 { vec![] } else { vec![Tender { method: "card".into(), amount_minor: total }] };
                EventBody::Sale(SaleBody {
                    schema: 1,
                    occurred_at,
                    currency: cur.into(),
                    lines,
                    payments,
                    customer_id,
                    reservation_id: None,
                })
            });
        let adj =
            (ts.clone(), arb_sku(), prop_oneof![-MAX_QTY..0, 1..=MAX_QTY]).prop_map(|(occurred_at, sku, delta)| {
                EventBody::Adjustment(AdjustmentBody {
                    schema: 1,
                    occurred_at,
                    sku,
                    delta,
                    reason: AdjustmentReason::Count,
                })
            });
        let transfer = (ts, any::<bool>(), prop::collection::vec((arb_sku(), 1i64..100), 1..5)).prop_map(
            |(occurred_at, out, lines)| {
                EventBody::Transfer(TransferBody {
                    schema: 1,
                    occurred_at,
                    direction: if out { Direction::Out } else { Direction::In },
                    other_store: "S2".into(),
                    transfer_id: "T-1".into(),
                    lines: lines.into_iter().map(|(sku, qty)| TransferLine { sku, qty }).collect(),
                })
            },
        );
        prop_oneof![sale, adj, transfer]
    }

    proptest! {
        #[test]
        fn canonical_encoding_round_trips(body in arb_body()) {
            prop_assert!(body.validate().is_ok(), "{:?}", body.validate());
            let bytes = body.canonical();
            let back = EventBody::from_stored(body.kind(), serde_json::from_slice(&bytes).unwrap()).unwrap();
            prop_assert_eq!(&back, &body);
            prop_assert_eq!(back.canonical(), bytes);
        }

        #[test]
        fn key_order_and_whitespace_do_not_change_the_encoding(body in arb_body()) {
            let pretty = serde_json::to_string_pretty(&body.to_value()).unwrap();
            let (_, again) = parse_request(BodyType::for_kind(body.kind()), pretty.as_bytes()).unwrap();
            prop_assert_eq!(again.canonical(), body.canonical());
        }

        #[test]
        fn validation_never_panics_on_arbitrary_numbers(qty in any::<i64>(), price in any::<i64>(),
                                                        disc in any::<i64>(), paid in any::<i64>()) {
            let v = json!({"occurred_at": "2026-11-26T14:05:00Z", "currency": "EUR",
                "lines": [{"sku": "A", "qty": qty, "unit_price_minor": price, "discount_minor": disc},
                          {"sku": "B", "qty": qty, "unit_price_minor": price}],
                "payments": [{"method": "card", "amount_minor": paid}]});
            let _ = parse_request_value(BodyType::Sale, v);
        }

        #[test]
        fn accepted_sales_have_payments_equal_to_total(lines in prop::collection::vec(arb_line(), 1..5), extra in -5i64..5) {
            let total: i64 = lines.iter().map(|l| l.qty * l.unit_price_minor - l.discount_minor).sum();
            let paid = total + extra;
            let v = json!({"occurred_at": "2026-11-26T14:05:00Z", "currency": "EUR", "lines": lines,
                           "payments": if paid > 0 { json!([{"method": "card", "amount_minor": paid}]) } else { json!([]) }});
            let res = parse_request_value(BodyType::Sale, v);
            prop_assert_eq!(res.is_ok(), paid == total || (paid <= 0 && total == 0));
        }
    }
}
