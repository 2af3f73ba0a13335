//! Connections: how many may be open, and how long each may stay silent, stall or idle.
//!
//! - **Slots.** At most `--max-connections` ordinary connections at once. Past it, up to
//!   [`PROBE_RESERVE`] more are accepted into a reserve whose connections are answered only on
//!   `/healthz` and `/readyz` (anything else: 503 `too_many_connections` with `Retry-After: 1`),
//!   each answer closing its connection: a node whose slots are all held still looks alive to
//!   its probes, and a client learns why it is turned away. Past the reserve too, a connection
//!   is accepted and closed at once (the client sees a reset, not a hang), logged at most once
//!   a second.
//! - **Per client** (by its address, IPv4-mapped IPv6 taken as IPv4), both off by default:
//!   - `--max-connections-per-client`: a client holding that many connections already has its
//!     next ones answered as the reserve answers (probes only, 503 `too_many_connections`
//!     otherwise), so one client cannot take every slot;
//!   - `--rate-limit` / `--rate-burst`: a token bucket per client ([`ClientRate`], GCRA by
//!     `governor`); a request past it is answered 429 `rate_limited` with `Retry-After`. The
//!     probes are not counted, nor the peer routes (`/_geecache/`, bounded by
//!     `--peer-concurrency`) when the node has a cluster secret: then only signed peers reach
//!     them; without one, anyone can, and they count as any request. The buckets of clients quiet for longer
//!     than a bucket takes to refill are swept out, so the table holds only active clients.
//!
//!   A client behind a proxy or a NAT shares its address with the others there: set these
//!   with that in mind (nginx's `limit_conn` and `limit_req` key the same way by default).
//! - **Timers**, on every connection (API and peer routes share the listener; TLS runs above
//!   this stream, so its handshake is timed as part of the first request head):
//!   - *header*: a request head must arrive within `--header-timeout` of the connection's
//!     accept, or of the first byte of a later request (slowloris);
//!   - *idle*: a keep-alive connection that has sent its answers and asks nothing more is
//!     closed after `--idle-timeout`;
//!   - *write*: a write that makes no progress for `--write-timeout` (the client does not read
//!     its answer) closes the connection. As nginx's `send_timeout`, it bounds the time
//!     between two successive writes, not the whole answer.
//!
//!   From the moment a request's head has been read until its answer has been written, the
//!   read timers do not run: the body has `--body-timeout`, the load `--request-timeout`.
//!   Every closing is counted by reason ([`ConnCounters`], `geecache_connections_closed_total`).
//! - **Answers held until sent.** A response body charged against the in-flight budget (see
//!   `guard.rs`) is given back to the connection when hyper has taken its last frame;
//!   the connection releases it once that frame has been written to the socket (the next
//!   flush), not when it was copied into hyper's buffer.

use std::future::Future as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Connections accepted past `--max-connections` for the probes (`/healthz`, `/readyz`).
pub const PROBE_RESERVE: usize = 32;

pub use crate::config::{ConnTimeouts, PerClient};

pub(crate) use super::per_client::ClientRate;
use super::per_client::{ClientConns, ClientSlot};

/// What the connections of a node have done, for `/api/v1/stats` and `/metrics`.
#[derive(Debug, Default)]
pub struct ConnCounters {
    /// Connections open now (ordinary and reserve).
    open: AtomicU64,
    /// Connections accepted into the probes' reserve.
    reserve: AtomicU64,
    /// Connections closed at once: every slot and the reserve were taken.
    refused: AtomicU64,
    /// Connections closed because a request head did not arrive in time.
    header_timeouts: AtomicU64,
    /// Keep-alive connections closed after `--idle-timeout` without a request.
    idle_timeouts: AtomicU64,
    /// Connections closed because a write made no progress (an unread answer).
    write_timeouts: AtomicU64,
    /// Answers refused with 503 because the in-flight budget was spent.
    answers_refused: AtomicU64,
    /// Connections of clients that held `--max-connections-per-client` already.
    over_client_cap: AtomicU64,
    /// Requests refused with 429: their client was past `--rate-limit`.
    rate_limited: AtomicU64,
    /// Requests refused with 403 `host_not_allowed` (DNS rebinding).
    wrong_host: AtomicU64,
}

