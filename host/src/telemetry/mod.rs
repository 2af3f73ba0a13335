//! Observability: logs, traces and metrics.
//!
//! - Logs: `tracing` events with a `RUST_LOG` filter (default `info`), as text or JSON lines on
//!   stderr; text in colour only when stderr is a terminal and `NO_COLOR` is not set
//!   ([`log_colour`]). Log lines carry no span context (the log layers take no spans), so that spans cost
//!   nothing on the request path unless traces are exported.
//! - Traces: the get path runs in spans with stable names (`geecache.api.get` →
//!   `geecache.group.get` → `geecache.group.load` → `geecache.peer.get` or
//!   `geecache.plugin.call`; owners answer peers in `geecache.group.get_as_owner`). They are
//!   exported over OTLP/HTTP (protobuf) only when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and `OTEL_SDK_DISABLED` is not `true`); the other
//!   standard `OTEL_*` variables (headers, timeout, service name, batch settings) apply. Keys
//!   appear on spans only at debug level. A client's W3C `traceparent`/`tracestate` is
//!   continued ([`remote_context`]), and peer requests carry it on ([`inject_current`]), so
//!   the owner's `geecache.peer.serve` span is in the caller's trace.
//! - Metrics: [`metrics`], one [`Metrics`] per node, rendered at `/metrics`.

pub mod metrics;

pub use metrics::Metrics;

use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::subscriber::Interest;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{FilterExt as _, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::util::SubscriberInitExt as _;

/// Whether this process exports traces (set by [`init`]): only then is trace context read
/// from requests and sent to peers.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces over OTLP.
pub fn exports_traces() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Reads W3C trace context (`traceparent`, `tracestate`) from headers.
struct Extract<'a>(&'a HeaderMap);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes W3C trace context into headers.
struct Inject<'a>(&'a mut HeaderMap);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The W3C trace context (`traceparent`, and `tracestate`) a request carries, when this process
/// exports traces and the request has one: what its spans continue. Reads nothing otherwise.
pub fn remote_context(headers: &HeaderMap) -> Option<opentelemetry::Context> {
    if !exports_traces() || !headers.contains_key("traceparent") {
        return None;
    }
    Some(TraceContextPropagator::new().extract(&Extract(headers)))
}

/// Makes `span` a child of the remote context `cx` (see [`remote_context`]).
pub fn adopt(span: &tracing::Span, cx: Option<opentelemetry::Context>) {
    if let Some(cx) = cx
        && !span.is_disabled()
    {
        let _ = span.set_parent(cx);
    }
}

/// Adds the current span's trace context to `headers` (`traceparent`, `tracestate`), so the
/// node a request goes to continues the trace. Nothing when traces are not exported.
pub fn inject_current(headers: &mut HeaderMap) {
    if !exports_traces() {
        return;
    }
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut Inject(headers));
}

/// The variables that turn OTLP trace export on, most specific first.
pub const OTLP_ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// What [`init`] set up. Keep it until the program ends: dropping it flushes the spans still
/// buffered (bounded by the exporter's timeout) and stops the exporter.
#[derive(Debug, Default)]
pub struct Telemetry {
    /// The OTLP trace pipeline, when one was configured.
    tracer: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported over OTLP.
    pub fn exports_traces(&self) -> bool {
        self.tracer.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("geecache-host: flushing traces failed: {e}");
        }
    }
}

/// The OTLP endpoint the environment asks for, if any (`lookup` reads a variable).
pub fn otlp_endpoint(lookup: impl Fn(&str) -> Option<String>) -> Option<String> {
    if lookup("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return None;
    }
    OTLP_ENDPOINT_VARS
        .iter()
        .find_map(|var| lookup(var).filter(|v| !v.trim().is_empty()))
}

