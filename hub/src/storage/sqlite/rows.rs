//! Row mapping shared by several tables' readers: stored events and outbox entries.

use uuid::Uuid;

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
pub(super) fn stored_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    let id: String = r.get(1)?;
    Ok(StoredEvent {
        hub_pos: r.get(0)?,
        event_id: Uuid::parse_str(&id).unwrap_or_default(),
        store: r.get(2)?,
        till: r.get(3)?,
        seq: to_u64(r.get(4)?),
        kind: r.get(5)?,
        occurred_at: r.get(6)?,
        body: r.get(7)?,
        hash: r.get(8)?,
        quarantined: r.get(9)?,
    })
}

/// An outbox entry's columns: [`stored_event`]'s 0..=9 (an entry in the outbox is never held in quarantine),
/// then the outbox position and the time the event was stored.
pub(super) const OUTBOX_SELECT: &str =
    "SELECT e.hub_pos, e.event_id, e.store, e.till, e.seq, e.kind, e.occurred_at, e.body,
        e.hash, 0, o.pos, e.received_at
     FROM outbox o JOIN events e ON e.hub_pos = o.hub_pos";

pub(super) fn outbox_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxEntry> {
    Ok(OutboxEntry { pos: r.get(10)?, event: stored_event(r)?, received_at: r.get(11)? })
}
