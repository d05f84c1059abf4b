//! The conformance suite every [`Storage`] backend must pass.
//!
//! Design note: the tests are generic over the trait and take a factory that returns a fresh, empty backend, so
//! a PostgreSQL backend runs exactly these cases by calling [`run_all`] with its own factory. Ingest cases are
//! table-driven through one `check()` helper: start from a till holding `stored` events, upload a batch, compare
//! the answer and the resulting chain head.

use serde_json::json;
use storesync_shared::canonical::ChainInput;
use storesync_shared::event::EventKind;
use storesync_shared::wire::{JournalEvent, UploadRequest};
use storesync_shared::{canonical_json, event_hash, genesis_hash};
use uuid::Uuid;

use std::collections::BTreeMap;

use super::{
    CompactError, DocLoad, DocMeta, DocWrite, IngestError, NewEnrollment, NewMovement, NewRelease, NewRollout,
    NewUpdateReport, PutRelease, RedeemError, ReleaseOutcome, RolloutError, Storage, StorageError, TillId,
};
use crate::rollout::{Stage, Transition, TransitionError};
use storesync_shared::release::UpdateOutcome;

const NOW: i64 = 1_800_000_000;

/// A valid journal of `n` sales of a till, seqs 1..=n, with deterministic event ids (salted by `salt`).
pub(crate) fn chain(till: &TillId, n: u64, salt: u8) -> Vec<JournalEvent> {
    let mut prev = genesis_hash(&till.store, &till.till);
    (1..=n)
        .map(|seq| {
            let body = json!({
                "occurred_at": "2026-11-26T14:05:00+01:00",
                "currency": "EUR",
                "lines": [{"sku": format!("SKU-{seq}"), "qty": 1, "unit_price_minor": 100 + salt as i64}],
                "payments": [{"method": "card", "amount_minor": 100 + salt as i64}]
            });
            let mut id = [0u8; 16];
            id[0] = salt;
            id[8..].copy_from_slice(&seq.to_be_bytes());
            let event_id = Uuid::from_bytes(id);
            let canon = canonical_json(&body);
            let hash = event_hash(&ChainInput {
                store: &till.store,
                till: &till.till,
                seq,
                event_id,
                kind: EventKind::Sale,
                body: &canon,
                prev_hash: &prev,
            });
            let e = JournalEvent {
                seq,
                event_id,
                kind: EventKind::Sale,
                occurred_at: "2026-11-26T14:05:00+01:00".into(),
                body,
                prev_hash: prev.clone(),
                hash: hash.clone(),
            };
            prev = hash;
            e
        })
        .collect()
}

pub(crate) fn upload(journal_id: Uuid, events: &[JournalEvent]) -> UploadRequest {
    UploadRequest {
        journal_id,
        agent_version: "test/1".into(),
        backlog: 0,
        oldest_unsynced_age_s: 0,
        last_seq: events.last().map_or(0, |e| e.seq),
        events: events.to_vec(),
    }
}

pub(crate) fn journal() -> Uuid {
    Uuid::from_u128(0x1234)
}

fn enroll<S: Storage>(s: &S, store: &str, till: &str, code: &str, cred: &str) -> TillId {
    let id = TillId { store: store.into(), till: till.into() };
    s.create_enrollment(&NewEnrollment {
        code_hash: code.into(),
        till: id.clone(),
        created_at: NOW,
        expires_at: NOW + 3600,
    })
    .unwrap();
    assert_eq!(s.redeem_enrollment(code, cred, "test/1", NOW).unwrap(), id);
    id
}

/// An enrolled till `S1/T1` holding events 1..=n.
pub(crate) fn enrolled_with_events<S: Storage>(s: &S, n: u64) -> TillId {
    let till = enroll(s, "S1", "T1", "code-1", "cred-1");
    if n > 0 {
        let ack = s.append_batch(&till, &upload(journal(), &chain(&till, n, 0)), NOW).unwrap();
        assert_eq!(ack.acked_through, n);
    }
    till
}

