//! The building blocks of the hub's OpenAPI document that are not handlers: its info, tags and security schemes
//! ([`base`]), the refusals every admin or till endpoint shares ([`AdminRefusals`], [`TillRefusals`]) and the
//! schemas of bodies the handlers read or write themselves ([`Binary`], [`ReleaseUpload`]). The document itself is
//! [`super::openapi`].

use storesync_shared::wire::ErrorBody;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The security scheme of the admin endpoints: `Authorization: Bearer <admin token>`.
pub const ADMIN_TOKEN: &str = "admin_token";
/// The security scheme of the till endpoints: `Authorization: Bearer sst_…` (a till credential).
pub const TILL_CREDENTIAL: &str = "till_credential";

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            ADMIN_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The hub's admin token: `STORESYNC_ADMIN_TOKEN`, or the generated `<data-dir>/admin.token`",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            TILL_CREDENTIAL,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("sst_…")
                    .description(Some(
                        "A till credential from `POST /v1/enroll`; the store and till of a request are the \
                         credential's, never a request field",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "storesync hub",
        description = "The head-office hub: till enrolment, exactly-once journal ingest, store documents (CRDT \
                       sync, head-office prices and stock), agent releases and staged rollouts, and the admin \
                       views. Every error is `{\"error\": code, \"detail\": text}` (upload refusals may add \
                       `expected_seq` or `seq`). See docs/API.md."
    ),
    modifiers(&SecuritySchemes),
    components(schemas(ErrorBody)),
    tags(
        (name = "till", description = "Enrolment and sync, for tills (a till credential)"),
        (name = "admin", description = "Head office (the admin token)"),
        (name = "releases", description = "Agent releases and staged rollouts"),
        (name = "operations", description = "Health, metrics and this document"),
    )
)]
struct ApiDoc;

/// The refusals every admin endpoint can answer, besides its own.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only describes responses; `ApiError` makes them.
pub(crate) enum AdminRefusals {
    /// `unauthorized`: no admin token, or a wrong one (`WWW-Authenticate: Bearer`)
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `storage_busy` (with `Retry-After`) or `storage_unavailable`
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The refusals every till endpoint can answer, besides its own.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only describes responses; `ApiError` makes them.
pub(crate) enum TillRefusals {
    /// `unauthorized`: a missing, unknown or revoked credential (`WWW-Authenticate: Bearer`)
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `rate_limited`: the till is over its request rate; `overloaded` (upload and document sync): the hub sheds
    /// load (both with `Retry-After`)
    #[response(status = 429)]
    RateLimited(ErrorBody),
    /// `storage_busy` (with `Retry-After`) or `storage_unavailable`
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

// Documentation only: the schema of a raw body (`application/octet-stream`, `application/gzip`).
/// Raw bytes.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // Only describes a body.
pub(crate) struct Binary(Vec<u8>);

// Documentation only: `admin_upload_release` reads the parts itself.
/// A release upload: `manifest`, `signature` (optional) and `archive`; nothing is stored on any refusal.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Only describes the form.
pub(crate) struct ReleaseUpload {
    /// The exact bytes of `manifest.json` (at most 8 KiB).
    #[schema(value_type = String, format = Binary)]
    manifest: Vec<u8>,
    /// The base64 text of `manifest.sig`.
    signature: Option<String>,
    /// The signed `.tar.gz`.
    #[schema(value_type = String, format = Binary)]
    archive: Vec<u8>,
}

/// The document's info, security schemes and tags, before the routes add their operations.
pub(crate) fn base() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}
