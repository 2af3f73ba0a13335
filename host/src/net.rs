//! The plumbing under every outbound HTTP client of the node: the peer protocol's pool
//! (`peer/http.rs`) and the plugins' outbound `wasi:http` (`plugin/caps/http/`), and
//! the TLS roots a client trusts when the operator gave none. Below both, so the peer and
//! plugin modules are siblings that share it; it imports no module of this crate.
//!
//! - [`bounded_connector`]: hyper-rustls over a TCP connector set up as every client of the
//!   node connects (no Nagle, keep-alive, user timeout), with one bound on a whole connect
//!   ([`BoundedConnector`], [`ConnectTimeout`]);
//! - [`platform_tls`]: rustls checking servers against the system's certificate store.

use std::time::Duration;

use hyper::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

/// TCP keep-alive probes on every outbound connection: a server that vanished without closing (its
/// machine lost power) is noticed on an idle pooled connection after about a minute.
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);

/// How long sent data may stay unacknowledged before the connection is dropped (Linux
/// `TCP_USER_TIMEOUT`): a server that vanished mid-answer is given up on, not retransmitted to
/// for a quarter of an hour.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether `e` (of a request whose connect failed, when `connecting`) is a connect timeout:
/// ours (the whole connect), or the TCP connector's (its share of the timeout for each of a
/// name's addresses, all of which timed out).
pub fn is_connect_timeout(e: &(dyn std::error::Error + 'static), connecting: bool) -> bool {
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
pub struct ConnectTimeout(Duration);

/// hyper-rustls's connector with one bound on a whole connect: name resolution, TCP and the
/// TLS handshake. The pool may finish a connect in the background once its request went on
/// another connection, and a connect that stalls (a peer that answers the SYN and nothing
/// more) must not hold a task and a socket until the kernel gives up.
///
/// Generic over the connector it bounds: the plugins' outbound HTTP (`plugin/caps/http/`) bounds
/// one whose resolver checks addresses.
#[derive(Debug, Clone)]
pub struct BoundedConnector<C = HttpsConnector<HttpConnector>> {
    inner: C,
    timeout: Duration,
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

/// rustls checking servers against the platform's roots (the system's certificate store); on
/// a system without CA certificates, against none, and the log says so with `consequence`.
pub fn platform_tls(consequence: &str) -> rustls::ClientConfig {
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
pub fn bounded_connector<R>(
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
