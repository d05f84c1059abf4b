//! Passing events on (issue #8): from the outbox to each subscription's receiver (a webhook, or a NATS JetStream
//! stream), at least once, in order, never stalled by one bad event.
//!
//! - **The outbox** is the `outbox` table: every event the hub accepts gets the next position in the same
//!   transaction as its ingest (a quarantined one only when it is released), so no subscriber gets an event the hub
//!   did not store and none is skipped. Positions only grow; a subscription's `cursor` is the position it has
//!   delivered through.
//! - **One worker per subscription** ([`run`] keeps the set in step with the stored subscriptions, once a second).
//!   A worker sends the entries after its cursor that its filters select, up to `batch_size` per request, and
//!   moves the cursor only after a 2xx. An ingest wakes every worker. Order is outbox order, so each till's events
//!   go in seq order.
//! - **Failures.** After a failed batch of several events the worker sends the head event alone (so one event the
//!   receiver refuses cannot take its neighbours down with it), backing off exponentially from 1 s to
//!   `backoff_max` (between half the step and all of it) by failures in a row: only a success resets the wait, so
//!   a receiver that stays down is tried about every `backoff_max`, not afresh after each dead letter. A single event that failed `max_attempts` times, or [`DeliverySettings::permanent_attempts`]
//!   times with a 4xx other than 408 or 429, becomes a dead letter in the same transaction that moves the cursor
//!   past it, and delivery goes on. Attempt counts live in the worker: a hub restart starts them again.
//! - **Replays** (dead letters asked for again) go first, one event per request; a rewind sets the cursor back.
//! - **What a receiver gets:** `POST` with `{"subscription", "events": [...]}`, an `Idempotency-Key` made from the
//!   batch's event ids (the same batch retried has the same key), and `StoreSync-Signature: t=<unix>,v1=<hex
//!   HMAC-SHA256(secret, "<t>.<body>")>`. Delivery is at least once: a hub killed between a receiver's 2xx and the
//!   cursor's update sends that batch again, so receivers deduplicate by `event_id` (docs/INTEGRATION.md).
//! - **NATS JetStream** subscriptions publish each event to `<subject_prefix>.<kind>.<store>` with the event id as
//!   the message id (`Nats-Msg-Id`), so JetStream stores a resent event once within its duplicate window (made 2 h
//!   when the hub creates the stream), and a batch counts as delivered when every message is acknowledged.
//! - Every task hears the hub's shutdown token; an in-flight request is abandoned at shutdown, and the cursor has
//!   not moved for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::Clock;
use crate::storage::{OutboxEntry, Storage, StorageError, Subscription};

/// How deliveries are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliverySettings {
    /// The longest wait between two attempts.
    pub backoff_max: Duration,
    /// How long a receiver may take to answer one request.
    pub timeout: Duration,
    /// Attempts of a single event the receiver refuses with a 4xx (not 408 or 429) before it is dead-lettered.
    pub permanent_attempts: u32,
}

impl Default for DeliverySettings {
    fn default() -> DeliverySettings {
        DeliverySettings {
            backoff_max: Duration::from_secs(600),
            timeout: Duration::from_secs(10),
            permanent_attempts: 3,
        }
    }
}

/// The header carrying the delivery's signature.
pub const SIGNATURE_HEADER: &str = "StoreSync-Signature";
/// The header naming the subscription.
pub const SUBSCRIPTION_HEADER: &str = "StoreSync-Subscription";

/// `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        // HMAC takes a key of any length; this cannot happen.
        return String::new();
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The `Idempotency-Key` of a batch: the first 32 hex digits of SHA-256 over its event ids joined by `,`.
pub fn idempotency_key(entries: &[OutboxEntry]) -> String {
    let mut h = Sha256::new();
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            h.update(b",");
        }
        h.update(e.event.event_id.to_string().as_bytes());
    }
    hex::encode(h.finalize())[..32].to_owned()
}

