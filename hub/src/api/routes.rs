//! Every route of the hub with its OpenAPI operation: the one list the router ([`super::router`]) and the OpenAPI
//! document ([`super::openapi::document`]) are both built from. Register a handler with
//! `.routes(routes!(handler))` (handlers of one path, and only those, may share a `routes!`), never with a plain
//! `.route()`; see [`super::openapi`] for the whole recipe.
//!
//! Body limits are per group: 16 KiB for everything merged before the `MAX_SMALL_BODY` layer, 4 MiB for an upload,
//! the sync-message limit for a document sync round, 2 MiB for head-office prices and stock, and the release limit
//! (plus 64 KiB of multipart framing) for a release upload. The two sync routes that do storage work are guarded
//! by the admission ([`super::backpressure`]), nothing else is.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use storesync_shared::wire::MAX_BATCH_BYTES;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::admin::{documents, enrollment, events, fleet, releases, reservations, rollouts, subscriptions};
use super::backpressure::{Admission, Settings as BackpressureSettings, guard};
use super::ops;
use super::schema::base;
use super::state::AppState;
use super::till::{doc, enroll, update, upload};
use crate::docs::SyncLimits;

/// The most bytes of a non-upload request body.
const MAX_SMALL_BODY: usize = 16 * 1024;

/// The request body limits that are settings rather than constants, and the admission that guards the sync routes.
#[derive(Debug, Clone)]
pub(crate) struct BodyLimits {
    /// The most bytes of one CRDT sync message.
    pub(crate) sync_message: usize,
    /// The largest agent release upload (multipart framing gets 64 KiB on top).
    pub(crate) release: usize,
    /// Backpressure on `POST /v1/sync/upload` and `POST /v1/sync/doc` ([`super::backpressure`]).
    pub(crate) admission: Arc<Admission>,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            sync_message: SyncLimits::default().max_message_bytes,
            release: crate::DEFAULT_MAX_RELEASE_BYTES,
            admission: Arc::new(Admission::new(BackpressureSettings::default())),
        }
    }
}

impl BodyLimits {
    /// The limits `state` was built with.
    pub(crate) fn of(state: &AppState) -> BodyLimits {
        BodyLimits {
            sync_message: state.docs.limits().max_message_bytes,
            release: state.http.max_release_bytes,
            admission: state.http.admission.clone(),
        }
    }
}

/// Every route of the hub but `GET /openapi.json` ([`super::openapi::with_document`]).
pub(crate) fn all(limits: &BodyLimits) -> OpenApiRouter<AppState> {
    let upload = OpenApiRouter::default().routes(routes!(upload::upload)).layer(DefaultBodyLimit::max(MAX_BATCH_BYTES));
    let upload = guard(upload, &limits.admission, MAX_BATCH_BYTES);
    let sync_doc =
        OpenApiRouter::default().routes(routes!(doc::sync_doc)).layer(DefaultBodyLimit::max(limits.sync_message));
    let sync_doc = guard(sync_doc, &limits.admission, limits.sync_message);
    // Release uploads carry whole agent binaries; multipart framing gets 64 KiB on top of the limit.
    let release_upload = OpenApiRouter::default()
        .routes(routes!(releases::admin_upload_release, releases::admin_list_releases))
        .layer(DefaultBodyLimit::max(limits.release.saturating_add(64 * 1024)));
    let head_office = OpenApiRouter::default()
        .routes(routes!(documents::admin_put_prices))
        .routes(routes!(documents::admin_post_stock))
        .layer(DefaultBodyLimit::max(documents::MAX_ADMIN_BODY));
    OpenApiRouter::with_openapi(base())
        // Till
        .routes(routes!(enroll::enroll))
        .routes(routes!(upload::sync_state))
        .routes(routes!(doc::sync_snapshot))
        .routes(routes!(update::sync_update))
        .routes(routes!(update::sync_update_report))
        .routes(routes!(update::sync_release_archive))
        // Admin
        .routes(routes!(enrollment::admin_create_enrollment))
        .routes(routes!(enrollment::admin_revoke))
        .routes(routes!(events::admin_stores))
        .routes(routes!(events::admin_events))
        .routes(routes!(events::admin_quarantine))
        .routes(routes!(events::admin_release))
        .routes(routes!(documents::admin_stock))
        .routes(routes!(documents::admin_price))
        .routes(routes!(documents::admin_compact))
        .routes(routes!(documents::admin_doc))
        .routes(routes!(rollouts::admin_start_rollout, rollouts::admin_list_rollouts))
        .routes(routes!(rollouts::admin_promote))
        .routes(routes!(rollouts::admin_halt))
        .routes(routes!(rollouts::admin_resume))
        .routes(routes!(fleet::dashboard))
        .routes(routes!(fleet::admin_fleet))
        .routes(routes!(fleet::admin_fleet_store))
        .routes(routes!(fleet::admin_price_book))
        .routes(routes!(reservations::admin_put_escrow))
        .routes(routes!(reservations::admin_post_reservation))
        .routes(routes!(reservations::admin_get_reservation))
        .routes(routes!(reservations::admin_cancel_reservation))
        .routes(routes!(subscriptions::create_subscription, subscriptions::list_subscriptions))
        .routes(routes!(subscriptions::delete_subscription))
        .routes(routes!(subscriptions::dead_letters))
        .routes(routes!(subscriptions::replay))
        .routes(routes!(subscriptions::rewind))
        // Operations
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::metrics_endpoint))
        .layer(DefaultBodyLimit::max(MAX_SMALL_BODY))
        .merge(upload)
        .merge(sync_doc)
        .merge(head_office)
        .merge(release_upload)
}
