//! TLS (rustls) for the node's port, which serves clients and peers alike, and for the peer
//! client.
//!
//! - Server: `--tls-cert` (a PEM chain, leaf first) and `--tls-key` (a PEM private key). The
//!   certificate is served through a resolver that [`ServerTls::reload`] swaps (SIGHUP), so a
//!   renewed certificate takes effect for new connections while open ones go on. A handshake
//!   runs on the connection's own task, not in the accept loop, and must finish within
//!   [`HANDSHAKE_TIMEOUT`].
//! - Peers: `--peer-ca` (PEM certificates) is what a node trusts when it calls a peer whose
//!   advertised address is `https://...`; a peer whose certificate another CA signed is
//!   refused (the request fails and the key is loaded locally, as for any failed owner).
//! - Mutual TLS (`--peer-mtls`): a node also shows its own certificate when it calls a peer,
//!   and takes peer requests only on connections whose client certificate `--peer-ca` signed
//!   and names the host of a ring member (as a node's certificate must, to serve its advertised
//!   address), so another holder of a certificate from the same CA is not a peer. Clients of
//!   the API need none: the handshake accepts connections without a client certificate, and
//!   the peer routes check [`PeerIdentity`].

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the node's certificate and key are (`--tls-cert`, `--tls-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Reads a certificate and key pair into what rustls serves.
fn load_key_pair(files: &TlsFiles) -> Result<Arc<CertifiedKey>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("--tls-cert {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {}: no PEM certificate in it",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("--tls-key {}: {e}", files.key.display()))?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("--tls-key {}: {e}", files.key.display()))?;
    let pair = CertifiedKey::new(certs, signing);
    pair.keys_match().map_err(|e| {
        format!(
            "--tls-key {} does not belong to --tls-cert {}: {e}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    Ok(Arc::new(pair))
}

/// Serves the current certificate; [`ServerTls::reload`] swaps it.
#[derive(Debug)]
struct Resolver {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The same certificate, shown to peers as a client (mutual TLS); renewed with it.
impl rustls::client::ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The certificates in a PEM file, as trust roots (`flag` names the setting in messages).
pub(crate) fn roots(path: &Path, flag: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "{flag} {}: no usable PEM certificate in it",
            path.display()
        ));
    }
    Ok(roots)
}

/// The node's TLS server side: configuration and the reloadable certificate.
#[derive(Clone)]
pub struct ServerTls {
    /// Where the certificate and key are read from.
    files: TlsFiles,
    /// The certificate being served.
    resolver: Arc<Resolver>,
    /// Accepts connections with it.
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the certificate and key.
    ///
    /// # Errors
    /// A file that cannot be read or parsed, or a key that does not match the certificate.
    pub fn load(files: TlsFiles) -> Result<ServerTls, String> {
        ServerTls::load_with_client_ca(files, None)
    }

    /// [`ServerTls::load`] that also asks connecting clients for a certificate, and verifies
    /// one that is shown against the CA(s) in `client_ca` (mutual TLS between peers; clients
    /// without a certificate are still served).
    ///
    /// # Errors
    /// As [`ServerTls::load`]; or `client_ca` holds no certificate.
    pub fn load_with_client_ca(
        files: TlsFiles,
        client_ca: Option<&Path>,
    ) -> Result<ServerTls, String> {
        let resolver = Arc::new(Resolver {
            current: ArcSwap::new(load_key_pair(&files)?),
        });
        let builder = rustls::ServerConfig::builder();
        let builder = match client_ca {
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots(
                    ca,
                    "--peer-ca",
                )?))
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("--peer-ca {}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls {
            files,
            resolver,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Reads the certificate and key again (SIGHUP): new connections get the new certificate,
    /// open ones are not touched. On an error the old certificate stays.
    ///
    /// # Errors
    /// As [`ServerTls::load`].
    pub fn reload(&self) -> Result<(), String> {
        let pair = load_key_pair(&self.files)?;
        self.resolver.current.store(pair);
        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
        Ok(())
    }

    /// The certificate chain served now (leaf first), DER.
    pub fn current_chain(&self) -> Vec<CertificateDer<'static>> {
        self.resolver.current.load().cert.clone()
    }
}

