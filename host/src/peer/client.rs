//! The client side of the peer protocol: one [`PeerClient`] per remote node.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri, header};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prost::Message;
use url::Url;

use super::auth::{self, ClusterSecret};
use super::proto::{self, batch_item, get_response};
use super::{
    BATCH_SEGMENT, CONTENT_TYPE, INVALIDATE_SEGMENT, MAX_BATCH_KEYS, PATH_PREFIX, PeerEntry,
    PeerError, encode_segment, key_path,
};

/// Per-request timeout when the builder is given none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest answer body read from a peer when the builder is given no limit: room for a batch
/// of large values, but a broken or hostile peer cannot make the node buffer without bound.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 << 20;

/// What an answer may hold beyond what was asked for: a key, an expiry, a codec tag and the
/// protobuf framing of one entry, or an error's message.
const ANSWER_SLACK: usize = 64 << 10;

/// What a batch answer may hold beyond the owner's batch budget: the `too_large` items of the
/// keys past it (at most [`MAX_BATCH_KEYS`] of them) and the framing.
const BATCH_ANSWER_SLACK: usize = 1 << 20;

/// What a request asks for, which caps its answer (see [`PeerClientBuilder::answer_limits`]).
#[derive(Debug, Clone, Copy)]
enum Asked {
    /// One value (a get).
    Value,
    /// A batch of values.
    Batch,
    /// No value (a write or an invalidation): the answer is empty or an error.
    Nothing,
}

/// Idle keep-alive connections kept per peer: as many as requests an owner serves at once
/// ([`super::DEFAULT_PEER_CONCURRENCY`]), since HTTP/1.1 needs one connection per request in
/// flight. With fewer, every request past the pool's size under load would open a new
/// connection and close it afterwards (a connect per request, and sockets in `TIME_WAIT`).
/// Idle connections are only those a past peak opened, and close after [`POOL_IDLE_TIMEOUT`].
pub const POOL_MAX_IDLE_PER_PEER: usize = super::DEFAULT_PEER_CONCURRENCY;

/// How long a pooled connection may stay idle before it is closed: below the server's default
/// `--idle-timeout` (60 s), so that an idle connection is closed by its client, not by the peer
/// just as a request goes out on it.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// TCP keep-alive probes on peer connections: a peer that vanished without closing (its
/// machine lost power) is noticed on an idle pooled connection after about a minute.
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);

/// The HTTP client peer calls go through (one per node, shared by its peer clients and the
/// cluster's admin requests). Cheap to clone; clones share the pool.
///
/// It is hyper's pooled HTTP/1.1 client, with nothing between it and the peer protocol:
/// keep-alive connections (as many idle per peer as an owner serves requests at once),
/// `TCP_NODELAY` (answers are small and latency-bound), TCP keep-alive, connects bounded by a
/// timeout, `https://` peers through rustls. It never goes through a proxy, whatever
/// `HTTP_PROXY`/`ALL_PROXY` say: peers talk to each other directly, and a proxy would see the
/// cluster's traffic (and could replay it). (reqwest, which it replaced, spent ~5% of a node's
/// CPU in URL, redirect-policy and pool layers when most gets are forwarded; none of them does
/// anything for peers.)
#[derive(Debug, Clone)]
pub struct PeerHttp {
    client: Client<BoundedConnector, Full<Bytes>>,
    /// The bound on each connect.
    connect_timeout: Duration,
}

/// How a [`PeerHttp`] request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No answer: the connection could not be made, or broke before the answer's head. The
    /// request may be sent again.
    #[error("{0}")]
    Send(String),
    /// No connection within the connect timeout (TCP and TLS handshake): the peer is down or
    /// unreachable behind a black hole; trying again at once would wait as long again.
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    /// The answer's body broke off.
    #[error("{0}")]
    Body(String),
    /// The answer's body is longer than the limit.
    #[error("answer is larger than {0} bytes")]
    TooLarge(usize),
}

