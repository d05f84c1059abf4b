//! Backpressure on the sync endpoints: under overload the hub answers `429 overloaded` with `Retry-After` at
//! once, instead of letting requests pile up until clients time out (and then resend the same batch).
//!
//! # Design
//! Two bounds guard `POST /v1/sync/upload` and `POST /v1/sync/doc` (the requests that do storage work: an ingest
//! transaction, a document merge), in one [`Admission`] shared by both:
//! - **admitted** (`max_inflight + max_queued` slots): a request takes a slot before anything else (before its
//!   credential is checked or its body read). No slot free: `429` at once, its credential unchecked and its body
//!   read and dropped unparsed (`drain`: a client still sending its body would otherwise see a reset connection
//!   instead of the 429).
//!   Holding a slot it reads its body (at most the route's body limit, within [`BODY_READ_TIMEOUT`]), so the memory
//!   held by bodies is bounded by the slots times the route's limit, and a slow store link holds no storage permit.
//! - **in flight** (`max_inflight` permits): with its body read, the request waits for a permit at most
//!   `queue_timeout`, then runs the handler holding it. No permit in time: `429`.
//!
//! `Retry-After` is the time the requests already admitted need to pass through the permits at the recent mean
//! service time (an EWMA of permit hold times), rounded up to whole seconds, from 1 to [`MAX_RETRY_AFTER_S`]. Tills
//! add jitter to it (agent/src/sync.rs), so a crowd told the same number does not come back at the same instant.
//!
//! Everything else (admin, health, metrics, enrolment, the till's state, snapshot and update checks) is not
//! guarded: a fleet in a reconnect storm never locks head office out of its dashboard or the scraper out of
//! `/metrics`. The per-till request rate (`rate_limited`, `crate::TillRate`) is a separate, per-till bound.
//!
//! # Alarm
//! Every shed request counts in `storesync_hub_shed_requests_total{reason}` (`queue_full`, `queue_timeout`).
//! Shedding that goes on for [`ALARM_SUSTAIN`] (no gap of [`ALARM_QUIET`] without a shed) raises the alarm: the
//! gauge `storesync_hub_overloaded` is 1 and a `warn` line says how much was shed; while it lasts the line repeats
//! at most every [`ALARM_REPEAT`]; after [`ALARM_QUIET`] without a shed it clears (gauge 0, an `info` line). The
//! alarm is re-evaluated on every guarded request and at every `/metrics` scrape, so an idle hub does not keep
//! showing a stale alarm. `storesync_hub_sync_inflight` and `storesync_hub_sync_queued` (gauges) and
//! `storesync_hub_sync_queue_wait_seconds` (histogram) show how close the hub runs to its bounds.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use super::error::ApiError;

/// The longest `Retry-After` the hub asks for, in seconds.
pub const MAX_RETRY_AFTER_S: u64 = 30;
/// How long a guarded request may take to send its body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a shed request may take to send the body the hub reads and drops.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Shedding this long without a quiet gap raises the overload alarm.
pub const ALARM_SUSTAIN: Duration = Duration::from_secs(10);
/// This long without a shed request ends a shedding streak (and clears a raised alarm).
pub const ALARM_QUIET: Duration = Duration::from_secs(10);
/// While the alarm is raised, its warning repeats at most this often.
pub const ALARM_REPEAT: Duration = Duration::from_secs(60);

/// The bounds of [`Admission`] (`--max-inflight-syncs`, `--max-queued-syncs`, `--sync-queue-timeout-ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Sync requests running their handler at once.
    pub max_inflight: usize,
    /// Sync requests admitted beyond those: reading their body or waiting for a permit.
    pub max_queued: usize,
    /// The longest wait for a permit once the body is read.
    pub queue_timeout: Duration,
}

impl Default for Settings {
    /// Sized for 2,000 stores on one hub: 32 handlers keep the single SQLite writer busy while the rest of the CPU
    /// parses bodies. In the 2,000-store storm (docs/BENCHMARKS.md, "Reconnect storm") an admitted request waited
    /// 0.7 s on average for its turn (none 5 s), and the p99 of an upload stayed under 5 s, far inside the
    /// agent's 30 s request timeout.
    fn default() -> Self {
        Settings { max_inflight: 32, max_queued: 256, queue_timeout: Duration::from_secs(5) }
    }
}

