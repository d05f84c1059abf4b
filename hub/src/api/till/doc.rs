//! `POST /v1/sync/doc` (one automerge sync round of the till's store document, see [`crate::docs`]) and
//! `GET /v1/sync/snapshot` (the document the store's current epoch started from). Both answer the hub's epoch in
//! `X-Storesync-Epoch`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use storesync_shared::wire::{EPOCH_HEADER, EpochSnapshot, ErrorBody};
use tracing::{info, warn};

use crate::api::auth::TillAuth;
use crate::api::error::ApiError;
use crate::api::schema::{Binary, TillRefusals};
use crate::api::state::AppState;

const OCTET_STREAM: &str = "application/octet-stream";

fn with_epoch(mut res: Response, epoch: Option<u64>) -> Response {
    if let Some(epoch) = epoch {
        res.headers_mut().insert(EPOCH_HEADER, HeaderValue::from(epoch));
    }
    res
}

/// `POST /v1/sync/doc`: one automerge sync round with the calling till (see `crate::docs`).
#[utoipa::path(post, path = "/v1/sync/doc", tag = "till", security(("till_credential" = [])),
    params(("x-storesync-epoch" = Option<u64>, Header, description = "The till's CRDT epoch (absent: 0)")),
    request_body(content = inline(Binary), content_type = "application/octet-stream",
        description = "The till's automerge sync message, or empty"),
    responses(
        (status = 200, description = "The hub's next sync message",
            body = inline(Binary), content_type = "application/octet-stream",
            headers(("x-storesync-epoch" = u64, description = "The hub's epoch"))),
        (status = 204, description = "The hub has nothing to say", headers(("x-storesync-epoch" = u64))),
        (status = 400, description = "`invalid_epoch` or `bad_request`", body = ErrorBody),
        (status = 403, description = "`forbidden_change`: a change touches more than the till's own stock counters",
            body = ErrorBody),
        (status = 409, description = "`epoch_mismatch` (with `\"epoch\"`): load `GET /v1/sync/snapshot`",
            body = ErrorBody),
        (status = 413, description = "`message_too_large` or `document_too_large`", body = ErrorBody),
        (status = 422, description = "`bad_sync_message`", body = ErrorBody),
        TillRefusals,
    ))]
pub(crate) async fn sync_doc(
    TillAuth(till): TillAuth,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let store = till.store.clone();
    let hub_epoch = |state: AppState, store: String| async move {
        state.docs(move |d| d.read(&store, |_, meta| meta.epoch)).await.ok()
    };
    let body = match body {
        Ok(b) => b,
        Err(rej) => {
            let err = if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "message_too_large", "the sync message is too large")
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", rej.body_text())
            };
            return with_epoch(err.into_response(), hub_epoch(state, store).await);
        }
    };
    let till_epoch = match headers.get(EPOCH_HEADER).map(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()))
    {
        None => 0,
        Some(Some(e)) => e,
        Some(None) => {
            let err = ApiError::new(StatusCode::BAD_REQUEST, "invalid_epoch", "X-Storesync-Epoch must be an integer");
            return with_epoch(err.into_response(), hub_epoch(state, store).await);
        }
    };
    let now = state.now();
    let (s, t) = (till.store.clone(), till.till.clone());
    let res = state
        .docs(move |d| {
            let answer = d.sync_round(&s, &t, till_epoch, &body, now)?;
            if d.due(&answer.meta) {
                match d.compact(&s, now) {
                    Ok(rec) => info!(store_id = %s, epoch = rec.epoch, "store document compacted"),
                    Err(err) => warn!(store_id = %s, error = %err, "compaction failed"),
                }
            }
            Ok(answer)
        })
        .await;
    match res {
        Ok(answer) => {
            let res = match answer.reply {
                Some(bytes) => ([(header::CONTENT_TYPE, OCTET_STREAM)], bytes).into_response(),
                None => StatusCode::NO_CONTENT.into_response(),
            };
            with_epoch(res, Some(answer.meta.epoch))
        }
        Err(err) => {
            if err.code() != "epoch_mismatch" {
                warn!(store_id = %till.store, till_id = %till.till, error = err.code(), detail = %err.detail,
                      "sync round refused");
            }
            let epoch = match err.epoch {
                Some(e) => Some(e),
                None => hub_epoch(state, store).await,
            };
            with_epoch(err.into_response(), epoch)
        }
    }
}

/// `GET /v1/sync/snapshot`: the document the store's current epoch started from.
#[utoipa::path(get, path = "/v1/sync/snapshot", tag = "till", security(("till_credential" = [])),
    responses(
        (status = 200, description = "The store document as the current epoch started", body = EpochSnapshot,
            headers(("x-storesync-epoch" = u64, description = "The hub's epoch"))),
        TillRefusals,
    ))]
pub(crate) async fn sync_snapshot(
    TillAuth(till): TillAuth,
    State(state): State<AppState>,
) -> Result<Response, ApiError> {
    let store = till.store.clone();
    let rec = state.db(move |s| s.epoch_record(&store)).await?;
    let snap = match rec {
        None => EpochSnapshot { epoch: 0, cuts: Default::default(), doc: None },
        Some(rec) => {
            use base64::Engine as _;
            EpochSnapshot {
                epoch: rec.epoch,
                cuts: rec.cuts,
                doc: Some(base64::engine::general_purpose::STANDARD.encode(&rec.doc)),
            }
        }
    };
    let epoch = snap.epoch;
    Ok(with_epoch(Json(snap).into_response(), Some(epoch)))
}
