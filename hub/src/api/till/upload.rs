//! `POST /v1/sync/upload` (a batch of the till's journal, stored exactly once) and `GET /v1/sync/state` (where the
//! hub stands for the till).

use axum::Json;
use axum::extract::State;
use storesync_shared::wire::{JournalEvent, TillState, UploadAck, UploadRefusal, UploadRequest};
use tracing::warn;

use crate::api::auth::TillAuth;
use crate::api::error::{ApiError, JsonBody};
use crate::api::schema::TillRefusals;
use crate::api::state::AppState;
use crate::storage::{BatchEvent, ChainHead, IngestBatch, Ingested, TillId};

/// An upload as storage takes it.
fn ingest_batch(req: UploadRequest) -> IngestBatch {
    IngestBatch {
        journal_id: req.journal_id,
        agent_version: req.agent_version,
        backlog: req.backlog,
        oldest_unsynced_age_s: req.oldest_unsynced_age_s,
        last_seq: req.last_seq,
        events: req.events.into_iter().map(batch_event).collect(),
    }
}

fn batch_event(e: JournalEvent) -> BatchEvent {
    BatchEvent {
        seq: e.seq,
        event_id: e.event_id,
        kind: e.kind,
        occurred_at: e.occurred_at,
        body: e.body,
        prev_hash: e.prev_hash,
        hash: e.hash,
    }
}

/// What storage did, as the till hears it.
fn upload_ack(i: Ingested) -> UploadAck {
    UploadAck { acked_through: i.acked_through, last_hash: i.last_hash, quarantined: i.quarantined }
}

/// Where the till's chain stands, as the till hears it.
fn till_state(till: TillId, head: ChainHead) -> TillState {
    TillState {
        store_id: till.store,
        till_id: till.till,
        journal_id: head.journal_id,
        hub_seq: head.hub_seq,
        last_hash: head.last_hash,
    }
}

#[utoipa::path(post, path = "/v1/sync/upload", tag = "till", security(("till_credential" = [])),
    request_body = UploadRequest,
    responses(
        (status = 200, description = "Stored through `acked_through` (quarantined seqs listed)", body = UploadAck),
        (status = 400, description = "`malformed_json`", body = UploadRefusal),
        (status = 409, description = "`seq_gap` (`expected_seq`: resend from there), `sequence_regression` (`seq`), \
            `journal_mismatch` or `duplicate_event_id` (`seq`)", body = UploadRefusal),
        (status = 413, description = "`body_too_large`: over 4 MiB", body = UploadRefusal),
        (status = 422, description = "`batch_too_large`, `not_consecutive` (`seq`), `invalid_seq`, `chain_broken` \
            (`seq`) \
            or `invalid_body`", body = UploadRefusal),
        TillRefusals,
    ))]
pub(crate) async fn upload(
    TillAuth(till): TillAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<UploadRequest>,
) -> Result<Json<UploadAck>, ApiError> {
    let now = state.now();
    let n = req.events.len();
    let t = till.clone();
    let (last_seq, oldest_age) = (req.last_seq, req.oldest_unsynced_age_s);
    let started = std::time::Instant::now();
    let batch = ingest_batch(req);
    let res = state.db(move |s| s.append_batch(&t, &batch, now)).await.map(upload_ack);
    metrics::histogram!("storesync_hub_ingest_duration_seconds").record(started.elapsed().as_secs_f64());
    match &res {
        Ok(ack) => {
            metrics::histogram!("storesync_hub_upload_batch_events").record(n as f64);
            metrics::counter!("storesync_hub_uploaded_events_total").increment(n as u64);
            let backlog = last_seq.saturating_sub(ack.acked_through);
            let labels = [("store", till.store.clone()), ("till", till.till.clone())];
            metrics::gauge!("storesync_hub_till_backlog_events", &labels).set(backlog as f64);
            let age = if backlog == 0 { 0 } else { oldest_age };
            metrics::gauge!("storesync_hub_till_oldest_unsynced_age_seconds", &labels).set(age as f64);
            tracing::debug!(store_id = %till.store, till_id = %till.till, events = n,
                            acked_through = ack.acked_through, "upload acknowledged");
            if n > 0 {
                // New events: new outbox entries to pass on, and till actions for the reservation planner.
                state.outbox.wake();
                state.planner.wake();
            }
            if !ack.quarantined.is_empty() {
                warn!(store_id = %till.store, till_id = %till.till, seqs = ?ack.quarantined,
                      "events stored in quarantine: this hub cannot process their bodies (see /v1/admin/quarantine)");
            }
        }
        Err(err) => warn!(store_id = %till.store, till_id = %till.till, error = err.code(),
                          detail = %err.detail, "upload refused"),
    }
    res.map(Json)
}

#[utoipa::path(get, path = "/v1/sync/state", tag = "till", security(("till_credential" = [])),
    responses((status = 200, description = "Where the hub stands for this till", body = TillState), TillRefusals))]
pub(crate) async fn sync_state(
    TillAuth(till): TillAuth,
    State(state): State<AppState>,
) -> Result<Json<TillState>, ApiError> {
    let t = till.clone();
    let head = state.db(move |s| s.till_state(&t)).await?.ok_or_else(ApiError::unauthorized)?;
    Ok(Json(till_state(till, head)))
}
