//! Types that cross the network or the POS API. Versioned by the `schema` of the bodies they carry; new fields are
//! added as optional so that a hub keeps accepting last month's agents.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::canonical::{ChainError, Link, verify_link};
use crate::event::{EventBody, EventKind};

/// One journal entry as the agent's `GET /v1/journal` and the upload protocol carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JournalEvent {
    pub seq: u64,
    pub event_id: Uuid,
    pub kind: EventKind,
    /// The body's `occurred_at` (RFC 3339 with an offset).
    pub occurred_at: String,
    /// The body as journaled, by `kind`: a sale, return, void, transfer or adjustment body (without `event_id`).
    pub body: Value,
    /// The hash of the entry before (lowercase hex; the till's genesis hash for seq 1).
    pub prev_hash: String,
    /// SHA-256 over the entry and `prev_hash` (lowercase hex; see `canonical`).
    pub hash: String,
}

impl JournalEvent {
    /// Checks this entry's hash and body, and that it follows `prev` (`(seq, hash)` of the entry before it).
    pub fn verify(&self, store: &str, till: &str, prev: (u64, &str)) -> Result<(), ChainError> {
        self.verify_canonical(store, till, prev).map(drop)
    }

    /// [`JournalEvent::verify`], answering the body's canonical JSON (what was hashed), so a caller that stores it
    /// does not encode it a second time.
    pub fn verify_canonical(&self, store: &str, till: &str, prev: (u64, &str)) -> Result<Vec<u8>, ChainError> {
        let body = self.verify_link(store, till, prev)?;
        self.check_body()?;
        Ok(body)
    }

    /// The chain half of [`JournalEvent::verify`]: the entry follows `prev` and its hash matches its content. The
    /// body's meaning is not looked at ([`JournalEvent::check_body`] does that), so an entry that passes is exactly
    /// what the till journaled, whether or not this build understands its body. Answers the canonical JSON hashed.
    pub fn verify_link(&self, store: &str, till: &str, prev: (u64, &str)) -> Result<Vec<u8>, ChainError> {
        let link = Link {
            seq: self.seq,
            event_id: self.event_id,
            kind: self.kind,
            body: &self.body,
            prev_hash: &self.prev_hash,
            hash: &self.hash,
        };
        verify_link(store, till, prev, link)
    }

    /// The body half of [`JournalEvent::verify`]: [`check_body`] of this entry.
    pub fn check_body(&self) -> Result<(), ChainError> {
        check_body(self.seq, self.kind, &self.occurred_at, &self.body)
    }
}

/// Whether a stored entry's body (at `seq`, of `kind`) is a valid event of its kind, as this build's schema and
/// rules say, with `occurred_at` as its own. Needs nothing of the chain, so a stored event can be checked again
/// (the hub's quarantine release).
pub fn check_body(seq: u64, kind: EventKind, occurred_at: &str, body: &Value) -> Result<(), ChainError> {
    let bad = |detail: String| ChainError::BadBody { seq, kind: kind.to_string(), detail };
    if kind.is_hub_only() {
        return Err(bad("a till may not journal a hub-only kind".into()));
    }
    let parsed = EventBody::from_stored_ref(kind, body)
        .and_then(|b| b.validate().map(|()| b))
        .map_err(|e| bad(e.to_string()))?;
    if parsed.occurred_at() != occurred_at {
        return Err(bad("occurred_at differs from the body's".into()));
    }
    Ok(())
}

/// The error body every storesync HTTP surface answers with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
    pub detail: String,
}

/// What the POS API answers to a write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Receipt {
    pub event_id: Uuid,
    pub seq: u64,
    pub hash: String,
    /// What the POS should tell the cashier; absent when nothing. `held_for_online`: this sale sold units the
    /// store holds back for online orders (it is journaled all the same).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The most events one upload batch may carry.
