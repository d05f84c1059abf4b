//! The journal's read queries, each over one read-only connection: pages of entries, the status figures, the
//! upload backlog, this till's own reservation events, and the chain check. [`super::reader`] runs them on a
//! pooled connection (the running agent) or on a file opened by the CLI; nothing outside `journal/` sees SQL.

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use storesync_shared::canonical::ChainError;
use storesync_shared::wire::JournalEvent;
use storesync_shared::{EventBody, EventKind};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::entry::Entry;
use super::schema::{Identity, read_identity};

/// One page of the journal, after `after_seq`, in seq order.
pub(super) fn page(conn: &Connection, after_seq: u64, limit: usize) -> anyhow::Result<Vec<Entry>> {
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
        out.push(Entry {
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
fn acked_and_age(conn: &Connection) -> anyhow::Result<(u64, u64)> {
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

pub(super) fn status(conn: &Connection) -> anyhow::Result<JournalStatus> {
    let identity = read_identity(conn)?;
    let (len, last_seq): (u64, Option<u64>) =
        conn.query_row("SELECT COUNT(*), MAX(seq) FROM journal", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let last_seq = last_seq.unwrap_or(0);
    let (acked, oldest_unsynced_age_s) = acked_and_age(conn)?;
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

/// What an upload round needs to know about the journal's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadBacklog {
    /// The last journal seq (0 for an empty journal).
    pub last_seq: u64,
    /// Age in seconds of the oldest entry the hub has not acknowledged (0 when there is none).
    pub oldest_unsynced_age_s: u64,
}

/// [`UploadBacklog`], read without [`status`]: its `SELECT COUNT(*), MAX(seq)` visits every journal row (the pair
/// defeats SQLite's min/max optimisation), so a drain would re-read the whole journal for every batch. `MAX(seq)`
/// alone is read off the end of the rowid b-tree; the backlog age is read as in [`status`].
pub(super) fn upload_backlog(conn: &Connection) -> anyhow::Result<UploadBacklog> {
    let last_seq: Option<u64> = conn.query_row("SELECT MAX(seq) FROM journal", [], |r| r.get(0))?;
    let (_, oldest_unsynced_age_s) = acked_and_age(conn)?;
    Ok(UploadBacklog { last_seq: last_seq.unwrap_or(0), oldest_unsynced_age_s })
}

/// This till's own reservation events among its newest `window` journal entries, in seq order: picks, cancels,
/// and sales that collect a reservation. Entries this build cannot read are left out.
pub(super) fn reservation_events(conn: &Connection, window: u64) -> anyhow::Result<Vec<EventBody>> {
    let mut stmt = conn.prepare_cached(
        "SELECT kind, body FROM journal WHERE seq > (SELECT COALESCE(MAX(seq), 0) FROM journal) - ?1
           AND (kind IN ('reservation_pick', 'reservation_cancel')
                OR (kind = 'sale' AND body LIKE '%\"reservation_id\"%'))
         ORDER BY seq",
    )?;
    let window = i64::try_from(window).unwrap_or(i64::MAX);
    let rows = stmt.query_map([window], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (kind, body) = row?;
        let Some(kind) = EventKind::parse(&kind) else { continue };
        let Ok(value) = serde_json::from_str(&body) else { continue };
        if let Ok(body) = EventBody::from_stored(kind, value) {
            out.push(body);
        }
    }
    Ok(out)
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
pub(super) fn verify_chain(conn: &Connection) -> Result<Verified, VerifyError> {
    let identity: Identity = read_identity(conn)?;
    let mut prev = (0u64, storesync_shared::genesis_hash(&identity.store_id, &identity.till_id));
    let mut after = 0;
    loop {
        let entries = page(conn, after, 1000).map_err(VerifyError::Unreadable)?;
        if entries.is_empty() {
            break;
        }
        for entry in entries {
            // The chain rule is the upload's: check the entry exactly as the hub will.
            let ev = JournalEvent::from(entry);
            ev.verify(&identity.store_id, &identity.till_id, (prev.0, &prev.1))?;
            prev = (ev.seq, ev.hash);
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
