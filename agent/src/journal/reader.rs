//! Read-only access to the journal, typed: pages of entries, status, the upload backlog, this till's reservation
//! events, the chain check, and stock and prices read from the document at its last committed heads.
//!
//! The running agent reads through [`ReadPool`], a small pool of read-only connections; the CLI opens the file on
//! its own with [`open_read_only`]. Either way no connection leaves `journal/`: callers get typed answers. Every
//! method here is blocking; async callers use `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};
use storesync_shared::EventBody;
use storesync_shared::crdt::{self, PriceView};
use storesync_shared::wire::JournalEvent;
use time::OffsetDateTime;

use super::entry::Entry;
use super::queries::{self, JournalStatus, UploadBacklog, Verified, VerifyError};
use super::schema::{Identity, open_connection_read_only};
use super::state::DocState;

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

    /// Runs `f` with a pooled read-only connection.
    fn with<R>(&self, f: impl FnOnce(&Connection) -> anyhow::Result<R>) -> anyhow::Result<R> {
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

    /// At most `limit` entries after `after_seq`, in seq order.
    pub fn page(&self, after_seq: u64, limit: usize) -> anyhow::Result<Vec<Entry>> {
        self.with(|c| queries::page(c, after_seq, limit))
    }

    /// The journal's figures (a full count of the journal: not for a hot path).
    pub fn status(&self) -> anyhow::Result<JournalStatus> {
        self.with(queries::status)
    }

    /// The last seq and the age of the oldest unacknowledged entry, cheaply (see [`UploadBacklog`]).
    pub fn upload_backlog(&self) -> anyhow::Result<UploadBacklog> {
        self.with(queries::upload_backlog)
    }

    /// This till's own picks, cancels and reservation-collecting sales among its newest `window` entries, in seq
    /// order.
    pub fn reservation_events(&self, window: u64) -> anyhow::Result<Vec<EventBody>> {
        self.with(|c| queries::reservation_events(c, window))
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

/// A journal file opened read-only outside a running agent (the CLI's `status`, `verify-journal` and `export`).
pub struct JournalFile {
    conn: Connection,
}

impl JournalFile {
    /// The journal's figures.
    pub fn status(&self) -> anyhow::Result<JournalStatus> {
        queries::status(&self.conn)
    }

    /// At most `limit` entries after `after_seq`, in seq order.
    pub fn page(&self, after_seq: u64, limit: usize) -> anyhow::Result<Vec<Entry>> {
        queries::page(&self.conn, after_seq, limit)
    }

    /// Walks the whole chain from genesis, recomputing every hash. Names the first bad seq.
    pub fn verify(&self) -> Result<Verified, VerifyError> {
        queries::verify_chain(&self.conn)
    }
}

/// Opens an existing journal read-only, and reads its identity.
pub fn open_read_only(path: &Path) -> anyhow::Result<(JournalFile, Identity)> {
    let (conn, identity) = open_connection_read_only(path)?;
    Ok((JournalFile { conn }, identity))
}

/// [`JournalFile::status`].
pub fn journal_status(file: &JournalFile) -> anyhow::Result<JournalStatus> {
    file.status()
}

/// [`JournalFile::verify`].
pub fn verify_chain(file: &JournalFile) -> Result<Verified, VerifyError> {
    file.verify()
}

/// [`JournalFile::page`], each entry in its wire form: what `storesync-agent export` writes, one a line.
pub fn journal_page(file: &JournalFile, after_seq: u64, limit: usize) -> anyhow::Result<Vec<JournalEvent>> {
    Ok(file.page(after_seq, limit)?.into_iter().map(JournalEvent::from).collect())
}
