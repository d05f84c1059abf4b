//! Ingest and chains: tills' hash chains of journal events, their health, the events in hub order and the
//! quarantine ([`IngestStore`]).

use storesync_shared::canonical::{ChainError, Link, verify_link};
use storesync_shared::event::EventKind;

use super::error::StorageError;

/// A till as named by its credential.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TillId {
    pub store: String,
    pub till: String,
}

/// One journal entry of an upload batch, as the till chained it: what the hub verifies and stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEvent {
    pub seq: u64,
    pub event_id: uuid::Uuid,
    pub kind: EventKind,
    /// The body's `occurred_at` (RFC 3339 with an offset).
    pub occurred_at: String,
    /// The body as journaled (without `event_id`).
    pub body: serde_json::Value,
    /// The hash of the entry before (the till's genesis hash for seq 1).
    pub prev_hash: String,
    /// SHA-256 over the entry and `prev_hash` (see `storesync_shared::canonical`).
    pub hash: String,
}

impl BatchEvent {
    /// The chain half of the check: the entry follows `prev` (`(seq, hash)` of the entry before it) and its hash
    /// matches its content. The body's meaning is not looked at ([`BatchEvent::check_body`] does that), so an entry
    /// that passes is exactly what the till journaled. Answers the canonical JSON of the body (what was hashed).
    pub fn verify_link(&self, store: &str, till: &str, prev: (u64, &str)) -> Result<Vec<u8>, ChainError> {
        let link = Link {
            seq: self.seq,
            event_id: self.event_id,
            kind: self.kind,
            body: &self.body,
            prev_hash: &self.prev_hash,
            hash: &self.hash,
        };
        verify_link(store, till, prev, link)
    }

    /// The body half: whether this build's schema and rules accept the body (else the event is quarantined).
    pub fn check_body(&self) -> Result<(), ChainError> {
        storesync_shared::wire::check_body(self.seq, self.kind, &self.occurred_at, &self.body)
    }
}

/// One upload of a till: what it said about itself and a run of consecutive journal entries (maybe none: a
/// heartbeat). The store and till come from the credential, never from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestBatch {
    /// Random id made when the till's journal was created; a restore from backup keeps it.
    pub journal_id: uuid::Uuid,
    /// The agent's version, recorded for the fleet view (empty: unchanged).
    pub agent_version: String,
    /// Events journaled and not yet acknowledged, counted by the till before this batch.
    pub backlog: u64,
    /// Age in seconds of the oldest unacknowledged event, as the till sees it.
    pub oldest_unsynced_age_s: u64,
    /// The till's last journal seq.
    pub last_seq: u64,
    pub events: Vec<BatchEvent>,
}

/// What an accepted batch left stored: everything up to `acked_through`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    pub acked_through: u64,
    /// The hash of entry `acked_through` as the hub holds it (the genesis hash when 0).
    pub last_hash: String,
    /// Seqs of this batch stored in the chain but held in quarantine.
    pub quarantined: Vec<u64>,
}

/// Where a till's chain stands at the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// The journal the stored events belong to (`None` before the first event).
    pub journal_id: Option<uuid::Uuid>,
    pub hub_seq: u64,
    pub last_hash: String,
}

/// One till in the fleet view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TillView {
    pub till: String,
    pub last_seen: Option<i64>,
    /// The last seq the till reported having.
    pub last_seq: u64,
    /// The last seq stored at the hub.
    pub hub_seq: u64,
    pub backlog: u64,
    pub oldest_unsynced_age_s: u64,
    pub version: String,
    pub chain_ok: bool,
    pub last_error: Option<String>,
    pub enrolled: bool,
    pub revoked: bool,
    /// Events of the till held in quarantine and not yet released.
    pub quarantined: u64,
}

/// One store and its tills in the fleet view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreView {
    pub store: String,
    pub tills: Vec<TillView>,
}

/// One observation of a till's sync progress, recorded by an upload at most every
/// [`SAMPLE_SPACING_S`] and kept for [`SAMPLE_KEEP_S`]: the fleet view's trend and drain forecast read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressSample {
    /// When the hub recorded it (unix seconds, hub clock).
    pub at: i64,
    /// The last seq the till reported having.
    pub reported_seq: u64,
    /// The last seq stored at the hub after that upload.
    pub hub_seq: u64,
}

/// A till's recent [`ProgressSample`]s, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TillSamples {
    pub store: String,
    pub till: String,
    pub samples: Vec<ProgressSample>,
}

/// Uploads closer together than this share one progress sample.
pub const SAMPLE_SPACING_S: i64 = 10;

/// Progress samples older than this (relative to the till's newest upload) are pruned.
pub const SAMPLE_KEEP_S: i64 = 3600;

/// One stored journal event in hub order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Position in the hub's global order; strictly increasing, never reused.
    pub hub_pos: i64,
    pub event_id: uuid::Uuid,
    pub store: String,
    pub till: String,
    pub seq: u64,
    pub kind: String,
    pub occurred_at: String,
    /// The canonical JSON of the body.
    pub body: String,
    pub hash: String,
    /// Held in quarantine, not released (see [`QuarantinedEvent`]).
    pub quarantined: bool,
}

