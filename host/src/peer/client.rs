//! The client side of the peer protocol: one [`PeerClient`] per remote node.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use reqwest::{Method, StatusCode, Url, header};

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

/// Idle keep-alive connections kept per peer: as many as requests an owner serves at once
/// ([`super::DEFAULT_PEER_CONCURRENCY`]), since HTTP/1.1 needs one connection per request in
/// flight. With fewer, every request past the pool's size under load would open a new
/// connection and close it afterwards (a connect per request, and sockets in `TIME_WAIT`).
/// Idle connections are only those a past peak opened, and close after reqwest's idle timeout
/// (90 s).
pub const POOL_MAX_IDLE_PER_PEER: usize = super::DEFAULT_PEER_CONCURRENCY;

/// The HTTP client peer calls go through (one per node, shared by its peer clients): a pool of
/// keep-alive connections ([`POOL_MAX_IDLE_PER_PEER`] per peer, `TCP_NODELAY` set: answers are
/// small and latency-bound), connects bounded by `connect_timeout`, and never a proxy, whatever
/// `HTTP_PROXY`/`ALL_PROXY` say: peers talk to each other directly, and a proxy would see the
/// cluster's traffic (and could replay it).
///
/// # Errors
/// When reqwest cannot build a client (its TLS setup failed).
pub fn http_client(connect_timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    http_client_with_tls(connect_timeout, None)
}

