//! What the writer shares with everyone else in memory: the store document as last committed ([`DocState`], read
//! by readers under its lock), and the writer's own figures ([`WriterStats`]).

use automerge::{Automerge, ChangeHash};

/// The store's document as the writer last committed it.
pub struct DocState {
    pub doc: Automerge,
    /// The CRDT epoch of `doc` (see `doc.rs`).
    pub epoch: u64,
    /// Heads of the last change that is durably in SQLite. Readers read at these heads.
    pub committed_heads: Vec<ChangeHash>,
    /// Keys of this till's own stock counters, so the writer can increment without reading them.
    pub own_keys: std::collections::HashSet<String>,
    /// This till's stock movements that are durably journaled but not yet folded into `doc` (see `writer.rs`).
    /// Readers add them to what `doc` says.
    pub unfolded: std::collections::HashMap<String, i64>,
    /// The escrow of every SKU that has one, at `committed_heads` (see [`DocState::commit_heads`]): every walk-in
    /// sale asks it (`crate::reservations`), and a map lookup is far cheaper than an automerge read at heads.
    pub escrow: std::collections::HashMap<String, i64>,
}

impl DocState {
    /// Replaces the document (after a reload or an epoch switch), recomputing what derives from it.
    pub(crate) fn replace(&mut self, doc: Automerge, till: &str) {
        self.own_keys = storesync_shared::crdt::root_map(&doc, storesync_shared::crdt::STOCK)
            .map(|s| storesync_shared::crdt::writer_keys(&doc, &s, till))
            .unwrap_or_default();
        self.doc = doc;
        self.commit_heads();
    }

    /// Readers now read at the document's current heads: it is durably in SQLite. Refreshes what derives from them.
    pub(crate) fn commit_heads(&mut self) {
        use storesync_shared::crdt;
        self.committed_heads = self.doc.get_heads();
        self.escrow = crdt::root_map(&self.doc, crdt::ESCROW).map(|e| crdt::escrows(&self.doc, &e)).unwrap_or_default();
    }

    /// Units of `sku` on hand as readers see them: the committed document plus the unfolded movements.
    pub fn on_hand(&self, sku: &str) -> i64 {
        use storesync_shared::crdt;
        let unfolded = self.unfolded.get(sku).copied().unwrap_or(0);
        crdt::root_map(&self.doc, crdt::STOCK)
            .map_or(0, |stock| crdt::on_hand(&self.doc, &stock, sku, Some(&self.committed_heads)))
            + unfolded
    }
}

/// What the writer has done since the agent started.
#[derive(Debug, Default)]
pub struct WriterStats {
    groups: std::sync::atomic::AtomicU64,
    events: std::sync::atomic::AtomicU64,
}

impl WriterStats {
    pub(super) fn record_group(&self, events: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.groups.fetch_add(1, Relaxed);
        self.events.fetch_add(events, Relaxed);
    }

    /// Group commits made, and the events they journaled.
    pub fn get(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.groups.load(Relaxed), self.events.load(Relaxed))
    }
}