impl Settings {
    /// Checks the bounds.
    ///
    /// # Errors
    /// No permit at all, or more slots than a semaphore holds.
    pub fn check(&self) -> Result<(), String> {
        if self.max_inflight == 0 {
            return Err("max_inflight_syncs must be at least 1".into());
        }
        if self.max_inflight.saturating_add(self.max_queued) > 1_000_000 {
            return Err("max_inflight_syncs + max_queued_syncs must be at most 1000000".into());
        }
        if self.queue_timeout > Duration::from_secs(600) {
            return Err("sync_queue_timeout_ms must be at most 600000".into());
        }
        Ok(())
    }
}

/// Why a request was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shed {
    /// Every admission slot was taken.
    QueueFull,
    /// No permit came within the queue timeout.
    QueueTimeout,
}

impl Shed {
    fn label(self) -> &'static str {
        match self {
            Shed::QueueFull => "queue_full",
            Shed::QueueTimeout => "queue_timeout",
        }
    }
}

/// The bounded admission of sync requests (see the module note). One per hub process.
#[derive(Debug)]
pub struct Admission {
    settings: Settings,
    admitted: Arc<Semaphore>,
    inflight: Arc<Semaphore>,
    /// Mean permit hold time, microseconds (EWMA, weight 1/8).
    service_us: AtomicU64,
    alarm: Mutex<Alarm>,
}

impl Admission {
    pub fn new(settings: Settings) -> Admission {
        let max_inflight = settings.max_inflight.max(1);
        Admission {
            settings,
            admitted: Arc::new(Semaphore::new(max_inflight.saturating_add(settings.max_queued))),
            inflight: Arc::new(Semaphore::new(max_inflight)),
            service_us: AtomicU64::new(10_000),
            alarm: Mutex::new(Alarm::default()),
        }
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    fn in_flight(&self) -> usize {
        self.settings.max_inflight.max(1) - self.inflight.available_permits()
    }

    fn in_system(&self) -> usize {
        (self.settings.max_inflight.max(1) + self.settings.max_queued) - self.admitted.available_permits()
    }

    fn record_gauges(&self) {
        let (inflight, admitted) = (self.in_flight(), self.in_system());
        metrics::gauge!("storesync_hub_sync_inflight").set(inflight as f64);
        metrics::gauge!("storesync_hub_sync_queued").set(admitted.saturating_sub(inflight) as f64);
    }

    fn record_service(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let _ =
            self.service_us.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| Some(old - old / 8 + sample / 8));
    }

    /// The `Retry-After` to give now, in seconds.
    fn retry_after(&self) -> u64 {
        let mean = Duration::from_micros(self.service_us.load(Ordering::Relaxed));
        retry_after_secs(self.in_system(), self.settings.max_inflight, mean)
    }

    /// Re-evaluates the overload alarm (a scrape of `/metrics` calls this, so the gauge does not go stale).
    pub fn refresh(&self) {
        self.record_gauges();
        let notice = match self.alarm.lock() {
            Ok(mut a) => a.quiet(Instant::now()),
            Err(_) => None,
        };
        report(notice);
    }

    fn shed(&self, why: Shed) -> Response {
        metrics::counter!("storesync_hub_shed_requests_total", "reason" => why.label()).increment(1);
        let notice = match self.alarm.lock() {
            Ok(mut a) => a.shed(Instant::now()),
            Err(_) => None,
        };
        report(notice);
        self.record_gauges();
        let secs = self.retry_after();
        debug!(reason = why.label(), retry_after_s = secs, "sync request shed");
        let detail = match why {
            Shed::QueueFull => format!(
                "the hub is overloaded ({} sync requests in flight or queued); retry in {secs} s",
                self.in_system()
            ),
            Shed::QueueTimeout => format!(
                "the hub is overloaded (no slot within {} ms); retry in {secs} s",
                self.settings.queue_timeout.as_millis()
            ),
        };
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", detail).with_retry_after(secs).into_response()
    }
}

/// `Retry-After` for `admitted` requests ahead draining through `max_inflight` permits at `mean` each: whole
/// seconds rounded up, from 1 to [`MAX_RETRY_AFTER_S`].
fn retry_after_secs(admitted: usize, max_inflight: usize, mean: Duration) -> u64 {
    let waves = (admitted as f64 + 1.0) / max_inflight.max(1) as f64;
    let secs = (mean.as_secs_f64() * waves).ceil();
    if secs.is_finite() { (secs as u64).clamp(1, MAX_RETRY_AFTER_S) } else { MAX_RETRY_AFTER_S }
}

/// What the alarm has to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Notice {
    /// Shedding went on for [`ALARM_SUSTAIN`]: `shed` requests since the streak began `for_s` seconds ago.
    Raised { shed: u64, for_s: u64 },
    /// Still shedding: `shed` more since the last warning.
    Still { shed: u64, for_s: u64 },
    /// No shed for [`ALARM_QUIET`].
    Cleared { shed: u64 },
}

