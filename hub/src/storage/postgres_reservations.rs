//! [`ReservationStore`] for [`PostgresStorage`] (a child module of `postgres.rs`, so it shares the pool, the
//! transaction-retry helper and `take_positions`). Same tables and semantics as the SQLite backend
//! (`sqlite_reservations.rs`); see `storage/reservations.rs` for the invariant.
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

use super::{Cx, Mode, PostgresStorage, TxFailure, backend, limit_of, take_positions, to_u64};
use crate::storage::StorageError;
use crate::storage::reservations::{
    Change, Consumed, EscrowLevel, EscrowPolicy, HUB_TILL, HistoryEntry, NewReservation, PolicyEscrow, Reservation,
    ReservationError, ReservationStore, Reserved, change_kind, event_body, till_action,
};

/// The tables, migration 2 (`escrow`, `reservations`, `reservation_lines`, `reservation_history` and
/// `reservation_cursor` as in SQLite; `reservation_chains` holds the head of each store's `~hub` chain and is the
/// row a writer of that chain locks).
pub(super) const SCHEMA_V2: &str = r#"
CREATE TABLE escrow (
    store TEXT NOT NULL,
    sku TEXT NOT NULL,
    qty BIGINT NOT NULL CHECK (qty >= 0),
    updated_at BIGINT NOT NULL,
    -- The policy that set it, when one did (all three or none).
    share_pct BIGINT,
    floor BIGINT,
    cap BIGINT,
    PRIMARY KEY (store, sku),
    CHECK ((share_pct IS NULL) = (floor IS NULL) AND (floor IS NULL) = (cap IS NULL))
);
CREATE TABLE reservations (
    id UUID PRIMARY KEY,
    order_id TEXT NOT NULL UNIQUE,
    stores TEXT[] NOT NULL,
    pickup_by TEXT NOT NULL,
    store TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX reservations_store_status ON reservations (store, status);
CREATE INDEX reservations_active ON reservations (created_at, id) WHERE status IN ('reserved', 'picked');
CREATE TABLE reservation_lines (
    reservation UUID NOT NULL REFERENCES reservations (id),
    sku TEXT NOT NULL,
    qty BIGINT NOT NULL,
    PRIMARY KEY (reservation, sku)
);
CREATE TABLE reservation_history (
    reservation UUID NOT NULL REFERENCES reservations (id),
    n BIGINT NOT NULL,
    change TEXT NOT NULL,
    store TEXT NOT NULL,
    reason TEXT,
    at BIGINT NOT NULL,
    event_id UUID NOT NULL,
    PRIMARY KEY (reservation, n)
);
CREATE TABLE reservation_cursor (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    hub_pos BIGINT NOT NULL DEFAULT 0
);
INSERT INTO reservation_cursor DEFAULT VALUES;
CREATE TABLE reservation_chains (
    store TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
"#;

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

type Tx<'a, 'b> = super::Tx<'a, 'b>;

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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};
    use std::sync::Mutex;

    use storesync_shared::event::EventBody;

    use super::*;
    use crate::storage::postgres::tests::{instance, retrying, test_pg};
    use crate::storage::postgres::{PgSettings, ScratchSchema};
    use crate::storage::reservations::conformance::{
        self, NOW, all_events, conformance_act, conformance_sale, order, till_entry,
    };
    use crate::storage::{NewEnrollment, Storage, TillId};

    #[test]
    fn postgres_passes_the_reservation_conformance_suite() {
        let Some(url) = test_pg() else { return };
        let mut schemas = Vec::new();
        conformance::run_all(|| {
            let schema = ScratchSchema::create(&url).unwrap();
            let s = instance(&schema, 2);
            schemas.push(schema);
            s
        });
    }

    fn busy(e: &ReservationError) -> bool {
        matches!(e, ReservationError::Storage(s) if s.is_retryable())
    }

    /// Checks each store's `~hub` chain as stored: seqs 1, 2, 3, ..., each `prev_hash` the hash before it (the
    /// genesis first), each hash recomputed from the event. Answers the event ids.
    fn check_hub_chains(s: &PostgresStorage) -> Vec<Uuid> {
        let events: Vec<crate::storage::StoredEvent> =
            s.list_events(None, 0, 100_000).unwrap().into_iter().filter(|e| e.till == HUB_TILL).collect();
        let prevs: HashMap<Uuid, String> = s
            .with_conn(|cx| {
                Ok(cx
                    .query("SELECT event_id, prev_hash FROM events WHERE till = $1", &[&HUB_TILL])?
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect())
            })
            .unwrap();
        let mut heads: HashMap<String, (u64, String)> = HashMap::new();
        for e in &events {
            let (seq, prev) =
                heads.entry(e.store.clone()).or_insert_with(|| (0, genesis_hash(&e.store, HUB_TILL))).clone();
            assert_eq!(e.seq, seq + 1, "{}: seqs follow each other", e.store);
            assert_eq!(prevs[&e.event_id], prev, "{} seq {}: prev_hash is the hash before", e.store, e.seq);
            let hash = event_hash(&ChainInput {
                store: &e.store,
                till: HUB_TILL,
                seq: e.seq,
                event_id: e.event_id,
                kind: EventKind::parse(&e.kind).unwrap(),
                body: e.body.as_bytes(),
                prev_hash: &prev,
            });
            assert_eq!(e.hash, hash, "{} seq {}", e.store, e.seq);
            heads.insert(e.store.clone(), (e.seq, hash));
        }
        events.iter().map(|e| e.event_id).collect()
    }

    /// Two hub instances on one database, each with several threads reserving random orders against small escrows
    /// at three stores, while others cancel, reroute and lower or raise an escrow: the database alone keeps every
    /// store's reservations within its escrow, writes each change's event once, and keeps each `~hub` chain whole.
    #[test]
    fn two_instances_reserving_cancelling_and_rerouting_at_once_keep_the_invariant() {
        let Some(url) = test_pg() else { return };
        let schema = ScratchSchema::create(&url).unwrap();
        let hubs = [instance(&schema, 4), instance(&schema, 4)];
        const STORES: [&str; 3] = ["S1", "S2", "S3"];
        const SKUS: [&str; 2] = ["A", "B"];
        for store in STORES {
            for sku in SKUS {
                hubs[0].escrow_set(store, sku, 4, None, NOW).unwrap();
            }
        }
        let made: Mutex<Vec<Uuid>> = Mutex::default();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let mut reservers = Vec::new();
            for t in 0..4 {
                let (hub, made) = (&hubs[t % 2], &made);
                reservers.push(scope.spawn(move || {
                    for n in 0..30 {
                        let mut lines: Vec<(&str, i64)> = Vec::new();
                        for sku in SKUS {
                            if lines.is_empty() || rand::random_bool(0.5) {
                                lines.push((sku, rand::random_range(1..=2)));
                            }
                        }
                        let mut stores: Vec<&str> = STORES.to_vec();
                        for i in (1..stores.len()).rev() {
                            stores.swap(i, rand::random_range(0..=i));
                        }
                        stores.truncate(rand::random_range(1..=3));
                        let o = order(&format!("W-{t}-{n}"), &lines, &stores);
                        if let Reserved::Created(r) = retrying(|| hub.reserve(&o, NOW), busy) {
                            made.lock().unwrap().push(r.reservation_id);
                        }
                    }
                }));
            }
            // Cancellers and rerouters on both instances, and head office moving S1's escrow of A up and down.
            for t in 0..2 {
                let (hub, made, done) = (&hubs[t % 2], &made, &done);
                scope.spawn(move || {
                    while !done.load(std::sync::atomic::Ordering::SeqCst) {
                        let Some(id) = ({
                            let m = made.lock().unwrap();
                            (!m.is_empty()).then(|| m[rand::random_range(0..m.len())])
                        }) else {
                            std::thread::yield_now();
                            continue;
                        };
                        let change = if t == 0 {
                            Change::Cancelled { reason: "customer".into() }
                        } else {
                            Change::Reroute { reason: "sold in store".into(), pickup_by: None }
                        };
                        match hub.change(id, &change, NOW + 1) {
                            Ok(_) | Err(ReservationError::Finished { .. }) => {}
                            Err(e) if busy(&e) => {}
                            Err(e) => panic!("{e:?}"),
                        }
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                });
            }
            scope.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    match hubs[1].escrow_set("S1", "A", rand::random_range(1..=5), None, NOW) {
                        Ok(_) | Err(ReservationError::EscrowBelowReserved { .. }) => {}
                        Err(e) if busy(&e) => {}
                        Err(e) => panic!("{e:?}"),
                    }
                    // What any instance reads is within the escrow at every moment, not only at the end.
                    for store in STORES {
                        for (sku, level) in hubs[0].escrow_levels(store).unwrap() {
                            assert!(level.reserved <= level.escrow, "{store}/{sku}: {level:?}");
                        }
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            });
            for r in reservers {
                r.join().unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let made = made.into_inner().unwrap();
        assert!(made.len() > 6, "some orders were reserved: {}", made.len());
        // Within the escrow, by the levels and by the reservations themselves.
        let active = hubs[1].active(None).unwrap();
        for store in STORES {
            let levels = hubs[1].escrow_levels(store).unwrap();
            for sku in SKUS {
                let held: i64 =
                    active.iter().filter(|r| r.store == store).filter_map(|r| r.lines.get(sku)).sum::<i64>();
                let level = levels.get(sku).copied().unwrap();
                assert_eq!(level.reserved, held, "{store}/{sku}");
                assert!(held <= level.escrow, "{store}/{sku}: {held} reserved, escrow {}", level.escrow);
            }
        }
        // Every change's event is in the outbox once, and nothing else of the hub's is.
        let mut recorded = BTreeSet::new();
        for id in &made {
            let r = hubs[0].reservation(*id).unwrap().unwrap();
            assert_eq!(r.history[0].change, ReservationChange::Reserved);
            for h in &r.history {
                assert!(recorded.insert(h.event_id), "one event per change");
            }
        }
        let outbox: Vec<Uuid> = hubs[0]
            .outbox_after(&all_events(), 0, 100_000)
            .unwrap()
            .iter()
            .filter(|o| o.event.till == HUB_TILL)
            .map(|o| o.event.event_id)
            .collect();
        assert_eq!(outbox.len(), recorded.len(), "each event once");
        assert_eq!(outbox.iter().copied().collect::<BTreeSet<_>>(), recorded);
        let chained = check_hub_chains(&hubs[1]);
        assert_eq!(chained.into_iter().collect::<BTreeSet<_>>(), recorded);
    }

    /// Both instances' planners consuming the same till events at once: each event is read once in all, so each
    /// till action is applied once.
    #[test]
    fn two_instances_consuming_till_events_at_once_apply_each_once() {
        let Some(url) = test_pg() else { return };
        let schema = ScratchSchema::create(&url).unwrap();
        let hubs = [instance(&schema, 3), instance(&schema, 3)];
        let till = TillId { store: "S1".into(), till: "T1".into() };
        hubs[0]
            .create_enrollment(&NewEnrollment {
                code_hash: "c".into(),
                till: till.clone(),
                created_at: NOW,
                expires_at: NOW + 60,
            })
            .unwrap();
        hubs[0].escrow_set("S1", "A", 100, None, NOW).unwrap();
        let ids: Vec<Uuid> = (0..40)
            .map(|n| match hubs[n % 2].reserve(&order(&format!("W-{n}"), &[("A", 1)], &["S1"]), NOW).unwrap() {
                Reserved::Created(r) => r.reservation_id,
                other => panic!("{other:?}"),
            })
            .collect();
        // Per reservation, by n % 4: picked; picked then collected; cancelled; collected without a pick. Plus
        // sales without a reservation in between, which are not till actions.
        let act = |id: Uuid, reason: Option<&str>| conformance_act(id, reason);
        let sale = |id: Option<Uuid>| conformance_sale(1, id);
        let mut bodies = Vec::new();
        for (n, id) in ids.iter().enumerate() {
            match n % 4 {
                0 => bodies.push(EventBody::ReservationPick(act(*id, None))),
                1 => bodies.extend([EventBody::ReservationPick(act(*id, None)), sale(Some(*id))]),
                2 => bodies.push(EventBody::ReservationCancel(act(*id, Some("customer never came")))),
                _ => bodies.extend([sale(None), sale(Some(*id))]),
            }
        }
        let actions = bodies.iter().filter(|b| !matches!(b, EventBody::Sale(s) if s.reservation_id.is_none())).count();
        let mut prev = genesis_hash("S1", "T1");
        let mut events = Vec::new();
        for (i, body) in bodies.into_iter().enumerate() {
            let e = till_entry(&till, i as u64 + 1, &prev, body);
            prev = e.hash.clone();
            events.push(e);
        }
        // Uploaded in parts, while the consumers run.
        let journal_id = Uuid::new_v4();
        let (read, changed) = (std::sync::atomic::AtomicUsize::new(0), std::sync::atomic::AtomicUsize::new(0));
        let uploaded = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            for t in 0..4 {
                let (hub, read, changed, uploaded) = (&hubs[t % 2], &read, &changed, &uploaded);
                scope.spawn(move || {
                    loop {
                        let last_round = uploaded.load(std::sync::atomic::Ordering::SeqCst);
                        let got = retrying(|| hub.consume_till_events(3, NOW), StorageError::is_retryable);
                        read.fetch_add(got.read, std::sync::atomic::Ordering::SeqCst);
                        changed.fetch_add(got.changed.len(), std::sync::atomic::Ordering::SeqCst);
                        if last_round && got.read == 0 {
                            return;
                        }
                    }
                });
            }
            for part in events.chunks(7) {
                let req = storesync_shared::wire::UploadRequest {
                    journal_id,
                    agent_version: "test".into(),
                    backlog: 0,
                    oldest_unsynced_age_s: 0,
                    last_seq: part.last().unwrap().seq,
                    events: part.to_vec(),
                };
                hubs[1].append_batch(&till, &req, NOW).unwrap();
            }
            uploaded.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        assert_eq!(read.into_inner(), actions, "every till action read once, by one instance or the other");
        // Effective changes: n%4 == 0: picked; 1: picked, collected; 2: cancelled; 3: collected.
        assert_eq!(changed.into_inner(), 50);
        for (n, id) in ids.iter().enumerate() {
            let r = hubs[0].reservation(*id).unwrap().unwrap();
            let changes: Vec<ReservationChange> = r.history.iter().map(|h| h.change).collect();
            use ReservationChange::{Cancelled, Collected, Picked, Reserved as Made};
            let want: &[ReservationChange] = match n % 4 {
                0 => &[Made, Picked],
                1 => &[Made, Picked, Collected],
                2 => &[Made, Cancelled],
                _ => &[Made, Collected],
            };
            assert_eq!(changes, want, "W-{n}");
        }
        let outbox = conformance::outbox(&hubs[0]);
        assert_eq!(outbox.len(), 40 + 50);
        assert_eq!(check_hub_chains(&hubs[0]).len(), 90);
    }

    #[test]
    fn the_reservation_tables_come_with_migration_2() {
        let Some(url) = test_pg() else { return };
        let schema = ScratchSchema::create(&url).unwrap();
        let s = PostgresStorage::open(&PgSettings { url: schema.url(), pool_size: 1 }).unwrap();
        let tables: Vec<String> = s
            .with_conn(|cx| {
                Ok(cx
                    .query(
                        "SELECT table_name::text FROM information_schema.tables
                         WHERE table_schema = current_schema() AND table_name LIKE ANY (ARRAY['escrow', 'reservation%'])
                         ORDER BY 1",
                        &[],
                    )?
                    .iter()
                    .map(|r| r.get(0))
                    .collect())
            })
            .unwrap();
        assert_eq!(
            tables,
            [
                "escrow",
                "reservation_chains",
                "reservation_cursor",
                "reservation_history",
                "reservation_lines",
                "reservations"
            ]
        );
    }
}
