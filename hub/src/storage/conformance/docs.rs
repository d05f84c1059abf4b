//! Conformance of [`crate::storage::DocStore`]: optimistic document writes, folding, compaction into epochs.

use std::collections::BTreeMap;

use serde_json::json;
use storesync_shared::event::EventKind;
use storesync_shared::genesis_hash;

use super::support::{NOW, chain, enroll, enrolled_with_events, journal, signed, upload};
use crate::storage::Storage;
use crate::storage::docs::{CompactError, DocLoad, DocMeta, DocWrite, NewMovement};
use crate::storage::error::StorageError;
use crate::storage::ingest::TillId;

/// Runs every case of this file, each on a fresh backend from `fresh`.
pub(crate) fn run<S: Storage>(mut fresh: impl FnMut() -> S) {
    documents_are_written_optimistically(&fresh());
    document_writes_are_all_or_nothing(&fresh());
    documents_fold_into_snapshots(&fresh());
    compaction_cuts_and_base_come_from_the_journal(&fresh());
    failed_compaction_changes_nothing(&fresh());
}

// Store documents and epochs. Document bytes are opaque to storage, so plain byte strings stand in for chunks.

fn write(store: &str, epoch: u64, base_version: u64, chunk: &[u8]) -> DocWrite {
    DocWrite {
        store: store.into(),
        epoch,
        base_version,
        chunk: chunk.to_vec(),
        changes: u64::from(!chunk.is_empty()),
        ..Default::default()
    }
}

fn movement(sku: &str, delta: i64) -> NewMovement {
    NewMovement { sku: sku.into(), delta, reason: "receipt".into() }
}

fn documents_are_written_optimistically<S: Storage>(s: &S) {
    match s.doc_load("S1", None).unwrap() {
        DocLoad::Full { meta, snapshot, chunks } => {
            assert_eq!((meta, snapshot, chunks.len()), (DocMeta::default(), None, 0), "a new store is genesis")
        }
        other => panic!("{other:?}"),
    }
    let metas = s.doc_apply(&[write("S1", 0, 0, b"c1")], NOW).unwrap();
    assert_eq!(
        metas[0],
        DocMeta { epoch: 0, version: 1, changes_since_epoch: 1, saved_bytes: 2, chunks: 1, epoch_bytes: 0 }
    );
    let mut w = write("S1", 0, 1, b"c2-");
    w.sync_state = Some(("T1".into(), b"state-1".to_vec()));
    w.movements = vec![movement("A", 5), movement("A", -2), movement("B", 1)];
    assert_eq!(s.doc_apply(&[w], NOW).unwrap()[0].version, 2);
    assert_eq!(s.sync_state("S1", "T1", 0).unwrap(), Some(b"state-1".to_vec()));
    assert_eq!(s.sync_state("S1", "T1", 1).unwrap(), None);
    assert_eq!(s.sync_state("S2", "T1", 0).unwrap(), None);
    assert_eq!(s.movement_totals("S1").unwrap(), (BTreeMap::from([("A".into(), 3), ("B".into(), 1)]), 3));
    assert_eq!(s.movement_totals("S2").unwrap(), (BTreeMap::new(), 0));

    // A writer that made its change on version 1 lost the race: nothing of it is stored.
    let mut stale = write("S1", 0, 1, b"lost");
    stale.movements = vec![movement("A", 100)];
    stale.sync_state = Some(("T1".into(), b"lost".to_vec()));
    assert!(matches!(s.doc_apply(&[stale], NOW), Err(StorageError::Conflict)));
    assert!(matches!(s.doc_apply(&[write("S1", 1, 2, b"x")], NOW), Err(StorageError::Conflict)), "wrong epoch");
    assert_eq!(s.movement_totals("S1").unwrap().1, 3);
    assert_eq!(s.sync_state("S1", "T1", 0).unwrap(), Some(b"state-1".to_vec()));

    // A sync state alone does not need the latest version, only the epoch.
    let mut only_state = write("S1", 0, 0, b"");
    only_state.sync_state = Some(("T1".into(), b"state-2".to_vec()));
    assert_eq!(s.doc_apply(&[only_state], NOW).unwrap()[0].version, 2);
    assert_eq!(s.sync_state("S1", "T1", 0).unwrap(), Some(b"state-2".to_vec()));

    // Catching up: a delta from what the caller holds, a full load otherwise.
    match s.doc_load("S1", Some((0, 1))).unwrap() {
        DocLoad::Delta { meta, chunks } => assert_eq!((meta.version, chunks), (2, vec![b"c2-".to_vec()])),
        other => panic!("{other:?}"),
    }
    match s.doc_load("S1", Some((0, 2))).unwrap() {
        DocLoad::Delta { chunks, .. } => assert!(chunks.is_empty()),
        other => panic!("{other:?}"),
    }
    match s.doc_load("S1", Some((3, 2))).unwrap() {
        DocLoad::Full { meta, snapshot, chunks } => {
            assert_eq!((meta.saved_bytes, snapshot, chunks), (5, None, vec![b"c1".to_vec(), b"c2-".to_vec()]))
        }
        other => panic!("{other:?}"),
    }
}

