//! Metrics: OpenTelemetry instruments read by the Prometheus exporter, served at `/metrics`.
//!
//! Each node owns one [`Metrics`]: its own `prometheus::Registry` behind its own
//! `SdkMeterProvider` (never the process-global one), so several nodes in one test process never
//! mix their numbers.
//!
//! Two kinds of instrument:
//! - **Observed**: every counter that already exists as an atomic (a group's `GroupStats`, a
//!   plugin's `PluginStats`) and every gauge (cache bytes and items, ring members,
//!   registration state) is an observable instrument whose callback reads the samples of one
//!   snapshot, the very value `/api/v1/stats` serialises. Each subsystem owns its table and maps its snapshot to
//!   samples in a `metrics.rs` of its own (`group::metrics`, `plugin::metrics`,
//!   `api::metrics`, `cluster::metrics`, `compression::metrics`); this module imports none of
//!   them: [`Metrics::new`] registers the tables it is given, and [`Metrics::render`] installs
//!   the samples, gathers, and drops them, so `/metrics` and `/api/v1/stats` cannot disagree.
//! - **Recorded**: latency histograms, recorded where the time is spent (the HTTP middleware,
//!   the peer client, the plugin call).
//!
//! Names are final in the code: the exporter is told to add no unit or `_total` suffix, so what
//! you grep for is what Prometheus shows. Labels are bounded: group, tier, plugin, kind, peer
//! (a ring member), op, route (the axum route template), method, status, outcome (an error
//! code), state. Never a key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::metrics::{AsyncInstrument, Histogram, Meter, MeterProvider as _};
use opentelemetry::{KeyValue, StringValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use parking_lot::Mutex;
use prometheus::{Encoder as _, TextEncoder};

use geecache_core::metrics::{Sample, Table};

/// Bucket bounds (seconds) of every latency histogram: 100 µs (a cache hit over HTTP) to 10 s
/// (past every default timeout).
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The `route` label of requests that matched no route (so a scan of random paths adds no series).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The samples the observable instruments report during one render, by metric name.
type Observed = HashMap<&'static str, Vec<(Vec<KeyValue>, f64)>>;

/// A node's meters and the registry `/metrics` is rendered from. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    /// What the exporter fills on every gather; private to this node.
    registry: prometheus::Registry,
    /// Owns the instruments and the exporter (a pull reader); dropped with the node.
    _provider: SdkMeterProvider,
    /// `geecache_http_request_duration_seconds`, recorded by the API middleware.
    http_duration: Histogram<f64>,
    /// `geecache_peer_request_duration_seconds`, recorded by the peer clients.
    peer_duration: Histogram<f64>,
    /// `geecache_plugin_call_duration_seconds`, recorded around each plugin call.
    plugin_duration: Histogram<f64>,
    /// `geecache_plugin_http_request_duration_seconds`, recorded around each outbound HTTP
    /// request of a plugin.
    plugin_http_duration: Histogram<f64>,
    /// The snapshot the observable instruments report, present only while [`Metrics::render`]
    /// gathers.
    observed: Arc<Mutex<Option<Arc<Observed>>>>,
    /// One render at a time, so a gather never sees another render's snapshot.
    rendering: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Metrics {
    /// Meters for the node named `instance` (its ring name; the `service_instance_id` of
    /// `target_info`), exported to a registry of their own, with an observable instrument for
    /// every metric of `tables` (the node's: `api::stats::TABLES`; none for meters that only
    /// record histograms).
    pub fn new(instance: &str, tables: &[Table]) -> Metrics {
        let registry = prometheus::Registry::new();
        let resource = Resource::builder_empty()
            .with_service_name("geecache")
            .with_attribute(KeyValue::new("service.instance.id", instance.to_string()))
            .build();
        let mut provider = SdkMeterProvider::builder().with_resource(resource.clone());
        // Names already carry their unit and `_total`: the exporter must not append them again.
        match opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_units()
            .without_counter_suffixes()
            .build()
        {
            Ok(exporter) => provider = provider.with_reader(exporter),
            // Only a name clash in the registry fails this, and the registry is new.
            Err(e) => {
                tracing::error!(error = %e, "cannot create the Prometheus exporter; /metrics stays empty")
            }
        }
        let provider = provider.build();
        let meter = provider.meter("geecache");
        let observed = Arc::new(Mutex::new(None));
        let histogram = |name: &'static str, help: &'static str| {
            meter
                .f64_histogram(name)
                .with_description(help)
                .with_unit("s")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build()
        };
        let inner = Inner {
            http_duration: histogram(
                "geecache_http_request_duration_seconds",
                "HTTP requests served, by route template, method and status.",
            ),
            peer_duration: histogram(
                "geecache_peer_request_duration_seconds",
                "Requests to other nodes (client side), by peer, operation and outcome.",
            ),
            plugin_duration: histogram(
                "geecache_plugin_call_duration_seconds",
                "Plugin calls (waiting for a slot included), by plugin and outcome.",
            ),
            plugin_http_duration: histogram(
                "geecache_plugin_http_request_duration_seconds",
                "Plugins' outbound HTTP requests until the answer's head, by plugin, allowlist \
                 entry (origin) and outcome (2xx..5xx, error, timeout, denied).",
            ),
            registry,
            _provider: provider.clone(),
            observed: observed.clone(),
            rendering: Mutex::new(()),
        };
        for table in tables {
            for &(name, help) in *table {
                observe(&meter, &observed, name, help);
            }
        }
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// The Prometheus text exposition of every metric, with the observable instruments reading
    /// `samples` (a sample of a metric no table named is not shown). The content type is
    /// [`Metrics::CONTENT_TYPE`].
    ///
    /// # Errors
    /// When the encoder fails (a metric the text format cannot express: a bug).
    pub fn render(&self, samples: Vec<Sample>) -> Result<String, String> {
        let mut observed = Observed::new();
        for sample in samples {
            let labels = sample
                .labels
                .into_iter()
                .map(|(k, v)| KeyValue::new(k, v))
                .collect();
            observed
                .entry(sample.name)
                .or_default()
                .push((labels, sample.value));
        }
        let _one_at_a_time = self.inner.rendering.lock();
        *self.inner.observed.lock() = Some(Arc::new(observed));
        let families = self.inner.registry.gather();
        *self.inner.observed.lock() = None;
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .map_err(|e| format!("cannot encode metrics: {e}"))?;
        String::from_utf8(out).map_err(|e| format!("metrics are not UTF-8: {e}"))
    }

    /// The content type of [`Metrics::render`]'s text (Prometheus text format 0.0.4).
    pub const CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";

    /// Records one HTTP request: `route` is the matched route template (or
    /// [`UNMATCHED_ROUTE`]), `method` one of [`method_label`]'s values.
    /// Labels are built without allocating: `route` is a `&'static str` (or a shared one).
    pub fn record_request(
        &self,
        route: impl Into<StringValue>,
        method: &'static str,
        status: u16,
        took: Duration,
    ) {
        self.inner.http_duration.record(
            seconds(took),
            &[
                KeyValue::new("route", route.into()),
                KeyValue::new("method", method),
                KeyValue::new("status", i64::from(status)),
            ],
        );
    }

    /// Starts timing one request to `peer` (a ring member's address) for `op` (`get`, `set`,
    /// `delete`, `invalidate`, `batch`). Finish it with [`PeerCall::finish`]; a call dropped unfinished
    /// (its caller gave up, e.g. on the group's peer timeout) is recorded as `cancelled`.
    /// `peer` is best a shared string (`Arc<str>`), which labels the call without a copy.
    pub fn peer_call(&self, peer: impl Into<StringValue>, op: &'static str) -> PeerCall {
        PeerCall {
            histogram: self.inner.peer_duration.clone(),
            peer: peer.into(),
            op,
            started: Instant::now(),
            done: false,
        }
    }

    /// Records one plugin call of `plugin` that took `took` and ended with `outcome` (`ok` or
    /// an error code such as `plugin_timeout`).
    pub fn record_plugin_call(
        &self,
        plugin: impl Into<StringValue>,
        outcome: &'static str,
        took: Duration,
    ) {
        self.inner.plugin_duration.record(
            seconds(took),
            &[
                KeyValue::new("plugin", plugin.into()),
                KeyValue::new("outcome", outcome),
            ],
        );
    }

    /// Records one outbound HTTP request of `plugin`, allowed by the allowlist entry `origin`
    /// (`none` when it was refused), that got its answer's head (or failed) after `took`.
    pub fn record_plugin_http(
        &self,
        plugin: impl Into<StringValue>,
        origin: impl Into<StringValue>,
        outcome: &'static str,
        took: Duration,
    ) {
        self.inner.plugin_http_duration.record(
            seconds(took),
            &[
                KeyValue::new("plugin", plugin.into()),
                KeyValue::new("origin", origin.into()),
                KeyValue::new("outcome", outcome),
            ],
        );
    }
}

/// The `method` label: the standard methods by name, anything else as `other` (a client may
/// send any token as a method; it must not add series).
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// One request to a peer being timed; see [`Metrics::peer_call`].
#[derive(Debug)]
#[must_use = "finish it with the call's outcome"]
pub struct PeerCall {
    /// Where the duration goes.
    histogram: Histogram<f64>,
    /// The `peer` label.
    peer: StringValue,
    /// The `op` label.
    op: &'static str,
    /// When the call started.
    started: Instant,
    /// Whether [`PeerCall::finish`] recorded it.
    done: bool,
}

impl PeerCall {
    /// Records the call with `outcome`: `ok`, or the error's stable code.
    pub fn finish(mut self, outcome: &'static str) {
        self.record(outcome);
    }

    fn record(&mut self, outcome: &'static str) {
        self.done = true;
        self.histogram.record(
            seconds(self.started.elapsed()),
            &[
                KeyValue::new("peer", self.peer.clone()),
                KeyValue::new("op", self.op),
                KeyValue::new("outcome", outcome),
            ],
        );
    }
}

impl Drop for PeerCall {
    fn drop(&mut self) {
        if !self.done {
            self.record("cancelled");
        }
    }
}

/// Registers one observable instrument per metric of the three tables; each callback reads the
/// snapshot installed by [`Metrics::render`].
/// One observable instrument reporting the samples named `name` of the render in progress: a
/// counter when `name` ends in `_total`, a gauge otherwise.
fn observe(
    meter: &Meter,
    observed: &Arc<Mutex<Option<Arc<Observed>>>>,
    name: &'static str,
    help: &'static str,
) {
    let observed = observed.clone();
    let callback = move |o: &dyn AsyncInstrument<f64>| {
        let samples = observed.lock().clone();
        if let Some(series) = samples.as_deref().and_then(|s| s.get(name)) {
            for (labels, value) in series {
                o.observe(*value, labels);
            }
        }
    };
    // The SDK keeps the callback registered for the provider's lifetime; the handle is not needed.
    if name.ends_with("_total") {
        meter
            .f64_observable_counter(name)
            .with_description(help)
            .with_callback(callback)
            .build();
    } else {
        meter
            .f64_observable_gauge(name)
            .with_description(help)
            .with_callback(callback)
            .build();
    }
}

/// Reading a text exposition back, for the tests of the modules that render one.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod exposition {
    /// `name{labels} value` lines of a text exposition, without comments.
    fn samples(text: &str) -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                (series.to_string(), value.parse().unwrap())
            })
            .collect()
    }

    /// The value of the first sample of `name` whose labels include every one of `labels`.
    pub(crate) fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
        samples(text)
            .into_iter()
            .find(|(s, _)| {
                s.split('{').next() == Some(name) && labels.iter().all(|l| s.contains(l))
            })
            .map(|(_, v)| v)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::exposition::value;
    use super::*;

    #[test]
    fn histograms_are_recorded_with_bounded_labels_and_nodes_do_not_share_them() {
        let one = Metrics::new("n1", &[]);
        let two = Metrics::new("n2", &[]);
        one.record_request(
            "/api/v1/groups/{group}/keys/{key}",
            "GET",
            200,
            Duration::from_millis(3),
        );
        one.peer_call("127.0.0.1:1", "get").finish("ok");
        drop(one.peer_call("127.0.0.1:1", "get"));
        one.record_plugin_call("db_getter", "ok", Duration::from_micros(150));
        let text = one.render(Vec::new()).unwrap();
        let count = |name: &str, labels: &[&str]| value(&text, name, labels);
        assert_eq!(
            count(
                "geecache_http_request_duration_seconds_count",
                &[
                    "route=\"/api/v1/groups/{group}/keys/{key}\"",
                    "status=\"200\""
                ]
            ),
            Some(1.0)
        );
        assert_eq!(
            count(
                "geecache_peer_request_duration_seconds_count",
                &["outcome=\"ok\""]
            ),
            Some(1.0)
        );
        assert_eq!(
            count(
                "geecache_peer_request_duration_seconds_count",
                &["outcome=\"cancelled\""]
            ),
            Some(1.0)
        );
        assert_eq!(
            count(
                "geecache_plugin_call_duration_seconds_bucket",
                &["plugin=\"db_getter\"", "le=\"0.00025\""]
            ),
            Some(1.0)
        );
        let other = two.render(Vec::new()).unwrap();
        assert!(!other.contains("geecache_http_request_duration_seconds_count"));
        assert!(other.contains("service_instance_id=\"n2\""), "{other}");
    }

    #[test]
    fn unknown_methods_share_one_label() {
        let odd = axum::http::Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&odd), "other");
        assert_eq!(method_label(&axum::http::Method::GET), "GET");
    }
}
