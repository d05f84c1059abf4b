//! [`IngestStore`] on SQLite: ingest of upload batches into tills' chains, health, events and quarantine.

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use uuid::Uuid;

use super::conn::{SqliteStorage, lock, to_i64, to_u64};
use super::rows::{EVENT_SELECT, stored_event};
use crate::storage::error::StorageError;
use crate::storage::ingest::{
    ChainHead, IngestBatch, IngestError, IngestStore, Ingested, ProgressSample, QuarantinedEvent, ReleaseOutcome,
    SAMPLE_KEEP_S, SAMPLE_SPACING_S, StoreView, StoredEvent, TillId, TillSamples, TillView,
};
use crate::storage::rules::{HealthChange, check_batch_shape, health_change};

/// The chain head of a till as read inside a write transaction.
pub(super) struct Head {
    pub(super) journal_id: Option<Uuid>,
    pub(super) hub_seq: u64,
    pub(super) last_hash: String,
}

pub(super) fn read_head(conn: &Connection, till: &TillId) -> Result<Option<Head>, rusqlite::Error> {
    conn.query_row(
        "SELECT journal_id, hub_seq, last_hash FROM tills WHERE store = ?1 AND till = ?2",
        params![till.store, till.till],
        |r| {
            let jid: Option<String> = r.get(0)?;
            Ok(Head {
                journal_id: jid.and_then(|s| Uuid::parse_str(&s).ok()),
                hub_seq: to_u64(r.get(1)?),
                last_hash: r.get(2)?,
            })
        },
    )
    .optional()
}