/// [`ConnCounters`] read at one instant.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ConnSnapshot {
    /// Connections open now.
    pub open: u64,
    /// Connections accepted into the probes' reserve (every slot was taken).
    pub reserve_accepted: u64,
    /// Connections closed at once (every slot and the reserve were taken).
    pub refused: u64,
    /// Connections closed: a request head did not arrive within `--header-timeout`.
    pub header_timeouts: u64,
    /// Connections closed: idle for `--idle-timeout`.
    pub idle_timeouts: u64,
    /// Connections closed: a write made no progress for `--write-timeout`.
    pub write_timeouts: u64,
    /// Answers refused with 503 `busy`: the in-flight budget was spent.
    pub answers_refused: u64,
    /// Connections of a client that held `--max-connections-per-client` already (answered as
    /// the probes' reserve).
    pub over_client_cap: u64,
    /// Requests refused with 429 `rate_limited` (`--rate-limit`).
    pub rate_limited: u64,
    /// Requests refused with 403 `host_not_allowed` (`--allowed-host`).
    pub wrong_host: u64,
}

impl ConnCounters {
    /// The counters now.
    pub fn snapshot(&self) -> ConnSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConnSnapshot {
            open: get(&self.open),
            reserve_accepted: get(&self.reserve),
            refused: get(&self.refused),
            header_timeouts: get(&self.header_timeouts),
            idle_timeouts: get(&self.idle_timeouts),
            write_timeouts: get(&self.write_timeouts),
            answers_refused: get(&self.answers_refused),
            over_client_cap: get(&self.over_client_cap),
            rate_limited: get(&self.rate_limited),
            wrong_host: get(&self.wrong_host),
        }
    }

    /// Counts a request refused for its `Host` (`--allowed-host`).
    pub(crate) fn wrong_host(&self) {
        self.wrong_host.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request refused for `--rate-limit`.
    pub(crate) fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an answer refused for the in-flight budget.
    pub(crate) fn answer_refused(&self) {
        self.answers_refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a connection is in the probes' reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crowded {
    /// Every slot of the node was taken (`--max-connections`).
    Node,
    /// Its client held `--max-connections-per-client` already.
    Client,
}

/// 503 `too_many_connections`: the answer of a connection in the probes' reserve to anything
/// but a probe.
pub(crate) fn too_many_connections(why: Crowded) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let message = match why {
        Crowded::Node => {
            "every connection slot of this node is taken (--max-connections); retry shortly"
        }
        Crowded::Client => {
            "this client holds --max-connections-per-client connections already; send on \
             those, or close one"
        }
    };
    let mut response = super::error_response(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "too_many_connections",
        message.into(),
    );
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    response.into_response()
}

/// What a connection's service and its stream share: cheap to clone (an `Arc`).
#[derive(Debug, Clone)]
pub struct ConnHandle(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    /// Set by the service when it is handed a request (its head has been read).
    dispatched: AtomicBool,
    /// Why this connection is in the probes' reserve, if it is.
    reserve: Option<Crowded>,
    /// The client's address (`None` for a service without a socket).
    client: Option<IpAddr>,
    /// Reservations of answers whose last frame hyper holds but may not have written yet.
    parked: Mutex<Vec<OwnedSemaphorePermit>>,
    /// Whether `parked` holds any (so a flush need not take the lock).
    has_parked: AtomicBool,
}

impl ConnHandle {
    fn new(reserve: Option<Crowded>, client: Option<IpAddr>) -> ConnHandle {
        ConnHandle(Arc::new(Shared {
            dispatched: AtomicBool::new(false),
            reserve,
            client,
            parked: Mutex::new(Vec::new()),
            has_parked: AtomicBool::new(false),
        }))
    }

    /// A handle of no connection (a service called without a socket, as in tests).
    pub fn detached() -> ConnHandle {
        ConnHandle::new(None, None)
    }

    /// Tells the stream that a request's head has been read: its read timers stop until the
    /// answer has been written.
    pub fn dispatched(&self) {
        self.0.dispatched.store(true, Ordering::Relaxed);
    }

    /// Why this connection is in the probes' reserve (only probes are answered), if it is.
    pub fn in_reserve(&self) -> Option<Crowded> {
        self.0.reserve
    }

    /// The client's address, when the connection has a socket.
    pub fn client(&self) -> Option<IpAddr> {
        self.0.client
    }

    /// Keeps `permit` until the connection's next completed flush (or its close).
    pub(crate) fn park(&self, permit: OwnedSemaphorePermit) {
        self.0.parked.lock().push(permit);
        self.0.has_parked.store(true, Ordering::Release);
    }

    /// Releases what [`ConnHandle::park`] kept: everything written has left.
    fn flushed(&self) {
        if self.0.has_parked.swap(false, Ordering::AcqRel) {
            self.0.parked.lock().clear();
        }
    }
}

