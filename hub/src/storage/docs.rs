//! Store documents and epochs: the CRDT document's snapshot and chunks, sync states, head-office movements and
//! compaction ([`DocStore`]).

use super::error::StorageError;

/// Where a store's document stands in storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DocMeta {
    /// The current epoch (0 until the first compaction).
    pub epoch: u64,
    /// Bumped by every write of the document; the optimistic-concurrency token of [`DocStore::doc_apply`].
    pub version: u64,
    /// Automerge changes written since the epoch started.
    pub changes_since_epoch: u64,
    /// Bytes stored for the document: its snapshot plus every chunk after it.
    pub saved_bytes: u64,
    /// Chunks stored after the snapshot (folded into a new snapshot every so often).
    pub chunks: u64,
    /// Bytes of the epoch's first document (its snapshot from compaction; 0 for epoch 0's genesis). What the epoch
    /// has grown by is `saved_bytes - epoch_bytes`.
    pub epoch_bytes: u64,
}

/// A store's document as read from storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocLoad {
    /// Everything: the snapshot (`None` = the genesis document, epoch 0 only) and the chunks after it, in order.
    Full { meta: DocMeta, snapshot: Option<Vec<u8>>, chunks: Vec<Vec<u8>> },
    /// Only the chunks written after the version the caller already holds (same epoch, not folded past it).
    Delta { meta: DocMeta, chunks: Vec<Vec<u8>> },
}

impl DocLoad {
    pub fn meta(&self) -> DocMeta {
        match self {
            DocLoad::Full { meta, .. } | DocLoad::Delta { meta, .. } => *meta,
        }
    }
}

/// A head-office stock movement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMovement {
    pub sku: String,
    pub delta: i64,
    pub reason: String,
}

/// One write of one store's document, applied only if the store is still at `epoch` and `base_version`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocWrite {
    pub store: String,
    pub epoch: u64,
    /// The [`DocMeta::version`] the caller's document was at when it made `chunk`.
    pub base_version: u64,
    /// `save_after(heads before)` of the caller's document; empty when the document did not change.
    pub chunk: Vec<u8>,
    /// How many automerge changes `chunk` holds.
    pub changes: u64,
    /// A full save of the document after `chunk`, to replace the snapshot and drop the chunks.
    pub fold: Option<Vec<u8>>,
    /// The hub's sync state with a till for this epoch: `(till, State::encode())`.
    pub sync_state: Option<(String, Vec<u8>)>,
    /// Head-office movements recorded with this write (their effect is in `chunk`).
    pub movements: Vec<NewMovement>,
}

/// What compaction hands to its document builder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionInput {
    /// The epoch being closed.
    pub epoch: u64,
    /// Per till of the store: the last seq the hub holds.
    pub cuts: std::collections::BTreeMap<String, u64>,
    /// Per SKU: every head-office movement plus the stock effect of every journal event up to the cuts.
    pub base: std::collections::BTreeMap<String, i64>,
    /// The closing epoch's document, as in [`DocLoad::Full`].
    pub snapshot: Option<Vec<u8>>,
    pub chunks: Vec<Vec<u8>>,
}

/// The document a store's current epoch started from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochRecord {
    pub epoch: u64,
    pub cuts: std::collections::BTreeMap<String, u64>,
    /// Per SKU: the base counters of the snapshot.
    pub base: std::collections::BTreeMap<String, i64>,
    pub doc: Vec<u8>,
}

/// Why a compaction did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error("no till of store is known")]
    UnknownStore,
    #[error("a stored event cannot be read back: {0}")]
    BadEvent(String),
    #[error("building the epoch document failed: {0}")]
    Build(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// See [`super::Storage`] for the contract every method keeps (one transaction, blocking).
pub trait DocStore: Send + Sync + 'static {
    /// The bytes each store's document takes ([`DocMeta::saved_bytes`]), for stores that have one.
    fn doc_sizes(&self) -> Result<std::collections::BTreeMap<String, u64>, StorageError>;

    /// Reads a store's document. With `since = Some((epoch, version))` (what the caller holds) it answers a
    /// [`DocLoad::Delta`] when it can, else a [`DocLoad::Full`]. A store never written reads as epoch 0, version 0,
    /// genesis.
    fn doc_load(&self, store: &str, since: Option<(u64, u64)>) -> Result<DocLoad, StorageError>;

    /// Applies document writes of one or more stores in ONE transaction: every write or none. Each must still be
    /// at its `epoch` and `base_version`, else [`StorageError::Conflict`] (reload and retry). Returns each store's
    /// new meta, in order.
    fn doc_apply(&self, writes: &[DocWrite], now: i64) -> Result<Vec<DocMeta>, StorageError>;

    /// The hub's stored `sync::State` with a till for an epoch.
    fn sync_state(&self, store: &str, till: &str, epoch: u64) -> Result<Option<Vec<u8>>, StorageError>;

    /// Closes the store's current epoch E and starts E+1, in ONE transaction: computes the cuts and base (see
    /// [`CompactionInput`]), lets `build` make the new document from them, stores it as epoch E+1's snapshot and
    /// current document, and drops epoch E's chunks and sync states.
    fn compact(
        &self,
        store: &str,
        now: i64,
        build: &mut dyn FnMut(&CompactionInput) -> Result<Vec<u8>, String>,
    ) -> Result<EpochRecord, CompactError>;

    /// The record of the store's current epoch; `None` while it is epoch 0.
    fn epoch_record(&self, store: &str) -> Result<Option<EpochRecord>, StorageError>;

    /// Per SKU, the sum of the store's head-office movements, and their count.
    fn movement_totals(&self, store: &str) -> Result<(std::collections::BTreeMap<String, i64>, u64), StorageError>;
}
