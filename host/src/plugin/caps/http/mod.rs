//! A getter's outbound HTTP: standard `wasi:http/outgoing-handler`, hosted by
//! wasmtime-wasi-http, with every request sent by [`HttpHooks`] and none by wasmtime's default
//! sender.
//!
//! What holds a request in:
//! - **Where.** Denied unless the operator allowed it for this plugin ([`HttpAllowlist`]).
//!   A denial is the guest's `HTTP-request-denied`, counted, and said in the log (once a
//!   minute per plugin). A redirect is the guest's to follow: each request it makes is checked
//!   again, so a redirect outside the allowlist is refused like any other request.
//! - **Which addresses.** Names resolve through [`CheckedResolver`]: loopback, link-local,
//!   unspecified and multicast addresses are dropped unless listed as IP literals, so DNS
//!   cannot point an allowed name at the node itself or at a metadata service.
//! - **Time.** The call's deadline bounds the connect, the answer's head and every read of its
//!   body: a wait on a response (a pollable) ends at the deadline, and the call then stops as a
//!   timeout. A call that ends drops its requests (wasmtime aborts their tasks).
//! - **Size.** A body is cut at the plugin's memory cap (`--plugin-memory`): more could not
//!   reach the guest anyway, and the host holds one frame of it at a time.
//! - **How many.** A request in flight (from its send to its body's end or drop) holds a
//!   permit of its call (`--plugin-http-per-call`) and one of its plugin
//!   (`--plugin-http-concurrency`, all calls and instances together), so one call cannot open
//!   thousands of sockets to an origin that never answers. Past either, the request fails at
//!   once with `connection-limit-reached`, counted as outcome `limited`.
//! - **Connections.** One pooled hyper client per plugin, rustls with the platform's roots for
//!   `https://`, no proxy.
//!
//! Each request is recorded in `geecache_plugin_http_request_duration_seconds` (labels
//! plugin, the allowlist entry that allowed it, outcome) and carries the call's `traceparent`.
//! A transport failure or a 5xx answer marks the call's source as failed, so the `unavailable`
//! a getter then reports is answered 502 `source_unavailable`.
//!
//! Files: this one sends (the hooks, the pooled client, the checked resolver, the bounded
//! body); `allowlist.rs` decides where a request may go.

mod allowlist;

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

pub use self::allowlist::{AllowedOrigin, HttpAllowlist};
use self::allowlist::{Destination, is_guarded};
use crate::net::{BoundedConnector, ConnectTimeout, bounded_connector, platform_tls};
use crate::telemetry::Metrics;

/// Longest connect (name resolution, TCP and TLS) to an origin; the call's deadline cuts it
/// shorter.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle keep-alive connections kept per origin.
const POOL_MAX_IDLE_PER_HOST: usize = 32;
/// How long an idle connection to an origin is kept: below most servers' keep-alive timeouts
/// (nginx 75 s; many 60 s), so a pooled connection is rarely one the origin just closed.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A plugin's refused requests are said in the host's log at most this often.
const DENIAL_NOTE_EVERY_SECS: u64 = 60;

type Connector = BoundedConnector<HttpsConnector<HttpConnector<CheckedResolver>>>;

/// What one plugin may reach over HTTP, and the pooled client that reaches it. Shared by every
/// instance (and every call) of the plugin.
pub(crate) struct PluginHttp {
    /// The plugin's name, for logs and metric labels.
    plugin: opentelemetry::StringValue,
    /// Where it may send requests; empty: nowhere.
    allow: Arc<HttpAllowlist>,
    /// Present when something is allowed.
    client: Option<Client<Connector, WasiBody>>,
    /// Most bytes of one response body (the plugin's memory cap).
    body_cap: u64,
    /// Where each request is recorded.
    metrics: Metrics,
    /// Requests refused, and when (Unix seconds) that was last said in the log.
    denied: AtomicU64,
    denied_noted: AtomicU64,
    /// Requests in flight of all the plugin's calls (`--plugin-http-concurrency`).
    in_flight: Arc<Semaphore>,
    /// Most requests in flight of one call (`--plugin-http-per-call`).
    pub(crate) per_call: usize,
    /// Most requests in flight of the plugin (the size of `in_flight`).
    per_plugin: usize,
}

impl std::fmt::Debug for PluginHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHttp")
            .field("plugin", &self.plugin.as_str())
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

