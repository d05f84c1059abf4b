//! The agent's journal: a durable, append-only, hash-chained record of everything the till did, plus the store's
//! automerge document (stock counters and prices), both in one SQLite file.
//!
//! # Constraints
//! - Nothing is acknowledged before its COMMIT has returned, with `journal_mode=WAL` and `synchronous=FULL`, so an
//!   acknowledged event survives a power cut.
//! - The `journal` table is append-only: triggers refuse UPDATE and DELETE in the database itself. Corrections are
//!   new events (voids).
//! - `seq` counts from 1 with no gaps; `hash` chains every entry to the one before (see
//!   [`storesync_shared::canonical`]).
//! - A journal row and the automerge change it causes are written in the same SQLite transaction, so a crash leaves
//!   both or neither.
//!
//! # On-disk layout (`<data-dir>/journal.db`)
//! - `meta(key, value)`: `store_id`, `till_id`, `journal_id`, `schema_version`;
//! - `journal(seq, event_id, kind, occurred_at, recorded_at, body, prev_hash, hash)`, append-only;
//! - `voids(voided_event_id, void_seq)`, append-only: which events were voided, so a second void is refused;
//! - `doc_snapshot(id=1, bytes)` and `doc_changes(id, bytes)`: the automerge document as a full save plus the
//!   incremental changes after it, folded into a new snapshot every [`writer::SNAPSHOT_EVERY`] changes;
//! - `upload_cursor(id=1, acked_seq, acked_hash)`: how far the hub has acknowledged.
//!
//! # Concurrency
//! One writer thread owns the only write connection ([`writer`]). Handlers send it commands over a bounded channel;
//! it applies every command waiting in the channel in one transaction and commits once (group commit), then
//! answers each. Readers use their own read-only connections ([`reader`]) and never block the writer. The document
//! lives in memory behind a lock; readers read it at the heads of the last *committed* change, so nobody sees stock
//! that a failed commit is about to discard.
//!
//! # Recovery
//! At start the document is loaded from the snapshot plus the changes, and the chain head from the last journal
//! row. A failed COMMIT (disk full, I/O error) fails every command of its batch with [`AppendError::Unavailable`]
//! and the writer reloads both from the database, so memory never runs ahead of disk.

mod doc;
mod reader;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use automerge::{Automerge, ChangeHash};
use storesync_shared::EventBody;
use storesync_shared::wire::Receipt;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

pub use reader::{JournalStatus, ReadPool, Verified, VerifyError, journal_page, journal_status, verify_chain};
pub use schema::{Identity, IdentityClaim, open_read_only, valid_id};

/// How many commands may wait for the writer before callers are told to come back later.
pub const QUEUE_BOUND: usize = 4096;

/// The store's document as the writer last committed it.
pub struct DocState {
    pub doc: Automerge,
    /// The CRDT epoch of `doc` (see `doc.rs`).
    pub epoch: u64,
    /// Heads of the last change that is durably in SQLite. Readers read at these heads.
    pub committed_heads: Vec<ChangeHash>,
    /// Keys of this till's own stock counters, so the writer can increment without reading them.
    pub own_keys: std::collections::HashSet<String>,
}

impl DocState {
    /// Replaces the document (after a reload or an epoch switch), recomputing what derives from it.
    pub(crate) fn replace(&mut self, doc: Automerge, till: &str) {
        self.own_keys = storesync_shared::crdt::root_map(&doc, storesync_shared::crdt::STOCK)
            .map(|s| storesync_shared::crdt::writer_keys(&doc, &s, till))
            .unwrap_or_default();
        self.committed_heads = doc.get_heads();
        self.doc = doc;
    }
}

/// The outcome of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Newly journaled.
    Created(Receipt),
    /// The same `event_id` with the same body was journaled before; nothing was written.
    Existing(Receipt),
}

/// Why an append was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The request conflicts with what is journaled (HTTP 409).
    #[error("{code}: {detail}")]
    Conflict { code: &'static str, detail: String },
    /// The request refers to something that does not exist (HTTP 422).
    #[error("{code}: {detail}")]
    Invalid { code: &'static str, detail: String },
    /// The journal cannot be written now (disk full, read-only, I/O error, overload); nothing was written (HTTP 503).
    #[error("journal unavailable: {0}")]
    Unavailable(String),
}

pub(crate) enum Command {
    Append { event_id: Option<Uuid>, body: EventBody, reply: oneshot::Sender<Result<AppendOutcome, AppendError>> },
    MarkSynced { through: u64, hash: String, reply: oneshot::Sender<Result<(), AppendError>> },
    Doc(doc::DocCommand),
}

/// Handle to an open journal. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Command>,
    docs: Arc<RwLock<DocState>>,
    reads: Arc<ReadPool>,
    identity: Arc<Identity>,
    path: PathBuf,
}

