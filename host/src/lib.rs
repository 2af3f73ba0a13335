//! # geecache-host
//!
//! A read-through cache node whose loaders are WebAssembly components. The modules follow a
//! request through the node:
//!
//! - [`server`]: wiring: binds the listener, builds plugins and groups from the [`config`],
//!   joins the cluster, runs until a shutdown future resolves, turns not-ready, leaves the ring,
//!   serves through a grace, then drains requests and storage writes.
//! - [`api`]: the HTTP API (axum): `/api?key=K`, `/api/v1/groups/{g}/keys/{k}`, stats,
//!   `/metrics`, health, the plugin admin API (list, hot reload, cluster rollout); the optional
//!   API token; times every request; turns every
//!   [`error::Error`] into a JSON body with a stable code and status. [`api::conn`] bounds
//!   connections: the slots (and a reserve for the probes), the header, idle and write timers,
//!   the optional per-client caps (connections, a token bucket of requests), and releases an
//!   answer's reservation once its last byte is written. `api/access.rs` decides who may ask
//!   what: the API token, the admin token of the admin routes, cross-origin writes. [`api::guard`] bounds
//!   what all requests hold together: request bodies and answers in flight.
//!   [`api::Shortcut`] answers plain GETs of a key ahead of the router (the hit path);
//!   [`api::serve`] serves each connection with hyper's HTTP/1.1 and stops gracefully.
//! - Core ([`geecache_core`], re-exported here under the same names: [`batch`], [`cache`],
//!   [`compression`], [`error`], [`group`], [`metrics`], [`ring`], [`seam`], [`singleflight`],
//!   [`units`]): groups, caches, singleflight, the ring, batches, codecs, the error type,
//!   units, metric tables as plain data, and the seam traits the modules below implement. Core
//!   imports nothing of this crate.
//! - [`plugin`]: the wasmtime component runtime: engine (pooling with fallback, epoch ticker,
//!   on-disk compile cache), kind detection, per-call limits (wall-clock deadline that host
//!   calls share, one memory budget over all memories and tables), grants bound to the
//!   operator's name for a plugin, and the wasm implementations of the group's and the
//!   codec's traits; [`plugin::caps`]: the capabilities it grants, one part each with its own
//!   `add_to_linker` (log with a per-call budget and escaped text, config, SQL confined to one
//!   database: SQLite, or Postgres in read-only transactions; for getters, outbound
//!   `wasi:http` to the origins the operator allowed, with resolved addresses checked, the
//!   call's deadline and a body cap);
//!   [`plugin::registry`]: every plugin behind a slot swapped by hot reload (prepare off the
//!   serving path, then swap; calls in flight keep their version), staged cluster rollouts;
//!   [`plugin::watch`]: the `--watch-plugins` and SIGHUP triggers.
//! - [`peer`]: the peer protocol (HTTP + protobuf, `/_geecache/{group}/{key}`): the
//!   [`peer::PeerService`] seam a node offers its peers, the router serving it, the client
//!   calling one remote node (over [`peer::PeerHttp`], hyper's pooled client with rustls,
//!   shared with the cluster's admin requests), and HMAC request signing with the cluster
//!   secret (nonces against replay, checked before a body is read). Every request a node
//!   sends another, the protocol's and the admin operations' ([`peer::admin`]), goes through
//!   its one signed exchange.
//! - [`net`]: what every outbound HTTP client of the node stands on (the peer pool and the
//!   plugins' `wasi:http`): the connector with a bounded connect, and the platform's TLS
//!   roots.
//! - [`discovery`]: who the members are: a fixed `--peers` list, a peers file or DNS names
//!   read again periodically, or etcd (lease, keepalive, watch, admission rules); publishes the
//!   member list the ring is built from.
//! - [`cluster`]: membership → ring → peer clients, as the group's `PeerPicker`; a single node
//!   is a cluster of one. Gets to one peer asked at one moment, or while the previous request
//!   to it is in flight, go as one `_batch` request (`cluster/coalesce.rs`, `--peer-coalesce`).
//! - [`tls`]: rustls for the node's port (certificate reloaded on SIGHUP, handshakes off the
//!   accept loop), the peer client's trust (`--peer-ca`), and with `--peer-mtls` the client
//!   certificate a peer request's connection showed, checked against the ring's hosts (once
//!   per connection and ring version).
//! - [`config`]: CLI flags (clap, `GEECACHE_*` env fallbacks) and the TOML config file,
//!   resolved into [`config::Settings`] one subsystem at a time, each default written once (in
//!   its option struct's `Default`); defines the HTTP front's plain option structs
//!   ([`config::ApiOptions`], [`config::ServerLimits`], ...), which [`api`] enforces.
//! - [`telemetry`]: logs (`RUST_LOG`, text or JSON), get-path spans exported over OTLP when
//!   `OTEL_EXPORTER_OTLP_*ENDPOINT` is set, and [`telemetry::metrics`]: one
//!   [`telemetry::Metrics`] per node (OpenTelemetry meters, Prometheus exporter) rendered at
//!   `/metrics` from the samples of the snapshot `/api/v1/stats` serialises ([`api::stats`]),
//!   plus the latency histograms the API, the peer clients and the plugin calls record. The
//!   metric tables belong to their subsystems (a `metrics` module each: [`group::metrics`],
//!   [`compression::metrics`], [`plugin::metrics`], [`api::metrics`], [`cluster::metrics`]);
//!   telemetry imports no module of this crate.
//!
//! Import rules: core ([`geecache_core`]) imports nothing of this crate; here a module imports
//! only modules below it in `docs/architecture.md`'s code map. `.ci/import-graph` prints the
//! edges, fails on a cycle (here or in core), fails when the import table of
//! `docs/architecture.md` differs from the code, and fails when a module is missing from its
//! parent's `//!` map.

pub use geecache_core::{
    batch, cache, compression, error, group, metrics, ring, seam, singleflight, spans, units,
};

pub mod api;
pub mod cluster;
pub mod config;
pub mod discovery;
pub mod net;
pub mod peer;
pub mod plugin;
pub mod server;
pub mod telemetry;
pub mod tls;