impl PeerHttp {
    /// Sends `request` and waits for the head of the answer (its body is read with
    /// [`PeerHttp::read_body`]). Callers bound it in time.
    ///
    /// # Errors
    /// [`HttpError::ConnectTimeout`], or [`HttpError::Send`] for any other failure before the
    /// answer's head.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, HttpError> {
        self.client.request(request).await.map_err(|e| {
            if is_connect_timeout(&e, e.is_connect()) {
                HttpError::ConnectTimeout(self.connect_timeout)
            } else {
                HttpError::Send(error_chain(&e))
            }
        })
    }

    /// Reads an answer's body, refusing one over `limit` bytes (announced or actual) without
    /// buffering it.
    ///
    /// # Errors
    /// [`HttpError::TooLarge`], or [`HttpError::Body`] when the body broke off.
    pub async fn read_body(response: Response<Incoming>, limit: usize) -> Result<Bytes, HttpError> {
        let announced = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX)) {
            return Err(HttpError::TooLarge(limit));
        }
        // Copied, once, out of hyper's read buffer into a buffer of the body's size: a value
        // decoded from the answer is a slice of the body, and a slice of the read buffer would
        // keep all of it alive and make the connection allocate a new one for its next answer.
        let capacity = announced.map_or(0, |n| usize::try_from(n).unwrap_or(limit).min(limit));
        let mut body = bytes::BytesMut::with_capacity(capacity);
        let mut incoming = Limited::new(response.into_body(), limit);
        while let Some(frame) = incoming.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        body.extend_from_slice(data);
                    }
                }
                Err(e) if e.is::<LengthLimitError>() => return Err(HttpError::TooLarge(limit)),
                Err(e) => return Err(HttpError::Body(error_chain(&*e))),
            }
        }
        Ok(body.freeze())
    }
}

/// Whether `e` (of a request whose connect failed, when `connecting`) is a connect timeout:
/// ours (the whole connect), or the TCP connector's (its share of the timeout for each of a
/// name's addresses, all of which timed out).
fn is_connect_timeout(e: &(dyn std::error::Error + 'static), connecting: bool) -> bool {
    let mut source = Some(e);
    while let Some(cause) = source {
        let timed_out = cause.is::<ConnectTimeout>()
            || (connecting
                && cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut));
        if timed_out {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The connect timeout ran out (see [`BoundedConnector`]).
#[derive(Debug, thiserror::Error)]
#[error("no connection within {0:?}")]
struct ConnectTimeout(Duration);

/// hyper-rustls's connector with one bound on a whole connect: name resolution, TCP and the
/// TLS handshake. The pool may finish a connect in the background once its request went on
/// another connection, and a connect that stalls (a peer that answers the SYN and nothing
/// more) must not hold a task and a socket until the kernel gives up.
#[derive(Debug, Clone)]
struct BoundedConnector {
    inner: HttpsConnector<HttpConnector>,
    timeout: Duration,
}

impl tower::Service<Uri> for BoundedConnector {
    type Response = <HttpsConnector<HttpConnector> as tower::Service<Uri>>::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected,
                Err(_) => Err(Box::new(ConnectTimeout(timeout)) as Self::Error),
            }
        })
    }
}

/// How long sent data may stay unacknowledged before the connection is dropped (Linux
/// `TCP_USER_TIMEOUT`): a peer that vanished mid-answer is given up on, not retransmitted to
/// for a quarter of an hour.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// A [`PeerHttp`] with connects bounded by `connect_timeout`, whose `https://` peers are
/// checked against the platform's roots (the system's certificate store). On a system without
/// CA certificates (a minimal container image) it trusts no `https://` peer, and says so in the
/// log: plain `http://` peers need none, and `https://` ones need `--peer-ca` there.
pub fn http_client(connect_timeout: Duration) -> PeerHttp {
    http_client_with_tls(connect_timeout, None)
}

