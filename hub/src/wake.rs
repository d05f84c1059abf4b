//! Wake handles of the hub's background tasks: what a request (or another task) signals so the outbox delivery or
//! the reservation planner looks again now rather than at its next tick. Each task owns its own handle; the ones
//! that signal hold clones. A signal reaches the tasks waiting at that moment (`Notify::notify_waiters`): each
//! task registers before it looks, so a signal between its look and its wait is not lost.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// Wakes the outbox delivery workers ([`crate::outbox`]): new entries may be in the outbox.
#[derive(Debug, Clone, Default)]
pub struct OutboxWake(Arc<Notify>);

impl OutboxWake {
    /// Tells every waiting delivery worker to look at the outbox.
    pub fn wake(&self) {
        self.0.notify_waiters();
    }

    /// Resolves at the next [`OutboxWake::wake`].
    pub fn notified(&self) -> Notified<'_> {
        self.0.notified()
    }
}

/// Wakes the reservation planner ([`crate::reservations::run`]), and names the stores whose document holds it must
/// bring up to date (bounded by the fleet: a set of store ids).
#[derive(Debug, Clone, Default)]
pub struct PlannerWake {
    notify: Arc<Notify>,
    holds_due: Arc<Mutex<BTreeSet<String>>>,
}

impl PlannerWake {
    /// Tells the planner that tills uploaded events (their reservation actions are to be applied).
    pub fn wake(&self) {
        self.notify.notify_waiters();
    }

    /// Asks the planner to bring `store`'s document holds up to date, and wakes it.
    pub fn holds_due(&self, store: String) {
        self.holds_due.lock().unwrap_or_else(PoisonError::into_inner).insert(store);
        self.wake();
    }

    /// The stores [`PlannerWake::holds_due`] named since the last call.
    pub fn take_holds_due(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.holds_due.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Resolves at the next [`PlannerWake::wake`].
    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }
}
