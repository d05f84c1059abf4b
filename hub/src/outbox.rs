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
//! - **Several hub instances on one database** (docs/SCALING.md) each run this supervisor, but a subscription is
//!   delivered by one instance at a time: its worker must hold the subscription's **delivery lease**
//!   ([`crate::storage::OutboxStore::lease_subscription`], one conditional UPDATE: free, already ours, or run out). A lease lasts
//!   [`LEASE_S`] and is renewed while at least [`DeliverySettings::timeout`] + 10 s of it is left (so it outlasts
//!   any request begun under it), also while the worker waits out a backoff; a worker without it asks again every
//!   [`LEASE_POLL`]. Each instance's lease owner is the id in `<data-dir>/instance.id` ([`instance_id`]), so a
//!   restarted instance takes its own leases straight back; a graceful stop gives them up, and an instance that
//!   died loses them when they run out. A takeover may send the batch in flight again (at least once, as after a
//!   crash), and the new holder starts its retry counts afresh. Instance clocks must agree to within seconds
//!   (NTP): a lease is judged by the clock of whoever asks for it.
//! - Every task hears the hub's shutdown token; an in-flight request is abandoned at shutdown, and the cursor has
//!   not moved for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::Clock;
use crate::outbound::{OutboundEvent, WebhookBatch};
use crate::storage::{OutboxEntry, Storage, StorageError, Subscription};

/// How deliveries are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliverySettings {
    /// This instance's delivery-lease owner ([`instance_id`]); `None`: a new one per start (a restart then waits
    /// for the leases it held to run out).
    pub owner: Option<uuid::Uuid>,
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
            owner: None,
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
    let body = serde_json::to_vec(&WebhookBatch::new(&sub.spec.id, entries))
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
        let body = serde_json::to_vec(&OutboundEvent::from(e)).map_err(|err| fail("encoding", &err))?;
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
    /// Signalled when the outbox may hold new entries (after an ingest, a reservation change, a replay).
    pub wake: crate::wake::OutboxWake,
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

/// How long a delivery lease lasts from its last renewal (longer when [`DeliverySettings::timeout`] is over 10 s).
pub const LEASE_S: i64 = 30;
/// How often an instance that does not hold a subscription's lease asks for it again.
pub const LEASE_POLL: Duration = Duration::from_secs(2);

/// This instance's id, kept in `<data_dir>/instance.id` (made on first use): the owner of its delivery leases, the
/// same across restarts. Every hub instance needs a data dir of its own.
///
/// # Errors
/// The data dir cannot be made, or the file cannot be read or written, or holds no UUID.
pub fn instance_id(data_dir: &std::path::Path) -> anyhow::Result<uuid::Uuid> {
    use anyhow::Context as _;
    let path = data_dir.join("instance.id");
    match std::fs::read_to_string(&path) {
        Ok(text) => return text.trim().parse().with_context(|| format!("{} holds no instance id", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let id = uuid::Uuid::new_v4();
    let tmp = data_dir.join("instance.id.tmp");
    std::fs::write(&tmp, format!("{id}\n")).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// A worker's hold on its subscription's delivery lease.
struct Lease {
    id: String,
    owner: String,
    /// Until when this worker holds it, as far as it knows (0: it does not).
    until: i64,
}

impl Lease {
    /// Takes or renews the lease when it is not held or runs short; answers whether this worker holds it.
    async fn hold(&mut self, d: &Delivery) -> bool {
        let now = d.clock.now();
        // Enough left to outlast a request begun now; renewed about every 10 s.
        let reserve = i64::try_from(d.settings.timeout.as_secs()).unwrap_or(3600).min(3600) + 10;
        if self.until.saturating_sub(now) > reserve {
            return true;
        }
        let until = now + LEASE_S.max(reserve + 10);
        let (id, owner) = (self.id.clone(), self.owner.clone());
        match d.db(move |s| s.lease_subscription(&id, &owner, now, until)).await {
            Ok(true) => {
                if self.until <= now {
                    info!(subscription = %self.id, owner = %self.owner, "delivering: this instance holds the lease");
                }
                self.until = until;
                true
            }
            Ok(false) => {
                if self.until > 0 {
                    info!(subscription = %self.id, "another instance holds the delivery lease now");
                }
                self.until = 0;
                false
            }
            Err(e) => {
                warn!(subscription = %self.id, error = %e, "cannot renew the delivery lease");
                now < self.until
            }
        }
    }

    /// Gives the lease up if this worker holds it.
    async fn release(&mut self, d: &Delivery) {
        if self.until == 0 {
            return;
        }
        self.until = 0;
        let (id, owner) = (self.id.clone(), self.owner.clone());
        if let Err(e) = d.db(move |s| s.release_subscription_lease(&id, &owner)).await {
            warn!(subscription = %self.id, error = %e, "cannot give up the delivery lease; it runs out by itself");
        }
    }

    /// Sleeps for `wait` unless `stop` fires first (answers false then), renewing the lease meanwhile.
    async fn pause(&mut self, d: &Delivery, wait: Duration, stop: &CancellationToken) -> bool {
        let end = tokio::time::Instant::now() + wait;
        loop {
            let step = end.saturating_duration_since(tokio::time::Instant::now()).min(Duration::from_secs(5));
            if step.is_zero() {
                return true;
            }
            if !pause(step, stop).await {
                return false;
            }
            self.hold(d).await;
        }
    }
}

/// Keeps one worker per stored subscription until `shutdown`. The workers run on `tracker` (the hub's one task
/// tracker, which the caller waits on) and stop when `shutdown` fires.
pub async fn run(delivery: Delivery, shutdown: CancellationToken, tracker: TaskTracker) {
    let owner = delivery.settings.owner.unwrap_or_else(uuid::Uuid::new_v4).to_string();
    let client = match reqwest::Client::builder().timeout(delivery.settings.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot build the delivery HTTP client; events are not passed on");
            return;
        }
    };
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
                        let lease = Lease { id: id.clone(), owner: owner.clone(), until: 0 };
                        tracker.spawn(worker(lease, delivery.clone(), client.clone(), stop));
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
}

/// Sleeps for `d` unless `stop` fires first; answers false when stopped.
async fn pause(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(d) => true,
    }
}

async fn worker(mut lease: Lease, d: Delivery, client: reqwest::Client, stop: CancellationToken) {
    deliver_while_running(&mut lease, &d, &client, &stop).await;
    lease.release(&d).await;
}

async fn deliver_while_running(lease: &mut Lease, d: &Delivery, client: &reqwest::Client, stop: &CancellationToken) {
    let id = lease.id.clone();
    // Tries of the event (or batch) at the head, and failures in a row of any event: the wait grows with the
    // latter, so a receiver that stays down is not hammered afresh after each dead letter.
    let mut attempts: u32 = 0;
    let mut failures_in_row: u32 = 0;
    let mut single = false;
    let mut nats: Option<Nats> = None;
    while !stop.is_cancelled() {
        if !lease.hold(d).await {
            if !pause(LEASE_POLL, stop).await {
                return;
            }
            continue;
        }
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
                if !pause(Duration::from_secs(1), stop).await {
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
                    deliver(client, &sub, &batch, now).await
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
                    if !lease.pause(d, backoff(failures_in_row, d.settings.backoff_max), stop).await {
                        return;
                    }
                    continue;
                }
                if !lease.pause(d, backoff(failures_in_row, d.settings.backoff_max), stop).await {
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
