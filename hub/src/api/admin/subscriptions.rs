//! The admin endpoints of outbound subscriptions (issue #8): create, list and delete them, list their dead
//! letters, replay dead letters, rewind a subscription. Delivery itself is [`crate::outbox`].

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use storesync_shared::event::EventKind;
use storesync_shared::wire::ErrorBody;
use utoipa::ToSchema;

use crate::api::auth::AdminAuth;
use crate::api::error::{ApiError, JsonBody, invalid};
use crate::api::schema::AdminRefusals;
use crate::api::state::AppState;
use crate::storage::{DeadLetter, NewSubscription, ReplaySelector, Subscription};
use crate::time_fmt::rfc3339;

/// A subscription as the API shows it: never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SubscriptionView {
    id: String,
    kind: String,
    url: String,
    kinds: Vec<String>,
    stores: Vec<String>,
    batch_size: u32,
    max_attempts: u32,
    /// The outbox position delivered through, as a decimal string.
    cursor: String,
    /// `nats` only; null for a webhook.
    stream: Option<String>,
    /// `nats` only; null for a webhook.
    subject_prefix: Option<String>,
    created_at: String,
    /// In listings only.
    #[serde(flatten)]
    stats: Option<DeliveryStats>,
}

/// How a subscription's delivery stands.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeliveryStats {
    /// Selected events not yet delivered.
    lag: u64,
    /// Events given up and not replayed.
    dead_letters: u64,
    last_error: Option<String>,
    last_delivery_at: Option<String>,
}

impl SubscriptionView {
    fn new(s: &Subscription, with_stats: bool) -> SubscriptionView {
        let nats = s.spec.kind == "nats";
        SubscriptionView {
            id: s.spec.id.clone(),
            kind: s.spec.kind.clone(),
            url: s.spec.url.clone(),
            kinds: s.spec.kinds.clone(),
            stores: s.spec.stores.clone(),
            batch_size: s.spec.batch_size,
            max_attempts: s.spec.max_attempts,
            cursor: s.cursor.to_string(),
            stream: nats.then(|| s.spec.stream.clone()),
            subject_prefix: nats.then(|| s.spec.subject_prefix.clone()),
            created_at: rfc3339(s.created_at),
            stats: with_stats.then(|| DeliveryStats {
                lag: s.lag,
                dead_letters: s.dead_letters,
                last_error: s.last_error.clone(),
                last_delivery_at: s.last_delivery_at.map(rfc3339),
            }),
        }
    }
}

/// `GET /v1/admin/subscriptions`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SubscriptionsAnswer {
    subscriptions: Vec<SubscriptionView>,
}

/// The answer to a deletion.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Deleted {
    id: String,
    /// Always true.
    deleted: bool,
}

/// A dead letter: an event given up for one subscription.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLetterView {
    id: i64,
    event_id: uuid::Uuid,
    store: String,
    till: String,
    seq: u64,
    kind: String,
    cursor: String,
    attempts: u32,
    last_error: String,
    dead_at: String,
    replay_requested_at: Option<String>,
    replayed_at: Option<String>,
}

impl From<&DeadLetter> for DeadLetterView {
    fn from(d: &DeadLetter) -> DeadLetterView {
        DeadLetterView {
            id: d.id,
            event_id: d.event_id,
            store: d.store.clone(),
            till: d.till.clone(),
            seq: d.seq,
            kind: d.kind.clone(),
            cursor: d.pos.to_string(),
            attempts: d.attempts,
            last_error: d.last_error.clone(),
            dead_at: rfc3339(d.dead_at),
            replay_requested_at: d.replay_requested_at.map(rfc3339),
            replayed_at: d.replayed_at.map(rfc3339),
        }
    }
}

/// `GET /v1/admin/subscriptions/{id}/dead-letters`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLettersAnswer {
    /// Oldest first.
    dead_letters: Vec<DeadLetterView>,
}

/// The answer to a replay: how many dead letters are delivered again.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Replaying {
    replaying: u64,
}

