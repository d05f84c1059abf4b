//! The store document's side of CRDT sync with the hub, run by the journal writer so that every change it brings
//! is stored in the same kind of SQLite transaction as a journal write.
//!
//! # Sync state
//! One automerge `sync::State` for the hub, kept in memory and persisted (`State::encode`, the shared heads only)
//! in `doc_sync` whenever a received message changed the document. A session starts with [`DocCommand::Begin`],
//! which drops whatever an earlier, interrupted session had in flight, so a lost response never stalls sync.
//!
//! # Epochs (bounded history)
//! The hub compacts a store's document into a new epoch: a fresh document whose `base` counters hold every
//! journaled movement up to a per-till cut (plus head office's own movements), and the prices in force. A till in
//! an older epoch is told so by the hub (409 `epoch_mismatch`), fetches the snapshot and installs it here, in one
//! transaction: the snapshot replaces the document, the old epoch's changes and sync state are deleted, and this
//! till's own journal entries after its cut are re-applied to its counters. The journal is the record, the
//! document only a cache of derived state, so nothing is counted twice or missed, however long the till was
//! offline.

use std::collections::BTreeMap;

use anyhow::Context;
use automerge::sync::{Message, State, SyncDoc};
use automerge::{ActorId, Automerge};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use storesync_shared::{EventKind, crdt};
use tokio::sync::oneshot;

use super::append::AppendError;
use super::state::DocState;

/// The largest epoch snapshot or sync message this agent loads.
pub(crate) const MAX_DOC_BYTES: usize = 64 * 1024 * 1024;

pub(crate) enum DocCommand {
    Begin { reply: oneshot::Sender<Result<(), AppendError>> },
    Generate { reply: oneshot::Sender<Result<Option<Vec<u8>>, AppendError>> },
    Receive { message: Vec<u8>, reply: oneshot::Sender<Result<(), AppendError>> },
    InstallEpoch { epoch: u64, cut: u64, doc: Vec<u8>, reply: oneshot::Sender<Result<(), AppendError>> },
}

impl DocCommand {
    /// Answers the command with `e` without running it.
    pub(super) fn fail(self, e: AppendError) {
        // A caller that went away no longer needs the answer.
        match self {
            DocCommand::Begin { reply }
            | DocCommand::Receive { reply, .. }
            | DocCommand::InstallEpoch { reply, .. } => drop(reply.send(Err(e))),
            DocCommand::Generate { reply } => drop(reply.send(Err(e))),
        }
    }
}

fn db_err(e: rusqlite::Error) -> AppendError {
    AppendError::Unavailable(format!("journal write failed: {e}"))
}

/// The persisted sync state for the hub, or a fresh one.
pub(super) fn load_sync_state(conn: &Connection) -> anyhow::Result<State> {
    let bytes: Option<Vec<u8>> =
        conn.query_row("SELECT state FROM doc_sync WHERE peer = 'hub'", [], |r| r.get(0)).optional()?;
    Ok(match bytes {
        Some(b) => State::decode(&b).unwrap_or_else(|_| State::new()),
        None => State::new(),
    })
}

/// The epoch the document is in.
pub(super) fn load_epoch(conn: &Connection) -> anyhow::Result<u64> {
    let v: Option<String> =
        conn.query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| r.get(0)).optional()?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Loads the store document: the snapshot (or the genesis document) plus every incremental change after it.
pub(super) fn load_doc(conn: &Connection) -> anyhow::Result<(Automerge, i64)> {
    let snapshot: Option<Vec<u8>> =
        conn.query_row("SELECT bytes FROM doc_snapshot WHERE id = 1", [], |r| r.get(0)).optional()?;
    // One `load` of the snapshot followed by every change chunk: automerge reads concatenated chunks in one pass,
    // which is far cheaper than applying thousands of small chunks one by one.
    let mut all = snapshot.unwrap_or_else(|| crdt::genesis().save());
    let mut stmt = conn.prepare("SELECT bytes FROM doc_changes ORDER BY id")?;
    let mut rows = stmt.query([])?;
    let mut n = 0;
    while let Some(row) = rows.next()? {
        let bytes: Vec<u8> = row.get(0)?;
        all.extend_from_slice(&bytes);
        n += 1;
    }
    let mut doc = Automerge::load(&all).context("loading the store document")?;
    doc.set_actor(ActorId::random());
    Ok((doc, n))
}

/// The last journal seq the stored document holds. Journals written before `doc_through` existed kept the document
/// in step with every commit, so for them it is the last seq.
pub(super) fn doc_through(conn: &Connection, last_seq: u64) -> rusqlite::Result<u64> {
    let v: Option<String> =
        conn.query_row("SELECT value FROM meta WHERE key = 'doc_through'", [], |r| r.get(0)).optional()?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(last_seq))
}

pub(super) fn set_doc_through(tx: &Connection, seq: u64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('doc_through', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [seq.to_string()],
    )
    .map(drop)
}

/// The stock effect of every journal entry after `after_seq` ([`crdt::journal_effects`]; a void's target is read
/// from the journal when it lies at or before `after_seq`).
pub(super) fn journal_effects_after(conn: &Connection, after_seq: u64) -> anyhow::Result<BTreeMap<String, i64>> {
    let parse = |kind: String, body: String| -> anyhow::Result<(EventKind, serde_json::Value)> {
        let kind = EventKind::parse(&kind).ok_or_else(|| anyhow::anyhow!("unknown kind {kind}"))?;
        Ok((kind, serde_json::from_str(&body)?))
    };
    let mut stmt = conn.prepare("SELECT event_id, kind, body FROM journal WHERE seq > ?1 ORDER BY seq")?;
    let mut events = Vec::new();
    let mut rows = stmt.query([after_seq])?;
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let (kind, body) = parse(row.get(1)?, row.get(2)?)?;
        events.push((id.parse()?, kind, body));
    }
    let lookup = |id: uuid::Uuid| {
        conn.query_row("SELECT kind, body FROM journal WHERE event_id = ?1", [id.to_string()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .ok()
        .and_then(|(k, b)| parse(k, b).ok())
    };
    Ok(crdt::journal_effects(events, lookup)?)
}

/// What the writer needs to run a document command.
pub(super) struct DocCtx<'a> {
    pub conn: &'a mut Connection,
    pub docs: &'a std::sync::RwLock<DocState>,
    pub sync: &'a mut State,
    pub till: &'a str,
    pub pending_changes: &'a mut i64,
    pub doc_through: &'a mut u64,
}

