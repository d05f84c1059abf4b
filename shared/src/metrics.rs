//! Prometheus metrics (`GET /metrics`), through the `metrics` facade and `metrics-exporter-prometheus`.
//!
//! Names are snake_case, start with `storesync_agent_` or `storesync_hub_`, and end in `_total` for a counter and in
//! `_seconds` for a duration. Histograms have fixed buckets (below), so they render as Prometheus histograms, not
//! summaries. The recorder is process-global and installed by the first [`handle`] call; a process that embeds both
//! the agent and the hub (`storesync-demo`) shares it, so each `/metrics` there shows both sides. Installing an
//! in-memory recorder and rendering text is no I/O: the binaries serve the text.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets for durations, in seconds.
const SECONDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Buckets for batch sizes, in events.
const EVENTS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's metrics registry, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_batch_events".into()), EVENTS))
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            // Another recorder was installed first (an embedding program's own); this one then stays empty.
        }
        handle
    })
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Every metric recorded in this process, in the Prometheus text exposition format.
pub fn render() -> String {
    handle().render()
}
