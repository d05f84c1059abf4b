//! The listener: TCP accept loop, optional rustls, per-connection HTTP/1.1 + HTTP/2, graceful shutdown.
//!
//! Design note: one accept loop for plain and TLS connections, so both get `TCP_NODELAY` (set on the raw socket
//! before any handshake; without it HTTP/2 stalls on Nagle + delayed ACK: measured
//! here, HTTP/2 over TLS fell to ~35,000 events/s, a 44 ms stall per 1,000-event batch). Each connection is a
//! task in the hub's one `TaskTracker`, beside the background tasks ([`crate::app::App::spawn`]); the TLS
//! handshake runs inside that task with a deadline so a slow client cannot stall accepting. On shutdown the loop
//! stops accepting, every connection is told to finish its in-flight request (hyper's graceful shutdown), every
//! background task hears the same token, and `serve` waits for all of them together up to one deadline,
//! `Config::shutdown_grace`. The peer address is put in each request's extensions as `ConnectInfo<SocketAddr>`
//! (used for enrolment rate limits).
//!
//! Plain HTTP is refused on a non-loopback address unless `insecure_allow_plaintext` is set.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use crate::app::App;
use crate::{Config, TlsFiles};

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound, not yet serving hub.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    router: Router,
    grace: Duration,
    /// The assembled hub, whose background tasks `serve` starts.
    app: App,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("local_addr", &self.local_addr).field("tls", &self.tls.is_some()).finish()
    }
}

/// Checks the config, opens the data dir and binds the listen address.
pub async fn bind(config: Config) -> anyhow::Result<Server> {
    if config.tls.is_none() && !config.listen.ip().is_loopback() && !config.insecure_allow_plaintext {
        bail!(
            "refusing to serve plain HTTP on non-loopback address {}: give --tls-cert and --tls-key, \
             or --insecure-allow-plaintext if a TLS proxy sits in front",
            config.listen
        );
    }
    let tls = config.tls.as_ref().map(load_tls).transpose()?;
    let app = App::open(&config)?;
    let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let local_addr = listener.local_addr().context("reading the bound address")?;
    let router = crate::api::router(app.state.clone());
    Ok(Server { listener, local_addr, tls, router, grace: config.shutdown_grace, app })
}

/// Binds, prints `listening on http(s)://ADDR` to stdout, and serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let server = bind(config).await?;
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", server.url()).context("writing to stdout")?;
        out.flush().context("flushing stdout")?;
    }
    server.serve(shutdown).await
}

fn load_tls(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading certificates from {}", files.cert.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", files.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading private key from {}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("loading the TLS certificate and key")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

impl Server {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://ADDR` or `https://ADDR`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr)
    }

    /// Serves until `shutdown` is cancelled, then waits at most the grace period for the connections and the
    /// background tasks, all tracked together.
    pub async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        info!(addr = %self.local_addr, tls = self.tls.is_some(), "hub listening");
        self.app.spawn(&tracker, &shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        // Typically EMFILE: back off instead of spinning.
                        warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            if let Err(err) = stream.set_nodelay(true) {
                warn!(error = %err, %peer, "setting TCP_NODELAY failed");
            }
            let app = self.router.clone();
            let tls = self.tls.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                match tls {
                    None => serve_connection(stream, peer, app, shutdown).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls_stream)) => serve_connection(tls_stream, peer, app, shutdown).await,
                            Ok(Err(err)) => debug!(error = %err, %peer, "TLS handshake failed"),
                            Err(_) => debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            });
        }
        drop(self.listener);
        tracker.close();
        info!(tasks = tracker.len(), "shutting down: draining connections and background tasks");
        if tokio::time::timeout(self.grace, tracker.wait()).await.is_err() {
            warn!(tasks = tracker.len(), "shutdown grace period over, dropping open connections and tasks");
        }
        info!("hub stopped");
        Ok(())
    }
}

async fn serve_connection<I>(io: I, peer: SocketAddr, app: Router, shutdown: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = app.map_request(move |mut req: axum::http::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    });
    let svc = hyper_util::service::TowerToHyperService::new(svc);
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(err) = res {
                debug!(error = %err, %peer, "connection ended with an error");
            }
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            if let Err(err) = conn.await {
                debug!(error = %err, %peer, "connection ended with an error during shutdown");
            }
        }
    }
}
