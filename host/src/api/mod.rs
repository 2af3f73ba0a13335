//! The HTTP API (axum).
//!
//! | route | answer |
//! |---|---|
//! | `GET /api?key=K[&group=G]` | the raw value (classic GeeCache form; group defaults to the node's default group) |
//! | `GET /api/v1/groups/{group}/keys/{key}` | the raw value; the key is one percent-encoded path segment |
//!
//! Both GETs answer a value cached as gzip or zstd with its stored payload and
//! `Content-Encoding: gzip`/`zstd` when the request's `Accept-Encoding` allows that coding
//! (and always with `Vary: Accept-Encoding`); otherwise with the plain value.
//!
//! | route | answer |
//! |---|---|
//! | `PUT /api/v1/groups/{group}/keys/{key}[?ttl=10m]` | sets the value (raw body) at the key's owner; 204; `ttl` ≤ [`MAX_TTL`] |
//! | `DELETE /api/v1/groups/{group}/keys/{key}` | removes the key at its owner (the next get reloads it); 204 |
//! | `POST /api/v1/groups/{group}/flush[?cluster=true]` | drops every value of the group this node (or every ring member) holds, in memory and in its storage tier (see `api/flush.rs`) |
//! | `POST /api/v1/groups/{group}/batch` | `{"keys": [...]}` → `{"results": [{"key", "value" or "value_base64" or "error"}]}`: each distinct key once, within `--max-batch-bytes` (see [`crate::batch`]) |
//! | `GET /api/v1/cluster` | this node's address, registration state and ring members |
//! | `GET /api/v1/stats` | JSON counters per group and per plugin, ring size, registration state |
//! | `GET /api/v1/plugins[/{name}]` | the loaded plugins: kind, version, SHA-256, source, reloads, counters (see `api/plugins.rs`) |
//! | `POST /api/v1/plugins/{name}/reload` | hot reload of one plugin, on this node or (`?cluster=true`) on every node |
//! | `GET /metrics` | the same counters, latency histograms and gauges in Prometheus text format |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 while serving, 503 while draining for shutdown |
//!
//! Errors are JSON, `{"error": {"code": "...", "message": "..."}}`, with the status of
//! [`Error::status`]: 400 bad input, 401 `unauthorized` (no or wrong API token), 404 no such
//! key/group/route, 405 wrong method, 413 too large (`too_large` for a batch item past the
//! budget), 500 internal, 502/504 a peer failed, 503 plugin failed, 504 timeout. An owner's
//! 400/404/413 is passed on as it is.
//!
//! With `--api-token`, writes need `Authorization: Bearer <token>`, and reads too with
//! `--api-token-reads`; `/healthz` and `/readyz` never do. The admin routes (reload, rollout,
//! flush) are closed unless `--admin-token` is set, and then need that token; a write from a
//! page of another site is refused (see [`Access`]).
//!
//! Every request (peer protocol included) is timed into
//! `geecache_http_request_duration_seconds` by route template, method and status.
//!
//! The server puts a [`Shortcut`] in front of the router: a plain, bodiless
//! `GET /api/v1/groups/{group}/keys/{key}` (the hit path) is answered by the same code without
//! axum's routing and per-route layers.

pub mod conn;
pub mod guard;
pub mod metrics;
pub mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

use crate::batch::{self, Slot};
use crate::cache::Clock as _;
use crate::cluster::metrics::ClusterStats;
use crate::cluster::{Cluster, ClusterSnapshot};
use crate::error::Error;
use crate::group::{Groups, Reply};
use crate::peer::{NodeAuth, PeerLimits, PeerService};
pub use crate::plugin::PluginSnapshot;
use crate::plugin::Plugins;
use crate::telemetry::Metrics;
/// The body of `/api/v1/stats`, also what `/metrics` reports.
pub use stats::Stats;

mod access;
mod flush;
mod plugins;
mod serve;
mod shortcut;
mod timing;
pub use access::{Access, ApiToken, EmptyToken};
pub use serve::{RouterService, serve};
pub use shortcut::Shortcut;