/// A TCP listener that holds at most `max` ordinary connections (and [`PROBE_RESERVE`] more
/// for probes) open at once, each timed as the module docs say.
#[derive(Debug)]
pub struct LimitedListener {
    /// The socket connections arrive on.
    inner: TcpListener,
    /// One permit per open ordinary connection.
    slots: Arc<Semaphore>,
    /// One permit per open connection of the probes' reserve.
    reserve: Arc<Semaphore>,
    /// The timers each connection gets.
    timeouts: ConnTimeouts,
    /// Where connections are counted.
    counters: Arc<ConnCounters>,
    /// When a refusal was last logged (seconds since the Unix epoch), to log one a second.
    last_warned: AtomicU64,
    /// Each client's open connections, when `--max-connections-per-client` caps them.
    per_client: Option<Arc<ClientConns>>,
}

impl LimitedListener {
    /// Wraps `inner`, holding at most `max` connections open at once (plus the reserve), each
    /// with `timeouts`, counted in `counters`.
    pub fn new(
        inner: TcpListener,
        max: usize,
        timeouts: ConnTimeouts,
        counters: Arc<ConnCounters>,
    ) -> LimitedListener {
        LimitedListener {
            inner,
            slots: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
            reserve: Arc::new(Semaphore::new(PROBE_RESERVE)),
            timeouts,
            counters,
            last_warned: AtomicU64::new(0),
            per_client: None,
        }
    }

    /// This listener, holding each client to `max` connections at once (0: no cap).
    #[must_use]
    pub fn per_client(mut self, max: usize) -> LimitedListener {
        self.per_client = (max > 0).then(|| {
            Arc::new(ClientConns {
                max,
                open: Mutex::default(),
            })
        });
        self
    }

    fn warn_refused(&self, addr: SocketAddr, what: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.last_warned.swap(now, Ordering::Relaxed) != now {
            tracing::warn!(%addr, "{what}");
        }
    }

    /// A slot in the probes' reserve for a connection turned away for `why`, or `None` (and
    /// counted) when the reserve is full too.
    fn reserve_slot(&self, addr: SocketAddr, why: Crowded) -> Option<OwnedSemaphorePermit> {
        if let Ok(slot) = self.reserve.clone().try_acquire_owned() {
            self.counters.reserve.fetch_add(1, Ordering::Relaxed);
            let what = match why {
                Crowded::Node => {
                    "--max-connections are open: a connection went to the probes' reserve"
                }
                Crowded::Client => {
                    "a client holds --max-connections-per-client: its connection went to the probes' reserve"
                }
            };
            self.warn_refused(addr, what);
            Some(slot)
        } else {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            self.warn_refused(
                addr,
                "refused a connection: every slot and the probes' reserve are taken",
            );
            None
        }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            let client = addr.ip().to_canonical();
            let client_slot = match &self.per_client {
                Some(table) => match table.take(client) {
                    Some(slot) => Some(slot),
                    None => {
                        self.counters
                            .over_client_cap
                            .fetch_add(1, Ordering::Relaxed);
                        let Some(slot) = self.reserve_slot(addr, Crowded::Client) else {
                            drop(stream);
                            continue;
                        };
                        return self.accepted(
                            stream,
                            addr,
                            slot,
                            (client, None),
                            Some(Crowded::Client),
                        );
                    }
                },
                None => None,
            };
            let (slot, reserve) = match self.slots.clone().try_acquire_owned() {
                Ok(slot) => (slot, None),
                Err(_) => match self.reserve_slot(addr, Crowded::Node) {
                    Some(slot) => (slot, Some(Crowded::Node)),
                    None => {
                        drop(stream);
                        continue;
                    }
                },
            };
            return self.accepted(stream, addr, slot, (client, client_slot), reserve);
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl LimitedListener {
    /// The stream of an accepted connection from `client` holding `slot` (and its place among
    /// the client's, `client_slot`), in the probes' reserve for `reserve` if that is set.
    fn accepted(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        slot: OwnedSemaphorePermit,
        (client, client_slot): (IpAddr, Option<ClientSlot>),
        reserve: Option<Crowded>,
    ) -> (LimitedStream, SocketAddr) {
        // Answers are small and latency-bound: do not wait to coalesce them.
        let _ = stream.set_nodelay(true);
        self.counters.open.fetch_add(1, Ordering::Relaxed);
        let stream = LimitedStream {
            stream,
            _slot: slot,
            _client_slot: client_slot,
            conn: ConnHandle::new(reserve, Some(client)),
            timeouts: self.timeouts,
            counters: Arc::clone(&self.counters),
            phase: Phase::Head(Instant::now()),
            read_timer: Timer::default(),
            write_timer: Timer::default(),
        };
        (stream, addr)
    }
}

/// Where a connection stands between requests, for its read timers.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for (the rest of) a request head that began at this instant.
    Head(Instant),
    /// A request is being served: no read timer.
    Busy,
    /// Answered everything; idle since this instant.
    Idle(Instant),
}

/// One re-armable deadline (one allocation per connection, reset in place).
#[derive(Debug, Default)]
struct Timer {
    /// The sleep, made on first use.
    sleep: Option<Pin<Box<Sleep>>>,
    /// What it is armed for, if anything.
    armed: Option<Instant>,
}

impl Timer {
    /// Arms the timer for `deadline` (unless it already is) and polls it: ready once passed.
    fn poll_at(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        if self.armed != Some(deadline) {
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = Some(deadline);
        }
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }

    fn disarm(&mut self) {
        self.armed = None;
    }
}

/// An accepted connection: gives its slot back when it closes, and times out as the module
/// docs say.
#[derive(Debug)]
pub struct LimitedStream {
    /// The connection.
    stream: TcpStream,
    /// Its slot among `--max-connections` (or the reserve), released on drop.
    _slot: OwnedSemaphorePermit,
    /// Its place among its client's `--max-connections-per-client`, released on drop.
    _client_slot: Option<ClientSlot>,
    /// What it shares with its service.
    conn: ConnHandle,
    /// Its timers' lengths.
    timeouts: ConnTimeouts,
    /// Where its closing is counted.
    counters: Arc<ConnCounters>,
    /// Between requests or in one.
    phase: Phase,
    /// The header or idle deadline, armed while a read waits.
    read_timer: Timer,
    /// The write deadline, armed while a write waits.
    write_timer: Timer,
}

impl LimitedStream {
    /// What this connection shares with the service answering it.
    pub fn conn(&self) -> &ConnHandle {
        &self.conn
    }

    /// Takes note of a request the service was handed since the last call.
    fn absorb(&mut self) {
        if self.conn.0.dispatched.swap(false, Ordering::Relaxed) {
            self.phase = Phase::Busy;
            self.read_timer.disarm();
        }
    }

    fn timed_out(&self, counter: &AtomicU64, what: &str) -> io::Error {
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("closing a connection: {what}");
        io::Error::new(io::ErrorKind::TimedOut, what.to_string())
    }

