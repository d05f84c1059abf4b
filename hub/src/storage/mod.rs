//! The hub's storage: one trait, two backends ([`sqlite`], the default, and [`postgres`], which several hub
//! instances can share), one conformance suite both pass.
//!
//! Design note:
//! - Every [`Storage`] method is **one transaction** and **blocking**. The HTTP layer calls them from
//!   `tokio::task::spawn_blocking`, never on the async runtime, and no connection lives across an `.await`.
//!   Both backends run the same `conformance` tests; the rules that need no SQL (batch shape, the health an upload
//!   records, rollout transitions and failure counting, release order) are functions at the end of this module
//!   that both call.
//! - Exactly-once ingest (DESIGN-NOTES §2) is enforced by the database, not by process-local locks: the till
//!   row is read and conditionally updated (`... WHERE hub_seq = ?old`) inside one write transaction
//!   (`BEGIN IMMEDIATE` on SQLite, `SELECT ... FOR UPDATE` on PostgreSQL), and events carry the unique keys
//!   `(store, till, seq)` and `(store, till, event_id)`. Several hub instances on one PostgreSQL database
//!   therefore cannot interleave two batches of one till.
//! - Secrets are never stored: enrolment codes and till credentials are kept as SHA-256 hex digests.
//! - Time is passed in (`now`, unix seconds) so that callers own the clock and tests can move it.
//! - A refused upload still records the till's health (last seen, backlog, `chain_ok`, `last_error`) in the
//!   same transaction; the refused events themselves are rolled back to a savepoint, so nothing of a refused
//!   batch is ever stored.
//! - Store documents (DESIGN-NOTES §3–§5): per store an epoch, a snapshot, the `save_after` chunks written since
//!   and a `version` bumped by every write. [`Storage::doc_apply`] is the optimistic-concurrency guard: it stores a
//!   write only if the store is still at the epoch and version the caller changed (else
//!   [`StorageError::Conflict`]), so hub instances sharing one database never lose a change; the document bytes
//!   themselves are opaque here (automerge lives in [`crate::docs`]). Head-office movements are recorded in the same
//!   transaction as the document chunk holding their effect.
//! - Epochs: [`Storage::compact`] computes the cuts (each till's `hub_seq`) and the base (all head-office movements
//!   plus the stock effect of every stored journal event through the cuts, incrementally from the previous epoch's
//!   record) from the journal, never from the document, and swaps the store to the new epoch in the same
//!   transaction, dropping the old epoch's chunks and sync states.
//! - Releases and rollouts (agent self-update): a release is stored as the exact manifest bytes, the signature as
//!   uploaded and the archive bytes, keyed by `(version, target)` and never changed once stored (a second upload
//!   of the same bytes is a no-op, of other bytes a conflict). One rollout per target; starting a new one records
//!   the old one as `superseded` in the rollout history. An update report is recorded, moves the till's
//!   `agent_version`, and counts against the target's rollout (the rules of [`crate::rollout`]) in one
//!   transaction, so an automatic halt at `max_failures` can never be lost between two hub instances.

pub mod postgres;
pub mod reservations;
pub mod sqlite;

use std::collections::BTreeMap;

use storesync_shared::release::UpdateOutcome;
use storesync_shared::wire::{MAX_BATCH_EVENTS, TillState, UploadAck, UploadRequest};

/// A till as named by its credential.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TillId {
    pub store: String,
    pub till: String,
}

/// A one-time enrolment code to be stored (by hash only).
#[derive(Debug, Clone)]
pub struct NewEnrollment {
    pub code_hash: String,
    pub till: TillId,
    pub created_at: i64,
    pub expires_at: i64,
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
/// base (and of delivery) until [`Storage::release_quarantined`] finds it valid, and it blocks nothing behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedEvent {
    pub event: StoredEvent,
    /// Why the hub could not process it.
    pub reason: String,
    pub quarantined_at: i64,
    pub released_at: Option<i64>,
}