/// The API's limits and access rules (from flags; see `geecache-host --help`).
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Largest request body accepted (API and peer routes).
    pub max_body_bytes: usize,
    /// Byte budget of one batch answer (API and peer batch routes).
    pub max_batch_bytes: usize,
    /// Peer requests served at once; more are refused with 503 rather than queued.
    pub peer_concurrency: usize,
    /// Largest plugin component the reload route (and a cluster rollout) accepts.
    pub max_plugin_bytes: usize,
    /// Mutual TLS between peers: peer routes only on connections that showed a verified
    /// client certificate (see [`crate::tls::PeerIdentity`]).
    pub require_peer_cert: bool,
    /// Who must show the API token.
    pub access: Access,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            max_body_bytes: crate::peer::DEFAULT_MAX_BODY_BYTES,
            max_batch_bytes: batch::DEFAULT_MAX_BATCH_BYTES,
            peer_concurrency: crate::peer::DEFAULT_PEER_CONCURRENCY,
            max_plugin_bytes: 64 << 20,
            require_peer_cert: false,
            access: Access::default(),
        }
    }
}

/// Shared state of every handler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The groups this node serves.
    groups: Groups,
    /// The group `/api?key=K` uses when no `group` is given.
    default_group: String,
    /// Loaded plugins: stats, the admin view, hot reload.
    plugins: Arc<Plugins>,
    /// False once shutdown has begun, so load balancers stop sending traffic.
    ready: AtomicBool,
    /// Body and batch limits, and who must show the API token.
    options: ApiOptions,
    /// The ring and its members, for `/api/v1/cluster`.
    cluster: Arc<Cluster>,
    /// Checks peer requests when the cluster has a secret: made once, when the node starts, so
    /// its nonces and start time are the node's.
    peer_auth: Option<NodeAuth>,
    /// The node's meters: request latencies are recorded here, `/metrics` is rendered from it.
    metrics: Metrics,
    /// What the node's connections did (filled by its listener and in-flight guard).
    connections: Arc<conn::ConnCounters>,
}

impl AppState {
    /// State for a node serving `groups`, answering `/api?key=K` from `default_group`; with
    /// `peer_auth`, peer requests must be signed (for this node; see [`NodeAuth`]).
    pub fn new(
        groups: Groups,
        default_group: String,
        plugins: Arc<Plugins>,
        options: ApiOptions,
        cluster: Arc<Cluster>,
        peer_auth: Option<NodeAuth>,
        metrics: Metrics,
    ) -> Self {
        AppState {
            inner: Arc::new(Inner {
                groups,
                default_group,
                plugins,
                ready: AtomicBool::new(true),
                options,
                cluster,
                peer_auth,
                metrics,
                connections: Arc::default(),
            }),
        }
    }

    /// The node's groups.
    pub fn groups(&self) -> &Groups {
        &self.inner.groups
    }

    /// Marks the node as draining: `/readyz` answers 503 from now on.
    pub fn set_draining(&self) {
        self.inner.ready.store(false, Ordering::SeqCst);
    }

    /// The node's plugins.
    pub fn plugins(&self) -> &Arc<Plugins> {
        &self.inner.plugins
    }

    /// The node's meters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The counters of the node's connections, for its listener and in-flight guard to fill.
    pub fn connections(&self) -> &Arc<conn::ConnCounters> {
        &self.inner.connections
    }

    /// Counters of every group and plugin, the ring's size and the registration state: one
    /// snapshot for `/api/v1/stats` and `/metrics` alike.
    pub fn stats(&self) -> Stats {
        let cluster = &self.inner.cluster;
        Stats {
            groups: self.inner.groups.iter().map(|g| g.snapshot()).collect(),
            plugins: self.inner.plugins.snapshots(),
            cluster: ClusterStats {
                ring_members: cluster.ring_members().len() as u64,
                registration: cluster.registration(),
                registry: cluster.registry_counts(),
            },
            connections: self.inner.connections.snapshot(),
            codec_lane: crate::compression::builtin::lane(),
        }
    }
}

/// An [`Error`] on its way to the client as JSON.
#[derive(Debug)]
pub struct ApiError(pub Error);

/// Runs an admin fan-out (a cluster rollout or flush) as a task of its own, so that a client
/// that disconnects midway does not leave the cluster half done: the task goes on to the end
/// (each of its steps bounded by its own timeout) and logs its outcome; only the answer is
/// lost.
async fn detached(
    what: &'static str,
    work: impl Future<Output = Result<Response, ApiError>> + Send + 'static,
) -> Result<Response, ApiError> {
    match tokio::spawn(work).await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::error!(error = %e, "a {what}'s task failed");
            Err(Error::Internal(format!("the {what} failed; see the node's log")).into())
        }
    }
}

impl<E: Into<Error>> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError(e.into())
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: String,
}

/// Builds the JSON error response for `status`, `code` and `message`.
fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(ErrorBody {
            error: ErrorDetail { code, message },
        }),
    )
        .into_response()
}

