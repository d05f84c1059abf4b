//! `storesync-shared`: the vocabulary the agent and the hub have in common.
//!
//! - [`event`]: the canonical retail events (wire bodies, versioned with `"schema": 1`) and their validation;
//! - [`canonical_json`]: the one byte encoding used for hashing;
//! - [`canonical`]: the journal hash chain;
//! - [`rules`]: the limits and checks every event body shares (re-exported by [`event`]);
//! - [`crdt`]: the layout of a store's automerge document (stock counters, prices) and pure helpers on it;
//! - [`wire`]: the agent ↔ hub protocol types;
//! - [`reservation`]: buy online, pick up in store: the canonical reservation events and their state machine;
//! - [`release`]: signed release manifests and the rules an agent applies before it self-updates;
//! - [`metrics`]: the process's Prometheus registry, rendered as text by both binaries' `/metrics`;
//!
//! Architecture invariant: this crate does no I/O. It knows nothing of SQL, HTTP, files or tokio, so that every
//! rule about what an event *is* lives in one place and both binaries apply it identically.

pub mod canonical;
pub mod canonical_json;
pub mod crdt;
pub mod event;
pub mod metrics;
pub mod release;
pub mod reservation;
pub mod rules;
pub mod wire;

pub use canonical::{canonical_json, event_hash, genesis_hash};
pub use event::{EventBody, EventKind, ValidationError};
