//! Metrics: OpenTelemetry instruments read by the Prometheus exporter, served at `/metrics`.
//!
//! Each node owns one [`Metrics`]: its own `prometheus::Registry` behind its own
//! `SdkMeterProvider` (never the process-global one), so several nodes in one test process never
//! mix their numbers.
//!
//! Two kinds of instrument:
//! - **Observed**: every counter that already exists as an atomic ([`GroupStats`],
//!   [`PluginStats`]) and every gauge (cache bytes and items, ring members, registration state)
//!   is an observable instrument whose callback reads one [`Stats`] snapshot, the very value
//!   `/api/v1/stats` serialises. [`Metrics::render`] installs the snapshot, gathers, and drops it,
//!   so `/metrics` and `/api/v1/stats` cannot disagree. [`group_series`], [`plugin_series`],
//!   [`cluster_series`], [`connection_series`] and [`codec_series`] are the only places where
//!   snapshot fields become series.
//! - **Recorded**: latency histograms, recorded where the time is spent (the HTTP middleware,
//!   the peer client, the plugin call).
//!
//! Names are final in the code: the exporter is told to add no unit or `_total` suffix, so what
//! you grep for is what Prometheus shows. Labels are bounded: group, tier, plugin, kind, peer
//! (a ring member), op, route (the axum route template), method, status, outcome (an error
//! code), state. Never a key.
//!
//! [`GroupStats`]: crate::group::GroupStats
//! [`PluginStats`]: crate::plugin::PluginStats

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry::metrics::{AsyncInstrument, Histogram, Meter, MeterProvider as _};
use opentelemetry::{KeyValue, StringValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder as _, TextEncoder};
use serde::Serialize;

use crate::api::conn::ConnSnapshot;
use crate::compression::builtin::LaneSnapshot;
use crate::discovery::{RegistrationState, RegistryCounts};
use crate::group::GroupSnapshot;
use crate::plugin::PluginSnapshot;

/// Bucket bounds (seconds) of every latency histogram: 100 µs (a cache hit over HTTP) to 10 s
/// (past every default timeout).
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The `tier` label of the main cache (keys this node owns).
pub const TIER_MAIN: &str = "main";
/// The `tier` label of the hot cache (copies of other nodes' keys).
pub const TIER_HOT: &str = "hot";
/// The `tier` label of the storage tier (a storage plugin below memory).
pub const TIER_STORAGE: &str = "storage";

/// The `route` label of requests that matched no route (so a scan of random paths adds no series).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Everything a node counts, read at one instant: the body of `/api/v1/stats`, and what the
/// observable instruments of `/metrics` report.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// One entry per group.
    pub groups: Vec<GroupSnapshot>,
    /// One entry per loaded plugin.
    pub plugins: Vec<PluginSnapshot>,
    /// Ring size and registration state.
    pub cluster: ClusterStats,
    /// What the node's connections did: open now, refused, closed by a timer.
    pub connections: ConnSnapshot,
    /// The codecs' heavy lane (codings of 256 KiB or more): its size, running, waiting.
    pub codec_lane: LaneSnapshot,
}

/// The cluster's part of [`Stats`].
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStats {
    /// Members of this node's ring, itself included.
    pub ring_members: u64,
    /// Where this node stands with etcd (`static` without etcd).
    pub registration: RegistrationState,
    /// Registry entries rejected, own entry written back (etcd only).
    pub registry: RegistryCounts,
}

/// One series of a group: metric name, `tier` label (for the metrics that have one), value.
pub type GroupSeries = (&'static str, Option<&'static str>, u64);

