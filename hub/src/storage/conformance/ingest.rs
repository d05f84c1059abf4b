//! Conformance of [`crate::storage::IngestStore`]: table-driven ingest cases through one `check()` helper (start
//! from a till holding `stored` events, upload a batch, compare the answer and the resulting chain head), refusals,
//! event order, progress samples and quarantine.

use std::collections::BTreeMap;

use serde_json::json;
use storesync_shared::canonical::ChainInput;
use storesync_shared::event::EventKind;
use storesync_shared::{canonical_json, event_hash};
use uuid::Uuid;

use super::outbox::webhook;
use super::support::{NOW, chain, enroll, enrolled_with_events, journal, signed, upload};
use crate::storage::Storage;
use crate::storage::ingest::BatchEvent;
use crate::storage::ingest::{IngestError, ReleaseOutcome, TillId};

/// Runs every case of this file, each on a fresh backend from `fresh`.
pub(crate) fn run<S: Storage>(mut fresh: impl FnMut() -> S) {
    ingest_cases(&mut fresh);
    refused_batches_store_nothing_and_mark_the_till(&fresh());
    journal_id_is_pinned_once_events_exist(&fresh());
    duplicate_event_id_is_refused(&fresh());
    tills_are_isolated(&fresh());
    events_page_in_hub_order(&fresh());
    recent_events_are_newest_first_per_store(&fresh());
    uploads_leave_spaced_progress_samples(&fresh());
    unprocessable_events_are_quarantined_and_block_nothing(&fresh());
}

/// What one ingest case should answer.
#[derive(Debug)]
enum Want {
    Ack(u64),
    Err(&'static str),
}

fn ingest_cases<S: Storage>(fresh: &mut impl FnMut() -> S) {
    let t = TillId { store: "S1".into(), till: "T1".into() };
    let full = chain(&t, 8, 0);
    let fork = chain(&t, 8, 7);
    let slice = |a: u64, b: u64| full[(a - 1) as usize..b as usize].to_vec();
    let mut tampered = slice(5, 6);
    tampered[1].body["lines"][0]["qty"] = json!(2);
    let mut badlink = slice(5, 6);
    badlink[0].prev_hash = "00".repeat(32);
    let mut reordered = slice(5, 7);
    reordered.swap(1, 2);
    let mut invalid_body = slice(5, 5);
    invalid_body[0].body["currency"] = json!("XXX");

    let mut check = |name: &str, stored: u64, batch: Vec<BatchEvent>, want: Want| {
        let s = fresh();
        let till = enrolled_with_events(&s, stored);
        let got = s.append_batch(&till, &upload(journal(), &batch), NOW);
        let head = s.till_state(&till).unwrap().unwrap();
        match (&want, &got) {
            (Want::Ack(n), Ok(ack)) => {
                assert_eq!(ack.acked_through, *n, "{name}");
                assert_eq!(head.hub_seq, *n, "{name}");
                assert_eq!(ack.last_hash, full[(*n - 1) as usize].hash, "{name}");
            }
            (Want::Err(code), Err(e)) => {
                assert_eq!(e.code(), *code, "{name}: {e}");
                assert_eq!(head.hub_seq, stored, "{name}: a refused batch stores nothing");
            }
            _ => panic!("{name}: wanted {want:?}, got {got:?}"),
        }
        let events = s.list_events(None, 0, 1000).unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=head.hub_seq).collect::<Vec<_>>(), "{name}: no gaps, no duplicates");
    };

    check("append to empty", 0, slice(1, 3), Want::Ack(3));
    check("append to tail", 4, slice(5, 8), Want::Ack(8));
    check("heartbeat", 4, vec![], Want::Ack(4));
    check("exact replay", 4, slice(1, 4), Want::Ack(4));
    check("replay of a middle part", 4, slice(2, 3), Want::Ack(4));
    check("overlap the end", 4, slice(3, 6), Want::Ack(6));
    check("overlap from 1", 4, slice(1, 8), Want::Ack(8));
    check("gap", 4, slice(6, 7), Want::Err("seq_gap"));
    check("fork below the tail", 4, fork[1..3].to_vec(), Want::Err("sequence_regression"));
    check("fork in the overlap", 4, [slice(3, 3), fork[3..6].to_vec()].concat(), Want::Err("sequence_regression"));
    check("tampered body", 4, tampered, Want::Err("chain_broken"));
    check("broken link", 4, badlink, Want::Err("chain_broken"));
    check("invalid body", 4, invalid_body, Want::Err("chain_broken"));
    check("reordered", 4, reordered, Want::Err("not_consecutive"));
    check("seq zero", 0, vec![BatchEvent { seq: 0, ..full[0].clone() }], Want::Err("invalid_seq"));
    check(
        "other till's chain",
        0,
        chain(&TillId { store: "S2".into(), till: "T1".into() }, 2, 0),
        Want::Err("chain_broken"),
    );
    let too_many = (0..=storesync_shared::wire::MAX_BATCH_EVENTS).map(|_| full[0].clone()).collect();
    check("too many", 0, too_many, Want::Err("batch_too_large"));
}

