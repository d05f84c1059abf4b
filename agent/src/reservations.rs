//! Buy online, pick up in store, till half: the reservations to pick, and the `held_for_online` warning. The
//! HTTP handlers are in `crate::api::reservations`.
//!
//! Design note:
//! - The till learns of its store's reservations from the store document: the hub writes each active reservation
//!   as a hold in the escrow map (`crdt::holds`), beside the escrow itself, and the ordinary CRDT sync brings them.
//!   So the list is read from the local cache and works offline; no other channel or credential is involved.
//! - Picking and cancelling are journal events like any other (`reservation_pick`, `reservation_cancel`), written
//!   through the journal writer, answered after COMMIT, uploaded like the rest; a sale with `reservation_id` is the
//!   collection. The hub applies them when it receives them. Until the hub's answer comes back in the document,
//!   the list overlays what this till journaled itself (the last 10,000 journal entries are looked at).
//! - A walk-in sale is never refused for want of stock. When it leaves less on hand than the escrow of one of its
//!   SKUs, it dipped into units held for online orders: the receipt says `"warnings":["held_for_online"]`.

use std::collections::HashMap;
use std::sync::Arc;

use storesync_shared::crdt;
use storesync_shared::event::EventBody;
use storesync_shared::reservation::ReservationStatus;
use uuid::Uuid;

use crate::AgentState;
use crate::journal::DocState;

/// The warning a sale's receipt carries when it sold units held for online orders.
pub const HELD_FOR_ONLINE: &str = "held_for_online";

/// How many of the newest journal entries are looked at for this till's own actions on reservations.
const LOCAL_WINDOW: u64 = 10_000;

/// What this till journaled about a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Local {
    Picked,
    Ended,
}

/// The last word of this till's own reservation events (in seq order) on each reservation they name.
fn local_actions(events: Vec<EventBody>) -> HashMap<Uuid, Local> {
    let mut out = HashMap::new();
    for event in events {
        match event {
            EventBody::ReservationPick(b) => {
                out.entry(b.reservation_id).or_insert(Local::Picked);
            }
            EventBody::ReservationCancel(b) => {
                out.insert(b.reservation_id, Local::Ended);
            }
            EventBody::Sale(b) => {
                if let Some(id) = b.reservation_id {
                    out.insert(id, Local::Ended);
                }
            }
            _ => {}
        }
    }
    out
}

/// The holds in this till's copy of the store document, as last committed.
fn holds(s: &AgentState) -> Vec<crdt::Hold> {
    let Ok(d) = s.journal.docs().read() else { return Vec::new() };
    crdt::root_map(&d.doc, crdt::ESCROW).map(|e| crdt::holds(&d.doc, &e, Some(&d.committed_heads))).unwrap_or_default()
}

/// The store's reservations to pick, oldest pickup first: the holds of the local copy, with what this till picked,
/// cancelled or collected itself applied at once. Blocking (it reads the journal).
pub(crate) fn to_pick(s: &AgentState) -> anyhow::Result<Vec<crdt::Hold>> {
    let local = local_actions(s.journal.reads().reservation_events(LOCAL_WINDOW)?);
    let mut out: Vec<crdt::Hold> = holds(s)
        .into_iter()
        .filter_map(|mut h| {
            match local.get(&h.reservation_id) {
                Some(Local::Ended) => return None,
                Some(Local::Picked) => h.status = ReservationStatus::Picked,
                None => {}
            }
            Some(h)
        })
        .collect();
    out.sort_by(|a, b| (&a.pickup_by, a.reservation_id).cmp(&(&b.pickup_by, b.reservation_id)));
    Ok(out)
}

/// Whether this till's copy of the store document holds reservation `id`. Reads the document under its lock.
pub(crate) fn is_held(s: &AgentState, id: Uuid) -> bool {
    holds(s).iter().any(|h| h.reservation_id == id)
}

/// The SKUs of `body` whose sale may dip into escrow: a sale's, unless it collects a reservation.
pub(crate) fn walk_in_skus(body: &EventBody) -> Vec<String> {
    match body {
        EventBody::Sale(b) if b.reservation_id.is_none() => b.lines.iter().map(|l| l.sku.clone()).collect(),
        _ => Vec::new(),
    }
}

/// The warnings for a journaled walk-in sale of `skus`: [`HELD_FOR_ONLINE`] when, now, one of them has less on
/// hand than its escrow. Read under one lock of the store document.
fn warnings(d: &DocState, skus: &[String]) -> Vec<String> {
    let dipped = skus.iter().any(|sku| d.escrow.get(sku).is_some_and(|&held| held > 0 && d.on_hand(sku) < held));
    if dipped { vec![HELD_FOR_ONLINE.to_owned()] } else { Vec::new() }
}

/// [`warnings`] for a sale's receipt. Every walk-in sale asks, so it reads the in-memory document right here
/// when the lock is free (a few microseconds) and takes the blocking pool only while the writer holds the lock
/// (a fold), instead of a thread hop per sale.
pub(crate) async fn receipt_warnings(s: &Arc<AgentState>, skus: Vec<String>) -> Vec<String> {
    // The guard must be gone before any await (it is not `Send`), so the lock is tried in its own statement.
    let now = match s.journal.docs().try_read() {
        Ok(d) => Some(warnings(&d, &skus)),
        Err(std::sync::TryLockError::WouldBlock) => None,
        Err(std::sync::TryLockError::Poisoned(_)) => Some(Vec::new()),
    };
    if let Some(w) = now {
        return w;
    }
    let docs = s.journal.docs().clone();
    tokio::task::spawn_blocking(move || docs.read().map(|d| warnings(&d, &skus)).unwrap_or_default())
        .await
        .unwrap_or_default()
}