/// The answer to a rewind.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Rewound {
    id: String,
    /// Delivery restarts after this outbox position (a decimal string).
    cursor: String,
}

const DEFAULT_BATCH_SIZE: u32 = 100;
const MAX_BATCH_SIZE: u32 = 500;
const DEFAULT_MAX_ATTEMPTS: u32 = 25;
const MAX_MAX_ATTEMPTS: u32 = 100;
const MAX_FILTER_ITEMS: usize = 1000;

/// `POST /v1/admin/subscriptions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateSubscription {
    /// `webhook` or `nats` (a NATS JetStream publisher).
    kind: String,
    /// `webhook`: the `http://` or `https://` URL the events are POSTed to. `nats`: the server, `nats://host:port`
    /// (or `tls://`).
    url: String,
    /// `webhook`: the HMAC-SHA256 key of `StoreSync-Signature`, 16 to 256 characters. `nats`: not used.
    #[serde(default)]
    secret: String,
    /// `nats`: the JetStream stream, made if missing with subjects `<subject_prefix>.>` (default `STORESYNC`).
    stream: Option<String>,
    /// `nats`: events go to `<subject_prefix>.<kind>.<store>` (default `storesync`).
    subject_prefix: Option<String>,
    /// Event kinds to deliver (`sale`, `return`, `void`, `transfer_out`, `transfer_in`, `adjustment`); absent or
    /// empty: all.
    #[serde(default)]
    kinds: Vec<String>,
    /// Stores whose events to deliver; absent or empty: all.
    #[serde(default)]
    stores: Vec<String>,
    /// Events per request, 1 to 500 (default 100).
    batch_size: Option<u32>,
    /// Attempts of one event before it is dead-lettered, 1 to 100 (default 25).
    max_attempts: Option<u32>,
}

fn unknown_subscription() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "unknown_subscription", "no such subscription")
}

impl CreateSubscription {
    fn check(self, id: String) -> Result<NewSubscription, ApiError> {
        let nats = match self.kind.as_str() {
            "webhook" => false,
            "nats" => true,
            other => {
                return Err(invalid("unsupported_kind", format!("kind {other:?}: use \"webhook\" or \"nats\"")));
            }
        };
        let url = reqwest::Url::parse(&self.url).map_err(|e| invalid("invalid_url", format!("url: {e}")))?;
        let schemes: &[&str] = if nats { &["nats", "tls"] } else { &["http", "https"] };
        if !schemes.contains(&url.scheme()) || url.host_str().is_none_or(str::is_empty) {
            return Err(invalid(
                "invalid_url",
                format!("url must be a {} URL with a host", schemes.join(":// or ") + "://"),
            ));
        }
        if !nats && !(16..=256).contains(&self.secret.chars().count()) {
            return Err(invalid("invalid_secret", "secret must be 16 to 256 characters"));
        }
        if nats && !self.secret.is_empty() {
            return Err(invalid("invalid_secret", "a nats subscription has no secret"));
        }
        if !nats && (self.stream.is_some() || self.subject_prefix.is_some()) {
            return Err(invalid("invalid_body", "stream and subject_prefix are for nats subscriptions"));
        }
        let token = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let stream = if nats { self.stream.unwrap_or_else(|| "STORESYNC".into()) } else { String::new() };
        if nats && (stream.len() > 64 || !token(&stream)) {
            return Err(invalid("invalid_stream", "stream must be 1 to 64 of A-Z a-z 0-9 _ -"));
        }
        let subject_prefix =
            if nats { self.subject_prefix.unwrap_or_else(|| "storesync".into()) } else { String::new() };
        if nats && (subject_prefix.len() > 128 || !subject_prefix.split('.').all(token)) {
            return Err(invalid(
                "invalid_subject_prefix",
                "subject_prefix must be dot-separated tokens of A-Z a-z 0-9 _ -",
            ));
        }
        if self.kinds.len() > MAX_FILTER_ITEMS || self.kinds.iter().any(|k| EventKind::parse(k).is_none()) {
            return Err(invalid(
                "invalid_kinds",
                "kinds must name event kinds: sale, return, void, transfer_out, transfer_in, adjustment",
            ));
        }
        if self.stores.len() > MAX_FILTER_ITEMS || !self.stores.iter().all(|s| crate::secrets::valid_id(s)) {
            return Err(invalid("invalid_stores", "stores must be store ids (1 to 64 of A-Z a-z 0-9 . _ -)"));
        }
        let batch_size = self.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
        if !(1..=MAX_BATCH_SIZE).contains(&batch_size) {
            return Err(invalid("invalid_batch_size", format!("batch_size must be 1 to {MAX_BATCH_SIZE}")));
        }
        let max_attempts = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if !(1..=MAX_MAX_ATTEMPTS).contains(&max_attempts) {
            return Err(invalid("invalid_max_attempts", format!("max_attempts must be 1 to {MAX_MAX_ATTEMPTS}")));
        }
        let mut kinds = self.kinds;
        kinds.sort();
        kinds.dedup();
        let mut stores = self.stores;
        stores.sort();
        stores.dedup();
        Ok(NewSubscription {
            id,
            kind: self.kind,
            url: url.to_string(),
            secret: self.secret,
            kinds,
            stores,
            batch_size,
            max_attempts,
            stream,
            subject_prefix,
        })
    }
}