/// Logs an error on its way to a client: internals go to the log, never to the client.
fn log_error(e: &Error) {
    match e {
        Error::Internal(detail) => tracing::error!(%detail, "internal error"),
        other if other.status() >= 500 => tracing::warn!(error = %other, "request failed"),
        _ => {}
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        log_error(&self.0);
        error_response(status, self.0.code(), self.0.public_message())
    }
}

fn value_response(value: Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        value,
    )
        .into_response()
}

/// A get's answer: the plain value, or a stored gzip/zstd payload with its `Content-Encoding`.
/// Either way the response varies with `Accept-Encoding`, so caches in between must key on it.
fn reply_response(reply: Reply) -> Response {
    let mut response = value_response(reply.body);
    let headers = response.headers_mut();
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(coding) = reply.content_encoding {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
    }
    response
}

/// The content codings a stored value may be in that HTTP clients know: what
/// `Accept-Encoding` is read for (core's list).
use crate::compression::CONTENT_CODINGS as STORED_CODINGS;

/// The content codings (of [`STORED_CODINGS`]) a request's `Accept-Encoding` accepts, kept
/// inline: reading them allocates nothing. Also an extractor, which reads the headers where
/// they are rather than taking a copy of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Accepted {
    /// The accepted codings, in the order of [`STORED_CODINGS`]; the first `len` are set.
    codings: [&'static str; 2],
    /// How many are accepted.
    len: usize,
}

impl Accepted {
    fn as_slice(&self) -> &[&'static str] {
        &self.codings[..self.len]
    }
}

impl IntoIterator for Accepted {
    type Item = &'static str;
    type IntoIter = std::iter::Take<std::array::IntoIter<&'static str, 2>>;

    fn into_iter(self) -> Self::IntoIter {
        self.codings.into_iter().take(self.len)
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Accepted {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(accepted_codings(&parts.headers))
    }
}

/// Whether an `Accept-Encoding` parameter is `q=0` (or any q ≤ 0), refusing its coding; the
/// name and the value are read case-insensitively.
fn refuses(param: &str) -> bool {
    let param = param.trim();
    param.get(..2).is_some_and(|q| q.eq_ignore_ascii_case("q="))
        && param[2..].trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
}

/// The content codings (of those a stored value may be in: `gzip`, `zstd`) that an
/// `Accept-Encoding` header accepts. `q=0` refuses a coding; `*` accepts both unless refused.
fn accepted_codings(headers: &HeaderMap) -> Accepted {
    let mut star = false;
    // Per coding of STORED_CODINGS: listed without q=0, listed with q=0.
    let (mut yes, mut no) = ([false; 2], [false; 2]);
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let refused = parts.any(refuses);
            let index =
                if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                    0
                } else if coding.eq_ignore_ascii_case("zstd") {
                    1
                } else {
                    if coding == "*" {
                        star = !refused;
                    }
                    continue;
                };
            if refused {
                no[index] = true;
            } else {
                yes[index] = true;
            }
        }
    }
    let mut accepted = Accepted::default();
    for (i, coding) in STORED_CODINGS.into_iter().enumerate() {
        if !no[i] && (star || yes[i]) {
            accepted.codings[accepted.len] = coding;
            accepted.len += 1;
        }
    }
    accepted
}

/// The W3C trace context (`traceparent`) of a request, read only when traces are exported (see
/// [`crate::telemetry::remote_context`]): the get's spans continue the caller's trace.
struct RemoteTrace(Option<opentelemetry::Context>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RemoteTrace {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(RemoteTrace(crate::telemetry::remote_context(
            &parts.headers,
        )))
    }
}

/// Query of the classic `GET /api?key=K[&group=G]`.
#[derive(Debug, Deserialize)]
struct ClassicQuery {
    key: Option<String>,
    group: Option<String>,
}

async fn classic_get(
    State(state): State<AppState>,
    accepted: Accepted,
    trace: RemoteTrace,
    query: Result<Query<ClassicQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| Error::BadRequest(e.body_text()))?;
    let key = q.key.ok_or_else(|| {
        Error::BadRequest("missing query parameter `key`, e.g. /api?key=Tom".into())
    })?;
    let group = q.group.as_deref().unwrap_or(&state.inner.default_group);
    get_value(&state, group, &key, accepted, trace).await
}

