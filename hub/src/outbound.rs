//! What the hub sends to an ERP, a CRM or any other subscriber: the versioned event object of every webhook
//! delivery and of every NATS JetStream message (docs/INTEGRATION.md, "The delivery contract").
//!
//! These are boundary types: they are built from the outbox's stored entries by explicit conversions, and they are
//! the only shape a receiver ever sees. Within one [`SCHEMA`] fields are only added, never renamed, retyped or
//! removed; a change a receiver could misread bumps [`SCHEMA`].

use serde::Serialize;
use serde_json::Value;

use crate::storage::OutboxEntry;
use crate::time_fmt::rfc3339;

/// The version of [`OutboundEvent`]'s shape, sent as its `schema` field.
pub const SCHEMA: u32 = 1;

/// One event as a receiver gets it: an element of a webhook batch's `events`, or the whole body of a NATS message.
///
/// Fields are declared in alphabetical order: that is the order the untyped payload before it wrote them in (a
/// sorted JSON map), so a body is byte for byte what it was, with `"schema":1` added.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboundEvent {
    /// The event body as the till journaled it (its canonical JSON, parsed); `null` if it is not JSON, which the
    /// hub never stores.
    pub body: Value,
    /// The entry's outbox position, as a decimal string: it grows with hub order.
    pub cursor: String,
    pub event_id: uuid::Uuid,
    /// The journal chain hash of the entry (64 lowercase hex digits).
    pub hash: String,
    pub kind: String,
    /// When it happened at the till (RFC 3339 with the till's offset).
    pub occurred_at: String,
    /// When the hub stored it (RFC 3339, UTC, whole seconds).
    pub received_at: String,
    /// [`SCHEMA`].
    pub schema: u32,
    /// The entry's position in its till's journal.
    pub seq: u64,
    pub store: String,
    pub till: String,
}

impl From<&OutboxEntry> for OutboundEvent {
    fn from(e: &OutboxEntry) -> OutboundEvent {
        OutboundEvent {
            body: serde_json::from_str(&e.event.body).unwrap_or(Value::Null),
            cursor: e.pos.to_string(),
            event_id: e.event.event_id,
            hash: e.event.hash.clone(),
            kind: e.event.kind.clone(),
            occurred_at: e.event.occurred_at.clone(),
            received_at: rfc3339(e.received_at),
            schema: SCHEMA,
            seq: e.event.seq,
            store: e.event.store.clone(),
            till: e.event.till.clone(),
        }
    }
}

/// The body of one webhook request: `{"events": [...], "subscription": "<id>"}`, in outbox order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WebhookBatch<'a> {
    pub events: Vec<OutboundEvent>,
    /// The subscription's id (also in the `StoreSync-Subscription` header).
    pub subscription: &'a str,
}

impl<'a> WebhookBatch<'a> {
    /// The batch of `entries` for the subscription `subscription`.
    pub fn new(subscription: &'a str, entries: &[OutboxEntry]) -> WebhookBatch<'a> {
        WebhookBatch { events: entries.iter().map(OutboundEvent::from).collect(), subscription }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::storage::StoredEvent;

    fn entry(pos: i64, seq: u64, body: &str) -> OutboxEntry {
        OutboxEntry {
            pos,
            event: StoredEvent {
                hub_pos: pos,
                event_id: uuid::Uuid::from_u128(0x0b8f_6c5e_3c1a_4a8e_9d2f_1e2a_3b4c_5d6e + u128::from(seq)),
                store: "S.1".into(),
                till: "T2".into(),
                seq,
                kind: "sale".into(),
                occurred_at: "2026-11-27T10:11:58+01:00".into(),
                body: body.into(),
                hash: "9c".repeat(32),
                quarantined: false,
            },
            received_at: 1_795_770_750,
        }
    }

    /// The payload as the outbox built it before this type (its `payload` function, verbatim).
    fn untyped(e: &OutboxEntry) -> Value {
        let body: Value = serde_json::from_str(&e.event.body).unwrap_or(Value::Null);
        json!({
            "event_id": e.event.event_id,
            "cursor": e.pos.to_string(),
            "store": e.event.store,
            "till": e.event.till,
            "seq": e.event.seq,
            "kind": e.event.kind,
            "occurred_at": e.event.occurred_at,
            "received_at": rfc3339(e.received_at),
            "body": body,
            "hash": e.event.hash,
        })
    }

    const BODY: &str = r#"{"currency":"EUR","lines":[{"qty":2,"sku":"4006381333931","unit_price_minor":249}],"occurred_at":"2026-11-27T10:11:58+01:00","payments":[{"amount_minor":498,"method":"card"}],"schema":1}"#;

    #[test]
    fn an_outbound_event_is_the_old_payload_plus_its_schema() {
        for e in [entry(48_210, 1841, BODY), entry(1, 1, "not json"), entry(i64::MAX, u64::MAX, "{}")] {
            let mut want = untyped(&e);
            want.as_object_mut().unwrap().insert("schema".into(), json!(1));
            let got = OutboundEvent::from(&e);
            assert_eq!(serde_json::to_value(&got).unwrap(), want);
            // Byte for byte, too: the fields come in the order the old map wrote them.
            assert_eq!(serde_json::to_string(&got).unwrap(), want.to_string());
        }
    }

    #[test]
    fn an_outbound_event_reads_as_documented() {
        let got = serde_json::to_string(&OutboundEvent::from(&entry(48_210, 1841, BODY))).unwrap();
        let want = concat!(
            r#"{"body":{"currency":"EUR","lines":[{"qty":2,"sku":"4006381333931","unit_price_minor":249}],"#,
            r#""occurred_at":"2026-11-27T10:11:58+01:00","payments":[{"amount_minor":498,"method":"card"}],"#,
            r#""schema":1},"cursor":"48210","event_id":"0b8f6c5e-3c1a-4a8e-9d2f-1e2a3b4c649f","#,
            r#""hash":"9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c9c","kind":"sale","#,
            r#""occurred_at":"2026-11-27T10:11:58+01:00","received_at":"2026-11-27T09:12:30Z","schema":1,"#,
            r#""seq":1841,"store":"S.1","till":"T2"}"#,
        );
        assert_eq!(got, want);
    }

    #[test]
    fn a_webhook_batch_is_the_old_envelope_of_versioned_events() {
        let entries = [entry(7, 1, BODY), entry(9, 2, "{}")];
        let got = serde_json::to_string(&WebhookBatch::new("sub_4f1c2b7a9d0e3386", &entries)).unwrap();
        let events: Vec<Value> = entries
            .iter()
            .map(|e| {
                let mut v = untyped(e);
                v.as_object_mut().unwrap().insert("schema".into(), json!(SCHEMA));
                v
            })
            .collect();
        assert_eq!(got, json!({"subscription": "sub_4f1c2b7a9d0e3386", "events": events}).to_string());
        assert!(
            got.starts_with(r#"{"events":[{"body":"#) && got.ends_with(r#"}],"subscription":"sub_4f1c2b7a9d0e3386"}"#)
        );
    }
}
