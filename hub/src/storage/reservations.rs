//! Buy online, pick up in store: the storage of escrow and reservations ([`ReservationStore`]), beside the main
//! [`super::Storage`] trait so that a backend adds it in a file of its own.
//!
//! Design note:
//! - Tables: `escrow` (`(store, sku)` → units held back for online orders; the authoritative copy, the store
//!   document carries it to the tills), `reservations` (one row per order: its request, current store and status),
//!   `reservation_lines` (`(reservation, sku)` → units) and `reservation_history` (every state change, with the
//!   `hub_pos` of its event).
//! - **The invariant** — for every store and SKU, the units of its active (`reserved` or `picked`) reservations
//!   never exceed its escrow — is checked and written in ONE database transaction per method: SQLite's
//!   `BEGIN IMMEDIATE` (one writer at a time across every process on the file), PostgreSQL's `SELECT ... FOR UPDATE`
//!   on the escrow rows concerned. Never by a lock inside one process: several hub instances may share a database.
//! - **Events**: every state change writes its canonical event ([`storesync_shared::reservation::ReservationEvent`])
//!   into `events` under the store and the pseudo-till [`HUB_TILL`] (a name no real till can have), chained with
//!   the journal's hash rules, and into `outbox`, in the transaction of the change: so it reaches the
//!   subscriptions exactly once (delivery itself stays at least once, deduplicated by `event_id`).
//! - Idempotency: `order_id` is unique. Asking again with the same request answers the reservation made the first
//!   time; with another request, [`ReservationError::OrderConflict`]. A change that already happened (the same
//!   final status again) is answered as done and writes nothing.

use std::collections::BTreeMap;

use serde::Serialize;
use storesync_shared::reservation::{ReservationChange, ReservationStatus};
use uuid::Uuid;

use super::error::StorageError;

/// The pseudo-till whose chain in `events` holds a store's reservation events. `~` is not allowed in a till id.
pub const HUB_TILL: &str = "~hub";

/// A reservation as head office asks for it (already validated; `lines` merged per SKU).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReservation {
    pub id: Uuid,
    pub order_id: String,
    pub lines: BTreeMap<String, i64>,
    /// In order of preference.
    pub stores: Vec<String>,
    /// RFC 3339, UTC ([`storesync_shared::crdt::normalize_instant`]).
    pub pickup_by: String,
}

/// One state change of a reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    pub change: ReservationChange,
    /// The store it is at after the change.
    pub store: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unix seconds.
    pub at: i64,
    /// The id of the event the change emitted.
    pub event_id: Uuid,
}

/// A reservation as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Reservation {
    pub reservation_id: Uuid,
    pub order_id: String,
    /// The store it is (or was last) at.
    pub store: String,
    pub status: ReservationStatus,
    pub lines: BTreeMap<String, i64>,
    pub stores: Vec<String>,
    pub pickup_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub history: Vec<HistoryEntry>,
}

/// What [`ReservationStore::reserve`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// Made now, at the first store of the list whose unreserved escrow covers every line.
    Created(Reservation),
    /// This `order_id` was reserved before, with the same request: that reservation.
    Existing(Reservation),
    /// No store of the list can cover every line; nothing was written.
    Unavailable,
}

/// A change asked of a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Picked,
    Collected,
    Cancelled {
        reason: String,
    },
    Expired,
    /// Move it to the next store of its list that can cover it; cancel it with `reason` when none can. With
    /// `pickup_by` (RFC 3339, UTC), the moved reservation gets that new pickup time (a reroute at expiry: the next
    /// store needs time to pick it); when no store can hold it then, it expires instead of being cancelled.
    Reroute {
        reason: String,
        pickup_by: Option<String>,
    },
}

/// A share of on-hand to hold back: `qty = clamp(on_hand × share_pct / 100, floor, cap)`, rounded down. Stored
/// with the escrow, so the planner keeps the escrow following the store's on-hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize, utoipa::ToSchema)]
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

