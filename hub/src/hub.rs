//! The hub's plain state, what the HTTP layer, the reservation planner and the tests share: storage, the store
//! documents, the clock, the reservation store and the wake handles of the background tasks. It knows no HTTP;
//! [`crate::app`] builds it from the resolved [`crate::Config`].

use std::sync::Arc;

use crate::Clock;
use crate::docs::{Docs, SyncLimits};
use crate::storage::Storage;
use crate::storage::reservations::ReservationStore;
use crate::wake::{OutboxWake, PlannerWake};

/// The hub's state below its HTTP surface. Cloning shares it.
#[derive(Clone)]
pub struct Hub {
    pub storage: Arc<dyn Storage>,
    pub docs: Arc<Docs>,
    pub clock: Arc<dyn Clock>,
    /// Escrow and reservations ([`crate::reservations`]); `None` on a backend without them.
    pub reservations: Option<Arc<dyn ReservationStore>>,
    /// Signalled when the outbox may hold new entries.
    pub outbox: OutboxWake,
    /// Signalled after uploads and when a store's document holds are due.
    pub planner: PlannerWake,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("reservations", &self.reservations.is_some()).finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub on `storage` with its documents bounded by `sync`, no reservation store and fresh wake handles.
    pub fn new(storage: Arc<dyn Storage>, clock: Arc<dyn Clock>, sync: SyncLimits) -> Hub {
        Hub {
            docs: Arc::new(Docs::new(storage.clone(), sync)),
            storage,
            clock,
            reservations: None,
            outbox: OutboxWake::default(),
            planner: PlannerWake::default(),
        }
    }

    /// The hub's clock, in unix seconds.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// The reservation store, when the backend keeps reservations.
    pub fn reservation_store(&self) -> Option<Arc<dyn ReservationStore>> {
        self.reservations.clone()
    }
}
