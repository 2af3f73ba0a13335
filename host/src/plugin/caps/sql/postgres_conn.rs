//! How the host connects to a getter's Postgres server: its own TCP (or Unix socket) dial and
//! TLS, with a reader under tokio-postgres that refuses a message longer than the cap as soon as
//! its 5-byte header arrives, before a byte of its body is buffered (tokio-postgres would
//! otherwise buffer a message whole, up to Postgres' 1 GB, and then copy it); and the cancel
//! request for a query whose call was abandoned.
//!
//! The reader knows the protocol's framing (a type byte and a 4-byte length that counts itself)
//! and where it does not apply: the server's one-byte answer to an `SSLRequest`, and TLS records
//! (the stream inside TLS is checked instead).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use deadpool_postgres::Connect;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::Host;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How long a cancel request for an abandoned query may take, dial included.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// The first 8 bytes a client sends to ask for TLS (length 8, code 80877103).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// The first byte of a TLS handshake record (a direct TLS connection).
const TLS_HANDSHAKE: u8 = 0x16;

/// Messages longer than this are counted as large: the connection's read buffer has grown to
/// hold one, and keeps that capacity, so such a connection is closed after its query rather
/// than pooled (16 pooled connections could otherwise each hold a buffer of the memory cap).
pub const LARGE_MESSAGE: u64 = 1 << 20;

/// What the connections of one pool have seen, all together: a query compares the counts
/// before and after it (another query's message may be counted too, which only closes a
/// connection that could have been pooled).
#[derive(Debug, Default)]
pub struct Seen {
    /// Messages refused for their length (the connection ended there).
    pub too_large: AtomicU64,
    /// Messages over [`LARGE_MESSAGE`] taken.
    pub large: AtomicU64,
}

/// A message the server began that is longer than the cap; the connection ends there.
#[derive(Debug, thiserror::Error)]
#[error(
    "the server sent a message of {len} bytes, over the {max}-byte cap (the plugin's memory cap)"
)]
pub struct MessageTooLarge {
    /// The message's length, as its header says.
    len: u64,
    /// The cap.
    max: u64,
}

/// Dials a plugin's Postgres server for its pool, every connection under the message cap.
#[derive(Clone)]
pub struct Connector {
    /// TLS as the URL says; a server's certificate is always verified.
    tls: MakeRustlsConnect,
    /// The longest message the server may send.
    max_message: u64,
    /// What the pool's connections have seen (a query compares it before and after).
    pub seen: Arc<Seen>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("max_message", &self.max_message)
            .finish_non_exhaustive()
    }
}

/// The byte stream to the server, before TLS.
pub enum Wire {
    /// A TCP connection.
    Tcp(tokio::net::TcpStream),
    /// A Unix socket (a `host` that is a directory).
    Unix(tokio::net::UnixStream),
    /// A dial that failed: every read and write fails with its error (taken once), which is
    /// how it reaches tokio-postgres, whose error type only it can build.
    Failed(Option<io::Error>),
}

impl Wire {
    fn failure(error: &mut Option<io::Error>) -> io::Error {
        error
            .take()
            .unwrap_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Wire::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Wire::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Wire::Failed(e) => Poll::Ready(Err(Wire::failure(e))),
        }
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Wire::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Wire::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Wire::Failed(e) => Poll::Ready(Err(Wire::failure(e))),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Wire::Tcp(s) => Pin::new(s).poll_flush(cx),
            Wire::Unix(s) => Pin::new(s).poll_flush(cx),
            Wire::Failed(e) => Poll::Ready(Err(Wire::failure(e))),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Wire::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Wire::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Wire::Failed(_) => Poll::Ready(Ok(())),
        }
    }
}

impl Connector {
    /// A connector with TLS `tls` whose connections refuse messages longer than `max_message`.
    pub fn new(tls: rustls::ClientConfig, max_message: usize) -> Connector {
        Connector {
            tls: MakeRustlsConnect::new(tls),
            max_message: max_message as u64,
            seen: Arc::default(),
        }
    }