/// Help text of every group metric; [`group_series`] emits exactly these names.
const GROUP_METRICS: &[(&str, &str)] = &[
    ("geecache_gets_total", "Gets with a valid key."),
    (
        "geecache_cache_hits_total",
        "Gets answered by a cache tier (values and remembered \"no such key\").",
    ),
    (
        "geecache_cache_misses_total",
        "Lookups a cache tier could not answer; a main-tier miss is looked up in the hot tier.",
    ),
    (
        "geecache_cache_negative_hits_total",
        "Hits that were a remembered \"no such key\".",
    ),
    (
        "geecache_loads_total",
        "Loads started (one per singleflight leader, for clients or peers).",
    ),
    (
        "geecache_loads_deduplicated_total",
        "Callers that shared a load already in flight instead of starting one (singleflight).",
    ),
    (
        "geecache_local_loads_total",
        "Loads through this node's getter.",
    ),
    (
        "geecache_local_load_errors_total",
        "Getter loads that failed (errors, timeouts, values too large).",
    ),
    (
        "geecache_peer_loads_total",
        "Loads answered by the key's owner, another node.",
    ),
    (
        "geecache_peer_load_errors_total",
        "Loads the owner did not answer in time or failed; the node then loaded locally.",
    ),
    (
        "geecache_peer_requests_served_total",
        "Gets served to other nodes as the key's owner.",
    ),
    ("geecache_sets_total", "Values set at this node as owner."),
    (
        "geecache_removes_total",
        "Keys removed at this node as owner.",
    ),
    (
        "geecache_cache_evictions_total",
        "Entries a cache tier dropped for size or expiry.",
    ),
    ("geecache_cache_items", "Entries a cache tier holds."),
    (
        "geecache_cache_bytes",
        "Bytes a cache tier holds (keys, values and 64 bytes per entry).",
    ),
    (
        "geecache_cache_capacity_bytes",
        "A cache tier's byte budget.",
    ),
    (
        "geecache_storage_errors_total",
        "Storage tier calls (get, put, delete) that failed.",
    ),
    (
        "geecache_storage_writes_dropped_total",
        "Background storage writes dropped because the tier's queue was full.",
    ),
    (
        "geecache_storage_writes_abandoned_total",
        "Client writes answered with an error because storage did not finish them in time, then called off (or undone) so they never land.",
    ),
    (
        "geecache_invalidations_failed_total",
        "Invalidations of other nodes' copies, after a write, that failed or timed out (that node's hot copy expires by itself).",
    ),
    (
        "geecache_corrupt_values_total",
        "Stored values (memory, storage tier, peer) that did not decode: dropped and reloaded, never served.",
    ),
    (
        "geecache_values_encoded_total",
        "Values encoded for storage (loaded or set at this node).",
    ),
    (
        "geecache_values_compressed_total",
        "Encoded values stored compressed (the rest were small or did not shrink).",
    ),
    (
        "geecache_compression_input_bytes_total",
        "Bytes of the values encoded, before encoding.",
    ),
    (
        "geecache_compression_output_bytes_total",
        "Bytes those values take as stored (header and payload); output / input is the compression ratio.",
    ),
    (
        "geecache_encoded_replies_total",
        "Hits answered with the stored gzip/zstd payload as it is (Content-Encoding), without a decode.",
    ),
];