fn document_writes_are_all_or_nothing<S: Storage>(s: &S) {
    s.doc_apply(&[write("S1", 0, 0, b"a")], NOW).unwrap();
    // S2 is fine, S1 is stale: neither is written.
    let mut ok = write("S2", 0, 0, b"b");
    ok.movements = vec![movement("A", 1)];
    assert!(matches!(s.doc_apply(&[ok.clone(), write("S1", 0, 0, b"c")], NOW), Err(StorageError::Conflict)));
    assert_eq!(s.doc_load("S2", None).unwrap().meta().version, 0);
    assert_eq!(s.movement_totals("S2").unwrap().1, 0);
    let metas = s.doc_apply(&[ok, write("S1", 0, 1, b"c")], NOW).unwrap();
    assert_eq!((metas[0].version, metas[1].version), (1, 2));
}

fn documents_fold_into_snapshots<S: Storage>(s: &S) {
    s.doc_apply(&[write("S1", 0, 0, b"c1")], NOW).unwrap();
    s.doc_apply(&[write("S1", 0, 1, b"c2")], NOW).unwrap();
    let mut fold = write("S1", 0, 2, b"c3");
    fold.fold = Some(b"snapshot-3".to_vec());
    let meta = s.doc_apply(&[fold], NOW).unwrap()[0];
    assert_eq!((meta.version, meta.chunks, meta.saved_bytes, meta.changes_since_epoch), (3, 0, 10, 3));
    s.doc_apply(&[write("S1", 0, 3, b"c4")], NOW).unwrap();
    match s.doc_load("S1", None).unwrap() {
        DocLoad::Full { snapshot, chunks, meta } => {
            assert_eq!(snapshot, Some(b"snapshot-3".to_vec()));
            assert_eq!(chunks, vec![b"c4".to_vec()]);
            assert_eq!((meta.version, meta.chunks, meta.saved_bytes), (4, 1, 12));
        }
        other => panic!("{other:?}"),
    }
    // A caller holding version 2 is behind the fold: it needs everything again.
    assert!(matches!(s.doc_load("S1", Some((0, 2))).unwrap(), DocLoad::Full { .. }));
    assert!(matches!(s.doc_load("S1", Some((0, 3))).unwrap(), DocLoad::Delta { .. }));
}