/// [`http_client`] whose `https://` peers are checked with `tls` (`--peer-ca`) rather than the
/// system's roots.
///
/// # Errors
/// As [`http_client`].
pub fn http_client_with_tls(
    connect_timeout: Duration,
    tls: Option<rustls::ClientConfig>,
) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_PEER)
        // reqwest's default, said here because the latency of every peer call depends on it.
        .tcp_nodelay(true)
        .no_proxy();
    if let Some(tls) = tls {
        builder = builder.tls_backend_preconfigured(tls);
    }
    builder.build()
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
    http: reqwest::Client,
    /// `http://host:port`, no trailing slash; request paths are appended to it.
    base: String,
    /// `base` parsed once: each request's URL is a copy with its path set, so the scheme and
    /// host are not parsed again per request (that was ~3% of a loaded node's CPU).
    base_url: Url,
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
    http: Option<reqwest::Client>,
    /// See [`PeerClientBuilder::max_response_bytes`].
    max_response_bytes: usize,
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

    /// Largest answer body to read ([`DEFAULT_MAX_RESPONSE_BYTES`] by default); a longer one
    /// fails the call with [`PeerError::Decode`] without being read further.
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }

    /// Sign every request with `secret` (none by default).
    pub fn secret(mut self, secret: Option<ClusterSecret>) -> Self {
        self.secret = secret;
        self
    }

    /// Use this HTTP client (and its connection pool) instead of a new one, e.g. one client for
    /// every peer of a node. Its own timeouts still apply; the builder's is set per request.
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
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
        let base_url = Url::parse(&base).map_err(|e| invalid(e.to_string()))?;
        let authority = auth::authority_of(&base);
        let http = match self.http {
            Some(http) => http,
            None => http_client(self.timeout).map_err(|e| invalid(error_chain(&e)))?,
        };
        Ok(PeerClient {
            inner: Arc::new(Inner {
                http,
                base,
                base_url,
                authority,
                secret: self.secret,
                timeout: self.timeout,
                write_timeout: self.write_timeout.unwrap_or(self.timeout),
                max_response_bytes: self.max_response_bytes,
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
            .send(Method::GET, key_path(group, key), Vec::new())
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
        self.send(Method::PUT, key_path(group, key), body).await?;
        Ok(())
    }

    /// Removes `key` at its owner (which then invalidates other nodes' copies).
    ///
    /// # Errors
    /// Any [`PeerError`].
    pub async fn delete(&self, group: &str, key: &str) -> Result<(), PeerError> {
        self.send(Method::DELETE, key_path(group, key), Vec::new())
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
                .send(Method::POST, path.clone(), request.encode_to_vec())
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
            self.send(Method::POST, path.clone(), request.encode_to_vec())
                .await?;
        }
        Ok(())
    }

    /// Sends one request (signed when there is a secret) and returns the body of a 2xx answer.
    ///
    /// A peer that refuses the request with 401 and `Retry-After` (it was signed just before
    /// the peer started, see [`auth`]) gets it once more, signed anew, a second later; one
    /// whose connection failed or was reset (a pooled connection it closed while restarting
    /// or draining) gets it once more at once, on a new connection.
    async fn send(&self, method: Method, path: String, body: Vec<u8>) -> Result<Bytes, PeerError> {
        // Shared, not copied, if it has to be sent again.
        let body = Bytes::from(body);
        match self.send_once(method.clone(), &path, &body).await {
            Err(Retry::After(wait, _)) => {
                tokio::time::sleep(wait).await;
                self.send_once(method, &path, &body)
                    .await
                    .map_err(Retry::into_error)
            }
            other => other.map_err(Retry::into_error),
        }
    }

    /// One attempt of [`PeerClient::send`].
    async fn send_once(&self, method: Method, path: &str, body: &Bytes) -> Result<Bytes, Retry> {
        let inner = &*self.inner;
        let timeout = inner.timeout_of(&method);
        let url = if path.contains(['?', '#']) {
            Url::parse(&format!("{}{path}", inner.base)).map_err(|e| PeerError::InvalidAddress {
                addr: inner.base.clone(),
                message: e.to_string(),
            })?
        } else {
            let mut url = inner.base_url.clone();
            url.set_path(path);
            url
        };
        let mut request = inner
            .http
            .request(method.clone(), url.clone())
            .timeout(timeout);
        // The current span's trace context, so the owner's spans join the caller's trace.
        let mut trace = reqwest::header::HeaderMap::new();
        crate::telemetry::inject_current(&mut trace);
        if !trace.is_empty() {
            request = request.headers(trace);
        }
        if let Some(secret) = &inner.secret {
            // Sign the path exactly as it goes on the wire: as the URL parser left it.
            let sent = match url.query() {
                Some(query) => format!("{}?{query}", url.path()),
                None => url.path().to_string(),
            };
            let signed = secret.sign_request(method.as_str(), &inner.authority, &sent, body);
            for (name, value) in signed {
                request = request.header(name, value);
            }
        }
        if !body.is_empty() || method == Method::PUT || method == Method::POST {
            request = request
                .header(header::CONTENT_TYPE, CONTENT_TYPE)
                .body(body.clone());
        }
        let response = request.send().await.map_err(|e| {
            let error = self.transport(&e, timeout);
            // A pooled connection the peer closed (it restarted, or drains to stop), or a
            // reset: once more on a fresh connection, at once. Every peer request is
            // idempotent (gets, sets of one value, deletes, invalidations).
            if !e.is_timeout() && (e.is_connect() || e.is_request()) {
                Retry::After(Duration::ZERO, error)
            } else {
                Retry::No(error)
            }
        })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            // Dates are whole seconds: one second (and a little) is always enough.
            .map(|secs| Duration::from_secs(secs.min(1)) + Duration::from_millis(50));
        let body = self.read_body(response, timeout).await?;
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

    /// Reads an answer body, refusing one over the limit (announced or actual) without
    /// buffering it.
    async fn read_body(
        &self,
        mut response: reqwest::Response,
        timeout: Duration,
    ) -> Result<Bytes, PeerError> {
        let limit = self.inner.max_response_bytes;
        let too_large = || self.bad_answer(format!("answer is larger than {limit} bytes"));
        if response
            .content_length()
            .is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX))
        {
            return Err(too_large());
        }
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport(&e, timeout))?
        {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
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

    /// Classifies a reqwest error of a request bounded by `timeout`: timeout, or unreachable
    /// (refused, reset, closed).
    fn transport(&self, e: &reqwest::Error, timeout: Duration) -> PeerError {
        let peer = self.inner.base.clone();
        if e.is_timeout() {
            PeerError::Timeout { peer, timeout }
        } else {
            PeerError::Unreachable {
                peer,
                message: error_chain(e),
            }
        }
    }
}

/// How one attempt of a request failed.
#[derive(Debug)]
enum Retry {
    /// For good.
    No(PeerError),
    /// Worth one more attempt, signed anew, after this wait; the error if it is not made.
    After(Duration, PeerError),
}

impl Retry {
    fn into_error(self) -> PeerError {
        match self {
            Retry::No(e) | Retry::After(_, e) => e,
        }
    }
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

/// An error and its causes on one line: reqwest's own message rarely says what failed.
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