/// An event the hub stored in its till's chain but cannot process: the chain and hash verify, the body does not
/// pass this hub's schema or rules (typically an agent newer than the hub). It is held out of compaction's stock
/// base (and of delivery) until [`IngestStore::release_quarantined`] finds it valid, and it blocks nothing behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedEvent {
    pub event: StoredEvent,
    /// Why the hub could not process it.
    pub reason: String,
    pub quarantined_at: i64,
    pub released_at: Option<i64>,
}

/// What [`IngestStore::release_quarantined`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseOutcome {
    Released,
    /// No unreleased quarantined event at that store, till and seq.
    NotQuarantined,
    /// The check still refuses the event; it stays quarantined.
    StillInvalid(String),
}

/// Why an upload batch was refused. Nothing of a refused batch is stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("batch has {n} events, more than the {max} allowed")]
    BatchTooLarge { n: usize, max: usize },
    #[error("seq {seq} does not follow the event before it in the batch")]
    NotConsecutive { seq: u64 },
    #[error("journal seqs start at 1")]
    ZeroSeq,
    #[error("the hub holds events of journal {recorded} but the batch is of journal {sent}")]
    JournalMismatch { recorded: uuid::Uuid, sent: uuid::Uuid },
    #[error("batch starts at seq {first}; the hub expects seq {expected}")]
    SeqGap { first: u64, expected: u64 },
    #[error("seq {seq} differs from the event the hub already holds at that seq")]
    SequenceRegression { seq: u64 },
    #[error("{detail}")]
    ChainBroken { seq: u64, detail: String },
    #[error("seq {seq}: event_id {event_id} is already stored at seq {stored_seq}")]
    DuplicateEventId { seq: u64, event_id: uuid::Uuid, stored_seq: u64 },
    #[error("till is not known to the hub")]
    UnknownTill,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl IngestError {
    /// The stable machine-readable code of this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::BatchTooLarge { .. } => "batch_too_large",
            IngestError::NotConsecutive { .. } => "not_consecutive",
            IngestError::ZeroSeq => "invalid_seq",
            IngestError::JournalMismatch { .. } => "journal_mismatch",
            IngestError::SeqGap { .. } => "seq_gap",
            IngestError::SequenceRegression { .. } => "sequence_regression",
            IngestError::ChainBroken { .. } => "chain_broken",
            IngestError::DuplicateEventId { .. } => "duplicate_event_id",
            IngestError::UnknownTill => "unknown_till",
            IngestError::Storage(_) => "storage_unavailable",
        }
    }

    /// Whether this refusal means the till's chain cannot be continued as sent (shown as `chain_ok = false`).
    pub fn breaks_chain(&self) -> bool {
        matches!(
            self,
            IngestError::SequenceRegression { .. }
                | IngestError::ChainBroken { .. }
                | IngestError::JournalMismatch { .. }
                | IngestError::DuplicateEventId { .. }
        )
    }
}

/// See [`super::Storage`] for the contract every method keeps (one transaction, blocking).
pub trait IngestStore: Send + Sync + 'static {
    /// Ingests one upload batch of a till (each event stored once, in chain order; see the module note of
    /// [`crate::storage`]) and records the till's health.
    fn append_batch(&self, till: &TillId, batch: &IngestBatch, now: i64) -> Result<Ingested, IngestError>;

    /// Where the hub stands for a till.
    fn till_state(&self, till: &TillId) -> Result<Option<ChainHead>, StorageError>;

    /// The fleet view: every known store and till, sorted by store then till.
    fn list_stores(&self) -> Result<Vec<StoreView>, StorageError>;

    /// Every till's progress samples recorded at or after `since`, by store then till.
    fn progress_samples(&self, since: i64) -> Result<Vec<TillSamples>, StorageError>;

    /// The store's newest `limit` events, newest first (in hub order).
    fn recent_events(&self, store: &str, limit: usize) -> Result<Vec<StoredEvent>, StorageError>;

    /// Events after `after` (a hub position; 0 = from the start) in hub order, optionally of one store.
    fn list_events(&self, store: Option<&str>, after: i64, limit: usize) -> Result<Vec<StoredEvent>, StorageError>;

    /// Quarantined events in hub order, optionally of one store; released ones too when `include_released`.
    fn list_quarantine(
        &self,
        store: Option<&str>,
        include_released: bool,
        after: i64,
        limit: usize,
    ) -> Result<Vec<QuarantinedEvent>, StorageError>;

    /// Releases a quarantined event if `check` now accepts it (after the hub was upgraded to understand it), in
    /// one transaction. A released event counts again for compaction's stock base.
    fn release_quarantined(
        &self,
        till: &TillId,
        seq: u64,
        now: i64,
        check: &dyn Fn(&StoredEvent) -> Result<(), String>,
    ) -> Result<ReleaseOutcome, StorageError>;

    /// Whether any till (enrolled or not) of `store` is known.
    fn store_known(&self, store: &str) -> Result<bool, StorageError>;
}
