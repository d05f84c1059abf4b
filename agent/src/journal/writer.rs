//! The single writer: group commit of journal rows and their automerge changes.
//!
//! The loop blocks for one command, drains up to [`MAX_GROUP`] more without waiting, applies them all in one
//! `BEGIN IMMEDIATE` transaction, commits once (one fsync shared by every caller in the group), and only then
//! answers. Commands in a group are independent: one refused command (a conflict, an unknown void target) writes
//! nothing and does not affect the others. Only a failing SQLite statement or COMMIT fails the whole group, and
//! then memory is reloaded from disk.
//!
//! # Folding stock movements into the document
//! A group commit writes journal rows only. Its stock movements go to [`DocState::unfolded`] once the COMMIT has
//! returned, and readers add them to the document. They are folded into the document as ONE automerge change
//! ("journal a..b"), stored together with `meta.doc_through = b` in one transaction:
//! - after [`FOLD_EVERY`] journal entries, once the group that crossed it has been answered;
//! - before every document sync command, so nothing of this till reaches the hub before it is on disk here (a
//!   change sent but not stored would be made again after a crash, and counted twice);
//! - implicitly at an epoch install, which re-derives everything after the hub's cut from the journal.
//!
//! Why not one automerge change per group, in the group's own transaction: automerge 0.12 rebuilds a change's
//! bytes from its columnar op set (`save_after`, `get_change_by_hash`), at a cost that grows with the document, and
//! that cost then sat in front of every sale. See docs/adr/0001-fold-stock-into-the-document.md.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use automerge::Automerge;
use automerge::transaction::CommitOptions;
use rusqlite::{Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior, params};
use storesync_shared::canonical::{ChainInput, event_hash};
use storesync_shared::crdt;
use storesync_shared::event::negate;
use storesync_shared::{EventBody, EventKind};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::append::{AppendError, AppendOutcome, Appended};
use super::command::Command;
use super::doc::{doc_through, load_doc, set_doc_through};
use super::schema::Identity;
use super::state::{DocState, WriterStats};

/// The most commands one group commit takes.
pub(crate) const MAX_GROUP: usize = 512;
/// After this many incremental document changes, the writer folds them into a new snapshot.
pub(crate) const SNAPSHOT_EVERY: i64 = 256;
/// Fold the journal's stock movements into the document after at most this many journal entries. It also bounds
/// what a restart re-derives from the journal.
pub(crate) const FOLD_EVERY: u64 = 4096;

pub(crate) struct Writer {
    _checkpoints: super::checkpoint::Checkpointer,
    conn: Connection,
    st: WriterState,
    sync: automerge::sync::State,
}

/// Everything the writer keeps in memory besides its connection.
struct WriterState {
    identity: Arc<Identity>,
    docs: Arc<RwLock<DocState>>,
    last_seq: u64,
    last_hash: String,
    pending_changes: i64,
    /// The last journal seq whose stock movement the document (as stored) holds.
    doc_through: u64,
    stats: Arc<WriterStats>,
}

/// Is this SQLite failure about the disk or the file rather than our statement?
fn is_unavailable(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::ReadOnly
                | ErrorCode::CannotOpen
                | ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::DatabaseCorrupt
                | ErrorCode::NotADatabase
                | ErrorCode::OutOfMemory
        )
    )
}

fn unavailable(e: &rusqlite::Error) -> AppendError {
    if is_unavailable(e) {
        AppendError::Unavailable(format!("cannot write the journal: {e}"))
    } else {
        AppendError::Unavailable(format!("journal write failed: {e}"))
    }
}