/// [`http_client`] whose `https://` peers are checked with `tls` (`--peer-ca`, and with
/// `--peer-mtls` the certificate this node shows) rather than the platform's roots.
pub fn http_client_with_tls(
    connect_timeout: Duration,
    tls: Option<rustls::ClientConfig>,
) -> PeerHttp {
    let tls = tls.unwrap_or_else(|| {
        use rustls_platform_verifier::ConfigVerifierExt;
        rustls::ClientConfig::with_platform_verifier().unwrap_or_else(|e| {
            tracing::info!(error = %e, "no system CA certificates: https:// peers are trusted only with --peer-ca");
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        })
    });
    let mut tcp = HttpConnector::new();
    // The scheme is checked by the TLS layer around it: `http://` and `https://` both pass.
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    tcp.set_keepalive(Some(TCP_KEEPALIVE));
    tcp.set_keepalive_interval(Some(TCP_KEEPALIVE));
    tcp.set_keepalive_retries(Some(3));
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    tcp.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT));
    let connector = BoundedConnector {
        inner: hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp),
        timeout: connect_timeout,
    };
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_PEER)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .build(connector);
    PeerHttp {
        client,
        connect_timeout,
    }
}

/// Talks to one remote node. Cheap to clone (an `Arc` inside); clones share the connection pool.
///
/// Every call is one HTTP/1.1 request on a pooled keep-alive connection, bounded by the
/// per-request timeout (connect, send and the whole answer), and signed when the client has a
/// [`ClusterSecret`].
#[derive(Debug, Clone)]
pub struct PeerClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Connection pool; may be shared with the clients of other peers.
    http: PeerHttp,
    /// `http://host:port`, no trailing slash: how the peer is named in errors.
    base: String,
    /// `base`'s scheme and authority, parsed once: each request's URI is made of them and its
    /// path, with nothing parsed again but the path.
    scheme: Scheme,
    uri_authority: Authority,
    /// `host:port` of the peer, port always written: what requests are signed for (see
    /// [`auth::authority_of`]), so they are good at this peer only.
    authority: String,
    /// Signs every request when the cluster has a secret.
    secret: Option<ClusterSecret>,
    /// Bound on each whole request, so a slow peer cannot hold a client request hostage.
    timeout: Duration,
    /// The bound of a PUT or DELETE (see [`PeerClientBuilder::write_timeout`]).
    write_timeout: Duration,
    /// Bound on each answer body, so a peer cannot make this node buffer without limit.
    max_response_bytes: usize,
    /// Largest value asked for (see [`PeerClientBuilder::answer_limits`]).
    max_value_bytes: usize,
    /// The owner's batch budget (see [`PeerClientBuilder::answer_limits`]).
    max_batch_bytes: usize,
}

/// Builds a [`PeerClient`]; see [`PeerClient::builder`].
#[derive(Debug)]
#[must_use]
pub struct PeerClientBuilder {
    /// The peer's address as given.
    addr: String,
    /// See [`PeerClientBuilder::timeout`].
    timeout: Duration,
    /// See [`PeerClientBuilder::write_timeout`].
    write_timeout: Option<Duration>,
    /// See [`PeerClientBuilder::secret`].
    secret: Option<ClusterSecret>,
    /// See [`PeerClientBuilder::http_client`].
    http: Option<PeerHttp>,
    /// See [`PeerClientBuilder::max_response_bytes`].
    max_response_bytes: usize,
    /// See [`PeerClientBuilder::answer_limits`].
    answer_limits: Option<(usize, usize)>,
}

