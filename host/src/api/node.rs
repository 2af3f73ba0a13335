//! The node's own routes: `/api/v1/stats`, `/metrics`, `/api/v1/cluster`, the probes
//! (`/healthz`, `/readyz`), and the check that peer routes come with a ring member's client
//! certificate under `--peer-mtls`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use std::sync::atomic::Ordering;

use super::{ApiError, AppState, Stats, error_response};
use crate::cluster::ClusterSnapshot;
use crate::error::Error;
use crate::telemetry::Metrics;

pub(super) async fn stats(State(state): State<AppState>) -> Json<Stats> {
    Json(state.stats())
}

pub(super) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = state
        .metrics()
        .render(state.stats().samples())
        .map_err(Error::Internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(Metrics::CONTENT_TYPE),
        )],
        text,
    )
        .into_response())
}

pub(super) async fn cluster(State(state): State<AppState>) -> Json<ClusterSnapshot> {
    Json(state.inner.cluster.snapshot())
}

pub(super) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    if state.inner.ready.load(Ordering::SeqCst) {
        Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the node is shutting down".into(),
        )
    }
}

/// With `--peer-mtls`: a peer request must come on a connection whose client showed a
/// certificate `--peer-ca` signed, for the host of a ring member; otherwise it is refused
/// (401) before its signature is checked or its body read. A certificate for no member's host
/// is answered with `Retry-After: 1`: a node that has just joined is a member for the others a
/// moment later (their membership watch), and the peer client retries such a refusal once.
pub(super) async fn require_peer_cert(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let identity = req
        .extensions()
        .get::<axum::extract::ConnectInfo<crate::tls::PeerIdentity>>()
        .map(|info| &info.0);
    let Some(identity) = identity.filter(|i| i.verified()) else {
        return error_response(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "peer requests need a client certificate signed by the cluster's CA (--peer-mtls)"
                .into(),
        );
    };
    // Checked once per connection and ring: the certificate is not parsed per request.
    let cluster = &state.inner.cluster;
    let member = identity.member_of(cluster.ring_version(), |names| {
        cluster.any_member(|addr| names.include(host_of(addr)))
    });
    if !member {
        let mut refused = error_response(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the client certificate names no host of a ring member; peer requests come from \
             ring members only (--peer-mtls)"
                .into(),
        );
        refused
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return refused;
    }
    next.run(req).await
}

/// The host of a member address (`host:port`, `https://host:port`, `[v6]:port`), without
/// brackets.
pub(super) fn host_of(addr: &str) -> &str {
    let authority = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    let authority = authority.split('/').next().unwrap_or(authority);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_host_of_a_member_address() {
        for (addr, host) in [
            ("127.0.0.1:9999", "127.0.0.1"),
            ("https://node-1.example:9999", "node-1.example"),
            ("http://node-1:80/", "node-1"),
            ("[::1]:9999", "::1"),
            ("https://[fd00::2]:443", "fd00::2"),
            ("node-1", "node-1"),
        ] {
            assert_eq!(super::host_of(addr), host, "{addr}");
        }
    }
}
