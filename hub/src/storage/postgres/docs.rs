//! [`DocStore`] on PostgreSQL: store documents, sync states, head-office movements and compaction into epochs.

use std::collections::BTreeMap;

use postgres::GenericClient;
use storesync_shared::event::EventKind;
use uuid::Uuid;

use super::conn::{Cx, Mode, PostgresStorage, Tx, json_text, limit_of, parse_json, to_i64, to_u64};
use crate::storage::docs::{CompactError, CompactionInput, DocLoad, DocMeta, DocStore, DocWrite, EpochRecord};
use crate::storage::error::StorageError;
use crate::storage::rules::add_into;

// Documents and epochs.

/// A store's `store_docs` row: its meta and the version its snapshot was taken at.
pub(super) fn read_doc_meta<C: GenericClient>(
    cx: &mut Cx<'_, C>,
    store: &str,
) -> Result<Option<(DocMeta, u64)>, postgres::Error> {
    let row = cx.query_opt(
        "SELECT epoch, version, changes_since_epoch, saved_bytes, chunks, snapshot_version,
                COALESCE((SELECT length(e.doc) FROM epochs e WHERE e.store = d.store AND e.epoch = d.epoch), 0)::bigint
         FROM store_docs d WHERE store = $1",
        &[&store],
    )?;
    Ok(row.map(|r| {
        (
            DocMeta {
                epoch: to_u64(r.get(0)),
                version: to_u64(r.get(1)),
                changes_since_epoch: to_u64(r.get(2)),
                saved_bytes: to_u64(r.get(3)),
                chunks: to_u64(r.get(4)),
                epoch_bytes: to_u64(r.get(6)),
            },
            to_u64(r.get(5)),
        )
    }))
}

