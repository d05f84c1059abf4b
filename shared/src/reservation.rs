//! Buy online, pick up in store: the canonical reservation events (what ERP and CRM receive through the outbox for
//! every state change of a reservation) and their validation. No I/O.
//!
//! A reservation promises units of a store's escrow ([`crate::crdt::escrow_key`]) to an online order. Its states:
//!
//! ```text
//! reserved ──picked──▶ picked ──collected──▶ collected
//!    │  ▲                 │
//!    │  └── rerouted ─────┘ (to the next store of the order's list, when the store cannot hand the goods over)
//!    └──────────┴── cancelled (with a reason) | expired (not collected by pickup_by)
//! ```
//!
//! Every change is one event of kind `reservation_<change>`, made by the hub only: a till's upload carrying one
//! is quarantined ([`crate::EventKind::is_hub_only`]).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::rules::{ValidationError, check_sku};

/// The change a reservation event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReservationChange {
    Reserved,
    Rerouted,
    Picked,
    Collected,
    Cancelled,
    Expired,
}

impl ReservationChange {
    pub const ALL: [ReservationChange; 6] = [
        ReservationChange::Reserved,
        ReservationChange::Rerouted,
        ReservationChange::Picked,
        ReservationChange::Collected,
        ReservationChange::Cancelled,
        ReservationChange::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReservationChange::Reserved => "reserved",
            ReservationChange::Rerouted => "rerouted",
            ReservationChange::Picked => "picked",
            ReservationChange::Collected => "collected",
            ReservationChange::Cancelled => "cancelled",
            ReservationChange::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<ReservationChange> {
        ReservationChange::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The status a reservation has after this change (a reroute leaves it `reserved`, at another store).
    pub fn status_after(self) -> ReservationStatus {
        match self {
            ReservationChange::Reserved | ReservationChange::Rerouted => ReservationStatus::Reserved,
            ReservationChange::Picked => ReservationStatus::Picked,
            ReservationChange::Collected => ReservationStatus::Collected,
            ReservationChange::Cancelled => ReservationStatus::Cancelled,
            ReservationChange::Expired => ReservationStatus::Expired,
        }
    }
}

/// Where a reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    Reserved,
    Picked,
    Collected,
    Cancelled,
    Expired,
}

impl ReservationStatus {
    pub const ALL: [ReservationStatus; 5] = [
        ReservationStatus::Reserved,
        ReservationStatus::Picked,
        ReservationStatus::Collected,
        ReservationStatus::Cancelled,
        ReservationStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReservationStatus::Reserved => "reserved",
            ReservationStatus::Picked => "picked",
            ReservationStatus::Collected => "collected",
            ReservationStatus::Cancelled => "cancelled",
            ReservationStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<ReservationStatus> {
        ReservationStatus::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether the reservation still holds units of its store's escrow.
    pub fn is_active(self) -> bool {
        matches!(self, ReservationStatus::Reserved | ReservationStatus::Picked)
    }

    /// Whether `change` may be applied in this status. A finished reservation takes no change (a repeat of the
    /// change that finished it is answered as already done by the caller, not applied twice).
    pub fn allows(self, change: ReservationChange) -> bool {
        use ReservationChange as C;
        match self {
            ReservationStatus::Reserved => !matches!(change, C::Reserved),
            ReservationStatus::Picked => matches!(change, C::Collected | C::Cancelled | C::Expired),
            _ => false,
        }
    }
}

/// One line of a reservation: units of one SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReservedLine {
    pub sku: String,
    pub qty: i64,
}

/// The body of a `reservation_<change>` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReservationEvent {
    #[serde(default = "schema_v1")]
    pub schema: u32,
    pub occurred_at: String,
    pub change: ReservationChange,
    pub reservation_id: Uuid,
    pub order_id: String,
    /// The store the reservation is at after this change (for `rerouted`, the new one).
    pub store: String,
    /// For `rerouted`: the store it left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_store: Option<String>,
    pub lines: Vec<ReservedLine>,
    /// RFC 3339, UTC.
    pub pickup_by: String,
    /// Why: required for `cancelled`, `rerouted` and `expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn schema_v1() -> u32 {
    crate::rules::SCHEMA_VERSION
}

/// The most characters of an `order_id`.
pub const MAX_ORDER_ID_CHARS: usize = 128;

/// Checks an order id: non-blank, at most [`MAX_ORDER_ID_CHARS`] characters, no control characters.
pub fn check_order_id(id: &str) -> Result<(), ValidationError> {
    if id.trim().is_empty() || id.chars().count() > MAX_ORDER_ID_CHARS || id.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "invalid_order_id",
            format!("order_id must be 1 to {MAX_ORDER_ID_CHARS} characters with no control characters"),
        ));
    }
    Ok(())
}