fn chain_head(conn: &Connection, identity: &Identity) -> rusqlite::Result<(u64, String)> {
    let head: Option<(u64, String)> = conn
        .query_row("SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(head.unwrap_or_else(|| (0, storesync_shared::genesis_hash(&identity.store_id, &identity.till_id))))
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default()
}

/// Everything the writer derives from the database: the document, how many changes follow its snapshot, the chain
/// head, `doc_through`, and the movements after it.
struct Loaded {
    doc: Automerge,
    pending_changes: i64,
    last_seq: u64,
    last_hash: String,
    doc_through: u64,
    unfolded: std::collections::HashMap<String, i64>,
}

fn load_all(conn: &Connection, identity: &Identity) -> anyhow::Result<Loaded> {
    let (doc, pending_changes) = load_doc(conn)?;
    let (last_seq, last_hash) = chain_head(conn, identity)?;
    let doc_through = doc_through(conn, last_seq)?;
    let unfolded = super::doc::journal_effects_after(conn, doc_through)?.into_iter().collect();
    Ok(Loaded { doc, pending_changes, last_seq, last_hash, doc_through, unfolded })
}

impl Writer {
    pub(super) fn new(
        mut conn: Connection,
        identity: Arc<Identity>,
        stats: Arc<WriterStats>,
    ) -> anyhow::Result<(Writer, Arc<RwLock<DocState>>)> {
        // Checkpoints run on their own thread, woken by the writer's commits (see `checkpoint`).
        let path = conn.path().map(std::path::PathBuf::from).context("the journal has no file")?;
        let checkpoints = super::checkpoint::Checkpointer::start(&path)?;
        checkpoints.install(&mut conn)?;
        let l = load_all(&conn, &identity)?;
        let epoch = super::doc::load_epoch(&conn)?;
        let sync = super::doc::load_sync_state(&conn)?;
        let mut state = DocState {
            doc: Automerge::new(),
            epoch,
            committed_heads: Vec::new(),
            own_keys: Default::default(),
            unfolded: l.unfolded,
            escrow: Default::default(),
        };
        state.replace(l.doc, &identity.till_id);
        let docs = Arc::new(RwLock::new(state));
        let st = WriterState {
            identity,
            docs: docs.clone(),
            last_seq: l.last_seq,
            last_hash: l.last_hash,
            pending_changes: l.pending_changes,
            doc_through: l.doc_through,
            stats,
        };
        Ok((Writer { _checkpoints: checkpoints, conn, st, sync }, docs))
    }

    /// Runs until every sender is dropped and the queue is drained.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        let mut closing = false;
        while let Some(first) = rx.blocking_recv() {
            closing = matches!(first, Command::Close);
            if !closing {
                group.push(first);
            }
            while group.len() < MAX_GROUP && !closing {
                match rx.try_recv() {
                    Ok(Command::Close) => closing = true,
                    Ok(c) => group.push(c),
                    Err(_) => break,
                }
            }
            // Journal writes go as one group commit; document sync commands run after it, one by one.
            let mut doc_cmds = Vec::new();
            let mut i = 0;
            while i < group.len() {
                if matches!(group[i], Command::Doc(_)) {
                    if let Command::Doc(c) = group.remove(i) {
                        doc_cmds.push(c);
                    }
                } else {
                    i += 1;
                }
            }
            if !group.is_empty() {
                self.process(&mut group);
            }
            if !doc_cmds.is_empty()
                && let Err(e) = self.fold()
            {
                for c in doc_cmds.drain(..) {
                    c.fail(e.clone());
                }
            }
            for c in doc_cmds {
                let mut ctx = super::doc::DocCtx {
                    conn: &mut self.conn,
                    docs: &self.st.docs,
                    sync: &mut self.sync,
                    till: &self.st.identity.till_id,
                    pending_changes: &mut self.st.pending_changes,
                    doc_through: &mut self.st.doc_through,
                };
                ctx.run(c);
            }
            if self.st.last_seq - self.st.doc_through >= FOLD_EVERY
                && let Err(e) = self.fold()
            {
                tracing::error!(error = %e, "folding stock movements into the store document");
            }
            if closing {
                break;
            }
        }
        if closing {
            // Everything sent after the close is refused, never half-done.
            rx.close();
            let stopping = AppendError::Unavailable("the agent is stopping".into());
            while let Some(c) = rx.blocking_recv() {
                match c {
                    Command::Doc(d) => d.fail(stopping.clone()),
                    other => Reply::fail_cmd(other, &stopping),
                }
            }
        }
        tracing::debug!("journal writer stopped");
    }

    /// Folds [`DocState::unfolded`] into the document as one change, stored with the new `doc_through` in one
    /// transaction. On failure memory is reloaded from disk.
    fn fold(&mut self) -> Result<(), AppendError> {
        if self.st.last_seq == self.st.doc_through {
            return Ok(());
        }
        let result = self.st.fold(&mut self.conn);
        if result.is_err()
            && let Err(e) = self.reload()
        {
            tracing::error!(error = %format!("{e:#}"), "reloading the journal state after a failed fold");
        }
        result
    }

    fn process(&mut self, group: &mut Vec<Command>) {
        let mut replies = Vec::with_capacity(group.len());
        let result = self.apply_group(group.drain(..), &mut replies);
        match result {
            Ok((events, deltas)) => {
                self.st.stats.record_group(events);
                if !deltas.is_empty()
                    && let Ok(mut d) = self.st.docs.write()
                {
                    for (sku, delta) in deltas {
                        *d.unfolded.entry(sku).or_insert(0) += delta;
                    }
                }
                for r in replies {
                    r.send();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "journal group commit failed; nothing in it was written");
                // apply_group has rolled last_seq back to what is durably committed.
                for r in replies {
                    r.fail(&e, self.st.last_seq);
                }
                if let Err(e) = self.reload() {
                    tracing::error!(error = %format!("{e:#}"), "reloading the journal state after a failed commit");
                }
            }
        }
    }

    /// Rebuilds the in-memory state from the database after a failed transaction.
    fn reload(&mut self) -> anyhow::Result<()> {
        let l = load_all(&self.conn, &self.st.identity)?;
        self.st.last_seq = l.last_seq;
        self.st.last_hash = l.last_hash;
        self.st.pending_changes = l.pending_changes;
        self.st.doc_through = l.doc_through;
        if let Ok(mut d) = self.st.docs.write() {
            d.replace(l.doc, &self.st.identity.till_id);
            d.unfolded = l.unfolded;
        }
        Ok(())
    }

    /// Applies one group in one transaction. Returns how many events it journaled and their stock movements.
    fn apply_group(
        &mut self,
        group: impl Iterator<Item = Command>,
        replies: &mut Vec<Reply>,
    ) -> Result<(u64, BTreeMap<String, i64>), AppendError> {
        let st = &mut self.st;
        let began = std::time::Instant::now();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| unavailable(&e))?;
        let start_seq = st.last_seq;
        let start_hash = st.last_hash.clone();
        let mut deltas: BTreeMap<String, i64> = BTreeMap::new();
        let mut outcome = Ok(());
        let recorded_at = now_rfc3339();
        for cmd in group {
            if outcome.is_err() {
                replies.push(Reply::pending(cmd));
                continue;
            }
            match cmd {
                Command::Append { event_id, body, canonical, reply } => {
                    let ev = NewEvent { event_id, body: &body, canonical: &canonical, recorded_at: &recorded_at };
                    match append_one(&tx, &st.identity, &mut st.last_seq, &mut st.last_hash, ev) {
                        Ok((res, effect)) => {
                            for (sku, d) in effect {
                                *deltas.entry(sku).or_insert(0) += d;
                            }
                            replies.push(Reply::Append(reply, res));
                        }
                        Err(e) => {
                            outcome = Err(unavailable(&e));
                            replies.push(Reply::Append(reply, Err(unavailable(&e))));
                        }
                    }
                }
                Command::MarkSynced { through, hash, reply } => {
                    let r = tx
                        .prepare_cached(
                            "UPDATE upload_cursor SET acked_seq = ?1, acked_hash = ?2 WHERE id = 1 AND acked_seq < ?1",
                        )
                        .and_then(|mut s| s.execute(params![through, hash]))
                        .map(drop);
                    match r {
                        Ok(()) => replies.push(Reply::Synced(reply, Ok(()))),
                        Err(e) => {
                            outcome = Err(unavailable(&e));
                            replies.push(Reply::Synced(reply, Err(unavailable(&e))));
                        }
                    }
                }
                // Never grouped (see `run`).
                Command::Doc(_) | Command::Close => {}
            }
        }
        if let Err(e) = outcome {
            st.last_seq = start_seq;
            st.last_hash = start_hash;
            return Err(e);
        }
        let events = st.last_seq - start_seq;
        deltas.retain(|_, d| *d != 0);
        let applied = began.elapsed();
        match tx.commit() {
            Ok(()) => {
                // What `bench_journal --writer-log` reads (docs/BENCHMARKS.md).
                tracing::debug!(
                    group = replies.len(),
                    events,
                    apply_us = applied.as_micros() as u64,
                    commit_us = (began.elapsed() - applied).as_micros() as u64,
                    "group commit"
                );
                Ok((events, deltas))
            }
            Err(e) => {
                st.last_seq = start_seq;
                st.last_hash = start_hash;
                Err(unavailable(&e))
            }
        }
    }
}

