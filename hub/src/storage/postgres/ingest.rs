//! [`IngestStore`] on PostgreSQL: ingest of upload batches into tills' chains, health, events and quarantine.

use std::collections::HashMap;

use postgres::Row;
use postgres::error::SqlState;
use uuid::Uuid;

use super::conn::{Mode, PostgresStorage, Tx, limit_of, take_positions, to_i64, to_u64};
use super::error::is_code;
use super::rows::{EVENT_SELECT, stored_event};
use crate::storage::error::StorageError;
use crate::storage::ingest::{
    BatchEvent, ChainHead, IngestBatch, IngestError, IngestStore, Ingested, ProgressSample, QuarantinedEvent,
    ReleaseOutcome, SAMPLE_KEEP_S, SAMPLE_SPACING_S, StoreView, StoredEvent, TillId, TillSamples, TillView,
};
use crate::storage::rules::{HealthChange, check_batch_shape, health_change};

/// The chain head of a till as read (and locked) inside an ingest.
pub(super) struct Head {
    pub(super) journal_id: Option<Uuid>,
    pub(super) hub_seq: u64,
    pub(super) last_hash: String,
}

pub(super) const HEAD_SELECT: &str = "SELECT journal_id, hub_seq, last_hash FROM tills WHERE store = $1 AND till = $2";

pub(super) fn head_row(r: &Row) -> Head {
    Head { journal_id: r.get(0), hub_seq: to_u64(r.get(1)), last_hash: r.get(2) }
}

// Ingest.

/// A checked batch: what is new, ready to be stored.
pub(super) struct Plan<'r> {
    pub(super) ack: Ingested,
    /// The events after the hub's head with their canonical body and, when held, why.
    pub(super) fresh: Vec<(&'r BatchEvent, String, Option<String>)>,
}

/// Checks a batch against the till's locked head without writing anything: what is already stored must be
/// exactly what the batch says, the rest must continue the chain. A refusal leaves nothing to undo.
pub(super) fn plan_ingest<'r>(
    tx: &mut Tx<'_, '_>,
    till: &TillId,
    head: &Head,
    req: &'r IngestBatch,
) -> Result<Plan<'r>, IngestError> {
    check_batch_shape(req)?;
    if let Some(recorded) = head.journal_id
        && head.hub_seq > 0
        && recorded != req.journal_id
    {
        return Err(IngestError::JournalMismatch { recorded, sent: req.journal_id });
    }
    let unchanged = Plan {
        ack: Ingested { acked_through: head.hub_seq, last_hash: head.last_hash.clone(), quarantined: vec![] },
        fresh: Vec::new(),
    };
    let (Some(first), Some(last)) = (req.events.first(), req.events.last()) else {
        return Ok(unchanged); // a heartbeat
    };
    if first.seq > head.hub_seq + 1 {
        return Err(IngestError::SeqGap { first: first.seq, expected: head.hub_seq + 1 });
    }
    // The part of the batch the hub already holds must be exactly what it holds (else it is a fork).
    let known: Vec<&BatchEvent> = req.events.iter().take_while(|e| e.seq <= head.hub_seq).collect();
    if let (Some(a), Some(b)) = (known.first(), known.last()) {
        let rows = tx.query(
            "SELECT seq, event_id, hash FROM events WHERE store = $1 AND till = $2 AND seq BETWEEN $3 AND $4",
            &[&till.store, &till.till, &to_i64(a.seq), &to_i64(b.seq)],
        )?;
        let stored: HashMap<u64, (Uuid, String)> =
            rows.iter().map(|r| (to_u64(r.get(0)), (r.get(1), r.get(2)))).collect();
        for e in known {
            if stored.get(&e.seq).is_none_or(|(id, hash)| *id != e.event_id || *hash != e.hash) {
                return Err(IngestError::SequenceRegression { seq: e.seq });
            }
        }
    }
    if last.seq <= head.hub_seq {
        return Ok(unchanged); // a duplicate of what is stored
    }
    let new: Vec<&BatchEvent> = req.events.iter().skip_while(|e| e.seq <= head.hub_seq).collect();
    let ids: Vec<Uuid> = new.iter().map(|e| e.event_id).collect();
    let mut taken: HashMap<Uuid, u64> = tx
        .query(
            "SELECT event_id, seq FROM events WHERE store = $1 AND till = $2 AND event_id = ANY($3::uuid[])",
            &[&till.store, &till.till, &ids],
        )?
        .iter()
        .map(|r| (r.get(0), to_u64(r.get(1))))
        .collect();
    let mut prev = (head.hub_seq, head.last_hash.as_str());
    let mut fresh = Vec::with_capacity(new.len());
    for e in new {
        let body = e
            .verify_link(&till.store, &till.till, prev)
            .map_err(|err| IngestError::ChainBroken { seq: err.seq(), detail: err.to_string() })?;
        let body = String::from_utf8(body)
            .map_err(|_| IngestError::ChainBroken { seq: e.seq, detail: "body is not UTF-8".into() })?;
        if let Some(stored_seq) = taken.insert(e.event_id, e.seq) {
            return Err(IngestError::DuplicateEventId { seq: e.seq, event_id: e.event_id, stored_seq });
        }
        // The till journaled exactly this (the hash says so) but this hub cannot process it: store it in the
        // chain so nothing behind it waits, and hold it in quarantine (and out of the outbox until released).
        let held = e.check_body().err().map(|bad| bad.to_string());
        fresh.push((e, body, held));
        prev = (e.seq, &e.hash);
    }
    let quarantined = fresh.iter().filter(|(_, _, held)| held.is_some()).map(|(e, _, _)| e.seq).collect();
    let ack = Ingested { acked_through: prev.0, last_hash: prev.1.to_owned(), quarantined };
    Ok(Plan { ack, fresh })
}