    /// A write that returned `Pending`: times out after `--write-timeout` without progress.
    fn poll_write_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let deadline = match self.write_timer.armed {
            Some(deadline) => deadline,
            None => Instant::now() + self.timeouts.write,
        };
        match self.write_timer.poll_at(deadline, cx) {
            Poll::Ready(()) => Poll::Ready(self.timed_out(
                &self.counters.write_timeouts,
                "no write progress within --write-timeout",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn wrote<T>(
        &mut self,
        result: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => match self.poll_write_stalled(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
            done => {
                self.write_timer.disarm();
                done
            }
        }
    }
}

impl Drop for LimitedStream {
    fn drop(&mut self) {
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.absorb();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before
                    && let Phase::Idle(_) = this.phase
                {
                    this.phase = Phase::Head(Instant::now());
                }
                this.read_timer.disarm();
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let (deadline, counter, what) = match this.phase {
                    Phase::Busy => return Poll::Pending,
                    Phase::Head(since) => (
                        since + this.timeouts.header,
                        &this.counters.header_timeouts,
                        "the request head did not arrive within --header-timeout",
                    ),
                    Phase::Idle(since) => (
                        since + this.timeouts.idle,
                        &this.counters.idle_timeouts,
                        "idle for --idle-timeout",
                    ),
                };
                match this.read_timer.poll_at(deadline, cx) {
                    Poll::Ready(()) => Poll::Ready(Err(this.timed_out(counter, what))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.absorb();
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.wrote(result, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.absorb();
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.wrote(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.absorb();
        let result = Pin::new(&mut this.stream).poll_flush(cx);
        if let Poll::Ready(Ok(())) = result {
            // Everything hyper had buffered has been written: an answer in flight is out.
            this.conn.flushed();
            if let Phase::Busy = this.phase {
                this.phase = Phase::Idle(Instant::now());
            }
        }
        this.wrote(result, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use tokio::io::AsyncReadExt as _;

    fn listener(socket: TcpListener, max: usize, timeouts: ConnTimeouts) -> LimitedListener {
        LimitedListener::new(socket, max, timeouts, Arc::default())
    }

    #[tokio::test]
    async fn the_listener_takes_the_reserve_past_its_limit_then_closes_connections() {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let counters = Arc::new(ConnCounters::default());
        let mut listener =
            LimitedListener::new(socket, 1, ConnTimeouts::default(), Arc::clone(&counters));
        let _first = TcpStream::connect(addr).await.unwrap();
        let (held, _) = axum::serve::Listener::accept(&mut listener).await;
        assert_eq!(held.conn().in_reserve(), None);
        let mut reserve = Vec::new();
        for _ in 0..PROBE_RESERVE {
            let _client = TcpStream::connect(addr).await.unwrap();
            let (io, _) = axum::serve::Listener::accept(&mut listener).await;
            assert_eq!(io.conn().in_reserve(), Some(Crowded::Node));
            reserve.push((_client, io));
        }
        let mut past = TcpStream::connect(addr).await.unwrap();
        // Accepting goes on in the background: the connection past the reserve is closed.
        let accept = tokio::spawn(async move {
            let (io, _) = axum::serve::Listener::accept(&mut listener).await;
            io
        });
        let mut buf = [0u8; 1];
        let n = past.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "the connection past the reserve was closed");
        assert_eq!(counters.snapshot().refused, 1);
        assert_eq!(counters.snapshot().open, 1 + PROBE_RESERVE as u64);
        // Once the first closes, its slot takes the next connection, as an ordinary one.
        drop(held);
        let _next = TcpStream::connect(addr).await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(10), accept)
            .await
            .expect("a freed slot is used again")
            .unwrap();
        assert_eq!(next.conn().in_reserve(), None);
    }

    #[tokio::test]
    async fn a_client_past_its_cap_goes_to_the_reserve_and_gets_its_slot_back() {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let counters = Arc::new(ConnCounters::default());
        let mut listener =
            LimitedListener::new(socket, 100, ConnTimeouts::default(), Arc::clone(&counters))
                .per_client(2);
        let mut held = Vec::new();
        for _ in 0..2 {
            let client = TcpStream::connect(addr).await.unwrap();
            let (io, _) = axum::serve::Listener::accept(&mut listener).await;
            assert_eq!(io.conn().in_reserve(), None);
            assert_eq!(io.conn().client(), Some(IpAddr::from([127, 0, 0, 1])));
            held.push((client, io));
        }
        let _third = TcpStream::connect(addr).await.unwrap();
        let (third, _) = axum::serve::Listener::accept(&mut listener).await;
        assert_eq!(third.conn().in_reserve(), Some(Crowded::Client));
        assert_eq!(counters.snapshot().over_client_cap, 1);
        drop(third);
        drop(held.pop());
        let _next = TcpStream::connect(addr).await.unwrap();
        let (next, _) = axum::serve::Listener::accept(&mut listener).await;
        assert_eq!(
            next.conn().in_reserve(),
            None,
            "a closed connection frees its place"
        );
    }

    #[test]
    fn a_client_past_its_rate_waits_and_another_client_does_not() {
        let rate = ClientRate::new(&PerClient {
            max_connections: 0,
            rate: 1,
            burst: 3,
        })
        .unwrap();
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        for _ in 0..3 {
            rate.check(a).unwrap();
        }
        let wait = rate.check(a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        rate.check(b).unwrap();
        assert_eq!(rate.clients(), 2);
        let answer = rate.limited(wait);
        assert_eq!(answer.status(), 429);
        assert_eq!(answer.headers()[axum::http::header::RETRY_AFTER], "1");
        assert!(
            ClientRate::new(&PerClient::default()).is_none(),
            "off by default"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_after_the_header_timeout() {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let timeouts = ConnTimeouts {
            header: Duration::from_secs(10),
            ..ConnTimeouts::default()
        };
        let mut listener = listener(socket, 4, timeouts);
        let _client = TcpStream::connect(addr).await.unwrap();
        let (mut io, _) = axum::serve::Listener::accept(&mut listener).await;
        let started = Instant::now();
        let mut buf = [0u8; 8];
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn no_read_timer_runs_while_a_request_is_served() {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut listener = listener(socket, 4, ConnTimeouts::default());
        let _client = TcpStream::connect(addr).await.unwrap();
        let (mut io, _) = axum::serve::Listener::accept(&mut listener).await;
        io.conn().dispatched();
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(3600), io.read(&mut buf)).await;
        assert!(
            read.is_err(),
            "the read waited (for the answer), not timed out"
        );
    }
}