impl PluginHttp {
    /// The outbound HTTP of plugin `plugin`, allowed `allow`, its bodies cut at `body_cap`, at
    /// most `limits` requests in flight.
    pub(crate) fn new(
        plugin: &str,
        allow: HttpAllowlist,
        body_cap: usize,
        limits: HttpLimits,
        metrics: Metrics,
    ) -> PluginHttp {
        let allow = Arc::new(allow);
        let client = (!allow.is_empty()).then(|| {
            let mut resolver = CheckedResolver::new(Arc::clone(&allow), limits.lookups);
            resolver.queued = Some((metrics.clone(), plugin_label(plugin)));
            client(resolver)
        });
        PluginHttp {
            plugin: plugin_label(plugin),
            allow,
            client,
            body_cap: u64::try_from(body_cap).unwrap_or(u64::MAX),
            metrics,
            denied: AtomicU64::new(0),
            denied_noted: AtomicU64::new(0),
            in_flight: Arc::new(Semaphore::new(limits.per_plugin.max(1))),
            per_call: limits.per_call.max(1),
            per_plugin: limits.per_plugin.max(1),
        }
    }

    /// Permits for one more request of the call whose permits are `call`, or `None` when the
    /// call or the plugin has as many requests in flight as it may.
    fn permits(&self, call: &Arc<Semaphore>) -> Option<InFlight> {
        let call = Arc::clone(call).try_acquire_owned().ok()?;
        let plugin = Arc::clone(&self.in_flight).try_acquire_owned().ok()?;
        Some(InFlight {
            _call: call,
            _plugin: plugin,
        })
    }

    /// Sends `request` if the allowlist allows it, with its head due by `deadline` (or the
    /// guest's first-byte timeout, if sooner) and its body cut at the cap and the deadline.
    async fn send(
        &self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        deadline: Instant,
        failed: &AtomicBool,
        call_permits: &Arc<Semaphore>,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let to = Destination::of(request.uri());
        let allowed = to.as_ref().and_then(|to| self.allow.allowing(to));
        let (Some(client), Some(origin)) = (&self.client, allowed) else {
            self.denied(request.uri(), to.is_some());
            return Err(HttpError::HttpRequestDenied);
        };
        let label = origin.label();
        let Some(permits) = self.permits(call_permits) else {
            self.metrics
                .record_plugin_http(self.plugin.clone(), label, "limited", Duration::ZERO);
            self.note_denial(&format!(
                "its call or the plugin already has as many requests in flight as allowed \
                 ({} a call, --plugin-http-per-call; {} the plugin, --plugin-http-concurrency)",
                self.per_call, self.per_plugin
            ));
            return Err(HttpError::ConnectionLimitReached);
        };
        let started = Instant::now();
        let head_due = options
            .and_then(|o| o.first_byte_timeout)
            .and_then(|t| started.checked_add(t))
            .map_or(deadline, |t| t.min(deadline));
        let sent = tokio::time::timeout_at(head_due.into(), client.request(request)).await;
        let (outcome, answer) = match sent {
            Err(_) => {
                failed.store(true, Ordering::Relaxed);
                ("timeout", Err(HttpError::HttpResponseTimeout))
            }
            Ok(Err(e)) => match transport_error(&e) {
                HttpError::DestinationIpProhibited => {
                    self.note_denial(&crate::error::chain(&e));
                    ("denied", Err(HttpError::DestinationIpProhibited))
                }
                error => {
                    failed.store(true, Ordering::Relaxed);
                    tracing::debug!(plugin = %self.plugin.as_str(), %origin, error = %crate::error::chain(&e), "a plugin's HTTP request failed");
                    ("error", Err(error))
                }
            },
            Ok(Ok(response)) => {
                let status = response.status();
                if status.is_server_error() {
                    failed.store(true, Ordering::Relaxed);
                }
                let outcome = match status.as_u16() {
                    200..=299 => "2xx",
                    300..=399 => "3xx",
                    400..=499 => "4xx",
                    500..=599 => "5xx",
                    _ => "1xx",
                };
                (outcome, self.bounded(response, deadline, permits))
            }
        };
        self.metrics
            .record_plugin_http(self.plugin.clone(), label, outcome, started.elapsed());
        answer
    }