async fn rest_get(
    State(state): State<AppState>,
    accepted: Accepted,
    trace: RemoteTrace,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((group, key)) = path.map_err(|e| Error::BadRequest(e.body_text()))?;
    get_value(&state, &group, &key, accepted, trace).await
}

/// Both GET forms: the value of `key` in `group`, in the `geecache.api.get` span. A stored
/// gzip/zstd value goes out as it is when the client's `Accept-Encoding` allows it.
async fn get_value(
    state: &AppState,
    group: &str,
    key: &str,
    accepted: Accepted,
    trace: RemoteTrace,
) -> Result<Response, ApiError> {
    let span = tracing::info_span!("geecache.api.get", group);
    let get = async {
        let reply = state
            .inner
            .groups
            .get(group)?
            .get_reply(key, accepted.as_slice())
            .await?;
        Ok(reply_response(reply))
    };
    if span.is_disabled() {
        // No layer wants it (traces are not exported): no span to enter on every poll.
        get.await
    } else {
        crate::telemetry::adopt(&span, trace.0);
        get.instrument(span).await
    }
}

/// Query of `PUT /api/v1/groups/{group}/keys/{key}`.
#[derive(Debug, Deserialize)]
struct PutQuery {
    /// Lifetime of the value, e.g. `10m`; default: the group's TTL.
    ttl: Option<String>,
}

/// Longest `?ttl=` a PUT accepts: ten years (3650 days). Longer ones are refused (400) rather
/// than clamped, since a caller asking for more has made a mistake.
pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(3650 * 24 * 3600);

/// The absolute expiry (ms since the Unix epoch) of a value put at `now_ms` with `?ttl=ttl`.
///
/// # Errors
/// [`Error::BadRequest`] when `ttl` is not a duration, or longer than [`MAX_TTL`].
pub fn expiry_of_ttl(ttl: &str, now_ms: u64) -> Result<u64, Error> {
    let parsed = crate::units::parse_duration(ttl).map_err(Error::BadRequest)?;
    if parsed > MAX_TTL {
        return Err(Error::BadRequest(format!(
            "ttl {ttl:?} is longer than the limit of 3650 days"
        )));
    }
    // Within MAX_TTL the milliseconds fit a u64 and the sum cannot overflow before the year
    // 584 million; checked all the same, since the clock is not ours.
    u64::try_from(parsed.as_millis())
        .ok()
        .and_then(|ms| now_ms.checked_add(ms))
        .ok_or_else(|| Error::BadRequest(format!("ttl {ttl:?} is out of range")))
}

/// A body extractor failure, as a JSON error: 413 past the body limit, 400 otherwise.
fn body_error(state: &AppState, e: &BytesRejection) -> Error {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::BodyTooLarge {
            limit: state.inner.options.max_body_bytes,
        }
    } else {
        Error::BadRequest(e.body_text())
    }
}

async fn rest_put(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<PutQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((group, key)) = path.map_err(|e| Error::BadRequest(e.body_text()))?;
    let Query(q) = query.map_err(|e| Error::BadRequest(e.body_text()))?;
    let body = body.map_err(|e| body_error(&state, &e))?;
    let expires_at_ms = q
        .ttl
        .as_deref()
        .map(|ttl| expiry_of_ttl(ttl, crate::cache::SystemClock.now_ms()))
        .transpose()?;
    state
        .inner
        .groups
        .get(&group)?
        .set(&key, body, expires_at_ms)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn rest_delete(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((group, key)) = path.map_err(|e| Error::BadRequest(e.body_text()))?;
    state.inner.groups.get(&group)?.remove(&key).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Most keys one batch request may ask for (core's, shared with the peer protocol).
pub use crate::batch::MAX_BATCH_KEYS;

/// How many keys of one batch are loaded at once.
const BATCH_CONCURRENCY: usize = 64;

/// Body of `POST /api/v1/groups/{group}/batch`.
#[derive(Debug, Deserialize)]
struct BatchRequest {
    /// At most [`MAX_BATCH_KEYS`]: decoding stops at the next one (see [`bounded_keys`]).
    #[serde(deserialize_with = "bounded_keys")]
    keys: Vec<String>,
}

/// Decodes a list of at most [`MAX_BATCH_KEYS`] keys, failing at the first key past it: a body
/// of millions of keys is refused after 1,001 of them, not once all are in memory.
fn bounded_keys<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Keys;
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a list of at most {MAX_BATCH_KEYS} keys")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut keys = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_BATCH_KEYS));
            while let Some(key) = seq.next_element::<String>()? {
                if keys.len() == MAX_BATCH_KEYS {
                    return Err(serde::de::Error::custom(format!(
                        "more than {MAX_BATCH_KEYS} keys in one batch; the limit is {MAX_BATCH_KEYS}"
                    )));
                }
                keys.push(key);
            }
            Ok(keys)
        }
    }
    d.deserialize_seq(Keys)
}