/// Stores a checked batch: events, quarantine rows, outbox entries, and the till's new head.
pub(super) fn store_plan(
    tx: &mut Tx<'_, '_>,
    till: &TillId,
    head: &Head,
    req: &IngestBatch,
    plan: &Plan<'_>,
    now: i64,
) -> Result<(), IngestError> {
    if plan.fresh.is_empty() {
        return Ok(());
    }
    let n = plan.fresh.len();
    let (mut seqs, mut ids, mut kinds, mut occurred, mut bodies, mut prevs, mut hashes) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut held_seqs, mut held_reasons) = (Vec::new(), Vec::new());
    for (e, body, held) in &plan.fresh {
        seqs.push(to_i64(e.seq));
        ids.push(e.event_id);
        kinds.push(e.kind.as_str());
        occurred.push(e.occurred_at.as_str());
        bodies.push(body.as_str());
        prevs.push(e.prev_hash.as_str());
        hashes.push(e.hash.as_str());
        if let Some(reason) = held {
            held_seqs.push(to_i64(e.seq));
            held_reasons.push(reason.as_str());
        }
    }
    // Last, so the counter row is held for as short a time as possible.
    let (first_pos, first_out) = take_positions(tx, n, n - held_seqs.len())?;
    let positions: Vec<i64> = (first_pos..).take(n).collect();
    let inserted = tx.execute(
        "INSERT INTO events (hub_pos, store, till, seq, event_id, kind, occurred_at, body, prev_hash, hash, received_at)
         SELECT u.hub_pos, $1, $2, u.seq, u.event_id, u.kind, u.occurred_at, u.body, u.prev_hash, u.hash, $3
         FROM UNNEST($4::bigint[], $5::bigint[], $6::uuid[], $7::text[], $8::text[], $9::text[], $10::text[],
                     $11::text[]) AS u(hub_pos, seq, event_id, kind, occurred_at, body, prev_hash, hash)",
        &[
            &till.store,
            &till.till,
            &now,
            &positions,
            &seqs,
            &ids,
            &kinds,
            &occurred,
            &bodies,
            &prevs,
            &hashes,
        ],
    );
    match inserted {
        // Another writer stored one of these seqs or ids first: the till row lock makes this unreachable, the
        // unique constraints make it harmless.
        Err(e) if is_code(&e, &[SqlState::UNIQUE_VIOLATION]) => {
            return Err(IngestError::Storage(StorageError::Conflict));
        }
        other => other?,
    };
    if !held_seqs.is_empty() {
        tx.execute(
            "INSERT INTO quarantine (store, till, seq, reason, quarantined_at)
             SELECT $1, $2, u.seq, u.reason, $3 FROM UNNEST($4::bigint[], $5::text[]) AS u(seq, reason)",
            &[&till.store, &till.till, &now, &held_seqs, &held_reasons],
        )?;
    }
    let delivered: Vec<i64> =
        plan.fresh.iter().zip(&positions).filter(|((_, _, held), _)| held.is_none()).map(|(_, pos)| *pos).collect();
    if !delivered.is_empty() {
        let outbox: Vec<i64> = (first_out..).take(delivered.len()).collect();
        tx.execute(
            "INSERT INTO outbox (pos, hub_pos) SELECT * FROM UNNEST($1::bigint[], $2::bigint[])",
            &[&outbox, &delivered],
        )?;
    }
    let moved = tx.execute(
        "UPDATE tills SET hub_seq = $1, last_hash = $2, journal_id = $3
         WHERE store = $4 AND till = $5 AND hub_seq = $6",
        &[
            &to_i64(plan.ack.acked_through),
            &plan.ack.last_hash,
            &req.journal_id,
            &till.store,
            &till.till,
            &to_i64(head.hub_seq),
        ],
    )?;
    if moved != 1 {
        return Err(IngestError::Storage(StorageError::Conflict));
    }
    Ok(())
}