/// Checks reservation lines: 1 to [`crate::rules::MAX_LINES`], each a valid SKU and a positive quantity of at most
/// [`crate::rules::MAX_QTY`], no SKU twice.
pub fn check_lines(lines: &[ReservedLine]) -> Result<(), ValidationError> {
    use crate::rules::{MAX_LINES, MAX_QTY};
    if lines.is_empty() || lines.len() > MAX_LINES {
        return Err(ValidationError::new("invalid_lines", format!("lines must hold 1 to {MAX_LINES} lines")));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, l) in lines.iter().enumerate() {
        check_sku(&l.sku, &format!("lines[{i}].sku"))?;
        if !(1..=MAX_QTY).contains(&l.qty) {
            return Err(ValidationError::new(
                "invalid_qty",
                format!("lines[{i}].qty must be a positive integer of at most {MAX_QTY}, got {}", l.qty),
            ));
        }
        if !seen.insert(l.sku.as_str()) {
            return Err(ValidationError::new("duplicate_sku", format!("lines[{i}]: {} is already a line", l.sku)));
        }
    }
    Ok(())
}

impl ReservationEvent {
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_order_id(&self.order_id)?;
        check_lines(&self.lines)?;
        let text = |s: &str, field: &str| {
            if s.trim().is_empty() || s.chars().count() > crate::rules::MAX_TEXT_CHARS {
                Err(ValidationError::new("invalid_text", format!("{field} must be non-blank and short")))
            } else {
                Ok(())
            }
        };
        text(&self.store, "store")?;
        if let Some(s) = &self.from_store {
            text(s, "from_store")?;
        }
        if crate::rules::parse_timestamp(&self.pickup_by).is_none() {
            return Err(ValidationError::new("invalid_pickup_by", "pickup_by must be an RFC 3339 timestamp"));
        }
        match (&self.reason, self.change) {
            (Some(r), _) => text(r, "reason")?,
            (None, ReservationChange::Cancelled | ReservationChange::Rerouted | ReservationChange::Expired) => {
                return Err(ValidationError::new(
                    "missing_reason",
                    format!("a {} event needs a reason", self.change.as_str()),
                ));
            }
            (None, _) => {}
        }
        if (self.change == ReservationChange::Rerouted) != self.from_store.is_some() {
            return Err(ValidationError::new("invalid_from_store", "from_store is given for rerouted, and only then"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(change: ReservationChange) -> ReservationEvent {
        ReservationEvent {
            schema: 1,
            occurred_at: "2026-11-27T10:00:00Z".into(),
            change,
            reservation_id: Uuid::nil(),
            order_id: "W-1".into(),
            store: "S1".into(),
            from_store: None,
            lines: vec![ReservedLine { sku: "A".into(), qty: 2 }],
            pickup_by: "2026-11-28T18:00:00Z".into(),
            reason: None,
        }
    }

    #[test]
    fn reservation_events_are_checked() {
        assert!(event(ReservationChange::Reserved).validate().is_ok());
        let check = |f: &dyn Fn(&mut ReservationEvent), code: &str| {
            let mut e = event(ReservationChange::Reserved);
            f(&mut e);
            assert_eq!(e.validate().unwrap_err().code, code);
        };
        check(&|e| e.change = ReservationChange::Cancelled, "missing_reason");
        check(&|e| e.lines.push(ReservedLine { sku: "A".into(), qty: 1 }), "duplicate_sku");
        check(&|e| e.lines[0].qty = 0, "invalid_qty");
        check(&|e| e.order_id = " ".into(), "invalid_order_id");
        check(&|e| e.pickup_by = "tomorrow".into(), "invalid_pickup_by");
        check(&|e| e.from_store = Some("S2".into()), "invalid_from_store");
    }

    #[test]
    fn the_state_machine_allows_only_forward_changes() {
        use ReservationChange as C;
        use ReservationStatus as S;
        assert!(S::Reserved.allows(C::Rerouted) && S::Reserved.allows(C::Picked) && S::Reserved.allows(C::Collected));
        assert!(!S::Picked.allows(C::Rerouted) && S::Picked.allows(C::Collected));
        for done in [S::Collected, S::Cancelled, S::Expired] {
            assert!(C::ALL.iter().all(|c| !done.allows(*c)), "{done:?} is final");
            assert!(!done.is_active());
        }
        assert_eq!(C::Rerouted.status_after(), S::Reserved);
        for c in C::ALL {
            assert_eq!(C::parse(c.as_str()), Some(c));
        }
    }
}