    /// `response` with its body cut at the cap and the deadline; refused at once when its
    /// `Content-Length` is over the cap.
    fn bounded(
        &self,
        response: http::Response<hyper::body::Incoming>,
        deadline: Instant,
        permits: InFlight,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let announced = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(len) = announced.filter(|len| *len > self.body_cap) {
            return Err(HttpError::HttpResponseBodySize(Some(len)));
        }
        let cap = self.body_cap;
        Ok(response.map(|body| {
            BoundedBody {
                inner: body,
                left: cap,
                cap,
                deadline: Box::pin(tokio::time::sleep_until(deadline.into())),
                _permits: permits,
            }
            .boxed_unsync()
        }))
    }

    /// Counts a request refused by the allowlist, and says so in the log at most once a
    /// minute.
    fn denied(&self, uri: &http::Uri, has_destination: bool) {
        self.metrics.record_plugin_http(
            self.plugin.clone(),
            opentelemetry::StringValue::from("none"),
            "denied",
            Duration::ZERO,
        );
        // The origin only: a path or query may carry a secret of the plugin's.
        let origin = match (uri.scheme_str(), uri.authority()) {
            (Some(scheme), Some(authority)) => format!("{scheme}://{authority}"),
            _ => "(no scheme or host)".to_string(),
        };
        let why = if self.allow.is_empty() {
            "it is granted no outbound HTTP".to_string()
        } else if has_destination {
            let allowed: Vec<String> = self.allow.entries().map(ToString::to_string).collect();
            format!("{origin} is not in its allowlist {allowed:?}")
        } else {
            format!("{origin}: only http:// and https:// URLs with a host can be allowed")
        };
        let why = format!(
            "{why}; allow an origin with --plugin-http NAME=URL (or `http = [...]` in its \
             [[plugins]] table)"
        );
        self.note_denial(&why);
    }

    /// Counts a refused request (`why`), and says so in the log at most once a minute.
    fn note_denial(&self, why: &str) {
        let denied = self.denied.fetch_add(1, Ordering::Relaxed) + 1;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs().max(1));
        let noted = self.denied_noted.load(Ordering::Relaxed);
        if (noted == 0 || now >= noted.saturating_add(DENIAL_NOTE_EVERY_SECS))
            && self
                .denied_noted
                .compare_exchange(noted, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                plugin = %self.plugin.as_str(),
                denied,
                "a plugin's HTTP request was refused: {why}"
            );
        }
    }
}

/// Most requests in flight: of one call, and of one plugin (`--plugin-http-per-call`,
/// `--plugin-http-concurrency`); and most name lookups of one plugin running at once
/// (`--plugin-dns-concurrency`).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Of one call.
    pub per_call: usize,
    /// Of one plugin, all its calls together.
    pub per_plugin: usize,
    /// Lookups of one plugin, each holding a blocking thread (see [`CheckedResolver`]).
    pub lookups: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            per_call: 16,
            per_plugin: 64,
            lookups: 4,
        }
    }
}

/// The permits one request in flight holds until its answer's body ends or is dropped.
struct InFlight {
    /// Of its call.
    _call: OwnedSemaphorePermit,
    /// Of its plugin.
    _plugin: OwnedSemaphorePermit,
}

/// A plugin's name as a metric label.
fn plugin_label(plugin: &str) -> opentelemetry::StringValue {
    opentelemetry::StringValue::from(Arc::<str>::from(plugin))
}

/// The `wasi:http` hooks of one instance's store: they send through the plugin's
/// [`PluginHttp`] with the current call's deadline.
pub(crate) struct HttpHooks {
    pub(crate) shared: Arc<PluginHttp>,
    /// When the current call's time is up; re-armed before every call.
    pub(crate) deadline: Instant,
    /// The current call's requests in flight (`--plugin-http-per-call` permits); new for
    /// every call, so what an earlier call left running counts only against the plugin.
    pub(crate) call_permits: Arc<Semaphore>,
    /// Set when a request of the current call failed in transport or got a 5xx (the store's
    /// [`crate::plugin::host::HostState::source_failed`]).
    pub(crate) source_failed: Arc<AtomicBool>,
}

impl std::fmt::Debug for HttpHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpHooks")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

/// The future [`WasiHttpHooks::send_request`] returns.
type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = Result<(), HttpError>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        // Here, inside the call's span: the spawned task that sends it is not.
        crate::telemetry::inject_current(request.headers_mut());
        let shared = Arc::clone(&self.shared);
        let deadline = self.deadline;
        let failed = Arc::clone(&self.source_failed);
        let call_permits = Arc::clone(&self.call_permits);
        Box::new(async move {
            let response = shared
                .send(request, options, deadline, &failed, &call_permits)
                .await?;
            let done: Box<dyn Future<Output = Result<(), HttpError>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }
}

