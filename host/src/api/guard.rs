//! What many requests together may hold: request bodies and answers.
//!
//! One request is bounded by the body limit, the key and value limits and the batch budget; this
//! module bounds them in aggregate, so a flood of slow uploads or of unread answers cannot take
//! the node past its memory budget (connections themselves are bounded in `conn.rs`):
//!
//! - [`RequestGuard::apply`]: every request that may carry a body reserves its size (the declared
//!   `Content-Length`, or the body limit when none is declared) from one byte budget,
//!   `--max-inflight-body-bytes`, before a byte of it is read, and keeps the reservation until
//!   its answer has been sent (or dropped): an answer a client does not read still counts. A
//!   batch request (API or peer) also reserves what its answer may hold while it is built and
//!   sent: twice `--max-batch-bytes` (the items, then the encoded answer). Every peer `POST` is
//!   taken for a batch, whatever its last segment's spelling. When the budget is spent the
//!   request is refused at once with 503 `busy` and `Retry-After: 1`. A body must arrive within
//!   `--body-timeout`, so a slow upload cannot keep its reservation (or its connection's task)
//!   for ever.
//! - [`RequestGuard::charge_answer`]: an answer of a request that reserved nothing (every GET,
//!   through the router or the shortcut) reserves its own size from the same budget once it is
//!   known, when it is [`CHARGE_FROM`] bytes or more; when the budget is spent, the client gets
//!   503 `busy` instead. Smaller answers are bounded by the connection count instead.
//! - "Until sent" means until the last byte is written to the socket: a charged body is handed
//!   to hyper in chunks of [`CHUNK`] (slices of the value, not copies), so hyper's buffer holds
//!   at most about its own size per connection, and its reservation goes back to the
//!   connection when hyper has taken the last chunk, which releases it at the next completed
//!   flush (`conn.rs`). A client that never reads holds its reservation until `--write-timeout`
//!   closes the connection.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::conn::{ClientRate, ConnCounters, ConnHandle};

pub use crate::config::ServerLimits;

/// The in-flight budget shared by every request of a node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RequestGuard {
    /// One permit per byte of body or answer that may be in flight.
    bytes: Arc<Semaphore>,
    /// The limits it enforces.
    limits: ServerLimits,
    /// The node's connection counters (answers refused are counted there too).
    counters: Arc<ConnCounters>,
    /// Each client's token bucket, when `--rate-limit` is set.
    rate: Option<Arc<ClientRate>>,
    /// Whether peer requests are signed (a cluster secret): then the peer routes are not
    /// counted against `--rate-limit`; without one, anyone can send them, so they are.
    peers_signed: bool,
}

/// Answers of at least this many bytes reserve their size until sent.
pub const CHARGE_FROM: usize = 16 << 10;