/// One key's answer in a batch.
#[derive(Debug, Serialize)]
struct BatchResult<'a> {
    key: &'a str,
    /// The value, when it is valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    /// The value in standard base64, when it is not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<BatchError<'a>>,
}

#[derive(Debug, Serialize)]
struct BatchError<'a> {
    code: &'a str,
    message: String,
}

/// One batch item as the JSON text that goes into the answer, so that its size is known and
/// the value is not held twice (as bytes and as text).
fn batch_item_json(key: &str, answer: Result<Bytes, Error>) -> Vec<u8> {
    let mut r = BatchResult {
        key,
        value: None,
        value_base64: None,
        error: None,
    };
    match &answer {
        Ok(v) => match std::str::from_utf8(v) {
            Ok(text) => r.value = Some(text),
            Err(_) => {
                r.value_base64 = Some(base64::engine::general_purpose::STANDARD.encode(v));
            }
        },
        Err(e) => {
            log_error(e);
            r.error = Some(BatchError {
                code: e.code(),
                message: e.public_message(),
            });
        }
    }
    // Serializing strings and options into a Vec cannot fail.
    serde_json::to_vec(&r).unwrap_or_default()
}

/// `POST /api/v1/groups/{group}/batch`: each distinct key once, in order of first occurrence,
/// within the byte budget of [`ApiOptions::max_batch_bytes`] (see [`crate::batch`]).
async fn batch_get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<BatchRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Path(group) = path.map_err(|e| Error::BadRequest(e.body_text()))?;
    let Json(req) = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::BodyTooLarge {
                limit: state.inner.options.max_body_bytes,
            }
        } else {
            Error::BadRequest(e.body_text())
        }
    })?;
    let group = state.inner.groups.get(&group)?.clone();
    let budget = state.inner.options.max_batch_bytes;
    // Keys other nodes own are asked from them first, one `_batch` request per owner, all at
    // once; then each key takes the get path (caches, singleflight) with its owner's answer,
    // or the normal one (a key this node owns, holds, or whose owner skipped it).
    let keys = batch::dedup_keys(req.keys);
    let answers = group.owner_answers(&keys).await;
    let items = batch::answer(
        keys,
        budget,
        BATCH_CONCURRENCY,
        |key| {
            let group = group.clone();
            let answer = answers.get(&key).cloned();
            async move { batch_item_json(&key, group.get_with_owner_answer(&key, answer).await) }
        },
        Vec::len,
    )
    .await;
    let mut body = b"{\"results\":[".to_vec();
    for (i, (key, slot)) in items.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        match slot {
            Slot::Answered(json) => body.extend_from_slice(&json),
            Slot::OverBudget => {
                body.extend_from_slice(&batch_item_json(&key, Err(batch::over_budget(budget))));
            }
        }
    }
    body.extend_from_slice(b"]}");
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

