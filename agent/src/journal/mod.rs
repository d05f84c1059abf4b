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
//! - The journal is the record; the automerge document is a cache derived from it. The document records, in
//!   `meta.doc_through`, the last journal seq whose stock movement it holds, and that value is written in the same
//!   SQLite transaction as the document change that moves it. Movements after it are re-derived from the journal
//!   at start, so a crash can neither lose nor double-count one. The document is always brought up to the journal
//!   before anything of it leaves the till (see [`writer`]).
//!
//! # On-disk layout (`<data-dir>/journal.db`)
//! - `meta(key, value)`: `store_id`, `till_id`, `journal_id`, `schema_version`;
//! - `journal(seq, event_id, kind, occurred_at, recorded_at, body, prev_hash, hash)`, append-only;
//! - `voids(voided_event_id, void_seq)`, append-only: which events were voided, so a second void is refused;
//! - `doc_snapshot(id=1, bytes)` and `doc_changes(id, bytes)`: the automerge document as a full save plus the
//!   incremental changes after it, folded into a new snapshot every [`writer::SNAPSHOT_EVERY`] changes;
//! - `meta.doc_through`: the journal seq up to which the document holds this till's stock movements;
//! - `upload_cursor(id=1, acked_seq, acked_hash)`: how far the hub has acknowledged.
//!
//! # Concurrency
//! One writer thread owns the only write connection ([`writer`]). Handlers send it commands over a bounded channel;
//! it applies every command waiting in the channel in one transaction and commits once (group commit), then
//! answers each. Readers use their own read-only connections ([`reader`]) and never block the writer; they get
//! typed answers ([`Entry`], [`JournalStatus`], ...), never a connection, so no SQL lives outside this module. The
//! document lives in memory behind a lock; readers read it at the heads of the last *committed* change plus the
//! committed movements not yet folded into it, so nobody sees stock that a failed commit is about to discard. WAL
//! checkpoints run on their own thread and connection ([`checkpoint`]), never inside a group's COMMIT.
//!
//! # Recovery
//! At start the document is loaded from the snapshot plus the changes, the chain head from the last journal
//! row, and the stock movements of the journal entries after `doc_through` are re-derived from the journal. A
//! failed COMMIT (disk full, I/O error) fails every command of its batch with [`AppendError::Unavailable`] and the
//! writer reloads both from the database, so memory never runs ahead of disk.

mod append;
mod checkpoint;
mod command;
mod doc;
mod entry;
mod queries;
mod reader;
mod schema;
mod state;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use storesync_shared::EventBody;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

pub use append::{AppendError, AppendOutcome, Appended};
pub use entry::Entry;
pub use queries::{JournalStatus, UploadBacklog, Verified, VerifyError};
pub use reader::{JournalFile, ReadPool, journal_page, journal_status, open_read_only, verify_chain};
pub use schema::{Identity, IdentityClaim, valid_id};
pub use state::{DocState, WriterStats};

use command::Command;

/// How many commands may wait for the writer before callers are told to come back later.
pub const QUEUE_BOUND: usize = 4096;

