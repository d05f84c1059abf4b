//! [`ReservationStore`] for [`PostgresStorage`] (it shares the pool, the transaction-retry helper and
//! `take_positions` of `conn.rs`). Same tables and semantics as the SQLite backend
//! (`sqlite/reservations.rs`); see `storage/reservations.rs` for the invariant.
//!
//! Design note — several hub instances share the database, so every guarantee comes from it, never from a lock
//! in one process. Writes run in READ COMMITTED with row locks, always taken in this order, so no two writers wait
//! on each other crosswise:
//! 1. `reservation_cursor` (only [`ReservationStore::consume_till_events`]: two instances take turns);
//! 2. the reservation's row (`FOR NO KEY UPDATE`; a change reads its status under it);
//! 3. the `escrow` rows of ONE candidate store at a time (`FOR UPDATE`, in SKU order), inside a savepoint: when the
//!    store cannot cover the order the savepoint is rolled back, which releases those rows, and the next store of
//!    the list is tried. The sums of active reservations are read after the lock is held (a new snapshot per
//!    statement), and every transaction that adds units against `(store, sku)` holds that row to its COMMIT, so
//!    the sum checked is still the sum at COMMIT. `escrow_set` takes the same row by its upsert. Releasing units
//!    (cancel, expiry, collection) needs no escrow lock: it can only make room;
//! 4. the `~hub` chain head of each store written to (`reservation_chains`, in store order): the events of a
//!    transaction are built in memory and chained at its end, so two instances never fork a chain;
//! 5. `hub_counters`, by `take_positions`, last: event and outbox positions are handed out in COMMIT order, as for
//!    an upload, so the delivery cursor and the planner's cursor never skip an event.
//!
//! A lost race that PostgreSQL resolves by aborting (a deadlock, a lock wait past `lock_timeout`) runs the whole
//! transaction again through `PostgresStorage::tx`, then answers [`StorageError::Busy`] (HTTP 503).

use std::collections::BTreeMap;

use postgres::GenericClient;
use storesync_shared::canonical::{ChainInput, event_hash};
use storesync_shared::event::EventKind;
use storesync_shared::genesis_hash;
use storesync_shared::reservation::{ReservationChange, ReservationStatus};
use uuid::Uuid;

use super::conn::{Cx, Mode, PostgresStorage, limit_of, take_positions, to_u64};
use super::error::{TxFailure, backend};
use crate::storage::error::StorageError;
use crate::storage::reservations::{
    Change, Consumed, EscrowLevel, EscrowPolicy, HUB_TILL, HistoryEntry, NewReservation, PolicyEscrow, Reservation,
    ReservationError, ReservationStore, Reserved, change_kind, event_body, till_action,
};

impl From<postgres::Error> for ReservationError {
    fn from(err: postgres::Error) -> Self {
        ReservationError::Storage(err.into())
    }
}

impl TxFailure for ReservationError {
    fn busy(&self) -> bool {
        matches!(self, ReservationError::Storage(StorageError::Busy))
    }
}

type Tx<'a, 'b> = super::conn::Tx<'a, 'b>;

/// An event of the transaction, chained and given its positions at its end ([`flush`]).
struct Pending {
    store: String,
    event_id: Uuid,
    kind: EventKind,
    occurred_at: String,
    /// Canonical JSON.
    body: String,
}

const READ_RESERVATION: &str =
    "SELECT order_id, stores, pickup_by, store, status, created_at, updated_at FROM reservations WHERE id = $1";

fn read<C: GenericClient>(cx: &mut Cx<'_, C>, id: Uuid) -> Result<Option<Reservation>, postgres::Error> {
    let Some(row) = cx.query_opt(READ_RESERVATION, &[&id])? else {
        return Ok(None);
    };
    let lines = cx
        .query("SELECT sku, qty FROM reservation_lines WHERE reservation = $1 ORDER BY sku", &[&id])?
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect();
    let history = cx
        .query(
            "SELECT change, store, reason, at, event_id FROM reservation_history WHERE reservation = $1 ORDER BY n",
            &[&id],
        )?
        .iter()
        .map(|r| HistoryEntry {
            change: ReservationChange::parse(r.get(0)).unwrap_or(ReservationChange::Reserved),
            store: r.get(1),
            reason: r.get(2),
            at: r.get(3),
            event_id: r.get(4),
        })
        .collect();
    let status: &str = row.get(4);
    Ok(Some(Reservation {
        reservation_id: id,
        order_id: row.get(0),
        store: row.get(3),
        status: ReservationStatus::parse(status).unwrap_or(ReservationStatus::Cancelled),
        lines,
        stores: row.get(1),
        pickup_by: row.get(2),
        created_at: row.get(5),
        updated_at: row.get(6),
        history,
    }))
}

