//! Tests of [`crate::storage::reservations::ReservationStore`] on PostgreSQL: the conformance suite and what only
//! several instances on one database can show (the invariant and exactly-once under concurrency, migration 2).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use storesync_shared::canonical::{ChainInput, event_hash};
use storesync_shared::event::{EventBody, EventKind};
use storesync_shared::genesis_hash;
use storesync_shared::reservation::ReservationChange;
use uuid::Uuid;

use super::conn::PostgresStorage;
use super::scratch::ScratchSchema;
use super::settings::PgSettings;
use super::tests::{instance, retrying, test_pg};
use crate::storage::error::StorageError;
use crate::storage::prelude::*;
use crate::storage::reservations::conformance::{
    self, NOW, all_events, conformance_act, conformance_sale, order, till_entry,
};
use crate::storage::reservations::*;
use crate::storage::{NewEnrollment, TillId};

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
        let (seq, prev) = heads.entry(e.store.clone()).or_insert_with(|| (0, genesis_hash(&e.store, HUB_TILL))).clone();
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
            let held: i64 = active.iter().filter(|r| r.store == store).filter_map(|r| r.lines.get(sku)).sum::<i64>();
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
            let req = crate::storage::ingest::IngestBatch {
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
