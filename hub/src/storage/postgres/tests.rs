//! Tests of the PostgreSQL backend: the conformance suite and what only this backend can show.

use std::collections::HashSet;
use std::sync::{Barrier, Mutex};

use storesync_shared::canonical::{ChainInput, event_hash};
use storesync_shared::event::EventKind;
use storesync_shared::genesis_hash;

use super::conn::PostgresStorage;
use super::schema::MIGRATIONS;
use super::scratch::ScratchSchema;
use super::settings::{PgSettings, redact_url};
use crate::storage::conformance::{self, chain, enrolled_with_events, journal, upload, webhook};
use crate::storage::prelude::*;
use crate::storage::{DocLoad, DocWrite, IngestError, StorageError};

/// The database of `STORESYNC_TEST_PG`. Without it the test is skipped and says so on stderr, unless
/// `STORESYNC_REQUIRE_ALL=1` (CI), where it fails (as `storesync_tests::proc::require_tool` does for e2e tests).
pub(super) fn test_pg() -> Option<String> {
    if let Some(url) = std::env::var("STORESYNC_TEST_PG").ok().filter(|u| !u.trim().is_empty()) {
        return Some(url);
    }
    if std::env::var("STORESYNC_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("PostgreSQL (STORESYNC_TEST_PG) is required (STORESYNC_REQUIRE_ALL=1) but not set; .ci/run sets it");
    }
    eprintln!(
        "SKIPPED: PostgreSQL backend tests: STORESYNC_TEST_PG is not set (set STORESYNC_REQUIRE_ALL=1 to make this a failure)"
    );
    None
}

/// One hub instance's storage on `schema`: a pool of its own.
pub(super) fn instance(schema: &ScratchSchema, pool_size: u32) -> PostgresStorage {
    PostgresStorage::open(&PgSettings { url: schema.url(), pool_size }).unwrap()
}

/// Runs one conformance file on fresh scratch schemas of `STORESYNC_TEST_PG`, one per case (skipped without it).
fn on_fresh_schemas(run: impl FnOnce(&mut dyn FnMut() -> PostgresStorage)) {
    let Some(url) = test_pg() else { return };
    let mut schemas = Vec::new();
    run(&mut || {
        let schema = ScratchSchema::create(&url).unwrap();
        let s = instance(&schema, 2);
        schemas.push(schema);
        s
    });
}

#[test]
fn postgres_passes_the_ingest_conformance_suite() {
    on_fresh_schemas(|fresh| conformance::ingest::run(fresh));
}

#[test]
fn postgres_passes_the_docs_conformance_suite() {
    on_fresh_schemas(|fresh| conformance::docs::run(fresh));
}

#[test]
fn postgres_passes_the_enrolment_conformance_suite() {
    on_fresh_schemas(|fresh| conformance::enrolment::run(fresh));
}

#[test]
fn postgres_passes_the_releases_conformance_suite() {
    on_fresh_schemas(|fresh| conformance::releases::run(fresh));
}

#[test]
fn postgres_passes_the_outbox_conformance_suite() {
    on_fresh_schemas(|fresh| conformance::outbox::run(fresh));
}

#[test]
fn migrations_run_once_when_instances_start_together() {
    let Some(url) = test_pg() else { return };
    let schema = ScratchSchema::create(&url).unwrap();
    let start = Barrier::new(4);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                start.wait();
                instance(&schema, 1)
            });
        }
    });
    let s = instance(&schema, 1); // and once more, on a migrated schema
    let versions = s
        .with_conn(|cx| Ok(cx.query("SELECT version FROM schema_migrations ORDER BY version", &[])?))
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i32>(0))
        .collect::<Vec<_>>();
    assert_eq!(versions, MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>());
    enrolled_with_events(&s, 3);
    assert_eq!(s.list_events(None, 0, 10).unwrap().len(), 3);
    let settings = s
        .with_conn(|cx| {
            let lock: String = cx.query_one("SHOW lock_timeout", &[])?.get(0);
            let idle: String = cx.query_one("SHOW idle_in_transaction_session_timeout", &[])?.get(0);
            let path: String = cx.query_one("SHOW search_path", &[])?.get(0);
            Ok((lock, idle, path))
        })
        .unwrap();
    assert_eq!(settings, ("5s".into(), "1min".into(), schema.name().to_owned()), "the URL's options are kept too");
}

#[test]
fn a_schema_migrated_by_a_newer_hub_is_refused() {
    let Some(url) = test_pg() else { return };
    let schema = ScratchSchema::create(&url).unwrap();
    let s = instance(&schema, 1);
    s.with_conn(|cx| Ok(cx.execute("INSERT INTO schema_migrations (version, name) VALUES (999, 'future')", &[])?))
        .unwrap();
    let err = PostgresStorage::open(&PgSettings { url: schema.url(), pool_size: 1 }).unwrap_err();
    assert!(err.to_string().contains("newer than this hub"), "{err}");
}

