//! Flushing a group: `POST /api/v1/groups/{group}/flush[?cluster=true]`, an admin route (closed
//! unless `--admin-token` is set, then it needs that token; see `access.rs`).
//!
//! On this node, a flush drops every value the group holds: main and hot cache, and the
//! entries of its storage tier (see [`Group::flush`]). Answer: 200
//! `{"group", "node", "storage": "cleared" | "none"}` (`none`: the group has no storage tier).
//! When the storage tier could not be cleared (a storage plugin built without
//! `storage-clear`, a failing backend), memory is flushed all the same and the answer is the
//! error, whose message says so: 503 `storage_not_cleared`, or 504 `storage_clear_pending`
//! when the clear had not finished within the request timeout (it goes on).
//!
//! A flush on one node of a cluster leaves the copies the other nodes hold (each owns part of
//! the keys and keeps hot copies of others). With `?cluster=true`, every ring member flushes:
//! this node sends each a request signed with the cluster secret (like a plugin rollout's, so
//! it needs `--cluster-secret`) to `{FLUSH_PREFIX}{group}`. Answer:
//! `{"group", "complete", "nodes": [{"node", "ok", "answer" or "error"}]}`, 200 when every
//! node flushed, 502 otherwise (flushing again is harmless).
//!
//! The nodes flush at about the same time, not at once: a node that has flushed may fetch a
//! key from its owner that has not yet, and keep that old value as a hot copy. So once every
//! node has answered, a second pass (`?hot=true`) drops every node's hot copies again (see
//! [`Group::flush_hot`]); by then every owner has flushed. A plugin rollout with `flush=true`
//! ends with the same pass ([`hot_pass`]).
//!
//! [`Group::flush`]: crate::group::Group::flush
//! [`Group::flush_hot`]: crate::group::Group::flush_hot

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;

use super::fanout::{NodeAnswer, ask, detached, verified_admin_request};
use super::{ApiError, AppState, error_response};
use crate::error::Error;
use crate::group::Group;

/// Where the cluster flush's requests between nodes go: `{FLUSH_PREFIX}{group}`. Outside
/// `/_geecache/`, so the peer protocol's routing and limits do not apply.
pub(crate) const FLUSH_PREFIX: &str = "/_geecache_admin/flush/";

/// How long a node may take to flush, on top of its storage clear (which waits up to the
/// group's request timeout).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Query of `POST {FLUSH_PREFIX}{group}` (a node's part of a cluster flush).
#[derive(Debug, Default, Deserialize)]
struct PeerFlushQuery {
    /// The second pass: drop hot copies only.
    #[serde(default)]
    hot: bool,
}

/// Query of `POST /api/v1/groups/{group}/flush`.
#[derive(Debug, Deserialize)]
pub(super) struct FlushQuery {
    /// Flush on every ring member.
    #[serde(default)]
    cluster: bool,
}

/// Why a node's flush did not clear the storage tier: the status and the error's JSON
/// (`{"code", "message"}`).
type NotCleared = (StatusCode, serde_json::Value);

/// Flushes `group` on this node: its answer, or the error (memory is flushed either way).
async fn flush_here(state: &AppState, group: &Group) -> Result<serde_json::Value, NotCleared> {
    let node = state.inner.cluster.self_addr().to_string();
    match group.flush().await {
        Ok(()) => {
            tracing::info!(group = %group.name(), "group flushed");
            let storage = if group.storage_name().is_some() {
                "cleared"
            } else {
                "none"
            };
            Ok(serde_json::json!({ "group": group.name(), "node": node, "storage": storage }))
        }
        Err(e) => {
            tracing::warn!(group = %group.name(), error = %e, "group flushed in memory, not in its storage tier");
            let status =
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let message = format!("the group's memory was flushed, but {}", e.public_message());
            Err((
                status,
                serde_json::json!({ "code": e.code(), "message": message }),
            ))
        }
    }
}

/// The HTTP answer of a flush on this node.
fn answer_of(flushed: Result<serde_json::Value, NotCleared>) -> Response {
    match flushed {
        Ok(answer) => Json(answer).into_response(),
        Err((status, error)) => {
            let text = |k: &str| error[k].as_str().unwrap_or_default().to_owned();
            error_response(status, &text("code"), text("message"))
        }
    }
}

