//! Helpers every conformance file shares: signed chains of journal events, uploads and enrolled tills.

use serde_json::json;
use storesync_shared::canonical::ChainInput;
use storesync_shared::event::EventKind;
use storesync_shared::{canonical_json, event_hash, genesis_hash};
use uuid::Uuid;

use crate::storage::Storage;
use crate::storage::enrolment::NewEnrollment;
use crate::storage::ingest::TillId;
use crate::storage::ingest::{BatchEvent, IngestBatch};

pub(crate) const NOW: i64 = 1_800_000_000;

/// A valid journal of `n` sales of a till, seqs 1..=n, with deterministic event ids (salted by `salt`).
pub(crate) fn chain(till: &TillId, n: u64, salt: u8) -> Vec<BatchEvent> {
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
            let e = BatchEvent {
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

pub(crate) fn upload(journal_id: Uuid, events: &[BatchEvent]) -> IngestBatch {
    IngestBatch {
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

pub(crate) fn enroll<S: Storage>(s: &S, store: &str, till: &str, code: &str, cred: &str) -> TillId {
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

/// A signed event of any kind following `prev` (`(seq, hash)`).
pub(crate) fn signed(
    till: &TillId,
    prev: (u64, &str),
    kind: EventKind,
    body: serde_json::Value,
    id: u128,
) -> BatchEvent {
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
    BatchEvent {
        seq,
        event_id,
        kind,
        occurred_at: body["occurred_at"].as_str().unwrap_or_default().into(),
        body,
        prev_hash: prev.1.into(),
        hash,
    }
}
