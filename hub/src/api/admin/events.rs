//! Stores, events and the quarantine: `GET /v1/admin/stores` (every store with its tills' chain health),
//! `GET /v1/admin/events` (events in hub order, by cursor), `GET /v1/admin/quarantine` (events stored in the chain
//! that this hub cannot process) and `POST /v1/admin/quarantine/release` (one of them, once it can).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use storesync_shared::wire::ErrorBody;
use tracing::info;
use utoipa::ToSchema;

use crate::api::auth::AdminAuth;
use crate::api::check::check_ids;
use crate::api::error::{ApiError, JsonBody, invalid_query};
use crate::api::schema::AdminRefusals;
use crate::api::state::AppState;
use crate::storage::{QuarantinedEvent, ReleaseOutcome, StoreView, StoredEvent, TillView};
use crate::time_fmt::rfc3339;

const DEFAULT_EVENTS_LIMIT: usize = 100;
const MAX_EVENTS_LIMIT: usize = 1000;

/// `GET /v1/admin/stores`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StoresAnswer {
    stores: Vec<StoreEntry>,
}

/// One store and its tills.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StoreEntry {
    store: String,
    tills: Vec<TillEntry>,
}

/// One till's chain and link health.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TillEntry {
    till: String,
    /// RFC 3339; null when never seen.
    last_seen: Option<String>,
    last_seq: u64,
    hub_seq: u64,
    backlog: u64,
    oldest_unsynced_age_s: u64,
    version: String,
    chain_ok: bool,
    last_error: Option<String>,
    enrolled: bool,
    revoked: bool,
    quarantined: u64,
}

impl From<TillView> for TillEntry {
    fn from(t: TillView) -> TillEntry {
        TillEntry {
            till: t.till,
            last_seen: t.last_seen.map(rfc3339),
            last_seq: t.last_seq,
            hub_seq: t.hub_seq,
            backlog: t.backlog,
            oldest_unsynced_age_s: t.oldest_unsynced_age_s,
            version: t.version,
            chain_ok: t.chain_ok,
            last_error: t.last_error,
            enrolled: t.enrolled,
            revoked: t.revoked,
            quarantined: t.quarantined,
        }
    }
}

impl From<StoreView> for StoreEntry {
    fn from(s: StoreView) -> StoreEntry {
        StoreEntry { store: s.store, tills: s.tills.into_iter().map(TillEntry::from).collect() }
    }
}

/// A stored event as the admin endpoints list it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventView {
    /// Pass it as `after` for the events after this one.
    cursor: String,
    event_id: uuid::Uuid,
    store: String,
    till: String,
    seq: u64,
    kind: String,
    occurred_at: String,
    /// The event's body as the till sent it (null if it is not JSON).
    #[schema(value_type = Object)]
    body: Value,
    hash: String,
    quarantined: bool,
}

impl From<StoredEvent> for EventView {
    fn from(e: StoredEvent) -> EventView {
        EventView {
            cursor: e.hub_pos.to_string(),
            event_id: e.event_id,
            store: e.store,
            till: e.till,
            seq: e.seq,
            kind: e.kind,
            occurred_at: e.occurred_at,
            body: serde_json::from_str(&e.body).unwrap_or(Value::Null),
            hash: e.hash,
            quarantined: e.quarantined,
        }
    }
}

/// `GET /v1/admin/events`: a page of events in hub order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventsAnswer {
    events: Vec<EventView>,
    /// The cursor of the last event listed; null on an empty page.
    next: Option<String>,
}

/// A quarantined event: the event and why and when it was quarantined (and released).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct QuarantinedView {
    #[serde(flatten)]
    event: EventView,
    reason: String,
    quarantined_at: String,
    released_at: Option<String>,
}

impl From<QuarantinedEvent> for QuarantinedView {
    fn from(q: QuarantinedEvent) -> QuarantinedView {
        QuarantinedView {
            event: q.event.into(),
            reason: q.reason,
            quarantined_at: rfc3339(q.quarantined_at),
            released_at: q.released_at.map(rfc3339),
        }
    }
}

/// `GET /v1/admin/quarantine`: a page of quarantined events in hub order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct QuarantineAnswer {
    quarantined: Vec<QuarantinedView>,
    next: Option<String>,
}

/// The answer to a release from quarantine.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Released {
    store: String,
    till: String,
    seq: u64,
    /// Always true.
    released: bool,
}

#[utoipa::path(get, path = "/v1/admin/stores", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, description = "Every store with its tills", body = StoresAnswer), AdminRefusals))]
pub(crate) async fn admin_stores(_: AdminAuth, State(state): State<AppState>) -> Result<Json<StoresAnswer>, ApiError> {
    let stores = state.db(|s| s.list_stores()).await?;
    Ok(Json(StoresAnswer { stores: stores.into_iter().map(StoreEntry::from).collect() }))
}

#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    store: Option<String>,
    after: Option<String>,
    limit: Option<String>,
    /// `GET /v1/admin/quarantine` only: also list released events.
    released: Option<String>,
}

