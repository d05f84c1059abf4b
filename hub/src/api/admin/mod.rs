//! The admin endpoints (`/v1/admin/...` and the dashboard), one file per resource. Every one is authenticated by
//! the admin token ([`crate::api::auth::AdminAuth`]) except the dashboard page, which holds no data.

pub(crate) mod documents;
pub(crate) mod enrollment;
pub(crate) mod events;
pub(crate) mod fleet;
pub(crate) mod releases;
pub(crate) mod reservations;
pub(crate) mod rollouts;
pub(crate) mod subscriptions;
