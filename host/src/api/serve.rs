//! Serving accepted connections: hyper's HTTP/1.1 on each, on a task of its own, answered by
//! a hyper service made for that connection; and a graceful stop.
//!
//! This is what `axum::serve` did for the node, without what its per-connection loop costs on
//! every request: hyper-util's protocol-sniffing builder, a `select!` against a shutdown `watch`
//! shared by every connection (whose `Notify` takes a lock when polled), and a tower-to-hyper
//! adapter that clones the service and boxes the body of every request (the `geecache-perf
//! http` baselines that showed the difference are in docs/performance.md). The node only ever spoke
//! HTTP/1.1: axum's `http2` feature was never on, and TLS offers only `http/1.1` by ALPN.
//!
//! The stop: once `signal` resolves, no connection is accepted any more; each open one is
//! told to finish the request it is in and close (hyper's graceful shutdown: an idle
//! keep-alive connection closes at once); [`serve`] returns when every connection has closed.
//! Each connection has its own one-shot stop signal, so that polling a connection never
//! touches anything another connection shares.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

/// The stop signals of the open connections, by connection number.
type Stops = Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>;

/// Serves the connections `listener` accepts, each answered by the service `per_connection`
/// makes for it, until `signal` resolves; then stops as the module doc says and returns when
/// the last connection has closed.
pub async fn serve<L, S, F>(
    mut listener: L,
    mut per_connection: F,
    signal: impl Future<Output = ()>,
) where
    L: Listener,
    F: FnMut(&L::Io) -> S,
    S: hyper::service::Service<
            axum::http::Request<Incoming>,
            Response = Response,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let stops: Stops = Arc::default();
    // Every connection's task holds a sender; `recv` ends once all are dropped.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    let mut signal = std::pin::pin!(signal);
    let mut next: u64 = 0;
    loop {
        let (io, _addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut signal => break,
        };
        let service = per_connection(&io);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let id = next;
        next = next.wrapping_add(1);
        stops.lock().insert(id, stop_tx);
        let stops = Arc::clone(&stops);
        let open = open_tx.clone();
        tokio::spawn(async move {
            // One flat write per answer (head and body copied into one buffer) rather than a
            // vectored write of the two: answers are small, and five alternating pairs of hit
            // runs were all faster flat (89–103k hits/s against 75–98k, node system time
            // 6.7–7.9 µs per hit against 7.2–9.4).
            let conn = hyper::server::conn::http1::Builder::new()
                .writev(false)
                .serve_connection(TokioIo::new(io), service);
            let mut conn = std::pin::pin!(conn);
            let served = tokio::select! {
                biased;
                served = conn.as_mut() => served,
                _ = stop_rx => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = served {
                tracing::trace!(error = %e, "connection ended with an error");
            }
            stops.lock().remove(&id);
            drop(open);
        });
    }
    drop(listener);
    for (_, stop) in stops.lock().drain() {
        let _ = stop.send(());
    }
    drop(open_tx);
    let _ = open_rx.recv().await;
}

/// An axum [`Router`] as a hyper service (what the baseline server of `geecache-perf` serves
/// with [`serve`], so that it runs on the node's own HTTP stack).
#[derive(Clone, Debug)]
pub struct RouterService(pub Router);

impl hyper::service::Service<axum::http::Request<Incoming>> for RouterService {
    type Response = Response;
    type Error = Infallible;
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn call(&self, req: axum::http::Request<Incoming>) -> Self::Future {
        tower::Service::call(&mut self.0.clone(), req.map(Body::new))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Semaphore;

    use super::*;

    /// Answers `/slow` once the gate has a permit, anything else at once.
    #[derive(Clone)]
    struct Gated(Arc<Semaphore>);

    impl hyper::service::Service<axum::http::Request<Incoming>> for Gated {
        type Response = Response;
        type Error = Infallible;
        type Future =
            std::pin::Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send + 'static>>;

        fn call(&self, req: axum::http::Request<Incoming>) -> Self::Future {
            let gate = Arc::clone(&self.0);
            Box::pin(async move {
                let body = if req.uri().path() == "/slow" {
                    let _permit = gate.acquire().await.expect("gate open");
                    "slow done"
                } else {
                    "fast"
                };
                Ok(Response::new(Body::from(body)))
            })
        }
    }

    async fn send(stream: &mut TcpStream, path: &str) {
        let request = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
    }

    /// Reads until the buffer holds an answer ending in `body` (or the peer closes).
    async fn read_answer(stream: &mut TcpStream, body: &str) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&got).ends_with(body) {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "closed before the answer: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_finishes_requests_in_flight_closes_idle_connections_and_refuses_new_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let gate = Arc::new(Semaphore::new(0));
        let service = Gated(Arc::clone(&gate));
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let served = tokio::spawn(serve(listener, move |_| service.clone(), async move {
            let _ = stop_rx.await;
        }));

        // One connection with a request in flight, one idle after an answer (keep-alive).
        let mut busy = TcpStream::connect(addr).await.expect("connect");
        send(&mut busy, "/slow").await;
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        send(&mut idle, "/fast").await;
        let answer = read_answer(&mut idle, "fast").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // The slow request has reached the service: it waits on the gate.
        tokio::time::sleep(Duration::from_millis(100)).await;

        stop_tx.send(()).expect("serve is running");

        // The idle connection is closed by the node.
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest))
            .await
            .expect("the idle connection closes")
            .expect("read");
        assert_eq!(n, 0, "nothing more on the idle connection");
        // No new connection is served (refused once the listener is gone).
        let mut refused = false;
        for _ in 0..50 {
            if TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(refused, "new connections are refused after the stop");
        // The request in flight keeps serve running, then gets its answer.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !served.is_finished(),
            "serve waits for the request in flight"
        );
        gate.add_permits(1);
        let answer = read_answer(&mut busy, "slow done").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("serve returns once every connection has closed")
            .expect("serve did not panic");
    }
}