/// The file name of the journal database inside the data dir.
pub const DB_FILE: &str = "journal.db";

impl Journal {
    /// Opens (creating if needed) the journal in `data_dir` for the given identity, and starts its writer thread.
    /// Returns the handle and the writer thread, which ends once every handle is dropped and its queue is drained.
    pub fn open(
        data_dir: &Path,
        identity: &schema::IdentityClaim,
    ) -> anyhow::Result<(Journal, std::thread::JoinHandle<()>)> {
        let path = data_dir.join(DB_FILE);
        let (conn, identity) = schema::open_writer(&path, identity)?;
        let identity = Arc::new(identity);
        let (w, docs) = writer::Writer::new(conn, identity.clone())?;
        let (tx, rx) = mpsc::channel(QUEUE_BOUND);
        let handle = std::thread::Builder::new().name("journal-writer".into()).spawn(move || w.run(rx))?;
        let reads = Arc::new(ReadPool::new(path.clone(), docs.clone()));
        Ok((Journal { tx, docs, reads, identity, path }, handle))
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn reads(&self) -> &Arc<ReadPool> {
        &self.reads
    }

    pub fn docs(&self) -> &Arc<RwLock<DocState>> {
        &self.docs
    }

    /// How many commands are waiting for the writer.
    pub fn queue_depth(&self) -> usize {
        QUEUE_BOUND - self.tx.capacity()
    }

    async fn send<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, AppendError> {
        let (reply, rx) = oneshot::channel();
        let permit = match self.tx.try_reserve() {
            Ok(p) => p,
            Err(mpsc::error::TrySendError::Full(())) => {
                tracing::warn!(queue_bound = QUEUE_BOUND, "journal writer queue is full; callers wait");
                match tokio::time::timeout(std::time::Duration::from_secs(5), self.tx.reserve()).await {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => {
                        return Err(AppendError::Unavailable("journal writer has stopped".into()));
                    }
                    Err(_) => {
                        return Err(AppendError::Unavailable("journal writer is overloaded".into()));
                    }
                }
            }
            Err(mpsc::error::TrySendError::Closed(())) => {
                return Err(AppendError::Unavailable("journal writer has stopped".into()));
            }
        };
        permit.send(make(reply));
        rx.await.map_err(|_| AppendError::Unavailable("journal writer stopped before answering".into()))
    }

    /// Journals one event. Answers only after its COMMIT has returned.
    pub async fn append(&self, event_id: Option<Uuid>, body: EventBody) -> Result<AppendOutcome, AppendError> {
        self.send(|reply| Command::Append { event_id, body, reply }).await?
    }

    /// Starts a document sync session with the hub: forgets what was in flight in an earlier, broken session.
    pub async fn doc_sync_begin(&self) -> Result<(), AppendError> {
        self.send(|reply| Command::Doc(doc::DocCommand::Begin { reply })).await?
    }

    /// The next automerge sync message for the hub, if there is anything to say.
    pub async fn doc_sync_generate(&self) -> Result<Option<Vec<u8>>, AppendError> {
        self.send(|reply| Command::Doc(doc::DocCommand::Generate { reply })).await?
    }

    /// Applies a sync message from the hub; the changes it brings are stored before this returns.
    pub async fn doc_sync_receive(&self, message: Vec<u8>) -> Result<(), AppendError> {
        self.send(|reply| Command::Doc(doc::DocCommand::Receive { message, reply })).await?
    }

    /// Switches to the hub's epoch snapshot, re-applying this till's journal entries after `cut` on top of it.
    pub async fn install_epoch(&self, epoch: u64, cut: u64, doc: Vec<u8>) -> Result<(), AppendError> {
        self.send(|reply| Command::Doc(doc::DocCommand::InstallEpoch { epoch, cut, doc, reply })).await?
    }

    /// The CRDT epoch this till's document is in.
    pub fn epoch(&self) -> u64 {
        self.docs.read().map(|d| d.epoch).unwrap_or(0)
    }

    /// Records that the hub has acknowledged every entry up to `through` (whose hash is `hash`).
    pub async fn mark_synced(&self, through: u64, hash: String) -> Result<(), AppendError> {
        self.send(|reply| Command::MarkSynced { through, hash, reply }).await?
    }
}
