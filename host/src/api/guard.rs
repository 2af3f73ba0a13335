//! What many requests together may hold: connections and request bodies.
//!
//! One request is bounded by the body limit, the key and value limits and the batch budget; this
//! module bounds them in aggregate, so a flood of connections or of slow uploads cannot take the
//! node past its memory budget:
//!
//! - [`LimitedListener`]: at most `--max-connections` connections at once. A connection past the
//!   limit is accepted and closed at once (the client sees a reset, not a hang), and the refusal
//!   is logged at most once a second.
//! - [`RequestGuard::apply`]: every request that may carry a body reserves its size (the declared
//!   `Content-Length`, or the body limit when none is declared) from one byte budget,
//!   `--max-inflight-body-bytes`, before a byte of it is read, and keeps the reservation until
//!   its answer has been sent (or dropped): an answer a client does not read still counts. A
//!   batch request (API or peer) also reserves what its answer may hold while it is built and
//!   sent: twice `--max-batch-bytes` (the items, then the encoded answer). Every peer `POST` is
//!   taken for a batch, whatever its last segment's spelling. When the budget is spent the request is refused at once with 503
//!   `busy` and `Retry-After: 1`; requests without a body (every GET) reserve nothing and are
//!   never refused by it. A body must arrive within `--body-timeout`, so a slow upload cannot
//!   keep its reservation (or its connection's task) for ever.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Aggregate limits of one node's HTTP server; see the module docs.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Connections open at once (`--max-connections`).
    pub max_connections: usize,
    /// Bytes of request bodies being received or held at once (`--max-inflight-body-bytes`).
    pub max_inflight_body_bytes: usize,
    /// Longest time one request body may take to arrive (`--body-timeout`).
    pub body_timeout: Duration,
    /// Largest body of one request (`--max-body-bytes`): what a body of unknown length reserves.
    pub max_body_bytes: usize,
    /// Byte budget of one batch answer (`--max-batch-bytes`): a batch request reserves twice it.
    pub max_batch_bytes: usize,
    /// Largest component a plugin upload may carry (`--max-plugin-bytes`): the body limit of
    /// the plugin routes instead of `max_body_bytes`.
    pub max_plugin_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 4096,
            max_inflight_body_bytes: 256 << 20,
            body_timeout: Duration::from_secs(30),
            max_body_bytes: 16 << 20,
            max_batch_bytes: crate::batch::DEFAULT_MAX_BATCH_BYTES,
            max_plugin_bytes: 64 << 20,
        }
    }
}

/// The request-body budget shared by every request of a node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RequestGuard {
    /// One permit per byte of body that may be in flight.
    bytes: Arc<Semaphore>,
    /// The limits it enforces.
    limits: ServerLimits,
}

/// Most bytes one reservation may take: tokio's semaphore counts a batch of permits in a `u32`.
const MAX_RESERVATION: usize = u32::MAX as usize;

impl RequestGuard {
    /// A guard enforcing `limits`.
    pub fn new(limits: ServerLimits) -> RequestGuard {
        let total = limits
            .max_inflight_body_bytes
            .clamp(1, Semaphore::MAX_PERMITS);
        RequestGuard {
            bytes: Arc::new(Semaphore::new(total)),
            limits,
        }
    }

    /// The limits it enforces.
    pub fn limits(&self) -> &ServerLimits {
        &self.limits
    }

    /// Body bytes reserved right now by requests in flight.
    pub fn reserved_body_bytes(&self) -> usize {
        let total = self
            .limits
            .max_inflight_body_bytes
            .clamp(1, Semaphore::MAX_PERMITS);
        total.saturating_sub(self.bytes.available_permits())
    }

    /// `router` with every request going through this guard (outermost, so it sees the peer
    /// routes too).
    pub fn apply(&self, router: axum::Router) -> axum::Router {
        router.layer(GuardLayer(self.clone()))
    }

