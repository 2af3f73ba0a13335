//! The admin operations between nodes (a plugin rollout's phases, a cluster flush): signed
//! `POST`s outside the peer protocol's routes (`/_geecache_admin/...`), which the node that
//! takes an operator's request sends to every other member. Both ends are here: [`post`]
//! sends one through the [`Exchange`], [`verify_request`] checks one that arrived. What the
//! requests mean is the API's (`api/plugins.rs`, `api/flush.rs`).

use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use hyper::http::uri::PathAndQuery;

use super::auth::{AuthError, ClusterSecret, NodeAuth};
use super::exchange::{Exchange, Failed, Outgoing, Target};
use super::http::PeerHttp;

/// Sends a `POST` of `body` to `path_and_query` on the member at `addr`, signed when there is
/// a `secret`, within `timeout`, and returns the status and body of its answer (at most
/// `max_answer` bytes), whatever the status. A member that refuses the signature as made
/// before it started (`Retry-After`) gets the request once more, signed anew. It is not sent
/// again on a broken connection: a rollout's phase is not repeated blindly.
///
/// # Errors
/// A transport failure, a timeout, or an answer not signed with the secret, as text for an
/// operator, naming `addr`.
pub async fn post(
    http: &PeerHttp,
    secret: Option<&ClusterSecret>,
    addr: &str,
    path_and_query: &str,
    body: Bytes,
    timeout: Duration,
    max_answer: usize,
) -> Result<(u16, Bytes), String> {
    let target = Target::parse(addr).map_err(|e| format!("{addr}: {e}"))?;
    let path = PathAndQuery::try_from(path_and_query).map_err(|e| format!("{addr}: {e}"))?;
    let outgoing = Outgoing {
        method: Method::POST,
        path,
        body,
        headers: &|_| {},
        limit: max_answer,
        timeout,
        retry_broken: false,
    };
    let answer = Exchange { http, secret }
        .send(&target, &outgoing)
        .await
        .map_err(|failed| match failed {
            Failed::Timeout(timeout) => format!("{addr}: no answer within {timeout:?}"),
            Failed::Unreachable(e) | Failed::TooLarge(e) | Failed::InvalidAddress(e) => {
                format!("{addr}: {e}")
            }
            Failed::Unsigned => {
                format!("{addr}: the answer is not signed with the cluster secret; not used")
            }
        })?;
    Ok((answer.status.as_u16(), answer.body))
}

/// Why an admin request that arrived is refused.
#[derive(Debug)]
pub enum Refused {
    /// Its signature is missing, wrong, stale or replayed (401). `retry` when it was signed
    /// before this node started: the same request signed anew will pass (`Retry-After`).
    Unsigned {
        /// The check that failed.
        error: AuthError,
        /// Whether to answer with `Retry-After: 1`.
        retry: bool,
    },
    /// Its body is longer than the limit (413).
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
}

/// Checks an admin request that arrived: its signature with `auth`, before its body is read,
/// then over its body, read up to `limit` bytes. Its parts and body once it checked out.
///
/// # Errors
/// Why it is refused ([`Refused`]).
pub async fn verify_request(
    auth: &NodeAuth,
    request: axum::extract::Request,
    limit: usize,
) -> Result<(axum::http::request::Parts, Bytes), Refused> {
    let (parts, body) = request.into_parts();
    let verified = super::server::verify_signed(
        auth,
        &parts.method,
        &parts.uri,
        &parts.headers,
        &parts.extensions,
    )
    .map_err(|error| Refused::Unsigned {
        retry: matches!(error, AuthError::BeforeStart),
        error,
    })?;
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Refused::TooLarge { limit })?;
    verified
        .check_body(&body)
        .map_err(|error| Refused::Unsigned {
            error,
            retry: false,
        })?;
    Ok((parts, body))
}
