//! Opening the journal database: pragmas, tables, triggers, and the till identity it belongs to.

use std::path::Path;

use anyhow::{Context, bail};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use uuid::Uuid;

const SCHEMA_VERSION: i64 = 1;

const DDL: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS journal (
    seq         INTEGER PRIMARY KEY CHECK (seq >= 1),
    event_id    TEXT    NOT NULL UNIQUE,
    kind        TEXT    NOT NULL,
    occurred_at TEXT    NOT NULL,
    recorded_at TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL
) STRICT;

CREATE TRIGGER IF NOT EXISTS journal_no_update BEFORE UPDATE ON journal
BEGIN SELECT RAISE(ABORT, 'journal is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS journal_no_delete BEFORE DELETE ON journal
BEGIN SELECT RAISE(ABORT, 'journal is append-only: DELETE refused'); END;

CREATE TABLE IF NOT EXISTS voids (
    voided_event_id TEXT PRIMARY KEY,
    void_seq        INTEGER NOT NULL
) STRICT;
CREATE TRIGGER IF NOT EXISTS voids_no_update BEFORE UPDATE ON voids
BEGIN SELECT RAISE(ABORT, 'voids is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS voids_no_delete BEFORE DELETE ON voids
BEGIN SELECT RAISE(ABORT, 'voids is append-only: DELETE refused'); END;

CREATE TABLE IF NOT EXISTS doc_snapshot (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    bytes BLOB NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS doc_changes (
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    bytes BLOB NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS doc_sync (
    peer  TEXT PRIMARY KEY,
    state BLOB NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS upload_cursor (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    acked_seq  INTEGER NOT NULL,
    acked_hash TEXT    NOT NULL
) STRICT;
"#;

/// Which store and till this journal belongs to, and its random journal id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub store_id: String,
    pub till_id: String,
    pub journal_id: Uuid,
}

/// The identity the configuration or the credential claims; `None` when neither names one.
#[derive(Debug, Clone, Default)]
pub struct IdentityClaim {
    pub store_id: Option<String>,
    pub till_id: Option<String>,
}

fn apply_pragmas(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(())
}

fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()
}

/// Opens the write connection, creating the schema, and settles the identity.
pub(super) fn open_writer(path: &Path, claim: &IdentityClaim) -> anyhow::Result<(Connection, Identity)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
    }
    let mut conn = Connection::open(path).with_context(|| format!("opening journal {}", path.display()))?;
    apply_pragmas(&conn).context("setting journal pragmas")?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(DDL).context("creating journal schema")?;
    let version: Option<String> = meta(&tx, "schema_version")?;
    match version.as_deref().map(str::parse::<i64>) {
        None => {
            tx.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?1)", [SCHEMA_VERSION.to_string()])?;
        }
        Some(Ok(SCHEMA_VERSION)) => {}
        Some(other) => {
            bail!("journal {} has schema version {other:?}; this agent reads {SCHEMA_VERSION}", path.display())
        }
    }
    let stored = (meta(&tx, "store_id")?, meta(&tx, "till_id")?, meta(&tx, "journal_id")?);
    let identity = match stored {
        (Some(store_id), Some(till_id), Some(journal_id)) => {
            for (what, have, want) in [("store", &store_id, &claim.store_id), ("till", &till_id, &claim.till_id)] {
                if let Some(want) = want
                    && want != have
                {
                    bail!(
                        "the journal in {} belongs to {what} {have:?}, but {what} {want:?} was asked for; \
                         use another --data-dir for another till",
                        path.display()
                    );
                }
            }
            Identity { store_id, till_id, journal_id: journal_id.parse().context("journal_id in meta")? }
        }
        (None, None, None) => {
            let (Some(store_id), Some(till_id)) = (claim.store_id.clone(), claim.till_id.clone()) else {
                bail!(
                    "this till has no identity yet: pass --store-id and --till-id (or set store_id and till_id in \
                     agent.toml), or enroll it with `storesync-agent enroll`"
                );
            };
            for (what, v) in [("store id", &store_id), ("till id", &till_id)] {
                if !valid_id(v) {
                    bail!("{what} {v:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'");
                }
            }
            let journal_id = Uuid::new_v4();
            tx.execute("INSERT INTO meta (key, value) VALUES ('store_id', ?1)", [&store_id])?;
            tx.execute("INSERT INTO meta (key, value) VALUES ('till_id', ?1)", [&till_id])?;
            tx.execute("INSERT INTO meta (key, value) VALUES ('journal_id', ?1)", [journal_id.to_string()])?;
            // A new journal's document holds nothing yet (see `writer::doc_through`).
            tx.execute("INSERT INTO meta (key, value) VALUES ('doc_through', '0')", [])?;
            tx.execute(
                "INSERT INTO upload_cursor (id, acked_seq, acked_hash) VALUES (1, 0, ?1)",
                params![storesync_shared::genesis_hash(&store_id, &till_id)],
            )?;
            Identity { store_id, till_id, journal_id }
        }
        _ => bail!("journal {} has a partial identity in its meta table; it was tampered with", path.display()),
    };
    tx.commit().context("committing journal schema")?;
    Ok((conn, identity))
}

/// Is this a valid store or till id?
pub fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Opens a read-only connection to an existing journal, and reads its identity.
pub(super) fn open_connection_read_only(path: &Path) -> anyhow::Result<(Connection, Identity)> {
    if !path.exists() {
        bail!("no journal at {}", path.display());
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .with_context(|| format!("opening journal {} read-only", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let identity = read_identity(&conn).with_context(|| format!("reading identity of {}", path.display()))?;
    Ok((conn, identity))
}

pub(super) fn read_identity(conn: &Connection) -> anyhow::Result<Identity> {
    let get = |k: &str| -> anyhow::Result<String> { meta(conn, k)?.with_context(|| format!("meta {k} is missing")) };
    Ok(Identity { store_id: get("store_id")?, till_id: get("till_id")?, journal_id: get("journal_id")?.parse()? })
}