/// An escrow set by a policy, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEscrow {
    pub store: String,
    pub sku: String,
    pub policy: EscrowPolicy,
    pub level: EscrowLevel,
}

/// A store's escrow of one SKU and what is reserved against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EscrowLevel {
    pub escrow: i64,
    pub reserved: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReservationError {
    #[error("no such reservation")]
    NotFound,
    #[error("{reserved} units are reserved against this escrow; it cannot go below that")]
    EscrowBelowReserved { reserved: i64 },
    #[error("order_id {0:?} was reserved before with another request")]
    OrderConflict(String),
    #[error("the reservation is {status:?}; it cannot be {change:?}")]
    Finished { status: ReservationStatus, change: ReservationChange },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Escrow and reservations. Every method is one transaction.
pub trait ReservationStore: Send + Sync + 'static {
    /// Sets `store`'s escrow of `sku` to `qty`, unless active reservations hold more than `qty` of it. With
    /// `policy`, records it, so that [`ReservationStore::escrow_follow`] moves the escrow with on-hand later;
    /// without, a policy set before is dropped (the escrow stays at `qty`).
    fn escrow_set(
        &self,
        store: &str,
        sku: &str,
        qty: i64,
        policy: Option<&EscrowPolicy>,
        now: i64,
    ) -> Result<EscrowLevel, ReservationError>;

    /// Every escrow set by a policy, by store and SKU.
    fn escrow_policies(&self) -> Result<Vec<PolicyEscrow>, StorageError>;

    /// Moves a policy escrow to `qty`, or to what active reservations hold when that is more (following on-hand
    /// never breaks a promise), but only while `policy` is still the one stored (head office may have changed
    /// it since it was read). Answers the new level, or `None` when the policy was replaced or removed.
    fn escrow_follow(
        &self,
        store: &str,
        sku: &str,
        policy: &EscrowPolicy,
        qty: i64,
        now: i64,
    ) -> Result<Option<EscrowLevel>, StorageError>;

    /// Every SKU of `store` with an escrow or a reservation.
    fn escrow_levels(&self, store: &str) -> Result<BTreeMap<String, EscrowLevel>, StorageError>;

    /// Reserves `r` at the first of its stores whose unreserved escrow covers every line.
    fn reserve(&self, r: &NewReservation, now: i64) -> Result<Reserved, ReservationError>;

    /// A reservation with its history.
    fn reservation(&self, id: Uuid) -> Result<Option<Reservation>, StorageError>;

    /// Applies `change`; answers the reservation after it. A change to the status it is already in (picked twice,
    /// cancelled twice) is answered as done and writes nothing.
    fn change(&self, id: Uuid, change: &Change, now: i64) -> Result<Reservation, ReservationError>;

    /// The active reservations, of one store or of all, oldest first.
    fn active(&self, store: Option<&str>) -> Result<Vec<Reservation>, StorageError>;

    /// Applies what tills journaled about reservations — `reservation_pick` (picked), `reservation_cancel`
    /// (cancelled with the till's reason) and a sale carrying `reservation_id` (collected) — from the stored events
    /// after the consumer's cursor, at most `limit` of them, and moves the cursor past them, in one transaction (so
    /// each is applied exactly once, whichever hub instance runs it). An action on an unknown or finished
    /// reservation changes nothing. Answers the reservations that changed.
    fn consume_till_events(&self, limit: usize, now: i64) -> Result<Consumed, StorageError>;
}

/// What [`ReservationStore::consume_till_events`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Consumed {
    /// Reservations changed, after the change.
    pub changed: Vec<Reservation>,
    /// Till events read (a full `limit` means more may wait).
    pub read: usize,
}