/// Maps a group's snapshot to its series. The one place where [`GroupSnapshot`] fields become
/// metrics: a new field (say a storage tier's hits) becomes a metric with one line here, and, for
/// a new name, one line in `GROUP_METRICS`.
pub fn group_series(g: &GroupSnapshot) -> Vec<GroupSeries> {
    let (main, hot, storage) = (Some(TIER_MAIN), Some(TIER_HOT), Some(TIER_STORAGE));
    let c = &g.counters;
    vec![
        ("geecache_gets_total", None, c.gets),
        ("geecache_cache_hits_total", main, c.hits),
        ("geecache_cache_hits_total", hot, c.hot_hits),
        ("geecache_cache_hits_total", storage, c.storage_hits),
        ("geecache_cache_misses_total", main, g.main_misses),
        ("geecache_cache_misses_total", hot, c.misses),
        ("geecache_cache_misses_total", storage, c.storage_misses),
        ("geecache_cache_negative_hits_total", None, c.negative_hits),
        ("geecache_loads_total", None, c.loads),
        (
            "geecache_loads_deduplicated_total",
            None,
            c.loads_deduplicated,
        ),
        ("geecache_local_loads_total", None, c.getter_calls),
        ("geecache_local_load_errors_total", None, c.getter_errors),
        ("geecache_peer_loads_total", None, c.peer_loads),
        ("geecache_peer_load_errors_total", None, c.peer_errors),
        (
            "geecache_peer_requests_served_total",
            None,
            c.peer_requests_served,
        ),
        ("geecache_sets_total", None, c.sets),
        ("geecache_removes_total", None, c.removes),
        ("geecache_cache_evictions_total", main, g.cache_evictions),
        ("geecache_cache_evictions_total", hot, g.hot_evictions),
        ("geecache_cache_items", main, g.cache_items),
        ("geecache_cache_items", hot, g.hot_items),
        ("geecache_cache_bytes", main, g.cache_bytes),
        ("geecache_cache_bytes", hot, g.hot_bytes),
        ("geecache_cache_capacity_bytes", main, g.cache_max_bytes),
        ("geecache_cache_capacity_bytes", hot, g.hot_max_bytes),
        ("geecache_storage_errors_total", None, c.storage_errors),
        (
            "geecache_storage_writes_dropped_total",
            None,
            c.storage_writes_dropped,
        ),
        (
            "geecache_storage_writes_abandoned_total",
            None,
            c.storage_writes_abandoned,
        ),
        (
            "geecache_invalidations_failed_total",
            None,
            c.invalidations_failed,
        ),
        ("geecache_corrupt_values_total", None, c.corrupt_values),
        ("geecache_values_encoded_total", None, c.values_encoded),
        (
            "geecache_values_compressed_total",
            None,
            c.values_compressed,
        ),
        (
            "geecache_compression_input_bytes_total",
            None,
            c.encoded_raw_bytes,
        ),
        (
            "geecache_compression_output_bytes_total",
            None,
            c.encoded_stored_bytes,
        ),
        ("geecache_encoded_replies_total", None, c.encoded_replies),
    ]
}

/// Help text of every plugin metric; [`plugin_series`] emits exactly these names.
const PLUGIN_METRICS: &[(&str, &str)] = &[
    ("geecache_plugin_calls_total", "Plugin calls started."),
    (
        "geecache_plugin_traps_total",
        "Plugin calls that trapped (guest panics included).",
    ),
    (
        "geecache_plugin_timeouts_total",
        "Plugin calls stopped by the time limit.",
    ),
    (
        "geecache_plugin_memory_limit_hits_total",
        "Plugin calls stopped by the memory cap.",
    ),
    (
        "geecache_plugin_reported_errors_total",
        "Errors a plugin reported itself.",
    ),
    (
        "geecache_plugin_busy_seconds_total",
        "Wall time spent running plugin calls.",
    ),
    (
        "geecache_plugin_logs_dropped_total",
        "Plugin log records dropped: past the budget of one call (100 records or 64KiB).",
    ),
    (
        "geecache_plugin_reloads_total",
        "New plugin versions swapped in by hot reload.",
    ),
    (
        "geecache_plugin_reload_failures_total",
        "Plugin reloads refused (the old version kept serving).",
    ),
];

/// The info metric of plugins: 1 for the version each plugin serves now.
const PLUGIN_INFO: (&str, &str) = (
    "geecache_plugin_info",
    "1 per plugin, labelled with the version and the component's SHA-256 it serves now.",
);

