//! The POS API on 127.0.0.1: journal writes, stock and price lookups, the journal itself, reservations to pick,
//! status, and sync on demand.
//!
//! It has no authentication of its own: it listens on loopback only, for the POS on the same machine. Every error
//! is `{"error": code, "detail": text}` ([`error`]); a write is answered only after its COMMIT returned.
//!
//! Every route is a handler annotated with `#[utoipa::path]` and registered in [`routes`] with
//! `utoipa_axum::routes!`, so the router and the OpenAPI document ([`openapi`], `GET /openapi.json`) are built from
//! one list and cannot name different endpoints. This file only declares the parts; shared pieces (the error, the
//! body extractor) live in their own leaf files, which the handlers import.

mod error;
mod journal;
mod on_demand;
mod openapi;
mod reads;
mod reservations;
mod routes;
mod status;
mod writes;

pub use error::{ApiError, Body, MAX_BODY_BYTES};
pub use journal::MAX_PAGE;
pub use routes::{document, router};