    /// What a request must reserve before its body is read: 0 for a request that declares no
    /// body, else its declared length (or the body limit when it declares none). `Err` when it
    /// declares more than the body limit (which is the error's value).
    fn reservation(&self, req: &Request) -> Result<usize, usize> {
        let headers = req.headers();
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let chunked = headers.contains_key(header::TRANSFER_ENCODING);
        let bodiless = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        let path = req.uri().path();
        let max = if is_plugin_upload(req.method(), path) {
            self.limits.max_plugin_bytes
        } else {
            self.limits.max_body_bytes
        };
        // HTTP/1.1: a request with neither Content-Length nor Transfer-Encoding has no body.
        let body = match declared {
            Some(n) if n > max as u64 => return Err(max),
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None if chunked && !bodiless => max,
            None => 0,
        };
        // Any peer POST, since `_bat%63h` decodes to `_batch` only after this point.
        let batch = *req.method() == Method::POST
            && (path.ends_with("/batch") || path.starts_with("/_geecache/"));
        let answer = if batch {
            self.limits.max_batch_bytes.saturating_mul(2)
        } else {
            0
        };
        Ok(body.saturating_add(answer).min(MAX_RESERVATION))
    }
}

/// Whether a request may carry a plugin component (the reload route and the cluster
/// rollout's peer route), whose body limit is `--max-plugin-bytes`.
pub(crate) fn is_plugin_upload(method: &Method, path: &str) -> bool {
    *method == Method::POST
        && (path.starts_with("/api/v1/plugins/") || path.starts_with(super::plugins::PEER_PREFIX))
}

/// The layer of [`RequestGuard::apply`]. A hand-written tower layer rather than an
/// `axum::middleware::from_fn`, which boxes its future and the rest of the stack on every
/// request: this one runs on every request, and for a GET it only reads two headers.
#[derive(Debug, Clone)]
struct GuardLayer(RequestGuard);

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            guard: self.0.clone(),
        }
    }
}

/// A service behind the guard: reserve, bound the body's arrival, answer, release.
#[derive(Debug, Clone)]
struct Guarded<S> {
    /// The route (or fallback) guarded.
    inner: S,
    /// The budget.
    guard: RequestGuard,
}

impl<S> tower::Service<Request> for Guarded<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GuardedAnswer<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let refused = |response: Response| GuardedAnswer {
            answer: None,
            refused: Some(response),
            permit: None,
        };
        let guard = &self.guard;
        let wanted = match guard.reservation(&req) {
            Ok(wanted) => wanted,
            // Refused before a byte is read, as the body limit would once it was exceeded.
            Err(limit) => {
                return refused(
                    super::ApiError(crate::error::Error::BodyTooLarge { limit }).into_response(),
                );
            }
        };
        if wanted == 0 {
            return GuardedAnswer {
                answer: Some(self.inner.call(req)),
                refused: None,
                permit: None,
            };
        }
        let Ok(permit) = guard
            .bytes
            .clone()
            .try_acquire_many_owned(u32::try_from(wanted).unwrap_or(u32::MAX))
        else {
            return refused(busy());
        };
        let req = with_deadline(req, guard.limits.body_timeout);
        GuardedAnswer {
            answer: Some(self.inner.call(req)),
            refused: None,
            permit: Some(permit),
        }
    }
}

/// A guarded request's answer: the route's, or the guard's refusal.
struct GuardedAnswer<F> {
    /// The route's answer, unless the guard refused the request.
    answer: Option<F>,
    /// The guard's refusal (413 or 503), answered at once.
    refused: Option<Response>,
    /// The request's reservation, handed to the answer's body.
    permit: Option<OwnedSemaphorePermit>,
}

impl<F> Future for GuardedAnswer<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(answer) = this.answer.as_mut() else {
            return Poll::Ready(Ok(this.refused.take().unwrap_or_else(busy)));
        };
        let Ok(response) = ready!(Pin::new(answer).poll(cx));
        Poll::Ready(Ok(match this.permit.take() {
            // The answer keeps the reservation until it has been sent or dropped.
            Some(permit) => response.map(|body| {
                Body::new(Held {
                    body,
                    _permit: permit,
                })
            }),
            None => response,
        }))
    }
}