/// Applies a batch to the till's events (inside the caller's transaction or savepoint, which the caller rolls back
/// when this fails). Returns the new head, or the old one.
pub(super) fn ingest(
    conn: &Connection,
    till: &TillId,
    head: &Head,
    req: &IngestBatch,
    now: i64,
) -> Result<Ingested, IngestError> {
    check_batch_shape(req)?;
    if let Some(recorded) = head.journal_id
        && head.hub_seq > 0
        && recorded != req.journal_id
    {
        return Err(IngestError::JournalMismatch { recorded, sent: req.journal_id });
    }
    let unchanged = Ingested { acked_through: head.hub_seq, last_hash: head.last_hash.clone(), quarantined: vec![] };
    let (Some(first), Some(last)) = (req.events.first(), req.events.last()) else {
        return Ok(unchanged); // a heartbeat
    };
    if first.seq > head.hub_seq + 1 {
        return Err(IngestError::SeqGap { first: first.seq, expected: head.hub_seq + 1 });
    }
    // The part of the batch the hub already holds must be exactly what it holds (else it is a fork).
    let known = req.events.iter().take_while(|e| e.seq <= head.hub_seq);
    {
        let mut stmt =
            conn.prepare_cached("SELECT event_id, hash FROM events WHERE store = ?1 AND till = ?2 AND seq = ?3")?;
        for e in known {
            let stored: Option<(String, String)> = stmt
                .query_row(params![till.store, till.till, to_i64(e.seq)], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let same = stored.is_some_and(|(id, hash)| hash == e.hash && id == e.event_id.to_string());
            if !same {
                return Err(IngestError::SequenceRegression { seq: e.seq });
            }
        }
    }
    if last.seq <= head.hub_seq {
        return Ok(unchanged); // a duplicate of what is stored
    }
    let fresh = req.events.iter().skip_while(|e| e.seq <= head.hub_seq);
    let mut prev_seq = head.hub_seq;
    let mut prev_hash = head.last_hash.as_str();
    let mut insert = conn.prepare_cached(
        "INSERT INTO events (store, till, seq, event_id, kind, occurred_at, body, prev_hash, hash, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    let mut outbox = conn.prepare_cached("INSERT INTO outbox (hub_pos) VALUES (?1)")?;
    let mut quarantined = Vec::new();
    for e in fresh {
        let body = e
            .verify_link(&till.store, &till.till, (prev_seq, prev_hash))
            .map_err(|err| IngestError::ChainBroken { seq: err.seq(), detail: err.to_string() })?;
        let body = String::from_utf8(body)
            .map_err(|_| IngestError::ChainBroken { seq: e.seq, detail: "body is not UTF-8".into() })?;
        // The till journaled exactly this (the hash says so) but this hub cannot process it: store it in the
        // chain so nothing behind it waits, and hold it in quarantine (and out of the outbox until released).
        let held = e.check_body().err();
        if let Some(bad) = &held {
            conn.prepare_cached(
                "INSERT INTO quarantine (store, till, seq, reason, quarantined_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![till.store, till.till, to_i64(e.seq), bad.to_string(), now])?;
            quarantined.push(e.seq);
        }
        let res = insert.execute(params![
            till.store,
            till.till,
            to_i64(e.seq),
            e.event_id.to_string(),
            e.kind.as_str(),
            e.occurred_at,
            body,
            e.prev_hash,
            e.hash,
            now,
        ]);
        if let Err(err) = res {
            if err.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) {
                let stored_seq: Option<i64> = conn
                    .query_row(
                        "SELECT seq FROM events WHERE store = ?1 AND till = ?2 AND event_id = ?3",
                        params![till.store, till.till, e.event_id.to_string()],
                        |r| r.get(0),
                    )
                    .optional()?;
                return match stored_seq {
                    Some(s) => {
                        Err(IngestError::DuplicateEventId { seq: e.seq, event_id: e.event_id, stored_seq: to_u64(s) })
                    }
                    // The seq itself was taken: another writer got here first.
                    None => Err(IngestError::Storage(StorageError::Conflict)),
                };
            }
            return Err(err.into());
        }
        if held.is_none() {
            outbox.execute(params![conn.last_insert_rowid()])?;
        }
        prev_seq = e.seq;
        prev_hash = &e.hash;
    }
    let changed = conn.execute(
        "UPDATE tills SET hub_seq = ?1, last_hash = ?2, journal_id = ?3
         WHERE store = ?4 AND till = ?5 AND hub_seq = ?6",
        params![to_i64(prev_seq), prev_hash, req.journal_id.to_string(), till.store, till.till, to_i64(head.hub_seq)],
    )?;
    if changed != 1 {
        return Err(IngestError::Storage(StorageError::Conflict));
    }
    Ok(Ingested { acked_through: prev_seq, last_hash: prev_hash.to_owned(), quarantined })
}

/// Records what an upload said about the till (last seen, backlog, version) and how it went (`chain_ok`,
/// `last_error`), in the upload's transaction.
pub(super) fn record_health(
    conn: &Connection,
    till: &TillId,
    req: &IngestBatch,
    now: i64,
    head: &Head,
    outcome: &Result<Ingested, IngestError>,
) -> Result<(), rusqlite::Error> {
    let HealthChange { appended, chain_ok, last_error, hub_seq } = health_change(head.hub_seq, outcome);
    conn.execute(
        "UPDATE tills SET last_seen = ?1, backlog = ?2, oldest_unsynced_age_s = ?3, reported_seq = ?4,
            agent_version = CASE WHEN ?5 = '' THEN agent_version ELSE ?5 END,
            chain_ok = COALESCE(?6, chain_ok),
            last_error = CASE WHEN ?7 THEN NULL ELSE COALESCE(?8, last_error) END
         WHERE store = ?9 AND till = ?10",
        params![
            now,
            to_i64(req.backlog),
            to_i64(req.oldest_unsynced_age_s),
            to_i64(req.last_seq),
            req.agent_version,
            chain_ok,
            appended,
            last_error,
            till.store,
            till.till
        ],
    )?;
    conn.prepare_cached(
        "INSERT INTO till_progress (store, till, at, reported_seq, hub_seq)
         SELECT ?1, ?2, ?3, ?4, ?5 WHERE NOT EXISTS
           (SELECT 1 FROM till_progress WHERE store = ?1 AND till = ?2 AND at > ?3 - ?6)",
    )?
    .execute(params![till.store, till.till, now, to_i64(req.last_seq), to_i64(hub_seq), SAMPLE_SPACING_S])?;
    conn.prepare_cached("DELETE FROM till_progress WHERE store = ?1 AND till = ?2 AND at < ?3")?.execute(params![
        till.store,
        till.till,
        now - SAMPLE_KEEP_S
    ])?;
    Ok(())
}

impl IngestStore for SqliteStorage {
    fn append_batch(&self, till: &TillId, req: &IngestBatch, now: i64) -> Result<Ingested, IngestError> {
        let mut conn = lock(&self.writer);
        // The common case first, without the savepoint: under one, SQLite copies every page the batch touches
        // into a statement journal before changing it, a fixed cost on every accepted batch. A batch that is
        // refused here is rolled back whole and runs again on the savepoint path below, which refuses it the same
        // way (same head: this connection's mutex is held throughout) and records the refusal.
        {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some(head) = read_head(&tx, till)? else {
                return Err(IngestError::UnknownTill);
            };
            match ingest(&tx, till, &head, req, now) {
                Ok(ack) => {
                    let outcome = Ok(ack);
                    record_health(&tx, till, req, now, &head, &outcome)?;
                    tx.commit()?;
                    return outcome;
                }
                Err(err @ IngestError::Storage(_)) => return Err(err), // dropped: rolled back
                Err(_) => tx.rollback()?,
            }
        }
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(head) = read_head(&tx, till)? else {
            return Err(IngestError::UnknownTill);
        };
        let outcome = {
            let sp = tx.savepoint()?;
            let outcome = ingest(&sp, till, &head, req, now);
            if outcome.is_ok() {
                sp.commit()?;
            } // else dropped: rolled back, nothing of the batch stays
            outcome
        };
        if let Err(IngestError::Storage(_)) = &outcome {
            return outcome; // the transaction itself is suspect: roll everything back
        }
        record_health(&tx, till, req, now, &head, &outcome)?;
        tx.commit()?;
        outcome
    }

    fn till_state(&self, till: &TillId) -> Result<Option<ChainHead>, StorageError> {
        self.with_reader(|conn| {
            let head = read_head(conn, till)?;
            Ok(head.map(|h| ChainHead { journal_id: h.journal_id, hub_seq: h.hub_seq, last_hash: h.last_hash }))
        })
    }

    fn list_stores(&self) -> Result<Vec<StoreView>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT store, till, last_seen, reported_seq, hub_seq, backlog, oldest_unsynced_age_s,
                        agent_version, chain_ok, last_error, enrolled_at IS NOT NULL, revoked_at IS NOT NULL,
                        (SELECT COUNT(*) FROM quarantine q
                         WHERE q.store = t.store AND q.till = t.till AND q.released_at IS NULL)
                 FROM tills t ORDER BY store, till",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    TillView {
                        till: r.get(1)?,
                        last_seen: r.get(2)?,
                        last_seq: to_u64(r.get(3)?),
                        hub_seq: to_u64(r.get(4)?),
                        backlog: to_u64(r.get(5)?),
                        oldest_unsynced_age_s: to_u64(r.get(6)?),
                        version: r.get(7)?,
                        chain_ok: r.get(8)?,
                        last_error: r.get(9)?,
                        enrolled: r.get(10)?,
                        revoked: r.get(11)?,
                        quarantined: to_u64(r.get(12)?),
                    },
                ))
            })?;
            let mut out: Vec<StoreView> = Vec::new();
            for row in rows {
                let (store, till) = row?;
                match out.last_mut() {
                    Some(s) if s.store == store => s.tills.push(till),
                    _ => out.push(StoreView { store, tills: vec![till] }),
                }
            }
            Ok(out)
        })
    }

    fn progress_samples(&self, since: i64) -> Result<Vec<TillSamples>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT store, till, at, reported_seq, hub_seq FROM till_progress WHERE at >= ?1
                 ORDER BY store, till, at",
            )?;
            let rows = stmt.query_map(params![since], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    ProgressSample { at: r.get(2)?, reported_seq: to_u64(r.get(3)?), hub_seq: to_u64(r.get(4)?) },
                ))
            })?;
            let mut out: Vec<TillSamples> = Vec::new();
            for row in rows {
                let (store, till, sample) = row?;
                match out.last_mut() {
                    Some(t) if t.store == store && t.till == till => t.samples.push(sample),
                    _ => out.push(TillSamples { store, till, samples: vec![sample] }),
                }
            }
            Ok(out)
        })
    }

    fn recent_events(&self, store: &str, limit: usize) -> Result<Vec<StoredEvent>, StorageError> {
        self.with_reader(|conn| {
            // Per till through the (store, till, seq) index, then merged: a scan of the global order backwards
            // would walk every other store's events to find a quiet store's last few.
            let tills: Vec<String> = conn
                .prepare_cached("SELECT till FROM tills WHERE store = ?1")?
                .query_map(params![store], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut stmt = conn
                .prepare_cached(&format!("{EVENT_SELECT} WHERE store = ?1 AND till = ?2 ORDER BY seq DESC LIMIT ?3"))?;
            let n = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut out = Vec::new();
            for till in &tills {
                let rows = stmt.query_map(params![store, till, n], stored_event)?;
                out.extend(rows.collect::<Result<Vec<_>, _>>()?);
            }
            out.sort_by_key(|e| std::cmp::Reverse(e.hub_pos));
            out.truncate(limit);
            Ok(out)
        })
    }

    fn list_events(&self, store: Option<&str>, after: i64, limit: usize) -> Result<Vec<StoredEvent>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "{EVENT_SELECT} WHERE hub_pos > ?1 AND (?2 IS NULL OR store = ?2) ORDER BY hub_pos LIMIT ?3"
            ))?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![after, store, limit], stored_event)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn list_quarantine(
        &self,
        store: Option<&str>,
        include_released: bool,
        after: i64,
        limit: usize,
    ) -> Result<Vec<QuarantinedEvent>, StorageError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT e.hub_pos, e.event_id, e.store, e.till, e.seq, e.kind, e.occurred_at, e.body, e.hash,
                        q.released_at IS NULL, q.reason, q.quarantined_at, q.released_at
                 FROM quarantine q JOIN events e ON e.store = q.store AND e.till = q.till AND e.seq = q.seq
                 WHERE e.hub_pos > ?1 AND (?2 IS NULL OR q.store = ?2) AND (?3 OR q.released_at IS NULL)
                 ORDER BY e.hub_pos LIMIT ?4",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![after, store, include_released, limit], |r| {
                Ok(QuarantinedEvent {
                    event: stored_event(r)?,
                    reason: r.get(10)?,
                    quarantined_at: r.get(11)?,
                    released_at: r.get(12)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn release_quarantined(
        &self,
        till: &TillId,
        seq: u64,
        now: i64,
        check: &dyn Fn(&StoredEvent) -> Result<(), String>,
    ) -> Result<ReleaseOutcome, StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let event = tx
            .query_row(
                "SELECT e.hub_pos, e.event_id, e.store, e.till, e.seq, e.kind, e.occurred_at, e.body, e.hash, 1
                 FROM quarantine q JOIN events e ON e.store = q.store AND e.till = q.till AND e.seq = q.seq
                 WHERE q.store = ?1 AND q.till = ?2 AND q.seq = ?3 AND q.released_at IS NULL",
                params![till.store, till.till, to_i64(seq)],
                stored_event,
            )
            .optional()?;
        let Some(event) = event else {
            return Ok(ReleaseOutcome::NotQuarantined);
        };
        if let Err(why) = check(&event) {
            return Ok(ReleaseOutcome::StillInvalid(why));
        }
        tx.execute(
            "UPDATE quarantine SET released_at = ?1 WHERE store = ?2 AND till = ?3 AND seq = ?4",
            params![now, till.store, till.till, to_i64(seq)],
        )?;
        // Released: it goes out now, after everything already in the outbox.
        tx.execute("INSERT OR IGNORE INTO outbox (hub_pos) VALUES (?1)", params![event.hub_pos])?;
        tx.commit()?;
        Ok(ReleaseOutcome::Released)
    }

    fn store_known(&self, store: &str) -> Result<bool, StorageError> {
        self.with_reader(|conn| {
            Ok(conn.query_row("SELECT EXISTS (SELECT 1 FROM tills WHERE store = ?1)", params![store], |r| r.get(0))?)
        })
    }
}