/// One event as a receiver gets it.
pub fn payload(e: &OutboxEntry) -> Value {
    let body: Value = serde_json::from_str(&e.event.body).unwrap_or(Value::Null);
    json!({
        "event_id": e.event.event_id,
        "cursor": e.pos.to_string(),
        "store": e.event.store,
        "till": e.event.till,
        "seq": e.event.seq,
        "kind": e.event.kind,
        "occurred_at": e.event.occurred_at,
        "received_at": crate::fleet::rfc3339(e.received_at),
        "body": body,
        "hash": e.event.hash,
    })
}

/// The wait before attempt `n + 1` (n ≥ 1 failures so far): `min(max, 2^(n-1) s)`, between half of it and all of it.
pub fn backoff(n: u32, max: Duration) -> Duration {
    let full = Duration::from_secs(1u64 << n.saturating_sub(1).min(20)).min(max);
    let half = full / 2;
    half + full.saturating_sub(half).mul_f64(rand::random::<f64>())
}

/// Why a delivery failed.
#[derive(Debug)]
struct Failure {
    /// The receiver refused this content (a 4xx other than 408/429): retrying will not help for long.
    permanent: bool,
    detail: String,
}

async fn deliver(
    client: &reqwest::Client,
    sub: &Subscription,
    entries: &[OutboxEntry],
    now: i64,
) -> Result<(), Failure> {
    let events: Vec<Value> = entries.iter().map(payload).collect();
    let body = serde_json::to_vec(&json!({"subscription": sub.spec.id, "events": events}))
        .map_err(|e| Failure { permanent: false, detail: format!("encoding: {e}") })?;
    let req = client
        .post(&sub.spec.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", idempotency_key(entries))
        .header(SUBSCRIPTION_HEADER, &sub.spec.id)
        .header(SIGNATURE_HEADER, signature(&sub.spec.secret, now, &body))
        .body(body);
    let resp = req.send().await.map_err(|e| Failure { permanent: false, detail: format!("request failed: {e}") })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let permanent = status.is_client_error()
        && status != reqwest::StatusCode::REQUEST_TIMEOUT
        && status != reqwest::StatusCode::TOO_MANY_REQUESTS;
    Err(Failure { permanent, detail: format!("receiver answered {status}") })
}

/// A worker's JetStream connection, made on its first delivery.
struct Nats {
    js: async_nats::jetstream::Context,
    /// The stream was made (or found) on this connection.
    stream_ready: bool,
}

/// How long JetStream remembers a message id: a batch sent again after a hub crash within this window is stored
/// once.
const NATS_DUPLICATE_WINDOW: Duration = Duration::from_secs(2 * 3600);

/// A NATS subject token for a store id: `.` (a subject separator, allowed in store ids) is written `%2E`.
pub fn subject_token(text: &str) -> String {
    text.replace('.', "%2E")
}

/// The subject an event goes to: `<prefix>.<kind>.<store>`.
pub fn subject(prefix: &str, e: &OutboxEntry) -> String {
    format!("{prefix}.{}.{}", e.event.kind, subject_token(&e.event.store))
}

async fn deliver_nats(
    conn: &mut Option<Nats>,
    sub: &Subscription,
    entries: &[OutboxEntry],
    timeout: Duration,
) -> Result<(), Failure> {
    let fail = |what: &str, e: &dyn std::fmt::Display| Failure { permanent: false, detail: format!("{what}: {e}") };
    if conn.is_none() {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(timeout)
            .connect(sub.spec.url.as_str())
            .await
            .map_err(|e| fail("connecting to NATS", &e))?;
        *conn = Some(Nats { js: async_nats::jetstream::new(client), stream_ready: false });
    }
    let Some(nats) = conn.as_mut() else { return Err(fail("connecting to NATS", &"no connection")) };
    if !nats.stream_ready {
        let config = async_nats::jetstream::stream::Config {
            name: sub.spec.stream.clone(),
            subjects: vec![format!("{}.>", sub.spec.subject_prefix)],
            duplicate_window: NATS_DUPLICATE_WINDOW,
            ..Default::default()
        };
        nats.js.get_or_create_stream(config).await.map_err(|e| fail("making the JetStream stream", &e))?;
        nats.stream_ready = true;
    }
    let mut acks = Vec::with_capacity(entries.len());
    for e in entries {
        let body = serde_json::to_vec(&payload(e)).map_err(|err| fail("encoding", &err))?;
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .message_id(e.event.event_id.to_string())
            .payload(body.into());
        let ack = nats
            .js
            .send_publish(subject(&sub.spec.subject_prefix, e), publish)
            .await
            .map_err(|err| fail("publishing", &err))?;
        acks.push(ack);
    }
    for ack in acks {
        tokio::time::timeout(timeout, ack)
            .await
            .map_err(|_| fail("waiting for JetStream", &"no acknowledgement in time"))?
            .map_err(|err| fail("JetStream refused", &err))?;
    }
    Ok(())
}

/// What the supervisor and the workers share.
#[derive(Clone)]
pub struct Delivery {
    pub storage: Arc<dyn Storage>,
    pub clock: Arc<dyn Clock>,
    pub settings: DeliverySettings,
    /// Notified after every ingest that stored events.
    pub wake: Arc<Notify>,
}

impl Delivery {
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Storage) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let storage = self.storage.clone();
        tokio::task::spawn_blocking(move || f(storage.as_ref()))
            .await
            .unwrap_or_else(|e| Err(StorageError::Backend(format!("storage task failed: {e}").into())))
    }
}