impl PeerClientBuilder {
    /// Bound on each request, from connecting to reading the whole answer
    /// ([`DEFAULT_TIMEOUT`] by default). Past it, calls fail with [`PeerError::Timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Bound on each PUT and DELETE instead of [`PeerClientBuilder::timeout`] (which it is by
    /// default): the owner of a key answers a write once its storage tier has taken it, which
    /// may take longer than a get should wait.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = Some(timeout);
        self
    }

    /// Largest answer body to read (64 MiB by default); a longer one fails the call with
    /// [`PeerError::Decode`] without being read further.
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }

    /// Caps each answer by what was asked (within [`PeerClientBuilder::max_response_bytes`]):
    /// a get's by `max_value_bytes` (the largest value this node's groups take), a batch's by
    /// `max_batch_bytes` (the budget an owner answers within, nodes being configured alike),
    /// each with room for its framing; a write's, which carries no value, by 64 KiB. Without
    /// it every answer is capped by `max_response_bytes` alone.
    pub fn answer_limits(mut self, max_value_bytes: usize, max_batch_bytes: usize) -> Self {
        self.answer_limits = Some((max_value_bytes, max_batch_bytes));
        self
    }

    /// Sign every request with `secret` (none by default).
    pub fn secret(mut self, secret: Option<ClusterSecret>) -> Self {
        self.secret = secret;
        self
    }

    /// Use this HTTP client (and its connection pool) instead of a new one, e.g. one client for
    /// every peer of a node. Its own timeouts still apply; the builder's is set per request.
    pub fn http_client(mut self, http: PeerHttp) -> Self {
        self.http = Some(http);
        self
    }

    /// The client.
    ///
    /// # Errors
    /// [`PeerError::InvalidAddress`] when the address is not `host:port` or `http://host:port`
    /// (`https://host:port` too; base paths are not supported), or the HTTP client cannot be created.
    pub fn build(self) -> Result<PeerClient, PeerError> {
        let invalid = |message: String| PeerError::InvalidAddress {
            addr: self.addr.clone(),
            message,
        };
        let with_scheme = if self.addr.contains("://") {
            self.addr.clone()
        } else {
            format!("http://{}", self.addr)
        };
        let url = Url::parse(&with_scheme).map_err(|e| invalid(e.to_string()))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(invalid("peers are http:// or https://".into()));
        }
        if url.host().is_none() || url.path() != "/" || url.query().is_some() {
            return Err(invalid("expected host:port or http://host:port".into()));
        }
        let base = url.origin().ascii_serialization();
        let base_uri: Uri = base
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| invalid(e.to_string()))?;
        let (Some(scheme), Some(uri_authority)) = (base_uri.scheme(), base_uri.authority()) else {
            return Err(invalid("expected host:port or http://host:port".into()));
        };
        let (scheme, uri_authority) = (scheme.clone(), uri_authority.clone());
        let authority = auth::authority_of(&base);
        let http = match self.http {
            Some(http) => http,
            None => http_client(self.timeout),
        };
        Ok(PeerClient {
            inner: Arc::new(Inner {
                http,
                base,
                scheme,
                uri_authority,
                authority,
                secret: self.secret,
                timeout: self.timeout,
                write_timeout: self.write_timeout.unwrap_or(self.timeout),
                max_response_bytes: self.max_response_bytes,
                max_value_bytes: self.answer_limits.map_or(usize::MAX, |l| l.0),
                max_batch_bytes: self.answer_limits.map_or(usize::MAX, |l| l.1),
            }),
        })
    }
}

impl Inner {
    /// The bound of a request with `method`.
    fn timeout_of(&self, method: &Method) -> Duration {
        if *method == Method::PUT || *method == Method::DELETE {
            self.write_timeout
        } else {
            self.timeout
        }
    }
}

/// What one key of a [`PeerClient::batch_get`] came back as.
pub type BatchResult = Vec<(String, Result<Option<PeerEntry>, PeerError>)>;

impl PeerClient {
    /// A builder for a client of the node at `addr` (`host:port` or `http://host:port`).
    pub fn builder(addr: impl Into<String>) -> PeerClientBuilder {
        PeerClientBuilder {
            addr: addr.into(),
            timeout: DEFAULT_TIMEOUT,
            write_timeout: None,
            secret: None,
            http: None,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            answer_limits: None,
        }
    }

    /// The peer's base URL, `http://host:port`.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// Asks the owner for `key` of `group`: `Ok(None)` when the key does not exist.
    ///
    /// # Errors
    /// Any [`PeerError`]: transport, timeout, authentication, or an error answer.
    pub async fn get(&self, group: &str, key: &str) -> Result<Option<PeerEntry>, PeerError> {
        let body = self
            .send(Method::GET, key_path(group, key), Vec::new(), Asked::Value)
            .await?;
        let answer: proto::GetResponse = self.decode(body)?;
        match answer.result {
            Some(get_response::Result::Entry(entry)) => self.entry(entry).map(Some),
            Some(get_response::Result::Missing(_)) => Ok(None),
            None => Err(self.bad_answer("GetResponse has no result")),
        }
    }