/// Runs every conformance test, each on a fresh backend from `fresh`.
pub(crate) fn run_all<S: Storage>(mut fresh: impl FnMut() -> S) {
    enrolment_codes_are_one_time_and_expire(&fresh());
    reenrolment_revokes_the_old_credential(&fresh());
    revoke_ends_access(&fresh());
    ingest_cases(&mut fresh);
    refused_batches_store_nothing_and_mark_the_till(&fresh());
    journal_id_is_pinned_once_events_exist(&fresh());
    duplicate_event_id_is_refused(&fresh());
    tills_are_isolated(&fresh());
    events_page_in_hub_order(&fresh());
    recent_events_are_newest_first_per_store(&fresh());
    uploads_leave_spaced_progress_samples(&fresh());
    the_outbox_feeds_subscriptions_in_order(&fresh());
    delivery_leases_are_exclusive_until_they_run_out(&fresh());
    failed_attempts_are_counted(&fresh());
    documents_are_written_optimistically(&fresh());
    document_writes_are_all_or_nothing(&fresh());
    documents_fold_into_snapshots(&fresh());
    compaction_cuts_and_base_come_from_the_journal(&fresh());
    failed_compaction_changes_nothing(&fresh());
    unprocessable_events_are_quarantined_and_block_nothing(&fresh());
    releases_are_stored_once(&fresh());
    rollouts_start_change_and_supersede(&fresh());
    rollbacks_halt_a_rollout_at_max_failures(&fresh());
    rollbacks_of_stores_outside_the_canary_ring_do_not_count(&fresh());
    update_checks_and_reports_move_the_version_spread(&fresh());
}

fn enrolment_codes_are_one_time_and_expire<S: Storage>(s: &S) {
    let till = TillId { store: "S1".into(), till: "T1".into() };
    for (code, expires) in [("a", NOW + 10), ("b", NOW)] {
        s.create_enrollment(&NewEnrollment {
            code_hash: code.into(),
            till: till.clone(),
            created_at: NOW - 10,
            expires_at: expires,
        })
        .unwrap();
    }
    let views = s.list_stores().unwrap();
    assert!(!views[0].tills[0].enrolled, "a till with only a code is not enrolled yet");
    assert!(matches!(s.redeem_enrollment("nope", "c0", "", NOW), Err(RedeemError::InvalidCode)));
    assert!(matches!(s.redeem_enrollment("b", "c0", "", NOW), Err(RedeemError::Expired)));
    assert_eq!(s.redeem_enrollment("a", "c1", "v1", NOW).unwrap(), till);
    assert!(matches!(s.redeem_enrollment("a", "c2", "", NOW), Err(RedeemError::Used)));
    assert_eq!(s.authenticate("c1").unwrap(), Some(till.clone()));
    assert_eq!(s.authenticate("c2").unwrap(), None);
    assert_eq!(s.authenticate("c0").unwrap(), None);
    let views = s.list_stores().unwrap();
    assert!(views[0].tills[0].enrolled);
    assert_eq!(views[0].tills[0].version, "v1");
}

fn reenrolment_revokes_the_old_credential<S: Storage>(s: &S) {
    let till = enroll(s, "S1", "T1", "code-1", "cred-1");
    enroll(s, "S1", "T1", "code-2", "cred-2");
    assert_eq!(s.authenticate("cred-1").unwrap(), None);
    assert_eq!(s.authenticate("cred-2").unwrap(), Some(till));
}

