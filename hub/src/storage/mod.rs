//! The hub's storage: one trait per concern, two backends ([`sqlite`], the default, and [`postgres`], which several
//! hub instances can share), one conformance suite both pass.
//!
//! Layout:
//! - The traits, each beside its own types: [`ingest`] (tills' chains, health, events and quarantine:
//!   [`IngestStore`]), [`docs`] (store documents and epochs: [`DocStore`]), [`enrolment`] (codes, credentials and
//!   failed attempts: [`EnrolmentStore`]), [`releases`] (releases and rollouts: [`ReleaseStore`]), [`outbox`]
//!   (the outbox and its subscriptions: [`OutboxStore`]) and [`reservations`] (escrow and reservations:
//!   [`reservations::ReservationStore`], opened on its own). [`error`] holds the error all of them share, [`rules`]
//!   the rules both backends apply outside SQL.
//! - [`Storage`] is every trait but reservations at once, with a blanket impl: the hub holds an
//!   `Arc<dyn Storage>`, and a method called on a `dyn Storage` (or on an `S: Storage`) needs no further import. A
//!   caller holding a concrete backend imports the traits it calls, e.g. `use crate::storage::prelude::*`.
//! - Each backend is a folder with one file per trait, plus its connection handling (`conn.rs`), its schema and
//!   migrations (`schema.rs`) and shared row mapping (`rows.rs`).
//!
//! Design note:
//! - Every storage method is **one transaction** and **blocking**. The HTTP layer calls them from
//!   `tokio::task::spawn_blocking`, never on the async runtime, and no connection lives across an `.await`.
//!   Both backends run the same `conformance` tests, trait by trait; the rules that need no SQL are in [`rules`].
//! - Storage takes and answers its own types: the upload and sync-state wire types are converted at the HTTP
//!   layer, so a change of the wire format does not reach the SQL.
//! - Exactly-once ingest is enforced by the database, not by process-local locks: each event is stored once, in
//!   its till's chain, however often and to however many hub instances the till sends it. The till row is read and
//!   conditionally updated (`... WHERE hub_seq = ?old`) inside one write transaction (`BEGIN IMMEDIATE` on SQLite,
//!   `SELECT ... FOR UPDATE` on PostgreSQL), and events carry the unique keys `(store, till, seq)` and
//!   `(store, till, event_id)`. Several hub instances on one PostgreSQL database therefore cannot interleave two
//!   batches of one till, and a batch sent again is answered with the same acknowledgement.
//! - Secrets are never stored: enrolment codes and till credentials are kept as SHA-256 hex digests.
//! - Time is passed in (`now`, unix seconds) so that callers own the clock and tests can move it.
//! - A refused upload still records the till's health (last seen, backlog, `chain_ok`, `last_error`) in the
//!   same transaction; the refused events themselves are rolled back to a savepoint, so nothing of a refused
//!   batch is ever stored.
//! - Store documents (the stock CRDT, one per store, that the hub and the tills sync): per store an epoch, a
//!   snapshot, the `save_after` chunks written since and a `version` bumped by every write.
//!   [`DocStore::doc_apply`] is the optimistic-concurrency guard: it stores a write only if the store is still at
//!   the epoch and version the caller changed (else [`StorageError::Conflict`]), so hub instances sharing one
//!   database never lose a change; the document bytes themselves are opaque here (automerge lives in
//!   [`crate::docs`]). Head-office movements are recorded in the same transaction as the document chunk holding
//!   their effect.
//! - Epochs bound the document's history: [`DocStore::compact`] computes the cuts (each till's `hub_seq`) and the
//!   base (all head-office movements plus the stock effect of every stored journal event through the cuts,
//!   incrementally from the previous epoch's record) from the journal, never from the document, and swaps the store
//!   to the new epoch in the same transaction, dropping the old epoch's chunks and sync states.
//! - Releases and rollouts (agent self-update): a release is stored as the exact manifest bytes, the signature as
//!   uploaded and the archive bytes, keyed by `(version, target)` and never changed once stored (a second upload
//!   of the same bytes is a no-op, of other bytes a conflict). One rollout per target; starting a new one records
//!   the old one as `superseded` in the rollout history. An update report is recorded, moves the till's
//!   `agent_version`, and counts against the target's rollout (the rules of [`crate::rollout`]) in one
//!   transaction, so an automatic halt at `max_failures` can never be lost between two hub instances.

pub mod docs;
pub mod enrolment;
pub mod error;
pub mod ingest;
pub mod outbox;
pub mod postgres;
pub mod releases;
pub mod reservations;
pub(crate) mod rules;
pub mod sqlite;

pub use docs::{CompactError, CompactionInput, DocLoad, DocMeta, DocStore, DocWrite, EpochRecord, NewMovement};
pub use enrolment::{EnrolmentStore, NewEnrollment, RedeemError};
pub use error::StorageError;
pub use ingest::{
    BatchEvent, ChainHead, IngestBatch, IngestError, IngestStore, Ingested, ProgressSample, QuarantinedEvent,
    ReleaseOutcome, SAMPLE_KEEP_S, SAMPLE_SPACING_S, StoreView, StoredEvent, TillId, TillSamples, TillView,
};
pub use outbox::{DeadLetter, NewSubscription, OutboxEntry, OutboxStore, ReplaySelector, Subscription};
pub use releases::{
    NewRelease, NewRollout, NewUpdateReport, PutRelease, ReleaseInfo, ReleaseStore, ReportEffect, Rollout,
    RolloutError, UpdateCandidate,
};

/// Everything the hub persists but reservations: every per-concern trait at once. Implemented for every type that
/// implements them all, so a backend implements the per-concern traits only.
pub trait Storage:
    IngestStore + DocStore + EnrolmentStore + ReleaseStore + OutboxStore + Send + Sync + 'static
{
}

impl<T> Storage for T where
    T: IngestStore + DocStore + EnrolmentStore + ReleaseStore + OutboxStore + Send + Sync + 'static
{
}

/// The storage traits, for a caller that holds a concrete backend: `use crate::storage::prelude::*;`.
pub mod prelude {
    pub use super::Storage;
    pub use super::docs::DocStore;
    pub use super::enrolment::EnrolmentStore;
    pub use super::ingest::IngestStore;
    pub use super::outbox::OutboxStore;
    pub use super::releases::ReleaseStore;
    pub use super::reservations::ReservationStore;
}

#[cfg(test)]
pub(crate) mod conformance;
