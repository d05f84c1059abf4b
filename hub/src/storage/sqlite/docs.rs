//! [`DocStore`] on SQLite: store documents, sync states, head-office movements and compaction into epochs.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use storesync_shared::event::EventKind;
use uuid::Uuid;

use super::conn::{SqliteStorage, json_text, lock, parse_json, to_i64, to_u64};
use crate::storage::docs::{CompactError, CompactionInput, DocLoad, DocMeta, DocStore, DocWrite, EpochRecord};
use crate::storage::error::StorageError;
use crate::storage::rules::add_into;

/// A store's `store_docs` row: its meta and the version its snapshot was taken at.
pub(super) fn read_doc_meta(conn: &Connection, store: &str) -> Result<Option<(DocMeta, u64)>, rusqlite::Error> {
    conn.query_row(
        "SELECT epoch, version, changes_since_epoch, saved_bytes, chunks, snapshot_version,
                COALESCE((SELECT length(e.doc) FROM epochs e WHERE e.store = d.store AND e.epoch = d.epoch), 0)
         FROM store_docs d WHERE store = ?1",
        params![store],
        |r| {
            Ok((
                DocMeta {
                    epoch: to_u64(r.get(0)?),
                    version: to_u64(r.get(1)?),
                    changes_since_epoch: to_u64(r.get(2)?),
                    saved_bytes: to_u64(r.get(3)?),
                    chunks: to_u64(r.get(4)?),
                    epoch_bytes: to_u64(r.get(6)?),
                },
                to_u64(r.get(5)?),
            ))
        },
    )
    .optional()
}

pub(super) fn read_chunks(conn: &Connection, store: &str, after: u64) -> Result<Vec<Vec<u8>>, rusqlite::Error> {
    let mut stmt =
        conn.prepare_cached("SELECT bytes FROM doc_chunks WHERE store = ?1 AND version > ?2 ORDER BY version")?;
    let rows = stmt.query_map(params![store, to_i64(after)], |r| r.get::<_, Vec<u8>>(0))?;
    rows.collect()
}

pub(super) fn read_snapshot(conn: &Connection, store: &str) -> Result<Option<Vec<u8>>, rusqlite::Error> {
    Ok(conn
        .query_row("SELECT snapshot FROM store_docs WHERE store = ?1", params![store], |r| {
            r.get::<_, Option<Vec<u8>>>(0)
        })
        .optional()?
        .flatten())
}

/// An epoch's record and the journal part of its base (without head-office movements).
pub(super) type EpochWithJournalBase = (EpochRecord, BTreeMap<String, i64>);