/// Maps a plugin's snapshot to its series (labels `plugin` and `kind`).
pub fn plugin_series(p: &PluginSnapshot) -> Vec<(&'static str, f64)> {
    vec![
        ("geecache_plugin_calls_total", p.calls as f64),
        ("geecache_plugin_logs_dropped_total", p.logs_dropped as f64),
        ("geecache_plugin_traps_total", p.traps as f64),
        ("geecache_plugin_timeouts_total", p.timeouts as f64),
        (
            "geecache_plugin_memory_limit_hits_total",
            p.memory_limits as f64,
        ),
        (
            "geecache_plugin_reported_errors_total",
            p.reported_errors as f64,
        ),
        ("geecache_plugin_busy_seconds_total", p.busy_seconds),
        ("geecache_plugin_reloads_total", p.reloads as f64),
        (
            "geecache_plugin_reload_failures_total",
            p.reload_failures as f64,
        ),
    ]
}

/// Help text of every cluster metric; [`cluster_series`] emits exactly these names.
const CLUSTER_METRICS: &[(&str, &str)] = &[
    (
        "geecache_ring_members",
        "Members of this node's ring, itself included.",
    ),
    (
        "geecache_registration_state",
        "1 for the state this node's etcd registration is in, 0 for the others.",
    ),
    (
        "geecache_registry_entries_rejected_total",
        "etcd registry entries not taken as members: not a registration, not under their own id's key, another scheme, or past --etcd-max-members.",
    ),
    (
        "geecache_registration_restored_total",
        "Times this node found its etcd registry entry overwritten and wrote it back.",
    ),
];

/// Help text of every connection metric; [`connection_series`] emits exactly these names.
const CONNECTION_METRICS: &[(&str, &str)] = &[
    (
        "geecache_connections_open",
        "Client and peer connections open now (the probes' reserve included).",
    ),
    (
        "geecache_connections_reserve_total",
        "Connections accepted past --max-connections into the probes' reserve (only /healthz and /readyz answered).",
    ),
    (
        "geecache_connections_refused_total",
        "Connections closed at once: every slot and the probes' reserve were taken.",
    ),
    (
        "geecache_connections_closed_total",
        "Connections the node closed, by reason: header_timeout (a request head too slow), idle_timeout, write_timeout (an answer not read).",
    ),
    (
        "geecache_answers_refused_total",
        "Answers refused with 503 busy: the in-flight budget (--max-inflight-body-bytes) was spent.",
    ),
    (
        "geecache_connections_over_client_cap_total",
        "Connections of a client that held --max-connections-per-client already (answered on /healthz and /readyz only).",
    ),
    (
        "geecache_requests_rate_limited_total",
        "Requests refused with 429 rate_limited: their client was past --rate-limit.",
    ),
];

/// Help text of every codec lane metric; [`codec_series`] emits exactly these names.
const CODEC_METRICS: &[(&str, &str)] = &[
    (
        "geecache_codec_lane_running",
        "Codings of 256KiB or more running now (at most --codec-concurrency).",
    ),
    (
        "geecache_codec_lane_waiting",
        "Codings of 256KiB or more waiting for the lane now (each at most until its load timeout).",
    ),
];

/// Maps the codec lane's part of the snapshot to series: name, no label, value.
pub fn codec_series(c: &LaneSnapshot) -> Vec<(&'static str, Option<&'static str>, f64)> {
    vec![
        ("geecache_codec_lane_running", None, c.running as f64),
        ("geecache_codec_lane_waiting", None, c.waiting as f64),
    ]
}

/// Maps the connections' part of the snapshot to series: name, `reason` label, value.
pub fn connection_series(c: &ConnSnapshot) -> Vec<(&'static str, Option<&'static str>, f64)> {
    let closed = "geecache_connections_closed_total";
    vec![
        ("geecache_connections_open", None, c.open as f64),
        (
            "geecache_connections_reserve_total",
            None,
            c.reserve_accepted as f64,
        ),
        ("geecache_connections_refused_total", None, c.refused as f64),
        (closed, Some("header_timeout"), c.header_timeouts as f64),
        (closed, Some("idle_timeout"), c.idle_timeouts as f64),
        (closed, Some("write_timeout"), c.write_timeouts as f64),
        (
            "geecache_answers_refused_total",
            None,
            c.answers_refused as f64,
        ),
        (
            "geecache_connections_over_client_cap_total",
            None,
            c.over_client_cap as f64,
        ),
        (
            "geecache_requests_rate_limited_total",
            None,
            c.rate_limited as f64,
        ),
    ]
}