    /// Stores `entry` at the owner of `key`.
    ///
    /// # Errors
    /// Any [`PeerError`].
    pub async fn set(&self, group: &str, key: &str, entry: PeerEntry) -> Result<(), PeerError> {
        let body = proto::SetRequest {
            entry: Some(entry.into()),
        }
        .encode_to_vec();
        self.send(Method::PUT, key_path(group, key), body, Asked::Nothing)
            .await?;
        Ok(())
    }

    /// Removes `key` at its owner (which then invalidates other nodes' copies).
    ///
    /// # Errors
    /// Any [`PeerError`].
    pub async fn delete(&self, group: &str, key: &str) -> Result<(), PeerError> {
        self.send(
            Method::DELETE,
            key_path(group, key),
            Vec::new(),
            Asked::Nothing,
        )
        .await?;
        Ok(())
    }

    /// Gets several keys of `group` from their owner: one `(key, result)` per key, in order
    /// (a key asked twice is sent once and its result repeated). Lists of more than
    /// [`MAX_BATCH_KEYS`] distinct keys go as several requests, one after another.
    ///
    /// # Errors
    /// A [`PeerError`] when a whole request fails; a key that failed alone has its own error
    /// ([`PeerError::ItemFailed`]) in its item; code `too_large` when the owner's batch budget
    /// was spent before it (ask for it again in a smaller batch).
    pub async fn batch_get(&self, group: &str, keys: &[String]) -> Result<BatchResult, PeerError> {
        let path = action_path(group, BATCH_SEGMENT);
        let distinct = crate::batch::dedup_keys(keys.to_vec());
        let mut results = std::collections::HashMap::with_capacity(distinct.len());
        for chunk in distinct.chunks(MAX_BATCH_KEYS) {
            let request = proto::BatchGetRequest {
                keys: chunk.to_vec(),
            };
            let body = self
                .send(
                    Method::POST,
                    path.clone(),
                    request.encode_to_vec(),
                    Asked::Batch,
                )
                .await?;
            let answer: proto::BatchGetResponse = self.decode(body)?;
            if answer.items.len() != chunk.len()
                || answer.items.iter().zip(chunk).any(|(i, k)| &i.key != k)
            {
                return Err(self.bad_answer("BatchGetResponse items do not match the keys asked"));
            }
            for item in answer.items {
                let result = match item.result {
                    Some(batch_item::Result::Entry(entry)) => self.entry(entry).map(Some),
                    Some(batch_item::Result::Missing(_)) => Ok(None),
                    Some(batch_item::Result::Error(info)) => Err(PeerError::ItemFailed {
                        peer: self.inner.base.clone(),
                        code: info.code,
                        message: info.message,
                    }),
                    None => Err(self.bad_answer("BatchItem has no result")),
                };
                results.insert(item.key, result);
            }
        }
        // Every key has its result: the items matched the distinct keys one for one.
        Ok(keys
            .iter()
            .filter_map(|k| results.get(k).map(|r| (k.clone(), r.clone())))
            .collect())
    }

    /// Tells the node to drop its local (hot) copies of `keys`. It tells no one else.
    /// Lists longer than [`MAX_BATCH_KEYS`] go as several requests.
    ///
    /// # Errors
    /// Any [`PeerError`].
    pub async fn invalidate(&self, group: &str, keys: &[String]) -> Result<(), PeerError> {
        let path = action_path(group, INVALIDATE_SEGMENT);
        for chunk in keys.chunks(MAX_BATCH_KEYS) {
            let request = proto::InvalidateRequest {
                keys: chunk.to_vec(),
            };
            self.send(
                Method::POST,
                path.clone(),
                request.encode_to_vec(),
                Asked::Nothing,
            )
            .await?;
        }
        Ok(())
    }

