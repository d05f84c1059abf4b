//! A journal row as the journal hands it out ([`Entry`]), and its one conversion to the upload's wire form.
//!
//! The row is the journal's own type: the upload (`wire::JournalEvent`) and the POS API's `GET /v1/journal` answer
//! are made from it by explicit conversions, so neither wire shape is the journal's schema.

use serde_json::Value;
use storesync_shared::EventKind;
use storesync_shared::wire::JournalEvent;
use uuid::Uuid;

/// One row of the `journal` table, its body parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub event_id: Uuid,
    pub kind: EventKind,
    /// The body's `occurred_at` (RFC 3339 with an offset).
    pub occurred_at: String,
    /// The body as journaled (canonical JSON, without `event_id`).
    pub body: Value,
    /// The hash of the entry before (the till's genesis hash for seq 1).
    pub prev_hash: String,
    /// SHA-256 over the entry and `prev_hash` (see [`storesync_shared::canonical`]).
    pub hash: String,
}

impl From<Entry> for JournalEvent {
    /// The entry as the upload to the hub carries it (and as the chain check and `export` read it).
    fn from(e: Entry) -> JournalEvent {
        JournalEvent {
            seq: e.seq,
            event_id: e.event_id,
            kind: e.kind,
            occurred_at: e.occurred_at,
            body: e.body,
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}
