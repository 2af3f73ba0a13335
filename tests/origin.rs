//! A real HTTP origin on 127.0.0.1 for the getters that reach HTTP services (`http_getter`):
//! an axum server with one route per behaviour the tests need, and counters of what it saw.
//!
//! Routes (`{key}` is the last path segment):
//! - `/items/{key}`: `Tom` → 200 `630` with `Cache-Control: max-age=60`, `Jack` → 200 `589`;
//!   any other key → 404. Counted in [`Origin::item_requests`]; their `traceparent` headers
//!   kept ([`Origin::traceparents`]).
//! - `/slow/{key}`: answers 200 after 5 s; [`Origin::slow_started`] and
//!   [`Origin::slow_dropped`] count handlers begun and dropped before answering.
//! - `/boom/{key}`: 500.
//! - `POST /echo-len/{key}`: 200 with the length of the request body, in decimal.
//! - `/flaky/{key}`: 200 `630` with `Cache-Control: max-age=1` for any key, or 500 while the
//!   origin is set down ([`Origin::set_down`]); counted in [`Origin::flaky_requests`].
//! - `/flaky-swr/{key}`: the same, with `stale-while-revalidate=2, stale-if-error=30` too.
//! - `/huge/{key}`: 200 with 1 GiB of body, sent in 64 KiB chunks without a length
//!   (`/huge-announced/{key}` says `Content-Length: 1073741824` first); [`Origin::huge_bytes`]
//!   counts the bytes the server produced.
//! - `/to-localhost/{key}`: 302 to `http://localhost:{port}/items/{key}`.
//! - `/to-items/{key}`: 302 to `/items/{key}` on the same origin.
//! - `/any/{key}`: 200 with [`ANY_BODY`] for every key (the perf tool's all-miss source);
//!   `/any-slow/{key}` the same after 50 ms, `/delay/{micros}/{key}` after that many
//!   microseconds. All counted in [`Origin::any_requests`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The body of every `/any` answer: 100 bytes.
pub const ANY_BODY: &str = "vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv";

/// Bytes of a `/huge` body.
pub const HUGE_BYTES: u64 = 1 << 30;

#[derive(Default)]
struct Counters {
    items: AtomicU64,
    slow_started: AtomicU64,
    slow_dropped: AtomicU64,
    huge_bytes: AtomicU64,
    any: AtomicU64,
    port: AtomicU64,
    flaky: AtomicU64,
    down: std::sync::atomic::AtomicBool,
    traceparents: std::sync::Mutex<Vec<String>>,
}

/// The origin server; stopped when dropped.
pub struct Origin {
    /// Its port on 127.0.0.1.
    pub port: u16,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts a slow handler dropped before it answered (its client went away).
struct DropGuard(Arc<Counters>, bool);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.slow_dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn items(
    State(c): State<Arc<Counters>>,
    Path(key): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    c.items.fetch_add(1, Ordering::SeqCst);
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        c.traceparents.lock().unwrap().push(tp.to_owned());
    }
    match key.as_str() {
        "Tom" => ([(header::CACHE_CONTROL, "max-age=60")], "630").into_response(),
        "Jack" => "589".into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn echo_len(body: bytes::Bytes) -> String {
    body.len().to_string()
}

async fn flaky(State(c): State<Arc<Counters>>) -> Response {
    c.flaky.fetch_add(1, Ordering::SeqCst);
    if c.down.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CACHE_CONTROL, "max-age=1")], "630").into_response()
}

/// `/flaky` with its own stale window: `max-age=1, stale-while-revalidate=2,
/// stale-if-error=30`.
async fn flaky_swr(State(c): State<Arc<Counters>>) -> Response {
    c.flaky.fetch_add(1, Ordering::SeqCst);
    if c.down.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CACHE_CONTROL,
            "max-age=1, stale-while-revalidate=2, stale-if-error=30",
        )],
        "630",
    )
        .into_response()
}

async fn slow(State(c): State<Arc<Counters>>) -> &'static str {
    c.slow_started.fetch_add(1, Ordering::SeqCst);
    let mut guard = DropGuard(c, false);
    tokio::time::sleep(Duration::from_secs(5)).await;
    guard.1 = true;
    "late"
}

