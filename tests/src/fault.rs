//! An in-process TCP fault proxy for the fault-injection tests: it sits between agents and the hub and, as told
//! through [`Faults`], adds latency, caps bandwidth, refuses connections, swallows traffic (a black hole), resets a
//! connection after the hub has answered a request but before the answer reaches the agent (the hub committed, the
//! agent never heard), or truncates answers.
//!
//! It works on bytes, not HTTP, except for one thing: a "request" is the first chunk the client sends after the last
//! answer, and [`Faults::only_requests_starting_with`] can restrict the answer-side faults to requests whose first
//! bytes match (say `POST /v1/sync/upload`). That needs plain HTTP between agent and hub, which the tests use.
//!
//! Every fault the proxy injects is counted ([`FaultCounts`]), so a test can show that its faults really happened.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the proxy does to traffic, changeable while it runs.
#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    /// Delay added before forwarding each chunk, both ways.
    pub latency: Duration,
    /// Bytes per second per direction and connection; 0 = unlimited.
    pub bandwidth: u64,
    /// Close every new connection at once.
    pub refuse: bool,
    /// Accept and read, but never forward and never answer.
    pub black_hole: bool,
    /// Chance (0–1) that an answer is replaced by a reset of the client's connection once it starts arriving.
    pub reset_after_request: f64,
    /// Chance (0–1) that an answer is cut after its first `truncate_at` bytes and the connection closed.
    pub truncate: f64,
    pub truncate_at: usize,
    /// Apply `reset_after_request` and `truncate` only to requests whose first bytes are these.
    pub only_requests_starting_with: Option<Vec<u8>>,
}

/// How many faults were injected.
#[derive(Debug, Default)]
pub struct FaultCounts {
    pub connections: AtomicU64,
    pub refused: AtomicU64,
    pub resets_after_request: AtomicU64,
    pub truncations: AtomicU64,
    pub requests_matched: AtomicU64,
    /// Chunks a black hole swallowed (either way).
    pub swallowed: AtomicU64,
}

/// Shared handle to a running proxy's configuration and counters.
#[derive(Clone, Default)]
pub struct Faults {
    config: Arc<Mutex<FaultConfig>>,
    pub counts: Arc<FaultCounts>,
}

impl Faults {
    pub fn set(&self, f: impl FnOnce(&mut FaultConfig)) {
        let mut c = self.config.lock().expect("fault config lock");
        f(&mut c);
    }

    fn get(&self) -> FaultConfig {
        self.config.lock().expect("fault config lock").clone()
    }
}

/// A running proxy. Dropping it stops accepting; open connections end with the test's runtime.
pub struct Proxy {
    pub addr: SocketAddr,
    pub faults: Faults,
    stop: CancellationToken,
}