/// Builds the OTLP/HTTP span pipeline: batch processor on its own thread, blocking HTTP client.
fn tracer_provider() -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| e.to_string())?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("geecache");
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// The `RUST_LOG` filter (default `info`). Built once per layer: each layer filters for itself.
fn env_filter() -> EnvFilter {
    std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .and_then(|spec| EnvFilter::try_new(with_core_alias(&spec)).ok())
        .unwrap_or_else(|| EnvFilter::new("info"))
}

/// `RUST_LOG` as given, plus, for each `geecache_host…=LEVEL` directive, the same for
/// `geecache_core` (where the group, cache and codec code logs and opens its spans since it
/// moved into its own crate), unless `geecache_core` is named itself: a filter written for
/// `geecache_host` keeps covering both.
fn with_core_alias(spec: &str) -> String {
    if spec.contains("geecache_core") {
        return spec.to_owned();
    }
    let mut directives: Vec<String> = spec.split(',').map(str::to_owned).collect();
    let aliases: Vec<String> = directives
        .iter()
        .filter_map(|d| {
            let (target, level) = d.trim().split_once('=')?;
            let rest = target.strip_prefix("geecache_host")?;
            // The crate itself or one of its modules; core's modules keep their names.
            (rest.is_empty() || rest.starts_with("::"))
                .then(|| format!("geecache_core{rest}={level}"))
        })
        .collect();
    directives.extend(aliases);
    directives.join(",")
}

/// The filter of the log layers: the events `RUST_LOG` enables, and no span at all.
///
/// Log lines do not show spans, so a span that no trace exporter takes is enabled by no layer,
/// and `info_span!` on the request path then costs an atomic load instead of a span built,
/// formatted and entered on every request.
#[derive(Debug)]
struct EventsOnly(EnvFilter);

impl<S> Filter<S> for EventsOnly
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn enabled(&self, meta: &tracing::Metadata<'_>, cx: &Context<'_, S>) -> bool {
        meta.is_event() && Filter::enabled(&self.0, meta, cx)
    }

    fn callsite_enabled(&self, meta: &'static tracing::Metadata<'static>) -> Interest {
        if meta.is_span() {
            return Interest::never();
        }
        Filter::<S>::callsite_enabled(&self.0, meta)
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, cx: &Context<'_, S>) -> bool {
        Filter::event_enabled(&self.0, event, cx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Filter::<S>::max_level_hint(&self.0)
    }
}

/// Whether text logs carry ANSI colour: only when they go to a terminal (a file or a journal
/// would keep the escapes as text), and never when `NO_COLOR` is set to a non-empty value
/// (no-color.org).
pub fn log_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// A layer of the global subscriber.
type BoxedLayer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// The layers of the global subscriber: logs (text, in colour when `colour`, or `json`) to
/// `writer`, and spans to `tracer` when traces are exported; each with its own filter from
/// `env_filter`.
///
/// A list rather than optional layers: an absent `Option` layer enables every span and event
/// (so that it filters nothing out), which would build every span again.
fn layers<W>(
    json: bool,
    colour: bool,
    writer: W,
    tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
    env_filter: &dyn Fn() -> EnvFilter,
) -> Vec<BoxedLayer>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let logs = tracing_subscriber::fmt::layer().with_writer(writer);
    let mut layers = vec![if json {
        logs.json().with_filter(EventsOnly(env_filter())).boxed()
    } else {
        logs.with_ansi(colour)
            .with_filter(EventsOnly(env_filter()))
            .boxed()
    }];
    if let Some(tracer) = tracer {
        // The exporter's own HTTP stack must not feed spans back into the exporter.
        let quiet_exporter = Targets::new()
            .with_default(LevelFilter::TRACE)
            .with_target("hyper", LevelFilter::OFF)
            .with_target("hyper_util", LevelFilter::OFF)
            .with_target("reqwest", LevelFilter::OFF)
            .with_target("opentelemetry", LevelFilter::OFF)
            .with_target("opentelemetry_sdk", LevelFilter::OFF)
            .with_target("opentelemetry_otlp", LevelFilter::OFF);
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(env_filter().and(quiet_exporter))
                .boxed(),
        );
    }
    layers
}