/// A response body that holds its request's reservation until it is sent or dropped.
struct Held {
    /// The answer.
    body: Body,
    /// The reservation, released when this body is dropped.
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// 503 `busy`: the body budget is spent right now.
fn busy() -> Response {
    let mut response = super::error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        "the node is receiving as many request bodies as it may hold at once \
         (--max-inflight-body-bytes); retry shortly"
            .into(),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response.into_response()
}

/// Why a request body stopped arriving.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?} (--body-timeout)")]
struct BodyTimeout(Duration);

/// `req` with a body that fails once `timeout` has passed since now.
fn with_deadline(req: Request, timeout: Duration) -> Request {
    let deadline = tokio::time::Instant::now() + timeout;
    let (parts, body) = req.into_parts();
    let frames = body.into_data_stream();
    let timed = futures::stream::unfold(Some(frames), move |frames| async move {
        let mut frames = frames?;
        match tokio::time::timeout_at(deadline, frames.next()).await {
            Ok(Some(frame)) => Some((frame, Some(frames))),
            Ok(None) => None,
            Err(_) => Some((Err(axum::Error::new(BodyTimeout(timeout))), None)),
        }
    });
    Request::from_parts(parts, Body::from_stream(timed))
}

/// A TCP listener that holds at most `max` connections open at once; see the module docs.
#[derive(Debug)]
pub struct LimitedListener {
    /// The socket connections arrive on.
    inner: TcpListener,
    /// One permit per open connection.
    slots: Arc<Semaphore>,
    /// When a refusal was last logged (seconds since the Unix epoch), to log one a second.
    last_warned: AtomicU64,
}

impl LimitedListener {
    /// Wraps `inner`, holding at most `max` connections open at once.
    pub fn new(inner: TcpListener, max: usize) -> LimitedListener {
        LimitedListener {
            inner,
            slots: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
            last_warned: AtomicU64::new(0),
        }
    }