pub const MAX_BATCH_EVENTS: usize = 1_000;
/// The most bytes one upload request body may have.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// `POST /v1/sync/upload`: a run of consecutive journal entries of the till named by the credential.
///
/// The store and till are never in the body: the hub takes them from the credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadRequest {
    /// Random id made when the till's journal was created; a restore from backup keeps it.
    pub journal_id: Uuid,
    /// The agent's version, shown in the fleet view.
    #[serde(default)]
    pub agent_version: String,
    /// Events journaled and not yet acknowledged, counted by the till before this batch.
    #[serde(default)]
    pub backlog: u64,
    /// Age in seconds of the oldest unacknowledged event, as the till sees it.
    #[serde(default)]
    pub oldest_unsynced_age_s: u64,
    /// The till's last journal seq.
    #[serde(default)]
    pub last_seq: u64,
    /// Consecutive entries; may be empty (a heartbeat).
    pub events: Vec<JournalEvent>,
}

/// The hub's answer to an upload: everything up to `acked_through` is stored at the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UploadAck {
    pub acked_through: u64,
    /// The hash of entry `acked_through` as the hub holds it (the genesis hash when 0).
    pub last_hash: String,
    /// Seqs of this batch that the hub stored but quarantined: their chain verifies, their body does not pass the
    /// hub's checks. They are acknowledged like the rest (and never resent); head office sees them at
    /// `GET /v1/admin/quarantine`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<u64>,
}

/// A refused upload. `expected_seq` is set for a gap: resend from there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UploadRefusal {
    pub error: String,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// `POST /v1/enroll`: exchange a one-time code for a till credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub code: String,
    #[serde(default)]
    pub agent_version: String,
}

/// The answer to an enrolment: the till's identity and its secret, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnrollResponse {
    pub store_id: String,
    pub till_id: String,
    pub credential: String,
}

/// `GET /v1/sync/state`: where the hub stands for the calling till.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TillState {
    pub store_id: String,
    pub till_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_id: Option<Uuid>,
    pub hub_seq: u64,
    pub last_hash: String,
}

/// The request and response header carrying a till's (request) or the hub's (response) CRDT epoch.
pub const EPOCH_HEADER: &str = "x-storesync-epoch";

/// `GET /v1/sync/snapshot`: the store document as the current epoch started.
///
/// `cuts` names, per till, the last journal seq whose stock effect the snapshot's `base` counters already hold; a
/// till re-applies its journal events after its cut into its own slot. `doc` is the base64 (standard alphabet,
/// padded) of the saved automerge document; `None` for epoch 0, whose document is [`crate::crdt::genesis`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EpochSnapshot {
    pub epoch: u64,
    pub cuts: std::collections::BTreeMap<String, u64>,
    pub doc: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::canonical::{ChainInput, canonical_json, event_hash};
    use crate::genesis_hash;

    fn entry(body: Value) -> JournalEvent {
        let prev = genesis_hash("S1", "T1");
        let event_id = Uuid::from_u128(7);
        let hash = event_hash(&ChainInput {
            store: "S1",
            till: "T1",
            seq: 1,
            event_id,
            kind: EventKind::Sale,
            body: &canonical_json(&body),
            prev_hash: &prev,
        });
        let occurred_at = body["occurred_at"].as_str().unwrap_or_default().to_owned();
        JournalEvent { seq: 1, event_id, kind: EventKind::Sale, occurred_at, body, prev_hash: prev, hash }
    }

    #[test]
    fn the_chain_and_the_body_are_checked_apart() {
        let good = json!({"occurred_at": "2026-11-26T14:05:00+01:00", "currency": "EUR",
                          "lines": [{"sku": "A", "qty": 1, "unit_price_minor": 100}],
                          "payments": [{"method": "card", "amount_minor": 100}]});
        let prev = genesis_hash("S1", "T1");
        assert!(entry(good.clone()).verify("S1", "T1", (0, &prev)).is_ok());

        let mut unknown = good.clone();
        unknown["loyalty_points"] = json!(4);
        let e = entry(unknown);
        assert_eq!(e.verify_link("S1", "T1", (0, &prev)).unwrap(), canonical_json(&e.body), "the chain holds");
        assert!(matches!(e.check_body(), Err(ChainError::BadBody { seq: 1, .. })));
        assert!(matches!(e.verify("S1", "T1", (0, &prev)), Err(ChainError::BadBody { .. })));

        let mut tampered = entry(good);
        tampered.body["currency"] = json!("USD");
        assert!(matches!(tampered.verify_link("S1", "T1", (0, &prev)), Err(ChainError::BadHash { seq: 1 })));
        assert!(tampered.check_body().is_ok(), "a valid body says nothing about the chain");
    }
}