/// What [`Storage::release_quarantined`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseOutcome {
    Released,
    /// No unreleased quarantined event at that store, till and seq.
    NotQuarantined,
    /// The check still refuses the event; it stays quarantined.
    StillInvalid(String),
}

/// A failure of the storage backend itself.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database is locked by another writer for longer than the busy timeout: retry later.
    #[error("database is busy")]
    Busy,
    /// Another writer changed the till while this transaction ran: retry.
    #[error("concurrent update of the till, retry")]
    Conflict,
    #[error("storage backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StorageError {
    /// Whether retrying the same call later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Busy | StorageError::Conflict)
    }
}

/// Why an enrolment code was not redeemed.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    #[error("unknown enrolment code")]
    InvalidCode,
    #[error("enrolment code has expired")]
    Expired,
    #[error("enrolment code has already been used")]
    Used,
    #[error(transparent)]
    Storage(#[from] StorageError),
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

/// Where a store's document stands in storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DocMeta {
    /// The current epoch (0 until the first compaction).
    pub epoch: u64,
    /// Bumped by every write of the document; the optimistic-concurrency token of [`Storage::doc_apply`].
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

/// A release as uploaded, to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRelease {
    pub version: String,
    pub target: String,
    /// The exact manifest bytes the publisher signed.
    pub manifest: Vec<u8>,
    /// Base64 of the manifest signature, as uploaded.
    pub signature: Option<String>,
    pub archive: Vec<u8>,
    pub archive_sha256: String,
    pub archive_size: u64,
    pub min_version: String,
    pub expires_at: String,
    pub uploaded_at: i64,
}

/// A stored release, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseInfo {
    pub version: String,
    pub target: String,
    pub min_version: String,
    pub expires_at: String,
    pub archive_sha256: String,
    pub archive_size: u64,
    pub signed: bool,
    pub uploaded_at: i64,
}

/// What [`Storage::put_release`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutRelease {
    Created,
    /// The same manifest, signature and archive were already stored: nothing changed.
    Identical,
    /// Other bytes are stored under this version and target: nothing changed.
    Conflict,
}

/// A target's rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    pub target: String,
    pub version: String,
    pub stage: crate::rollout::Stage,
    pub canary_percent: u8,
    pub max_failures: u32,
    /// Counted rollbacks since the rollout started or last resumed.
    pub failures: u32,
    pub installed: u64,
    pub refused: u64,
    pub halted_reason: Option<String>,
    pub started_at: i64,
    pub updated_at: i64,
}

/// A new rollout of a stored release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRollout {
    pub target: String,
    pub version: String,
    pub canary_percent: u8,
    pub max_failures: u32,
}

/// Why a rollout was not started or changed.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("no release {version} for {target} is stored")]
    UnknownRelease { version: String, target: String },
    #[error("no rollout for {0}")]
    NoRollout(String),
    #[error(transparent)]
    Transition(#[from] crate::rollout::TransitionError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What a till is offered by [`Storage::check_update`]: the active rollout of its target and that release's
/// manifest. Whether this till's store is offered it is [`crate::rollout::offered_ring`]'s call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateCandidate {
    pub rollout: Rollout,
    pub manifest: Vec<u8>,
    pub signature: Option<String>,
}

/// What a till reported about a release, to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUpdateReport {
    pub version: String,
    pub target: String,
    pub outcome: storesync_shared::release::UpdateOutcome,
    pub running_version: String,
    pub reason: Option<String>,
    pub detail: Option<String>,
}

/// What [`Storage::record_update_report`] did to the rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportEffect {
    /// The target's rollout after the report, when the report was about its release.
    pub rollout: Option<Rollout>,
    /// The report counted as a failure.
    pub counted_failure: bool,
    /// This report halted the rollout (failures reached `max_failures`).
    pub halted_now: bool,
}