/// The canonical event body of one state change of `r` (as it is after the change) at `now`: its `occurred_at`
/// and its canonical JSON, the same for every backend.
pub(crate) fn event_body(
    r: &Reservation,
    change: ReservationChange,
    from_store: Option<&str>,
    reason: Option<&str>,
    now: i64,
) -> Result<(String, String), StorageError> {
    let occurred_at = time::OffsetDateTime::from_unix_timestamp(now)
        .map(storesync_shared::crdt::normalize_instant)
        .map_err(|e| StorageError::Backend(Box::new(e)))?;
    let body = storesync_shared::reservation::ReservationEvent {
        schema: storesync_shared::event::SCHEMA_VERSION,
        occurred_at: occurred_at.clone(),
        change,
        reservation_id: r.reservation_id,
        order_id: r.order_id.clone(),
        store: r.store.clone(),
        from_store: from_store.map(str::to_owned),
        lines: r
            .lines
            .iter()
            .map(|(sku, qty)| storesync_shared::reservation::ReservedLine { sku: sku.clone(), qty: *qty })
            .collect(),
        pickup_by: r.pickup_by.clone(),
        reason: reason.map(str::to_owned),
    };
    let value = serde_json::to_value(&body).map_err(|e| StorageError::Backend(e.into()))?;
    let body =
        String::from_utf8(storesync_shared::canonical_json(&value)).map_err(|e| StorageError::Backend(e.into()))?;
    Ok((occurred_at, body))
}

/// What a stored till event asks of a reservation, if anything.
pub(crate) fn till_action(kind: &str, body: &str) -> Option<(Uuid, Change)> {
    use storesync_shared::EventBody;
    let kind = storesync_shared::EventKind::parse(kind)?;
    match EventBody::from_stored(kind, serde_json::from_str(body).ok()?).ok()? {
        EventBody::ReservationPick(b) => Some((b.reservation_id, Change::Picked)),
        EventBody::ReservationCancel(b) => Some((
            b.reservation_id,
            Change::Cancelled { reason: b.reason.unwrap_or_else(|| "cancelled at the till".into()) },
        )),
        EventBody::Sale(b) => b.reservation_id.map(|id| (id, Change::Collected)),
        _ => None,
    }
}

/// The change a [`Change`] records when it applies as asked (a reroute may become a cancel).
pub fn change_kind(change: &Change) -> ReservationChange {
    match change {
        Change::Picked => ReservationChange::Picked,
        Change::Collected => ReservationChange::Collected,
        Change::Cancelled { .. } => ReservationChange::Cancelled,
        Change::Expired => ReservationChange::Expired,
        Change::Reroute { .. } => ReservationChange::Rerouted,
    }
}