impl Proxy {
    /// Starts a proxy on `127.0.0.1:0` forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let faults = Faults::default();
        let stop = CancellationToken::new();
        let (f, s) = (faults.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = s.cancelled() => break,
                    a = listener.accept() => a,
                };
                let Ok((client, _)) = accepted else { continue };
                f.counts.connections.fetch_add(1, Ordering::Relaxed);
                if f.get().refuse {
                    f.counts.refused.fetch_add(1, Ordering::Relaxed);
                    drop(client);
                    continue;
                }
                tokio::spawn(serve(client, upstream, f.clone(), s.clone()));
            }
        });
        Ok(Proxy { addr, faults, stop })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(client: TcpStream, upstream: SocketAddr, faults: Faults, stop: CancellationToken) {
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // Set when the client has sent a request the proxy has not seen an answer to yet; holds whether it matched.
    let pending = Arc::new(Mutex::new(None::<bool>));
    let broken = Arc::new(AtomicBool::new(false));
    let up = {
        let (faults, pending, broken) = (faults.clone(), pending.clone(), broken.clone());
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Some((n, cfg)) = next_chunk(&mut cr, &mut buf, &faults).await {
                {
                    let mut p = pending.lock().expect("pending lock");
                    if p.is_none() {
                        let matched =
                            cfg.only_requests_starting_with.as_ref().is_none_or(|pre| buf[..n].starts_with(pre));
                        if matched {
                            faults.counts.requests_matched.fetch_add(1, Ordering::Relaxed);
                        }
                        *p = Some(matched);
                    }
                }
                pace(&cfg, n).await;
                if broken.load(Ordering::SeqCst) || sw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = sw.shutdown().await;
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Some((n, cfg)) = next_chunk(&mut sr, &mut buf, &faults).await {
            let matched = pending.lock().expect("pending lock").take();
            if matched == Some(true) {
                let roll: f64 = rand::rng().random();
                if roll < cfg.reset_after_request {
                    faults.counts.resets_after_request.fetch_add(1, Ordering::Relaxed);
                    broken.store(true, Ordering::SeqCst);
                    break;
                }
                if roll < cfg.reset_after_request + cfg.truncate {
                    faults.counts.truncations.fetch_add(1, Ordering::Relaxed);
                    let cut = cfg.truncate_at.min(n);
                    let _ = cw.write_all(&buf[..cut]).await;
                    broken.store(true, Ordering::SeqCst);
                    break;
                }
            }
            pace(&cfg, n).await;
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        // Dropping the write half (and, when `up` ends, the read half) closes the client's connection.
    };
    tokio::select! {
        () = stop.cancelled() => {}
        _ = async { tokio::join!(up, down) } => {}
    }
}

/// Reads the next chunk to forward into `buf`, with the configuration to forward it under; chunks a black hole
/// swallows are counted and skipped. `None` once the connection ends.
async fn next_chunk(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut [u8],
    faults: &Faults,
) -> Option<(usize, FaultConfig)> {
    loop {
        let n = match from.read(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        let cfg = faults.get();
        if !cfg.black_hole {
            return Some((n, cfg));
        }
        faults.counts.swallowed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits out the configured latency and the time `n` bytes take at the bandwidth cap.
async fn pace(cfg: &FaultConfig, n: usize) {
    let mut wait = cfg.latency;
    if cfg.bandwidth > 0 {
        wait += Duration::from_secs_f64(n as f64 / cfg.bandwidth as f64);
    }
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers every chunk it reads with `PONG`, and reports what it read in all.
    async fn upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        if s.write_all(b"PONG").await.is_err() {
                            break;
                        }
                    }
                    let _ = tx.send(seen);
                });
            }
        });
        (addr, rx)
    }

    /// Sends `PING`, closes the sending side, and reads whatever comes back until the proxy closes.
    async fn exchange(proxy: &Proxy) -> Vec<u8> {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let _ = s.write_all(b"PING").await;
        let _ = s.shutdown().await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out
    }

    #[tokio::test]
    async fn passes_traffic_through_when_no_fault_is_set() {
        let (up, mut seen) = upstream().await;
        let proxy = Proxy::start(up).await.unwrap();
        assert_eq!(exchange(&proxy).await, b"PONG");
        assert_eq!(seen.recv().await.unwrap(), b"PING");
    }

    #[tokio::test]
    async fn a_reset_after_request_lets_the_request_through_and_drops_the_answer() {
        let (up, mut seen) = upstream().await;
        let proxy = Proxy::start(up).await.unwrap();
        proxy.faults.set(|f| f.reset_after_request = 1.0);
        assert_eq!(exchange(&proxy).await, b"");
        assert_eq!(seen.recv().await.unwrap(), b"PING", "the upstream got the request");
        assert_eq!(proxy.faults.counts.resets_after_request.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn faults_apply_only_to_matching_requests() {
        let (up, _seen) = upstream().await;
        let proxy = Proxy::start(up).await.unwrap();
        proxy.faults.set(|f| {
            f.reset_after_request = 1.0;
            f.only_requests_starting_with = Some(b"POST /v1/sync/upload".to_vec());
        });
        assert_eq!(exchange(&proxy).await, b"PONG");
        assert_eq!(proxy.faults.counts.requests_matched.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_truncation_cuts_the_answer() {
        let (up, _seen) = upstream().await;
        let proxy = Proxy::start(up).await.unwrap();
        proxy.faults.set(|f| {
            f.truncate = 1.0;
            f.truncate_at = 2;
        });
        assert_eq!(exchange(&proxy).await, b"PO");
        assert_eq!(proxy.faults.counts.truncations.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_black_hole_forwards_nothing_and_answers_nothing() {
        let (up, mut seen) = upstream().await;
        let proxy = Proxy::start(up).await.unwrap();
        proxy.faults.set(|f| f.black_hole = true);
        assert_eq!(exchange(&proxy).await, b"");
        assert_eq!(seen.recv().await.unwrap(), b"", "the upstream saw only the close");
    }

    #[tokio::test]
    async fn refusing_closes_new_connections_before_the_upstream_sees_them() {
        let (up, _seen) = upstream().await;
        let proxy = Proxy::start(up).await.unwrap();
        proxy.faults.set(|f| f.refuse = true);
        assert_eq!(exchange(&proxy).await, b"");
        assert_eq!(proxy.faults.counts.refused.load(Ordering::Relaxed), 1);
    }
}