    /// Sends one request (signed when there is a secret) and returns the body of a 2xx answer,
    /// all within the method's timeout.
    ///
    /// A request whose connection failed or broke before an answer (a pooled connection the
    /// peer closed while restarting or draining) is sent once more at once (on another pooled
    /// connection or a new one), within what is left of the same timeout; one that got no
    /// connection within the connect timeout is not. Every peer request is idempotent
    /// (gets, sets of one value, deletes, invalidations). A peer that refuses the request with
    /// 401 and `Retry-After` (it was signed just before the peer started, see [`auth`]) gets
    /// it once more, signed anew, a second later, with a timeout of its own.
    async fn send(
        &self,
        method: Method,
        path: String,
        body: Vec<u8>,
        asked: Asked,
    ) -> Result<Bytes, PeerError> {
        let inner = &*self.inner;
        let limit = match asked {
            Asked::Value => inner.max_value_bytes.saturating_add(ANSWER_SLACK),
            Asked::Batch => inner.max_batch_bytes.saturating_add(BATCH_ANSWER_SLACK),
            Asked::Nothing => ANSWER_SLACK,
        }
        .min(inner.max_response_bytes);
        let timeout = self.inner.timeout_of(&method);
        let path = PathAndQuery::try_from(path).map_err(|e| PeerError::InvalidAddress {
            addr: self.inner.base.clone(),
            message: e.to_string(),
        })?;
        // Shared, not copied, if it has to be sent again.
        let body = Bytes::from(body);
        let mut deadline = tokio::time::Instant::now() + timeout;
        let mut reset_retried = false;
        let mut refusal_retried = false;
        loop {
            let attempt = self.send_once(&method, &path, &body, limit);
            let outcome = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    return Err(PeerError::Timeout {
                        peer: self.inner.base.clone(),
                        timeout,
                    });
                }
            };
            match outcome {
                Ok(body) => return Ok(body),
                Err(Retry::Reset(_)) if !reset_retried => reset_retried = true,
                Err(Retry::After(wait, _)) if !refusal_retried => {
                    refusal_retried = true;
                    tokio::time::sleep(wait).await;
                    deadline = tokio::time::Instant::now() + timeout;
                }
                Err(e) => return Err(e.into_error()),
            }
        }
    }

    /// One attempt of [`PeerClient::send`], unbounded in time (the caller bounds it).
    async fn send_once(
        &self,
        method: &Method,
        path: &PathAndQuery,
        body: &Bytes,
        limit: usize,
    ) -> Result<Bytes, Retry> {
        let inner = &*self.inner;
        let uri = Uri::builder()
            .scheme(inner.scheme.clone())
            .authority(inner.uri_authority.clone())
            .path_and_query(path.clone())
            .build()
            .map_err(|e| PeerError::InvalidAddress {
                addr: inner.base.clone(),
                message: e.to_string(),
            })?;
        let mut request = Request::new(Full::new(body.clone()));
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        // The current span's trace context, so the owner's spans join the caller's trace.
        crate::telemetry::inject_current(headers);
        let mut nonce = None;
        if let Some(secret) = &inner.secret {
            // Signed for the path exactly as it goes on the wire.
            let signed =
                secret.sign_request(method.as_str(), &inner.authority, path.as_str(), body);
            nonce = insert_signed(headers, signed);
        }
        if !body.is_empty() || *method == Method::PUT || *method == Method::POST {
            headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(CONTENT_TYPE),
            );
        }
        let response = inner.http.send(request).await.map_err(|e| match e {
            HttpError::ConnectTimeout(timeout) => Retry::No(PeerError::Timeout {
                peer: inner.base.clone(),
                timeout,
            }),
            _ => Retry::Reset(PeerError::Unreachable {
                peer: inner.base.clone(),
                message: e.to_string(),
            }),
        })?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let answer_signature = answer_signature(response.headers());
        let body = PeerHttp::read_body(response, limit)
            .await
            .map_err(|e| match e {
                HttpError::TooLarge(_) => self.bad_answer(e.to_string()),
                HttpError::Send(_) | HttpError::ConnectTimeout(_) | HttpError::Body(_) => {
                    PeerError::Unreachable {
                        peer: inner.base.clone(),
                        message: e.to_string(),
                    }
                }
            })?;
        // A member that does not know the secret can answer, but not sign: its answer, a
        // success or a refusal, is not used (the caller loads locally instead).
        if let (Some(secret), Some(nonce)) = (&inner.secret, &nonce)
            && !secret.check_answer(nonce, status.as_u16(), &body, answer_signature.as_deref())
        {
            tracing::warn!(peer = %inner.base, status = status.as_u16(), "an answer without a valid signature; not used");
            return Err(Retry::No(PeerError::Unsigned {
                peer: inner.base.clone(),
            }));
        }
        if status.is_success() {
            return Ok(body);
        }
        let (code, message) = match proto::ErrorInfo::decode(body.clone()) {
            Ok(info) if !info.code.is_empty() => (info.code, info.message),
            _ => (
                "unknown".to_string(),
                String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            ),
        };
        let peer = inner.base.clone();
        if let (StatusCode::UNAUTHORIZED, Some(wait)) = (status, retry_after) {
            return Err(Retry::After(
                wait,
                PeerError::Unauthorized { peer, message },
            ));
        }
        Err(Retry::No(if status == StatusCode::UNAUTHORIZED {
            PeerError::Unauthorized { peer, message }
        } else {
            PeerError::Status {
                peer,
                status: status.as_u16(),
                code,
                message,
            }
        }))
    }

    fn decode<M: Message + Default>(&self, body: Bytes) -> Result<M, PeerError> {
        M::decode(body).map_err(|e| self.bad_answer(e.to_string()))
    }

    fn entry(&self, entry: proto::Entry) -> Result<PeerEntry, PeerError> {
        PeerEntry::try_from(entry).map_err(|e| self.bad_answer(e))
    }

    fn bad_answer(&self, message: impl Into<String>) -> PeerError {
        PeerError::Decode {
            peer: self.inner.base.clone(),
            message: message.into(),
        }
    }
}