/// A response body cut at `cap` bytes and at the call's deadline.
struct BoundedBody {
    inner: hyper::body::Incoming,
    left: u64,
    cap: u64,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Its request's permits, given back when the body is dropped.
    _permits: InFlight,
}

impl Body for BoundedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > self.left {
                    let cap = self.cap;
                    self.left = 0;
                    return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(cap)))));
                }
                self.left -= len;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpError::Hyper(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The `wasi:http` error for a request that did not get an answer.
fn transport_error(e: &hyper_util::client::legacy::Error) -> HttpError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = source {
        if cause.is::<AddressRefused>() {
            return HttpError::DestinationIpProhibited;
        }
        if cause.is::<ConnectTimeout>() {
            return HttpError::ConnectionTimeout;
        }
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return match tls {
                rustls::Error::InvalidCertificate(_) => HttpError::TlsCertificateError,
                _ => HttpError::TlsProtocolError,
            };
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return HttpError::ConnectionRefused,
                std::io::ErrorKind::TimedOut => return HttpError::ConnectionTimeout,
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                    return HttpError::ConnectionTerminated;
                }
                _ => {}
            }
        }
        if let Some(lookup) = cause.downcast_ref::<LookupFailed>() {
            return HttpError::DnsError {
                rcode: Some(lookup.0.clone()),
                info_code: None,
            };
        }
        source = cause.source();
    }
    if e.is_connect() {
        HttpError::ConnectionRefused
    } else {
        HttpError::HttpProtocolError
    }
}

/// A name resolved only to addresses that may not be reached (see [`is_guarded`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "{name} resolves only to addresses plugins may not reach ({addrs:?}): list an address as \
     an IP literal to allow it"
)]
struct AddressRefused {
    name: String,
    addrs: Vec<IpAddr>,
}

/// A name that did not resolve.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve: {0}")]
struct LookupFailed(String);

/// A blocking name lookup (the system's `getaddrinfo`), run on a blocking thread.
type Lookup = Arc<dyn Fn(&str) -> std::io::Result<Vec<SocketAddr>> + Send + Sync>;

/// The system resolver, with the addresses a name may not point at taken out: those
/// [`is_guarded`] names, unless the allowlist lists them as IP literals.
///
/// A lookup cannot be cancelled: `getaddrinfo` blocks its thread until the system's resolver
/// gives up (seconds, by `/etc/resolv.conf`), whatever became of the request. So the waiting
/// ends with the connect timeout and the call's deadline, and the threads are capped: at most
/// `--plugin-dns-concurrency` lookups of one plugin hold a thread of the shared blocking pool
/// at once (the permit goes with the thread); the others wait for one, counted as outcome
/// `dns_queued` in `geecache_plugin_http_request_duration_seconds`.
#[derive(Clone)]
pub(crate) struct CheckedResolver {
    allow: Arc<HttpAllowlist>,
    /// Lookups running now, each on a blocking thread.
    running: Arc<Semaphore>,
    /// How a name is looked up.
    lookup: Lookup,
    /// Where a lookup that waited is counted: the metrics and the plugin's name.
    queued: Option<(Metrics, opentelemetry::StringValue)>,
}

impl std::fmt::Debug for CheckedResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedResolver")
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

impl CheckedResolver {
    /// The system's resolver for `allow`, at most `concurrency` lookups at once.
    fn new(allow: Arc<HttpAllowlist>, concurrency: usize) -> CheckedResolver {
        CheckedResolver {
            allow,
            running: Arc::new(Semaphore::new(concurrency.max(1))),
            lookup: Arc::new(|name| {
                std::net::ToSocketAddrs::to_socket_addrs(&(name, 0)).map(Iterator::collect)
            }),
            queued: None,
        }
    }
}