fn refused_batches_store_nothing_and_mark_the_till<S: Storage>(s: &S) {
    let till = enrolled_with_events(s, 2);
    let mut batch = chain(&till, 5, 0)[2..].to_vec(); // seqs 3..=5, the last one broken
    batch[2].hash = "ff".repeat(32);
    let err = s.append_batch(&till, &upload(journal(), &batch), NOW + 5).unwrap_err();
    assert!(matches!(err, IngestError::ChainBroken { seq: 5, .. }), "{err:?}");
    assert_eq!(s.list_events(None, 0, 100).unwrap().len(), 2, "seqs 3 and 4 were not kept either");
    let view = s.list_stores().unwrap()[0].tills[0].clone();
    assert!(!view.chain_ok);
    assert!(view.last_error.as_deref().unwrap_or("").starts_with("chain_broken"));
    assert_eq!(view.last_seen, Some(NOW + 5));
    // A good batch heals it and records the till's report.
    let mut req = upload(journal(), &chain(&till, 5, 0)[2..]);
    req.backlog = 7;
    req.oldest_unsynced_age_s = 42;
    req.last_seq = 12;
    req.agent_version = "test/2".into();
    assert_eq!(s.append_batch(&till, &req, NOW + 9).unwrap().acked_through, 5);
    let view = s.list_stores().unwrap()[0].tills[0].clone();
    assert!(view.chain_ok);
    assert_eq!(view.last_error, None);
    assert_eq!(
        (view.last_seen, view.backlog, view.oldest_unsynced_age_s, view.last_seq, view.hub_seq),
        (Some(NOW + 9), 7, 42, 12, 5)
    );
    assert_eq!(view.version, "test/2");
}

fn journal_id_is_pinned_once_events_exist<S: Storage>(s: &S) {
    let till = enroll(s, "S1", "T1", "code-1", "cred-1");
    let other = Uuid::from_u128(0x9999);
    // Heartbeats before any event do not pin a journal.
    s.append_batch(&till, &upload(other, &[]), NOW).unwrap();
    s.append_batch(&till, &upload(journal(), &chain(&till, 2, 0)), NOW).unwrap();
    assert_eq!(s.till_state(&till).unwrap().unwrap().journal_id, Some(journal()));
    let err = s.append_batch(&till, &upload(other, &chain(&till, 3, 0)[2..]), NOW).unwrap_err();
    assert_eq!(err.code(), "journal_mismatch");
}

fn duplicate_event_id_is_refused<S: Storage>(s: &S) {
    let till = enrolled_with_events(s, 2);
    // A valid seq 3 that reuses the event_id of seq 1.
    let events = chain(&till, 2, 0);
    let mut prev = events[1].hash.clone();
    let body = events[0].body.clone();
    let canon = canonical_json(&body);
    let hash = event_hash(&ChainInput {
        store: &till.store,
        till: &till.till,
        seq: 3,
        event_id: events[0].event_id,
        kind: EventKind::Sale,
        body: &canon,
        prev_hash: &prev,
    });
    let dup = BatchEvent { seq: 3, prev_hash: std::mem::take(&mut prev), hash, ..events[0].clone() };
    let err = s.append_batch(&till, &upload(journal(), &[dup]), NOW).unwrap_err();
    assert!(matches!(err, IngestError::DuplicateEventId { seq: 3, stored_seq: 1, .. }), "{err:?}");
    assert_eq!(s.till_state(&till).unwrap().unwrap().hub_seq, 2);
}

fn tills_are_isolated<S: Storage>(s: &S) {
    let a = enroll(s, "A", "T1", "code-a", "cred-a");
    let b = enroll(s, "B", "T1", "code-b", "cred-b");
    // Till B cannot upload A's chain: the hashes bind the store and till.
    let err = s.append_batch(&b, &upload(journal(), &chain(&a, 1, 0)), NOW).unwrap_err();
    assert_eq!(err.code(), "chain_broken");
    s.append_batch(&a, &upload(journal(), &chain(&a, 2, 0)), NOW).unwrap();
    s.append_batch(&b, &upload(journal(), &chain(&b, 1, 0)), NOW).unwrap();
    assert_eq!(s.till_state(&a).unwrap().unwrap().hub_seq, 2);
    assert_eq!(s.till_state(&b).unwrap().unwrap().hub_seq, 1);
    let only_b = s.list_events(Some("B"), 0, 100).unwrap();
    assert_eq!(only_b.len(), 1);
    assert!(only_b.iter().all(|e| e.store == "B"));
}