/// A page of an event listing: `(store filter, after cursor, limit)`, each checked.
fn events_page(
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<(Option<String>, i64, usize, EventsQuery), ApiError> {
    let Query(q) = query.map_err(|e| invalid_query(&e))?;
    let after = match q.after.as_deref().filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => s.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_cursor", "after must be a cursor from `next`")
        })?,
    };
    let limit = match q.limit.as_deref() {
        None => DEFAULT_EVENTS_LIMIT,
        Some(s) => s.parse::<usize>().ok().filter(|v| *v >= 1).ok_or_else(|| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_limit", "limit must be a positive integer")
        })?,
    }
    .min(MAX_EVENTS_LIMIT);
    let store = q.store.clone().filter(|s| !s.is_empty());
    Ok((store, after, limit, q))
}

#[utoipa::path(get, path = "/v1/admin/events", tag = "admin", security(("admin_token" = [])),
    params(
        ("store" = Option<String>, Query, description = "Only this store's events"),
        ("after" = Option<String>, Query, description = "A cursor: the `next` of the previous page"),
        ("limit" = Option<usize>, Query, description = "At most this many (default 100, at most 1000)"),
    ),
    responses(
        (status = 200, description = "Events in hub order", body = EventsAnswer),
        (status = 422, description = "`invalid_query`, `invalid_cursor` or `invalid_limit`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn admin_events(
    _: AdminAuth,
    State(state): State<AppState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<EventsAnswer>, ApiError> {
    let (store, after, limit, _) = events_page(query)?;
    let events = state.db(move |s| s.list_events(store.as_deref(), after, limit)).await?;
    let next = events.last().map(|e| e.hub_pos.to_string());
    Ok(Json(EventsAnswer { events: events.into_iter().map(EventView::from).collect(), next }))
}

#[utoipa::path(get, path = "/v1/admin/quarantine", tag = "admin", security(("admin_token" = [])),
    params(
        ("store" = Option<String>, Query, description = "Only this store's events"),
        ("after" = Option<String>, Query, description = "A cursor: the `next` of the previous page"),
        ("limit" = Option<usize>, Query, description = "At most this many (default 100, at most 1000)"),
        ("released" = Option<bool>, Query, description = "Also list released events (default false)"),
    ),
    responses(
        (status = 200, description = "Quarantined events in hub order", body = QuarantineAnswer),
        (status = 422, description = "`invalid_query`, `invalid_cursor` or `invalid_limit`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn admin_quarantine(
    _: AdminAuth,
    State(state): State<AppState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<QuarantineAnswer>, ApiError> {
    let (store, after, limit, q) = events_page(query)?;
    let released = match q.released.as_deref() {
        None | Some("" | "false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_query",
                "released must be true or false",
            ));
        }
    };
    let found = state.db(move |s| s.list_quarantine(store.as_deref(), released, after, limit)).await?;
    let next = found.last().map(|q| q.event.hub_pos.to_string());
    Ok(Json(QuarantineAnswer { quarantined: found.into_iter().map(QuarantinedView::from).collect(), next }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReleaseRequest {
    store: String,
    till: String,
    seq: u64,
}

/// Whether this hub can now process a stored event: the body check of the upload path.
fn recheck(e: &StoredEvent) -> Result<(), String> {
    let kind = storesync_shared::EventKind::parse(&e.kind).ok_or_else(|| format!("unknown kind {}", e.kind))?;
    let body: Value = serde_json::from_str(&e.body).map_err(|err| format!("stored body: {err}"))?;
    storesync_shared::wire::check_body(e.seq, kind, &e.occurred_at, &body).map_err(|err| err.to_string())
}

#[utoipa::path(post, path = "/v1/admin/quarantine/release", tag = "admin", security(("admin_token" = [])),
    request_body = ReleaseRequest,
    responses(
        (status = 200, description = "Released into the outbox", body = Released),
        (status = 400, description = "`malformed_json`: the body is not JSON", body = ErrorBody),
        (status = 404, description = "`not_quarantined`", body = ErrorBody),
        (status = 409, description = "`still_invalid`: the hub still cannot process the event", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 422, description = "`invalid_id` or `invalid_body`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn admin_release(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<ReleaseRequest>,
) -> Result<Json<Released>, ApiError> {
    let till = check_ids(&req.store, &req.till)?;
    let now = state.now();
    let (t, seq) = (till.clone(), req.seq);
    match state.db(move |s| s.release_quarantined(&t, seq, now, &recheck)).await? {
        ReleaseOutcome::Released => {
            info!(store_id = %till.store, till_id = %till.till, seq, "quarantined event released");
            Ok(Json(Released { store: till.store, till: till.till, seq, released: true }))
        }
        ReleaseOutcome::NotQuarantined => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_quarantined",
            format!("no quarantined event at store {} till {} seq {seq}", till.store, till.till),
        )),
        ReleaseOutcome::StillInvalid(why) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "still_invalid",
            format!("this hub still cannot process the event: {why}"),
        )),
    }
}