#[utoipa::path(post, path = "/v1/admin/subscriptions", tag = "admin", security(("admin_token" = [])),
    request_body = CreateSubscription,
    responses(
        (status = 201, description = "Created; delivery starts from the beginning of the outbox",
            body = SubscriptionView),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 422, description = "`unsupported_kind`, `invalid_url`, `invalid_secret`, `invalid_kinds`, \
            `invalid_stores`, `invalid_batch_size`, `invalid_max_attempts`, `invalid_stream`, `invalid_subject_prefix` \
            or `invalid_body`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn create_subscription(
    _: AdminAuth,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CreateSubscription>,
) -> Result<(StatusCode, Json<SubscriptionView>), ApiError> {
    let spec = req.check(format!("sub_{}", hex::encode(rand::random::<[u8; 8]>())))?;
    let now = state.now();
    let sub = state.db(move |s| s.create_subscription(&spec, now)).await?;
    tracing::info!(subscription = %sub.spec.id, url = %sub.spec.url, "subscription created");
    Ok((StatusCode::CREATED, Json(SubscriptionView::new(&sub, false))))
}

#[utoipa::path(get, path = "/v1/admin/subscriptions", tag = "admin", security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every subscription with how its delivery stands", body = SubscriptionsAnswer),
        AdminRefusals,
    ))]
pub(crate) async fn list_subscriptions(
    _: AdminAuth,
    State(state): State<AppState>,
) -> Result<Json<SubscriptionsAnswer>, ApiError> {
    let subs = state.db(|s| s.list_subscriptions(true)).await?;
    Ok(Json(SubscriptionsAnswer { subscriptions: subs.iter().map(|s| SubscriptionView::new(s, true)).collect() }))
}

#[utoipa::path(delete, path = "/v1/admin/subscriptions/{id}", tag = "admin", security(("admin_token" = [])),
    params(("id" = String, Path, description = "A subscription id")),
    responses(
        (status = 200, description = "Deleted; its dead letters go with it", body = Deleted),
        (status = 404, description = "`unknown_subscription`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn delete_subscription(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    let i = id.clone();
    if !state.db(move |s| s.delete_subscription(&i)).await? {
        return Err(unknown_subscription());
    }
    tracing::info!(subscription = %id, "subscription deleted");
    Ok(Json(Deleted { id, deleted: true }))
}

/// The subscription, or 404.
async fn existing(state: &AppState, id: &str) -> Result<Subscription, ApiError> {
    let i = id.to_owned();
    state.db(move |s| s.subscription(&i)).await?.ok_or_else(unknown_subscription)
}

#[utoipa::path(get, path = "/v1/admin/subscriptions/{id}/dead-letters", tag = "admin",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "A subscription id")),
    responses(
        (status = 200, description = "The subscription's dead letters, oldest first", body = DeadLettersAnswer),
        (status = 404, description = "`unknown_subscription`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn dead_letters(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeadLettersAnswer>, ApiError> {
    existing(&state, &id).await?;
    let list = state.db(move |s| s.list_dead_letters(&id)).await?;
    Ok(Json(DeadLettersAnswer { dead_letters: list.iter().map(DeadLetterView::from).collect() }))
}

/// `POST /v1/admin/subscriptions/{id}/replay`: by dead-letter ids, or by the time they were given up.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayRequest {
    /// Dead-letter ids.
    ids: Option<Vec<i64>>,
    /// With `to`: every dead letter given up from this moment (RFC 3339)...
    from: Option<String>,
    /// ...to this one, inclusive.
    to: Option<String>,
}

fn instant(name: &str, text: &str) -> Result<i64, ApiError> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(time::OffsetDateTime::unix_timestamp)
        .map_err(|e| invalid("invalid_replay", format!("{name}: not an RFC 3339 time: {e}")))
}