fn events_page_in_hub_order<S: Storage>(s: &S) {
    let till = enrolled_with_events(s, 5);
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let page = s.list_events(None, after, 2).unwrap();
        let Some(last) = page.last() else { break };
        after = last.hub_pos;
        seen.extend(page.iter().map(|e| e.seq));
    }
    assert_eq!(seen, vec![1, 2, 3, 4, 5]);
    let first = &s.list_events(None, 0, 1).unwrap()[0];
    assert_eq!(first.till, till.till);
    assert_eq!(first.body.as_bytes(), canonical_json(&chain(&till, 1, 0)[0].body));
}

fn recent_events_are_newest_first_per_store<S: Storage>(s: &S) {
    let t1 = enroll(s, "S1", "T1", "code-1", "cred-1");
    let t2 = enroll(s, "S1", "T2", "code-2", "cred-2");
    let other = enroll(s, "S2", "T1", "code-3", "cred-3");
    let (c1, c2) = (chain(&t1, 4, 0), chain(&t2, 3, 1));
    s.append_batch(&t1, &upload(journal(), &c1[..2]), NOW).unwrap();
    s.append_batch(&t2, &upload(journal(), &c2), NOW).unwrap();
    s.append_batch(&other, &upload(journal(), &chain(&other, 5, 2)), NOW).unwrap();
    s.append_batch(&t1, &upload(journal(), &c1), NOW).unwrap();
    let got: Vec<(String, u64)> = s.recent_events("S1", 4).unwrap().into_iter().map(|e| (e.till, e.seq)).collect();
    let want = [("T1", 4), ("T1", 3), ("T2", 3), ("T2", 2)];
    assert_eq!(got, want.map(|(t, n)| (t.to_owned(), n)));
    assert_eq!(s.recent_events("S1", 100).unwrap().len(), 7);
    assert!(s.recent_events("S9", 10).unwrap().is_empty());
}

fn uploads_leave_spaced_progress_samples<S: Storage>(s: &S) {
    use crate::storage::ingest::{SAMPLE_KEEP_S, SAMPLE_SPACING_S};
    let till = enroll(s, "S1", "T1", "code-1", "cred-1");
    let events = chain(&till, 30, 0);
    let mut req = upload(journal(), &events[..10]);
    req.last_seq = 30;
    s.append_batch(&till, &req, NOW).unwrap();
    // Within the spacing: no new sample.
    let mut req = upload(journal(), &events[..20]);
    req.last_seq = 30;
    s.append_batch(&till, &req, NOW + SAMPLE_SPACING_S - 1).unwrap();
    // A refused batch still samples where the till stands.
    let mut broken = events[20..].to_vec();
    broken[0].prev_hash = "0".repeat(64);
    s.append_batch(&till, &upload(journal(), &broken), NOW + SAMPLE_SPACING_S).unwrap_err();
    let samples = s.progress_samples(0).unwrap();
    assert_eq!(samples.len(), 1);
    let got: Vec<(i64, u64, u64)> = samples[0].samples.iter().map(|p| (p.at, p.reported_seq, p.hub_seq)).collect();
    assert_eq!(got, vec![(NOW, 30, 10), (NOW + SAMPLE_SPACING_S, 30, 20)]);
    assert_eq!(s.progress_samples(NOW + 1).unwrap()[0].samples.len(), 1);
    // An upload an hour later prunes what aged out.
    s.append_batch(&till, &upload(journal(), &events), NOW + SAMPLE_KEEP_S + SAMPLE_SPACING_S + 1).unwrap();
    let got: Vec<u64> = s.progress_samples(0).unwrap()[0].samples.iter().map(|p| p.hub_seq).collect();
    assert_eq!(got, vec![30]);
    assert!(s.doc_sizes().unwrap().is_empty());
}

