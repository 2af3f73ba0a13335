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
//! [`crate::error::Error::status`]: 400 bad input, 401 `unauthorized` (no or wrong API token),
//! 404 no such key/group/route, 405 wrong method, 413 too large (`too_large` for a batch item
//! past the budget), 500 internal, 502/504 a peer failed, 503 plugin failed, 504 timeout. An
//! owner's 400/404/413 is passed on as it is.
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
//!
//! Files: this one holds the shared state and the router; the routes are in `keys.rs`,
//! `batches.rs`, `node.rs` (stats, metrics, cluster, probes), `flush.rs` and `plugins.rs` (the
//! admin routes, with `fanout.rs` for what their cluster forms share); `encoding.rs` and
//! `errors.rs` shape answers; `timing.rs` times every request; `stats.rs` gathers the
//! snapshot `/api/v1/stats` and `/metrics` share, `metrics.rs` the API's own table;
//! `serve.rs`, `conn.rs`, `per_client.rs`, `guard.rs`, `access.rs` and `shortcut.rs` are the
//! layers below the routes.

pub mod conn;
pub mod guard;
pub mod metrics;
pub mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};

use crate::cluster::Cluster;
use crate::cluster::metrics::ClusterStats;
use crate::group::Groups;
use crate::peer::{NodeAuth, PeerLimits, PeerService};
pub use crate::plugin::PluginSnapshot;
use crate::plugin::Plugins;
use crate::telemetry::Metrics;
/// The body of `/api/v1/stats`, also what `/metrics` reports.
pub use stats::Stats;

mod access;
mod batches;
mod encoding;
mod errors;
mod fanout;
mod flush;
mod keys;
mod node;
mod per_client;
mod plugins;
mod serve;
mod shortcut;
mod timing;
pub use crate::batch::MAX_BATCH_KEYS;
pub use crate::config::{Access, ApiOptions, ApiToken, EmptyToken};
pub use errors::ApiError;
pub use keys::{MAX_TTL, expiry_of_ttl};
pub use serve::{RouterService, serve};
pub use shortcut::Shortcut;

use encoding::accepted_codings;
use errors::{error_response, log_error};
use keys::{RemoteTrace, get_value};

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
                ring_id: format!("{:016x}", cluster.ring_stamp().id()),
                ring_mismatches: cluster.ring_stamp().mismatches(),
                registration: cluster.registration(),
                registry: cluster.registry_counts(),
                handoff_windows_ended: cluster.handoff_windows_ended(),
                peer_refused: self
                    .inner
                    .peer_auth
                    .as_ref()
                    .map_or_else(Default::default, NodeAuth::refused),
            },
            connections: self.inner.connections.snapshot(),
            codec_lane: crate::compression::builtin::lane(),
        }
    }
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
    let mut peer_routes = crate::peer::router_with_ring(
        service,
        state.inner.peer_auth.clone(),
        PeerLimits {
            max_body_bytes: max_body,
            max_batch_bytes: options.max_batch_bytes,
            concurrency: options.peer_concurrency,
        },
        state.inner.cluster.ring_stamp().clone(),
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
        .route("/api", get(keys::classic_get))
        .route(
            "/api/v1/groups/{group}/keys/{key}",
            get(keys::rest_get)
                .put(keys::rest_put)
                .delete(keys::rest_delete),
        )
        .route("/api/v1/groups/{group}/batch", post(batches::batch_get))
        .route("/api/v1/groups/{group}/flush", post(flush::flush))
        .route("/api/v1/stats", get(node::stats))
        .route("/metrics", get(node::metrics))
        .route("/api/v1/cluster", get(node::cluster))
        .route("/api/v1/plugins", get(plugins::list))
        .route("/api/v1/plugins/{name}", get(plugins::show))
        .route(
            "/api/v1/plugins/{name}/reload",
            post(plugins::reload).layer(DefaultBodyLimit::max(options.max_plugin_bytes)),
        )
        .route("/healthz", get(node::healthz))
        .route("/readyz", get(node::readyz))
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
            node::require_peer_cert,
        ));
        rollout = rollout.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            node::require_peer_cert,
        ));
    }
    // Outermost on what peers call: every answer to a request whose signature matched is
    // signed, refusals included, so a caller can tell a member that knows the secret from one
    // that does not (the peer routes sign their own, in `peer::router_with_limits`).
    if let Some(auth) = &state.inner.peer_auth {
        rollout = rollout.layer(axum::middleware::from_fn_with_state(
            auth.secret().clone(),
            crate::peer::sign_answers,
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
