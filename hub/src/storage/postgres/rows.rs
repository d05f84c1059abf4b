//! Row mapping shared by several tables' readers: stored events and outbox entries.

use postgres::Row;

use super::conn::to_u64;
use crate::storage::ingest::StoredEvent;
use crate::storage::outbox::OutboxEntry;

/// The columns [`stored_event`] reads, from `events`.
pub(super) const EVENT_SELECT: &str = "SELECT hub_pos, event_id, store, till, seq, kind, occurred_at, body, hash,
        EXISTS (SELECT 1 FROM quarantine q WHERE q.store = events.store AND q.till = events.till
                AND q.seq = events.seq AND q.released_at IS NULL)
     FROM events";

/// A [`StoredEvent`] from columns 0..=9: hub_pos, event_id, store, till, seq, kind, occurred_at, body, hash,
/// quarantined.
pub(super) fn stored_event(r: &Row) -> StoredEvent {
    StoredEvent {
        hub_pos: r.get(0),
        event_id: r.get(1),
        store: r.get(2),
        till: r.get(3),
        seq: to_u64(r.get(4)),
        kind: r.get(5),
        occurred_at: r.get(6),
        body: r.get(7),
        hash: r.get(8),
        quarantined: r.get(9),
    }
}

/// An outbox entry's columns: [`stored_event`]'s 0..=9 (an entry in the outbox is never held in quarantine),
/// then the outbox position and the time the event was stored.
pub(super) const OUTBOX_SELECT: &str =
    "SELECT e.hub_pos, e.event_id, e.store, e.till, e.seq, e.kind, e.occurred_at, e.body,
        e.hash, FALSE, o.pos, e.received_at
     FROM outbox o JOIN events e ON e.hub_pos = o.hub_pos";

/// The filter of [`OUTBOX_SELECT`] by a subscription's kinds (`$2`) and stores (`$3`), after position `$1`.
pub(super) const OUTBOX_FILTER: &str = "o.pos > $1
       AND (cardinality($2::text[]) = 0 OR e.kind = ANY($2::text[]))
       AND (cardinality($3::text[]) = 0 OR e.store = ANY($3::text[]))";

pub(super) fn outbox_entry(r: &Row) -> OutboxEntry {
    OutboxEntry { pos: r.get(10), event: stored_event(r), received_at: r.get(11) }
}
