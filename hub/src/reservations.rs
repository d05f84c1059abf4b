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
//!      named ([`crate::wake::PlannerWake::holds_due`]: so a reservation's answer waits for one commit, not two, and one document
//!      write carries every reservation made meanwhile), and every minute of every store with active
//!      reservations, up to the tables: escrow levels and holds. A write that fails is retried on the next pass;
//!   5. every `policy_every` full passes, moves each policy escrow with its store's on-hand.
//!
//!   Every state change it makes is one storage transaction, so several hub instances running it at once at
//!   worst find a change already made.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use storesync_shared::crdt;
use storesync_shared::event::parse_timestamp;
use storesync_shared::reservation::{ReservationStatus, ReservedLine};
use tracing::info;
use uuid::Uuid;

use crate::docs::{DocError, Docs};
use crate::hub::Hub;
pub use crate::storage::reservations::EscrowPolicy;
use crate::storage::reservations::{Change, PolicyEscrow, Reservation, ReservationError, ReservationStore};

/// The most stores one reservation may list.
pub const MAX_STORES: usize = 50;

/// Why a planner step failed; the planner logs it and tries again on its next pass.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Reservations(#[from] ReservationError),
    #[error(transparent)]
    Document(#[from] DocError),
    #[error("this hub's storage keeps no reservations")]
    Unavailable,
    #[error("the hub's clock is out of range")]
    Clock,
    #[error("a blocking task failed: {0}")]
    Task(String),
}

/// Runs one reservation-store call on the blocking pool.
async fn reserve<T: Send + 'static>(
    hub: &Hub,
    f: impl FnOnce(&dyn ReservationStore) -> Result<T, ReservationError> + Send + 'static,
) -> Result<T, PlanError> {
    let store = hub.reservation_store().ok_or(PlanError::Unavailable)?;
    match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
        Ok(res) => res.map_err(Into::into),
        Err(err) => Err(PlanError::Task(err.to_string())),
    }
}