    /// The first host of `config` and its port, the name TLS checks, and its stream (or the
    /// dial's error as a stream that fails).
    async fn dial(config: &tokio_postgres::Config) -> (String, Wire) {
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(2));
        let host = config.get_hosts().first().cloned();
        let (name, dialled) = match host {
            Some(Host::Unix(dir)) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                let dialled = tokio::time::timeout(timeout, tokio::net::UnixStream::connect(path))
                    .await
                    .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()));
                (String::new(), dialled.map(Wire::Unix))
            }
            tcp => {
                let name = match tcp {
                    Some(Host::Tcp(name)) => name,
                    _ => "localhost".to_owned(),
                };
                let dialled = tokio::time::timeout(
                    timeout,
                    tokio::net::TcpStream::connect((name.as_str(), port)),
                )
                .await
                .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
                .inspect(|s| {
                    let _ = s.set_nodelay(true);
                });
                (name, dialled.map(Wire::Tcp))
            }
        };
        (name, dialled.unwrap_or_else(|e| Wire::Failed(Some(e))))
    }

    /// TLS for the server `name`, its inner stream under the cap.
    fn tls_for(&self, name: &str) -> CappedTls {
        // A name rustls cannot take (a Unix socket has none) fails only if TLS is asked for.
        let inner = MakeTlsConnect::<Capped<Wire>>::make_tls_connect(
            &mut self.tls.clone(),
            if name.is_empty() { "localhost" } else { name },
        )
        .ok();
        CappedTls {
            inner,
            max_message: self.max_message,
            seen: Arc::clone(&self.seen),
        }
    }

    /// Asks the server to stop the query `token`'s connection runs, in the background; bounded
    /// by [`CANCEL_TIMEOUT`]. Does nothing outside a tokio runtime.
    pub fn cancel(&self, config: &tokio_postgres::Config, token: tokio_postgres::CancelToken) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (connector, config) = (self.clone(), config.clone());
        runtime.spawn(async move {
            let cancelled = tokio::time::timeout(CANCEL_TIMEOUT, async {
                let (name, stream) = Connector::dial(&config).await;
                let stream = Capped::new(stream, connector.max_message, Arc::clone(&connector.seen));
                token.cancel_query_raw(stream, connector.tls_for(&name)).await
            })
            .await;
            if let Ok(Err(e)) = cancelled {
                tracing::debug!(error = %crate::error::chain(&e), "cancelling an abandoned Postgres query failed");
            }
        });
    }
}

impl Connect for Connector {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> BoxFuture<
        '_,
        Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        let config = config.clone();
        Box::pin(async move {
            let (name, stream) = Connector::dial(&config).await;
            let stream = Capped::new(stream, self.max_message, Arc::clone(&self.seen));
            let (client, connection) = config.connect_raw(stream, self.tls_for(&name)).await?;
            let task = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %crate::error::chain(&e), "a Postgres connection ended");
                }
            });
            Ok((client, task))
        })
    }
}

/// Where a [`Capped`] stream is in the protocol.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// Nothing written yet: the first bytes say whether TLS is asked for.
    Start,
    /// An `SSLRequest` went out: the server's one-byte answer is not framed.
    SslAnswer,
    /// TLS records: passed through (the stream inside TLS is checked).
    Tls,
    /// Messages: `have` bytes of the current 5-byte header seen, then `left` bytes of its body.
    Messages {
        /// The header so far.
        header: [u8; 5],
        /// How much of it.
        have: usize,
        /// Body bytes still to come.
        left: u64,
    },
}

impl Framing {
    const MESSAGES: Framing = Framing::Messages {
        header: [0; 5],
        have: 0,
        left: 0,
    };
}

/// A stream from the server whose messages may be at most `max_message` bytes long.
pub struct Capped<S> {
    /// The stream.
    inner: S,
    /// Where the stream is.
    framing: Framing,
    /// The longest message allowed (its length field counts itself).
    max_message: u64,
    /// Where refused and large messages are counted.
    seen: Arc<Seen>,
}

impl<S> Capped<S> {
    fn new(inner: S, max_message: u64, seen: Arc<Seen>) -> Capped<S> {
        Capped {
            inner,
            framing: Framing::Start,
            max_message,
            seen,
        }
    }