/// A new outbound subscription (issue #8): where accepted events go, and which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSubscription {
    pub id: String,
    /// `webhook` or `nats`.
    pub kind: String,
    pub url: String,
    /// The HMAC key of the delivery signature.
    pub secret: String,
    /// Event kinds to deliver; empty: every kind.
    pub kinds: Vec<String>,
    /// Stores whose events to deliver; empty: every store.
    pub stores: Vec<String>,
    pub batch_size: u32,
    pub max_attempts: u32,
    /// `nats` only: the JetStream stream the hub makes sure exists (empty for webhooks).
    pub stream: String,
    /// `nats` only: events go to `<subject_prefix>.<kind>.<store>` (empty for webhooks).
    pub subject_prefix: String,
}

/// A stored subscription and where its delivery stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub spec: NewSubscription,
    /// The outbox position delivered through (0: nothing yet).
    pub cursor: i64,
    pub created_at: i64,
    pub last_error: Option<String>,
    pub last_delivery_at: Option<i64>,
    /// Outbox entries after `cursor` that match the filters (only filled by [`Storage::list_subscriptions`] with
    /// `lag`).
    pub lag: u64,
    /// Dead letters not replayed (only filled by [`Storage::list_subscriptions`]).
    pub dead_letters: u64,
}

impl Subscription {
    /// A subscription just created: nothing delivered yet.
    pub fn new(spec: NewSubscription, created_at: i64) -> Subscription {
        Subscription { spec, cursor: 0, created_at, last_error: None, last_delivery_at: None, lag: 0, dead_letters: 0 }
    }
}

/// One outbox entry: an accepted event, at its position in the hub's delivery order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Position in the outbox; strictly increasing, never reused.
    pub pos: i64,
    pub event: StoredEvent,
    /// When the hub stored the event (unix seconds).
    pub received_at: i64,
}

/// An event a subscription gave up delivering, kept until replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: i64,
    pub subscription: String,
    pub pos: i64,
    pub event_id: uuid::Uuid,
    pub store: String,
    pub till: String,
    pub seq: u64,
    pub kind: String,
    pub attempts: u32,
    pub last_error: String,
    pub dead_at: i64,
    /// When a replay was asked for (null: not asked, or delivered since).
    pub replay_requested_at: Option<i64>,
    pub replayed_at: Option<i64>,
}

/// Which dead letters to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplaySelector {
    Ids(Vec<i64>),
    /// `dead_at` within `[from, to]`.
    DeadBetween(i64, i64),
}

