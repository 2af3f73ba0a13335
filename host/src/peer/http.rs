//! The HTTP client under the peer protocol ([`PeerHttp`]): hyper's pooled HTTP/1.1 client with
//! bounded connects, TCP keep-alive and user timeout, `TCP_NODELAY`, rustls for `https://`
//! peers, and no proxy. Shared by a node's peer clients and the cluster's admin requests. The
//! connector and the TLS roots under it are [`crate::net`]'s, shared with the plugins' HTTP.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::net::{BoundedConnector, bounded_connector, is_connect_timeout, platform_tls};

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

/// The HTTP client peer calls go through (one per node, shared by its peer clients and the
/// cluster's admin requests). Cheap to clone; clones share the pool.
///
/// It is hyper's pooled HTTP/1.1 client, with nothing between it and the peer protocol:
/// keep-alive connections (as many idle per peer as an owner serves requests at once),
/// `TCP_NODELAY` (answers are small and latency-bound), TCP keep-alive, connects bounded by a
/// timeout, `https://` peers through rustls. It never goes through a proxy, whatever
/// `HTTP_PROXY`/`ALL_PROXY` say: peers talk to each other directly, and a proxy would see the
/// cluster's traffic (and could replay it). (Not reqwest: its URL, redirect-policy and pool
/// layers cost CPU on every forwarded get and do nothing for peers.)
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
