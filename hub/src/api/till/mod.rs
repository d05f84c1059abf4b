//! The till endpoints (`/v1/enroll`, `/v1/sync/...`): enrolment, journal upload and till state, store-document
//! sync and snapshot, and self-update. Every request but enrolment is authenticated by a till credential, and the
//! store and till it acts on are the credential's.

pub(crate) mod doc;
pub(crate) mod enroll;
pub(crate) mod update;
pub(crate) mod upload;