/// The TLS client configuration of peer calls: trusts the certificates in `ca` (PEM) only;
/// with `identity`, shows that node's certificate to the peer (mutual TLS).
///
/// # Errors
/// The file cannot be read or holds no certificate.
pub fn peer_client_config(
    ca: &Path,
    identity: Option<&ServerTls>,
) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots(ca, "--peer-ca")?);
    Ok(match identity {
        Some(tls) => builder.with_client_cert_resolver(tls.resolver.clone()),
        None => builder.with_no_client_auth(),
    })
}

/// The certificate a connection's client showed, which `--peer-ca` signed (mutual TLS): the
/// connection info of a TLS listener, read by the peer routes. Clones share one connection's.
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity {
    /// Set once the handshake is done: the certificate, if the client showed one.
    shown: Arc<OnceLock<Option<CertificateDer<'static>>>>,
    /// The last answer of [`PeerIdentity::member_of`]: `version << 1 | member`, 0 for none.
    member: Arc<AtomicU64>,
}

impl PeerIdentity {
    /// Whether the client showed a verified certificate (known once the handshake is done,
    /// which it is by the time a request arrives on the connection).
    pub fn verified(&self) -> bool {
        self.shown.get().is_some_and(Option::is_some)
    }

    /// Runs `check` with the names of the client's verified certificate (parsed for it),
    /// or gives `None` when the client showed none or it does not parse.
    pub fn with_names<R>(&self, check: impl FnOnce(&CertNames<'_>) -> R) -> Option<R> {
        let Some(Some(der)) = self.shown.get() else {
            return None;
        };
        let cert = webpki::EndEntityCert::try_from(der).ok()?;
        Some(check(&CertNames(cert)))
    }

    /// The identity of a connection whose client showed `certificate` (tests of the peer
    /// routes, which have no TLS connection).
    #[cfg(test)]
    pub(crate) fn showing(certificate: CertificateDer<'static>) -> PeerIdentity {
        let identity = PeerIdentity::default();
        let _ = identity.shown.set(Some(certificate));
        identity
    }

    /// Whether the certificate passes `check` (false without one), asked once per connection
    /// for each `version` of what it is checked against (the ring's, which changes only with
    /// membership): a connection's next requests reuse the answer instead of parsing the
    /// certificate again. `version` must not be 0.
    pub fn member_of(&self, version: u64, check: impl FnOnce(&CertNames<'_>) -> bool) -> bool {
        let last = self.member.load(Ordering::Acquire);
        if last != 0 && last >> 1 == version {
            return last & 1 == 1;
        }
        let member = self.with_names(check) == Some(true);
        self.member
            .store(version << 1 | u64::from(member), Ordering::Release);
        member
    }
}

/// A client certificate, parsed, to check the hosts it is valid for.
pub struct CertNames<'a>(webpki::EndEntityCert<'a>);

impl CertNames<'_> {
    /// Whether the certificate is valid for `host` (a DNS name or an IP address), as a server
    /// certificate for that host would be checked.
    pub fn include(&self, host: &str) -> bool {
        ServerName::try_from(host)
            .is_ok_and(|name| self.0.verify_is_valid_for_subject_name(&name).is_ok())
    }
}

impl std::fmt::Debug for CertNames<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertNames").finish_non_exhaustive()
    }
}

/// A listener whose connections speak TLS: `accept` returns at once, and the handshake runs
/// when the connection is first read or written (on its own task).
pub struct TlsListener<L> {
    /// The plain listener.
    inner: L,
    /// Its TLS side.
    acceptor: tokio_rustls::TlsAcceptor,
}

impl<L: std::fmt::Debug> std::fmt::Debug for TlsListener<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<L> TlsListener<L> {
    /// `inner`'s connections, with TLS from `tls`.
    pub fn new(inner: L, tls: &ServerTls) -> Self {
        TlsListener {
            inner,
            acceptor: tls.acceptor.clone(),
        }
    }
}