async fn stats(State(state): State<AppState>) -> Json<Stats> {
    Json(state.stats())
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
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

async fn cluster(State(state): State<AppState>) -> Json<ClusterSnapshot> {
    Json(state.inner.cluster.snapshot())
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Response {
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
async fn require_peer_cert(
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
fn host_of(addr: &str) -> &str {
    let authority = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    let authority = authority.split('/').next().unwrap_or(authority);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

async fn no_route() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "route_not_found",
        "no such route; see the README for the API".into(),
    )
}

async fn wrong_method() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method".into(),
    )
}

/// The node's routes (public API and peer protocol), without a socket: tests drive it with
/// `tower::ServiceExt::oneshot`.
pub fn router(state: AppState) -> Router {
    let options = &state.inner.options;
    let max_body = options.max_body_bytes;
    let timing = timing::TimingLayer {
        metrics: state.inner.metrics.clone(),
    };
    let service: Arc<dyn PeerService> = Arc::new(state.inner.groups.clone());
    let mut peer_routes = crate::peer::router_with_limits(
        service,
        state.inner.peer_auth.clone(),
        PeerLimits {
            max_body_bytes: max_body,
            max_batch_bytes: options.max_batch_bytes,
            concurrency: options.peer_concurrency,
        },
    );
    // Without a cluster secret the peer routes check nothing themselves: with an API token they
    // must not be a way around it, so every peer request then needs the token (a clustered node
    // refuses --api-token without --cluster-secret, so this only closes a single node's door).
    if state.inner.peer_auth.is_none() && options.access.token.is_some() {
        let all = Access {
            token: options.access.token.clone(),
            reads: true,
            ..Access::default()
        };
        peer_routes = peer_routes.layer(axum::middleware::from_fn_with_state(
            Arc::new(all),
            access::check,
        ));
    }
    // Plain GETs of the first two routes are answered ahead of this router by `Shortcut`
    // (shortcut.rs): a change to their paths, their query parameters or what their GET handlers
    // do must be made in `shortcut::plain_get` and `get_value` too.
    let mut api = Router::new()
        .route("/api", get(classic_get))
        .route(
            "/api/v1/groups/{group}/keys/{key}",
            get(rest_get).put(rest_put).delete(rest_delete),
        )
        .route("/api/v1/groups/{group}/batch", post(batch_get))
        .route("/api/v1/groups/{group}/flush", post(flush::flush))
        .route("/api/v1/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/plugins", get(plugins::list))
        .route("/api/v1/plugins/{name}", get(plugins::show))
        .route(
            "/api/v1/plugins/{name}/reload",
            post(plugins::reload).layer(DefaultBodyLimit::max(options.max_plugin_bytes)),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(max_body));
    // The API routes only: the peer routes, merged below, check the cluster secret. Always
    // on: the admin routes are closed without an admin token, and cross-site writes refused.
    // (The hit path's plain GETs pass ahead of it, through the shortcut's own check.)
    api = api.layer(axum::middleware::from_fn_with_state(
        Arc::new(options.access.clone()),
        access::check,
    ));
    // A plugin rollout's requests between nodes: signed with the cluster secret, checked by
    // the handler itself (like the peer routes, outside the API token's layer).
    let rollout = Router::new()
        .route(
            &format!("{}{{name}}/{{op}}", plugins::PEER_PREFIX),
            post(plugins::peer_op),
        )
        .route(
            &format!("{}{{group}}", flush::FLUSH_PREFIX),
            post(flush::peer_flush),
        )
        .with_state(state.clone());
    let (mut peer_routes, mut rollout) = (peer_routes, rollout);
    if options.require_peer_cert {
        peer_routes = peer_routes.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_peer_cert,
        ));
        rollout = rollout.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_peer_cert,
        ));
    }
    // Outermost on what peers call: every answer to a signed request is signed, refusals
    // included, so a caller can tell a member that knows the secret from one that does not
    // (the peer routes sign their own, in `peer::router_with_limits`).
    if let Some(auth) = &state.inner.peer_auth {
        rollout = rollout.layer(axum::middleware::from_fn_with_state(
            auth.secret().clone(),
            crate::peer::auth::sign_answers,
        ));
    }
    api.with_state(state)
        .merge(peer_routes)
        .merge(rollout)
        // Outermost, after the merge, so it times the peer routes too; `Router::layer` wraps
        // each route, so the matched route template is known by then.
        .layer(timing)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod encoding_tests {
    use super::*;

    fn accepted(values: &[&str]) -> Vec<&'static str> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(v).expect("ASCII"),
            );
        }
        accepted_codings(&headers).into_iter().collect()
    }

    #[test]
    fn accept_encoding_is_read_with_q_values_and_wildcards() {
        assert!(accepted(&[]).is_empty());
        assert_eq!(accepted(&["gzip, deflate, br"]), ["gzip"]);
        assert_eq!(accepted(&["br", "ZSTD;q=0.5"]), ["zstd"]);
        assert_eq!(accepted(&["gzip;q=0, zstd"]), ["zstd"]);
        assert_eq!(accepted(&["gzip; q=0.0"]), Vec::<&str>::new());
        assert_eq!(accepted(&["gzip;Q=0, zstd"]), ["zstd"]);
        assert_eq!(accepted(&["*"]), ["gzip", "zstd"]);
        assert_eq!(accepted(&["*, zstd;q=0"]), ["gzip"]);
        assert_eq!(accepted(&["identity"]), Vec::<&str>::new());
        assert_eq!(accepted(&["X-Gzip;Q=0.1", "zstd;q=0, *"]), ["gzip"]);
        assert_eq!(accepted(&["gzip;q=0, x-gzip"]), Vec::<&str>::new());
    }
}

#[cfg(test)]
mod host_tests {
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
