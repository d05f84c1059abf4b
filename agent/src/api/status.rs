//! What the POS API says about the agent itself: `GET /v1/status` (the journal's figures and the sync state),
//! the staff's status page, and the Prometheus metrics.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

use super::error::{ApiError, blocking};
use crate::{AgentState, HubReach};

/// The status document. Its fields are in alphabetical order: the order the answer has always had (it was built
/// as a JSON map), so the bytes stay what they were.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct StatusAnswer {
    /// The last seq the hub has acknowledged.
    acked_seq: u64,
    /// The CRDT epoch of this till's store document.
    epoch: u64,
    /// `not_configured`, `reachable` or `unreachable`.
    #[schema(value_type = String)]
    hub: HubReach,
    hub_url: Option<String>,
    /// The drop folder: backlog, parse errors, last error (see docs/API.md).
    #[schema(value_type = Object)]
    inbox: Value,
    journal_id: String,
    /// Entries in the journal.
    journal_len: u64,
    /// The last sync round's error, if it failed.
    pub(super) last_error: Option<String>,
    last_seq: u64,
    /// When a sync round last succeeded (UTC, RFC 3339).
    last_sync_at: Option<String>,
    /// When the hub stopped answering (UTC, RFC 3339); absent while it answers.
    offline_since: Option<String>,
    /// Age in seconds of the oldest entry the hub has not acknowledged.
    oldest_unsynced_age_s: u64,
    /// Commands waiting for the journal writer.
    queue_depth: usize,
    store_id: String,
    /// The build target of this binary.
    target: String,
    till_id: String,
    /// Entries the hub has not acknowledged yet.
    pub(super) unsynced: u64,
    /// Self-update settings and what the last check found (see docs/API.md).
    #[schema(value_type = Object)]
    update: Value,
    version: String,
    writer: WriterFigures,
}

/// What the journal writer has done since the agent started.
#[derive(Debug, Serialize, ToSchema)]
struct WriterFigures {
    /// Events journaled.
    events: u64,
    /// Group commits made.
    group_commits: u64,
}

/// `GET /v1/status`: the journal's figures and the sync state.
#[utoipa::path(get, path = "/v1/status", tag = "reads",
    responses((status = 200, description = "The journal's figures and the sync state (see docs/API.md)",
        body = StatusAnswer)))]
pub(super) async fn status(State(s): State<Arc<AgentState>>) -> Result<Json<StatusAnswer>, ApiError> {
    Ok(Json(status_answer(&s).await?))
}

/// The status document: the journal's figures plus the sync state.
pub(super) async fn status_answer(s: &Arc<AgentState>) -> Result<StatusAnswer, ApiError> {
    let reads = s.journal.reads().clone();
    let js = blocking(move || reads.status()).await?;
    let sync = s.sync_status();
    let upd = s.update.lock().map(|u| u.clone()).unwrap_or_default();
    let (dir, cfg) = (s.data_dir.clone(), s.update_cfg.clone());
    let update = blocking(move || Ok(crate::update::status_json(&dir, &cfg, &upd))).await?;
    let (group_commits, events) = s.journal.writer_stats().get();
    // The inbox's view is a map in the answer, its keys in order as ever.
    let inbox = serde_json::to_value(s.inbox.view()).map_err(|e| ApiError::internal(e.into()))?;
    Ok(StatusAnswer {
        acked_seq: js.acked_seq,
        epoch: s.journal.epoch(),
        hub: sync.hub,
        hub_url: sync.hub_url,
        inbox,
        journal_id: js.journal_id,
        journal_len: js.journal_len,
        last_error: sync.last_error,
        last_seq: js.last_seq,
        last_sync_at: sync.last_sync_at.and_then(|t| t.format(&Rfc3339).ok()),
        offline_since: sync.offline_since.and_then(|t| t.format(&Rfc3339).ok()),
        oldest_unsynced_age_s: js.oldest_unsynced_age_s,
        queue_depth: s.journal.queue_depth(),
        store_id: js.store_id,
        target: crate::version::TARGET.to_owned(),
        till_id: js.till_id,
        unsynced: js.unsynced,
        update,
        version: crate::version::VERSION.to_owned(),
        writer: WriterFigures { events, group_commits },
    })
}

/// The store staff's status page (`GET /`): one HTML file, no build step, that polls `/v1/status`.
const STATUS_PAGE: &str = include_str!("../status.html");

/// `GET /`: the status page for store staff.
#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, description = "The status page (HTML; it polls `/v1/status`)",
        body = String, content_type = "text/html")))]
pub(super) async fn status_page() -> Html<&'static str> {
    Html(STATUS_PAGE)
}

/// `GET /metrics`: Prometheus text. The journal's figures are read at scrape time.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", body = String,
               content_type = "text/plain; version=0.0.4")))]
pub(super) async fn metrics_endpoint(State(s): State<Arc<AgentState>>) -> Result<Response, ApiError> {
    let reads = s.journal.reads().clone();
    let js = blocking(move || reads.status()).await?;
    metrics::gauge!("storesync_agent_unsynced_events").set(js.unsynced as f64);
    metrics::gauge!("storesync_agent_oldest_unsynced_age_seconds").set(js.oldest_unsynced_age_s as f64);
    metrics::gauge!("storesync_agent_journal_last_seq").set(js.last_seq as f64);
    metrics::gauge!("storesync_agent_writer_queue_depth").set(s.journal.queue_depth() as f64);
    let ct = [(axum::http::header::CONTENT_TYPE, storesync_shared::metrics::CONTENT_TYPE)];
    Ok((ct, storesync_shared::metrics::render()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{IdentityClaim, Journal};

    /// The typed answer says what the JSON map it replaced said, byte for byte: every key in alphabetical order.
    #[test]
    fn the_status_keeps_its_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let claim = IdentityClaim { store_id: Some("S1".into()), till_id: Some("T1".into()) };
        let (journal, writer) = Journal::open(dir.path(), &claim).expect("journal");
        let (update_checks, _) = tokio::sync::mpsc::channel(1);
        let cfg = crate::update::UpdateConfig::default();
        let state = Arc::new(AgentState::new(journal, dir.path().to_owned(), cfg, update_checks));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let answer = rt.block_on(status_answer(&state)).expect("status");
        drop(state);
        writer.join().expect("writer");
        let typed = serde_json::to_string(&answer).expect("encode");
        let as_map: Value = serde_json::from_str(&typed).expect("decode");
        assert_eq!(typed, as_map.to_string());
        assert_eq!(as_map["store_id"], "S1");
        assert_eq!(as_map["hub"], "not_configured");
    }
}
