//! The process-wide Prometheus recorder.
//!
//! The `metrics` facade has one global recorder per process. tether, the bundled nodes
//! and tests can live in one process (the demo runs its nodes in-process), so whoever
//! asks first installs it and everyone renders from the same handle. tether installs it
//! first, with its histograms' buckets ([`install`]); a handle taken from the facade
//! before a recorder exists records nowhere.

use std::sync::OnceLock;

pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use (histograms without
/// buckets of their own are rendered as summaries).
pub fn handle() -> &'static PrometheusHandle {
    install(&[])
}

/// Installs the recorder, with `buckets` (seconds or bytes, rising) for the histograms
/// named, unless one is installed already; returns the handle either way.
pub fn install(buckets: &[(&str, &[f64])]) -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let mut builder = Some(PrometheusBuilder::new());
        // Only an empty list is refused by the builder, and those are skipped.
        for (name, values) in buckets.iter().filter(|(_, v)| !v.is_empty()) {
            builder = builder.and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full((*name).to_owned()), values)
                    .ok()
            });
        }
        let recorder = builder.unwrap_or_default().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::debug!("a metrics recorder was already installed");
        }
        handle
    })
}