/// Installs the global subscriber: logs (text or `json`) filtered by `RUST_LOG`, and OTLP trace
/// export when the environment asks for it. Later calls (tests) install nothing.
///
/// Each layer has its own filter: the log layers take `RUST_LOG`'s events and no spans (log
/// lines carry no span context; span-name directives such as `[geecache.api.get]=debug` do not
/// select log lines), the OTLP layer takes `RUST_LOG`'s spans and events, except those of the
/// exporter's own HTTP stack. Without OTLP no layer enables a span, so spans cost nothing.
pub fn init(json: bool) -> Telemetry {
    let endpoint = otlp_endpoint(|v| std::env::var(v).ok());
    let (tracer, failed) = match endpoint.as_ref().map(|_| tracer_provider()) {
        Some(Ok(provider)) => (Some(provider), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let colour = log_colour(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let layers = layers(
        json,
        colour,
        std::io::stderr,
        tracer.as_ref().map(|p| p.tracer("geecache")),
        &env_filter,
    );
    let installed = tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_ok();
    match (endpoint, failed) {
        (Some(endpoint), None) if installed => {
            tracing::info!(%endpoint, "exporting traces over OTLP/HTTP");
        }
        (Some(endpoint), Some(e)) => {
            tracing::warn!(%endpoint, error = %e, "cannot export traces over OTLP; logging only");
        }
        _ => {}
    }
    let tracer = if installed { tracer } else { None };
    EXPORTING.store(tracer.is_some(), Ordering::Relaxed);
    Telemetry { tracer }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_filter_for_the_host_covers_core_too() {
        assert_eq!(
            with_core_alias("info,geecache_host=debug"),
            "info,geecache_host=debug,geecache_core=debug"
        );
        assert_eq!(
            with_core_alias("geecache_host::group=trace"),
            "geecache_host::group=trace,geecache_core::group=trace"
        );
        assert_eq!(
            with_core_alias("warn,geecache_core=info"),
            "warn,geecache_core=info"
        );
        assert_eq!(with_core_alias("info"), "info");
        assert_eq!(
            with_core_alias("geecache_hostile=debug"),
            "geecache_hostile=debug"
        );
    }

    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    /// Without a trace exporter, no layer takes a span: `info_span!` on the request path is a
    /// disabled span (nothing built, formatted or entered), while log events still pass.
    #[test]
    fn without_otlp_no_layer_takes_a_span() {
        for json in [false, true] {
            let layers = layers(json, false, std::io::sink, None, &|| EnvFilter::new("info"));
            let subscriber = tracing_subscriber::registry().with(layers);
            tracing::subscriber::with_default(subscriber, || {
                let span = tracing::info_span!("geecache.test.span", group = "g");
                assert!(span.is_disabled(), "json: {json}");
                assert!(tracing::enabled!(tracing::Level::INFO));
                assert!(!tracing::enabled!(tracing::Level::DEBUG));
            });
        }
    }

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(log_colour(true, None));
        assert!(log_colour(true, Some(OsStr::new(""))));
        assert!(!log_colour(true, Some(OsStr::new("1"))));
        assert!(!log_colour(false, None));
        assert!(!log_colour(false, Some(OsStr::new("1"))));
    }

    #[test]
    fn otlp_is_on_only_when_an_endpoint_is_set() {
        assert_eq!(otlp_endpoint(env(&[])), None);
        assert_eq!(
            otlp_endpoint(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])),
            None
        );
        assert_eq!(
            otlp_endpoint(env(&[(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://127.0.0.1:4318"
            )])),
            Some("http://127.0.0.1:4318".into())
        );
        assert_eq!(
            otlp_endpoint(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://b:4318/v1/traces"
                ),
            ])),
            Some("http://b:4318/v1/traces".into())
        );
        assert_eq!(
            otlp_endpoint(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
                ("OTEL_SDK_DISABLED", "true"),
            ])),
            None
        );
    }
}