/// Everything the hub persists. See the module note for the contract every backend keeps.
pub trait Storage: Send + Sync + 'static {
    /// Stores a one-time enrolment code and makes the till known (not yet enrolled).
    fn create_enrollment(&self, enrollment: &NewEnrollment) -> Result<(), StorageError>;

    /// Redeems a code: marks it used, revokes the till's previous credentials and stores the new one.
    fn redeem_enrollment(
        &self,
        code_hash: &str,
        credential_hash: &str,
        agent_version: &str,
        now: i64,
    ) -> Result<TillId, RedeemError>;

    /// The till owning an unrevoked credential with this hash.
    fn authenticate(&self, credential_hash: &str) -> Result<Option<TillId>, StorageError>;

    /// Revokes every credential of a till. Returns false when the till is unknown.
    fn revoke(&self, till: &TillId, now: i64) -> Result<bool, StorageError>;

    /// Ingests one upload batch of a till (DESIGN-NOTES §2) and records the till's health.
    fn append_batch(&self, till: &TillId, req: &UploadRequest, now: i64) -> Result<UploadAck, IngestError>;

    /// Where the hub stands for a till.
    fn till_state(&self, till: &TillId) -> Result<Option<TillState>, StorageError>;

    /// The fleet view: every known store and till, sorted by store then till.
    fn list_stores(&self) -> Result<Vec<StoreView>, StorageError>;

    /// Every till's progress samples recorded at or after `since`, by store then till.
    fn progress_samples(&self, since: i64) -> Result<Vec<TillSamples>, StorageError>;

    /// The bytes each store's document takes ([`DocMeta::saved_bytes`]), for stores that have one.
    fn doc_sizes(&self) -> Result<std::collections::BTreeMap<String, u64>, StorageError>;

    /// The store's newest `limit` events, newest first (in hub order).
    fn recent_events(&self, store: &str, limit: usize) -> Result<Vec<StoredEvent>, StorageError>;

    /// Stores a subscription starting at the beginning of the outbox. [`StorageError::Conflict`] if the id is taken.
    fn create_subscription(&self, sub: &NewSubscription, now: i64) -> Result<Subscription, StorageError>;

    /// One subscription (`lag` and `dead_letters` left 0).
    fn subscription(&self, id: &str) -> Result<Option<Subscription>, StorageError>;

    /// Every subscription with its unreplayed dead letters, by id; with `lag`, also its lag (a count over the
    /// outbox after its cursor, so only the admin listing asks for it, not the delivery supervisor's poll).
    fn list_subscriptions(&self, lag: bool) -> Result<Vec<Subscription>, StorageError>;

    /// Deletes a subscription and its dead letters. False when unknown.
    fn delete_subscription(&self, id: &str) -> Result<bool, StorageError>;

    /// Up to `limit` outbox entries after `after` that the subscription's filters select, in outbox order.
    fn outbox_after(&self, sub: &NewSubscription, after: i64, limit: usize) -> Result<Vec<OutboxEntry>, StorageError>;

    /// Records a delivery through outbox position `cursor` (never moves the cursor back) and clears the last error.
    fn delivered(&self, id: &str, cursor: i64, now: i64) -> Result<(), StorageError>;

    /// Records a failed delivery attempt's error.
    fn delivery_failed(&self, id: &str, error: &str, now: i64) -> Result<(), StorageError>;

    /// Gives up on one entry: stores its dead letter and moves the cursor past it, in one transaction.
    fn dead_letter(
        &self,
        id: &str,
        entry: &OutboxEntry,
        attempts: u32,
        error: &str,
        now: i64,
    ) -> Result<(), StorageError>;

    /// The subscription's dead letters, oldest first.
    fn list_dead_letters(&self, id: &str) -> Result<Vec<DeadLetter>, StorageError>;

    /// Asks for the selected dead letters to be delivered again; answers how many.
    fn request_replay(&self, id: &str, which: &ReplaySelector, now: i64) -> Result<u64, StorageError>;

    /// Dead letters with a replay asked for and not yet delivered, with their outbox entries, oldest first.
    fn pending_replays(&self, id: &str, limit: usize) -> Result<Vec<(i64, OutboxEntry)>, StorageError>;

    /// Records that a dead letter was delivered by a replay.
    fn replayed(&self, dead_letter: i64, now: i64) -> Result<(), StorageError>;

    /// Sets the subscription's cursor to `cursor` (backwards too): delivery restarts after it. False when unknown.
    fn rewind_subscription(&self, id: &str, cursor: i64) -> Result<bool, StorageError>;

    /// Takes or renews the subscription's delivery lease for `owner` until `until`, with one conditional update:
    /// only when nobody holds it, `owner` already does, or the holder's lease ran out by `now`. Answers whether
    /// `owner` holds it afterwards (false too when the subscription is unknown). Hub instances sharing a database
    /// thereby deliver each subscription from one instance at a time ([`crate::outbox`]).
    fn lease_subscription(&self, id: &str, owner: &str, now: i64, until: i64) -> Result<bool, StorageError>;

    /// Gives up `owner`'s delivery lease of the subscription (at shutdown), so that another instance takes over
    /// without waiting for it to run out. Nothing happens when `owner` does not hold it.
    fn release_subscription_lease(&self, id: &str, owner: &str) -> Result<(), StorageError>;

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

    /// Counts one failed enrolment attempt from a client.
    fn record_failed_attempt(&self, client: &str, now: i64) -> Result<(), StorageError>;

    /// Failed attempts of a client at or after `since`: their count and the time of the oldest.
    fn failed_attempts_since(&self, client: &str, since: i64) -> Result<(u32, Option<i64>), StorageError>;

    /// Whether any till (enrolled or not) of `store` is known.
    fn store_known(&self, store: &str) -> Result<bool, StorageError>;

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
    /// Stores a release unless `(version, target)` is taken: [`PutRelease::Identical`] when the same bytes are,
    /// [`PutRelease::Conflict`] when others are.
    fn put_release(&self, release: &NewRelease) -> Result<PutRelease, StorageError>;

    /// Every stored release, newest version first (semantic version order), then by target.
    fn list_releases(&self) -> Result<Vec<ReleaseInfo>, StorageError>;

    /// The archive bytes of a release.
    fn release_archive(&self, version: &str, target: &str) -> Result<Option<Vec<u8>>, StorageError>;

    /// Starts a rollout of a stored release for its target, replacing (and recording as `superseded`) the
    /// target's active rollout. It starts at [`crate::rollout::Stage::initial`].
    fn start_rollout(&self, rollout: &NewRollout, now: i64) -> Result<Rollout, RolloutError>;

    /// Applies a transition to the target's rollout ([`crate::rollout::transition`]); `Resume` resets the
    /// failure count.
    fn change_rollout(
        &self,
        target: &str,
        change: &crate::rollout::Transition,
        now: i64,
    ) -> Result<Rollout, RolloutError>;

    /// Every target's rollout, by target.
    fn list_rollouts(&self) -> Result<Vec<Rollout>, StorageError>;

    /// Enrolled, unrevoked tills per last known agent version, by version text.
    fn version_spread(&self) -> Result<Vec<(String, u64)>, StorageError>;

    /// Records the version a till runs (and that it was seen) and answers its target's active rollout with the
    /// release manifest, in one transaction.
    fn check_update(
        &self,
        till: &TillId,
        running_version: &str,
        target: &str,
        now: i64,
    ) -> Result<Option<UpdateCandidate>, StorageError>;

    /// Records a till's update report, sets its `agent_version` to the running version and counts the report
    /// against its target's rollout when it is about that rollout's release (see [`crate::rollout`]); halts the
    /// rollout when failures reach `max_failures`. One transaction.
    fn record_update_report(
        &self,
        till: &TillId,
        report: &NewUpdateReport,
        now: i64,
    ) -> Result<ReportEffect, StorageError>;
}

