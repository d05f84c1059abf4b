//! The hubs the load generator talks to: one HTTP client, the URLs tills are spread over, admin calls that fail
//! over, and how each answer of a till request is classified and counted.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;
use storesync_agent::sync::{error_chain, retry_after};

/// Every hub URL and one client for all of them.
#[derive(Debug, Clone)]
pub struct Hubs {
    urls: Vec<String>,
    pub(crate) client: reqwest::Client,
    admin_token: String,
}

impl Hubs {
    /// A client with `timeout` per request and room for `connections` idle connections per hub; trusts `ca` (a
    /// PEM file) when given.
    ///
    /// # Errors
    /// No URL, an unreadable CA file, or a client that cannot be built.
    pub fn new(
        urls: &[String],
        admin_token: &str,
        ca: Option<&Path>,
        timeout: Duration,
        connections: usize,
    ) -> anyhow::Result<Hubs> {
        if urls.is_empty() {
            bail!("give at least one --hub URL");
        }
        let mut b = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(connections)
            .tcp_nodelay(true)
            .no_proxy();
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).context("parsing the CA certificate")?);
        }
        let urls = urls.iter().map(|u| u.trim_end_matches('/').to_owned()).collect();
        Ok(Hubs { urls, client: b.build().context("building the HTTP client")?, admin_token: admin_token.to_owned() })
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// `path` at hub `i` (modulo the number of hubs).
    pub(crate) fn url(&self, i: usize, path: &str) -> String {
        format!("{}{path}", self.urls[i % self.urls.len()])
    }

    /// An admin request, tried at each hub in turn while the connection fails; answers the JSON body of a 2xx.
    ///
    /// # Errors
    /// Every hub unreachable, or a refusal (its status and body in the message).
    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let mut last = None;
        for i in 0..self.urls.len() {
            let mut req = self.client.request(method.clone(), self.url(i, path)).bearer_auth(&self.admin_token);
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.with_context(|| format!("{method} {path}: reading the answer"))?;
                    if !status.is_success() {
                        bail!("{method} {path}: {status} {text}");
                    }
                    return serde_json::from_str(&text).with_context(|| format!("{method} {path}: not JSON: {text}"));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(anyhow::anyhow!("{method} {path}: no hub answered: {}", last.map(|e| error_chain(&e)).unwrap_or_default()))
    }
}

/// What one till request came to, beyond success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// 429 or 503 with `Retry-After`: the hub asked for a pause (`overloaded`, `rate_limited`, `storage_busy`).
    SlowDown { status: u16, code: String },
    /// 409 `seq_gap`: resend from the hub's `expected_seq` (protocol, not an error).
    SeqGap,
    /// 409 `epoch_mismatch`: the store document moved to a new epoch; the till installs the snapshot.
    EpochMismatch,
    /// The connection failed (refused, reset); the till fails over to the next hub.
    Connect,
    /// No answer within the request timeout.
    Timeout,
    /// Any other answer: an error.
    Http { status: u16, code: String },
    /// A 2xx whose body is not what the protocol says (or an ack that does not match the till's journal).
    BadAnswer,
}

impl Kind {
    /// The row name in the report.
    pub(crate) fn label(&self) -> String {
        match self {
            Kind::SlowDown { status, code } => format!("{status} {code} (slow down)"),
            Kind::SeqGap => "409 seq_gap (resent)".into(),
            Kind::EpochMismatch => "409 epoch_mismatch (snapshot installed)".into(),
            Kind::Connect => "connection failed (failed over)".into(),
            Kind::Timeout => "timeout".into(),
            Kind::Http { status, code } => format!("{status} {code}"),
            Kind::BadAnswer => "bad answer".into(),
        }
    }

    /// Whether it counts as an error (slow-downs and protocol resends do not).
    pub(crate) fn is_error(&self) -> bool {
        !matches!(self, Kind::SlowDown { .. } | Kind::SeqGap | Kind::EpochMismatch)
    }

    pub(crate) fn of_send_error(e: &reqwest::Error) -> Kind {
        if e.is_timeout() { Kind::Timeout } else { Kind::Connect }
    }
}