fn revoke_ends_access<S: Storage>(s: &S) {
    let till = enroll(s, "S1", "T1", "code-1", "cred-1");
    s.create_enrollment(&NewEnrollment {
        code_hash: "pending".into(),
        till: till.clone(),
        created_at: NOW,
        expires_at: NOW + 60,
    })
    .unwrap();
    assert!(s.revoke(&till, NOW).unwrap());
    assert_eq!(s.authenticate("cred-1").unwrap(), None);
    assert!(
        matches!(s.redeem_enrollment("pending", "cred-x", "", NOW), Err(RedeemError::Used)),
        "codes issued before a revoke die with it"
    );
    let view = &s.list_stores().unwrap()[0].tills[0];
    assert!(view.revoked);
    assert!(!s.revoke(&TillId { store: "S9".into(), till: "T9".into() }, NOW).unwrap());
    // A fresh code brings the till back.
    enroll(s, "S1", "T1", "code-3", "cred-3");
    assert!(!s.list_stores().unwrap()[0].tills[0].revoked);
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

    let mut check = |name: &str, stored: u64, batch: Vec<JournalEvent>, want: Want| {
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
    check("seq zero", 0, vec![JournalEvent { seq: 0, ..full[0].clone() }], Want::Err("invalid_seq"));
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
    let dup = JournalEvent { seq: 3, prev_hash: std::mem::take(&mut prev), hash, ..events[0].clone() };
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
    use super::{SAMPLE_KEEP_S, SAMPLE_SPACING_S};
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

fn the_outbox_feeds_subscriptions_in_order<S: Storage>(s: &S) {
    use super::{NewSubscription, ReplaySelector};
    let a = enroll(s, "A", "T1", "code-1", "cred-1");
    let b = enroll(s, "B", "T1", "code-2", "cred-2");
    s.append_batch(&a, &upload(journal(), &chain(&a, 2, 0)), NOW).unwrap();
    s.append_batch(&b, &upload(journal(), &chain(&b, 2, 1)), NOW).unwrap();
    s.append_batch(&a, &upload(journal(), &chain(&a, 3, 0)), NOW + 1).unwrap();
    let spec = |id: &str, stores: &[&str]| NewSubscription {
        stores: stores.iter().map(|s| (*s).to_owned()).collect(),
        ..webhook(id)
    };
    let all = spec("all", &[]);
    s.create_subscription(&all, NOW).unwrap();
    assert!(matches!(s.create_subscription(&all, NOW), Err(StorageError::Conflict)));
    let order: Vec<(String, u64)> =
        s.outbox_after(&all, 0, 100).unwrap().iter().map(|e| (e.event.store.clone(), e.event.seq)).collect();
    let want = [("A", 1), ("A", 2), ("B", 1), ("B", 2), ("A", 3)];
    assert_eq!(order, want.map(|(st, n)| (st.to_owned(), n)));
    let only_a: Vec<u64> = s.outbox_after(&spec("a", &["A"]), 0, 100).unwrap().iter().map(|e| e.event.seq).collect();
    assert_eq!(only_a, vec![1, 2, 3]);

    let entries = s.outbox_after(&all, 0, 100).unwrap();
    s.delivered("all", entries[1].pos, NOW).unwrap();
    s.delivered("all", entries[0].pos, NOW).unwrap(); // never backwards
    assert_eq!(s.subscription("all").unwrap().unwrap().cursor, entries[1].pos);
    s.delivery_failed("all", "receiver answered 500", NOW).unwrap();
    s.dead_letter("all", &entries[2], 3, "receiver answered 422", NOW + 5).unwrap();
    let sub = &s.list_subscriptions(true).unwrap()[0];
    let cheap = &s.list_subscriptions(false).unwrap()[0];
    assert_eq!((cheap.lag, cheap.dead_letters), (0, 1), "without lag: dead letters still counted");
    assert_eq!((sub.cursor, sub.lag, sub.dead_letters), (entries[2].pos, 2, 1));
    assert_eq!(sub.last_error.as_deref(), Some("receiver answered 422"));
    let dead = s.list_dead_letters("all").unwrap();
    assert_eq!((dead.len(), dead[0].store.as_str(), dead[0].seq, dead[0].attempts), (1, "B", 1, 3));
    assert!(s.pending_replays("all", 10).unwrap().is_empty());
    assert_eq!(s.request_replay("all", &ReplaySelector::DeadBetween(NOW + 6, NOW + 9), NOW).unwrap(), 0);
    assert_eq!(s.request_replay("all", &ReplaySelector::Ids(vec![dead[0].id]), NOW + 10).unwrap(), 1);
    let pending = s.pending_replays("all", 10).unwrap();
    assert_eq!((pending.len(), pending[0].0, pending[0].1.pos), (1, dead[0].id, entries[2].pos));
    s.replayed(dead[0].id, NOW + 11).unwrap();
    assert!(s.pending_replays("all", 10).unwrap().is_empty());
    assert_eq!(s.list_dead_letters("all").unwrap()[0].replayed_at, Some(NOW + 11));
    assert_eq!(s.list_subscriptions(true).unwrap()[0].dead_letters, 0);

    assert!(s.rewind_subscription("all", 0).unwrap());
    assert_eq!(s.list_subscriptions(true).unwrap()[0].lag, 5);
    assert!(!s.rewind_subscription("nope", 0).unwrap());
    assert!(s.delete_subscription("all").unwrap());
    assert!(s.subscription("all").unwrap().is_none() && s.list_dead_letters("all").unwrap().is_empty());
    assert!(!s.delete_subscription("all").unwrap());
}

/// A webhook subscription to every event.
pub(crate) fn webhook(id: &str) -> super::NewSubscription {
    super::NewSubscription {
        id: id.into(),
        kind: "webhook".into(),
        url: "http://127.0.0.1:9/hook".into(),
        secret: "0123456789abcdef".into(),
        kinds: vec![],
        stores: vec![],
        batch_size: 100,
        max_attempts: 3,
        stream: String::new(),
        subject_prefix: String::new(),
    }
}

fn delivery_leases_are_exclusive_until_they_run_out<S: Storage>(s: &S) {
    assert!(!s.lease_subscription("s", "a", NOW, NOW + 10).unwrap(), "an unknown subscription has no lease");
    s.create_subscription(&webhook("s"), NOW).unwrap();
    s.create_subscription(&webhook("other"), NOW).unwrap();
    assert!(s.lease_subscription("s", "a", NOW, NOW + 10).unwrap());
    assert!(s.lease_subscription("other", "b", NOW, NOW + 10).unwrap(), "leases are per subscription");
    assert!(!s.lease_subscription("s", "b", NOW + 9, NOW + 19).unwrap(), "held by a");
    assert!(s.lease_subscription("s", "a", NOW + 9, NOW + 20).unwrap(), "a renews");
    assert!(!s.lease_subscription("s", "b", NOW + 19, NOW + 29).unwrap(), "the renewal counts");
    assert!(s.lease_subscription("s", "b", NOW + 20, NOW + 30).unwrap(), "run out: b takes over");
    assert!(!s.lease_subscription("s", "a", NOW + 21, NOW + 31).unwrap());
    s.release_subscription_lease("s", "a").unwrap();
    assert!(!s.lease_subscription("s", "a", NOW + 21, NOW + 31).unwrap(), "only the holder gives a lease up");
    s.release_subscription_lease("s", "b").unwrap();
    assert!(s.lease_subscription("s", "a", NOW + 22, NOW + 32).unwrap(), "given up: taken at once");
    assert_eq!(s.subscription("s").unwrap().unwrap().cursor, 0, "a lease moves no cursor");
}

fn failed_attempts_are_counted<S: Storage>(s: &S) {
    for i in 0..3 {
        s.record_failed_attempt("10.0.0.1", NOW + i).unwrap();
    }
    s.record_failed_attempt("10.0.0.2", NOW).unwrap();
    assert_eq!(s.failed_attempts_since("10.0.0.1", NOW).unwrap(), (3, Some(NOW)));
    assert_eq!(s.failed_attempts_since("10.0.0.1", NOW + 1).unwrap(), (2, Some(NOW + 1)));
    assert_eq!(s.failed_attempts_since("10.0.0.3", 0).unwrap(), (0, None));
}

// ---------------------------------------------------------------------------------------------------------------
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

/// A signed event of any kind following `prev` (`(seq, hash)`).
fn signed(till: &TillId, prev: (u64, &str), kind: EventKind, body: serde_json::Value, id: u128) -> JournalEvent {
    let seq = prev.0 + 1;
    let event_id = Uuid::from_u128(id);
    let hash = event_hash(&ChainInput {
        store: &till.store,
        till: &till.till,
        seq,
        event_id,
        kind,
        body: &canonical_json(&body),
        prev_hash: prev.1,
    });
    JournalEvent {
        seq,
        event_id,
        kind,
        occurred_at: body["occurred_at"].as_str().unwrap_or_default().into(),
        body,
        prev_hash: prev.1.into(),
        hash,
    }
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

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn release(version: &str, archive: &[u8]) -> NewRelease {
    use sha2::Digest as _;
    let sha = hex::encode(sha2::Sha256::digest(archive));
    NewRelease {
        version: version.into(),
        target: TARGET.into(),
        manifest: format!("{{\"version\":\"{version}\",\"sha\":\"{sha}\"}}").into_bytes(),
        signature: Some("c2ln".into()),
        archive: archive.to_vec(),
        archive_sha256: sha,
        archive_size: archive.len() as u64,
        min_version: "0.0.0".into(),
        expires_at: "2030-01-01T00:00:00Z".into(),
        uploaded_at: NOW,
    }
}

fn rollout_of(version: &str, canary_percent: u8, max_failures: u32) -> NewRollout {
    NewRollout { target: TARGET.into(), version: version.into(), canary_percent, max_failures }
}

fn report(version: &str, outcome: UpdateOutcome) -> NewUpdateReport {
    NewUpdateReport {
        version: version.into(),
        target: TARGET.into(),
        outcome,
        running_version: "0.1.0".into(),
        reason: None,
        detail: None,
    }
}

fn releases_are_stored_once<S: Storage>(s: &S) {
    assert_eq!(s.put_release(&release("0.2.0", b"archive")).unwrap(), PutRelease::Created);
    assert_eq!(s.put_release(&release("0.2.0", b"archive")).unwrap(), PutRelease::Identical);
    assert_eq!(s.put_release(&release("0.2.0", b"other")).unwrap(), PutRelease::Conflict);
    let mut unsigned = release("0.2.0", b"archive");
    unsigned.signature = None;
    assert_eq!(s.put_release(&unsigned).unwrap(), PutRelease::Conflict, "the signature is part of a release");
    assert_eq!(s.release_archive("0.2.0", TARGET).unwrap().as_deref(), Some(&b"archive"[..]));
    let mut other_target = release("0.2.0", b"win");
    other_target.target = "x86_64-pc-windows-msvc".into();
    other_target.signature = None;
    assert_eq!(s.put_release(&other_target).unwrap(), PutRelease::Created);
    assert_eq!(s.put_release(&release("0.10.0", b"ten")).unwrap(), PutRelease::Created);
    assert_eq!(s.put_release(&release("0.9.1", b"nine")).unwrap(), PutRelease::Created);
    let listed: Vec<(String, String, bool)> =
        s.list_releases().unwrap().into_iter().map(|r| (r.version, r.target, r.signed)).collect();
    let want = [
        ("0.10.0", TARGET, true),
        ("0.9.1", TARGET, true),
        ("0.2.0", "x86_64-pc-windows-msvc", false),
        ("0.2.0", TARGET, true),
    ];
    assert_eq!(listed, want.map(|(v, t, sg)| (v.to_owned(), t.to_owned(), sg)), "semver order, newest first");
    assert_eq!(s.release_archive("0.3.0", TARGET).unwrap(), None);
}

fn rollouts_start_change_and_supersede<S: Storage>(s: &S) {
    assert!(matches!(s.start_rollout(&rollout_of("0.2.0", 10, 1), NOW), Err(RolloutError::UnknownRelease { .. })));
    assert!(matches!(s.change_rollout(TARGET, &Transition::Promote, NOW), Err(RolloutError::NoRollout(_))));
    s.put_release(&release("0.2.0", b"a")).unwrap();
    s.put_release(&release("0.3.0", b"b")).unwrap();
    let r = s.start_rollout(&rollout_of("0.2.0", 10, 2), NOW).unwrap();
    assert_eq!((r.stage, r.canary_percent, r.max_failures, r.failures), (Stage::Canary, 10, 2, 0));
    assert_eq!(s.change_rollout(TARGET, &Transition::Promote, NOW + 1).unwrap().stage, Stage::All);
    let halted = s.change_rollout(TARGET, &Transition::Halt(Some("looks bad".into())), NOW + 2).unwrap();
    assert_eq!((halted.stage, halted.halted_reason.as_deref()), (Stage::Halted, Some("looks bad")));
    assert!(matches!(
        s.change_rollout(TARGET, &Transition::Promote, NOW + 3),
        Err(RolloutError::Transition(TransitionError::Halted))
    ));
    let resumed = s.change_rollout(TARGET, &Transition::Resume, NOW + 4).unwrap();
    assert_eq!((resumed.stage, resumed.halted_reason, resumed.updated_at), (Stage::Canary, None, NOW + 4));
    assert!(matches!(
        s.change_rollout(TARGET, &Transition::Resume, NOW + 5),
        Err(RolloutError::Transition(TransitionError::NotHalted))
    ));
    // A new rollout replaces the target's active one; 100% starts at `all`.
    let next = s.start_rollout(&rollout_of("0.3.0", 100, 1), NOW + 6).unwrap();
    assert_eq!((next.version.as_str(), next.stage, next.started_at), ("0.3.0", Stage::All, NOW + 6));
    let all = s.list_rollouts().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0], next);
}

/// The first store ids, in order `s0, s1, ...`, inside (or outside) the canary ring of `percent`.
fn stores_by_ring(percent: u8, inside: bool, n: usize) -> Vec<String> {
    (0..).map(|i| format!("s{i}")).filter(|s| crate::rollout::in_canary(s, percent) == inside).take(n).collect()
}

fn rollbacks_halt_a_rollout_at_max_failures<S: Storage>(s: &S) {
    s.put_release(&release("0.2.0", b"a")).unwrap();
    s.start_rollout(&rollout_of("0.2.0", 10, 2), NOW).unwrap();
    let canaries = stores_by_ring(10, true, 3);
    let tills: Vec<TillId> = canaries
        .iter()
        .enumerate()
        .map(|(i, st)| enroll(s, st, "T1", &format!("code-{i}"), &format!("cred-{i}")))
        .collect();
    let e = s.record_update_report(&tills[0], &report("0.2.0", UpdateOutcome::Installed), NOW).unwrap();
    assert_eq!(e.rollout.as_ref().map(|r| (r.installed, r.failures)), Some((1, 0)));
    let e = s.record_update_report(&tills[0], &report("0.2.0", UpdateOutcome::Refused), NOW).unwrap();
    assert_eq!(e.rollout.as_ref().map(|r| r.refused), Some(1));
    let e = s.record_update_report(&tills[1], &report("0.2.0", UpdateOutcome::RolledBack), NOW).unwrap();
    assert!(e.counted_failure && !e.halted_now);
    assert_eq!(e.rollout.as_ref().map(|r| (r.stage, r.failures)), Some((Stage::Canary, 1)));
    // A report about another version does not touch the rollout.
    let e = s.record_update_report(&tills[1], &report("0.1.5", UpdateOutcome::RolledBack), NOW).unwrap();
    assert_eq!(e.rollout, None);
    let e = s.record_update_report(&tills[2], &report("0.2.0", UpdateOutcome::RolledBack), NOW + 1).unwrap();
    assert!(e.counted_failure && e.halted_now);
    let r = e.rollout.unwrap();
    assert_eq!((r.stage, r.failures), (Stage::Halted, 2));
    assert_eq!(r.halted_reason.as_deref(), Some("canary health regressed: 2 rollbacks"));
    assert_eq!(s.list_rollouts().unwrap(), [r]);
    // Halted: further rollbacks are recorded but count no more; resume resets the count.
    let e = s.record_update_report(&tills[0], &report("0.2.0", UpdateOutcome::RolledBack), NOW + 2).unwrap();
    assert!(!e.counted_failure && !e.halted_now);
    let resumed = s.change_rollout(TARGET, &Transition::Resume, NOW + 3).unwrap();
    assert_eq!((resumed.stage, resumed.failures), (Stage::Canary, 0));
}

fn rollbacks_of_stores_outside_the_canary_ring_do_not_count<S: Storage>(s: &S) {
    s.put_release(&release("0.2.0", b"a")).unwrap();
    s.start_rollout(&rollout_of("0.2.0", 10, 1), NOW).unwrap();
    let outside = &stores_by_ring(10, false, 2);
    let a = enroll(s, &outside[0], "T1", "code-a", "cred-a");
    let b = enroll(s, &outside[1], "T1", "code-b", "cred-b");
    let e = s.record_update_report(&a, &report("0.2.0", UpdateOutcome::RolledBack), NOW).unwrap();
    assert!(!e.counted_failure, "a store outside the canary ring during `canary`");
    assert_eq!(e.rollout.map(|r| (r.stage, r.failures)), Some((Stage::Canary, 0)));
    // Once promoted to `all`, a rollback anywhere counts.
    s.change_rollout(TARGET, &Transition::Promote, NOW + 1).unwrap();
    let e = s.record_update_report(&b, &report("0.2.0", UpdateOutcome::RolledBack), NOW + 2).unwrap();
    assert!(e.counted_failure && e.halted_now);
    assert_eq!(e.rollout.map(|r| r.stage), Some(Stage::Halted));
}

fn update_checks_and_reports_move_the_version_spread<S: Storage>(s: &S) {
    let a = enroll(s, "S1", "T1", "code-a", "cred-a");
    let b = enroll(s, "S1", "T2", "code-b", "cred-b");
    let c = enroll(s, "S2", "T1", "code-c", "cred-c");
    s.create_enrollment(&NewEnrollment {
        code_hash: "code-d".into(),
        till: TillId { store: "S3".into(), till: "T1".into() },
        created_at: NOW,
        expires_at: NOW + 60,
    })
    .unwrap();
    assert_eq!(s.version_spread().unwrap(), [("test/1".to_owned(), 3)]);
    // No rollout: nothing to offer, but the running version is recorded.
    assert_eq!(s.check_update(&a, "0.1.0", TARGET, NOW).unwrap(), None);
    assert_eq!(s.check_update(&b, "0.1.0", TARGET, NOW).unwrap(), None);
    let mut rep = report("0.2.0", UpdateOutcome::Installed);
    rep.running_version = "0.2.0".into();
    s.record_update_report(&c, &rep, NOW).unwrap();
    assert_eq!(s.version_spread().unwrap(), [("0.1.0".to_owned(), 2), ("0.2.0".to_owned(), 1)]);
    assert!(s.revoke(&c, NOW).unwrap());
    assert_eq!(s.version_spread().unwrap(), [("0.1.0".to_owned(), 2)], "revoked tills are not counted");
    // With a rollout: its manifest and signature as stored.
    s.put_release(&release("0.2.0", b"a")).unwrap();
    s.start_rollout(&rollout_of("0.2.0", 50, 1), NOW).unwrap();
    let cand = s.check_update(&a, "0.1.0", TARGET, NOW).unwrap().unwrap();
    assert_eq!(cand.manifest, release("0.2.0", b"a").manifest);
    assert_eq!(cand.signature.as_deref(), Some("c2ln"));
    assert_eq!((cand.rollout.version.as_str(), cand.rollout.stage), ("0.2.0", Stage::Canary));
    assert_eq!(s.check_update(&a, "0.1.0", "aarch64-unknown-linux-gnu", NOW).unwrap(), None);
}