/// Records what an upload said about the till (last seen, backlog, version) and how it went (`chain_ok`,
/// `last_error`), and a progress sample, in the upload's transaction.
pub(super) fn record_health(
    tx: &mut Tx<'_, '_>,
    till: &TillId,
    req: &IngestBatch,
    now: i64,
    change: &HealthChange,
) -> Result<(), postgres::Error> {
    tx.execute(
        "UPDATE tills SET last_seen = $1, backlog = $2, oldest_unsynced_age_s = $3, reported_seq = $4,
            agent_version = CASE WHEN $5::text = '' THEN agent_version ELSE $5::text END,
            chain_ok = COALESCE($6::boolean, chain_ok),
            last_error = CASE WHEN $7::boolean THEN NULL ELSE COALESCE($8::text, last_error) END
         WHERE store = $9 AND till = $10",
        &[
            &now,
            &to_i64(req.backlog),
            &to_i64(req.oldest_unsynced_age_s),
            &to_i64(req.last_seq),
            &req.agent_version,
            &change.chain_ok,
            &change.appended,
            &change.last_error,
            &till.store,
            &till.till,
        ],
    )?;
    tx.execute(
        "INSERT INTO till_progress (store, till, at, reported_seq, hub_seq)
         SELECT $1::text, $2::text, $3::bigint, $4::bigint, $5::bigint WHERE NOT EXISTS
           (SELECT 1 FROM till_progress WHERE store = $1::text AND till = $2::text AND at > $3::bigint - $6::bigint)",
        &[&till.store, &till.till, &now, &to_i64(req.last_seq), &to_i64(change.hub_seq), &SAMPLE_SPACING_S],
    )?;
    tx.execute(
        "DELETE FROM till_progress WHERE store = $1 AND till = $2 AND at < $3",
        &[&till.store, &till.till, &(now - SAMPLE_KEEP_S)],
    )?;
    Ok(())
}