fn huge_body(c: Arc<Counters>) -> Body {
    const CHUNK: usize = 64 << 10;
    let chunks = HUGE_BYTES / CHUNK as u64;
    let stream = futures::stream::iter(0..chunks).map(move |_| {
        c.huge_bytes.fetch_add(CHUNK as u64, Ordering::SeqCst);
        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; CHUNK]))
    });
    Body::from_stream(stream)
}

async fn huge(State(c): State<Arc<Counters>>) -> Response {
    Response::new(huge_body(c))
}

async fn huge_announced(State(c): State<Arc<Counters>>) -> Response {
    let mut response = Response::new(huge_body(c));
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(HUGE_BYTES));
    response
}

async fn to_localhost(State(c): State<Arc<Counters>>, Path(key): Path<String>) -> Response {
    let port = c.port.load(Ordering::SeqCst);
    (
        StatusCode::FOUND,
        [(
            header::LOCATION,
            format!("http://localhost:{port}/items/{key}"),
        )],
    )
        .into_response()
}

async fn to_items(Path(key): Path<String>) -> Response {
    (
        StatusCode::FOUND,
        [(header::LOCATION, format!("/items/{key}"))],
    )
        .into_response()
}

async fn any(State(c): State<Arc<Counters>>) -> &'static str {
    c.any.fetch_add(1, Ordering::Relaxed);
    ANY_BODY
}

async fn any_slow(State(c): State<Arc<Counters>>) -> &'static str {
    c.any.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(50)).await;
    ANY_BODY
}

async fn delayed(
    State(c): State<Arc<Counters>>,
    Path((micros, _key)): Path<(u64, String)>,
) -> &'static str {
    c.any.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_micros(micros)).await;
    ANY_BODY
}

use futures::StreamExt as _;

impl Origin {
    /// Starts the origin on a free 127.0.0.1 port.
    pub async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let counters = Arc::new(Counters::default());
        counters.port.store(u64::from(port), Ordering::SeqCst);
        let app = Router::new()
            .route("/items/{key}", get(items))
            .route("/slow/{key}", get(slow))
            .route("/flaky/{key}", get(flaky))
            .route("/flaky-swr/{key}", get(flaky_swr))
            .route("/echo-len/{key}", axum::routing::post(echo_len))
            .route(
                "/boom/{key}",
                get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
            )
            .route("/huge/{key}", get(huge))
            .route("/huge-announced/{key}", get(huge_announced))
            .route("/to-localhost/{key}", get(to_localhost))
            .route("/to-items/{key}", get(to_items))
            .route("/any/{key}", get(any))
            .route("/any-slow/{key}", get(any_slow))
            .route("/delay/{micros}/{key}", get(delayed))
            .with_state(Arc::clone(&counters));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Origin {
            port,
            counters,
            task,
        }
    }

    /// `http://127.0.0.1:{port}`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests `/items/...` got.
    pub fn item_requests(&self) -> u64 {
        self.counters.items.load(Ordering::SeqCst)
    }

    /// Requests `/flaky/...` got.
    pub fn flaky_requests(&self) -> u64 {
        self.counters.flaky.load(Ordering::SeqCst)
    }

    /// Makes `/flaky` answer 500 (`true`) or 200 again (`false`).
    pub fn set_down(&self, down: bool) {
        self.counters.down.store(down, Ordering::SeqCst);
    }

    /// The `traceparent` headers `/items` requests carried, in order.
    pub fn traceparents(&self) -> Vec<String> {
        self.counters.traceparents.lock().unwrap().clone()
    }

    /// Requests `/any/...` and `/any-slow/...` got.
    pub fn any_requests(&self) -> u64 {
        self.counters.any.load(Ordering::Relaxed)
    }

    /// [`Origin::any_requests`] as a function that outlives this borrow (for a task watching it).
    pub fn clone_counter(&self) -> impl Fn() -> u64 + Send + 'static {
        let counters = self.counters.clone();
        move || counters.any.load(Ordering::Relaxed)
    }

    /// Its address.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `/slow` handlers begun.
    pub fn slow_started(&self) -> u64 {
        self.counters.slow_started.load(Ordering::SeqCst)
    }

    /// `/slow` handlers dropped before they answered (their client closed the connection).
    pub fn slow_dropped(&self) -> u64 {
        self.counters.slow_dropped.load(Ordering::SeqCst)
    }

    /// Bytes of `/huge` bodies produced so far.
    pub fn huge_bytes(&self) -> u64 {
        self.counters.huge_bytes.load(Ordering::SeqCst)
    }
}