/// Conformance tests every [`ReservationStore`] backend runs (with the [`super::Storage`] of the same database, to
/// read the outbox).
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;
    use crate::storage::Storage;
    use crate::storage::outbox::NewSubscription;

    pub(crate) const NOW: i64 = 1_800_000_000;

    pub(crate) fn order(id: &str, lines: &[(&str, i64)], stores: &[&str]) -> NewReservation {
        NewReservation {
            id: Uuid::new_v4(),
            order_id: id.into(),
            lines: lines.iter().map(|(s, q)| ((*s).to_owned(), *q)).collect(),
            stores: stores.iter().map(|s| (*s).to_owned()).collect(),
            pickup_by: "2027-01-15T18:00:00Z".into(),
        }
    }

    pub(crate) fn all_events() -> NewSubscription {
        NewSubscription {
            id: "all".into(),
            kind: "webhook".into(),
            url: "http://127.0.0.1:9/".into(),
            secret: "s".into(),
            kinds: vec![],
            stores: vec![],
            batch_size: 100,
            max_attempts: 3,
            stream: String::new(),
            subject_prefix: String::new(),
        }
    }

    /// The reservation events in the outbox, as `(kind, store, order_id)`.
    pub(crate) fn outbox<S: Storage>(s: &S) -> Vec<(String, String, String)> {
        s.outbox_after(&all_events(), 0, 10_000)
            .unwrap()
            .into_iter()
            .filter(|e| e.event.till == HUB_TILL)
            .map(|e| {
                let body: serde_json::Value = serde_json::from_str(&e.event.body).unwrap();
                (e.event.kind, e.event.store, body["order_id"].as_str().unwrap_or_default().to_owned())
            })
            .collect()
    }

    fn created(r: Result<Reserved, ReservationError>) -> Reservation {
        match r.unwrap() {
            Reserved::Created(r) => r,
            other => panic!("expected a new reservation, got {other:?}"),
        }
    }

    pub(crate) fn run_all<S: Storage + ReservationStore>(mut fresh: impl FnMut() -> S) {
        reserves_at_the_first_store_that_covers_every_line(&fresh());
        order_id_makes_reserving_idempotent(&fresh());
        escrow_never_shrinks_below_what_is_reserved(&fresh());
        changes_follow_the_state_machine_and_release_escrow(&fresh());
        reroute_moves_or_cancels(&fresh());
        a_reroute_at_expiry_carries_the_new_pickup_time(&fresh());
        a_policy_escrow_follows_on_hand_but_never_below_reserved(&fresh());
        every_change_enters_the_outbox_once_in_a_chain(&fresh());
        till_events_are_applied_once(&fresh());
    }

    /// A till's `reservation_pick` / `reservation_cancel` body.
    pub(crate) fn conformance_act(id: Uuid, reason: Option<&str>) -> storesync_shared::event::TillReservationBody {
        storesync_shared::event::TillReservationBody {
            schema: 1,
            occurred_at: "2026-11-27T10:00:00Z".into(),
            reservation_id: id,
            reason: reason.map(str::to_owned),
        }
    }

    /// A till's sale of `qty` units of `A`, collecting reservation `id` when given.
    pub(crate) fn conformance_sale(qty: i64, id: Option<Uuid>) -> storesync_shared::EventBody {
        use storesync_shared::event::{Line, SaleBody, Tender};
        storesync_shared::EventBody::Sale(SaleBody {
            schema: 1,
            occurred_at: "2026-11-27T10:00:00Z".into(),
            currency: "EUR".into(),
            lines: vec![Line { sku: "A".into(), qty, unit_price_minor: 100, discount_minor: 0 }],
            payments: vec![Tender { method: "card".into(), amount_minor: qty * 100 }],
            customer_id: None,
            reservation_id: id,
        })
    }

    /// A till's journal entry of `kind` with `body`, uploaded as seq `seq` (chained after `prev`).
    pub(crate) fn till_entry(
        till: &crate::storage::TillId,
        seq: u64,
        prev: &str,
        body: storesync_shared::EventBody,
    ) -> crate::storage::ingest::BatchEvent {
        let bytes = body.canonical();
        let event_id = Uuid::new_v4();
        let hash = storesync_shared::event_hash(&storesync_shared::canonical::ChainInput {
            store: &till.store,
            till: &till.till,
            seq,
            event_id,
            kind: body.kind(),
            body: &bytes,
            prev_hash: prev,
        });
        crate::storage::ingest::BatchEvent {
            seq,
            event_id,
            kind: body.kind(),
            occurred_at: body.occurred_at().to_owned(),
            body: serde_json::from_slice(&bytes).unwrap(),
            prev_hash: prev.to_owned(),
            hash,
        }
    }

    fn till_events_are_applied_once<S: Storage + ReservationStore>(s: &S) {
        use storesync_shared::event::EventBody;
        let till = crate::storage::TillId { store: "S1".into(), till: "T1".into() };
        s.create_enrollment(&crate::storage::NewEnrollment {
            code_hash: "c".into(),
            till: till.clone(),
            created_at: NOW,
            expires_at: NOW + 60,
        })
        .unwrap();
        s.escrow_set("S1", "A", 5, None, NOW).unwrap();
        let a = created(s.reserve(&order("W-1", &[("A", 2)], &["S1"]), NOW));
        let b = created(s.reserve(&order("W-2", &[("A", 1)], &["S1"]), NOW));
        let c = created(s.reserve(&order("W-3", &[("A", 1)], &["S1"]), NOW));
        let act = |id: Uuid, reason: Option<&str>| conformance_act(id, reason);
        let sale = |id: Option<Uuid>| conformance_sale(2, id);
        let bodies = vec![
            EventBody::ReservationPick(act(a.reservation_id, None)),
            sale(None),
            sale(Some(a.reservation_id)),
            EventBody::ReservationCancel(act(b.reservation_id, Some("customer never came"))),
            EventBody::ReservationPick(act(Uuid::new_v4(), None)),
            EventBody::ReservationCancel(act(a.reservation_id, Some("too late: collected"))),
        ];
        let mut prev = storesync_shared::genesis_hash("S1", "T1");
        let mut events = Vec::new();
        for (i, body) in bodies.into_iter().enumerate() {
            let e = till_entry(&till, i as u64 + 1, &prev, body);
            prev = e.hash.clone();
            events.push(e);
        }
        let req = crate::storage::ingest::IngestBatch {
            journal_id: Uuid::new_v4(),
            agent_version: "test".into(),
            backlog: 0,
            oldest_unsynced_age_s: 0,
            last_seq: events.len() as u64,
            events,
        };
        s.append_batch(&till, &req, NOW).unwrap();
        // Two at a time: the cursor carries over.
        let first = s.consume_till_events(2, NOW).unwrap();
        assert_eq!(first.read, 2);
        let rest = s.consume_till_events(100, NOW).unwrap();
        assert_eq!(rest.read, 3, "the sale without a reservation is not a till action");
        assert_eq!(s.consume_till_events(100, NOW).unwrap(), Consumed::default(), "nothing twice");
        assert_eq!(s.reservation(a.reservation_id).unwrap().unwrap().status, ReservationStatus::Collected);
        let cancelled = s.reservation(b.reservation_id).unwrap().unwrap();
        assert_eq!(cancelled.status, ReservationStatus::Cancelled);
        assert_eq!(cancelled.history.last().unwrap().reason.as_deref(), Some("customer never came"));
        assert_eq!(s.reservation(c.reservation_id).unwrap().unwrap().status, ReservationStatus::Reserved);
        let kinds: Vec<String> = outbox(s).into_iter().map(|(k, _, _)| k).skip(3).collect();
        assert_eq!(kinds, ["reservation_picked", "reservation_collected", "reservation_cancelled"]);
    }

    fn reserves_at_the_first_store_that_covers_every_line<S: Storage + ReservationStore>(s: &S) {
        s.escrow_set("S1", "A", 1, None, NOW).unwrap();
        s.escrow_set("S2", "A", 5, None, NOW).unwrap();
        s.escrow_set("S2", "B", 1, None, NOW).unwrap();
        s.escrow_set("S3", "A", 5, None, NOW).unwrap();
        s.escrow_set("S3", "B", 5, None, NOW).unwrap();
        // S1 lacks units of A, S2 lacks B: S3.
        let r = created(s.reserve(&order("W-1", &[("A", 2), ("B", 2)], &["S1", "S2", "S3"]), NOW));
        assert_eq!((r.store.as_str(), r.status), ("S3", ReservationStatus::Reserved));
        assert_eq!(s.escrow_levels("S3").unwrap()["A"], EscrowLevel { escrow: 5, reserved: 2 });
        // Unreserved escrow, not escrow: S3 has 3 of A left.
        assert_eq!(s.reserve(&order("W-2", &[("A", 4)], &["S3"]), NOW).unwrap(), Reserved::Unavailable);
        created(s.reserve(&order("W-3", &[("A", 3)], &["S3"]), NOW));
        assert_eq!(s.reserve(&order("W-4", &[("A", 1)], &["S3"]), NOW).unwrap(), Reserved::Unavailable);
        // A store with no escrow at all is never used.
        assert_eq!(s.reserve(&order("W-5", &[("A", 1)], &["S9"]), NOW).unwrap(), Reserved::Unavailable);
        assert!(s.reservation(Uuid::new_v4()).unwrap().is_none());
    }

    fn order_id_makes_reserving_idempotent<S: Storage + ReservationStore>(s: &S) {
        s.escrow_set("S1", "A", 2, None, NOW).unwrap();
        let first = order("W-1", &[("A", 2)], &["S1"]);
        let made = created(s.reserve(&first, NOW));
        let again = NewReservation { id: Uuid::new_v4(), ..first.clone() };
        assert_eq!(s.reserve(&again, NOW + 5).unwrap(), Reserved::Existing(made.clone()));
        let other = NewReservation { lines: BTreeMap::from([("A".into(), 1)]), ..again };
        assert!(matches!(s.reserve(&other, NOW), Err(ReservationError::OrderConflict(_))));
        assert_eq!(s.escrow_levels("S1").unwrap()["A"].reserved, 2, "reserved once");
        assert_eq!(outbox(s).len(), 1);
    }

    fn escrow_never_shrinks_below_what_is_reserved<S: Storage + ReservationStore>(s: &S) {
        s.escrow_set("S1", "A", 5, None, NOW).unwrap();
        created(s.reserve(&order("W-1", &[("A", 3)], &["S1"]), NOW));
        assert!(matches!(
            s.escrow_set("S1", "A", 2, None, NOW),
            Err(ReservationError::EscrowBelowReserved { reserved: 3 })
        ));
        assert_eq!(s.escrow_levels("S1").unwrap()["A"], EscrowLevel { escrow: 5, reserved: 3 }, "nothing written");
        assert_eq!(s.escrow_set("S1", "A", 3, None, NOW).unwrap(), EscrowLevel { escrow: 3, reserved: 3 });
        assert_eq!(s.escrow_set("S1", "A", 9, None, NOW).unwrap(), EscrowLevel { escrow: 9, reserved: 3 });
    }

    fn changes_follow_the_state_machine_and_release_escrow<S: Storage + ReservationStore>(s: &S) {
        s.escrow_set("S1", "A", 4, None, NOW).unwrap();
        let r = created(s.reserve(&order("W-1", &[("A", 4)], &["S1"]), NOW));
        let picked = s.change(r.reservation_id, &Change::Picked, NOW + 1).unwrap();
        assert_eq!(picked.status, ReservationStatus::Picked);
        assert!(matches!(
            s.change(r.reservation_id, &Change::Reroute { reason: "x".into(), pickup_by: None }, NOW),
            Err(ReservationError::Finished { .. })
        ));
        let done = s.change(r.reservation_id, &Change::Collected, NOW + 2).unwrap();
        assert_eq!(done.status, ReservationStatus::Collected);
        // The same change again is done already: no second event.
        assert_eq!(s.change(r.reservation_id, &Change::Collected, NOW + 3).unwrap(), done);
        assert!(matches!(
            s.change(r.reservation_id, &Change::Cancelled { reason: "late".into() }, NOW),
            Err(ReservationError::Finished { status: ReservationStatus::Collected, .. })
        ));
        assert_eq!(s.escrow_levels("S1").unwrap()["A"].reserved, 0, "collected units no longer held");
        let r2 = created(s.reserve(&order("W-2", &[("A", 1)], &["S1"]), NOW));
        let c = s.change(r2.reservation_id, &Change::Cancelled { reason: "customer".into() }, NOW + 4).unwrap();
        assert_eq!(c.history.last().unwrap().reason.as_deref(), Some("customer"));
        let r3 = created(s.reserve(&order("W-3", &[("A", 1)], &["S1"]), NOW));
        assert_eq!(s.change(r3.reservation_id, &Change::Expired, NOW + 5).unwrap().status, ReservationStatus::Expired);
        assert_eq!(s.escrow_levels("S1").unwrap()["A"].reserved, 0);
        let changes: Vec<ReservationChange> =
            s.reservation(r.reservation_id).unwrap().unwrap().history.iter().map(|h| h.change).collect();
        assert_eq!(changes, [ReservationChange::Reserved, ReservationChange::Picked, ReservationChange::Collected]);
        assert!(matches!(s.change(Uuid::new_v4(), &Change::Picked, NOW), Err(ReservationError::NotFound)));
        assert!(s.active(None).unwrap().is_empty());
    }

    fn a_reroute_at_expiry_carries_the_new_pickup_time<S: Storage + ReservationStore>(s: &S) {
        for store in ["S1", "S2"] {
            s.escrow_set(store, "A", 1, None, NOW).unwrap();
        }
        let r = created(s.reserve(&order("W-1", &[("A", 1)], &["S1", "S2"]), NOW));
        let later = "2027-01-16T18:00:00Z".to_owned();
        let change = Change::Reroute { reason: "not picked at S1".into(), pickup_by: Some(later.clone()) };
        let moved = s.change(r.reservation_id, &change, NOW + 1).unwrap();
        assert_eq!((moved.store.as_str(), moved.pickup_by.as_str()), ("S2", later.as_str()));
        assert_eq!(s.reservation(r.reservation_id).unwrap().unwrap().pickup_by, later, "stored");
        let event = s
            .outbox_after(&all_events(), 0, 100)
            .unwrap()
            .into_iter()
            .rfind(|e| e.event.kind == "reservation_rerouted")
            .unwrap();
        let body: serde_json::Value = serde_json::from_str(&event.event.body).unwrap();
        assert_eq!(body["pickup_by"], later.as_str(), "ERP and CRM hear the new pickup time");
        // No store after S2: at expiry that is an expiry, not a cancellation.
        let change = Change::Reroute { reason: "not picked at S2".into(), pickup_by: Some(later) };
        let gone = s.change(r.reservation_id, &change, NOW + 2).unwrap();
        assert_eq!((gone.store.as_str(), gone.status), ("S2", ReservationStatus::Expired));
        assert_eq!(s.escrow_levels("S2").unwrap()["A"].reserved, 0);
    }

    fn a_policy_escrow_follows_on_hand_but_never_below_reserved<S: Storage + ReservationStore>(s: &S) {
        let p = EscrowPolicy { share_pct: 50, floor: 1, cap: 10 };
        assert_eq!(s.escrow_set("S1", "A", 4, Some(&p), NOW).unwrap(), EscrowLevel { escrow: 4, reserved: 0 });
        s.escrow_set("S1", "B", 2, None, NOW).unwrap();
        let listed = s.escrow_policies().unwrap();
        assert_eq!(listed.len(), 1, "fixed escrows have no policy: {listed:?}");
        assert_eq!((listed[0].store.as_str(), listed[0].sku.as_str(), listed[0].policy), ("S1", "A", p));
        created(s.reserve(&order("W-1", &[("A", 3)], &["S1"]), NOW));
        // On-hand fell: the policy asks for 1, but 3 are promised.
        assert_eq!(s.escrow_follow("S1", "A", &p, 1, NOW + 1).unwrap(), Some(EscrowLevel { escrow: 3, reserved: 3 }));
        assert_eq!(s.escrow_follow("S1", "A", &p, 7, NOW + 2).unwrap(), Some(EscrowLevel { escrow: 7, reserved: 3 }));
        assert_eq!(s.escrow_levels("S1").unwrap()["A"].escrow, 7);
        // Another policy, then a fixed quantity: a follow computed from the old policy changes nothing.
        let q = EscrowPolicy { share_pct: 10, ..p };
        s.escrow_set("S1", "A", 5, Some(&q), NOW + 3).unwrap();
        assert_eq!(s.escrow_follow("S1", "A", &p, 9, NOW + 4).unwrap(), None);
        s.escrow_set("S1", "A", 6, None, NOW + 5).unwrap();
        assert_eq!(s.escrow_follow("S1", "A", &q, 9, NOW + 6).unwrap(), None);
        assert!(s.escrow_policies().unwrap().is_empty());
        assert_eq!(s.escrow_levels("S1").unwrap()["A"].escrow, 6);
    }

    fn reroute_moves_or_cancels<S: Storage + ReservationStore>(s: &S) {
        for (store, qty) in [("S1", 2), ("S2", 0), ("S3", 2)] {
            s.escrow_set(store, "A", qty, None, NOW).unwrap();
        }
        let r = created(s.reserve(&order("W-1", &[("A", 2)], &["S1", "S2", "S3"]), NOW));
        assert_eq!(r.store, "S1");
        // S2 cannot cover it: on to S3.
        let moved = s
            .change(r.reservation_id, &Change::Reroute { reason: "sold in store".into(), pickup_by: None }, NOW + 1)
            .unwrap();
        assert_eq!((moved.store.as_str(), moved.status), ("S3", ReservationStatus::Reserved));
        assert_eq!(s.escrow_levels("S1").unwrap()["A"].reserved, 0);
        assert_eq!(s.escrow_levels("S3").unwrap()["A"].reserved, 2);
        assert_eq!(s.active(Some("S3")).unwrap().len(), 1);
        // No store after S3: cancelled, with the reason.
        let gone = s
            .change(r.reservation_id, &Change::Reroute { reason: "damaged".into(), pickup_by: None }, NOW + 2)
            .unwrap();
        assert_eq!(gone.status, ReservationStatus::Cancelled);
        assert!(gone.history.last().unwrap().reason.as_deref().unwrap().contains("damaged"));
        assert_eq!(s.escrow_levels("S3").unwrap()["A"].reserved, 0);
        let kinds: Vec<String> = outbox(s).into_iter().map(|(k, _, _)| k).collect();
        assert_eq!(kinds, ["reservation_reserved", "reservation_rerouted", "reservation_cancelled"]);
    }

    fn every_change_enters_the_outbox_once_in_a_chain<S: Storage + ReservationStore>(s: &S) {
        s.escrow_set("S1", "A", 3, None, NOW).unwrap();
        s.escrow_set("S2", "A", 3, None, NOW).unwrap();
        let a = created(s.reserve(&order("W-1", &[("A", 1)], &["S1"]), NOW));
        let b = created(s.reserve(&order("W-2", &[("A", 1)], &["S2"]), NOW));
        s.change(a.reservation_id, &Change::Picked, NOW).unwrap();
        s.change(a.reservation_id, &Change::Picked, NOW).unwrap(); // a second till picks it too: done already
        s.change(b.reservation_id, &Change::Cancelled { reason: "x".into() }, NOW).unwrap();
        s.change(b.reservation_id, &Change::Cancelled { reason: "x".into() }, NOW).unwrap();
        assert_eq!(
            outbox(s),
            [
                ("reservation_reserved".into(), "S1".into(), "W-1".into()),
                ("reservation_reserved".into(), "S2".into(), "W-2".into()),
                ("reservation_picked".into(), "S1".into(), "W-1".into()),
                ("reservation_cancelled".into(), "S2".into(), "W-2".into()),
            ]
        );
        // Each store's reservation events form a hash chain of the pseudo-till, with valid bodies.
        let events = s.outbox_after(&all_events(), 0, 100).unwrap();
        let mut prev = std::collections::HashMap::new();
        for e in events.iter().map(|o| &o.event) {
            let kind = storesync_shared::EventKind::parse(&e.kind).unwrap();
            let body: serde_json::Value = serde_json::from_str(&e.body).unwrap();
            storesync_shared::EventBody::from_stored(kind, body).unwrap().validate().unwrap();
            let prev_hash =
                prev.get(&e.store).cloned().unwrap_or_else(|| storesync_shared::genesis_hash(&e.store, HUB_TILL));
            let expect = storesync_shared::event_hash(&storesync_shared::canonical::ChainInput {
                store: &e.store,
                till: HUB_TILL,
                seq: e.seq,
                event_id: e.event_id,
                kind,
                body: e.body.as_bytes(),
                prev_hash: &prev_hash,
            });
            assert_eq!(e.hash, expect);
            prev.insert(e.store.clone(), e.hash.clone());
        }
        assert_eq!(s.reservation(a.reservation_id).unwrap().unwrap().history[1].event_id, events[2].event.event_id);
    }
}