/// The overload alarm's state machine, fed with the instants of shed requests and of quiet checks.
#[derive(Debug, Default)]
struct Alarm {
    streak_start: Option<Instant>,
    last_shed: Option<Instant>,
    raised: bool,
    last_warn: Option<Instant>,
    shed_since_warn: u64,
}

impl Alarm {
    fn shed(&mut self, now: Instant) -> Option<Notice> {
        let cleared = self.quiet(now);
        if self.last_shed.is_none_or(|t| now.saturating_duration_since(t) >= ALARM_QUIET) {
            self.streak_start = Some(now);
            self.shed_since_warn = 0;
        }
        self.last_shed = Some(now);
        self.shed_since_warn += 1;
        let start = self.streak_start.unwrap_or(now);
        let for_s = now.saturating_duration_since(start).as_secs();
        if !self.raised {
            if now.saturating_duration_since(start) >= ALARM_SUSTAIN {
                self.raised = true;
                self.last_warn = Some(now);
                return Some(Notice::Raised { shed: std::mem::take(&mut self.shed_since_warn), for_s });
            }
            return cleared;
        }
        if self.last_warn.is_none_or(|t| now.saturating_duration_since(t) >= ALARM_REPEAT) {
            self.last_warn = Some(now);
            return Some(Notice::Still { shed: std::mem::take(&mut self.shed_since_warn), for_s });
        }
        None
    }

    fn quiet(&mut self, now: Instant) -> Option<Notice> {
        if self.raised && self.last_shed.is_some_and(|t| now.saturating_duration_since(t) >= ALARM_QUIET) {
            self.raised = false;
            return Some(Notice::Cleared { shed: std::mem::take(&mut self.shed_since_warn) });
        }
        None
    }
}

fn report(notice: Option<Notice>) {
    match notice {
        None => {}
        Some(Notice::Raised { shed, for_s }) => {
            metrics::gauge!("storesync_hub_overloaded").set(1.0);
            warn!(
                shed,
                shedding_for_s = for_s,
                "hub overloaded: shedding sync requests with 429 and Retry-After \
                   (see --max-inflight-syncs, --max-queued-syncs)"
            );
        }
        Some(Notice::Still { shed, for_s }) => {
            warn!(shed, shedding_for_s = for_s, "hub still overloaded: shedding sync requests");
        }
        Some(Notice::Cleared { shed }) => {
            metrics::gauge!("storesync_hub_overloaded").set(0.0);
            info!(shed, "hub no longer overloaded");
        }
    }
}

/// What the guard of one route group needs.
#[derive(Debug, Clone)]
struct Guard {
    admission: Arc<Admission>,
    /// The route's body limit: the guard reads at most one byte more (the handler then refuses the body with its
    /// own `413`).
    max_body: usize,
}

/// `router` with its requests guarded by `admission`; `max_body` is the routes' body limit.
pub(crate) fn guard<S>(
    router: utoipa_axum::router::OpenApiRouter<S>,
    admission: &Arc<Admission>,
    max_body: usize,
) -> utoipa_axum::router::OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    let g = Guard { admission: admission.clone(), max_body };
    router.layer(axum::middleware::from_fn_with_state(g, admit))
}

async fn admit(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let a = &g.admission;
    let Ok(slot) = a.admitted.clone().try_acquire_owned() else {
        let res = a.shed(Shed::QueueFull);
        drain(req.into_body(), g.max_body).await;
        return res;
    };
    a.record_gauges();
    let (parts, body) = req.into_parts();
    let body = match tokio::time::timeout(BODY_READ_TIMEOUT, read_body(body, g.max_body)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(err)) => {
            drop(slot);
            return ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("reading the request body: {err}"))
                .into_response();
        }
        Err(_) => {
            drop(slot);
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("the request body did not arrive within {} s", BODY_READ_TIMEOUT.as_secs()),
            )
            .into_response();
        }
    };
    let waited = Instant::now();
    let permit: OwnedSemaphorePermit =
        match tokio::time::timeout(a.settings.queue_timeout, a.inflight.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            // The semaphore is never closed; a timeout is the only way here in practice.
            Ok(Err(_)) | Err(_) => {
                drop(slot);
                return a.shed(Shed::QueueTimeout);
            }
        };
    metrics::histogram!("storesync_hub_sync_queue_wait_seconds").record(waited.elapsed().as_secs_f64());
    a.refresh();
    let started = Instant::now();
    let res = next.run(Request::from_parts(parts, Body::from(body))).await;
    a.record_service(started.elapsed());
    drop(permit);
    drop(slot);
    a.record_gauges();
    res
}