/// Keeps one worker per stored subscription until `shutdown`, then waits for the workers to stop.
pub async fn run(delivery: Delivery, shutdown: CancellationToken) {
    let client = match reqwest::Client::builder().timeout(delivery.settings.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot build the delivery HTTP client; events are not passed on");
            return;
        }
    };
    let tracker = TaskTracker::new();
    let mut workers: HashMap<String, CancellationToken> = HashMap::new();
    loop {
        match delivery.db(|s| s.list_subscriptions(false)).await {
            Ok(subs) => {
                let ids: Vec<String> = subs.into_iter().map(|s| s.spec.id).collect();
                workers.retain(|id, stop| {
                    let keep = ids.contains(id);
                    if !keep {
                        stop.cancel();
                    }
                    keep
                });
                for id in ids {
                    if !workers.contains_key(&id) {
                        let stop = shutdown.child_token();
                        workers.insert(id.clone(), stop.clone());
                        info!(subscription = %id, "delivery worker started");
                        tracker.spawn(worker(id, delivery.clone(), client.clone(), stop));
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot list subscriptions"),
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    tracker.close();
    tracker.wait().await;
}

/// Sleeps for `d` unless `stop` fires first; answers false when stopped.
async fn pause(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(d) => true,
    }
}

async fn worker(id: String, d: Delivery, client: reqwest::Client, stop: CancellationToken) {
    // Tries of the event (or batch) at the head, and failures in a row of any event: the wait grows with the
    // latter, so a receiver that stays down is not hammered afresh after each dead letter.
    let mut attempts: u32 = 0;
    let mut failures_in_row: u32 = 0;
    let mut single = false;
    let mut nats: Option<Nats> = None;
    while !stop.is_cancelled() {
        // Register for the wake-up before looking, so an ingest between the look and the wait is not missed.
        let woken = d.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let i = id.clone();
        let sub = match d.db(move |s| s.subscription(&i)).await {
            Ok(Some(sub)) => sub,
            Ok(None) => return,
            Err(e) => {
                warn!(subscription = %id, error = %e, "cannot read the subscription");
                if !pause(Duration::from_secs(1), &stop).await {
                    return;
                }
                continue;
            }
        };
        let i = id.clone();
        let replay = d.db(move |s| s.pending_replays(&i, 1)).await.unwrap_or_default().into_iter().next();
        let (batch, replaying) = match replay {
            Some((dead_letter, entry)) => (vec![entry], Some(dead_letter)),
            None => {
                let (spec, cursor) = (sub.spec.clone(), sub.cursor);
                let limit = if single { 1 } else { sub.spec.batch_size.max(1) as usize };
                match d.db(move |s| s.outbox_after(&spec, cursor, limit)).await {
                    Ok(b) => (b, None),
                    Err(e) => {
                        warn!(subscription = %id, error = %e, "cannot read the outbox");
                        (Vec::new(), None)
                    }
                }
            }
        };
        if batch.is_empty() {
            tokio::select! {
                () = stop.cancelled() => return,
                () = &mut woken => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let now = d.clock.now();
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            r = async {
                if sub.spec.kind == "nats" {
                    deliver_nats(&mut nats, &sub, &batch, d.settings.timeout).await
                } else {
                    deliver(&client, &sub, &batch, now).await
                }
            } => r,
        };
        let i = id.clone();
        match outcome {
            Ok(()) => {
                metrics::counter!("storesync_hub_deliveries_total", "result" => "delivered")
                    .increment(batch.len() as u64);
                let last = batch.last().map_or(sub.cursor, |e| e.pos);
                let res = match replaying {
                    Some(dl) => d.db(move |s| s.replayed(dl, now)).await,
                    None => d.db(move |s| s.delivered(&i, last, now)).await,
                };
                if let Err(e) = res {
                    warn!(subscription = %id, error = %e, "cannot record a delivery; it will be sent again");
                }
                attempts = 0;
                failures_in_row = 0;
                single = false;
            }
            Err(f) => {
                failures_in_row = failures_in_row.saturating_add(1);
                metrics::counter!("storesync_hub_deliveries_total", "result" => "failed").increment(1);
                let detail = f.detail.clone();
                let _ = d.db(move |s| s.delivery_failed(&i, &detail, now)).await;
                if batch.len() > 1 {
                    // Find out whether one event is the trouble: the head goes alone next.
                    single = true;
                    attempts = 1;
                } else {
                    attempts += 1;
                }
                let limit = if f.permanent {
                    d.settings.permanent_attempts.min(sub.spec.max_attempts)
                } else {
                    sub.spec.max_attempts
                };
                if batch.len() == 1 && attempts >= limit {
                    let entry = batch[0].clone();
                    warn!(subscription = %id, event_id = %entry.event.event_id, attempts, error = %f.detail,
                        "event dead-lettered; delivery goes on");
                    metrics::counter!("storesync_hub_dead_letters_total").increment(1);
                    let (i, detail) = (id.clone(), f.detail.clone());
                    let res = d.db(move |s| s.dead_letter(&i, &entry, attempts, &detail, now)).await;
                    if let Err(e) = res {
                        warn!(subscription = %id, error = %e, "cannot store a dead letter; retrying");
                    }
                    attempts = 0;
                    single = false;
                    if !pause(backoff(failures_in_row, d.settings.backoff_max), &stop).await {
                        return;
                    }
                    continue;
                }
                if !pause(backoff(failures_in_row, d.settings.backoff_max), &stop).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_a_known_vector() {
        // Computed independently: python3 -c 'import hmac,hashlib;
        // print(hmac.new(b"whsec_test_0123456789", b"1764200000.{\"a\":1}", hashlib.sha256).hexdigest())'
        assert_eq!(
            signature("whsec_test_0123456789", 1_764_200_000, br#"{"a":1}"#),
            "t=1764200000,v1=93ad5be972d0f6535641d6640d3086a1c73ffc7ab183913d1c6a94dc1d406012"
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let max = Duration::from_secs(300);
        for (n, full) in [(1, 1), (2, 2), (3, 4), (9, 256), (10, 300), (40, 300)] {
            for _ in 0..50 {
                let d = backoff(n, max);
                let full = Duration::from_secs(full);
                assert!(d >= full / 2 && d <= full, "attempt {n}: {d:?} outside [{:?}, {full:?}]", full / 2);
            }
        }
    }
}