/// Handle to an open journal. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Command>,
    docs: Arc<RwLock<DocState>>,
    reads: Arc<ReadPool>,
    identity: Arc<Identity>,
    path: PathBuf,
    stats: Arc<WriterStats>,
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
        let stats = Arc::new(WriterStats::default());
        let (w, docs) = writer::Writer::new(conn, identity.clone(), stats.clone())?;
        let (tx, rx) = mpsc::channel(QUEUE_BOUND);
        let handle = std::thread::Builder::new().name("journal-writer".into()).spawn(move || {
            // Crash-only: without its writer the agent can only refuse sales, so a panic in it ends the process
            // (exit 70), and the service manager starts a fresh agent, which reloads everything from disk. What was
            // acknowledged is committed; nothing in memory needs saving.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.run(rx))).is_err() {
                tracing::error!("the journal writer panicked; exiting so the service manager restarts the agent");
                std::process::exit(70);
            }
        })?;
        let reads = Arc::new(ReadPool::new(path.clone(), docs.clone()));
        Ok((Journal { tx, docs, reads, identity, path, stats }, handle))
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

    /// What the writer has done since the journal was opened.
    pub fn writer_stats(&self) -> &WriterStats {
        &self.stats
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
        let canonical = String::from_utf8(body.canonical())
            .map_err(|_| AppendError::Invalid { code: "invalid_body", detail: "body is not UTF-8".into() })?;
        self.send(|reply| Command::Append { event_id, body, canonical, reply }).await?
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

    /// Makes the writer commit what it was sent before this and stop (see [`Command::Close`]); later writes get
    /// [`AppendError::Unavailable`].
    pub async fn close(&self) {
        let _ = self.tx.send(Command::Close).await;
    }

    /// Records that the hub has acknowledged every entry up to `through` (whose hash is `hash`).
    pub async fn mark_synced(&self, through: u64, hash: String) -> Result<(), AppendError> {
        self.send(|reply| Command::MarkSynced { through, hash, reply }).await?
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use storesync_shared::event::{BodyType, parse_request_value};

    use super::*;

    fn open(dir: &Path) -> (Journal, std::thread::JoinHandle<()>) {
        let claim = IdentityClaim { store_id: Some("s1".into()), till_id: Some("t1".into()) };
        Journal::open(dir, &claim).expect("open journal")
    }

    fn close((journal, writer): (Journal, std::thread::JoinHandle<()>)) {
        drop(journal);
        writer.join().expect("writer thread");
    }

    fn sale(sku: &str, qty: i64) -> (Option<Uuid>, EventBody) {
        let v = json!({
            "event_id": Uuid::new_v4(), "occurred_at": "2026-11-26T14:05:00+01:00", "currency": "EUR",
            "lines": [{"sku": sku, "qty": qty, "unit_price_minor": 100, "discount_minor": 0}],
            "payments": [{"method": "card", "amount_minor": qty * 100}]
        });
        parse_request_value(BodyType::Sale, v).expect("valid sale")
    }

    fn void(target: Uuid) -> (Option<Uuid>, EventBody) {
        let v = json!({"occurred_at": "2026-11-26T14:06:00+01:00", "voided_event_id": target, "reason": "mistake"});
        parse_request_value(BodyType::Void, v).expect("valid void")
    }

    /// (doc_changes rows, doc_through) as stored.
    fn stored_doc(dir: &Path) -> (i64, Option<String>) {
        let conn = rusqlite::Connection::open(dir.join(DB_FILE)).expect("open db");
        let n = conn.query_row("SELECT count(*) FROM doc_changes", [], |r| r.get(0)).expect("count");
        let through = conn.query_row("SELECT value FROM meta WHERE key = 'doc_through'", [], |r| r.get(0)).ok();
        (n, through)
    }

    /// A close commits what came before it and refuses what comes after, while handles still live.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_commits_what_came_before_and_refuses_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (j, writer) = open(dir.path());
        let (a, b) = (sale("A", 1), sale("B", 1));
        let (first, second) = tokio::join!(j.append(a.0, a.1), j.append(b.0, b.1));
        first.expect("before the close");
        second.expect("before the close");
        j.close().await;
        let (id, body) = sale("C", 1);
        assert!(matches!(j.append(id, body).await, Err(AppendError::Unavailable(_))), "refused after the close");
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .expect("join")
            .expect("writer ends with handles alive");
        drop(j);
        let reopened = open(dir.path());
        let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).expect("open db");
        let n: i64 = conn.query_row("SELECT count(*) FROM journal", [], |r| r.get(0)).expect("count");
        assert_eq!(n, 2);
        close(reopened);
    }

    /// Stock movements reach readers at once, survive a restart before they are folded into the document, are
    /// folded exactly once before anything is sent to the hub, and are never counted twice across restarts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stock_is_right_before_and_after_folding_and_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = open(dir.path());
        let (id, body) = sale("A", 2);
        j.0.append(id, body).await.expect("sale 1");
        let (id2, body) = sale("A", 3);
        j.0.append(id2, body).await.expect("sale 2");
        let (id, body) = sale("B", 1);
        j.0.append(id, body).await.expect("sale 3");
        assert_eq!((j.0.reads().on_hand("A"), j.0.reads().on_hand("B")), (-5, -1));
        assert_eq!(j.0.writer_stats().get().1, 3);
        close(j);
        // Nothing folded yet: the document holds none of it, the journal all of it.
        assert_eq!(stored_doc(dir.path()), (0, Some("0".into())));

        let j = open(dir.path());
        assert_eq!((j.0.reads().on_hand("A"), j.0.reads().on_hand("B")), (-5, -1));
        // A sync message folds first.
        j.0.doc_sync_begin().await.expect("begin");
        j.0.doc_sync_generate().await.expect("generate");
        assert_eq!((j.0.reads().on_hand("A"), j.0.reads().on_hand("B")), (-5, -1));
        let (id, body) = void(id2.expect("client id"));
        j.0.append(id, body).await.expect("void of sale 2");
        assert_eq!(j.0.reads().on_hand("A"), -2);
        close(j);
        assert_eq!(stored_doc(dir.path()), (1, Some("3".into())));

        let j = open(dir.path());
        assert_eq!((j.0.reads().on_hand("A"), j.0.reads().on_hand("B")), (-2, -1));
        j.0.doc_sync_generate().await.expect("generate");
        close(j);
        assert_eq!(stored_doc(dir.path()), (2, Some("4".into())));
        let j = open(dir.path());
        assert_eq!((j.0.reads().on_hand("A"), j.0.reads().on_hand("B")), (-2, -1));
        // Nothing new: a sync message folds nothing.
        j.0.doc_sync_generate().await.expect("generate");
        close(j);
        assert_eq!(stored_doc(dir.path()), (2, Some("4".into())));
    }

    /// A journal written before `doc_through` existed kept its document in step with every commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_journal_without_doc_through_is_read_as_folded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = open(dir.path());
        let (id, body) = sale("A", 2);
        j.0.append(id, body).await.expect("sale");
        j.0.doc_sync_generate().await.expect("generate");
        close(j);
        let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).expect("open db");
        conn.execute("DELETE FROM meta WHERE key = 'doc_through'", []).expect("forget doc_through");
        drop(conn);
        let j = open(dir.path());
        assert_eq!(j.0.reads().on_hand("A"), -2);
        close(j);
    }
}