impl IngestStore for PostgresStorage {
    fn append_batch(&self, till: &TillId, req: &IngestBatch, now: i64) -> Result<Ingested, IngestError> {
        self.tx(Mode::Write, |tx| {
            // Locks the till row: another instance's upload of this till waits here until this one commits, then
            // reads the head this one left.
            let sql = format!("{HEAD_SELECT} FOR UPDATE");
            let Some(head) = tx.query_opt(&sql, &[&till.store, &till.till])?.as_ref().map(head_row) else {
                return Err(IngestError::UnknownTill);
            };
            match plan_ingest(tx, till, &head, req) {
                Err(err @ IngestError::Storage(_)) => Err(err),
                Err(refused) => {
                    // Nothing of the batch was written; the refusal is recorded and committed.
                    let outcome = Err(refused);
                    record_health(tx, till, req, now, &health_change(head.hub_seq, &outcome))?;
                    Ok(outcome)
                }
                Ok(plan) => {
                    let outcome = Ok(plan.ack.clone());
                    record_health(tx, till, req, now, &health_change(head.hub_seq, &outcome))?;
                    store_plan(tx, till, &head, req, &plan, now)?;
                    Ok(outcome)
                }
            }
        })?
    }

    fn till_state(&self, till: &TillId) -> Result<Option<ChainHead>, StorageError> {
        self.with_conn(|cx| {
            let head = cx.query_opt(HEAD_SELECT, &[&till.store, &till.till])?.as_ref().map(head_row);
            Ok(head.map(|h| ChainHead { journal_id: h.journal_id, hub_seq: h.hub_seq, last_hash: h.last_hash }))
        })
    }

    fn list_stores(&self) -> Result<Vec<StoreView>, StorageError> {
        self.with_conn(|cx| {
            let rows = cx.query(
                "SELECT store, till, last_seen, reported_seq, hub_seq, backlog, oldest_unsynced_age_s,
                        agent_version, chain_ok, last_error, enrolled_at IS NOT NULL, revoked_at IS NOT NULL,
                        (SELECT COUNT(*) FROM quarantine q
                         WHERE q.store = t.store AND q.till = t.till AND q.released_at IS NULL)
                 FROM tills t ORDER BY store COLLATE \"C\", till COLLATE \"C\"",
                &[],
            )?;
            let mut out: Vec<StoreView> = Vec::new();
            for r in &rows {
                let store: String = r.get(0);
                let till = TillView {
                    till: r.get(1),
                    last_seen: r.get(2),
                    last_seq: to_u64(r.get(3)),
                    hub_seq: to_u64(r.get(4)),
                    backlog: to_u64(r.get(5)),
                    oldest_unsynced_age_s: to_u64(r.get(6)),
                    version: r.get(7),
                    chain_ok: r.get(8),
                    last_error: r.get(9),
                    enrolled: r.get(10),
                    revoked: r.get(11),
                    quarantined: to_u64(r.get(12)),
                };
                match out.last_mut() {
                    Some(s) if s.store == store => s.tills.push(till),
                    _ => out.push(StoreView { store, tills: vec![till] }),
                }
            }
            Ok(out)
        })
    }

    fn progress_samples(&self, since: i64) -> Result<Vec<TillSamples>, StorageError> {
        self.with_conn(|cx| {
            let rows = cx.query(
                "SELECT store, till, at, reported_seq, hub_seq FROM till_progress WHERE at >= $1
                 ORDER BY store COLLATE \"C\", till COLLATE \"C\", at",
                &[&since],
            )?;
            let mut out: Vec<TillSamples> = Vec::new();
            for r in &rows {
                let (store, till): (String, String) = (r.get(0), r.get(1));
                let sample = ProgressSample { at: r.get(2), reported_seq: to_u64(r.get(3)), hub_seq: to_u64(r.get(4)) };
                match out.last_mut() {
                    Some(t) if t.store == store && t.till == till => t.samples.push(sample),
                    _ => out.push(TillSamples { store, till, samples: vec![sample] }),
                }
            }
            Ok(out)
        })
    }

    fn recent_events(&self, store: &str, limit: usize) -> Result<Vec<StoredEvent>, StorageError> {
        self.with_conn(|cx| {
            // Per till through the (store, till, seq) index, then merged: a scan of the global order backwards
            // would walk every other store's events to find a quiet store's last few.
            let sql = format!(
                "SELECT x.* FROM tills t CROSS JOIN LATERAL
                   ({EVENT_SELECT} WHERE events.store = t.store AND events.till = t.till ORDER BY seq DESC LIMIT $2) x
                 WHERE t.store = $1 ORDER BY x.hub_pos DESC LIMIT $2"
            );
            let rows = cx.query(&sql, &[&store, &limit_of(limit)])?;
            Ok(rows.iter().map(stored_event).collect())
        })
    }