pub(super) fn read_chunks<C: GenericClient>(
    cx: &mut Cx<'_, C>,
    store: &str,
    after: u64,
) -> Result<Vec<Vec<u8>>, postgres::Error> {
    let rows = cx.query(
        "SELECT bytes FROM doc_chunks WHERE store = $1 AND version > $2 ORDER BY version",
        &[&store, &to_i64(after)],
    )?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub(super) fn read_snapshot<C: GenericClient>(
    cx: &mut Cx<'_, C>,
    store: &str,
) -> Result<Option<Vec<u8>>, postgres::Error> {
    Ok(cx.query_opt("SELECT snapshot FROM store_docs WHERE store = $1", &[&store])?.and_then(|r| r.get(0)))
}

/// An epoch's record and the journal part of its base (without head-office movements).
pub(super) type EpochWithJournalBase = (EpochRecord, BTreeMap<String, i64>);

pub(super) fn read_epoch<C: GenericClient>(
    cx: &mut Cx<'_, C>,
    store: &str,
    epoch: u64,
) -> Result<Option<EpochWithJournalBase>, StorageError> {
    let row = cx.query_opt(
        "SELECT cuts, base, journal_base, doc FROM epochs WHERE store = $1 AND epoch = $2",
        &[&store, &to_i64(epoch)],
    )?;
    let Some(r) = row else {
        return Ok(None);
    };
    Ok(Some((
        EpochRecord {
            epoch,
            cuts: parse_json(r.get(0), "epoch cuts")?,
            base: parse_json(r.get(1), "epoch base")?,
            doc: r.get(3),
        },
        parse_json(r.get(2), "epoch journal base")?,
    )))
}

/// `(event_id, kind, body)` of one stored event.
pub(super) type EventRow = (Uuid, EventKind, serde_json::Value);

pub(super) fn event_row(event_id: Uuid, kind: &str, body: &str) -> Result<EventRow, CompactError> {
    let kind = EventKind::parse(kind).ok_or_else(|| CompactError::BadEvent(format!("event kind {kind:?}")))?;
    let body = serde_json::from_str(body).map_err(|e| CompactError::BadEvent(format!("body of {event_id}: {e}")))?;
    Ok((event_id, kind, body))
}

/// The stock effect of a till's events in `(after, through]`; voids of earlier events are resolved from storage.
pub(super) fn till_effects(
    tx: &mut Tx<'_, '_>,
    store: &str,
    till: &str,
    after: u64,
    through: u64,
) -> Result<BTreeMap<String, i64>, CompactError> {
    let rows = tx.query(
        "SELECT event_id, kind, body FROM events WHERE store = $1 AND till = $2 AND seq > $3 AND seq <= $4
         ORDER BY seq",
        &[&store, &till, &to_i64(after), &to_i64(through)],
    )?;
    let events = rows.iter().map(|r| event_row(r.get(0), r.get(1), r.get(2))).collect::<Result<Vec<_>, _>>()?;
    let mut lookup_err: Option<CompactError> = None;
    let lookup = |id: Uuid| -> Option<(EventKind, serde_json::Value)> {
        let row = tx.query_opt(
            "SELECT kind, body FROM events WHERE store = $1 AND till = $2 AND event_id = $3",
            &[&store, &till, &id],
        );
        let found = match row {
            Ok(Some(r)) => event_row(id, r.get(0), r.get(1)).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(CompactError::from(e)),
        };
        found
            .unwrap_or_else(|e| {
                lookup_err = Some(e);
                None
            })
            .map(|(_, k, b)| (k, b))
    };
    let effects =
        storesync_shared::crdt::journal_effects(events, lookup).map_err(|e| CompactError::BadEvent(e.to_string()));
    match lookup_err {
        Some(e) => Err(e),
        None => effects,
    }
}

impl DocStore for PostgresStorage {
    fn doc_sizes(&self) -> Result<BTreeMap<String, u64>, StorageError> {
        self.with_conn(|cx| {
            let rows = cx.query("SELECT store, saved_bytes FROM store_docs", &[])?;
            Ok(rows.iter().map(|r| (r.get(0), to_u64(r.get(1)))).collect())
        })
    }

    fn doc_load(&self, store: &str, since: Option<(u64, u64)>) -> Result<DocLoad, StorageError> {
        self.tx(Mode::Snapshot, |tx| {
            let (meta, snapshot_version) = read_doc_meta(tx, store)?.unwrap_or_default();
            Ok(match since {
                Some((epoch, version))
                    if epoch == meta.epoch && version >= snapshot_version && version <= meta.version =>
                {
                    DocLoad::Delta { meta, chunks: read_chunks(tx, store, version)? }
                }
                _ => DocLoad::Full { meta, snapshot: read_snapshot(tx, store)?, chunks: read_chunks(tx, store, 0)? },
            })
        })
    }

    fn doc_apply(&self, writes: &[DocWrite], now: i64) -> Result<Vec<DocMeta>, StorageError> {
        let mut stores: Vec<&str> = writes.iter().map(|w| w.store.as_str()).collect();
        stores.sort_unstable();
        stores.dedup();
        self.tx(Mode::Write, |tx| {
            // Every store's row, created if new and locked in name order (two writers of the same stores never wait
            // on each other crosswise); the version checks below are then against rows nobody else can change.
            tx.execute(
                "INSERT INTO store_docs (store) SELECT unnest($1::text[]) ORDER BY 1 ON CONFLICT DO NOTHING",
                &[&stores],
            )?;
            tx.execute("SELECT 1 FROM store_docs WHERE store = ANY($1::text[]) ORDER BY store FOR UPDATE", &[&stores])?;
            let mut out = Vec::with_capacity(writes.len());
            for w in writes {
                let (mut meta, _) = read_doc_meta(tx, &w.store)?.unwrap_or_default();
                let changes_doc = !w.chunk.is_empty() || w.fold.is_some();
                if meta.epoch != w.epoch || (changes_doc && meta.version != w.base_version) {
                    return Err(StorageError::Conflict); // rolled back
                }
                if changes_doc {
                    meta.version += 1;
                    meta.changes_since_epoch += w.changes;
                    if let Some(full) = &w.fold {
                        tx.execute("DELETE FROM doc_chunks WHERE store = $1", &[&w.store])?;
                        meta.saved_bytes = full.len() as u64;
                        meta.chunks = 0;
                        tx.execute(
                            "UPDATE store_docs SET snapshot = $1, snapshot_version = $2 WHERE store = $3",
                            &[full, &to_i64(meta.version), &w.store],
                        )?;
                    } else {
                        tx.execute(
                            "INSERT INTO doc_chunks (store, version, bytes) VALUES ($1, $2, $3)",
                            &[&w.store, &to_i64(meta.version), &w.chunk],
                        )?;
                        meta.saved_bytes += w.chunk.len() as u64;
                        meta.chunks += 1;
                    }
                    let stored = tx.execute(
                        "UPDATE store_docs SET version = $1, changes_since_epoch = $2, saved_bytes = $3, chunks = $4
                         WHERE store = $5 AND epoch = $6 AND version = $7",
                        &[
                            &to_i64(meta.version),
                            &to_i64(meta.changes_since_epoch),
                            &to_i64(meta.saved_bytes),
                            &to_i64(meta.chunks),
                            &w.store,
                            &to_i64(w.epoch),
                            &to_i64(w.base_version),
                        ],
                    )?;
                    if stored != 1 {
                        return Err(StorageError::Conflict);
                    }
                }
                if let Some((till, state)) = &w.sync_state {
                    tx.execute(
                        "INSERT INTO sync_states (store, till, epoch, state, updated_at) VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (store, till, epoch) DO UPDATE SET state = excluded.state,
                             updated_at = excluded.updated_at",
                        &[&w.store, till, &to_i64(w.epoch), state, &now],
                    )?;
                }
                for m in &w.movements {
                    tx.execute(
                        "INSERT INTO hub_movements (store, sku, delta, reason, at) VALUES ($1, $2, $3, $4, $5)",
                        &[&w.store, &m.sku, &m.delta, &m.reason, &now],
                    )?;
                }
                out.push(meta);
            }
            Ok(out)
        })
    }

    fn sync_state(&self, store: &str, till: &str, epoch: u64) -> Result<Option<Vec<u8>>, StorageError> {
        self.with_conn(|cx| {
            let row = cx.query_opt(
                "SELECT state FROM sync_states WHERE store = $1 AND till = $2 AND epoch = $3",
                &[&store, &till, &to_i64(epoch)],
            )?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn compact(
        &self,
        store: &str,
        now: i64,
        build: &mut dyn FnMut(&CompactionInput) -> Result<Vec<u8>, String>,
    ) -> Result<EpochRecord, CompactError> {
        self.tx(Mode::Write, |tx| {
            let known: bool = tx.query_one("SELECT EXISTS (SELECT 1 FROM tills WHERE store = $1)", &[&store])?.get(0);
            if !known {
                return Err(CompactError::UnknownStore);
            }
            // The store's document row, locked: no write of the store and no other compaction of it runs alongside.
            tx.execute("INSERT INTO store_docs (store) VALUES ($1) ON CONFLICT DO NOTHING", &[&store])?;
            tx.execute("SELECT 1 FROM store_docs WHERE store = $1 FOR UPDATE", &[&store])?;
            let (meta, _) = read_doc_meta(tx, store)?.unwrap_or_default();
            // The previous epoch's cuts and journal base, so only the events since are read.
            let (prev_cuts, mut journal_base) = match read_epoch(tx, store, meta.epoch)? {
                Some((rec, jb)) if meta.epoch > 0 => (rec.cuts, jb),
                _ => (BTreeMap::new(), BTreeMap::new()),
            };
            // A till's cut stops before its first unreleased quarantined event: the hub cannot compute that event's
            // stock effect, the till can, and re-derives everything after its cut from its own journal.
            let rows = tx.query(
                "SELECT t.till, LEAST(t.hub_seq, COALESCE((SELECT MIN(q.seq) - 1 FROM quarantine q
                     WHERE q.store = t.store AND q.till = t.till AND q.released_at IS NULL), t.hub_seq))
                 FROM tills t WHERE t.store = $1",
                &[&store],
            )?;
            let cuts: BTreeMap<String, u64> = rows.iter().map(|r| (r.get(0), to_u64(r.get(1)))).collect();
            for (till, cut) in &cuts {
                let after = prev_cuts.get(till).copied().unwrap_or(0).min(*cut);
                let effects = till_effects(tx, store, till, after, *cut)?;
                add_into(&mut journal_base, &effects);
            }
            let mut base = journal_base.clone();
            let rows =
                tx.query("SELECT sku, SUM(delta)::bigint FROM hub_movements WHERE store = $1 GROUP BY sku", &[&store])?;
            let movements: BTreeMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            add_into(&mut base, &movements);
            let input = CompactionInput {
                epoch: meta.epoch,
                cuts,
                base,
                snapshot: read_snapshot(tx, store)?,
                chunks: read_chunks(tx, store, 0)?,
            };
            let doc = build(&input).map_err(CompactError::Build)?;
            let epoch = meta.epoch + 1;
            let version = meta.version + 1;
            tx.execute(
                "INSERT INTO epochs (store, epoch, cuts, base, journal_base, doc, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &store,
                    &to_i64(epoch),
                    &json_text(&input.cuts),
                    &json_text(&input.base),
                    &json_text(&journal_base),
                    &doc,
                    &now,
                ],
            )?;
            tx.execute("DELETE FROM epochs WHERE store = $1 AND epoch < $2", &[&store, &to_i64(epoch)])?;
            tx.execute(
                "UPDATE store_docs SET epoch = $1, version = $2, snapshot = $3, snapshot_version = $2,
                    changes_since_epoch = 0, saved_bytes = $4, chunks = 0
                 WHERE store = $5",
                &[&to_i64(epoch), &to_i64(version), &doc, &limit_of(doc.len()), &store],
            )?;
            tx.execute("DELETE FROM doc_chunks WHERE store = $1", &[&store])?;
            tx.execute("DELETE FROM sync_states WHERE store = $1 AND epoch < $2", &[&store, &to_i64(epoch)])?;
            Ok(EpochRecord { epoch, cuts: input.cuts, base: input.base, doc })
        })
    }

    fn epoch_record(&self, store: &str) -> Result<Option<EpochRecord>, StorageError> {
        self.tx(Mode::Snapshot, |tx| {
            let (meta, _) = read_doc_meta(tx, store)?.unwrap_or_default();
            if meta.epoch == 0 {
                return Ok(None);
            }
            Ok(read_epoch(tx, store, meta.epoch)?.map(|(r, _)| r))
        })
    }

    fn movement_totals(&self, store: &str) -> Result<(BTreeMap<String, i64>, u64), StorageError> {
        self.with_conn(|cx| {
            let rows = cx.query(
                "SELECT sku, SUM(delta)::bigint, COUNT(*) FROM hub_movements WHERE store = $1 GROUP BY sku",
                &[&store],
            )?;
            let mut totals = BTreeMap::new();
            let mut n = 0;
            for r in &rows {
                let (sku, sum, count): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
                n += to_u64(count);
                if sum != 0 {
                    totals.insert(sku, sum);
                }
            }
            Ok((totals, n))
        })
    }
}