fn unprocessable_events_are_quarantined_and_block_nothing<S: Storage>(s: &S) {
    let till = enroll(s, "S1", "T1", "code-1", "cred-1");
    let first = chain(&till, 1, 0).remove(0); // a sale of SKU-1
    // Chained and hashed by the till, but its payments do not cover its total: this hub's rules refuse the body.
    let poison = signed(
        &till,
        (1, &first.hash),
        EventKind::Sale,
        json!({"occurred_at": "2026-11-26T14:06:00+01:00", "currency": "EUR",
               "lines": [{"sku": "SKU-P", "qty": 2, "unit_price_minor": 100}],
               "payments": [{"method": "card", "amount_minor": 150}]}),
        0xc1,
    );
    let behind = signed(
        &till,
        (2, &poison.hash),
        EventKind::Sale,
        json!({"occurred_at": "2026-11-26T14:07:00+01:00", "currency": "EUR",
               "lines": [{"sku": "SKU-1", "qty": 1, "unit_price_minor": 100}],
               "payments": [{"method": "card", "amount_minor": 100}]}),
        0xc2,
    );
    let batch = upload(journal(), &[first, poison, behind]);
    let ack = s.append_batch(&till, &batch, NOW).unwrap();
    assert_eq!((ack.acked_through, &ack.quarantined), (3, &vec![2]), "stored, acknowledged, quarantined");
    let again = s.append_batch(&till, &batch, NOW).unwrap();
    assert_eq!((again.acked_through, again.quarantined.len()), (3, 0), "a resend quarantines nothing twice");

    let view = s.list_stores().unwrap()[0].tills[0].clone();
    assert_eq!((view.hub_seq, view.quarantined, view.chain_ok), (3, 1, true));
    let flags: Vec<bool> = s.list_events(None, 0, 10).unwrap().iter().map(|e| e.quarantined).collect();
    assert_eq!(flags, [false, true, false]);
    let every = webhook("every");
    let outbox = |s: &S| -> Vec<u64> { s.outbox_after(&every, 0, 10).unwrap().iter().map(|e| e.event.seq).collect() };
    assert_eq!(outbox(s), [1, 3], "a quarantined event is held out of the outbox");
    let held = s.list_quarantine(None, false, 0, 10).unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!((held[0].event.seq, held[0].event.event_id, held[0].released_at), (2, Uuid::from_u128(0xc1), None));
    assert!(held[0].reason.contains("seq 2"), "{}", held[0].reason);
    assert!(s.list_quarantine(Some("S9"), true, 0, 10).unwrap().is_empty());
    assert!(s.list_quarantine(None, false, held[0].event.hub_pos, 10).unwrap().is_empty(), "paged by hub_pos");

    // Compaction cannot compute the poison's stock effect: the till's cut stops before it.
    let rec = s.compact("S1", NOW, &mut |_| Ok(b"epoch-1".to_vec())).unwrap();
    assert_eq!(rec.cuts, BTreeMap::from([("T1".to_owned(), 1)]));
    assert_eq!(rec.base, BTreeMap::from([("SKU-1".to_owned(), -1)]));

    assert_eq!(s.release_quarantined(&till, 3, NOW, &|_| Ok(())).unwrap(), ReleaseOutcome::NotQuarantined);
    let refused = s.release_quarantined(&till, 2, NOW, &|_| Err("still bad".into())).unwrap();
    assert_eq!(refused, ReleaseOutcome::StillInvalid("still bad".into()));
    assert_eq!(s.list_quarantine(None, false, 0, 10).unwrap().len(), 1, "a refused release changes nothing");
    let seen = std::cell::Cell::new(0);
    let released = s
        .release_quarantined(&till, 2, NOW + 2, &|e| {
            seen.set(e.seq);
            Ok(())
        })
        .unwrap();
    assert_eq!((released, seen.get()), (ReleaseOutcome::Released, 2), "the check saw the stored event");
    assert_eq!(s.release_quarantined(&till, 2, NOW, &|_| Ok(())).unwrap(), ReleaseOutcome::NotQuarantined);
    assert!(s.list_quarantine(None, false, 0, 10).unwrap().is_empty());
    assert_eq!(outbox(s), [1, 3, 2], "released, it goes out after what was already there");
    let all = s.list_quarantine(None, true, 0, 10).unwrap();
    assert_eq!((all.len(), all[0].released_at, all[0].event.quarantined), (1, Some(NOW + 2), false));
    assert_eq!(s.list_stores().unwrap()[0].tills[0].quarantined, 0);

    // Released, it counts again: the next cut passes it.
    let rec = s.compact("S1", NOW + 3, &mut |_| Ok(b"epoch-2".to_vec())).unwrap();
    assert_eq!(rec.cuts, BTreeMap::from([("T1".to_owned(), 3)]));
    assert_eq!(rec.base, BTreeMap::from([("SKU-1".to_owned(), -2), ("SKU-P".to_owned(), -2)]));
}