// ---------------------------------------------------------------------------------------------------------------
// Rules every backend applies in the same way, outside SQL.

/// Checks the shape of a batch that needs no database: size, seqs from 1, consecutive.
pub(crate) fn check_batch_shape(req: &UploadRequest) -> Result<(), IngestError> {
    if req.events.len() > MAX_BATCH_EVENTS {
        return Err(IngestError::BatchTooLarge { n: req.events.len(), max: MAX_BATCH_EVENTS });
    }
    if req.events.first().is_some_and(|e| e.seq == 0) {
        return Err(IngestError::ZeroSeq);
    }
    for pair in req.events.windows(2) {
        if pair[0].seq.checked_add(1) != Some(pair[1].seq) {
            return Err(IngestError::NotConsecutive { seq: pair[1].seq });
        }
    }
    Ok(())
}

/// What an upload's outcome does to its till's health row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HealthChange {
    /// The upload stored events: `last_error` is cleared.
    pub(crate) appended: bool,
    /// The new `chain_ok`, when the outcome says something about the chain.
    pub(crate) chain_ok: Option<bool>,
    /// The new `last_error`, when the upload was refused.
    pub(crate) last_error: Option<String>,
    /// The hub's seq after the upload (for the progress sample).
    pub(crate) hub_seq: u64,
}