/// A charged answer goes to hyper in slices of at most this many bytes.
pub const CHUNK: usize = 64 << 10;

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
            rate: ClientRate::new(&limits.per_client).map(Arc::new),
            limits,
            counters: Arc::default(),
            peers_signed: false,
        }
    }

    /// This guard, with the peer routes left out of `--rate-limit` when `signed` (the node
    /// checks the cluster secret's signature on them: its peers, not clients, send them).
    #[must_use]
    pub fn peers_signed(mut self, signed: bool) -> RequestGuard {
        self.peers_signed = signed;
        self
    }

    /// `None` when the request for `path` on `conn` may go on; the 429 answer when its client
    /// is past `--rate-limit`. The probes are not counted, nor the peer routes when they are
    /// signed (see `conn.rs`).
    pub fn rate_check(&self, conn: &ConnHandle, path: &str) -> Option<Response> {
        let rate = self.rate.as_ref()?;
        let client = conn.client()?;
        if matches!(path, "/healthz" | "/readyz")
            || (self.peers_signed && path.starts_with(crate::peer::PATH_PREFIX))
        {
            return None;
        }
        let wait = rate.check(client).err()?;
        self.counters.rate_limited();
        Some(rate.limited(wait))
    }

    /// This guard, counting what it refuses in `counters` (the node's, from
    /// [`super::AppState::connections`]).
    #[must_use]
    pub fn counting_in(mut self, counters: Arc<ConnCounters>) -> RequestGuard {
        self.counters = counters;
        self
    }

    /// The counters of the node's connections, which its listener fills.
    pub fn counters(&self) -> &Arc<ConnCounters> {
        &self.counters
    }

    /// `response`, charged against the budget until sent when its body is [`CHARGE_FROM`] bytes
    /// or more (see the module docs); 503 `busy` when the budget cannot hold it. `conn` is the
    /// connection it goes out on, which releases the charge once the last byte is written.
    pub fn charge_answer(&self, response: Response, conn: Option<&ConnHandle>) -> Response {
        let hint = http_body::Body::size_hint(response.body());
        let size = usize::try_from(hint.exact().unwrap_or(hint.lower())).unwrap_or(usize::MAX);
        if size < CHARGE_FROM {
            return response;
        }
        let wanted = u32::try_from(size.min(MAX_RESERVATION)).unwrap_or(u32::MAX);
        match self.bytes.clone().try_acquire_many_owned(wanted) {
            Ok(permit) => hold(response, permit, conn),
            Err(_) => {
                self.counters.answer_refused();
                busy()
            }
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

/// A request's body reservation, shared by the guard's answer and the request's handler (as a
/// request extension): a handler whose work outlives its request (a write that runs detached
/// from its client) takes it, and holds it until that work is done; otherwise the answer holds
/// it until sent. So a client that goes away cannot release the bytes its write still holds.
#[derive(Debug, Clone)]
pub(crate) struct HeldBody(Arc<parking_lot::Mutex<Option<OwnedSemaphorePermit>>>);

impl HeldBody {
    /// The reservation, if the answer has not taken it (or another taker).
    pub(crate) fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.lock().take()
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
            charge: None,
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
        let conn = req.extensions().get::<ConnHandle>().cloned();
        if wanted == 0 {
            return GuardedAnswer {
                answer: Some(self.inner.call(req)),
                refused: None,
                permit: None,
                charge: Some((guard.clone(), conn)),
            };
        }
        let Ok(permit) = guard
            .bytes
            .clone()
            .try_acquire_many_owned(u32::try_from(wanted).unwrap_or(u32::MAX))
        else {
            return refused(busy());
        };
        let mut req = with_deadline(req, guard.limits.body_timeout);
        let held = HeldBody(Arc::new(parking_lot::Mutex::new(Some(permit))));
        req.extensions_mut().insert(held.clone());
        GuardedAnswer {
            answer: Some(self.inner.call(req)),
            refused: None,
            permit: Some((held, conn)),
            charge: None,
        }
    }
}

/// A guarded request's answer: the route's, or the guard's refusal.
struct GuardedAnswer<F> {
    /// The route's answer, unless the guard refused the request.
    answer: Option<F>,
    /// The guard's refusal (413 or 503), answered at once.
    refused: Option<Response>,
    /// The request's reservation, handed to the answer's body (unless the handler took it),
    /// and its connection.
    permit: Option<(HeldBody, Option<ConnHandle>)>,
    /// For a request that reserved nothing: the guard that charges its answer.
    charge: Option<(RequestGuard, Option<ConnHandle>)>,
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
        Poll::Ready(Ok(match (this.permit.take(), this.charge.take()) {
            // The answer keeps the reservation until it has been sent or dropped.
            (Some((held, conn)), _) => match held.take() {
                Some(permit) => hold(response, permit, conn.as_ref()),
                None => response,
            },
            (None, Some((guard, conn))) => guard.charge_answer(response, conn.as_ref()),
            (None, None) => response,
        }))
    }
}

/// `response` with a body that holds `permit` until sent (see the module docs).
fn hold(response: Response, permit: OwnedSemaphorePermit, conn: Option<&ConnHandle>) -> Response {
    let conn = conn.cloned();
    response.map(|body| {
        Body::new(Held {
            body,
            rest: bytes::Bytes::new(),
            permit: Some(permit),
            conn,
        })
    })
}

/// A response body that holds its reservation until it is sent or dropped, handed out in
/// chunks of at most [`CHUNK`] bytes.
struct Held {
    /// The answer.
    body: Body,
    /// What is left of the data frame being handed out.
    rest: bytes::Bytes,
    /// The reservation: given to the connection (or released) when this body is dropped.
    permit: Option<OwnedSemaphorePermit>,
    /// The connection the answer goes out on, which releases the reservation once written.
    conn: Option<ConnHandle>,
}

impl Held {
    fn chunk(&mut self) -> http_body::Frame<bytes::Bytes> {
        let n = self.rest.len().min(CHUNK);
        http_body::Frame::data(self.rest.split_to(n))
    }
}

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if !this.rest.is_empty() {
            return Poll::Ready(Some(Ok(this.chunk())));
        }
        match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.len() > CHUNK => {
                    this.rest = data;
                    Poll::Ready(Some(Ok(this.chunk())))
                }
                Ok(data) => Poll::Ready(Some(Ok(http_body::Frame::data(data)))),
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => Poll::Ready(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let inner = self.body.size_hint();
        let rest = self.rest.len() as u64;
        match inner.exact() {
            Some(n) => http_body::SizeHint::with_exact(n + rest),
            None => {
                let mut hint = http_body::SizeHint::new();
                hint.set_lower(inner.lower() + rest);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + rest);
                }
                hint
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Taken whole by hyper: the connection releases it once written. Dropped unsent (the
        // connection closed, or no connection): released now.
        if let (Some(permit), Some(conn)) = (self.permit.take(), &self.conn)
            && self.rest.is_empty()
        {
            conn.park(permit);
        }
    }
}

/// 503 `busy`: the body budget is spent right now.
fn busy() -> Response {
    let mut response = super::error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        "the node is receiving, holding or sending as many request bodies and answers as it \
         may at once (--max-inflight-body-bytes); retry shortly"
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{ConnTimeouts, PerClient};
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
            timeouts: ConnTimeouts::default(),
            max_inflight_body_bytes: 1000,
            body_timeout: Duration::from_secs(2),
            max_body_bytes: 600,
            max_batch_bytes: 100,
            max_plugin_bytes: 700,
            per_client: PerClient::default(),
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
        let (_tx1, rx1) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let (_tx2, rx2) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
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