impl WriterState {
    /// Folds the unfolded movements (journal entries `doc_through+1..=last_seq`) into the document as one
    /// automerge change tagged "journal a..b", and stores it with `doc_through = b` in one SQLite transaction.
    /// Readers see the same stock throughout: they read the old heads plus the unfolded movements until the new
    /// heads and an empty `unfolded` are swapped in together, after the COMMIT.
    fn fold(&mut self, conn: &mut Connection) -> Result<(), AppendError> {
        let poisoned = || AppendError::Unavailable("document lock poisoned".into());
        let through = self.last_seq;
        let (bytes, heads) = {
            let mut docs = self.docs.write().map_err(|_| poisoned())?;
            let deltas: BTreeMap<String, i64> =
                docs.unfolded.iter().filter(|(_, d)| **d != 0).map(|(k, d)| (k.clone(), *d)).collect();
            let before = docs.doc.get_heads();
            if !deltas.is_empty() {
                let stock = crdt::root_map(&docs.doc, crdt::STOCK)
                    .ok_or_else(|| AppendError::Unavailable("store document has no stock map".into()))?;
                let state = &mut *docs;
                let mut am = state.doc.transaction();
                if let Err(e) =
                    crdt::apply_stock_known(&mut am, &stock, &self.identity.till_id, &deltas, &mut state.own_keys)
                {
                    am.rollback();
                    return Err(AppendError::Unavailable(format!("updating stock counters: {e}")));
                }
                let message = format!("journal {}..{through}", self.doc_through + 1);
                am.commit_with(
                    CommitOptions::default()
                        .with_message(message)
                        .with_time(OffsetDateTime::now_utc().unix_timestamp()),
                );
            }
            let heads = docs.doc.get_heads();
            let bytes = (heads != before).then(|| docs.doc.save_after(&before));
            (bytes, heads)
        };
        let snapshot = bytes.is_some() && self.pending_changes + 1 >= SNAPSHOT_EVERY;
        let full = if snapshot { Some(self.docs.read().map_err(|_| poisoned())?.doc.save()) } else { None };
        let mut write = || -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(full) = &full {
                tx.execute("INSERT OR REPLACE INTO doc_snapshot (id, bytes) VALUES (1, ?1)", [full])?;
                tx.execute("DELETE FROM doc_changes", [])?;
            } else if let Some(bytes) = &bytes {
                tx.execute("INSERT INTO doc_changes (bytes) VALUES (?1)", [bytes])?;
            }
            set_doc_through(&tx, through)?;
            tx.commit()
        };
        write().map_err(|e| unavailable(&e))?;
        if full.is_some() {
            self.pending_changes = 0;
        } else if bytes.is_some() {
            self.pending_changes += 1;
        }
        self.doc_through = through;
        let mut docs = self.docs.write().map_err(|_| poisoned())?;
        // The fold changed stock only, so the escrow cache stands.
        docs.committed_heads = heads;
        docs.unfolded.clear();
        Ok(())
    }
}

