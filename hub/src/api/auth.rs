//! Who is calling: [`TillAuth`] (a till credential, rate-limited per till), [`AdminAuth`] (the admin token) and
//! [`ClientIp`] (the connection's peer, for enrolment limits). The store and till of a till request come from the
//! credential alone, never from the request.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use tracing::warn;

use super::error::ApiError;
use super::state::AppState;
use crate::secrets;
use crate::storage::TillId;

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A request authenticated by a till credential: the store and till it names.
pub struct TillAuth(pub TillId);

impl FromRequestParts<AppState> for TillAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token =
            bearer(parts).filter(|t| t.starts_with(secrets::CREDENTIAL_PREFIX)).ok_or_else(ApiError::unauthorized)?;
        let hash = secrets::digest(token);
        let till = state.db(move |s| s.authenticate(&hash)).await?.ok_or_else(ApiError::unauthorized)?;
        let key = format!("{}/{}", till.store, till.till);
        if let Err(not_until) = state.http.till_rate.check_key(&key) {
            use governor::clock::Clock as _;
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            warn!(store = %till.store, till = %till.till, "till over its request rate");
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("till {key} is over its request rate; retry in {} ms", wait.as_millis().max(1)),
            )
            .with_retry_after(wait.as_secs().max(1)));
        }
        Ok(TillAuth(till))
    }
}

/// A request authenticated by the admin token.
pub struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match bearer(parts) {
            Some(token) if secrets::constant_time_eq(token, &state.http.admin_token) => Ok(AdminAuth),
            _ => Err(ApiError::unauthorized()),
        }
    }
}

/// The client's IP address, as the connection saw it (no proxy headers are trusted).
pub(crate) struct ClientIp(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(a)| a.ip().to_string());
        Ok(ClientIp(ip.unwrap_or_else(|| "unknown".into())))
    }
}