    fn warn_refused(&self, addr: SocketAddr) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.last_warned.swap(now, Ordering::Relaxed) != now {
            tracing::warn!(%addr, "refused a connection: --max-connections are open");
        }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    // Answers are small and latency-bound: do not wait to coalesce them.
                    let _ = stream.set_nodelay(true);
                    return (
                        LimitedStream {
                            stream,
                            _slot: slot,
                        },
                        addr,
                    );
                }
                Err(_) => {
                    self.warn_refused(addr);
                    drop(stream);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted connection that gives its slot back when it closes.
#[derive(Debug)]
pub struct LimitedStream {
    /// The connection.
    stream: TcpStream,
    /// Its slot among `--max-connections`, released on drop.
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::{get, put};
    use bytes::Bytes;
    use tower::ServiceExt as _;

    fn app(limits: ServerLimits) -> (Router, RequestGuard) {
        let guard = RequestGuard::new(limits);
        let router = Router::new().route("/get", get(|| async { "ok" })).route(
            "/put",
            put(
                |body: Result<Bytes, axum::extract::rejection::BytesRejection>| async move {
                    match body {
                        Ok(b) => (StatusCode::OK, b.len().to_string()),
                        Err(e) => (e.status(), e.body_text()),
                    }
                },
            ),
        );
        let router = guard.apply(router);
        (router, guard)
    }

    fn limits() -> ServerLimits {
        ServerLimits {
            max_connections: 8,
            max_inflight_body_bytes: 1000,
            body_timeout: Duration::from_secs(2),
            max_body_bytes: 600,
            max_batch_bytes: 100,
            max_plugin_bytes: 700,
        }
    }

    /// A PUT of `body`, declared with `length`, or sent chunked when `None`.
    fn put_request(body: Body, length: Option<usize>) -> Request {
        let req = Request::put("/put");
        let req = match length {
            Some(n) => req.header(header::CONTENT_LENGTH, n),
            None => req.header(header::TRANSFER_ENCODING, "chunked"),
        };
        req.body(body).unwrap()
    }

    #[tokio::test]
    async fn bodies_reserve_their_size_and_release_it_when_answered() {
        let (app, guard) = app(limits());
        let body = Body::from(vec![7u8; 500]);
        let response = app.oneshot(put_request(body, Some(500))).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        // Until the answer is sent, its request's bytes stay reserved.
        assert_eq!(guard.reserved_body_bytes(), 500);
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "3");
        drop(response);
        assert_eq!(guard.reserved_body_bytes(), 0);
    }

    #[tokio::test]
    async fn a_spent_budget_refuses_bodies_but_never_gets() {
        let (app, guard) = app(limits());
        // Two slow uploads that never finish hold 600 + 400 bytes of the 1000-byte budget.
        let (_tx1, rx1) = futures::channel::mpsc::channel::<Result<Bytes, io::Error>>(1);
        let (_tx2, rx2) = futures::channel::mpsc::channel::<Result<Bytes, io::Error>>(1);
        let slow1 = tokio::spawn(
            app.clone()
                .oneshot(put_request(Body::from_stream(rx1), None)),
        );
        let slow2 = tokio::spawn(
            app.clone()
                .oneshot(put_request(Body::from_stream(rx2), Some(400))),
        );
        while guard.reserved_body_bytes() < 1000 {
            tokio::task::yield_now().await;
        }
        let refused = app
            .clone()
            .oneshot(put_request(Body::from("x"), Some(1)))
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
        let get = app
            .clone()
            .oneshot(Request::get("/get").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(get.status(), StatusCode::OK);
        // The slow bodies time out, their handlers answer, and the budget is whole again.
        for slow in [slow1, slow2] {
            let response = slow.await.unwrap().unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST);
            drop(response);
        }
        assert_eq!(guard.reserved_body_bytes(), 0);
    }

    #[tokio::test]
    async fn the_listener_closes_connections_past_its_limit() {
        use tokio::io::AsyncReadExt as _;
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut listener = LimitedListener::new(socket, 1);
        let _first = TcpStream::connect(addr).await.unwrap();
        let (held, _) = axum::serve::Listener::accept(&mut listener).await;
        let mut second = TcpStream::connect(addr).await.unwrap();
        // Accepting goes on in the background: the second connection is closed at once.
        let accept = tokio::spawn(async move {
            let (io, _) = axum::serve::Listener::accept(&mut listener).await;
            io
        });
        let mut buf = [0u8; 1];
        let n = second.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "the connection past the limit was closed");
        // Once the first closes, its slot takes the next connection.
        drop(held);
        let _fourth = TcpStream::connect(addr).await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(10), accept).await;
        assert!(next.is_ok(), "a freed slot is used again");
    }

    #[tokio::test]
    async fn a_batch_reserves_its_answer_too() {
        let guard = RequestGuard::new(limits());
        let batch = Request::post("/api/v1/groups/g/batch")
            .header(header::CONTENT_LENGTH, 10)
            .body(Body::empty())
            .unwrap();
        assert_eq!(guard.reservation(&batch), Ok(10 + 200));
        let peer = Request::post("/_geecache/g/_bat%63h")
            .header(header::TRANSFER_ENCODING, "chunked")
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            guard.reservation(&peer),
            Ok(600 + 200),
            "any peer POST is a batch"
        );
        let delete = Request::delete("/api/v1/groups/g/keys/k")
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            guard.reservation(&delete),
            Ok(0),
            "no length and not chunked: no body"
        );
        let get = Request::get("/api?key=batch").body(Body::empty()).unwrap();
        assert_eq!(guard.reservation(&get), Ok(0));
        let huge = put_request(Body::empty(), Some(601));
        assert_eq!(guard.reservation(&huge), Err(600));
    }
}