impl tower::Service<Name> for CheckedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow = Arc::clone(&self.allow);
        let (running, lookup) = (Arc::clone(&self.running), Arc::clone(&self.lookup));
        let queued = self.queued.clone();
        let name = name.as_str().to_string();
        Box::pin(async move {
            let permit = match Arc::clone(&running).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    let waited = Instant::now();
                    let permit = running.acquire_owned().await?;
                    if let Some((metrics, plugin)) = queued {
                        let none = opentelemetry::StringValue::from("none");
                        metrics.record_plugin_http(plugin, none, "dns_queued", waited.elapsed());
                    }
                    permit
                }
            };
            let asked = name.clone();
            let found: Vec<SocketAddr> = tokio::task::spawn_blocking(move || {
                let _running = permit;
                lookup(&asked)
            })
            .await?
            .map_err(|e| LookupFailed(format!("{name}: {e}")))?;
            let (ok, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = found
                .into_iter()
                .partition(|a| !is_guarded(a.ip()) || allow.lists_ip(a.ip()));
            if ok.is_empty() {
                return Err(Box::new(AddressRefused {
                    name,
                    addrs: refused.iter().map(SocketAddr::ip).collect(),
                }) as Self::Error);
            }
            Ok(ok.into_iter())
        })
    }
}

/// The pooled client of one plugin: names through [`CheckedResolver`], connects bounded by
/// [`CONNECT_TIMEOUT`], rustls with the platform's roots for `https://`, no proxy.
fn client(resolver: CheckedResolver) -> Client<Connector, WasiBody> {
    let connector = bounded_connector(
        HttpConnector::new_with_resolver(resolver),
        platform_tls("plugins' https:// requests will fail to verify"),
        CONNECT_TIMEOUT,
    );
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// Adds `wasi:http/outgoing-handler` (and its types), every request sent by [`HttpHooks`],
/// to a getter's `linker`.
///
/// # Errors
/// When the interfaces are in the linker already.
pub(crate) fn add_to_linker(
    linker: &mut wasmtime::component::Linker<crate::plugin::host::HostState>,
) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}

impl wasmtime_wasi_http::WasiHttpView for crate::plugin::host::HostState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tower::Service as _;

    #[tokio::test]
    async fn names_that_resolve_to_loopback_are_refused_unless_listed() {
        let allow = Arc::new(HttpAllowlist::parse(["http://localhost:8080"]).unwrap());
        let to = Destination::of(&"http://localhost:8080/k".parse().unwrap()).unwrap();
        assert!(allow.allowing(&to).is_some());
        let mut resolver = CheckedResolver::new(allow, 4);
        let name: Name = "localhost".parse().unwrap();
        let e = resolver.call(name.clone()).await.unwrap_err();
        assert!(e.is::<AddressRefused>(), "{e}");

        let allow = Arc::new(
            HttpAllowlist::parse(["http://localhost:8080", "http://127.0.0.1:8080"]).unwrap(),
        );
        let mut resolver = CheckedResolver::new(allow, 4);
        let addrs: Vec<SocketAddr> = resolver.call(name).await.unwrap().collect();
        assert!(addrs.iter().any(|a| a.ip() == IpAddr::from([127, 0, 0, 1])));
        assert!(
            addrs
                .iter()
                .all(|a| a.ip() != "::1".parse::<IpAddr>().unwrap())
        );
    }

    /// A lookup that hangs (a resolver that never answers) holds its blocking thread until the
    /// system gives up: at most `--plugin-dns-concurrency` of them run at once, the others
    /// wait, and a waiting caller that gives up (its deadline) leaves nothing running. No name
    /// is resolved: the lookup is a stand-in that sleeps.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lookups_run_at_most_the_cap_at_once_each_on_its_own_thread() {
        use std::sync::atomic::AtomicUsize;
        let allow = Arc::new(HttpAllowlist::parse(["http://origin.test:80"]).unwrap());
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut resolver = CheckedResolver::new(allow, 2);
        let (n, m) = (Arc::clone(&now), Arc::clone(&most));
        resolver.lookup = Arc::new(move |_| {
            let running = n.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(running, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(300));
            n.fetch_sub(1, Ordering::SeqCst);
            Ok(vec![SocketAddr::from(([192, 0, 2, 1], 0))])
        });
        let name: Name = "origin.test".parse().unwrap();
        // Callers that give up after 50 ms: two lookups start, the rest never do.
        for _ in 0..6 {
            let call = resolver.call(name.clone());
            assert!(
                tokio::time::timeout(Duration::from_millis(50), call)
                    .await
                    .is_err()
            );
        }
        let calls: Vec<_> = (0..6).map(|_| resolver.call(name.clone())).collect();
        for answer in futures::future::join_all(calls).await {
            assert_eq!(
                answer.unwrap().next(),
                Some(SocketAddr::from(([192, 0, 2, 1], 0)))
            );
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
        assert_eq!(now.load(Ordering::SeqCst), 0);
    }
}
