//! Protocol fuzzing by property: the POS API's event decoder and the upload decoder take arbitrary bytes, arbitrary
//! JSON and small mutations of valid requests without panicking, and what they accept is valid.
//!
//! CI runs proptest's default 256 cases per property. A longer campaign: `PROPTEST_CASES=200000 cargo test -p
//! storesync-shared --test fuzz --release` (see docs/RELIABILITY.md).

use proptest::prelude::*;
use serde_json::{Value, json};
use storesync_shared::event::{BodyType, parse_request};
use storesync_shared::wire::{JournalEvent, UploadRequest};

const TYPES: [BodyType; 5] =
    [BodyType::Sale, BodyType::Return, BodyType::Void, BodyType::Transfer, BodyType::Adjustment];

/// Arbitrary JSON, with the field names the decoders know mixed in so the search reaches past the first check.
fn arb_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("occurred_at".to_owned()),
        Just("currency".to_owned()),
        Just("lines".to_owned()),
        Just("payments".to_owned()),
        Just("refunds".to_owned()),
        Just("sku".to_owned()),
        Just("qty".to_owned()),
        Just("unit_price_minor".to_owned()),
        Just("amount_minor".to_owned()),
        Just("event_id".to_owned()),
        Just("schema".to_owned()),
        "[a-z_]{1,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        Just(json!("2026-11-26T14:05:00+01:00")),
        Just(json!("EUR")),
        ".{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..8).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn valid_sale() -> String {
    json!({
        "event_id": "0e60626e-8cde-4bff-a318-d2d03ceb008c", "occurred_at": "2026-11-26T14:05:00+01:00",
        "currency": "EUR",
        "lines": [{"sku": "A-1", "qty": 2, "unit_price_minor": 250, "discount_minor": 0}],
        "payments": [{"method": "card", "amount_minor": 500}]
    })
    .to_string()
}

/// What an accepted body must satisfy.
fn check_accepted(ty: BodyType, bytes: &[u8]) -> Result<(), TestCaseError> {
    match parse_request(ty, bytes) {
        Ok((_, body)) => {
            prop_assert!(body.validate().is_ok());
            let canonical = body.canonical();
            let (_, again) = parse_request(ty, &canonical).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            prop_assert_eq!(again.canonical(), canonical);
        }
        Err(e) => prop_assert!(!e.code.is_empty()),
    }
    Ok(())
}

proptest! {
    #[test]
    fn the_pos_decoder_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512), t in 0..5usize) {
        check_accepted(TYPES[t], &bytes)?;
    }

    #[test]
    fn the_pos_decoder_survives_arbitrary_json(v in arb_json(), t in 0..5usize) {
        check_accepted(TYPES[t], v.to_string().as_bytes())?;
    }

    #[test]
    fn the_pos_decoder_survives_mutated_valid_sales(at in any::<prop::sample::Index>(), byte in any::<u8>(),
                                                    cut in any::<prop::sample::Index>()) {
        let mut bytes = valid_sale().into_bytes();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        check_accepted(BodyType::Sale, &bytes)?;
        let n = cut.index(bytes.len());
        check_accepted(BodyType::Sale, &bytes[..n])?;
    }

    #[test]
    fn the_upload_decoder_survives_arbitrary_json(v in arb_json(), events in prop::collection::vec(arb_json(), 0..4)) {
        let mut body = json!({"journal_id": "0e60626e-8cde-4bff-a318-d2d03ceb008c", "events": events});
        if let Value::Object(extra) = v && let Value::Object(b) = &mut body {
            b.extend(extra);
        }
        if let Ok(req) = serde_json::from_slice::<UploadRequest>(body.to_string().as_bytes()) {
            let mut prev = (0u64, String::new());
            for e in &req.events {
                if e.verify("S1", "T1", (prev.0, &prev.1)).is_ok() {
                    prev = (e.seq, e.hash.clone());
                }
            }
        }
    }

    #[test]
    fn a_journal_event_with_arbitrary_fields_never_verifies_by_accident(seq in 1u64..5, body in arb_json(),
                                                                       hash in "[0-9a-f]{64}") {
        let v = json!({"seq": seq, "event_id": "0e60626e-8cde-4bff-a318-d2d03ceb008c", "kind": "sale",
                       "occurred_at": "2026-11-26T14:05:00+01:00", "body": body, "prev_hash": "", "hash": hash});
        if let Ok(e) = serde_json::from_value::<JournalEvent>(v) {
            prop_assert!(e.verify("S1", "T1", (seq - 1, "")).is_err(), "a random hash verified");
        }
    }
}