/// Reads a refusal: its kind, whether it carried `Retry-After`, and `expected_seq` when there is one.
pub(crate) async fn refusal(resp: reqwest::Response) -> (Kind, Option<u64>, Duration) {
    let status = resp.status().as_u16();
    let wait = retry_after(&resp);
    let has_retry_after = resp.headers().contains_key(reqwest::header::RETRY_AFTER);
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let code = body["error"].as_str().unwrap_or("no_error_code").to_owned();
    let kind = match (status, code.as_str()) {
        (429 | 503, _) if has_retry_after => Kind::SlowDown { status, code },
        (409, "seq_gap") => Kind::SeqGap,
        (409, "epoch_mismatch") => Kind::EpochMismatch,
        _ => Kind::Http { status, code },
    };
    (kind, body["expected_seq"].as_u64(), wait)
}

/// Everything measured during a round, shared by the till tasks (never held across an `.await`).
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<StatsInner>,
}

#[derive(Debug, Default, Clone)]
pub struct StatsInner {
    /// Upload POST to its 200 ack, ms.
    pub upload_ms: Vec<f64>,
    /// A batch's first POST to its ack, slow-downs and retries included, ms.
    pub batch_ms: Vec<f64>,
    /// Upload POST to a slow-down answer, ms.
    pub shed_ms: Vec<f64>,
    /// Document sync request to its answer, ms.
    pub doc_ms: Vec<f64>,
    /// Answers that were not a success, by [`Kind::label`], with whether they are errors.
    pub kinds: BTreeMap<String, (u64, bool)>,
    /// The first few details of each kind of error, by [`Kind::label`].
    pub examples: BTreeMap<String, Vec<String>>,
    /// Events acknowledged for the first time.
    pub acked: u64,
    pub uploads: u64,
    pub doc_requests: u64,
}

impl Stats {
    fn with(&self, f: impl FnOnce(&mut StatsInner)) {
        if let Ok(mut s) = self.inner.lock() {
            f(&mut s);
        }
    }

    pub(crate) fn uploaded(&self, sent: Instant, batch_started: Option<Instant>, newly_acked: u64) {
        let now = Instant::now();
        self.with(|s| {
            s.upload_ms.push(ms(now - sent));
            if let Some(b) = batch_started {
                s.batch_ms.push(ms(now - b));
            }
            s.acked += newly_acked;
            s.uploads += 1;
        });
    }

    pub(crate) fn doc_round(&self, sent: Instant) {
        let took = ms(sent.elapsed());
        self.with(|s| {
            s.doc_ms.push(took);
            s.doc_requests += 1;
        });
    }

    pub(crate) fn count(&self, kind: &Kind, sent: Option<Instant>) {
        let took = sent.map(|t| ms(t.elapsed()));
        self.with(|s| {
            s.kinds.entry(kind.label()).or_insert((0, kind.is_error())).0 += 1;
            if let (Kind::SlowDown { .. }, Some(t)) = (kind, took) {
                s.shed_ms.push(t);
            }
        });
    }

    /// Keeps `detail` as an example of `kind` (the first [`EXAMPLES`] of each).
    pub(crate) fn example(&self, kind: &Kind, detail: &str) {
        self.with(|s| {
            let list = s.examples.entry(kind.label()).or_default();
            if list.len() < EXAMPLES {
                list.push(detail.chars().take(300).collect());
            }
        });
    }

    /// What was measured so far.
    pub fn snapshot(&self) -> StatsInner {
        self.inner.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// How many details of each kind of error a report shows.
const EXAMPLES: usize = 3;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl StatsInner {
    /// Answers that asked for a pause.
    pub fn slow_downs(&self) -> u64 {
        self.kinds.iter().filter(|(k, (_, err))| !err && k.contains("slow down")).map(|(_, (n, _))| n).sum()
    }

    /// Answers that were errors.
    pub fn errors(&self) -> u64 {
        self.kinds.values().filter(|(_, err)| *err).map(|(n, _)| n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_downs_and_resends_are_not_errors() {
        let s = Stats::default();
        let t = Some(Instant::now());
        s.count(&Kind::SlowDown { status: 429, code: "overloaded".into() }, t);
        s.count(&Kind::SlowDown { status: 503, code: "storage_busy".into() }, t);
        s.count(&Kind::SeqGap, t);
        s.count(&Kind::Connect, t);
        s.count(&Kind::Http { status: 500, code: "internal".into() }, t);
        let snap = s.snapshot();
        assert_eq!((snap.slow_downs(), snap.errors()), (2, 2));
        assert_eq!(snap.shed_ms.len(), 2, "the time to a slow-down answer is kept");
    }
}