#[test]
fn passwords_never_reach_a_log() {
    let check = |url: &str, want: &str| assert_eq!(redact_url(url), want, "{url}");
    check("postgres://hub:s3cret@db.example:5432/fleet", "postgres://hub:***@db.example:5432/fleet");
    check("postgresql://hub@db/fleet?sslmode=disable", "postgresql://hub@db/fleet?sslmode=disable");
    check("postgres://hub:p%40ss@db", "postgres://hub:***@db");
    check(
        "postgres://db/fleet?user=hub&password=x&application_name=a",
        "postgres://db/fleet?user=hub&password=***&application_name=a",
    );
    check("host=db user=hub password=s3cret dbname=fleet", "host=db user=hub password=***");
    check("host=db user=hub dbname=fleet", "host=db user=hub dbname=fleet");
    let settings = PgSettings::new("postgres://hub:s3cret@db/fleet");
    assert!(!format!("{settings:?}").contains("s3cret"));
    let err = PostgresStorage::open(&PgSettings::new("postgres://hub:s3cret@127.0.0.1:1/x")).unwrap_err();
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

/// Runs `f` until it is not refused as retryable (a real hub answers 503 and the till sends again).
pub(super) fn retrying<T, E: std::fmt::Debug>(
    mut f: impl FnMut() -> Result<T, E>,
    retryable: impl Fn(&E) -> bool,
) -> T {
    for _ in 0..1000 {
        match f() {
            Ok(v) => return v,
            Err(e) if retryable(&e) => std::thread::yield_now(),
            Err(e) => panic!("{e:?}"),
        }
    }
    panic!("still refused after 1000 tries");
}

#[test]
fn two_instances_given_the_same_batches_store_each_event_once() {
    let Some(url) = test_pg() else { return };
    let schema = ScratchSchema::create(&url).unwrap();
    let hubs = [instance(&schema, 4), instance(&schema, 4)];
    let till = enrolled_with_events(&hubs[0], 0);
    let events = chain(&till, 600, 0);
    let batches: Vec<_> = events.chunks(50).map(|c| upload(journal(), c)).collect();
    // Six tills' worth of senders (three per instance), each sending every batch in order, all at once.
    let acks = Mutex::new(Vec::new());
    let start = Barrier::new(6);
    std::thread::scope(|scope| {
        for t in 0..6 {
            let (hub, batches, acks, start, till) = (&hubs[t % 2], &batches, &acks, &start, &till);
            scope.spawn(move || {
                start.wait();
                for (i, batch) in batches.iter().enumerate() {
                    let ack = retrying(
                        || hub.append_batch(till, batch, 1_800_000_000),
                        |e| matches!(e, IngestError::Storage(s) if s.is_retryable()),
                    );
                    acks.lock().unwrap().push((i, ack.acked_through));
                }
            });
        }
    });
    // Every sender was answered for every batch, acknowledged through its end at least: one stored it, the
    // rest were told it is stored (through wherever the till stood by then).
    let acks = acks.into_inner().unwrap();
    assert_eq!(acks.len(), 6 * batches.len());
    assert!(acks.iter().all(|(i, through)| *through >= (*i as u64 + 1) * 50), "{acks:?}");
    // Each event once, in chain order, at hub positions 1..=600: positions are taken only by the transaction
    // that stores a batch, so no batch was stored twice (nor stored and rolled back).
    let stored = hubs[1].list_events(None, 0, 1000).unwrap();
    let got: Vec<(i64, u64)> = stored.iter().map(|e| (e.hub_pos, e.seq)).collect();
    assert_eq!(got, (1..=600).map(|n| (n, n as u64)).collect::<Vec<_>>());
    let mut prev = genesis_hash(&till.store, &till.till);
    for (e, sent) in stored.iter().zip(&events) {
        let kind = EventKind::parse(&e.kind).unwrap();
        let hash = event_hash(&ChainInput {
            store: &e.store,
            till: &e.till,
            seq: e.seq,
            event_id: e.event_id,
            kind,
            body: e.body.as_bytes(),
            prev_hash: &prev,
        });
        assert_eq!((hash.as_str(), e.event_id), (sent.hash.as_str(), sent.event_id), "chain broken at {}", e.seq);
        prev = hash;
    }
    let head = hubs[0].till_state(&till).unwrap().unwrap();
    assert_eq!((head.hub_seq, head.last_hash.as_str()), (600, events[599].hash.as_str()));
    let outbox = hubs[0].outbox_after(&webhook("all"), 0, 1000).unwrap();
    assert_eq!(outbox.iter().map(|o| o.event.seq).collect::<Vec<_>>(), (1..=600).collect::<Vec<_>>());
    assert!(hubs[0].list_stores().unwrap()[0].tills[0].chain_ok);
}

#[test]
fn concurrent_document_writes_on_two_instances_lose_nothing() {
    let Some(url) = test_pg() else { return };
    let schema = ScratchSchema::create(&url).unwrap();
    let hubs = [instance(&schema, 4), instance(&schema, 4)];
    let (threads, writes) = (6, 15);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let hub = &hubs[t % 2];
            scope.spawn(move || {
                // Half the writers change both stores in one transaction, in opposite orders.
                let stores: &[&str] = match t % 3 {
                    0 => &["S1"],
                    1 => &["S1", "S2"],
                    _ => &["S2", "S1"],
                };
                for k in 0..writes {
                    retrying(
                        || {
                            let ws: Vec<DocWrite> = stores
                                .iter()
                                .map(|store| {
                                    let meta = hub.doc_load(store, None).unwrap().meta();
                                    DocWrite {
                                        store: (*store).into(),
                                        epoch: meta.epoch,
                                        base_version: meta.version,
                                        chunk: format!("{t}/{k}").into_bytes(),
                                        changes: 1,
                                        movements: vec![crate::storage::docs::NewMovement {
                                            sku: "SKU".into(),
                                            delta: 1,
                                            reason: "receipt".into(),
                                        }],
                                        ..Default::default()
                                    }
                                })
                                .collect();
                            hub.doc_apply(&ws, 1_800_000_000)
                        },
                        |e| matches!(e, StorageError::Conflict | StorageError::Busy),
                    );
                }
            });
        }
    });
    // Writers per store: S1 all six, S2 the four two-store ones.
    for (store, writers) in [("S1", threads), ("S2", 4)] {
        let n = writers * writes;
        let (totals, count) = hubs[0].movement_totals(store).unwrap();
        assert_eq!((totals.get("SKU").copied(), count), (Some(n as i64), n as u64), "{store}");
        let DocLoad::Full { meta, snapshot: None, chunks } = hubs[1].doc_load(store, None).unwrap() else {
            panic!("{store}: no fold was asked for")
        };
        assert_eq!((meta.version, meta.chunks, chunks.len()), (n as u64, n as u64, n), "{store}");
        let distinct: HashSet<&Vec<u8>> = chunks.iter().collect();
        assert_eq!(distinct.len(), n, "{store}: every write stored once");
    }
}

