//! The canonical byte encoding and the journal hash chain.
//!
//! Canonical JSON: UTF-8, no insignificant whitespace, object keys sorted by their UTF-8 bytes, strings escaped
//! the way `serde_json` escapes them, numbers written as `serde_json` writes them (storesync bodies hold integers
//! only). It is written by hand rather than relying on `serde_json::Map` ordering, because a single crate in the
//! build enabling `serde_json/preserve_order` would silently change every hash.
//!
//! The hash of journal entry `seq` of a till is
//! `SHA-256("storesync/journal/v1" ‖ lp(store) ‖ lp(till) ‖ u64be(seq) ‖ lp(event_id) ‖ lp(kind) ‖ lp(body) ‖ lp(prev_hash))`
//! where `lp(x)` is `x`'s length as a big-endian u64 followed by its bytes, `event_id` is the lowercase hyphenated
//! UUID, `body` is the canonical JSON of the event body, and `prev_hash` is the previous entry's hash as lowercase
//! hex. The first entry chains to [`genesis_hash`] of its store and till.

use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use crate::canonical_json::canonical_json;
use crate::event::EventKind;

fn put_lp(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// The value the first journal entry of a till chains to.
pub fn genesis_hash(store: &str, till: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"storesync/genesis/v1");
    put_lp(&mut h, store.as_bytes());
    put_lp(&mut h, till.as_bytes());
    hex::encode(h.finalize())
}

/// Everything the hash of one journal entry covers.
#[derive(Debug, Clone, Copy)]
pub struct ChainInput<'a> {
    pub store: &'a str,
    pub till: &'a str,
    pub seq: u64,
    pub event_id: Uuid,
    pub kind: EventKind,
    /// The canonical JSON of the body.
    pub body: &'a [u8],
    pub prev_hash: &'a str,
}

/// The hash of one journal entry, as lowercase hex.
pub fn event_hash(input: &ChainInput<'_>) -> String {
    let mut h = Sha256::new();
    h.update(b"storesync/journal/v1");
    put_lp(&mut h, input.store.as_bytes());
    put_lp(&mut h, input.till.as_bytes());
    h.update(input.seq.to_be_bytes());
    let mut id_buf = Uuid::encode_buffer();
    put_lp(&mut h, input.event_id.hyphenated().encode_lower(&mut id_buf).as_bytes());
    put_lp(&mut h, input.kind.as_str().as_bytes());
    put_lp(&mut h, input.body);
    put_lp(&mut h, input.prev_hash.as_bytes());
    hex::encode(h.finalize())
}

/// Why one entry of a chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("seq {expected} is missing: the entry after seq {prev} is seq {seq}", prev = expected - 1)]
    Gap { seq: u64, expected: u64 },
    #[error("seq {seq}: prev_hash does not match the hash of the entry before it")]
    BrokenLink { seq: u64 },
    #[error("seq {seq}: hash does not match the entry's content")]
    BadHash { seq: u64 },
    #[error("seq {seq}: body is not a valid {kind} event: {detail}")]
    BadBody { seq: u64, kind: String, detail: String },
}

impl ChainError {
    /// The first bad seq: for a gap, the missing one.
    pub fn seq(&self) -> u64 {
        match self {
            ChainError::Gap { expected, .. } => *expected,
            ChainError::BrokenLink { seq } | ChainError::BadHash { seq } | ChainError::BadBody { seq, .. } => *seq,
        }
    }
}

/// One journal entry as its chain sees it: what [`verify_link`] checks. The agent's upload entry and the hub's
/// stored batch entry both lend their fields to it, so the chain rule is written once.
#[derive(Debug, Clone, Copy)]
pub struct Link<'a> {
    pub seq: u64,
    pub event_id: Uuid,
    pub kind: EventKind,
    /// The body as journaled (without `event_id`); it is hashed as its canonical JSON.
    pub body: &'a serde_json::Value,
    pub prev_hash: &'a str,
    pub hash: &'a str,
}

/// The chain half of verifying an entry: it follows `prev` (`(seq, hash)` of the entry before it) and its hash
/// matches its content. The body's meaning is not looked at, so an entry that passes is exactly what the till
/// journaled, whether or not this build understands its body. Answers the canonical JSON of the body (what was
/// hashed), so a caller that stores it does not encode it a second time.
pub fn verify_link(store: &str, till: &str, prev: (u64, &str), entry: Link<'_>) -> Result<Vec<u8>, ChainError> {
    let (prev_seq, prev_hash) = prev;
    if entry.seq != prev_seq + 1 {
        return Err(ChainError::Gap { seq: entry.seq, expected: prev_seq + 1 });
    }
    if entry.prev_hash != prev_hash {
        return Err(ChainError::BrokenLink { seq: entry.seq });
    }
    let body = canonical_json(entry.body);
    let computed = event_hash(&ChainInput {
        store,
        till,
        seq: entry.seq,
        event_id: entry.event_id,
        kind: entry.kind,
        body: &body,
        prev_hash: entry.prev_hash,
    });
    if computed != entry.hash {
        return Err(ChainError::BadHash { seq: entry.seq });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_and_whitespace_dropped() {
        let v = json!({"b": 1, "a": {"d": [1, 2, {"z": null, "y": true}], "c": "x\"\n"}});
        assert_eq!(
            String::from_utf8(canonical_json(&v)).unwrap(),
            r#"{"a":{"c":"x\"\n","d":[1,2,{"y":true,"z":null}]},"b":1}"#
        );
    }

    #[test]
    fn hash_depends_on_every_field() {
        let id = Uuid::nil();
        let base = ChainInput {
            store: "S1",
            till: "T1",
            seq: 1,
            event_id: id,
            kind: EventKind::Sale,
            body: b"{}",
            prev_hash: "00",
        };
        let h = event_hash(&base);
        let variants = [
            ChainInput { store: "S2", ..base },
            ChainInput { till: "T2", ..base },
            ChainInput { seq: 2, ..base },
            ChainInput { event_id: Uuid::max(), ..base },
            ChainInput { kind: EventKind::Return, ..base },
            ChainInput { body: b"{\"a\":1}", ..base },
            ChainInput { prev_hash: "01", ..base },
        ];
        for v in variants {
            assert_ne!(event_hash(&v), h, "{v:?}");
        }
        // Length prefixes keep field boundaries: ("S1","T1") and ("S","1T1") differ.
        assert_ne!(genesis_hash("S1", "T1"), genesis_hash("S", "1T1"));
    }
}