fn compaction_cuts_and_base_come_from_the_journal<S: Storage>(s: &S) {
    let t1 = enrolled_with_events(s, 3); // sales of SKU-1, SKU-2, SKU-3, one each
    let t2 = enroll(s, "S1", "T2", "code-2", "cred-2");
    enroll(s, "S9", "T1", "code-9", "cred-9");
    let mut w = write("S1", 0, 0, b"hub-change");
    w.movements = vec![movement("SKU-1", 10), movement("SKU-9", 4)];
    w.sync_state = Some(("T1".into(), b"old-epoch".to_vec()));
    s.doc_apply(&[w], NOW).unwrap();

    let mut seen = None;
    let rec = s
        .compact("S1", NOW, &mut |input| {
            seen = Some(input.clone());
            Ok(b"epoch-1-doc".to_vec())
        })
        .unwrap();
    let input = seen.unwrap();
    assert_eq!(input.epoch, 0);
    assert_eq!(input.chunks, vec![b"hub-change".to_vec()]);
    let cuts = BTreeMap::from([("T1".to_owned(), 3), ("T2".to_owned(), 0)]);
    let base = BTreeMap::from([
        ("SKU-1".to_owned(), 9),
        ("SKU-2".to_owned(), -1),
        ("SKU-3".to_owned(), -1),
        ("SKU-9".to_owned(), 4),
    ]);
    assert_eq!((rec.epoch, &rec.cuts, &rec.base, &rec.doc), (1, &cuts, &base, &b"epoch-1-doc".to_vec()));
    assert_eq!((&input.cuts, &input.base), (&cuts, &base));
    assert_eq!(s.epoch_record("S1").unwrap(), Some(rec));
    assert_eq!(s.epoch_record("S9").unwrap(), None, "other stores stay in epoch 0");
    match s.doc_load("S1", None).unwrap() {
        DocLoad::Full { meta, snapshot, chunks } => {
            assert_eq!((meta.epoch, meta.changes_since_epoch, meta.chunks), (1, 0, 0));
            assert_eq!((snapshot, chunks.len()), (Some(b"epoch-1-doc".to_vec()), 0));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.sync_state("S1", "T1", 0).unwrap(), None, "the old epoch's sync states are dropped");
    assert!(matches!(s.doc_apply(&[write("S1", 0, 1, b"late")], NOW), Err(StorageError::Conflict)));

    // Epoch 2: T1 voids its seq-2 sale (before the last cut) and sells again; T2 sells; one more movement.
    let events = chain(&t1, 3, 0);
    let void = signed(
        &t1,
        (3, &events[2].hash),
        EventKind::Void,
        json!({"occurred_at": "2026-11-26T15:00:00+01:00", "voided_event_id": events[1].event_id, "reason": "oops"}),
        0xa1,
    );
    let sale = |till: &TillId, prev: (u64, &str), id: u128| {
        let body = json!({
            "occurred_at": "2026-11-26T15:05:00+01:00", "currency": "EUR",
            "lines": [{"sku": "SKU-1", "qty": 3, "unit_price_minor": 100}],
            "payments": [{"method": "card", "amount_minor": 300}]
        });
        signed(till, prev, EventKind::Sale, body, id)
    };
    let again = sale(&t1, (4, &void.hash), 0xa2);
    s.append_batch(&t1, &upload(journal(), &[void, again]), NOW).unwrap();
    let t2_sale = sale(&t2, (0, &genesis_hash("S1", "T2")), 0xb1);
    s.append_batch(&t2, &upload(journal(), &[t2_sale]), NOW).unwrap();
    let mut w = write("S1", 1, 2, b"e1");
    w.movements = vec![movement("SKU-2", 5)];
    s.doc_apply(&[w], NOW).unwrap();
    let rec = s.compact("S1", NOW + 1, &mut |_| Ok(b"epoch-2-doc".to_vec())).unwrap();
    assert_eq!(rec.epoch, 2);
    assert_eq!(rec.cuts, BTreeMap::from([("T1".to_owned(), 5), ("T2".to_owned(), 1)]));
    let base = BTreeMap::from([
        ("SKU-1".to_owned(), 3),
        ("SKU-2".to_owned(), 5),
        ("SKU-3".to_owned(), -1),
        ("SKU-9".to_owned(), 4),
    ]);
    assert_eq!(rec.base, base, "10 - 1 - 3 - 3 for SKU-1; SKU-2's sale is voided");
    assert_eq!(s.epoch_record("S1").unwrap().map(|r| r.epoch), Some(2));
    let meta = s.doc_load("S1", None).unwrap().meta();
    assert_eq!((meta.epoch, meta.saved_bytes, meta.epoch_bytes), (2, 11, 11), "the epoch's document is all it holds");
}

fn failed_compaction_changes_nothing<S: Storage>(s: &S) {
    assert!(matches!(s.compact("S1", NOW, &mut |_| Ok(vec![])), Err(CompactError::UnknownStore)));
    enrolled_with_events(s, 1);
    s.doc_apply(&[write("S1", 0, 0, b"c1")], NOW).unwrap();
    assert!(matches!(s.compact("S1", NOW, &mut |_| Err("no".into())), Err(CompactError::Build(_))));
    assert_eq!(s.epoch_record("S1").unwrap(), None);
    let meta = s.doc_load("S1", None).unwrap().meta();
    assert_eq!((meta.epoch, meta.version, meta.chunks), (0, 1, 1));
}