type AppendResult = Result<AppendOutcome, AppendError>;

/// One event to journal.
struct NewEvent<'a> {
    event_id: Option<Uuid>,
    body: &'a EventBody,
    /// `body`'s canonical JSON.
    canonical: &'a str,
    /// When the group was applied (RFC 3339), the same for every event of a group.
    recorded_at: &'a str,
}

/// Journals one event inside the group's transaction. `Ok((Err(..), _))` is a refusal that wrote nothing;
/// `Err(..)` is a database failure that dooms the whole group.
fn append_one(
    tx: &Transaction<'_>,
    identity: &Identity,
    last_seq: &mut u64,
    last_hash: &mut String,
    ev: NewEvent<'_>,
) -> rusqlite::Result<(AppendResult, BTreeMap<String, i64>)> {
    let NewEvent { event_id, body, canonical, recorded_at } = ev;
    let kind = body.kind();
    if let Some(id) = event_id {
        let existing: Option<(u64, String, String, String)> = tx
            .prepare_cached("SELECT seq, kind, body, hash FROM journal WHERE event_id = ?1")?
            .query_row([id.to_string()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?;
        if let Some((seq, k, b, hash)) = existing {
            let res = if k == kind.as_str() && b == canonical {
                Ok(AppendOutcome::Existing(Appended { event_id: id, seq, hash }))
            } else {
                Err(AppendError::Conflict {
                    code: "event_id_conflict",
                    detail: format!("event_id {id} was journaled at seq {seq} with a different {k} body"),
                })
            };
            return Ok((res, BTreeMap::new()));
        }
    }
    let effect = match body {
        EventBody::Void(v) => match void_effect(tx, v.voided_event_id)? {
            Ok(effect) => effect,
            Err(e) => return Ok((Err(e), BTreeMap::new())),
        },
        other => other.stock_effect(),
    };
    let event_id = event_id.unwrap_or_else(Uuid::new_v4);
    let seq = *last_seq + 1;
    let hash = event_hash(&ChainInput {
        store: &identity.store_id,
        till: &identity.till_id,
        seq,
        event_id,
        kind,
        body: canonical.as_bytes(),
        prev_hash: last_hash,
    });
    tx.prepare_cached(
        "INSERT INTO journal (seq, event_id, kind, occurred_at, recorded_at, body, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        seq,
        event_id.to_string(),
        kind.as_str(),
        body.occurred_at(),
        recorded_at,
        canonical,
        &*last_hash,
        hash
    ])?;
    if let EventBody::Void(v) = body {
        tx.prepare_cached("INSERT INTO voids (voided_event_id, void_seq) VALUES (?1, ?2)")?
            .execute(params![v.voided_event_id.to_string(), seq])?;
    }
    *last_seq = seq;
    *last_hash = hash.clone();
    Ok((Ok(AppendOutcome::Created(Appended { event_id, seq, hash })), effect))
}

/// The stock effect of voiding `target`, or why it cannot be voided.
fn void_effect(tx: &Transaction<'_>, target: Uuid) -> rusqlite::Result<Result<BTreeMap<String, i64>, AppendError>> {
    let row: Option<(String, String)> = tx
        .prepare_cached("SELECT kind, body FROM journal WHERE event_id = ?1")?
        .query_row([target.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((kind, body)) = row else {
        return Ok(Err(AppendError::Invalid {
            code: "voided_event_not_found",
            detail: format!("no event {target} in this till's journal"),
        }));
    };
    let kind = EventKind::parse(&kind).unwrap_or(EventKind::Void);
    if kind == EventKind::Void {
        return Ok(Err(AppendError::Conflict {
            code: "cannot_void_void",
            detail: format!("event {target} is itself a void"),
        }));
    }
    let already: Option<u64> = tx
        .prepare_cached("SELECT void_seq FROM voids WHERE voided_event_id = ?1")?
        .query_row([target.to_string()], |r| r.get(0))
        .optional()?;
    if let Some(seq) = already {
        return Ok(Err(AppendError::Conflict {
            code: "already_voided",
            detail: format!("event {target} was voided at seq {seq}"),
        }));
    }
    let parsed = serde_json::from_str(&body).ok().and_then(|v| EventBody::from_stored(kind, v).ok());
    match parsed {
        Some(b) if b.is_voidable() => Ok(Ok(negate(&b.stock_effect()))),
        Some(_) => Ok(Err(AppendError::Conflict {
            code: "not_voidable",
            detail: format!("event {target} is a {kind}; only sales and returns can be voided"),
        })),
        None => Ok(Err(AppendError::Conflict {
            code: "not_voidable",
            detail: format!("event {target} cannot be read back"),
        })),
    }
}

/// A reply waiting for the group's COMMIT.
enum Reply {
    Append(tokio::sync::oneshot::Sender<AppendResult>, AppendResult),
    Synced(tokio::sync::oneshot::Sender<Result<(), AppendError>>, Result<(), AppendError>),
    /// A command the group never reached because an earlier one failed.
    Skipped(Command),
}

impl Reply {
    fn pending(cmd: Command) -> Reply {
        Reply::Skipped(cmd)
    }

    fn send(self) {
        // A caller that went away (client disconnected) no longer needs its answer; the write stands.
        match self {
            Reply::Append(tx, r) => drop(tx.send(r)),
            Reply::Synced(tx, r) => drop(tx.send(r)),
            Reply::Skipped(cmd) => Reply::fail_cmd(cmd, &AppendError::Unavailable("skipped".into())),
        }
    }

    /// The group failed: nothing of it was written. Refusals stay true (they wrote nothing); writes, and repeats of
    /// writes made earlier in this same group, are answered with the group's error (unavailable).
    fn fail(self, e: &AppendError, committed_through: u64) {
        match self {
            Reply::Append(tx, r) => {
                let r = match r {
                    Ok(AppendOutcome::Created(_)) => Err(e.clone()),
                    Ok(AppendOutcome::Existing(rc)) if rc.seq > committed_through => Err(e.clone()),
                    other => other,
                };
                drop(tx.send(r));
            }
            Reply::Synced(tx, _) => drop(tx.send(Err(e.clone()))),
            Reply::Skipped(cmd) => Reply::fail_cmd(cmd, e),
        }
    }

    fn fail_cmd(cmd: Command, e: &AppendError) {
        match cmd {
            Command::Append { reply, .. } => drop(reply.send(Err(e.clone()))),
            Command::MarkSynced { reply, .. } => drop(reply.send(Err(e.clone()))),
            // Document commands and closes never enter a group (see `run`); dropping one answers its caller with
            // an error.
            Command::Doc(_) | Command::Close => {}
        }
    }
}