#[test]
fn two_instances_delivering_one_subscription_take_turns_and_move_the_cursor_once_per_batch() {
    let Some(url) = test_pg() else { return };
    let schema = ScratchSchema::create(&url).unwrap();
    let hubs = [instance(&schema, 4), instance(&schema, 4)];
    let till = enrolled_with_events(&hubs[0], 0);
    for part in chain(&till, 300, 0).chunks(100) {
        hubs[1].append_batch(&till, &upload(journal(), part), 1_800_000_000).unwrap();
    }
    let mut sub = webhook("erp");
    sub.batch_size = 7;
    hubs[0].create_subscription(&sub, 1_800_000_000).unwrap();
    // Four delivery workers, two per instance. Each delivers one batch per turn of the lease and gives it up,
    // so the lease keeps changing hands; what each "sends" is recorded while it holds the lease.
    // (worker, the positions of one batch it sent)
    let sent: Mutex<Vec<(usize, Vec<i64>)>> = Mutex::default();
    std::thread::scope(|scope| {
        for w in 0..4 {
            let (hub, sent, sub) = (&hubs[w % 2], &sent, &sub);
            scope.spawn(move || {
                let owner = format!("worker-{w}");
                let now = 1_800_000_000;
                for _ in 0..100_000 {
                    if !hub.lease_subscription("erp", &owner, now, now + 60).unwrap() {
                        std::thread::yield_now();
                        continue;
                    }
                    let cursor = hub.subscription("erp").unwrap().unwrap().cursor;
                    let batch = hub.outbox_after(sub, cursor, sub.batch_size as usize).unwrap();
                    let Some(last) = batch.last().map(|e| e.pos) else {
                        hub.release_subscription_lease("erp", &owner).unwrap();
                        return;
                    };
                    sent.lock().unwrap().push((w, batch.iter().map(|e| e.pos).collect()));
                    hub.delivered("erp", last, now).unwrap();
                    hub.release_subscription_lease("erp", &owner).unwrap();
                }
                panic!("worker {w} never saw the end of the outbox");
            });
        }
    });
    let sent = sent.lock().unwrap();
    let positions: Vec<i64> = sent.iter().flat_map(|(_, p)| p.clone()).collect();
    let all: Vec<i64> = hubs[0].outbox_after(&sub, 0, 1000).unwrap().iter().map(|e| e.pos).collect();
    assert_eq!(all.len(), 300);
    assert_eq!(positions, all, "every entry sent once, in outbox order");
    assert_eq!(sent.len(), 300usize.div_ceil(7), "one cursor move per batch");
    let workers: HashSet<usize> = sent.iter().map(|(w, _)| *w).collect();
    assert!(workers.len() > 1, "the lease changed hands: {workers:?}");
    assert_eq!(hubs[1].subscription("erp").unwrap().unwrap().cursor, *all.last().unwrap());
}
