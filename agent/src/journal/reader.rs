//! Read-only access to the journal: pages of events, status, the chain check, and stock and prices read from the
//! document at its last committed heads. Every function here is blocking; async callers use `spawn_blocking`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;
use storesync_shared::EventKind;
use storesync_shared::canonical::ChainError;
use storesync_shared::crdt::{self, PriceView};
use storesync_shared::wire::JournalEvent;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::DocState;
use super::schema::{Identity, read_identity};

/// A small pool of read-only connections.
pub struct ReadPool {
    path: PathBuf,
    conns: Mutex<Vec<Connection>>,
    docs: Arc<RwLock<DocState>>,
}

impl ReadPool {
    pub(super) fn new(path: PathBuf, docs: Arc<RwLock<DocState>>) -> ReadPool {
        ReadPool { path, conns: Mutex::new(Vec::new()), docs }
    }

    /// Runs `f` with a pooled read-only connection. Blocking.
    pub fn with<R>(&self, f: impl FnOnce(&Connection) -> anyhow::Result<R>) -> anyhow::Result<R> {
        let pooled = self.conns.lock().ok().and_then(|mut c| c.pop());
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .with_context(|| format!("opening {} read-only", self.path.display()))?;
                c.busy_timeout(std::time::Duration::from_secs(5))?;
                c
            }
        };
        let out = f(&conn);
        if let Ok(mut c) = self.conns.lock()
            && c.len() < 8
        {
            c.push(conn);
        }
        out
    }

    /// Stock on hand of `sku` as last committed: the document plus this till's movements not yet folded into it.
    pub fn on_hand(&self, sku: &str) -> i64 {
        self.docs.read().map_or(0, |d| d.on_hand(sku))
    }

    /// The price of `sku` in force now, and the next scheduled change.
    pub fn price(&self, sku: &str, now: OffsetDateTime) -> PriceView {
        let Ok(d) = self.docs.read() else {
            return PriceView::default();
        };
        let Some(prices) = crdt::root_map(&d.doc, crdt::PRICES) else {
            return PriceView::default();
        };
        crdt::price_at(&d.doc, &prices, sku, &crdt::normalize_instant(now), Some(&d.committed_heads))
    }
}

/// One page of the journal, after `after_seq`, in seq order.
pub fn journal_page(conn: &Connection, after_seq: u64, limit: usize) -> anyhow::Result<Vec<JournalEvent>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, event_id, kind, occurred_at, body, prev_hash, hash FROM journal WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after_seq, limit as i64], |r| {
        Ok((
            r.get::<_, u64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, String>(6)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, event_id, kind, occurred_at, body, prev_hash, hash) = row?;
        out.push(JournalEvent {
            seq,
            event_id: event_id.parse().with_context(|| format!("seq {seq}: event_id"))?,
            kind: EventKind::parse(&kind).with_context(|| format!("seq {seq}: unknown kind {kind:?}"))?,
            occurred_at,
            body: serde_json::from_str(&body).with_context(|| format!("seq {seq}: body"))?,
            prev_hash,
            hash,
        });
    }
    Ok(out)
}

/// What `GET /v1/status` and `storesync-agent status` report about the journal itself.
#[derive(Debug, Clone, Serialize)]
pub struct JournalStatus {
    pub store_id: String,
    pub till_id: String,
    pub journal_id: String,
    pub journal_len: u64,
    pub last_seq: u64,
    pub acked_seq: u64,
    pub unsynced: u64,
    pub oldest_unsynced_age_s: u64,
}

/// How far the hub has acknowledged (`acked_seq`), and the age in seconds of the oldest entry after that.
pub fn upload_backlog(conn: &Connection) -> anyhow::Result<(u64, u64)> {
    let acked: u64 =
        conn.query_row("SELECT acked_seq FROM upload_cursor WHERE id = 1", [], |r| r.get(0)).optional()?.unwrap_or(0);
    let oldest: Option<String> = conn
        .query_row("SELECT recorded_at FROM journal WHERE seq > ?1 ORDER BY seq LIMIT 1", [acked], |r| r.get(0))
        .optional()?;
    let age = oldest
        .and_then(|t| OffsetDateTime::parse(&t, &Rfc3339).ok())
        .map_or(0, |t| (OffsetDateTime::now_utc() - t).whole_seconds().max(0) as u64);
    Ok((acked, age))
}

pub fn journal_status(conn: &Connection) -> anyhow::Result<JournalStatus> {
    let identity = read_identity(conn)?;
    let (len, last_seq): (u64, Option<u64>) =
        conn.query_row("SELECT COUNT(*), MAX(seq) FROM journal", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let last_seq = last_seq.unwrap_or(0);
    let (acked, oldest_unsynced_age_s) = upload_backlog(conn)?;
    Ok(JournalStatus {
        store_id: identity.store_id,
        till_id: identity.till_id,
        journal_id: identity.journal_id.to_string(),
        journal_len: len,
        last_seq,
        acked_seq: acked,
        unsynced: last_seq.saturating_sub(acked),
        oldest_unsynced_age_s,
    })
}

/// Why a journal does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Chain(#[from] ChainError),
    #[error("journal unreadable: {0:#}")]
    Unreadable(#[from] anyhow::Error),
}

/// The outcome of a successful verification.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub events: u64,
    pub head_hash: String,
    /// Append-only triggers that are missing (an attacker dropped them); the chain still verified.
    pub missing_triggers: Vec<String>,
}

/// Walks the whole chain from genesis, recomputing every hash. Names the first bad seq.
pub fn verify_chain(conn: &Connection) -> Result<Verified, VerifyError> {
    let identity: Identity = read_identity(conn)?;
    let mut prev = (0u64, storesync_shared::genesis_hash(&identity.store_id, &identity.till_id));
    let mut after = 0;
    loop {
        let page = journal_page(conn, after, 1000).map_err(VerifyError::Unreadable)?;
        if page.is_empty() {
            break;
        }
        for ev in &page {
            ev.verify(&identity.store_id, &identity.till_id, (prev.0, &prev.1))?;
            prev = (ev.seq, ev.hash.clone());
        }
        after = prev.0;
    }
    let mut missing_triggers = Vec::new();
    for t in ["journal_no_update", "journal_no_delete"] {
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger' AND name = ?1", [t], |r| r.get(0))
            .map_err(|e| VerifyError::Unreadable(e.into()))?;
        if n == 0 {
            missing_triggers.push(t.to_owned());
        }
    }
    Ok(Verified { events: prev.0, head_hash: prev.1, missing_triggers })
}