/// How one attempt of a request failed.
#[derive(Debug)]
enum Retry {
    /// For good.
    No(PeerError),
    /// No answer (refused, reset, closed): worth one more attempt at once, on another
    /// connection; the error if it is not made.
    Reset(PeerError),
    /// Refused as signed too early: worth one more attempt, signed anew, after this wait; the
    /// error if it is not made.
    After(Duration, PeerError),
}

impl Retry {
    fn into_error(self) -> PeerError {
        match self {
            Retry::No(e) | Retry::Reset(e) | Retry::After(_, e) => e,
        }
    }
}

/// Puts the headers of [`ClusterSecret::sign_request`] on a request; returns its nonce, which
/// the answer's signature covers (see [`answer_signature`]).
pub(crate) fn insert_signed(
    headers: &mut HeaderMap,
    signed: [(&'static str, String); 4],
) -> Option<String> {
    let mut nonce = None;
    for (name, value) in signed {
        if name == auth::NONCE_HEADER {
            nonce = Some(value.clone());
        }
        // The values are digits, dots and hex: always valid header values.
        if let Ok(value) = header::HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    }
    nonce
}

/// The answer's [`auth::ANSWER_SIGNATURE_HEADER`], for [`ClusterSecret::check_answer`].
pub(crate) fn answer_signature(headers: &HeaderMap) -> Option<String> {
    headers
        .get(auth::ANSWER_SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The wait a `Retry-After` header asks for, capped: dates are whole seconds, so one second
/// (and a little) is always enough.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs.min(1)) + Duration::from_millis(50))
}

impl From<PeerError> for Retry {
    fn from(e: PeerError) -> Retry {
        Retry::No(e)
    }
}

/// `/_geecache/{group}/_batch` or `/_invalidate`.
fn action_path(group: &str, action: &str) -> String {
    format!("{PATH_PREFIX}/{}/{action}", encode_segment(group))
}

/// An error and its causes on one line: an HTTP client's own message rarely says what failed.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a cause, as the HTTP client wraps the connector's.
    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Wrapped(#[source] Box<dyn std::error::Error + Send + Sync>);

    #[test]
    fn connect_timeouts_are_told_apart_from_other_failures() {
        let ours = Wrapped(Box::new(ConnectTimeout(Duration::from_secs(1))));
        assert!(is_connect_timeout(&ours, true));
        assert!(is_connect_timeout(&ours, false));
        let tcp = Wrapped(Box::new(Wrapped(Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "tcp connect error",
        )))));
        assert!(is_connect_timeout(&tcp, true));
        // An I/O timeout after the connect (reading the answer) is not one.
        assert!(!is_connect_timeout(&tcp, false));
        let refused = Wrapped(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(!is_connect_timeout(&refused, true));
    }
}
