//! The plugin admin API: what is loaded, and hot reload on this node or across the cluster.
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/v1/plugins` | `{"plugins": [...]}`: name, kind, version, SHA-256, source, loaded-at, reloads, call counters |
//! | `GET /api/v1/plugins/{name}` | one of them |
//! | `POST /api/v1/plugins/{name}/reload[?path=P][&flush=true][&cluster=true]` | a new version: the request's body (a component, up to `--max-plugin-bytes`), else the file `P`, else the plugin's own file read again |
//!
//! A reload is an admin route: closed unless `--admin-token` is set, and then it needs that
//! token (see `access.rs`). A body must be sent as `Content-Type: application/wasm` (else 415
//! `unsupported_media_type`). `?path=` may name only a regular file inside `--reload-dir`,
//! of at most `--max-plugin-bytes` (checked before it is read; a FIFO or a device is refused);
//! without `--reload-dir` it is refused, and every refusal of a path reads the same (403
//! `forbidden`), so an answer never tells whether a file exists outside that directory. It
//! answers 200 with what was
//! swapped in (`version`, `sha256`, the previous ones), 404 `plugin_not_found`, or 422
//! `plugin_refused` with the reason (the old version keeps serving). `flush=true` then drops
//! the values the groups the getter loads for hold, in memory and in their storage tier (see
//! [`Group::flush`]); the answer names them in `flushed_groups`, and lists in
//! `storage_not_cleared` (`{"group", "error": {"code", "message"}}`) each whose storage tier
//! was not cleared (a storage plugin built without `storage-clear`, one that failed, or one
//! still clearing at the request timeout). After a cluster rollout with `flush=true`, every
//! node drops those groups' hot copies once more (see `flush::hot_pass`).
//!
//! `cluster=true` rolls the version out to every ring member in two phases, over signed
//! requests to [`PEER_PREFIX`] (so it needs `--cluster-secret`): first every node (this one
//! included) compiles and checks the component and keeps it staged; only when all of them have
//! it does every node swap it in. If any node refuses it or cannot be reached, every node drops
//! what it staged and keeps serving the old version: no node is left unable to load what the
//! others run. The answer lists every node's result. Why HTTP rather than an etcd key that
//! nodes watch: it works with static `--peers` as well as etcd, the caller gets every node's
//! result in the answer, and the bytes travel with the request, so nodes need no shared disk.
//!
//! [`Group::flush`]: crate::group::Group::flush

use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::fanout::{NodeAnswer, ask, detached, verified_admin_request};
use super::{ApiError, AppState, error_response};
use crate::error::Error;
use crate::plugin::registry::sha256_hex;
use crate::plugin::{Candidate, LoadedPlugin, PluginEntry, ReloadReport};

/// Where the cluster rollout's peer routes live: `{PEER_PREFIX}{name}/{stage|commit|abort}`.
/// Outside `/_geecache/`, so the peer protocol's routing and limits do not apply.
pub(crate) const PEER_PREFIX: &str = "/_geecache_admin/plugins/";

/// How long a node may take to receive, compile and check a staged component (a cold compile
/// of a large component takes seconds).
const STAGE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a commit or an abort may take on a node (a swap: no compile; a flush's storage
/// clear waits up to the request timeout on top, see `commit_timeout`).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// One plugin, as `GET /api/v1/plugins` shows it.
#[derive(Debug, Serialize)]
pub struct PluginView {
    /// The name it reports (what groups and this API call it).
    name: String,
    /// The operator's name for it (what its grants are bound to).
    alias: String,
    /// getter, storage or compressor.
    kind: String,
    /// The version it reports.
    version: String,
    /// Hex SHA-256 of its component.
    sha256: String,
    /// The file it came from, or `upload`.
    source: String,
    /// When the serving version was loaded (RFC 3339, UTC).
    loaded_at: String,
    /// The same, in ms since the Unix epoch.
    loaded_at_unix_ms: u64,
    /// Versions swapped in since the node started.
    reloads: u64,
    /// Reloads refused.
    reload_failures: u64,
    /// Calls started (across versions).
    calls: u64,
    /// Calls that trapped.
    traps: u64,
    /// Calls stopped at the time limit.
    timeouts: u64,
    /// Calls stopped at the memory cap.
    memory_limits: u64,
    /// Errors the plugin reported.
    reported_errors: u64,
    /// Wall time in calls, seconds.
    busy_seconds: f64,
    /// Log records dropped past a call's log budget.
    logs_dropped: u64,
    /// Warm instances of the serving version.
    idle_instances: usize,
    /// For a storage plugin: whether the serving version exports `storage-clear`, so a flush
    /// can empty it.
    #[serde(skip_serializing_if = "Option::is_none")]
    can_clear: Option<bool>,
}

fn view(entry: &PluginEntry) -> PluginView {
    let info = entry.info();
    let snapshot = entry.snapshot();
    let (idle_instances, can_clear) = match entry.slot.current() {
        LoadedPlugin::Getter(p) => (p.idle_instances(), None),
        LoadedPlugin::Storage(p) => (p.idle_instances(), Some(p.can_clear())),
        LoadedPlugin::Compressor(p) => (p.idle_instances(), None),
    };
    PluginView {
        name: entry.name.clone(),
        alias: entry.alias.clone(),
        kind: entry.kind.to_string(),
        version: info.version.clone(),
        sha256: info.sha256.clone(),
        source: info.source.to_string(),
        loaded_at: humantime::format_rfc3339_seconds(info.loaded_at).to_string(),
        loaded_at_unix_ms: info
            .loaded_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        reloads: snapshot.reloads,
        reload_failures: snapshot.reload_failures,
        calls: snapshot.calls,
        traps: snapshot.traps,
        timeouts: snapshot.timeouts,
        memory_limits: snapshot.memory_limits,
        reported_errors: snapshot.reported_errors,
        busy_seconds: snapshot.busy_seconds,
        logs_dropped: snapshot.logs_dropped,
        idle_instances,
        can_clear,
    }
}

/// `GET /api/v1/plugins`.
pub(super) async fn list(State(state): State<AppState>) -> Json<serde_json::Value> {
    let plugins: Vec<PluginView> = state.plugins().iter().map(|e| view(e)).collect();
    Json(serde_json::json!({ "plugins": plugins }))
}

/// `GET /api/v1/plugins/{name}`.
pub(super) async fn show(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PluginView>, ApiError> {
    Ok(Json(view(state.plugins().get(&name)?)))
}

/// Query of the reload route.
#[derive(Debug, Deserialize)]
pub(super) struct ReloadQuery {
    /// Read the new version from this file (on this node).
    path: Option<String>,
    /// Drop the values the groups of this getter hold, in memory and in their storage tier.
    #[serde(default)]
    flush: bool,
    /// Roll out to every ring member.
    #[serde(default)]
    cluster: bool,
}

/// Flushes every group whose getter is `plugin` (memory and storage tier, see
/// [`Group::flush`]); the answer's `flushed_groups` (their names) and `storage_not_cleared`
/// (`{"group", "error"}` for each group whose storage tier keeps its entries).
///
/// [`Group::flush`]: crate::group::Group::flush
async fn flush_groups(state: &AppState, plugin: &str) -> serde_json::Value {
    let groups: Vec<_> = state
        .groups()
        .iter()
        .filter(|g| g.getter_name() == plugin)
        .cloned()
        .collect();
    let results = futures::future::join_all(groups.iter().map(|g| g.flush())).await;
    let mut flushed = Vec::new();
    let mut not_cleared = Vec::new();
    for (g, result) in groups.iter().zip(results) {
        flushed.push(g.name().to_string());
        match result {
            Ok(()) => {
                tracing::info!(group = %g.name(), %plugin, "group flushed after its getter was reloaded");
            }
            Err(e) => {
                tracing::warn!(group = %g.name(), %plugin, error = %e, "group flushed after its getter was reloaded, but its storage tier keeps its entries");
                not_cleared.push(serde_json::json!({
                    "group": g.name(),
                    "error": { "code": e.code(), "message": e.public_message() },
                }));
            }
        }
    }
    serde_json::json!({ "flushed_groups": flushed, "storage_not_cleared": not_cleared })
}

/// The answer of one node's reload: its report, and what a flush did.
async fn reload_answer(
    state: &AppState,
    name: &str,
    report: ReloadReport,
    flush: bool,
) -> serde_json::Value {
    let mut answer = if flush {
        flush_groups(state, name).await
    } else {
        serde_json::json!({ "flushed_groups": [], "storage_not_cleared": [] })
    };
    answer["reload"] = serde_json::json!(report);
    answer
}

/// `POST /api/v1/plugins/{name}/reload`.
pub(super) async fn reload(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<ReloadQuery>, QueryRejection>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| Error::BadRequest(e.body_text()))?;
    // A body past --max-plugin-bytes (one sent without a length, cut as it streams) is our JSON
    // 413, as every other error, not the extractor's plain text.
    let body = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            Error::BodyTooLarge {
                limit: state.inner.options.max_plugin_bytes,
            }
        } else {
            Error::BadRequest(e.body_text())
        }
    })?;
    // From here on it runs to its end even if the client goes away (a rollout half done would
    // leave the cluster on mixed versions).
    detached("reload", reload_detached(state, name, q, headers, body)).await
}

/// The part of [`reload`] that outlives its client.
async fn reload_detached(
    state: AppState,
    name: String,
    q: ReloadQuery,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let wasm = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/wasm"));
    if !body.is_empty() && !wasm {
        return Ok(error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the component with Content-Type: application/wasm".into(),
        ));
    }
    let candidate = match (q.path, body.is_empty()) {
        (Some(_), false) => {
            return Err(Error::BadRequest(
                "give the new component as the body or as ?path=, not both".into(),
            )
            .into());
        }
        (Some(path), true) => Candidate::File(reload_path(&state, path).await?),
        (None, false) => Candidate::Bytes(body),
        (None, true) => Candidate::SameFile,
    };
    if q.cluster {
        return rollout(&state, &name, candidate, q.flush).await;
    }
    let report = state.plugins().reload(&name, candidate).await?;
    Ok(Json(reload_answer(&state, &name, report, q.flush).await).into_response())
}

/// How long a node's commit may take: the swap, plus its groups' storage clears after a flush
/// (each waits up to the group's request timeout; nodes are assumed configured alike).
fn commit_timeout(state: &AppState) -> Duration {
    let clear = state
        .groups()
        .iter()
        .map(|g| g.options().load_timeout)
        .max()
        .unwrap_or_default();
    COMMIT_TIMEOUT.saturating_add(clear)
}

fn error_value(e: &Error) -> serde_json::Value {
    serde_json::json!({ "code": e.code(), "message": e.public_message() })
}

/// `reload?cluster=true`: stage on every member, then commit on every member (or abort on
/// every member if any could not stage).
async fn rollout(
    state: &AppState,
    name: &str,
    candidate: Candidate,
    flush: bool,
) -> Result<Response, ApiError> {
    let cluster = state.inner.cluster.clone();
    if !cluster.is_signed() || state.inner.peer_auth.is_none() {
        return Err(Error::Forbidden(
            "a cluster rollout needs --cluster-secret: nodes take plugin components only from \
             signed requests"
                .into(),
        )
        .into());
    }
    let plugins = state.plugins().clone();
    let entry = plugins.get(name)?.clone();
    let bytes = match candidate {
        Candidate::Bytes(bytes) => bytes,
        Candidate::File(path) => read(state, path).await?,
        Candidate::SameFile => read(state, entry.path()).await?,
    };
    let sha256 = sha256_hex(&bytes);
    let self_addr = cluster.self_addr().to_string();
    let peers = cluster.other_members();
    tracing::info!(plugin = %name, %sha256, nodes = peers.len() + 1, "plugin rollout: staging on every node");

    // Phase 1: every node compiles, checks and stages the component.
    let stage_path = format!("{PEER_PREFIX}{name}/stage?sha256={sha256}");
    let local = async {
        plugins
            .stage(name, bytes.clone(), &sha256)
            .await
            .map(|()| serde_json::json!({}))
            .map_err(|e| error_value(&e))
    };
    let remote = futures::future::join_all(
        peers
            .iter()
            .map(|p| ask(state, p, &stage_path, bytes.clone(), STAGE_TIMEOUT)),
    );
    let (local, remote) = tokio::join!(local, remote);
    let reload_of =
        |r: Result<serde_json::Value, serde_json::Value>| r.map(|v| v.get("reload").cloned());
    let staged = NodeAnswer::all(
        "reload",
        (&self_addr, reload_of(local)),
        &peers,
        remote.into_iter().map(reload_of).collect(),
    );

    if !staged.iter().all(NodeAnswer::ok) {
        // Someone could not: drop it everywhere; the old version keeps serving everywhere.
        let abort_path = format!("{PEER_PREFIX}{name}/abort?sha256={sha256}");
        plugins.abort_staged(name, &sha256);
        futures::future::join_all(
            peers
                .iter()
                .map(|p| ask(state, p, &abort_path, Bytes::new(), COMMIT_TIMEOUT)),
        )
        .await;
        tracing::warn!(plugin = %name, %sha256, "plugin rollout refused: not every node could load it; nothing changed");
        let body = serde_json::json!({
            "error": {
                "code": "rollout_refused",
                "message": format!("not every node could load the new version of {name}; every node keeps the old one"),
            },
            "committed": false,
            "nodes": staged,
        });
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response());
    }

    // Phase 2: every node swaps it in.
    let commit_path = format!("{PEER_PREFIX}{name}/commit?sha256={sha256}&flush={flush}");
    let local = async {
        match plugins.commit_staged(name, &sha256).await {
            Ok(report) => Ok(reload_answer(state, name, report, flush).await),
            Err(e) => Err(error_value(&e)),
        }
    };
    let remote = futures::future::join_all(
        peers
            .iter()
            .map(|p| ask(state, p, &commit_path, Bytes::new(), commit_timeout(state))),
    );
    let (local, remote) = tokio::join!(local, remote);
    if flush {
        // Hot copies fetched from an owner that had not flushed yet go too.
        let groups: Vec<_> = state
            .groups()
            .iter()
            .filter(|g| g.getter_name() == name)
            .cloned()
            .collect();
        super::flush::hot_pass(state, &groups, &peers).await;
    }
    let committed = NodeAnswer::all(
        "reload",
        (&self_addr, reload_of(local)),
        &peers,
        remote.into_iter().map(reload_of).collect(),
    );
    let all = committed.iter().all(NodeAnswer::ok);
    tracing::info!(plugin = %name, %sha256, complete = all, "plugin rollout committed");
    let body = serde_json::json!({
        "plugin": name,
        "sha256": sha256,
        "committed": true,
        "complete": all,
        "nodes": committed,
    });
    // A node lost between the phases missed the swap: 502, so the caller retries it.
    let status = if all {
        StatusCode::OK
    } else {
        StatusCode::BAD_GATEWAY
    };
    Ok((status, Json(body)).into_response())
}

/// Reads a component file for a rollout, off the serving threads (a regular file of at most
/// `--max-plugin-bytes`, which is what a rollout may send).
async fn read(state: &AppState, path: std::path::PathBuf) -> Result<Bytes, Error> {
    let max = state.inner.options.max_plugin_bytes as u64;
    tokio::task::spawn_blocking(move || {
        crate::plugin::read_component(&path, max)
            .map(Bytes::from)
            .map_err(|e| Error::PluginRefused(format!("cannot read {}: {e}", path.display())))
    })
    .await
    .map_err(|e| Error::Internal(format!("reading a plugin file failed: {e}")))?
}

/// The file a reload's `?path=` names, once checked (see the module docs): canonical, inside
/// `--reload-dir`, a regular file of at most `--max-plugin-bytes`.
///
/// # Errors
/// 403 `forbidden` for every path refused (one message, whatever the reason), 413 when the
/// file inside the directory is too large.
async fn reload_path(state: &AppState, given: String) -> Result<std::path::PathBuf, Error> {
    let Some(dir) = state.inner.options.access.reload_dir.clone() else {
        return Err(Error::Forbidden(
            "reload by ?path= is off: start the node with --reload-dir DIR, and name a file \
             inside it (or send the component as the body)"
                .into(),
        ));
    };
    let max = state.inner.options.max_plugin_bytes;
    tokio::task::spawn_blocking(move || {
        let refused = || {
            Error::Forbidden(format!(
                "?path= must name a regular file inside --reload-dir ({})",
                dir.display()
            ))
        };
        let path = std::fs::canonicalize(dir.join(&given)).map_err(|_| refused())?;
        if !path.starts_with(&dir) {
            return Err(refused());
        }
        let meta = std::fs::metadata(&path).map_err(|_| refused())?;
        if !meta.is_file() {
            return Err(refused());
        }
        if meta.len() > max as u64 {
            return Err(Error::BodyTooLarge { limit: max });
        }
        Ok(path)
    })
    .await
    .map_err(|e| Error::Internal(format!("checking a plugin path failed: {e}")))?
}

/// Query of the rollout's peer routes.
#[derive(Debug, Deserialize)]
struct PeerQuery {
    sha256: String,
    #[serde(default)]
    flush: bool,
}

/// `POST {PEER_PREFIX}{name}/{stage|commit|abort}`: one node's part of a rollout, asked by
/// another node. Signed with the cluster secret (checked before the body is read).
pub(super) async fn peer_op(
    State(state): State<AppState>,
    Path((name, op)): Path<(String, String)>,
    req: Request,
) -> Response {
    match peer_op_inner(&state, &name, &op, req).await {
        Ok(answer) => Json(answer).into_response(),
        Err(response) => response,
    }
}

async fn peer_op_inner(
    state: &AppState,
    name: &str,
    op: &str,
    req: Request,
) -> Result<serde_json::Value, Response> {
    let fail = |e: Error| ApiError(e).into_response();
    let limit = state.inner.options.max_plugin_bytes;
    let (parts, body) = verified_admin_request(state, req, limit, "plugin rollout").await?;
    let query: PeerQuery = serde_urlencoded_query(parts.uri.query()).map_err(fail)?;
    let plugins = state.plugins();
    match op {
        "stage" => {
            plugins
                .stage(name, body, &query.sha256)
                .await
                .map_err(fail)?;
            Ok(serde_json::json!({ "staged": query.sha256 }))
        }
        "commit" => {
            let report = plugins
                .commit_staged(name, &query.sha256)
                .await
                .map_err(fail)?;
            Ok(reload_answer(state, name, report, query.flush).await)
        }
        "abort" => Ok(serde_json::json!({ "aborted": plugins.abort_staged(name, &query.sha256) })),
        other => Err(fail(Error::BadRequest(format!(
            "no rollout operation {other:?}; expected stage, commit or abort"
        )))),
    }
}

/// The rollout query of a peer request.
fn serde_urlencoded_query(query: Option<&str>) -> Result<PeerQuery, Error> {
    let uri: axum::http::Uri = format!("/?{}", query.unwrap_or(""))
        .parse()
        .map_err(|e| Error::BadRequest(format!("malformed query: {e}")))?;
    Query::<PeerQuery>::try_from_uri(&uri)
        .map(|Query(q)| q)
        .map_err(|e| Error::BadRequest(e.body_text()))
}