/// Maps the cluster's part of the snapshot to series: name, `state` label, value.
pub fn cluster_series(c: &ClusterStats) -> Vec<(&'static str, Option<&'static str>, f64)> {
    let mut series = vec![
        ("geecache_ring_members", None, c.ring_members as f64),
        (
            "geecache_registry_entries_rejected_total",
            None,
            c.registry.rejected as f64,
        ),
        (
            "geecache_registration_restored_total",
            None,
            c.registry.restored as f64,
        ),
    ];
    for state in RegistrationState::ALL {
        let value = if state == c.registration { 1.0 } else { 0.0 };
        series.push(("geecache_registration_state", Some(state.as_str()), value));
    }
    series
}

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
    /// The snapshot the observable instruments report, present only while [`Metrics::render`]
    /// gathers.
    observed: Arc<Mutex<Option<Arc<Stats>>>>,
    /// One render at a time, so a gather never sees another render's snapshot.
    rendering: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Metrics {
    /// Meters for the node named `instance` (its ring name; the `service_instance_id` of
    /// `target_info`), exported to a registry of their own.
    pub fn new(instance: &str) -> Metrics {
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
            registry,
            _provider: provider.clone(),
            observed: observed.clone(),
            rendering: Mutex::new(()),
        };
        register_observed(&meter, &observed);
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// The Prometheus text exposition of every metric, with the observable instruments reading
    /// `stats`. The content type is [`Metrics::CONTENT_TYPE`].
    ///
    /// # Errors
    /// When the encoder fails (a metric the text format cannot express: a bug).
    pub fn render(&self, stats: Stats) -> Result<String, String> {
        let _one_at_a_time = lock(&self.inner.rendering);
        *lock(&self.inner.observed) = Some(Arc::new(stats));
        let families = self.inner.registry.gather();
        *lock(&self.inner.observed) = None;
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
fn register_observed(meter: &Meter, observed: &Arc<Mutex<Option<Arc<Stats>>>>) {
    for &(name, help) in GROUP_METRICS {
        observe(meter, observed, name, help, move |stats, o| {
            for g in &stats.groups {
                for (series, tier, value) in group_series(g) {
                    if series != name {
                        continue;
                    }
                    let mut labels = vec![KeyValue::new("group", g.name.clone())];
                    if let Some(tier) = tier {
                        labels.push(KeyValue::new("tier", tier));
                    }
                    o.observe(value as f64, &labels);
                }
            }
        });
    }
    for &(name, help) in PLUGIN_METRICS {
        observe(meter, observed, name, help, move |stats, o| {
            for p in &stats.plugins {
                for (series, value) in plugin_series(p) {
                    if series == name {
                        let labels = [
                            KeyValue::new("plugin", p.name.clone()),
                            KeyValue::new("kind", p.kind.clone()),
                        ];
                        o.observe(value, &labels);
                    }
                }
            }
        });
    }
    let (name, help) = PLUGIN_INFO;
    observe(meter, observed, name, help, move |stats, o| {
        for p in &stats.plugins {
            let labels = [
                KeyValue::new("plugin", p.name.clone()),
                KeyValue::new("kind", p.kind.clone()),
                KeyValue::new("version", p.version.clone()),
                KeyValue::new("sha256", p.sha256.clone()),
            ];
            o.observe(1.0, &labels);
        }
    });
    observe_one_label(meter, observed, CONNECTION_METRICS, "reason", |stats| {
        connection_series(&stats.connections)
    });
    observe_one_label(meter, observed, CLUSTER_METRICS, "state", |stats| {
        cluster_series(&stats.cluster)
    });
    observe_one_label(meter, observed, CODEC_METRICS, "lane", |stats| {
        codec_series(&stats.codec_lane)
    });
}

/// Series of a table whose metrics have at most one label.
type OneLabelSeries = Vec<(&'static str, Option<&'static str>, f64)>;

/// Registers the metrics of `table`, whose series `series` maps from the snapshot, each with
/// at most the one label `label`.
fn observe_one_label(
    meter: &Meter,
    observed: &Arc<Mutex<Option<Arc<Stats>>>>,
    table: &'static [(&'static str, &'static str)],
    label: &'static str,
    series: fn(&Stats) -> OneLabelSeries,
) {
    for &(name, help) in table {
        observe(meter, observed, name, help, move |stats, o| {
            for (metric, value_label, value) in series(stats) {
                if metric == name {
                    let labels: Vec<KeyValue> = value_label
                        .map(|v| KeyValue::new(label, v))
                        .into_iter()
                        .collect();
                    o.observe(value, &labels);
                }
            }
        });
    }
}

/// One observable instrument: a counter when `name` ends in `_total`, a gauge otherwise.
fn observe(
    meter: &Meter,
    observed: &Arc<Mutex<Option<Arc<Stats>>>>,
    name: &'static str,
    help: &'static str,
    report: impl Fn(&Stats, &dyn AsyncInstrument<f64>) + Send + Sync + 'static,
) {
    let observed = observed.clone();
    let callback = move |o: &dyn AsyncInstrument<f64>| {
        let stats = lock(&observed).clone();
        if let Some(stats) = stats {
            report(&stats, o);
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::group::Counters;
    use std::collections::BTreeSet;

    fn group(name: &str, base: u64) -> GroupSnapshot {
        // Every field a different value, so a series reading the wrong field is caught.
        let mut n = base;
        let mut next = || {
            n += 1;
            n
        };
        let counters = Counters {
            gets: next(),
            hits: next(),
            hot_hits: next(),
            negative_hits: next(),
            misses: next(),
            loads: next(),
            loads_deduplicated: next(),
            getter_calls: next(),
            getter_errors: next(),
            peer_loads: next(),
            peer_errors: next(),
            peer_requests_served: next(),
            storage_hits: next(),
            storage_misses: next(),
            storage_errors: next(),
            storage_writes_dropped: next(),
            storage_writes_abandoned: next(),
            invalidations_failed: next(),
            corrupt_values: next(),
            values_encoded: next(),
            values_compressed: next(),
            encoded_raw_bytes: next(),
            encoded_stored_bytes: next(),
            encoded_replies: next(),
            sets: next(),
            removes: next(),
        };
        GroupSnapshot {
            name: name.into(),
            getter: "g".into(),
            compression: "zstd".into(),
            storage: Some("fs_storage".into()),
            counters,
            main_misses: next(),
            cache_items: next(),
            cache_bytes: next(),
            cache_max_bytes: next(),
            cache_evictions: next(),
            hot_items: next(),
            hot_bytes: next(),
            hot_max_bytes: next(),
            hot_evictions: next(),
        }
    }

    fn stats() -> Stats {
        Stats {
            groups: vec![group("a", 0), group("b", 100)],
            plugins: vec![PluginSnapshot {
                name: "db_getter".into(),
                version: "1".into(),
                kind: "getter".into(),
                calls: 5,
                traps: 1,
                timeouts: 2,
                memory_limits: 3,
                reported_errors: 4,
                busy_seconds: 0.5,
                logs_dropped: 8,
                sha256: "ab12".into(),
                reloads: 6,
                reload_failures: 7,
            }],
            cluster: ClusterStats {
                ring_members: 3,
                registration: RegistrationState::Registered,
                registry: RegistryCounts {
                    rejected: 4,
                    restored: 5,
                },
            },
            connections: ConnSnapshot {
                open: 1,
                reserve_accepted: 2,
                refused: 3,
                header_timeouts: 4,
                idle_timeouts: 5,
                write_timeouts: 6,
                answers_refused: 7,
                over_client_cap: 8,
                rate_limited: 9,
            },
            codec_lane: LaneSnapshot {
                concurrency: 2,
                running: 1,
                waiting: 3,
            },
        }
    }

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

    fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
        samples(text)
            .into_iter()
            .find(|(s, _)| {
                s.split('{').next() == Some(name) && labels.iter().all(|l| s.contains(l))
            })
            .map(|(_, v)| v)
    }

    #[test]
    fn every_snapshot_field_is_exported_with_its_value() {
        let text = Metrics::new("n1").render(stats()).unwrap();
        for g in &stats().groups {
            for (name, tier, expected) in group_series(g) {
                let group = format!("group=\"{}\"", g.name);
                let tier = tier.map(|t| format!("tier=\"{t}\"")).unwrap_or_default();
                let got = value(&text, name, &[&group, &tier]);
                assert_eq!(got, Some(expected as f64), "{name} {group} {tier}\n{text}");
            }
        }
        let p = &stats().plugins[0];
        for (name, expected) in plugin_series(p) {
            let got = value(&text, name, &["plugin=\"db_getter\"", "kind=\"getter\""]);
            assert_eq!(got, Some(expected), "{name}\n{text}");
        }
        assert_eq!(
            value(
                &text,
                "geecache_plugin_info",
                &["plugin=\"db_getter\"", "version=\"1\"", "sha256=\"ab12\""]
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(value(&text, "geecache_ring_members", &[]), Some(3.0));
        assert_eq!(
            value(
                &text,
                "geecache_registration_state",
                &["state=\"registered\""]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                "geecache_registration_state",
                &["state=\"unreachable\""]
            ),
            Some(0.0)
        );
    }

    fn text_has_type(name: &str) -> bool {
        let text = Metrics::new("n1").render(stats()).unwrap();
        text.contains(&format!("# TYPE {name} gauge"))
    }

    #[test]
    fn every_table_name_is_emitted_and_named_by_its_type() {
        let emitted: BTreeSet<&str> = group_series(&group("a", 0))
            .into_iter()
            .map(|(n, _, _)| n)
            .chain(
                plugin_series(&stats().plugins[0])
                    .into_iter()
                    .map(|(n, _)| n),
            )
            .chain(
                cluster_series(&stats().cluster)
                    .into_iter()
                    .map(|(n, _, _)| n),
            )
            .chain(
                connection_series(&stats().connections)
                    .into_iter()
                    .map(|(n, _, _)| n),
            )
            .chain(
                codec_series(&stats().codec_lane)
                    .into_iter()
                    .map(|(n, _, _)| n),
            )
            .collect();
        let declared: BTreeSet<&str> = GROUP_METRICS
            .iter()
            .chain(PLUGIN_METRICS)
            .chain(CLUSTER_METRICS)
            .chain(CONNECTION_METRICS)
            .chain(CODEC_METRICS)
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(emitted, declared);
        assert!(text_has_type(PLUGIN_INFO.0), "the info metric is exported");
        let text = Metrics::new("n1").render(stats()).unwrap();
        for line in text.lines().filter(|l| l.starts_with("# TYPE geecache_")) {
            let mut words = line.split(' ').skip(2);
            let (name, kind) = (words.next().unwrap(), words.next().unwrap());
            assert_eq!(
                name.ends_with("_total"),
                kind == "counter",
                "{line}: counters and only counters end in _total"
            );
        }
    }

    #[test]
    fn histograms_are_recorded_with_bounded_labels_and_nodes_do_not_share_them() {
        let one = Metrics::new("n1");
        let two = Metrics::new("n2");
        one.record_request(
            "/api/v1/groups/{group}/keys/{key}",
            "GET",
            200,
            Duration::from_millis(3),
        );
        one.peer_call("127.0.0.1:1", "get").finish("ok");
        drop(one.peer_call("127.0.0.1:1", "get"));
        one.record_plugin_call("db_getter", "ok", Duration::from_micros(150));
        let text = one.render(stats()).unwrap();
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
        let other = two.render(stats()).unwrap();
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