    /// Follows the framing through `bytes` just read; an error when a message is too long.
    fn scan(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        let Framing::Messages { header, have, left } = &mut self.framing else {
            return Ok(());
        };
        while !bytes.is_empty() {
            if *left > 0 {
                let n = (*left).min(bytes.len() as u64);
                *left -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            header[*have] = bytes[0];
            *have += 1;
            bytes = &bytes[1..];
            if *have == header.len() {
                *have = 0;
                let len = u64::from(u32::from_be_bytes([
                    header[1], header[2], header[3], header[4],
                ]));
                if len > LARGE_MESSAGE {
                    self.seen.large.fetch_add(1, Ordering::Relaxed);
                }
                if len > self.max_message {
                    self.seen.too_large.fetch_add(1, Ordering::Relaxed);
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        MessageTooLarge {
                            len,
                            max: self.max_message,
                        },
                    ));
                }
                *left = len.saturating_sub(4);
            }
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Framing::SslAnswer = self.framing {
            let mut one = [0u8; 1];
            let mut answer = ReadBuf::new(&mut one);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut answer))?;
            if let [byte] = answer.filled() {
                let byte = *byte;
                buf.put_slice(&[byte]);
                self.framing = if byte == b'S' {
                    Framing::Tls
                } else {
                    Framing::MESSAGES
                };
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let (this, filled) = (&mut *self, buf.filled());
        Poll::Ready(this.scan(&filled[before..]))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let (Framing::Start, Some(&first)) = (self.framing, buf.first()) {
            self.framing = if buf.starts_with(&SSL_REQUEST) {
                Framing::SslAnswer
            } else if first == TLS_HANDSHAKE {
                Framing::Tls
            } else {
                Framing::MESSAGES
            };
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: TlsStream + Unpin> TlsStream for Capped<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

/// rustls over a [`Capped`] stream, the stream inside it capped in turn.
pub struct CappedTls {
    /// rustls for the server's name (`None` when the name cannot be one: TLS then fails).
    inner: Option<<MakeRustlsConnect as MakeTlsConnect<Capped<Wire>>>::TlsConnect>,
    /// As [`Capped`].
    max_message: u64,
    /// As [`Capped`].
    seen: Arc<Seen>,
}

type RustlsStream = <MakeRustlsConnect as MakeTlsConnect<Capped<Wire>>>::Stream;

impl TlsConnect<Capped<Wire>> for CappedTls {
    type Stream = Capped<RustlsStream>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = BoxFuture<'static, Result<Self::Stream, Self::Error>>;

    fn connect(self, stream: Capped<Wire>) -> Self::Future {
        Box::pin(async move {
            let inner = self
                .inner
                .ok_or("the server's name cannot be checked by TLS")?;
            let tls = inner
                .connect(stream)
                .await
                .map_err(Into::<Box<dyn std::error::Error + Send + Sync>>::into)?;
            let mut capped = Capped::new(tls, self.max_message, self.seen);
            capped.framing = Framing::MESSAGES;
            Ok(capped)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn a_message_over_the_cap_is_refused_at_its_header_in_any_split() {
        let mut wire = message(b'Z', b"I");
        wire.extend(message(b'D', &[7u8; 60]));
        wire.extend(message(b'D', &[7u8; 100]));
        for chunk in [1, 2, 3, 5, 7, 64, wire.len()] {
            let mut capped = Capped::new((), 64 + 4, Arc::default());
            capped.framing = Framing::MESSAGES;
            let mut fed = 0;
            let mut refused_at = None;
            for piece in wire.chunks(chunk) {
                if let Err(e) = capped.scan(piece) {
                    refused_at = Some(fed);
                    assert!(e.to_string().contains("104 bytes"), "{e}");
                    break;
                }
                fed += piece.len();
            }
            // The third message's header is bytes 71..76: refused with the chunk that ends it,
            // before any byte of its body.
            let at = refused_at.unwrap();
            assert!(
                at <= 75 && at + chunk > 75,
                "chunk {chunk}: refused at {at}"
            );
            assert_eq!(capped.seen.too_large.load(Ordering::Relaxed), 1);
        }
    }
}
