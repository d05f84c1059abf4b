//! The outbox and its subscriptions: accepted events in delivery order, cursors, leases and dead letters
//! ([`OutboxStore`]).

use super::error::StorageError;
use super::ingest::StoredEvent;

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
    /// Outbox entries after `cursor` that match the filters (only filled by [`OutboxStore::list_subscriptions`] with
    /// `lag`).
    pub lag: u64,
    /// Dead letters not replayed (only filled by [`OutboxStore::list_subscriptions`]).
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

/// See [`super::Storage`] for the contract every method keeps (one transaction, blocking).
pub trait OutboxStore: Send + Sync + 'static {
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
}