#[utoipa::path(post, path = "/v1/admin/subscriptions/{id}/replay", tag = "admin", security(("admin_token" = [])),
    params(("id" = String, Path, description = "A subscription id")),
    request_body = ReplayRequest,
    responses(
        (status = 200, description = "The selected dead letters are delivered again, one event per request, \
            before the rest", body = Replaying),
        (status = 404, description = "`unknown_subscription`", body = ErrorBody),
        (status = 422, description = "`invalid_replay`: give `ids`, or `from` and `to`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn replay(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ReplayRequest>,
) -> Result<Json<Replaying>, ApiError> {
    let which = match (req.ids, req.from, req.to) {
        (Some(ids), None, None) if !ids.is_empty() && ids.len() <= 10_000 => ReplaySelector::Ids(ids),
        (None, Some(from), Some(to)) => {
            let (from, to) = (instant("from", &from)?, instant("to", &to)?);
            if from > to {
                return Err(invalid("invalid_replay", "from is after to"));
            }
            ReplaySelector::DeadBetween(from, to)
        }
        _ => return Err(invalid("invalid_replay", "give ids (1 to 10,000 dead-letter ids), or from and to")),
    };
    existing(&state, &id).await?;
    let now = state.now();
    let n = state.db(move |s| s.request_replay(&id, &which, now)).await?;
    state.outbox.wake();
    Ok(Json(Replaying { replaying: n }))
}

/// `POST /v1/admin/subscriptions/{id}/rewind`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RewindRequest {
    /// The outbox position to deliver after, as a decimal string (`"0"`: everything again).
    cursor: String,
}

#[utoipa::path(post, path = "/v1/admin/subscriptions/{id}/rewind", tag = "admin", security(("admin_token" = [])),
    params(("id" = String, Path, description = "A subscription id")),
    request_body = RewindRequest,
    responses(
        (status = 200, description = "Delivery restarts after `cursor`", body = Rewound),
        (status = 404, description = "`unknown_subscription`", body = ErrorBody),
        (status = 422, description = "`invalid_cursor`", body = ErrorBody),
        AdminRefusals,
    ))]