impl<L> axum::serve::Listener for TlsListener<L>
where
    L: axum::serve::Listener,
{
    type Io = TlsConnection<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.inner.accept().await;
        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(io));
        (
            TlsConnection {
                state: State::Handshaking(Box::pin(handshake)),
                client: PeerIdentity::default(),
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

type Handshake<IO> = Pin<Box<tokio::time::Timeout<tokio_rustls::Accept<IO>>>>;

/// Where a connection's TLS stands.
enum State<IO> {
    /// The handshake is under way.
    Handshaking(Handshake<IO>),
    /// Ready.
    Streaming(Box<tokio_rustls::server::TlsStream<IO>>),
    /// The handshake failed; every operation fails.
    Failed,
}

/// A server-side TLS connection whose handshake completes on first use.
pub struct TlsConnection<IO> {
    state: State<IO>,
    /// Set when the handshake is done: the certificate the client showed, if any (which the
    /// verifier checked: an unverifiable one fails the handshake).
    client: PeerIdentity,
}

impl<IO> TlsConnection<IO> {
    /// Who the client is: known once the handshake is done, which it is by the time a request
    /// arrives on the connection.
    pub fn identity(&self) -> PeerIdentity {
        self.client.clone()
    }

    /// The connection TLS runs over (`None` once its handshake has failed).
    pub fn inner(&self) -> Option<&IO> {
        match &self.state {
            State::Handshaking(handshake) => handshake.get_ref().get_ref(),
            State::Streaming(stream) => Some(stream.get_ref().0),
            State::Failed => None,
        }
    }
}

impl<IO> std::fmt::Debug for TlsConnection<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Handshaking(_) => "handshaking",
            State::Streaming(_) => "streaming",
            State::Failed => "failed",
        };
        f.debug_struct("TlsConnection")
            .field("state", &state)
            .finish()
    }
}

impl<IO> TlsConnection<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    /// Drives the handshake; `Ready(Ok(stream))` once it is done.
    fn stream(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<&mut tokio_rustls::server::TlsStream<IO>>> {
        if let State::Handshaking(handshake) = &mut self.state {
            let done = match handshake.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Ok(stream))) => Ok(stream),
                Poll::Ready(Ok(Err(e))) => Err(e),
                Poll::Ready(Err(_elapsed)) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                )),
            };
            match done {
                Ok(stream) => {
                    let shown = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|leaf| leaf.clone().into_owned());
                    let _ = self.client.shown.set(shown);
                    self.state = State::Streaming(Box::new(stream));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    self.state = State::Failed;
                    return Poll::Ready(Err(e));
                }
            }
        }
        match &mut self.state {
            State::Streaming(stream) => Poll::Ready(Ok(stream)),
            _ => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the TLS handshake failed",
            ))),
        }
    }
}

use std::future::Future as _;

impl<IO> AsyncRead for TlsConnection<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().stream(cx) {
            Poll::Ready(Ok(stream)) => Pin::new(stream).poll_read(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<IO> AsyncWrite for TlsConnection<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream(cx) {
            Poll::Ready(Ok(stream)) => Pin::new(stream).poll_write(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream(cx) {
            Poll::Ready(Ok(stream)) => Pin::new(stream).poll_flush(cx),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream(cx) {
            Poll::Ready(Ok(stream)) => Pin::new(stream).poll_shutdown(cx),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// An identity whose client showed a (self-signed) certificate for `names`.
    fn showing(names: &[&str]) -> PeerIdentity {
        let names = names.iter().map(|n| (*n).to_string()).collect::<Vec<_>>();
        let cert = rcgen::generate_simple_self_signed(names).unwrap().cert;
        PeerIdentity::showing(cert.der().clone().into_owned())
    }

    #[test]
    fn membership_is_checked_once_per_connection_and_ring_version() {
        let identity = showing(&["node-a.example"]);
        let checks = Cell::new(0);
        let is_member = |host: &'static str| {
            let checks = &checks;
            move |names: &CertNames<'_>| {
                checks.set(checks.get() + 1);
                names.include(host)
            }
        };
        assert!(identity.member_of(1, is_member("node-a.example")));
        // The same ring: the answer is kept, whatever the check would say now.
        assert!(identity.member_of(1, is_member("node-b.example")));
        assert!(identity.clone().member_of(1, is_member("node-b.example")));
        assert_eq!(checks.get(), 1);
        // The ring changed (node-a left): checked again.
        assert!(!identity.member_of(2, is_member("node-b.example")));
        assert!(!identity.member_of(2, is_member("node-a.example")));
        assert_eq!(checks.get(), 2);
    }

    #[test]
    fn without_a_certificate_no_one_is_a_member() {
        let identity = PeerIdentity::default();
        assert!(!identity.member_of(1, |_| true));
        identity.shown.set(None).unwrap();
        assert!(!identity.member_of(2, |_| true));
    }
}
