//! [`ReservationStore`] for [`SqliteStorage`] (it shares the writer connection and the reader pool of
//! `conn.rs`). Every write runs in `BEGIN IMMEDIATE`: the sums checked against the escrow are still true at
//! COMMIT, across every process on the file. See `storage/reservations.rs` for the tables and the invariant.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use storesync_shared::canonical::{ChainInput, event_hash};
use storesync_shared::event::EventKind;
use storesync_shared::genesis_hash;
use storesync_shared::reservation::{ReservationChange, ReservationStatus};
use uuid::Uuid;

use super::conn::{SqliteStorage, lock, to_i64, to_u64};
use crate::storage::error::StorageError;
use crate::storage::reservations::{
    Change, Consumed, EscrowLevel, EscrowPolicy, HUB_TILL, HistoryEntry, NewReservation, PolicyEscrow, Reservation,
    ReservationError, ReservationStore, Reserved, change_kind, event_body, till_action,
};

impl From<rusqlite::Error> for ReservationError {
    fn from(err: rusqlite::Error) -> Self {
        ReservationError::Storage(err.into())
    }
}

/// Units of `sku` held by `store`'s active reservations, optionally leaving one reservation out.
fn reserved(conn: &Connection, store: &str, sku: &str, except: Option<&str>) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "SELECT COALESCE(SUM(l.qty), 0) FROM reservation_lines l JOIN reservations r ON r.id = l.reservation
         WHERE r.store = ?1 AND l.sku = ?2 AND r.status IN ('reserved', 'picked') AND r.id IS NOT ?3",
    )?
    .query_row(params![store, sku, except], |r| r.get(0))
}