/// Passes a body's data frames to `take` until the body ends or more than `limit` bytes were passed; answers how
/// many bytes that was.
async fn frames(mut body: Body, limit: usize, mut take: impl FnMut(Bytes)) -> Result<usize, axum::Error> {
    use hyper::body::Body as _;
    let mut len = 0usize;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let Ok(data) = frame?.into_data() else { continue };
        len = len.saturating_add(data.len());
        take(data);
        if len > limit {
            break;
        }
    }
    Ok(len)
}

/// Reads a body up to `limit + 1` bytes: a longer body is cut there, and the handler's own limit refuses it.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, axum::Error> {
    let mut parts: Vec<Bytes> = Vec::new();
    frames(body, limit, |b| parts.push(b)).await?;
    Ok(match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().unwrap_or_default(),
        _ => Bytes::from(parts.concat()),
    })
}

/// Reads and drops a shed request's body (at most `limit` bytes, within [`DRAIN_TIMEOUT`]), so that the client,
/// still sending it, reads the 429 instead of a reset connection (hyper closes a connection whose request body was
/// left unread, and the client's write then fails with a broken pipe). Holds no slot while it reads.
async fn drain(body: Body, limit: usize) {
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, frames(body, limit, drop)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_the_admitted_requests_drain_time_in_whole_seconds() {
        let ms = Duration::from_millis;
        for (admitted, inflight, mean, want) in [
            (0, 32, ms(10), 1),     // an idle hub still asks for a second
            (287, 32, ms(25), 1),   // 9 waves of 25 ms
            (287, 32, ms(200), 2),  // 9 waves of 200 ms = 1.8 s
            (287, 32, ms(1000), 9), // a slow disk
            (10_000, 1, ms(1000), MAX_RETRY_AFTER_S),
            (5, 0, ms(500), 3), // a zero bound counts as 1
        ] {
            assert_eq!(retry_after_secs(admitted, inflight, mean), want, "{admitted} {inflight} {mean:?}");
        }
    }

    #[test]
    fn sustained_shedding_raises_the_alarm_repeats_it_rarely_and_clears_after_quiet() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut a = Alarm::default();
        // A short burst is no alarm.
        for s in 0..5 {
            assert_eq!(a.shed(at(s)), None);
        }
        // Quiet for ALARM_QUIET: the next shed starts a new streak.
        assert_eq!(a.shed(at(20)), None);
        assert_eq!(a.shed(at(29)), None);
        assert_eq!(a.shed(at(30)), Some(Notice::Raised { shed: 3, for_s: 10 }));
        // Raised: repeats only after ALARM_REPEAT, counting what was shed in between.
        for s in 31..90 {
            assert_eq!(a.shed(at(s)), None, "second {s}");
        }
        assert_eq!(a.shed(at(90)), Some(Notice::Still { shed: 60, for_s: 70 }));
        // A quiet check too early does nothing, one after ALARM_QUIET clears.
        assert_eq!(a.quiet(at(95)), None);
        assert_eq!(a.quiet(at(100)), Some(Notice::Cleared { shed: 0 }));
        assert_eq!(a.quiet(at(200)), None, "cleared once");
        // A gap shorter than ALARM_QUIET keeps a streak going.
        for s in (300..=312).step_by(4) {
            let n = a.shed(at(s));
            assert_eq!(n, if s == 312 { Some(Notice::Raised { shed: 4, for_s: 12 }) } else { None }, "{s}");
        }
        // Shedding again long after the alarm went quiet (no quiet check in between) clears, then starts afresh.
        assert_eq!(a.shed(at(400)), Some(Notice::Cleared { shed: 0 }));
        assert!(!a.raised);
    }

    #[test]
    fn settings_are_checked() {
        assert!(Settings::default().check().is_ok());
        assert!(Settings { max_inflight: 0, ..Settings::default() }.check().is_err());
        assert!(Settings { max_queued: usize::MAX, ..Settings::default() }.check().is_err());
        assert!(Settings { queue_timeout: Duration::from_secs(601), ..Settings::default() }.check().is_err());
        assert!(Settings { max_queued: 0, queue_timeout: Duration::ZERO, ..Settings::default() }.check().is_ok());
    }

    /// A body of `chunks`, one frame each.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl hyper::body::Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
        }
    }

    async fn body_of(chunks: &[&'static [u8]], limit: usize) -> Bytes {
        let body = Body::new(Chunks(chunks.iter().map(|c| Bytes::from_static(c)).collect()));
        read_body(body, limit).await.unwrap()
    }

    #[tokio::test]
    async fn the_guard_reads_a_body_whole_or_cuts_it_just_past_the_limit() {
        assert_eq!(body_of(&[b"hello"], 10).await, Bytes::from_static(b"hello"));
        assert_eq!(body_of(&[b"he", b"llo", b" world"], 100).await, Bytes::from_static(b"hello world"));
        assert_eq!(body_of(&[], 10).await, Bytes::new());
        let cut = body_of(&[b"0123", b"4567", b"89ab", b"cdef"], 6).await;
        assert_eq!(cut, Bytes::from_static(b"01234567"), "stops at the first frame past the limit");
        let chunks = |c: &[&'static [u8]]| Body::new(Chunks(c.iter().map(|c| Bytes::from_static(c)).collect()));
        assert_eq!(frames(chunks(&[b"0123", b"4567", b"89"]), 100, drop).await.unwrap(), 10, "drained whole");
        assert_eq!(frames(chunks(&[b"0123", b"4567", b"89"]), 5, drop).await.unwrap(), 8, "a drain stops too");
    }

    /// A guarded router whose one route signals `started` and then answers once `release` gives it a permit.
    struct Blocking {
        router: axum::Router,
        admission: Arc<Admission>,
        started: Arc<tokio::sync::Notify>,
        release: Arc<Semaphore>,
    }

    fn blocking(settings: Settings) -> Blocking {
        let admission = Arc::new(Admission::new(settings));
        let (started, release) = (Arc::new(tokio::sync::Notify::new()), Arc::new(Semaphore::new(0)));
        let (s, r) = (started.clone(), release.clone());
        let route = utoipa_axum::router::OpenApiRouter::<()>::new().route(
            "/work",
            axum::routing::post(move |body: Bytes| async move {
                s.notify_one();
                let _go = r.acquire().await;
                format!("{} bytes", body.len())
            }),
        );
        let (router, _) = guard(route, &admission, 1024).split_for_parts();
        Blocking { router, admission, started, release }
    }

    async fn call(router: &axum::Router) -> (StatusCode, Option<u64>, serde_json::Value) {
        use tower::ServiceExt as _;
        let req = Request::post("/work").body(Body::from("some body")).unwrap();
        let res = router.clone().oneshot(req).await.unwrap();
        let retry = res.headers().get(axum::http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()?.parse().ok());
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (status, retry, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    fn spawn_call(router: &axum::Router) -> tokio::task::JoinHandle<(StatusCode, Option<u64>, serde_json::Value)> {
        let router = router.clone();
        tokio::spawn(async move { call(&router).await })
    }

    fn assert_shed(got: &(StatusCode, Option<u64>, serde_json::Value), detail: &str) {
        let (status, retry, body) = got;
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["error"], "overloaded", "{body}");
        assert!(retry.is_some_and(|s| (1..=MAX_RETRY_AFTER_S).contains(&s)), "Retry-After: {retry:?}");
        assert!(body["detail"].as_str().is_some_and(|d| d.contains(detail)), "{body}");
    }

    #[tokio::test]
    async fn with_every_slot_taken_the_guard_sheds_at_once_and_queued_requests_run_when_a_permit_frees() {
        let b = blocking(Settings { max_inflight: 1, max_queued: 1, queue_timeout: Duration::from_secs(600) });
        let first = spawn_call(&b.router);
        b.started.notified().await;
        let second = spawn_call(&b.router);
        while b.admission.in_system() < 2 {
            tokio::task::yield_now().await;
        }
        // The permit and the queue place are taken: the third is shed without waiting.
        assert_shed(&call(&b.router).await, "2 sync requests in flight or queued");
        // Handlers give their release permit back as they finish: one lets all through, in turn.
        b.release.add_permits(1);
        assert_eq!(first.await.unwrap().0, StatusCode::OK);
        let (status, _, body) = second.await.unwrap();
        assert_eq!(status, StatusCode::OK, "the queued request ran once the permit was free: {body}");
        assert_eq!(call(&b.router).await.0, StatusCode::OK, "admitted again");
        assert_eq!(b.admission.in_system(), 0, "every slot given back");
    }

    #[tokio::test]
    async fn a_request_that_gets_no_permit_within_the_queue_timeout_is_shed() {
        let b = blocking(Settings { max_inflight: 1, max_queued: 4, queue_timeout: Duration::from_millis(50) });
        let first = spawn_call(&b.router);
        b.started.notified().await;
        assert_shed(&call(&b.router).await, "no slot within 50 ms");
        b.release.add_permits(1);
        assert_eq!(first.await.unwrap().0, StatusCode::OK);
        assert_eq!(b.admission.in_system(), 0);
    }
}
