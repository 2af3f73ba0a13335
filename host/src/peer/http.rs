//! The HTTP client under the peer protocol ([`PeerHttp`]): hyper's pooled HTTP/1.1 client with
//! bounded connects, TCP keep-alive and user timeout, `TCP_NODELAY`, rustls for `https://`
//! peers, and no proxy. Shared by a node's peer clients and the cluster's admin requests.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, Uri, header};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

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
                HttpError::Send(crate::error::chain(&e))
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
                Err(e) => return Err(HttpError::Body(crate::error::chain(&*e))),
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
pub(crate) struct ConnectTimeout(Duration);

/// hyper-rustls's connector with one bound on a whole connect: name resolution, TCP and the
/// TLS handshake. The pool may finish a connect in the background once its request went on
/// another connection, and a connect that stalls (a peer that answers the SYN and nothing
/// more) must not hold a task and a socket until the kernel gives up.
///
/// Generic over the connector it bounds: the plugins' outbound HTTP (`plugin/http.rs`) bounds
/// one whose resolver checks addresses.
#[derive(Debug, Clone)]
pub(crate) struct BoundedConnector<C = HttpsConnector<HttpConnector>> {
    pub(crate) inner: C,
    pub(crate) timeout: Duration,
}

impl<C> tower::Service<Uri> for BoundedConnector<C>
where
    C: tower::Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = C::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
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
    let tls = tls.unwrap_or_else(|| platform_tls("https:// peers are trusted only with --peer-ca"));
    let connector = bounded_connector(HttpConnector::new(), tls, connect_timeout);
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

/// rustls checking servers against the platform's roots (the system's certificate store); on
/// a system without CA certificates, against none, and the log says so with `consequence`.
pub(crate) fn platform_tls(consequence: &str) -> rustls::ClientConfig {
    use rustls_platform_verifier::ConfigVerifierExt;
    rustls::ClientConfig::with_platform_verifier().unwrap_or_else(|e| {
        tracing::info!(error = %e, "no system CA certificates: {consequence}");
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    })
}

/// `tcp` (its resolver the caller's) set up as every client of the node connects: no Nagle,
/// TCP keep-alive and user timeout, connects bounded by `connect_timeout` as a whole, `tls`
/// for `https://` and plain `http://` as well.
pub(crate) fn bounded_connector<R>(
    mut tcp: HttpConnector<R>,
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
) -> BoundedConnector<HttpsConnector<HttpConnector<R>>> {
    // The scheme is checked by the TLS layer around it: `http://` and `https://` both pass.
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    tcp.set_keepalive(Some(TCP_KEEPALIVE));
    tcp.set_keepalive_interval(Some(TCP_KEEPALIVE));
    tcp.set_keepalive_retries(Some(3));
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    tcp.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT));
    BoundedConnector {
        inner: hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp),
        timeout: connect_timeout,
    }
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
