//! Peer calls never go through a proxy, whatever the environment says. A test binary of its
//! own, not a module of tests/it/: it sets `HTTP_PROXY` and friends for the whole process, which
//! no other test may see.

#![allow(clippy::unwrap_used)]
// `set_var` is unsafe because another thread could read the environment at the same time; this
// binary has one test, which sets the variables before it starts anything that reads them.
#![allow(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use geecache_host::group::Groups;
use geecache_host::peer::{self, PeerClient, PeerError};

#[tokio::test(flavor = "current_thread")]
async fn peer_requests_reach_the_peer_even_with_a_dead_proxy_in_the_environment() {
    // A port nothing listens on: a client that honours these variables cannot connect.
    let dead = "http://127.0.0.1:9";
    for name in ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
        unsafe { std::env::set_var(name, dead) };
    }
    for name in ["NO_PROXY", "no_proxy"] {
        unsafe { std::env::remove_var(name) };
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = peer::router(Arc::new(Groups::default()), None);
    tokio::spawn(async move { axum::serve(listener, app).await });

    // The control: an ordinary client goes to the dead proxy, so the variables are in force.
    let ordinary = reqwest::Client::new()
        .get(format!("http://{addr}/_geecache/g/k"))
        .send()
        .await;
    assert!(ordinary.is_err(), "{ordinary:?}");

    // The node's shared peer client (as the cluster builds it) reaches the peer itself: the
    // peer answers 404 for a group it does not serve.
    let http = peer::http_client(Duration::from_secs(5));
    let client = PeerClient::builder(addr.to_string())
        .http_client(http)
        .build()
        .unwrap();
    let err = client.get("g", "k").await.unwrap_err();
    assert!(
        matches!(err, PeerError::Status { status: 404, .. }),
        "{err:?}"
    );
}