/// The health an upload records, from the till's `hub_seq` before it and its outcome.
pub(crate) fn health_change(head_seq: u64, outcome: &Result<UploadAck, IngestError>) -> HealthChange {
    let appended = matches!(outcome, Ok(ack) if ack.acked_through > head_seq);
    let (chain_ok, last_error) = match outcome {
        Ok(_) if appended => (Some(true), None),
        Ok(_) | Err(IngestError::Storage(_)) => (None, None),
        Err(e) if e.breaks_chain() => (Some(false), Some(format!("{}: {e}", e.code()))),
        Err(e) => (None, Some(format!("{}: {e}", e.code()))),
    };
    let hub_seq = match outcome {
        Ok(ack) => ack.acked_through.max(head_seq),
        Err(_) => head_seq,
    };
    HealthChange { appended, chain_ok, last_error, hub_seq }
}

/// Adds per-SKU deltas into a total, dropping SKUs that come to zero.
pub(crate) fn add_into(total: &mut BTreeMap<String, i64>, more: &BTreeMap<String, i64>) {
    for (sku, d) in more {
        *total.entry(sku.clone()).or_insert(0) += d;
    }
    total.retain(|_, d| *d != 0);
}

/// The stored text of an update report's outcome.
pub(crate) fn outcome_text(o: UpdateOutcome) -> &'static str {
    match o {
        UpdateOutcome::Installed => "installed",
        UpdateOutcome::RolledBack => "rolled_back",
        UpdateOutcome::Refused => "refused",
    }
}

/// Semantic version order, newest first; text that is not a version sorts after every version.
pub(crate) fn newest_first(a: &ReleaseInfo, b: &ReleaseInfo) -> std::cmp::Ordering {
    let va = semver::Version::parse(&a.version).ok();
    let vb = semver::Version::parse(&b.version).ok();
    match (va, vb) {
        (Some(x), Some(y)) => y.cmp(&x),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => b.version.cmp(&a.version),
    }
    .then_with(|| a.target.cmp(&b.target))
}

/// Applies an admin transition to a rollout read inside the caller's transaction.
pub(crate) fn apply_transition(
    r: &mut Rollout,
    change: &crate::rollout::Transition,
    now: i64,
) -> Result<(), crate::rollout::TransitionError> {
    use crate::rollout::Transition;
    r.stage = crate::rollout::transition(r.stage, r.canary_percent, change)?;
    match change {
        Transition::Halt(reason) => r.halted_reason = reason.clone().or(r.halted_reason.take()),
        Transition::Resume => {
            r.failures = 0;
            r.halted_reason = None;
        }
        Transition::Promote => {}
    }
    r.updated_at = now;
    Ok(())
}

/// Counts a till's report about the rollout's release against the rollout (read inside the caller's
/// transaction), halting it at `max_failures`.
pub(crate) fn apply_report(r: &mut Rollout, store: &str, outcome: UpdateOutcome, now: i64) -> ReportEffect {
    use crate::rollout::Stage;
    let mut effect = ReportEffect { rollout: None, counted_failure: false, halted_now: false };
    match outcome {
        UpdateOutcome::Installed => r.installed = r.installed.saturating_add(1),
        UpdateOutcome::Refused => r.refused = r.refused.saturating_add(1),
        UpdateOutcome::RolledBack => {
            if crate::rollout::counts_as_failure(r.stage, r.canary_percent, store) {
                effect.counted_failure = true;
                r.failures = r.failures.saturating_add(1);
                if r.failures >= r.max_failures {
                    r.stage = Stage::Halted;
                    r.halted_reason = Some(crate::rollout::auto_halt_reason(r.failures));
                    effect.halted_now = true;
                }
            }
        }
    }
    r.updated_at = now;
    effect.rollout = Some(r.clone());
    effect
}

#[cfg(test)]
pub(crate) mod conformance;
