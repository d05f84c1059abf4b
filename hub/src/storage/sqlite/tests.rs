//! Tests of the SQLite backend: the conformance suite and what only this backend can show.

use rusqlite::Connection;

use super::conn::SqliteStorage;
use crate::storage::conformance;
use crate::storage::prelude::*;

/// A factory of fresh, empty databases in one temporary directory, for a conformance file's `run`.
fn fresh(dir: &tempfile::TempDir) -> impl FnMut() -> SqliteStorage + '_ {
    let mut n = 0;
    move || {
        n += 1;
        SqliteStorage::open(&dir.path().join(format!("hub-{n}.db"))).unwrap()
    }
}

#[test]
fn sqlite_passes_the_ingest_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    conformance::ingest::run(fresh(&dir));
}

#[test]
fn sqlite_passes_the_docs_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    conformance::docs::run(fresh(&dir));
}

#[test]
fn sqlite_passes_the_enrolment_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    conformance::enrolment::run(fresh(&dir));
}

#[test]
fn sqlite_passes_the_releases_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    conformance::releases::run(fresh(&dir));
}

#[test]
fn sqlite_passes_the_outbox_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    conformance::outbox::run(fresh(&dir));
}

#[test]
fn data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    let till = {
        let s = SqliteStorage::open(&path).unwrap();
        conformance::enrolled_with_events(&s, 3)
    };
    let s = SqliteStorage::open(&path).unwrap();
    assert_eq!(s.till_state(&till).unwrap().unwrap().hub_seq, 3);
    assert_eq!(s.list_events(None, 0, 100).unwrap().len(), 3);
}

#[test]
fn a_database_from_before_the_outbox_gets_its_events_in_hub_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    {
        let s = SqliteStorage::open(&path).unwrap();
        conformance::enrolled_with_events(&s, 3);
    }
    // As a hub of the version before the outbox left it: events, and no outbox rows.
    Connection::open(&path).unwrap().execute("DELETE FROM outbox", []).unwrap();
    let s = SqliteStorage::open(&path).unwrap();
    let sub = conformance::webhook("s");
    let seqs: Vec<u64> = s.outbox_after(&sub, 0, 10).unwrap().iter().map(|e| e.event.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    drop(s);
    // Reopening again adds nothing twice.
    let s = SqliteStorage::open(&path).unwrap();
    assert_eq!(s.outbox_after(&sub, 0, 10).unwrap().len(), 3);
}

#[test]
fn opening_beside_a_live_writer_does_not_backfill_what_it_queued() {
    // `enroll-code` opens the database while `serve` takes its first upload. The live writer has an event and
    // its outbox row in an open transaction; the second open must wait for it and then find the outbox filled.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    drop(SqliteStorage::open(&path).unwrap());
    let mut live = Connection::open(&path).unwrap();
    let tx = live.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
    tx.execute(
        "INSERT INTO events (store, till, seq, event_id, kind, occurred_at, body, prev_hash, hash, received_at)
         VALUES ('S1', 'T1', 1, 'e1', 'sale', '2026-01-01T00:00:00Z', '{}', 'p', 'h', 0)",
        [],
    )
    .unwrap();
    tx.execute("INSERT INTO outbox (hub_pos) SELECT hub_pos FROM events", []).unwrap();
    let opener = std::thread::spawn(move || SqliteStorage::open(&path).map(drop));
    // Give the opener the chance to run its checks before the live commit (the old code read the empty outbox
    // here, then inserted the same position after the commit).
    std::thread::sleep(std::time::Duration::from_millis(200));
    tx.commit().unwrap();
    opener.join().unwrap().expect("the second open waits for the writer and succeeds");
    let n: i64 = live.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1);
}
