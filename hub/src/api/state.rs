//! [`AppState`], what every handler shares: the hub's plain state ([`Hub`], reached through `Deref`) and what only
//! the HTTP surface needs (the admin token, the per-till rate limiter, enrolment limits, release keys, fleet
//! thresholds and the sync admission), plus the helpers that run storage and document work on the blocking pool
//! and answer [`ApiError`]s.

use std::sync::Arc;

use axum::http::StatusCode;
use tracing::error;

use super::backpressure::{Admission, Settings as BackpressureSettings};
use super::error::{ApiError, unknown_store};
use crate::docs::{DocError, Docs, SyncLimits};
use crate::fleet::FleetThresholds;
use crate::hub::Hub;
use crate::storage::Storage;
use crate::storage::reservations::{ReservationError, ReservationStore};
use crate::{Clock, EnrollLimits, TillRate};

/// What only the HTTP surface needs.
pub(crate) struct Http {
    pub(crate) admin_token: String,
    pub(crate) enroll_limits: EnrollLimits,
    /// One token bucket per till ("store/till"); bounded by the number of enrolled tills.
    pub(crate) till_rate: governor::DefaultKeyedRateLimiter<String>,
    /// Publisher keys uploads are checked against (empty: none are).
    pub(crate) release_keys: Vec<ed25519_dalek::VerifyingKey>,
    pub(crate) max_release_bytes: usize,
    /// When stores count as stale or offline in the fleet view.
    pub(crate) fleet: FleetThresholds,
    /// Bounds the sync requests in flight; sheds the rest with 429 ([`super::backpressure`]).
    pub(crate) admission: Arc<Admission>,
}

/// The HTTP settings [`AppState::from_parts`] takes, checked by [`crate::app`].
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub admin_token: String,
    pub enroll_limits: EnrollLimits,
    pub till_rate: TillRate,
    pub release_keys: Vec<ed25519_dalek::VerifyingKey>,
    pub max_release_bytes: usize,
    pub fleet: FleetThresholds,
    pub backpressure: BackpressureSettings,
}

impl HttpSettings {
    /// Defaults for everything but the admin token.
    pub fn new(admin_token: String) -> HttpSettings {
        HttpSettings {
            admin_token,
            enroll_limits: EnrollLimits::default(),
            till_rate: TillRate::default(),
            release_keys: Vec::new(),
            max_release_bytes: crate::DEFAULT_MAX_RELEASE_BYTES,
            fleet: FleetThresholds::default(),
            backpressure: BackpressureSettings::default(),
        }
    }
}

/// What every handler shares. Cloning shares it.
#[derive(Clone)]
pub struct AppState {
    hub: Hub,
    pub(crate) http: Arc<Http>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl std::ops::Deref for AppState {
    type Target = Hub;

    fn deref(&self) -> &Hub {
        &self.hub
    }
}

impl AppState {
    /// A state on `storage` with default bounds and no reservation store (tests and tools).
    pub fn new(
        storage: Arc<dyn Storage>,
        admin_token: String,
        clock: Arc<dyn Clock>,
        enroll_limits: EnrollLimits,
    ) -> AppState {
        let hub = Hub::new(storage, clock, SyncLimits::default());
        AppState::from_parts(hub, HttpSettings { enroll_limits, ..HttpSettings::new(admin_token) })
    }

    /// The HTTP surface of `hub` under `settings`.
    pub fn from_parts(hub: Hub, settings: HttpSettings) -> AppState {
        let nz = |n: u32| std::num::NonZeroU32::new(n.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        let quota =
            governor::Quota::per_second(nz(settings.till_rate.per_second)).allow_burst(nz(settings.till_rate.burst));
        let http = Http {
            admin_token: settings.admin_token,
            enroll_limits: settings.enroll_limits,
            till_rate: governor::RateLimiter::keyed(quota),
            release_keys: settings.release_keys,
            max_release_bytes: settings.max_release_bytes.max(1),
            fleet: settings.fleet,
            admission: Arc::new(Admission::new(settings.backpressure)),
        };
        AppState { hub, http: Arc::new(http) }
    }

    /// This state with escrow and reservations kept in `store`.
    ///
    /// # Errors
    /// None today; kept for callers that built the state this way.
    pub fn with_reservations(mut self, store: Option<Arc<dyn ReservationStore>>) -> anyhow::Result<AppState> {
        self.hub.reservations = store;
        Ok(self)
    }

    /// The hub below this HTTP surface.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Runs one document operation on the blocking pool.
    pub(crate) async fn docs<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Docs) -> Result<T, DocError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let docs = self.hub.docs.clone();
        match tokio::task::spawn_blocking(move || f(&docs)).await {
            Ok(res) => res.map_err(Into::into),
            Err(err) => {
                error!(error = %err, "document task failed");
                Err(ApiError::internal())
            }
        }
    }

    /// Runs one storage call on the blocking pool.
    pub(crate) async fn db<T, E>(
        &self,
        f: impl FnOnce(&dyn Storage) -> Result<T, E> + Send + 'static,
    ) -> Result<T, ApiError>
    where
        T: Send + 'static,
        E: Into<ApiError> + Send + 'static,
    {
        let storage = self.hub.storage.clone();
        match tokio::task::spawn_blocking(move || f(storage.as_ref())).await {
            Ok(res) => res.map_err(Into::into),
            Err(err) => {
                error!(error = %err, "storage task failed");
                Err(ApiError::internal())
            }
        }
    }

    /// Runs one reservation-store call on the blocking pool; 503 `reservations_unavailable` without a store.
    pub(crate) async fn reservations<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn ReservationStore) -> Result<T, ReservationError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let Some(store) = self.hub.reservation_store() else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "reservations_unavailable",
                "this hub's storage keeps no reservations",
            ));
        };
        match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
            Ok(res) => res.map_err(Into::into),
            Err(err) => {
                error!(error = %err, "reservation task failed");
                Err(ApiError::internal())
            }
        }
    }

    /// The hub's now as an instant.
    pub(crate) fn now_instant(&self) -> Result<time::OffsetDateTime, ApiError> {
        crate::time_fmt::instant(self.now()).ok_or_else(ApiError::internal)
    }

    /// Checks a store id from a path or body; an impossible id is an unknown store.
    pub(crate) async fn known_store(&self, store: &str) -> Result<String, ApiError> {
        if !crate::secrets::valid_id(store) {
            return Err(unknown_store());
        }
        let s = store.to_owned();
        if self.db(move |st| st.store_known(&s)).await? { Ok(store.to_owned()) } else { Err(unknown_store()) }
    }
}
