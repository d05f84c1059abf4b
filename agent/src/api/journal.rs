//! `GET /v1/journal`: a page of this till's journal, each entry in the POS API's own answer type
//! ([`JournalEntry`], made from [`crate::journal::Entry`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use storesync_shared::EventKind;
use storesync_shared::wire::ErrorBody;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::{ApiError, blocking};
use crate::AgentState;
use crate::journal::Entry;

/// The most journal entries one page returns.
pub const MAX_PAGE: usize = 1000;

/// One journal entry as `GET /v1/journal` answers it. The same JSON, and the same schema, as the upload's
/// `wire::JournalEvent`, but its own type: the POS API's answer changes only when the POS API does.
#[derive(Debug, Serialize, ToSchema)]
// Serialization ignores it; it keeps the schema the upload's (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
// The schema keeps the name and description it had when the upload's type was answered here, so the document
// stays the same.
#[schema(
    as = JournalEvent,
    description = "One journal entry as the agent's `GET /v1/journal` and the upload protocol carry it."
)]
pub(super) struct JournalEntry {
    seq: u64,
    event_id: Uuid,
    kind: EventKind,
    /// The body's `occurred_at` (RFC 3339 with an offset).
    occurred_at: String,
    /// The body as journaled, by `kind`: a sale, return, void, transfer or adjustment body (without `event_id`).
    body: Value,
    /// The hash of the entry before (lowercase hex; the till's genesis hash for seq 1).
    prev_hash: String,
    /// SHA-256 over the entry and `prev_hash` (lowercase hex; see `canonical`).
    hash: String,
}

impl From<Entry> for JournalEntry {
    fn from(e: Entry) -> JournalEntry {
        JournalEntry {
            seq: e.seq,
            event_id: e.event_id,
            kind: e.kind,
            occurred_at: e.occurred_at,
            body: e.body,
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct JournalQuery {
    /// Answer the entries after this seq (default 0: from the start).
    #[serde(default)]
    after_seq: u64,
    /// The most entries to answer, 1 to 1000 (default 100).
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

#[derive(Serialize, ToSchema)]
pub(super) struct JournalPage {
    /// In seq order.
    events: Vec<JournalEntry>,
}

/// `GET /v1/journal`: a page of this till's journal.
#[utoipa::path(get, path = "/v1/journal", tag = "reads",
    params(JournalQuery),
    responses(
        (status = 200, description = "Journal entries after `after_seq`, in seq order", body = JournalPage),
        (status = 400, description = "`bad_query`: an unknown parameter, or `limit` out of 1 to 1000",
            body = ErrorBody),
    ))]
pub(super) async fn journal(
    State(s): State<Arc<AgentState>>,
    q: Result<Query<JournalQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<JournalPage>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    if !(1..=MAX_PAGE).contains(&q.limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    let reads = s.journal.reads().clone();
    let entries = blocking(move || reads.page(q.after_seq, q.limit)).await?;
    Ok(Json(JournalPage { events: entries.into_iter().map(JournalEntry::from).collect() }))
}

#[cfg(test)]
mod tests {
    use utoipa::PartialSchema;

    use super::*;

    /// The POS API's entry and the upload's are documented alike, and say the same JSON.
    #[test]
    fn the_answer_is_the_wire_entry() {
        let schema = |s| serde_json::to_value(s).expect("schema");
        assert_eq!(
            schema(JournalEntry::schema()),
            schema(storesync_shared::wire::JournalEvent::schema()),
            "GET /v1/journal's entry schema drifted from the upload's"
        );
        let entry = Entry {
            seq: 3,
            event_id: Uuid::nil(),
            kind: EventKind::Sale,
            occurred_at: "2026-11-26T14:05:00+01:00".into(),
            body: serde_json::json!({"b": 1, "a": [2]}),
            prev_hash: "ab".into(),
            hash: "cd".into(),
        };
        let wire = storesync_shared::wire::JournalEvent::from(entry.clone());
        assert_eq!(
            serde_json::to_string(&JournalEntry::from(entry)).expect("answer"),
            serde_json::to_string(&wire).expect("wire")
        );
    }
}
