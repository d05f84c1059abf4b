//! How a running agent is asked to stop. Ctrl-c and SIGTERM (a console or systemd run) and the Windows service's
//! Stop and Shutdown controls (`service.rs`) all end in [`stop`], which cancels the one shutdown token that
//! [`crate::run_until`] drains on.

use tokio_util::sync::CancellationToken;

/// Asks the agent to stop: logs why (`"<cause>: stopping"`) and cancels `shutdown`.
pub fn stop(shutdown: &CancellationToken, cause: &str) {
    tracing::info!("{cause}: stopping");
    shutdown.cancel();
}

/// Spawns (on the current tokio runtime) a task that calls [`stop`] on ctrl-c, or on SIGTERM on Unix. It ends
/// when `shutdown` is cancelled by anything else.
pub fn stop_on_signals(shutdown: CancellationToken) {
    tokio::spawn(async move {
        tokio::select! {
            cause = signalled() => stop(&shutdown, cause),
            () = shutdown.cancelled() => {}
        }
    });
}

/// Resolves when the process is asked to stop: ctrl-c, or SIGTERM on Unix. For embeddings that stop in their own
/// way (the demo); a run of the agent uses [`stop_on_signals`].
pub async fn shutdown_signal() {
    let cause = signalled().await;
    tracing::info!("{cause}: stopping");
}

/// Waits for ctrl-c or (on Unix) SIGTERM and names which came. A signal that cannot be listened for is logged
/// and never comes.
async fn signalled() -> &'static str {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => "ctrl-c",
        () = term => "SIGTERM",
    }
}