pub(crate) async fn rewind(
    _: AdminAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<RewindRequest>,
) -> Result<Json<Rewound>, ApiError> {
    let cursor: i64 = req
        .cursor
        .parse()
        .ok()
        .filter(|c| *c >= 0)
        .ok_or_else(|| invalid("invalid_cursor", "cursor must be a whole number of 0 or more, as a string"))?;
    let i = id.clone();
    if !state.db(move |s| s.rewind_subscription(&i, cursor)).await? {
        return Err(unknown_subscription());
    }
    tracing::info!(subscription = %id, cursor, "subscription rewound");
    state.outbox.wake();
    Ok(Json(Rewound { id, cursor: cursor.to_string() }))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn subscription(kind: &str) -> Subscription {
        let mut sub = Subscription::new(
            NewSubscription {
                id: "sub_1".into(),
                kind: kind.into(),
                url: "nats://n:4222".into(),
                secret: "s".repeat(16),
                kinds: vec![],
                stores: vec![],
                batch_size: 100,
                max_attempts: 25,
                stream: "STORESYNC".into(),
                subject_prefix: "storesync".into(),
            },
            1_798_761_600,
        );
        sub.lag = 3;
        sub
    }

    #[test]
    fn a_subscription_shows_nats_fields_as_null_for_a_webhook_and_stats_only_in_listings() {
        let created = serde_json::to_value(SubscriptionView::new(&subscription("webhook"), false)).unwrap();
        assert_eq!(
            created,
            json!({"id": "sub_1", "kind": "webhook", "url": "nats://n:4222", "kinds": [], "stores": [],
                   "batch_size": 100, "max_attempts": 25, "cursor": "0", "stream": null, "subject_prefix": null,
                   "created_at": "2027-01-01T00:00:00Z"})
        );
        let listed = serde_json::to_value(SubscriptionView::new(&subscription("nats"), true)).unwrap();
        assert_eq!(listed["stream"], "STORESYNC");
        assert_eq!(listed["subject_prefix"], "storesync");
        assert_eq!(listed["lag"], 3);
        assert_eq!(listed["dead_letters"], 0);
        assert!(listed["last_error"].is_null() && listed["last_delivery_at"].is_null());
        assert_eq!(listed.as_object().unwrap().len(), 15);
    }

    fn check(body: Value) -> Result<NewSubscription, &'static str> {
        let req: CreateSubscription = serde_json::from_value(body).map_err(|_| "invalid_body")?;
        req.check("sub_x".into()).map_err(|e| e.code())
    }

    #[test]
    fn subscriptions_are_checked_before_anything_is_stored() {
        let hook = json!({"kind": "webhook", "url": "https://erp.example/hook", "secret": "0123456789abcdef"});
        let ok = check(hook.clone()).unwrap();
        assert_eq!((ok.batch_size, ok.max_attempts, ok.stream.as_str()), (100, 25, ""));
        let nats = check(json!({"kind": "nats", "url": "nats://127.0.0.1:4222"})).unwrap();
        assert_eq!(
            (nats.stream.as_str(), nats.subject_prefix.as_str(), nats.secret.as_str()),
            ("STORESYNC", "storesync", "")
        );
        let with = |patch: Value| {
            let mut v = hook.clone();
            for (k, x) in patch.as_object().unwrap() {
                v[k] = x.clone();
            }
            v
        };
        let cases = [
            (with(json!({"kind": "kafka"})), "unsupported_kind"),
            (with(json!({"url": "ftp://erp.example/"})), "invalid_url"),
            (with(json!({"url": "not a url"})), "invalid_url"),
            (with(json!({"url": "nats://127.0.0.1:4222"})), "invalid_url"),
            (with(json!({"secret": "short"})), "invalid_secret"),
            (with(json!({"kinds": ["sale", "refund"]})), "invalid_kinds"),
            (with(json!({"stores": ["S 1"]})), "invalid_stores"),
            (with(json!({"batch_size": 0})), "invalid_batch_size"),
            (with(json!({"batch_size": 501})), "invalid_batch_size"),
            (with(json!({"max_attempts": 101})), "invalid_max_attempts"),
            (with(json!({"stream": "S"})), "invalid_body"),
            (with(json!({"extra": 1})), "invalid_body"),
            (json!({"kind": "nats", "url": "https://x.example/"}), "invalid_url"),
            (json!({"kind": "nats", "url": "nats://n:4222", "secret": "0123456789abcdef"}), "invalid_secret"),
            (json!({"kind": "nats", "url": "nats://n:4222", "stream": "a.b"}), "invalid_stream"),
            (json!({"kind": "nats", "url": "nats://n:4222", "subject_prefix": "a..b"}), "invalid_subject_prefix"),
            (json!({"kind": "nats", "url": "nats://n:4222", "subject_prefix": "a.>"}), "invalid_subject_prefix"),
        ];
        for (body, want) in cases {
            assert_eq!(check(body.clone()).err(), Some(want), "{body}");
        }
    }
}