/// `POST /api/v1/groups/{group}/flush[?cluster=true]`.
pub(super) async fn flush(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<FlushQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(|e| Error::BadRequest(e.body_text()))?;
    let Query(query) = query.map_err(|e| Error::BadRequest(e.body_text()))?;
    let group = state.groups().get(&name)?.clone();
    if !query.cluster {
        return Ok(answer_of(flush_here(&state, &group).await));
    }
    let cluster = state.inner.cluster.clone();
    if !cluster.is_signed() || state.inner.peer_auth.is_none() {
        return Err(Error::Forbidden(
            "a cluster flush needs --cluster-secret: nodes take admin requests from other \
             nodes only when signed"
                .into(),
        )
        .into());
    }
    detached("cluster flush", cluster_flush(state, group)).await
}

/// `flush?cluster=true`: every member flushes, then every node drops its hot copies again.
async fn cluster_flush(
    state: AppState,
    group: std::sync::Arc<Group>,
) -> Result<Response, ApiError> {
    let name = group.name().to_owned();
    let cluster = state.inner.cluster.clone();
    let self_addr = cluster.self_addr().to_string();
    let peers = cluster.other_members();
    let path = format!("{FLUSH_PREFIX}{}", percent_encode(&name));
    let timeout = FLUSH_TIMEOUT.saturating_add(group.options().load_timeout);
    let local = async { flush_here(&state, &group).await.map_err(|(_, error)| error) };
    let remote = futures::future::join_all(
        peers
            .iter()
            .map(|p| ask(&state, p, &path, Bytes::new(), timeout)),
    );
    let (local, remote) = tokio::join!(local, remote);
    let nodes = NodeAnswer::all(
        "answer",
        (&self_addr, local.map(Some)),
        &peers,
        remote.into_iter().map(|r| r.map(Some)).collect(),
    );
    hot_pass(&state, &[group], &peers).await;
    let complete = nodes.iter().all(NodeAnswer::ok);
    tracing::info!(group = %name, complete, nodes = nodes.len(), "cluster flush");
    let status = if complete {
        StatusCode::OK
    } else {
        StatusCode::BAD_GATEWAY
    };
    let body = serde_json::json!({ "group": name, "complete": complete, "nodes": nodes });
    Ok((status, Json(body)).into_response())
}

/// The second pass of a cluster flush of `groups`, once every node has flushed: this node and
/// every one of `peers` drop their hot copies of them (best effort: a node that misses it keeps
/// such a copy for at most its `GroupOptions::hot_ttl`, as after a lost invalidation).
pub(super) async fn hot_pass(state: &AppState, groups: &[std::sync::Arc<Group>], peers: &[String]) {
    for group in groups {
        group.flush_hot();
        let path = format!("{FLUSH_PREFIX}{}?hot=true", percent_encode(group.name()));
        let answers = futures::future::join_all(
            peers
                .iter()
                .map(|p| ask(state, p, &path, Bytes::new(), FLUSH_TIMEOUT)),
        )
        .await;
        for (peer, answer) in peers.iter().zip(answers) {
            if let Err(error) = answer {
                tracing::warn!(group = %group.name(), %peer, %error, "a node missed the hot-copy pass of a cluster flush");
            }
        }
    }
}

/// A group name as one path segment.
fn percent_encode(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `POST {FLUSH_PREFIX}{group}`: this node's part of a cluster flush, asked by another node.
/// Signed with the cluster secret (checked before anything is done).
pub(super) async fn peer_flush(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    req: Request,
) -> Response {
    let parts = match verified_admin_request(&state, req, 0, "cluster flush").await {
        Ok((parts, _)) => parts,
        Err(response) => return response,
    };
    let hot = match Query::<PeerFlushQuery>::try_from_uri(&parts.uri) {
        Ok(Query(q)) => q.hot,
        Err(e) => return ApiError(Error::BadRequest(e.body_text())).into_response(),
    };
    let group = match path {
        Ok(Path(name)) => state.groups().get(&name).cloned(),
        Err(e) => Err(Error::BadRequest(e.body_text())),
    };
    let group = match group {
        Ok(group) => group,
        Err(e) => return ApiError(e).into_response(),
    };
    if hot {
        group.flush_hot();
        return Json(serde_json::json!({ "group": group.name(), "hot": "flushed" }))
            .into_response();
    }
    answer_of(flush_here(&state, &group).await)
}