/// Units of `sku` held by `store`'s active reservations.
fn reserved(tx: &mut Tx<'_, '_>, store: &str, sku: &str) -> Result<i64, postgres::Error> {
    Ok(tx
        .query_one(
            "SELECT COALESCE(SUM(l.qty), 0)::bigint FROM reservation_lines l JOIN reservations r ON r.id = l.reservation
             WHERE r.store = $1 AND l.sku = $2 AND r.status IN ('reserved', 'picked')",
            &[&store, &sku],
        )?
        .get(0))
}

/// Whether `store`'s unreserved escrow covers every line (not counting reservation `except`), with the store's
/// escrow rows of these SKUs locked. Runs in a savepoint: when the answer is no, the savepoint is rolled back and
/// the rows are free again, so a transaction holds the escrow rows of at most the one store it reserves at.
fn lock_and_check(
    tx: &mut Tx<'_, '_>,
    store: &str,
    lines: &BTreeMap<String, i64>,
    except: Option<Uuid>,
) -> Result<bool, postgres::Error> {
    let skus: Vec<&str> = lines.keys().map(String::as_str).collect();
    tx.c.batch_execute("SAVEPOINT candidate")?;
    let escrow: BTreeMap<String, i64> = tx
        .query(
            "SELECT sku, qty FROM escrow WHERE store = $1 AND sku = ANY($2::text[]) ORDER BY sku FOR UPDATE",
            &[&store, &skus],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // After the lock: this statement sees every reservation committed before it, and none can commit against
    // these rows until this transaction ends.
    let reserved: BTreeMap<String, i64> = tx
        .query(
            "SELECT l.sku, SUM(l.qty)::bigint FROM reservation_lines l JOIN reservations r ON r.id = l.reservation
             WHERE r.store = $1 AND l.sku = ANY($2::text[]) AND r.status IN ('reserved', 'picked')
               AND r.id IS DISTINCT FROM $3
             GROUP BY l.sku",
            &[&store, &skus, &except],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let covers = lines
        .iter()
        .all(|(sku, qty)| escrow.get(sku).copied().unwrap_or(0) - reserved.get(sku).copied().unwrap_or(0) >= *qty);
    if covers {
        tx.c.batch_execute("RELEASE SAVEPOINT candidate")?;
    } else {
        tx.c.batch_execute("ROLLBACK TO SAVEPOINT candidate; RELEASE SAVEPOINT candidate")?;
    }
    Ok(covers)
}

/// The first of `stores` that covers `lines`, its escrow rows left locked.
fn first_covering(
    tx: &mut Tx<'_, '_>,
    stores: &[String],
    lines: &BTreeMap<String, i64>,
    except: Option<Uuid>,
) -> Result<Option<String>, postgres::Error> {
    for store in stores {
        if lock_and_check(tx, store, lines, except)? {
            return Ok(Some(store.clone()));
        }
    }
    Ok(None)
}

/// Records one state change: its history row now, its event in `pending` (written by [`flush`]).
fn record(
    tx: &mut Tx<'_, '_>,
    pending: &mut Vec<Pending>,
    r: &Reservation,
    change: ReservationChange,
    from_store: Option<&str>,
    reason: Option<&str>,
    now: i64,
) -> Result<(), ReservationError> {
    let (occurred_at, body) = event_body(r, change, from_store, reason, now)?;
    let event_id = Uuid::new_v4();
    // The event goes to the chain of the store it concerns: for a reroute, the store it left.
    pending.push(Pending {
        store: from_store.unwrap_or(&r.store).to_owned(),
        event_id,
        kind: EventKind::of_reservation(change),
        occurred_at,
        body,
    });
    tx.execute(
        "INSERT INTO reservation_history (reservation, n, change, store, reason, at, event_id)
         VALUES ($1, (SELECT COUNT(*) FROM reservation_history WHERE reservation = $1), $2, $3, $4, $5, $6)",
        &[&r.reservation_id, &change.as_str(), &r.store, &reason, &now, &event_id],
    )?;
    Ok(())
}

/// Writes the transaction's events: chains them per store (the chain heads locked in store order), then takes
/// their hub and outbox positions, last, and inserts them into `events` and `outbox`.
fn flush(tx: &mut Tx<'_, '_>, pending: Vec<Pending>, now: i64) -> Result<(), StorageError> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut heads: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for p in &pending {
        heads.entry(p.store.clone()).or_default();
    }
    for (store, head) in &mut heads {
        tx.execute(
            "INSERT INTO reservation_chains (store, seq, hash) VALUES ($1, 0, $2) ON CONFLICT (store) DO NOTHING",
            &[store, &genesis_hash(store, HUB_TILL)],
        )?;
        let row = tx.query_one("SELECT seq, hash FROM reservation_chains WHERE store = $1 FOR UPDATE", &[store])?;
        *head = (row.get(0), row.get(1));
    }
    let n = pending.len();
    let (mut stores, mut seqs, mut ids, mut kinds, mut occurred, mut bodies, mut prevs, mut hashes) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for p in &pending {
        let Some((seq, prev)) = heads.get_mut(&p.store) else {
            return Err(backend(format!("no chain head read for store {:?}", p.store)));
        };
        *seq += 1;
        let hash = event_hash(&ChainInput {
            store: &p.store,
            till: HUB_TILL,
            seq: to_u64(*seq),
            event_id: p.event_id,
            kind: p.kind,
            body: p.body.as_bytes(),
            prev_hash: prev,
        });
        stores.push(p.store.as_str());
        seqs.push(*seq);
        ids.push(p.event_id);
        kinds.push(p.kind.as_str());
        occurred.push(p.occurred_at.as_str());
        bodies.push(p.body.as_str());
        prevs.push(std::mem::replace(prev, hash.clone()));
        hashes.push(hash);
    }
    for (store, (seq, hash)) in &heads {
        tx.execute("UPDATE reservation_chains SET seq = $2, hash = $3 WHERE store = $1", &[store, seq, hash])?;
    }
    let (first_pos, first_out) = take_positions(tx, n, n)?;
    let positions: Vec<i64> = (first_pos..).take(n).collect();
    let outbox: Vec<i64> = (first_out..).take(n).collect();
    tx.execute(
        "INSERT INTO events (hub_pos, store, till, seq, event_id, kind, occurred_at, body, prev_hash, hash, received_at)
         SELECT u.hub_pos, u.store, $1, u.seq, u.event_id, u.kind, u.occurred_at, u.body, u.prev_hash, u.hash, $2
         FROM UNNEST($3::bigint[], $4::text[], $5::bigint[], $6::uuid[], $7::text[], $8::text[], $9::text[],
                     $10::text[], $11::text[])
              AS u(hub_pos, store, seq, event_id, kind, occurred_at, body, prev_hash, hash)",
        &[&HUB_TILL, &now, &positions, &stores, &seqs, &ids, &kinds, &occurred, &bodies, &prevs, &hashes],
    )?;
    tx.execute(
        "INSERT INTO outbox (pos, hub_pos) SELECT * FROM UNNEST($1::bigint[], $2::bigint[])",
        &[&outbox, &positions],
    )?;
    Ok(())
}

fn set_status(
    tx: &mut Tx<'_, '_>,
    id: Uuid,
    store: &str,
    status: ReservationStatus,
    now: i64,
) -> Result<(), postgres::Error> {
    tx.execute(
        "UPDATE reservations SET store = $2, status = $3, updated_at = $4 WHERE id = $1",
        &[&id, &store, &status.as_str(), &now],
    )?;
    Ok(())
}

/// Applies one change inside the caller's transaction, its event into `pending`.
fn apply(
    tx: &mut Tx<'_, '_>,
    pending: &mut Vec<Pending>,
    id: Uuid,
    change: &Change,
    now: i64,
) -> Result<Reservation, ReservationError> {
    // The row first: a second instance changing the same reservation waits here, then reads what this one left.
    if tx.query_opt("SELECT 1 FROM reservations WHERE id = $1 FOR NO KEY UPDATE", &[&id])?.is_none() {
        return Err(ReservationError::NotFound);
    }
    let Some(mut r) = read(tx, id)? else { return Err(ReservationError::NotFound) };
    let asked = change_kind(change);
    if asked != ReservationChange::Rerouted && asked.status_after() == r.status {
        return Ok(r); // done already: nothing written
    }
    if !r.status.allows(asked) {
        return Err(ReservationError::Finished { status: r.status, change: asked });
    }
    match change {
        Change::Reroute { reason, pickup_by } => {
            let from = r.store.clone();
            let pos = r.stores.iter().position(|s| *s == from).map_or(r.stores.len(), |p| p + 1);
            let rest = r.stores[pos.min(r.stores.len())..].to_vec();
            match first_covering(tx, &rest, &r.lines, Some(id))? {
                Some(store) => {
                    set_status(tx, id, &store, ReservationStatus::Reserved, now)?;
                    if let Some(new) = pickup_by {
                        tx.execute("UPDATE reservations SET pickup_by = $2 WHERE id = $1", &[&id, new])?;
                        r.pickup_by.clone_from(new);
                    }
                    r.store = store;
                    record(tx, pending, &r, ReservationChange::Rerouted, Some(&from), Some(reason), now)?;
                }
                // At expiry (a new pickup time was asked for) it was not collected in time: it expires.
                None if pickup_by.is_some() => {
                    set_status(tx, id, &from, ReservationStatus::Expired, now)?;
                    let why = format!("{reason}; no other store of the order can hold it");
                    record(tx, pending, &r, ReservationChange::Expired, None, Some(&why), now)?;
                }
                None => {
                    set_status(tx, id, &from, ReservationStatus::Cancelled, now)?;
                    let why = format!("{reason}; no other store of the order can fill it");
                    record(tx, pending, &r, ReservationChange::Cancelled, None, Some(&why), now)?;
                }
            }
        }
        other => {
            let reason = match other {
                Change::Cancelled { reason } => Some(reason.clone()),
                Change::Expired => Some(format!("not collected by {}", r.pickup_by)),
                _ => None,
            };
            set_status(tx, id, &r.store, asked.status_after(), now)?;
            record(tx, pending, &r, asked, None, reason.as_deref(), now)?;
        }
    }
    let after = read(tx, id)?.ok_or(ReservationError::NotFound)?;
    Ok(after)
}

impl ReservationStore for PostgresStorage {
    fn escrow_set(
        &self,
        store: &str,
        sku: &str,
        qty: i64,
        policy: Option<&EscrowPolicy>,
        now: i64,
    ) -> Result<EscrowLevel, ReservationError> {
        let (share, floor, cap) = (policy.map(|p| p.share_pct), policy.map(|p| p.floor), policy.map(|p| p.cap));
        self.tx(Mode::Write, |tx| {
            // The upsert locks the row (a reserve against it waits, or is waited for); the sum read after it is
            // the sum at COMMIT. A refusal rolls the upsert back.
            tx.execute(
                "INSERT INTO escrow (store, sku, qty, updated_at, share_pct, floor, cap)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (store, sku) DO UPDATE SET qty = EXCLUDED.qty, updated_at = EXCLUDED.updated_at,
                     share_pct = EXCLUDED.share_pct, floor = EXCLUDED.floor, cap = EXCLUDED.cap",
                &[&store, &sku, &qty, &now, &share, &floor, &cap],
            )?;
            let held = reserved(tx, store, sku)?;
            if qty < held {
                return Err(ReservationError::EscrowBelowReserved { reserved: held });
            }
            Ok(EscrowLevel { escrow: qty, reserved: held })
        })
    }

    fn escrow_policies(&self) -> Result<Vec<PolicyEscrow>, StorageError> {
        self.tx(Mode::Snapshot, |tx| {
            let rows = tx.query(
                "SELECT store, sku, qty, share_pct, floor, cap FROM escrow WHERE share_pct IS NOT NULL
                 ORDER BY store, sku",
                &[],
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let (store, sku): (String, String) = (r.get(0), r.get(1));
                let policy = EscrowPolicy { share_pct: r.get(3), floor: r.get(4), cap: r.get(5) };
                let held = reserved(tx, &store, &sku)?;
                out.push(PolicyEscrow { store, sku, policy, level: EscrowLevel { escrow: r.get(2), reserved: held } });
            }
            Ok(out)
        })
    }

    fn escrow_follow(
        &self,
        store: &str,
        sku: &str,
        policy: &EscrowPolicy,
        qty: i64,
        now: i64,
    ) -> Result<Option<EscrowLevel>, StorageError> {
        self.tx(Mode::Write, |tx| {
            // Locked, as escrow_set and a reserve take it: the policy compared and the sum read stay true.
            let stored = tx
                .query_opt(
                    "SELECT share_pct, floor, cap FROM escrow WHERE store = $1 AND sku = $2 AND share_pct IS NOT NULL
                     FOR UPDATE",
                    &[&store, &sku],
                )?
                .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2)));
            if stored != Some((policy.share_pct, policy.floor, policy.cap)) {
                return Ok(None);
            }
            let held = reserved(tx, store, sku)?;
            let escrow = qty.max(held);
            tx.execute(
                "UPDATE escrow SET qty = $3, updated_at = $4 WHERE store = $1 AND sku = $2 AND qty <> $3",
                &[&store, &sku, &escrow, &now],
            )?;
            Ok(Some(EscrowLevel { escrow, reserved: held }))
        })
    }

    fn escrow_levels(&self, store: &str) -> Result<BTreeMap<String, EscrowLevel>, StorageError> {
        self.tx(Mode::Snapshot, |tx| {
            let mut out: BTreeMap<String, EscrowLevel> = BTreeMap::new();
            for r in tx.query("SELECT sku, qty FROM escrow WHERE store = $1", &[&store])? {
                out.entry(r.get(0)).or_insert(EscrowLevel { escrow: 0, reserved: 0 }).escrow = r.get(1);
            }
            for r in tx.query(
                "SELECT l.sku, SUM(l.qty)::bigint FROM reservation_lines l JOIN reservations r ON r.id = l.reservation
                 WHERE r.store = $1 AND r.status IN ('reserved', 'picked') GROUP BY l.sku",
                &[&store],
            )? {
                out.entry(r.get(0)).or_insert(EscrowLevel { escrow: 0, reserved: 0 }).reserved = r.get(1);
            }
            Ok(out)
        })
    }

    fn reserve(&self, r: &NewReservation, now: i64) -> Result<Reserved, ReservationError> {
        self.tx(Mode::Write, |tx| {
            // The order asked before, committed by whichever instance took it.
            let existing = |tx: &mut Tx<'_, '_>| -> Result<Option<Reserved>, ReservationError> {
                let Some(row) = tx.query_opt("SELECT id FROM reservations WHERE order_id = $1", &[&r.order_id])? else {
                    return Ok(None);
                };
                let Some(stored) = read(tx, row.get(0))? else { return Err(ReservationError::NotFound) };
                let same = stored.lines == r.lines && stored.stores == r.stores && stored.pickup_by == r.pickup_by;
                if same {
                    Ok(Some(Reserved::Existing(stored)))
                } else {
                    Err(ReservationError::OrderConflict(r.order_id.clone()))
                }
            };
            if let Some(answer) = existing(tx)? {
                return Ok(answer);
            }
            let Some(store) = first_covering(tx, &r.stores, &r.lines, None)? else {
                return Ok(Reserved::Unavailable);
            };
            let inserted = tx.execute(
                "INSERT INTO reservations (id, order_id, stores, pickup_by, store, status, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, 'reserved', $6, $6) ON CONFLICT (order_id) DO NOTHING",
                &[&r.id, &r.order_id, &r.stores, &r.pickup_by, &store, &now],
            )?;
            if inserted == 0 {
                // Another instance reserved this order_id meanwhile (this insert waited for its COMMIT): answer
                // what it made. Nothing of this transaction was written.
                return existing(tx)?.ok_or(ReservationError::NotFound);
            }
            let skus: Vec<&str> = r.lines.keys().map(String::as_str).collect();
            let qtys: Vec<i64> = r.lines.values().copied().collect();
            tx.execute(
                "INSERT INTO reservation_lines (reservation, sku, qty)
                 SELECT $1, u.sku, u.qty FROM UNNEST($2::text[], $3::bigint[]) AS u(sku, qty)",
                &[&r.id, &skus, &qtys],
            )?;
            let made = read(tx, r.id)?.ok_or(ReservationError::NotFound)?;
            let mut pending = Vec::new();
            record(tx, &mut pending, &made, ReservationChange::Reserved, None, None, now)?;
            let made = read(tx, r.id)?.ok_or(ReservationError::NotFound)?;
            flush(tx, pending, now)?;
            Ok(Reserved::Created(made))
        })
    }

    fn reservation(&self, id: Uuid) -> Result<Option<Reservation>, StorageError> {
        self.tx(Mode::Snapshot, |tx| Ok(read(tx, id)?))
    }

    fn change(&self, id: Uuid, change: &Change, now: i64) -> Result<Reservation, ReservationError> {
        self.tx(Mode::Write, |tx| {
            let mut pending = Vec::new();
            let after = apply(tx, &mut pending, id, change, now)?;
            flush(tx, pending, now)?;
            Ok(after)
        })
    }

    fn active(&self, store: Option<&str>) -> Result<Vec<Reservation>, StorageError> {
        self.tx(Mode::Snapshot, |tx| {
            let ids: Vec<Uuid> = tx
                .query(
                    "SELECT id FROM reservations WHERE status IN ('reserved', 'picked')
                       AND ($1::text IS NULL OR store = $1::text)
                     ORDER BY created_at, id",
                    &[&store],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.extend(read(tx, id)?);
            }
            Ok(out)
        })
    }

    fn consume_till_events(&self, limit: usize, now: i64) -> Result<Consumed, StorageError> {
        self.tx(Mode::Write, |tx| {
            // Locked: a second instance waits here and then starts from where this one left the cursor.
            let cursor: i64 = tx.query_one("SELECT hub_pos FROM reservation_cursor FOR UPDATE", &[])?.get(0);
            // Positions are handed out in COMMIT order, so every event up to the newest one visible now is
            // visible to the statements below too: reading up to `head`, no more, skips nothing.
            let head: i64 = tx.query_one("SELECT COALESCE(MAX(hub_pos), 0)::bigint FROM events", &[])?.get(0);
            let rows: Vec<(i64, String, String)> = tx
                .query(
                    "SELECT hub_pos, kind, body FROM events WHERE hub_pos > $1 AND hub_pos <= $2 AND till <> $3
                       AND (kind IN ('reservation_pick', 'reservation_cancel')
                            OR (kind = 'sale' AND body LIKE '%\"reservation_id\"%'))
                     ORDER BY hub_pos LIMIT $4",
                    &[&cursor, &head, &HUB_TILL, &limit_of(limit)],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            let mut out = Consumed { changed: Vec::new(), read: rows.len() };
            let mut pending = Vec::new();
            for (_, kind, body) in &rows {
                let Some((id, change)) = till_action(kind, body) else { continue };
                match apply(tx, &mut pending, id, &change, now) {
                    Ok(r) => out.changed.push(r),
                    Err(ReservationError::Storage(e)) => return Err(e),
                    // Unknown, finished, or a change its status does not allow: the till's record stands, nothing
                    // moves (apply refuses before it writes).
                    Err(_) => {}
                }
            }
            // Everything up to `head` was looked at, unless the page was full.
            let moved_to = if rows.len() >= limit { rows.last().map_or(cursor, |r| r.0) } else { head.max(cursor) };
            tx.execute("UPDATE reservation_cursor SET hub_pos = $1", &[&moved_to])?;
            flush(tx, pending, now)?;
            Ok(out)
        })
    }
}