/// Runs one document operation on the blocking pool.
async fn document<T: Send + 'static>(
    hub: &Hub,
    f: impl FnOnce(&Docs) -> Result<T, DocError> + Send + 'static,
) -> Result<T, PlanError> {
    let docs = hub.docs.clone();
    match tokio::task::spawn_blocking(move || f(&docs)).await {
        Ok(res) => res.map_err(Into::into),
        Err(err) => Err(PlanError::Task(err.to_string())),
    }
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
pub async fn sync_holds(hub: &Hub, stores: Vec<String>) -> Vec<String> {
    let mut failed = Vec::new();
    for store in stores {
        let s = store.clone();
        let tables = reserve(hub, move |r| Ok((r.active(Some(&s))?, r.escrow_levels(&s)?))).await;
        let Ok((active, levels)) = tables else {
            failed.push(store);
            continue;
        };
        let want: Vec<crdt::Hold> = active.iter().map(hold_of).collect();
        let escrow: Vec<(String, i64)> = levels.into_iter().map(|(sku, l)| (sku, l.escrow)).collect();
        let (s, now) = (store.clone(), hub.now());
        let wrote = document(hub, move |d| {
            d.set_escrow(&s, &escrow, now)?;
            d.set_holds(&s, &want, now)
        })
        .await;
        match wrote {
            Ok(_) => {}
            Err(PlanError::Document(DocError::UnknownStore)) => {} // no till yet: nothing to carry it to
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
    hub: &Hub,
    settings: &PlannerSettings,
    touched: &mut BTreeSet<String>,
    full: bool,
) -> Result<Pass, PlanError> {
    let mut pass = Pass::default();
    let now = hub.now();
    loop {
        let batch = settings.batch.max(1);
        let got = reserve(hub, move |r| Ok(r.consume_till_events(batch, now)?)).await?;
        pass.applied += got.changed.len();
        touched.extend(got.changed.iter().map(|r| r.store.clone()));
        if got.read < batch {
            break;
        }
    }
    if !full {
        if pass.applied > 0 {
            hub.outbox.wake();
        }
        return Ok(pass);
    }
    let active = reserve(hub, |r| Ok(r.active(None)?)).await?;
    let now_key = crdt::normalize_instant(crate::time_fmt::instant(now).ok_or(PlanError::Clock)?);
    let mut by_store: BTreeMap<String, Vec<Reservation>> = BTreeMap::new();
    for r in active {
        if r.pickup_by.as_str() < now_key.as_str() {
            let (id, from) = (r.reservation_id, r.store.clone());
            let change = expiry_change(&r, settings.on_expiry, now);
            let after = reserve(hub, move |s| s.change(id, &change, now)).await;
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
        let stock = on_hand_of(hub, &store, skus).await?;
        for id in short_reservations(&active, |sku| stock.get(sku).copied().unwrap_or(0)) {
            let reason = format!("{store} sold units held for this order");
            let r = reserve(hub, move |s| s.change(id, &Change::Reroute { reason, pickup_by: None }, now)).await?;
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
        hub.outbox.wake();
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
async fn on_hand_of(hub: &Hub, store: &str, skus: BTreeSet<String>) -> Result<BTreeMap<String, i64>, PlanError> {
    let s = store.to_owned();
    let stock = document(hub, move |d| {
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
        Err(PlanError::Document(DocError::UnknownStore)) => Ok(BTreeMap::new()),
        Err(e) => Err(e),
    }
}

/// Moves every escrow set by a policy to what its policy gives at the store's on-hand now, never below what
/// active reservations hold ([`ReservationStore::escrow_follow`]). `touched` collects the stores whose escrow
/// moved (their documents must carry it). Answers how many escrows moved.
pub async fn follow_policies(hub: &Hub, touched: &mut BTreeSet<String>) -> Result<usize, PlanError> {
    let all = reserve(hub, |r| Ok(r.escrow_policies()?)).await?;
    let mut by_store: BTreeMap<String, Vec<PolicyEscrow>> = BTreeMap::new();
    for p in all {
        by_store.entry(p.store.clone()).or_default().push(p);
    }
    let (now, mut moved) = (hub.now(), 0);
    for (store, list) in by_store {
        let stock = on_hand_of(hub, &store, list.iter().map(|p| p.sku.clone()).collect()).await?;
        for p in list {
            let want = p.policy.qty(stock.get(&p.sku).copied().unwrap_or(0));
            if want.max(p.level.reserved) == p.level.escrow {
                continue;
            }
            let (s, sku, policy) = (store.clone(), p.sku.clone(), p.policy);
            if reserve(hub, move |r| Ok(r.escrow_follow(&s, &sku, &policy, want, now)?)).await?.is_some() {
                moved += 1;
                touched.insert(store.clone());
                info!(store_id = %store, sku = %p.sku, escrow = want.max(p.level.reserved), "escrow follows on-hand");
            }
        }
    }
    Ok(moved)
}

/// The planner: runs [`plan_once`] every `interval` and after every upload, until `shutdown`.
pub async fn run(hub: Hub, settings: PlannerSettings, shutdown: tokio_util::sync::CancellationToken) {
    if hub.reservation_store().is_none() {
        return;
    }
    let mut touched: BTreeSet<String> = BTreeSet::new();
    let mut passes: u32 = 0;
    let mut next_full = tokio::time::Instant::now();
    loop {
        touched.extend(hub.planner.take_holds_due());
        let full = tokio::time::Instant::now() >= next_full;
        if full {
            next_full = tokio::time::Instant::now() + settings.interval;
        }
        if let Err(e) = plan_once(&hub, &settings, &mut touched, full).await {
            tracing::warn!(error = %e, "reservation planner pass failed; retrying");
        }
        passes = passes.wrapping_add(u32::from(full));
        if full
            && passes.is_multiple_of(settings.policy_every.max(1))
            && let Err(e) = follow_policies(&hub, &mut touched).await
        {
            tracing::warn!(error = %e, "escrow policies not followed this pass; retrying");
        }
        if full
            && passes.is_multiple_of(settings.full_every.max(1))
            && let Ok(all) = reserve(&hub, |r| Ok(r.active(None)?)).await
        {
            touched.extend(all.into_iter().map(|r| r.store));
        }
        let stores: Vec<String> = std::mem::take(&mut touched).into_iter().collect();
        touched.extend(sync_holds(&hub, stores).await);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = hub.planner.notified() => {}
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