    fn list_events(&self, store: Option<&str>, after: i64, limit: usize) -> Result<Vec<StoredEvent>, StorageError> {
        self.with_conn(|cx| {
            let sql = format!(
                "{EVENT_SELECT} WHERE hub_pos > $1 AND ($2::text IS NULL OR store = $2::text) ORDER BY hub_pos LIMIT $3"
            );
            let rows = cx.query(&sql, &[&after, &store, &limit_of(limit)])?;
            Ok(rows.iter().map(stored_event).collect())
        })
    }

    fn list_quarantine(
        &self,
        store: Option<&str>,
        include_released: bool,
        after: i64,
        limit: usize,
    ) -> Result<Vec<QuarantinedEvent>, StorageError> {
        self.with_conn(|cx| {
            let rows = cx.query(
                "SELECT e.hub_pos, e.event_id, e.store, e.till, e.seq, e.kind, e.occurred_at, e.body, e.hash,
                        q.released_at IS NULL, q.reason, q.quarantined_at, q.released_at
                 FROM quarantine q JOIN events e ON e.store = q.store AND e.till = q.till AND e.seq = q.seq
                 WHERE e.hub_pos > $1 AND ($2::text IS NULL OR q.store = $2::text)
                   AND ($3::boolean OR q.released_at IS NULL)
                 ORDER BY e.hub_pos LIMIT $4",
                &[&after, &store, &include_released, &limit_of(limit)],
            )?;
            Ok(rows
                .iter()
                .map(|r| QuarantinedEvent {
                    event: stored_event(r),
                    reason: r.get(10),
                    quarantined_at: r.get(11),
                    released_at: r.get(12),
                })
                .collect())
        })
    }

    fn release_quarantined(
        &self,
        till: &TillId,
        seq: u64,
        now: i64,
        check: &dyn Fn(&StoredEvent) -> Result<(), String>,
    ) -> Result<ReleaseOutcome, StorageError> {
        self.tx(Mode::Write, |tx| {
            let row = tx.query_opt(
                "SELECT e.hub_pos, e.event_id, e.store, e.till, e.seq, e.kind, e.occurred_at, e.body, e.hash, TRUE
                 FROM quarantine q JOIN events e ON e.store = q.store AND e.till = q.till AND e.seq = q.seq
                 WHERE q.store = $1 AND q.till = $2 AND q.seq = $3 AND q.released_at IS NULL
                 FOR UPDATE OF q",
                &[&till.store, &till.till, &to_i64(seq)],
            )?;
            let Some(event) = row.as_ref().map(stored_event) else {
                return Ok(ReleaseOutcome::NotQuarantined);
            };
            if let Err(why) = check(&event) {
                return Ok(ReleaseOutcome::StillInvalid(why));
            }
            tx.execute(
                "UPDATE quarantine SET released_at = $1 WHERE store = $2 AND till = $3 AND seq = $4",
                &[&now, &till.store, &till.till, &to_i64(seq)],
            )?;
            // Released: it goes out now, after everything already in the outbox.
            let queued = tx.query_opt("SELECT 1 FROM outbox WHERE hub_pos = $1", &[&event.hub_pos])?.is_some();
            if !queued {
                let (_, pos) = take_positions(tx, 0, 1)?;
                tx.execute("INSERT INTO outbox (pos, hub_pos) VALUES ($1, $2)", &[&pos, &event.hub_pos])?;
            }
            Ok(ReleaseOutcome::Released)
        })
    }

    fn store_known(&self, store: &str) -> Result<bool, StorageError> {
        self.with_conn(|cx| Ok(cx.query_one("SELECT EXISTS (SELECT 1 FROM tills WHERE store = $1)", &[&store])?.get(0)))
    }
}