pub(super) fn read_epoch(
    conn: &Connection,
    store: &str,
    epoch: Option<u64>,
) -> Result<Option<EpochWithJournalBase>, StorageError> {
    let row: Option<(i64, String, String, String, Vec<u8>)> = conn
        .query_row(
            "SELECT epoch, cuts, base, journal_base, doc FROM epochs
             WHERE store = ?1 AND (?2 IS NULL OR epoch = ?2) ORDER BY epoch DESC LIMIT 1",
            params![store, epoch.map(to_i64)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let Some((epoch, cuts, base, journal_base, doc)) = row else {
        return Ok(None);
    };
    Ok(Some((
        EpochRecord {
            epoch: to_u64(epoch),
            cuts: parse_json(&cuts, "epoch cuts")?,
            base: parse_json(&base, "epoch base")?,
            doc,
        },
        parse_json(&journal_base, "epoch journal base")?,
    )))
}

/// `(event_id, kind, body)` of one stored event.
pub(super) type EventRow = (Uuid, EventKind, serde_json::Value);

pub(super) fn event_row(id: &str, kind: &str, body: &str) -> Result<EventRow, CompactError> {
    let event_id = Uuid::parse_str(id).map_err(|e| CompactError::BadEvent(format!("event id {id:?}: {e}")))?;
    let kind = EventKind::parse(kind).ok_or_else(|| CompactError::BadEvent(format!("event kind {kind:?}")))?;
    let body = serde_json::from_str(body).map_err(|e| CompactError::BadEvent(format!("body of {event_id}: {e}")))?;
    Ok((event_id, kind, body))
}

/// The stock effect of a till's events in `(after, through]`; voids of earlier events are resolved from storage.
pub(super) fn till_effects(
    conn: &Connection,
    store: &str,
    till: &str,
    after: u64,
    through: u64,
) -> Result<BTreeMap<String, i64>, CompactError> {
    let rows: Vec<(String, String, String)> = {
        let mut stmt = conn.prepare_cached(
            "SELECT event_id, kind, body FROM events WHERE store = ?1 AND till = ?2 AND seq > ?3 AND seq <= ?4
             ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![store, till, to_i64(after), to_i64(through)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        rows.collect::<Result<_, _>>().map_err(StorageError::from)?
    };
    let events = rows.iter().map(|(id, kind, body)| event_row(id, kind, body)).collect::<Result<Vec<_>, _>>()?;
    let mut lookup_err: Option<CompactError> = None;
    let mut lookup = |id: Uuid| -> Option<(EventKind, serde_json::Value)> {
        let row: Result<Option<(String, String)>, rusqlite::Error> = conn
            .query_row(
                "SELECT kind, body FROM events WHERE store = ?1 AND till = ?2 AND event_id = ?3",
                params![store, till, id.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional();
        match row {
            Ok(Some((kind, body))) => match event_row(&id.to_string(), &kind, &body) {
                Ok((_, k, b)) => Some((k, b)),
                Err(e) => {
                    lookup_err = Some(e);
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                lookup_err = Some(CompactError::Storage(e.into()));
                None
            }
        }
    };
    let effects = storesync_shared::crdt::journal_effects(events, &mut lookup)
        .map_err(|e| CompactError::BadEvent(e.to_string()))?;
    match lookup_err {
        Some(e) => Err(e),
        None => Ok(effects),
    }
}

impl DocStore for SqliteStorage {
    fn doc_sizes(&self) -> Result<BTreeMap<String, u64>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached("SELECT store, saved_bytes FROM store_docs")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, to_u64(r.get(1)?))))?;
            Ok(rows.collect::<Result<BTreeMap<_, _>, _>>()?)
        })
    }

    fn doc_load(&self, store: &str, since: Option<(u64, u64)>) -> Result<DocLoad, StorageError> {
        self.with_reader(|conn| {
            let tx = conn.unchecked_transaction()?; // one read snapshot for the meta and the chunks
            let (meta, snapshot_version) = read_doc_meta(&tx, store)?.unwrap_or_default();
            let load = match since {
                Some((epoch, version))
                    if epoch == meta.epoch && version >= snapshot_version && version <= meta.version =>
                {
                    DocLoad::Delta { meta, chunks: read_chunks(&tx, store, version)? }
                }
                _ => DocLoad::Full { meta, snapshot: read_snapshot(&tx, store)?, chunks: read_chunks(&tx, store, 0)? },
            };
            tx.finish()?;
            Ok(load)
        })
    }

    fn doc_apply(&self, writes: &[DocWrite], now: i64) -> Result<Vec<DocMeta>, StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            tx.execute("INSERT OR IGNORE INTO store_docs (store) VALUES (?1)", params![w.store])?;
            let (mut meta, _) = read_doc_meta(&tx, &w.store)?.unwrap_or_default();
            let changes_doc = !w.chunk.is_empty() || w.fold.is_some();
            if meta.epoch != w.epoch || (changes_doc && meta.version != w.base_version) {
                return Err(StorageError::Conflict); // dropped: rolled back
            }
            if changes_doc {
                meta.version += 1;
                meta.changes_since_epoch += w.changes;
                if let Some(full) = &w.fold {
                    tx.execute("DELETE FROM doc_chunks WHERE store = ?1", params![w.store])?;
                    meta.saved_bytes = full.len() as u64;
                    meta.chunks = 0;
                    tx.execute(
                        "UPDATE store_docs SET snapshot = ?1, snapshot_version = ?2 WHERE store = ?3",
                        params![full, to_i64(meta.version), w.store],
                    )?;
                } else {
                    tx.execute(
                        "INSERT INTO doc_chunks (store, version, bytes) VALUES (?1, ?2, ?3)",
                        params![w.store, to_i64(meta.version), w.chunk],
                    )?;
                    meta.saved_bytes += w.chunk.len() as u64;
                    meta.chunks += 1;
                }
                tx.execute(
                    "UPDATE store_docs SET version = ?1, changes_since_epoch = ?2, saved_bytes = ?3, chunks = ?4
                     WHERE store = ?5",
                    params![
                        to_i64(meta.version),
                        to_i64(meta.changes_since_epoch),
                        to_i64(meta.saved_bytes),
                        to_i64(meta.chunks),
                        w.store
                    ],
                )?;
            }
            if let Some((till, state)) = &w.sync_state {
                tx.execute(
                    "INSERT INTO sync_states (store, till, epoch, state, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (store, till, epoch) DO UPDATE SET state = ?4, updated_at = ?5",
                    params![w.store, till, to_i64(w.epoch), state, now],
                )?;
            }
            for m in &w.movements {
                tx.execute(
                    "INSERT INTO hub_movements (store, sku, delta, reason, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![w.store, m.sku, m.delta, m.reason, now],
                )?;
            }
            out.push(meta);
        }
        tx.commit()?;
        Ok(out)
    }

    fn sync_state(&self, store: &str, till: &str, epoch: u64) -> Result<Option<Vec<u8>>, StorageError> {
        self.with_reader(|conn| {
            Ok(conn
                .query_row(
                    "SELECT state FROM sync_states WHERE store = ?1 AND till = ?2 AND epoch = ?3",
                    params![store, till, to_i64(epoch)],
                    |r| r.get(0),
                )
                .optional()?)
        })
    }

    fn compact(
        &self,
        store: &str,
        now: i64,
        build: &mut dyn FnMut(&CompactionInput) -> Result<Vec<u8>, String>,
    ) -> Result<EpochRecord, CompactError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let known: bool =
            tx.query_row("SELECT EXISTS (SELECT 1 FROM tills WHERE store = ?1)", params![store], |r| r.get(0))?;
        if !known {
            return Err(CompactError::UnknownStore);
        }
        let (meta, _) = read_doc_meta(&tx, store)?.unwrap_or_default();
        // The previous epoch's cuts and journal base, so only the events since are read.
        let (prev_cuts, mut journal_base) = match read_epoch(&tx, store, Some(meta.epoch))? {
            Some((rec, jb)) if meta.epoch > 0 => (rec.cuts, jb),
            _ => (BTreeMap::new(), BTreeMap::new()),
        };
        let cuts: BTreeMap<String, u64> = {
            // A till's cut stops before its first unreleased quarantined event: the hub cannot compute that event's
            // stock effect, the till can, and re-derives everything after its cut from its own journal.
            let mut stmt = tx.prepare_cached(
                "SELECT t.till, MIN(t.hub_seq, COALESCE((SELECT MIN(q.seq) - 1 FROM quarantine q
                     WHERE q.store = t.store AND q.till = t.till AND q.released_at IS NULL), t.hub_seq))
                 FROM tills t WHERE t.store = ?1 ORDER BY t.till",
            )?;
            let rows = stmt.query_map(params![store], |r| Ok((r.get::<_, String>(0)?, to_u64(r.get(1)?))))?;
            rows.collect::<Result<_, _>>()?
        };
        for (till, cut) in &cuts {
            let after = prev_cuts.get(till).copied().unwrap_or(0).min(*cut);
            let effects = till_effects(&tx, store, till, after, *cut)?;
            add_into(&mut journal_base, &effects);
        }
        let mut base = journal_base.clone();
        {
            let mut stmt =
                tx.prepare_cached("SELECT sku, SUM(delta) FROM hub_movements WHERE store = ?1 GROUP BY sku")?;
            let rows = stmt.query_map(params![store], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let movements: BTreeMap<String, i64> = rows.collect::<Result<_, _>>()?;
            add_into(&mut base, &movements);
        }
        let input = CompactionInput {
            epoch: meta.epoch,
            cuts,
            base,
            snapshot: read_snapshot(&tx, store)?,
            chunks: read_chunks(&tx, store, 0)?,
        };
        let doc = build(&input).map_err(CompactError::Build)?;
        let epoch = meta.epoch + 1;
        let version = meta.version + 1;
        tx.execute(
            "INSERT INTO epochs (store, epoch, cuts, base, journal_base, doc, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                store,
                to_i64(epoch),
                json_text(&input.cuts),
                json_text(&input.base),
                json_text(&journal_base),
                doc,
                now
            ],
        )?;
        tx.execute("DELETE FROM epochs WHERE store = ?1 AND epoch < ?2", params![store, to_i64(epoch)])?;
        tx.execute("INSERT OR IGNORE INTO store_docs (store) VALUES (?1)", params![store])?;
        tx.execute(
            "UPDATE store_docs SET epoch = ?1, version = ?2, snapshot = ?3, snapshot_version = ?2,
                changes_since_epoch = 0, saved_bytes = ?4, chunks = 0
             WHERE store = ?5",
            params![to_i64(epoch), to_i64(version), doc, doc.len() as i64, store],
        )?;
        tx.execute("DELETE FROM doc_chunks WHERE store = ?1", params![store])?;
        tx.execute("DELETE FROM sync_states WHERE store = ?1 AND epoch < ?2", params![store, to_i64(epoch)])?;
        tx.commit()?;
        Ok(EpochRecord { epoch, cuts: input.cuts, base: input.base, doc })
    }

    fn epoch_record(&self, store: &str) -> Result<Option<EpochRecord>, StorageError> {
        self.with_reader(|conn| {
            let tx = conn.unchecked_transaction()?;
            let (meta, _) = read_doc_meta(&tx, store)?.unwrap_or_default();
            let rec = if meta.epoch == 0 { None } else { read_epoch(&tx, store, Some(meta.epoch))?.map(|(r, _)| r) };
            tx.finish()?;
            Ok(rec)
        })
    }

    fn movement_totals(&self, store: &str) -> Result<(BTreeMap<String, i64>, u64), StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT sku, SUM(delta), COUNT(*) FROM hub_movements WHERE store = ?1 GROUP BY sku ORDER BY sku",
            )?;
            let rows = stmt
                .query_map(params![store], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, to_u64(r.get(2)?))))?;
            let mut totals = BTreeMap::new();
            let mut n = 0;
            for row in rows {
                let (sku, sum, count) = row?;
                n += count;
                if sum != 0 {
                    totals.insert(sku, sum);
                }
            }
            Ok((totals, n))
        })
    }
}