fn escrow(conn: &Connection, store: &str, sku: &str) -> rusqlite::Result<i64> {
    Ok(conn
        .prepare_cached("SELECT qty FROM escrow WHERE store = ?1 AND sku = ?2")?
        .query_row(params![store, sku], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Whether `store`'s unreserved escrow covers every line (not counting reservation `except`).
fn covers(
    conn: &Connection,
    store: &str,
    lines: &BTreeMap<String, i64>,
    except: Option<&str>,
) -> rusqlite::Result<bool> {
    for (sku, qty) in lines {
        if escrow(conn, store, sku)? - reserved(conn, store, sku, except)? < *qty {
            return Ok(false);
        }
    }
    Ok(true)
}

fn read(conn: &Connection, id: &str) -> rusqlite::Result<Option<Reservation>> {
    let row = conn
        .prepare_cached(
            "SELECT order_id, stores, pickup_by, store, status, created_at, updated_at FROM reservations WHERE id = ?1",
        )?
        .query_row(params![id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })
        .optional()?;
    let Some((order_id, stores, pickup_by, store, status, created_at, updated_at)) = row else {
        return Ok(None);
    };
    let lines = conn
        .prepare_cached("SELECT sku, qty FROM reservation_lines WHERE reservation = ?1 ORDER BY sku")?
        .query_map(params![id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    let history = conn
        .prepare_cached(
            "SELECT change, store, reason, at, event_id FROM reservation_history WHERE reservation = ?1 ORDER BY n",
        )?
        .query_map(params![id], |r| {
            let change: String = r.get(0)?;
            let event_id: String = r.get(4)?;
            Ok(HistoryEntry {
                change: ReservationChange::parse(&change).unwrap_or(ReservationChange::Reserved),
                store: r.get(1)?,
                reason: r.get(2)?,
                at: r.get(3)?,
                event_id: Uuid::parse_str(&event_id).unwrap_or_default(),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Reservation {
        reservation_id: Uuid::parse_str(id).unwrap_or_default(),
        order_id,
        store,
        status: ReservationStatus::parse(&status).unwrap_or(ReservationStatus::Cancelled),
        lines,
        stores: serde_json::from_str(&stores).unwrap_or_default(),
        pickup_by,
        created_at,
        updated_at,
        history,
    }))
}

/// Writes one state change: the history row, the event in the store's [`HUB_TILL`] chain, and its outbox row.
/// Runs inside the caller's transaction.
///
/// The chain head is the row of `(store, HUB_TILL)` with the highest seq: `BEGIN IMMEDIATE` makes this the only
/// writer. (The PostgreSQL backend locks a chain-head row instead; see `storage/postgres/reservations.rs`.)
fn record(
    conn: &Connection,
    r: &Reservation,
    change: ReservationChange,
    from_store: Option<&str>,
    reason: Option<&str>,
    now: i64,
) -> Result<(), ReservationError> {
    let (occurred_at, body) = event_body(r, change, from_store, reason, now)?;
    // The event goes to the chain of the store it concerns: for a reroute, the store it left.
    let store = from_store.unwrap_or(&r.store);
    let head: Option<(i64, String)> = conn
        .prepare_cached("SELECT seq, hash FROM events WHERE store = ?1 AND till = ?2 ORDER BY seq DESC LIMIT 1")?
        .query_row(params![store, HUB_TILL], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let (prev_seq, prev_hash) = head.unwrap_or_else(|| (0, genesis_hash(store, HUB_TILL)));
    let seq = to_u64(prev_seq) + 1;
    let event_id = Uuid::new_v4();
    let kind = EventKind::of_reservation(change);
    let hash = event_hash(&ChainInput {
        store,
        till: HUB_TILL,
        seq,
        event_id,
        kind,
        body: body.as_bytes(),
        prev_hash: &prev_hash,
    });
    conn.prepare_cached(
        "INSERT INTO events (store, till, seq, event_id, kind, occurred_at, body, prev_hash, hash, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        store,
        HUB_TILL,
        to_i64(seq),
        event_id.to_string(),
        kind.as_str(),
        occurred_at,
        body,
        prev_hash,
        hash,
        now
    ])?;
    conn.prepare_cached("INSERT INTO outbox (hub_pos) VALUES (?1)")?.execute(params![conn.last_insert_rowid()])?;
    let id = r.reservation_id.to_string();
    conn.prepare_cached(
        "INSERT INTO reservation_history (reservation, n, change, store, reason, at, event_id)
         VALUES (?1, (SELECT COUNT(*) FROM reservation_history WHERE reservation = ?1), ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![id, change.as_str(), r.store, reason, now, event_id.to_string()])?;
    Ok(())
}

fn set_status(conn: &Connection, id: &str, store: &str, status: ReservationStatus, now: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE reservations SET store = ?2, status = ?3, updated_at = ?4 WHERE id = ?1")?
        .execute(params![id, store, status.as_str(), now])?;
    Ok(())
}

impl ReservationStore for SqliteStorage {
    fn escrow_set(
        &self,
        store: &str,
        sku: &str,
        qty: i64,
        policy: Option<&EscrowPolicy>,
        now: i64,
    ) -> Result<EscrowLevel, ReservationError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let held = reserved(&tx, store, sku, None)?;
        if qty < held {
            return Err(ReservationError::EscrowBelowReserved { reserved: held });
        }
        let (share, floor, cap) = (policy.map(|p| p.share_pct), policy.map(|p| p.floor), policy.map(|p| p.cap));
        tx.execute(
            "INSERT INTO escrow (store, sku, qty, updated_at, share_pct, floor, cap) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (store, sku) DO UPDATE SET qty = ?3, updated_at = ?4, share_pct = ?5, floor = ?6, cap = ?7",
            params![store, sku, qty, now, share, floor, cap],
        )?;
        tx.commit()?;
        Ok(EscrowLevel { escrow: qty, reserved: held })
    }

    fn escrow_policies(&self) -> Result<Vec<PolicyEscrow>, StorageError> {
        self.with_reader(|conn| {
            let tx = conn.unchecked_transaction()?;
            let rows: Vec<(String, String, i64, EscrowPolicy)> = tx
                .prepare_cached(
                    "SELECT store, sku, qty, share_pct, floor, cap FROM escrow WHERE share_pct IS NOT NULL
                     ORDER BY store, sku",
                )?
                .query_map([], |r| {
                    let policy = EscrowPolicy { share_pct: r.get(3)?, floor: r.get(4)?, cap: r.get(5)? };
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, policy))
                })?
                .collect::<Result<_, _>>()?;
            let mut out = Vec::with_capacity(rows.len());
            for (store, sku, escrow, policy) in rows {
                let held = reserved(&tx, &store, &sku, None)?;
                out.push(PolicyEscrow { store, sku, policy, level: EscrowLevel { escrow, reserved: held } });
            }
            tx.finish()?;
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
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stored: Option<(i64, i64, i64)> = tx
            .query_row(
                "SELECT share_pct, floor, cap FROM escrow WHERE store = ?1 AND sku = ?2 AND share_pct IS NOT NULL",
                params![store, sku],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if stored != Some((policy.share_pct, policy.floor, policy.cap)) {
            return Ok(None);
        }
        let held = reserved(&tx, store, sku, None)?;
        let escrow = qty.max(held);
        tx.execute(
            "UPDATE escrow SET qty = ?3, updated_at = ?4 WHERE store = ?1 AND sku = ?2 AND qty <> ?3",
            params![store, sku, escrow, now],
        )?;
        tx.commit()?;
        Ok(Some(EscrowLevel { escrow, reserved: held }))
    }

    fn escrow_levels(&self, store: &str) -> Result<BTreeMap<String, EscrowLevel>, StorageError> {
        self.with_reader(|conn| {
            let tx = conn.unchecked_transaction()?;
            let mut out: BTreeMap<String, EscrowLevel> = BTreeMap::new();
            {
                let mut stmt = tx.prepare_cached("SELECT sku, qty FROM escrow WHERE store = ?1")?;
                for row in stmt.query_map(params![store], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                    let (sku, qty) = row?;
                    out.entry(sku).or_insert(EscrowLevel { escrow: 0, reserved: 0 }).escrow = qty;
                }
                let mut stmt = tx.prepare_cached(
                    "SELECT l.sku, SUM(l.qty) FROM reservation_lines l JOIN reservations r ON r.id = l.reservation
                     WHERE r.store = ?1 AND r.status IN ('reserved', 'picked') GROUP BY l.sku",
                )?;
                for row in stmt.query_map(params![store], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                    let (sku, n) = row?;
                    out.entry(sku).or_insert(EscrowLevel { escrow: 0, reserved: 0 }).reserved = n;
                }
            }
            tx.finish()?;
            Ok(out)
        })
    }

    fn reserve(&self, r: &NewReservation, now: i64) -> Result<Reserved, ReservationError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing: Option<String> = tx
            .query_row("SELECT id FROM reservations WHERE order_id = ?1", params![r.order_id], |row| row.get(0))
            .optional()?;
        if let Some(id) = existing {
            let Some(stored) = read(&tx, &id)? else { return Err(ReservationError::NotFound) };
            let same = stored.lines == r.lines && stored.stores == r.stores && stored.pickup_by == r.pickup_by;
            return if same {
                Ok(Reserved::Existing(stored))
            } else {
                Err(ReservationError::OrderConflict(r.order_id.clone()))
            };
        }
        let mut at = None;
        for store in &r.stores {
            if covers(&tx, store, &r.lines, None)? {
                at = Some(store.clone());
                break;
            }
        }
        let Some(store) = at else { return Ok(Reserved::Unavailable) };
        let id = r.id.to_string();
        tx.execute(
            "INSERT INTO reservations (id, order_id, stores, pickup_by, store, status, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'reserved', ?6, ?6)",
            params![id, r.order_id, super::conn::json_text(&r.stores), r.pickup_by, store, now],
        )?;
        for (sku, qty) in &r.lines {
            tx.execute(
                "INSERT INTO reservation_lines (reservation, sku, qty) VALUES (?1, ?2, ?3)",
                params![id, sku, qty],
            )?;
        }
        let made = read(&tx, &id)?.ok_or(ReservationError::NotFound)?;
        record(&tx, &made, ReservationChange::Reserved, None, None, now)?;
        let made = read(&tx, &id)?.ok_or(ReservationError::NotFound)?;
        tx.commit()?;
        Ok(Reserved::Created(made))
    }

    fn reservation(&self, id: Uuid) -> Result<Option<Reservation>, StorageError> {
        self.with_reader(|conn| {
            let tx = conn.unchecked_transaction()?;
            let r = read(&tx, &id.to_string())?;
            tx.finish()?;
            Ok(r)
        })
    }

    fn change(&self, id: Uuid, change: &Change, now: i64) -> Result<Reservation, ReservationError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let after = apply(&tx, id, change, now)?;
        tx.commit()?;
        Ok(after)
    }

    fn active(&self, store: Option<&str>) -> Result<Vec<Reservation>, StorageError> {
        self.with_reader(|conn| {
            let tx = conn.unchecked_transaction()?;
            let ids: Vec<String> = tx
                .prepare_cached(
                    "SELECT id FROM reservations WHERE status IN ('reserved', 'picked') AND (?1 IS NULL OR store = ?1)
                     ORDER BY created_at, id",
                )?
                .query_map(params![store], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.extend(read(&tx, &id)?);
            }
            tx.finish()?;
            Ok(out)
        })
    }

    fn consume_till_events(&self, limit: usize, now: i64) -> Result<Consumed, StorageError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let cursor: i64 = tx
            .query_row("SELECT hub_pos FROM reservation_cursor WHERE id = 1", [], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        let head: i64 = tx.query_row("SELECT COALESCE(MAX(hub_pos), 0) FROM events", [], |r| r.get(0))?;
        let rows: Vec<(i64, String, String)> = tx
            .prepare_cached(
                "SELECT hub_pos, kind, body FROM events WHERE hub_pos > ?1 AND till <> ?2
                   AND (kind IN ('reservation_pick', 'reservation_cancel')
                        OR (kind = 'sale' AND body LIKE '%\"reservation_id\"%'))
                 ORDER BY hub_pos LIMIT ?3",
            )?
            .query_map(params![cursor, HUB_TILL, i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?;
        let mut out = Consumed { changed: Vec::new(), read: rows.len() };
        for (_, kind, body) in &rows {
            let Some((id, change)) = till_action(kind, body) else { continue };
            match apply(&tx, id, &change, now) {
                Ok(r) => out.changed.push(r),
                Err(ReservationError::Storage(e)) => return Err(e),
                // Unknown, finished, or a change its status does not allow: the till's record stands, nothing moves.
                Err(_) => {}
            }
        }
        // Everything up to the newest stored event was looked at, unless the page was full.
        let moved_to = if rows.len() >= limit { rows.last().map_or(cursor, |r| r.0) } else { head.max(cursor) };
        tx.execute(
            "INSERT INTO reservation_cursor (id, hub_pos) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET hub_pos = ?1",
            params![moved_to],
        )?;
        tx.commit()?;
        Ok(out)
    }
}

/// Applies one change inside the caller's transaction.
fn apply(tx: &Connection, id: Uuid, change: &Change, now: i64) -> Result<Reservation, ReservationError> {
    let key = id.to_string();
    let Some(mut r) = read(tx, &key)? else { return Err(ReservationError::NotFound) };
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
            let mut to = None;
            for store in &r.stores[pos.min(r.stores.len())..] {
                if covers(tx, store, &r.lines, Some(&key))? {
                    to = Some(store.clone());
                    break;
                }
            }
            match to {
                Some(store) => {
                    set_status(tx, &key, &store, ReservationStatus::Reserved, now)?;
                    if let Some(new) = pickup_by {
                        tx.prepare_cached("UPDATE reservations SET pickup_by = ?2 WHERE id = ?1")?
                            .execute(params![key, new])?;
                        r.pickup_by.clone_from(new);
                    }
                    r.store = store;
                    record(tx, &r, ReservationChange::Rerouted, Some(&from), Some(reason), now)?;
                }
                // At expiry (a new pickup time was asked for) it was not collected in time: it expires.
                None if pickup_by.is_some() => {
                    set_status(tx, &key, &from, ReservationStatus::Expired, now)?;
                    let why = format!("{reason}; no other store of the order can hold it");
                    record(tx, &r, ReservationChange::Expired, None, Some(&why), now)?;
                }
                None => {
                    set_status(tx, &key, &from, ReservationStatus::Cancelled, now)?;
                    let why = format!("{reason}; no other store of the order can fill it");
                    record(tx, &r, ReservationChange::Cancelled, None, Some(&why), now)?;
                }
            }
        }
        other => {
            let reason = match other {
                Change::Cancelled { reason } => Some(reason.clone()),
                Change::Expired => Some(format!("not collected by {}", r.pickup_by)),
                _ => None,
            };
            set_status(tx, &key, &r.store, asked.status_after(), now)?;
            record(tx, &r, asked, None, reason.as_deref(), now)?;
        }
    }
    let after = read(tx, &key)?.ok_or(ReservationError::NotFound)?;
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_passes_the_reservation_conformance_suite() {
        let dirs = std::cell::RefCell::new(Vec::new());
        crate::storage::reservations::conformance::run_all(|| {
            let dir = tempfile::tempdir().unwrap();
            let s = SqliteStorage::open(&dir.path().join("hub.db")).unwrap();
            dirs.borrow_mut().push(dir);
            s
        });
    }

    /// Two hub instances on one file, reserving the last units at once: the database, not a process lock, decides.
    #[test]
    fn two_instances_never_reserve_beyond_escrow() {
        use crate::storage::reservations::conformance::{NOW, order};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let a = SqliteStorage::open(&path).unwrap();
        let b = SqliteStorage::open(&path).unwrap();
        a.escrow_set("S1", "A", 10, None, NOW).unwrap();
        let made = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for (i, s) in [&a, &b, &a, &b].into_iter().enumerate() {
                let made = &made;
                scope.spawn(move || {
                    for n in 0..10 {
                        let o = order(&format!("W-{i}-{n}"), &[("A", 1)], &["S1"]);
                        if matches!(s.reserve(&o, NOW).unwrap(), Reserved::Created(_)) {
                            made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        assert_eq!(made.into_inner(), 10);
        assert_eq!(b.escrow_levels("S1").unwrap()["A"], EscrowLevel { escrow: 10, reserved: 10 });
    }
}