impl DocCtx<'_> {
    pub(super) fn run(&mut self, cmd: DocCommand) {
        match cmd {
            DocCommand::Begin { reply } => {
                // Keep only what both sides durably share; forget in-flight messages of a broken session.
                *self.sync = State::decode(&self.sync.encode()).unwrap_or_else(|_| State::new());
                let _ = reply.send(Ok(()));
            }
            DocCommand::Generate { reply } => {
                let r = match self.docs.read() {
                    Ok(d) => Ok(d.doc.generate_sync_message(self.sync).map(Message::encode)),
                    Err(_) => Err(AppendError::Unavailable("document lock poisoned".into())),
                };
                let _ = reply.send(r);
            }
            DocCommand::Receive { message, reply } => {
                let _ = reply.send(self.receive(&message));
            }
            DocCommand::InstallEpoch { epoch, cut, doc, reply } => {
                let _ = reply.send(self.install(epoch, cut, &doc));
            }
        }
    }

    fn receive(&mut self, message: &[u8]) -> Result<(), AppendError> {
        if message.len() > MAX_DOC_BYTES {
            return Err(AppendError::Invalid { code: "message_too_large", detail: "sync message too large".into() });
        }
        let msg = storesync_shared::crdt::decode_sync_message(message)
            .map_err(|detail| AppendError::Invalid { code: "bad_sync_message", detail })?;
        let mut docs = self.docs.write().map_err(|_| AppendError::Unavailable("document lock poisoned".into()))?;
        let before = docs.doc.get_heads();
        let saved_sync = self.sync.encode();
        if let Err(e) = docs.doc.receive_sync_message(self.sync, msg) {
            return Err(AppendError::Invalid { code: "bad_sync_message", detail: format!("{e}") });
        }
        let changed = docs.doc.get_heads() != before;
        let bytes = if changed { docs.doc.save_after(&before) } else { Vec::new() };
        let state = self.sync.encode();
        let mut write = || -> rusqlite::Result<()> {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if changed {
                tx.execute("INSERT INTO doc_changes (bytes) VALUES (?1)", [&bytes])?;
            }
            tx.execute("INSERT OR REPLACE INTO doc_sync (peer, state) VALUES ('hub', ?1)", [&state])?;
            tx.commit()
        };
        match write() {
            Ok(()) => {
                if changed {
                    *self.pending_changes += 1;
                }
                docs.commit_heads();
                Ok(())
            }
            Err(e) => {
                // Memory must not run ahead of disk: reload both.
                drop(docs);
                *self.sync = State::decode(&saved_sync).unwrap_or_else(|_| State::new());
                self.reload_doc();
                Err(db_err(e))
            }
        }
    }

    fn reload_doc(&mut self) {
        match load_doc(self.conn) {
            Ok((doc, n)) => {
                *self.pending_changes = n;
                if let Ok(mut d) = self.docs.write() {
                    d.replace(doc, self.till);
                }
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "reloading the store document"),
        }
    }

    fn install(&mut self, epoch: u64, cut: u64, bytes: &[u8]) -> Result<(), AppendError> {
        if bytes.len() > MAX_DOC_BYTES {
            return Err(AppendError::Invalid { code: "document_too_large", detail: "epoch snapshot too large".into() });
        }
        let last_seq: u64 =
            self.conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM journal", [], |r| r.get(0)).map_err(db_err)?;
        if cut > last_seq {
            return Err(AppendError::Conflict {
                code: "hub_ahead",
                detail: format!("the hub's epoch counts this till up to seq {cut}, but the journal ends at {last_seq}"),
            });
        }
        let effects = journal_effects_after(self.conn, cut)
            .map_err(|e| AppendError::Unavailable(format!("reading the journal: {e:#}")))?;
        let message = format!("journal {}..{last_seq} (epoch {epoch})", cut + 1);
        let doc = crdt::rebase_on_snapshot(bytes, ActorId::random(), self.till, &effects, &message)
            .map_err(|e| AppendError::Invalid { code: "bad_snapshot", detail: format!("epoch snapshot: {e}") })?;
        let full = doc.save();
        let mut write = || -> rusqlite::Result<()> {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute("INSERT OR REPLACE INTO doc_snapshot (id, bytes) VALUES (1, ?1)", [&full])?;
            tx.execute("DELETE FROM doc_changes", [])?;
            tx.execute("DELETE FROM doc_sync", [])?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('epoch', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![epoch.to_string()],
            )?;
            set_doc_through(&tx, last_seq)?;
            tx.commit()
        };
        write().map_err(db_err)?;
        *self.sync = State::new();
        *self.pending_changes = 0;
        *self.doc_through = last_seq;
        let mut d = self.docs.write().map_err(|_| AppendError::Unavailable("document lock poisoned".into()))?;
        d.replace(doc, self.till);
        d.unfolded.clear();
        d.epoch = epoch;
        tracing::info!(epoch, cut, "installed the hub's epoch snapshot");
        Ok(())
    }
}
