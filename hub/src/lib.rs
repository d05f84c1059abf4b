//! `storesync-hub`: the head-office side of storesync: till enrolment, exactly-once journal ingest, the fleet
//! view, the store documents (CRDT sync with tills, head-office prices and stock, epoch compaction), and the
//! agent releases with their staged rollouts ([`rollout`]; the publisher's signing side is [`release`]).
//!
//! Entry points: [`run`] (what `storesync-hub serve` calls) and [`bind`] + [`Server::serve`] for callers that need
//! the bound address first (tests, `demo`); [`router`] builds the HTTP surface on any [`AppState`]. The hub is
//! assembled in [`app`] from a resolved [`Config`]: the plain state ([`Hub`]), the HTTP state, and the background
//! tasks (outbox delivery, reservation planner) with their own wake handles ([`wake`]), all run by [`server`]
//! under one task tracker and one shutdown deadline.
//!
//! Architecture invariants: only [`storage`] knows SQL; only [`docs`] knows automerge sync and epochs; only [`api`]
//! knows HTTP and the wire format's status codes; the hub never trusts a store or till named in a request body, only the one bound to the credential.

pub mod api;
pub mod app;
pub mod config;
pub mod docs;
pub mod fleet;
pub mod hub;
pub mod outbound;
pub mod outbox;
pub mod release;
pub mod reservations;
pub mod rollout;
pub mod secrets;
pub mod server;
pub mod storage;
pub mod time_fmt;
pub mod wake;

use std::sync::atomic::{AtomicI64, Ordering};

pub use api::{AppState, backpressure, openapi, router};
pub use app::{App, db_path, open_backend, open_storage};
pub use config::{Config, DEFAULT_MAX_RELEASE_BYTES, EnrollLimits, ReleaseSettings, TillRate, TlsFiles};
pub use docs::SyncLimits;
pub use hub::Hub;
pub use server::{Server, bind, run};

/// The hub's wall clock, in unix seconds. Behind a trait so tests can move time (code expiry, rate limits).
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now: i64) -> ManualClock {
        ManualClock(AtomicI64::new(now))
    }

    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}
