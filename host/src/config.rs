//! Configuration: command-line flags (each with a `GEECACHE_*` env fallback) and an optional
//! TOML file for several groups and plugins. A flag given on the command line (or through its
//! env variable) wins over the file; the file wins over the built-in default.
//!
//! With no arguments but `--plugin plugins/db_getter.wasm`, the node serves one group, `scores`,
//! from that getter, on 127.0.0.1:9999.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::api::guard::ServerLimits;
use crate::api::{Access, ApiOptions, ApiToken};
use crate::group::GroupOptions;
use crate::plugin::{DirGrant, InstancePolicy, PluginGrants, RuntimeOptions};
// Where they live now; named here too, for the callers that knew them here.
pub use crate::plugin::PluginSpec;
pub use crate::units::{parse_duration, parse_size};

/// Built-in defaults, documented in `--help` and docs/operations.md.
pub mod defaults {
    /// Default HTTP port.
    pub const PORT: u16 = 9999;
    /// Default name of the group served by the first getter.
    pub const GROUP: &str = "scores";
    /// Default byte budget of a group's main cache.
    pub const CACHE_BYTES: &str = "64MiB";
    /// Default time "no such key" is remembered.
    pub const NEGATIVE_TTL: &str = "5s";
    /// Default longest key.
    pub const MAX_KEY_BYTES: usize = 1024;
    /// Default largest value.
    pub const MAX_VALUE_BYTES: &str = "8MiB";
    /// Default largest request body.
    pub const MAX_BODY_BYTES: &str = "16MiB";
    /// Default largest plugin component sent to the reload API (or by a cluster rollout).
    pub const MAX_PLUGIN_BYTES: &str = "64MiB";
    /// Connections open at once.
    pub const MAX_CONNECTIONS: usize = 4096;
    /// Request body bytes in flight at once, across all requests.
    pub const MAX_INFLIGHT_BODY_BYTES: &str = "256MiB";
    /// Longest time one request body may take to arrive.
    pub const BODY_TIMEOUT: &str = "30s";
    /// Longest time a request head may take to arrive.
    pub const HEADER_TIMEOUT: &str = "10s";
    /// Longest a keep-alive connection may wait for its next request.
    pub const IDLE_TIMEOUT: &str = "60s";
    /// Longest a write to a client may make no progress.
    pub const WRITE_TIMEOUT: &str = "30s";
    /// Default byte budget of one batch answer.
    pub const MAX_BATCH_BYTES: &str = "4MiB";
    /// Default byte budget of a group's queued storage writes.
    pub const STORAGE_QUEUE_BYTES: &str = "64MiB";
    /// Default number of peer requests served at once.
    pub const PEER_CONCURRENCY: usize = crate::peer::DEFAULT_PEER_CONCURRENCY;
    /// Default request (load) timeout.
    pub const REQUEST_TIMEOUT: &str = "5s";
    /// Default memory cap of one plugin call.
    pub const PLUGIN_MEMORY: &str = "64MiB";
    /// Default time limit of one plugin call.
    pub const PLUGIN_TIMEOUT: &str = "1s";
    /// Default number of plugin calls running at once.
    pub const PLUGIN_CONCURRENCY: usize = 32;
    /// Default instance mode: warm instances serve many calls.
    pub const PLUGIN_INSTANCES: &str = "reuse";
    /// Default number of calls one warm instance serves before it is retired.
    pub const PLUGIN_INSTANCE_CALLS: u64 = 10_000;
    /// Default time to wait for a key's owner before loading locally.
    pub const PEER_TIMEOUT: &str = "1s";
    /// Default etcd lease TTL of a node's registration.
    pub const LEASE_TTL: &str = "10s";
    /// Longest a hot copy of another node's key is kept.
    pub const HOT_TTL: std::time::Duration = std::time::Duration::from_secs(60);
    /// The hot cache's share of the main cache budget, as a divisor.
    pub const HOT_CACHE_DIVISOR: u64 = 8;
    /// Default time a stopping node keeps serving while `/readyz` already answers 503.
    pub const SHUTDOWN_GRACE: &str = "2s";
    /// Default codec of stored values.
    pub const COMPRESSION: &str = "none";
    /// Default size below which values are stored raw.
    pub const COMPRESS_MIN_BYTES: &str = "256B";
}

/// `geecache-host`: a read-through cache node whose loaders are WebAssembly components.
#[derive(Debug, Clone, Parser)]
#[command(name = "geecache-host", version, about, long_about = None)]
pub struct Cli {
    /// Plugin component to load (repeatable), `[NAME=]FILE.wasm`. Its kind (getter, storage,
    /// compressor) is detected from what it exports. NAME (default: the file's stem, e.g.
    /// `db_getter` for plugins/db_getter.wasm) is what --plugin-config and --plugin-dir grant to.
    #[arg(
        long = "plugin",
        value_name = "[NAME=]FILE.wasm",
        env = "GEECACHE_PLUGINS",
        value_delimiter = ','
    )]
    pub plugins: Vec<String>,

    /// A plugin config value, NAME.KEY=VALUE (repeatable), e.g. db_getter.database=my.db, for
    /// the plugin loaded as NAME. db_getter reads `database` (default: demo.db beside the plugin
    /// file) and `query`.
    #[arg(
        long = "plugin-config",
        value_name = "NAME.KEY=VALUE",
        env = "GEECACHE_PLUGIN_CONFIG",
        value_delimiter = ','
    )]
    pub plugin_config: Vec<String>,

    /// Grant the plugin loaded as NAME a host directory, `NAME=HOST_DIR[:GUEST_DIR][:rw]`
    /// (guest path default /data; read-only unless `:rw`). Plugins get no files otherwise.
    #[arg(
        long = "plugin-dir",
        value_name = "NAME=DIR[:GUEST][:rw]",
        env = "GEECACHE_PLUGIN_DIRS",
        value_delimiter = ','
    )]
    pub plugin_dirs: Vec<String>,

    /// TOML config file for several groups and plugins (see docs/operations.md).
    #[arg(long, value_name = "FILE", env = "GEECACHE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "GEECACHE_BIND")]
    pub bind: Option<IpAddr>,

    /// HTTP port [default: 9999].
    #[arg(long, env = "GEECACHE_PORT")]
    pub port: Option<u16>,

    /// Name of the group served by the first getter when the config file defines none
    /// [default: scores].
    #[arg(long, env = "GEECACHE_GROUP")]
    pub group: Option<String>,

    /// Byte budget of each group's main cache, e.g. 64MiB [default: 64MiB].
    #[arg(long, value_name = "SIZE", env = "GEECACHE_CACHE_BYTES")]
    pub cache_bytes: Option<String>,

    /// Time-to-live of loaded values whose getter sets no expiry, e.g. 10m [default: none].
    #[arg(long, value_name = "DURATION", env = "GEECACHE_TTL")]
    pub ttl: Option<String>,

    /// How long "no such key" is remembered; 0s disables [default: 5s].
    #[arg(long, value_name = "DURATION", env = "GEECACHE_NEGATIVE_TTL")]
    pub negative_ttl: Option<String>,

    /// Longest key accepted, in bytes [default: 1024].
    #[arg(long, env = "GEECACHE_MAX_KEY_BYTES")]
    pub max_key_bytes: Option<usize>,

    /// Largest value accepted from a getter [default: 8MiB].
    #[arg(long, value_name = "SIZE", env = "GEECACHE_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<String>,

    /// Codec of stored values, CODEC[:LEVEL]: none, gzip[:0-9], snappy, lz4, zstd[:1-22], or
    /// a compressor plugin's name [default: none]. Caches count compressed bytes; peers
    /// receive values as stored.
    #[arg(long, value_name = "CODEC[:LEVEL]", env = "GEECACHE_COMPRESSION")]
    pub compression: Option<String>,

    /// Values shorter than this are stored raw [default: 256B].
    #[arg(long, value_name = "SIZE", env = "GEECACHE_COMPRESS_MIN_BYTES")]
    pub compress_min_bytes: Option<String>,

    /// Storage plugin (by reported name) that keeps each group's owned entries beyond memory
    /// [default: the first storage plugin loaded, if any; `none` for no storage tier].
    #[arg(long, value_name = "NAME", env = "GEECACHE_STORAGE")]
    pub storage: Option<String>,

    /// Largest request body accepted [default: 16MiB].
    #[arg(long, value_name = "SIZE", env = "GEECACHE_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<String>,

    /// Byte budget of one batch answer (API and peer), as encoded (JSON escaping and base64
    /// count); keys past it are answered with code `too_large` and not loaded [default: 4MiB].
    #[arg(long, value_name = "SIZE", env = "GEECACHE_MAX_BATCH_BYTES")]
    pub max_batch_bytes: Option<String>,

    /// Peer requests served at once; more are refused at once with 503 `overloaded`
    /// [default: 256].
    #[arg(long, env = "GEECACHE_PEER_CONCURRENCY")]
    pub peer_concurrency: Option<usize>,

    /// Client token: writes (PUT, DELETE) need `Authorization: Bearer <token>` (reads too with
    /// --api-token-reads). /healthz and /readyz stay open. Without it, the API is open.
    #[arg(long, env = "GEECACHE_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// Reads (gets, batch, stats, cluster, /metrics) need the --api-token too.
    #[arg(long, env = "GEECACHE_API_TOKEN_READS")]
    pub api_token_reads: bool,

    /// Admin token: plugin reload, cluster rollout and flush need `Authorization: Bearer
    /// <token>`. Without it those routes are closed (403). Must differ from --api-token.
    #[arg(long, env = "GEECACHE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Directory whose files a reload's `?path=` may name (regular files only, at most
    /// --max-plugin-bytes); without it, `?path=` is refused.
    #[arg(long, value_name = "DIR", env = "GEECACHE_RELOAD_DIR")]
    pub reload_dir: Option<PathBuf>,

    /// Longest a request may wait for a load before failing with 504 [default: 5s].
    #[arg(long, value_name = "DURATION", env = "GEECACHE_REQUEST_TIMEOUT")]
    pub request_timeout: Option<String>,

    /// Connections open at once; past it, 32 more are answered on /healthz and /readyz only
    /// (503 `too_many_connections` otherwise), and one past those is closed at once
    /// [default: 4096].
    #[arg(long, env = "GEECACHE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Longest a request head may take to arrive, from the connection's accept (TLS handshake
    /// included) or the first byte of a later request; then the connection closes [default: 10s].
    #[arg(long, value_name = "DURATION", env = "GEECACHE_HEADER_TIMEOUT")]
    pub header_timeout: Option<String>,

    /// Longest a keep-alive connection may wait for its next request [default: 60s].
    #[arg(long, value_name = "DURATION", env = "GEECACHE_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,

    /// Longest a write to a client may make no progress (the client does not read its
    /// answer); then the connection closes [default: 30s].
    #[arg(long, value_name = "DURATION", env = "GEECACHE_WRITE_TIMEOUT")]
    pub write_timeout: Option<String>,

    /// Connections one client address may hold open at once; past it, its new connections
    /// are answered as the probes' reserve answers (503 `too_many_connections`, probes
    /// excepted) [default: 0, no cap].
    #[arg(long, value_name = "N", env = "GEECACHE_MAX_CONNECTIONS_PER_CLIENT")]
    pub max_connections_per_client: Option<usize>,

    /// Requests per second one client address may make (a token bucket, refilled at this
    /// rate, holding --rate-burst); past it, 429 `rate_limited` with `Retry-After`. Probes
    /// and peer requests are not counted [default: 0, no limit].
    #[arg(long, value_name = "PER_SECOND", env = "GEECACHE_RATE_LIMIT")]
    pub rate_limit: Option<u32>,

    /// Requests a client may make at once before --rate-limit holds it back [default: one
    /// second's worth, --rate-limit].
    #[arg(long, value_name = "N", env = "GEECACHE_RATE_BURST")]
    pub rate_burst: Option<u32>,

    /// Codings (compression, decompression) of 256KiB or more that run at once, node-wide;
    /// the others wait, at most until their request's load timeout (then 504) [default: one
    /// per core].
    #[arg(long, value_name = "N", env = "GEECACHE_CODEC_CONCURRENCY")]
    pub codec_concurrency: Option<usize>,

    /// Bytes of request bodies and answers being received, held or sent at once, across all
    /// requests (answers of 16KiB or more count until their last byte is written); a request
    /// or an answer that does not fit is refused with 503 `busy` [default: 256MiB].
    #[arg(long, value_name = "SIZE", env = "GEECACHE_MAX_INFLIGHT_BODY_BYTES")]
    pub max_inflight_body_bytes: Option<String>,

    /// Longest time one request body may take to arrive [default: 30s].
    #[arg(long, value_name = "DURATION", env = "GEECACHE_BODY_TIMEOUT")]
    pub body_timeout: Option<String>,

    /// Largest component accepted by `POST /api/v1/plugins/{name}/reload` as its body (and
    /// from another node in a cluster rollout); at most --max-inflight-body-bytes
    /// [default: 64MiB].
    #[arg(long, value_name = "SIZE", env = "GEECACHE_MAX_PLUGIN_BYTES")]
    pub max_plugin_bytes: Option<String>,

    /// Reload a plugin when its file is replaced (publish new versions by atomic rename:
    /// write `x.wasm.tmp`, then `mv x.wasm.tmp x.wasm`). SIGHUP does the same on demand.
    #[arg(long, env = "GEECACHE_WATCH_PLUGINS")]
    pub watch_plugins: bool,

    /// Memory cap of one plugin call [default: 64MiB].
    #[arg(long, value_name = "SIZE", env = "GEECACHE_PLUGIN_MEMORY")]
    pub plugin_memory: Option<String>,

    /// Time limit of one plugin call [default: 1s].
    #[arg(long, value_name = "DURATION", env = "GEECACHE_PLUGIN_TIMEOUT")]
    pub plugin_timeout: Option<String>,

    /// Plugin calls running at once [default: 32].
    #[arg(long, env = "GEECACHE_PLUGIN_CONCURRENCY")]
    pub plugin_concurrency: Option<usize>,

    /// "reuse": a plugin instance that finished a call cleanly serves later calls (~1 µs a
    /// call instead of ~20 µs); "fresh": a new instance for every call, so nothing a plugin
    /// keeps in globals survives a call [default: reuse].
    #[arg(long, value_name = "reuse|fresh", env = "GEECACHE_PLUGIN_INSTANCES")]
    pub plugin_instances: Option<String>,

    /// Calls one reused instance serves before it is retired [default: 10000].
    #[arg(long, value_name = "N", env = "GEECACHE_PLUGIN_INSTANCE_CALLS")]
    pub plugin_instance_calls: Option<u64>,

    /// A reused instance whose memory grew past this is retired after its call [default: half
    /// of --plugin-memory].
    #[arg(long, value_name = "SIZE", env = "GEECACHE_PLUGIN_INSTANCE_MEMORY")]
    pub plugin_instance_memory: Option<String>,

    /// Directory for compiled plugins [default: $XDG_CACHE_HOME/geecache or ~/.cache/geecache].
    #[arg(long, value_name = "DIR", env = "GEECACHE_COMPILE_CACHE_DIR")]
    pub compile_cache_dir: Option<PathBuf>,

    /// Compile plugins on every start instead of caching the result on disk.
    #[arg(long, env = "GEECACHE_NO_COMPILE_CACHE")]
    pub no_compile_cache: bool,

    /// Byte budget of each group's hot cache (copies of keys other nodes own) [default: 1/8 of
    /// --cache-bytes].
    #[arg(long, value_name = "SIZE", env = "GEECACHE_HOT_CACHE_BYTES")]
    pub hot_cache_bytes: Option<String>,

    /// Longest to wait for a key's owner before loading it locally instead; a PUT or DELETE
    /// forwarded to the owner waits up to --request-timeout plus this [default: 1s].
    #[arg(long, value_name = "DURATION", env = "GEECACHE_PEER_TIMEOUT")]
    pub peer_timeout: Option<String>,

    /// Gets to one peer for one group asked at the same moment (or while the previous request
    /// is in flight, up to 500 µs after it was sent) go as one batch request of at most this
    /// many keys (up to 1000); 0 or 1 sends every get alone, at once [default: 16].
    #[arg(long, value_name = "N", env = "GEECACHE_PEER_COALESCE")]
    pub peer_coalesce: Option<usize>,

    /// Static cluster: the other nodes' addresses (host:port), comma-separated. This node's
    /// own address may be listed too. Ignored with --etcd-endpoints.
    #[arg(
        long,
        value_name = "HOST:PORT,...",
        env = "GEECACHE_PEERS",
        value_delimiter = ','
    )]
    pub peers: Vec<String>,

    /// Static cluster from a file of addresses (host:port, one per line or comma-separated,
    /// `#` comments), read again every --peers-refresh: edit it (or replace it) to change the
    /// members. This node's own address may be listed.
    #[arg(long, value_name = "FILE", env = "GEECACHE_PEERS_FILE")]
    pub peers_file: Option<PathBuf>,

    /// Cluster from DNS: NAME:PORT entries (comma-separated), resolved every --peers-refresh;
    /// each A record (AAAA when a name has none) is a member at PORT. E.g. a Kubernetes
    /// headless service: --peers-dns geecache.ns.svc.cluster.local:9999, with
    /// --advertise-addr $(POD_IP):9999.
    #[arg(
        long,
        value_name = "NAME:PORT,...",
        env = "GEECACHE_PEERS_DNS",
        value_delimiter = ','
    )]
    pub peers_dns: Vec<String>,

    /// How often --peers-file or --peers-dns is read again [default: 5s].
    #[arg(long, value_name = "DURATION", env = "GEECACHE_PEERS_REFRESH")]
    pub peers_refresh: Option<String>,

    /// etcd endpoints (e.g. http://127.0.0.1:2379), comma-separated: register under
    /// /geecache/registry/<node-id> and discover the other nodes there.
    #[arg(
        long,
        value_name = "URL,...",
        env = "GEECACHE_ETCD_ENDPOINTS",
        value_delimiter = ','
    )]
    pub etcd_endpoints: Vec<String>,

    /// Lease TTL of the etcd registration; a killed node vanishes after about this long
    /// [default: 10s].
    #[arg(long, value_name = "DURATION", env = "GEECACHE_LEASE_TTL")]
    pub lease_ttl: Option<String>,

    /// Most members (this node included) taken from the etcd registry; entries past it are
    /// rejected, logged and counted [default: 1024].
    #[arg(long, value_name = "N", env = "GEECACHE_ETCD_MAX_MEMBERS")]
    pub etcd_max_members: Option<usize>,

    /// PEM CA certificates etcd's server certificate must chain to: speak TLS to etcd (the
    /// endpoints must then be https://).
    #[arg(long, value_name = "FILE", env = "GEECACHE_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,

    /// This node's PEM client certificate for etcd (etcd's --client-cert-auth); with
    /// --etcd-key and --etcd-ca.
    #[arg(long, value_name = "FILE", env = "GEECACHE_ETCD_CERT")]
    pub etcd_cert: Option<PathBuf>,

    /// The PEM private key of --etcd-cert.
    #[arg(long, value_name = "FILE", env = "GEECACHE_ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,

    /// etcd user (etcd's `auth enable`); with --etcd-password.
    #[arg(long, value_name = "NAME", env = "GEECACHE_ETCD_USER")]
    pub etcd_user: Option<String>,

    /// The password of --etcd-user; prefer the environment variable, which `ps` does not show.
    #[arg(long, env = "GEECACHE_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,

    /// Serve TLS (HTTPS) to clients and peers with this PEM certificate chain (leaf first);
    /// needs --tls-key. SIGHUP reads both files again.
    #[arg(
        long,
        value_name = "FILE",
        env = "GEECACHE_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(
        long,
        value_name = "FILE",
        env = "GEECACHE_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM certificates of the CA(s) that sign the peers' certificates: peers advertised as
    /// https:// are trusted only if one of these signed theirs [default: the system's roots].
    #[arg(long, value_name = "FILE", env = "GEECACHE_PEER_CA")]
    pub peer_ca: Option<PathBuf>,

    /// Mutual TLS between peers: show this node's certificate when calling a peer, and take
    /// peer requests only from connections whose client certificate --peer-ca signed for the
    /// host of a ring member (API clients need none). Needs --tls-cert, --tls-key and
    /// --peer-ca.
    #[arg(long, env = "GEECACHE_PEER_MTLS")]
    pub peer_mtls: bool,

    /// The address other nodes reach this one at [default: --bind:--port, with 127.0.0.1 for
    /// an unspecified bind address, and https:// with --tls-cert]. Also the node's name on the
    /// ring; `https://host:port` for a node serving TLS.
    #[arg(long, value_name = "HOST:PORT", env = "GEECACHE_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,

    /// This node's id in the etcd registry [default: the advertised address].
    #[arg(long, env = "GEECACHE_NODE_ID")]
    pub node_id: Option<String>,

    /// Shared secret of the cluster: peer requests are signed with it and unsigned ones are
    /// refused (401). Without it, the peer routes are open to anyone who can reach the port.
    #[arg(long, env = "GEECACHE_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,

    /// Log as JSON lines instead of text (filter with RUST_LOG).
    #[arg(long, env = "GEECACHE_LOG_JSON")]
    pub log_json: bool,

    /// On SIGINT/SIGTERM, how long the node keeps serving with `/readyz` answering 503, so
    /// load balancers stop sending before it stops accepting connections; 0s skips it
    /// [default: 2s].
    #[arg(long, value_name = "DURATION", env = "GEECACHE_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,

    /// Threads of the async runtime that serves requests and runs plugin calls. Fewer than
    /// the cores suits a machine shared with other busy processes (other nodes, a load
    /// generator): its workers then wake each other less [default: the cores available].
    #[arg(long, value_name = "N", env = "GEECACHE_WORKER_THREADS")]
    pub worker_threads: Option<usize>,

    /// Bytes (keys and values) each group's storage tier may hold in writes queued for its
    /// backend; past it, a load's write-through is dropped (counted) and a client's PUT or
    /// DELETE waits for room within --request-timeout [default: 64MiB].
    #[arg(long, value_name = "SIZE", env = "GEECACHE_STORAGE_QUEUE_BYTES")]
    pub storage_queue_bytes: Option<String>,
}

/// The TOML config file. Every field is optional; flags win over it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address to listen on.
    pub bind: Option<IpAddr>,
    /// HTTP port.
    pub port: Option<u16>,
    /// Request (load) timeout, e.g. "5s".
    pub request_timeout: Option<String>,
    /// Largest request body, e.g. "16MiB".
    pub max_body_bytes: Option<String>,
    /// Byte budget of one batch answer, e.g. "4MiB".
    pub max_batch_bytes: Option<String>,
    /// Peer requests served at once.
    pub peer_concurrency: Option<usize>,
    /// Memory cap of one plugin call.
    pub plugin_memory: Option<String>,
    /// Time limit of one plugin call.
    pub plugin_timeout: Option<String>,
    /// Plugin calls running at once.
    pub plugin_concurrency: Option<usize>,
    /// "reuse" or "fresh".
    pub plugin_instances: Option<String>,
    /// Calls one reused instance serves before it is retired.
    pub plugin_instance_calls: Option<u64>,
    /// Memory past which a reused instance is retired, e.g. "32MiB".
    pub plugin_instance_memory: Option<String>,
    /// Plugins to load.
    #[serde(default)]
    pub plugins: Vec<FilePlugin>,
    /// Groups to serve; when empty, one group (`--group`) is served by the first getter.
    #[serde(default)]
    pub groups: Vec<FileGroup>,
}

/// One `[[plugins]]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePlugin {
    /// The component file, relative to the config file's directory.
    pub path: PathBuf,
    /// What --plugin-config and --plugin-dir call it; default: the file's stem.
    pub name: Option<String>,
    /// The plugin's config values.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Directories granted to the plugin, `HOST_DIR[:GUEST_DIR][:rw]`.
    #[serde(default)]
    pub dirs: Vec<String>,
}

/// One `[[groups]]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGroup {
    /// The group's name.
    pub name: String,
    /// Name of the getter plugin that loads its misses; default: the first getter loaded.
    pub getter: Option<String>,
    /// Byte budget of its main cache.
    pub cache_bytes: Option<String>,
    /// TTL of values whose getter sets no expiry.
    pub ttl: Option<String>,
    /// How long "no such key" is remembered.
    pub negative_ttl: Option<String>,
    /// Longest key.
    pub max_key_bytes: Option<usize>,
    /// Largest value.
    pub max_value_bytes: Option<String>,
    /// Codec of stored values, `CODEC[:LEVEL]`.
    pub compression: Option<String>,
    /// Size below which values are stored raw.
    pub compress_min_bytes: Option<String>,
    /// Storage plugin name, or `none`.
    pub storage: Option<String>,
}

/// A group to serve.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    /// The group's name.
    pub name: String,
    /// The getter's plugin name; `None` means the first getter loaded.
    pub getter: Option<String>,
    /// The storage plugin's name; `None` means the first storage plugin loaded (if any),
    /// `Some("none")` no storage tier.
    pub storage: Option<String>,
    /// Cache budget, TTLs, limits, compression.
    pub options: GroupOptions,
}

/// Everything a node needs to start, resolved from flags, env and file.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the HTTP API listens.
    pub addr: SocketAddr,
    /// Plugins to load, in order, each with its grants.
    pub plugins: Vec<PluginSpec>,
    /// Groups to serve.
    pub groups: Vec<GroupSpec>,
    /// Plugin runtime limits.
    pub runtime: RuntimeOptions,
    /// Body and batch limits, peer concurrency, and who must show the API token.
    pub api: ApiOptions,
    /// What all requests together may hold (connections, bodies in flight).
    pub server_limits: ServerLimits,
    /// JSON logs.
    pub log_json: bool,
    /// Reload plugins when their files change (`--watch-plugins`).
    pub watch_plugins: bool,
    /// The node's TLS certificate and key, when it serves TLS.
    pub tls: Option<crate::tls::TlsFiles>,
    /// How this node finds the others.
    pub cluster: ClusterSettings,
    /// How long a stopping node serves as "not ready" before it stops accepting (so load
    /// balancers that poll `/readyz` stop sending first).
    pub shutdown_grace: Duration,
    /// Worker threads of the async runtime; `None`: tokio's default (the cores available).
    pub worker_threads: Option<usize>,
    /// Large codings that may run at once, node-wide (`--codec-concurrency`).
    pub codec_concurrency: usize,
}

/// How a node takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This node's address as the others reach it; its name on the ring.
    pub advertise_addr: String,
    /// This node's id in the registry.
    pub node_id: String,
    /// Other nodes' addresses (static membership).
    pub peers: Vec<String>,
    /// A peers file or DNS names, read again every `peers_refresh`.
    pub peer_source: Option<crate::discovery::PeerSource>,
    /// How often `peer_source` is read again.
    pub peers_refresh: Duration,
    /// The CA certificates peers' TLS certificates must chain to (`--peer-ca`).
    pub peer_ca: Option<PathBuf>,
    /// Mutual TLS between peers (`--peer-mtls`).
    pub peer_mtls: bool,
    /// etcd endpoints; when non-empty, membership comes from etcd.
    pub etcd_endpoints: Vec<String>,
    /// Lease TTL of the etcd registration.
    pub lease_ttl: Duration,
    /// Most members taken from the etcd registry.
    pub etcd_max_members: usize,
    /// TLS to etcd (`--etcd-ca`, `--etcd-cert`, `--etcd-key`).
    pub etcd_tls: Option<crate::discovery::etcd::EtcdTls>,
    /// etcd's authentication (`--etcd-user`, `--etcd-password`).
    pub etcd_user: Option<crate::discovery::etcd::EtcdUser>,
    /// Signs and checks peer requests when set.
    pub secret: Option<String>,
    /// Most keys in one coalesced batch of peer gets (0 or 1: every get alone).
    pub peer_coalesce: usize,
}

impl ClusterSettings {
    /// Whether this node has peers (static or through etcd).
    pub fn is_clustered(&self) -> bool {
        !self.etcd_endpoints.is_empty()
            || self.peer_source.is_some()
            || self.peers.iter().any(|p| p.as_str() != self.advertise_addr)
    }
}

/// The duration `flag` gives (or `default`), which must be more than zero.
fn positive_duration(flag: &str, given: Option<&str>, default: &str) -> Result<Duration, String> {
    let d = parse_duration(given.unwrap_or(default)).map_err(|e| format!("{flag}: {e}"))?;
    if d.is_zero() {
        return Err(format!("{flag} must be more than 0"));
    }
    Ok(d)
}

fn size_usize(s: &str) -> Result<usize, String> {
    parse_size(s).and_then(|b| usize::try_from(b).map_err(|_| format!("size {s:?} is too large")))
}

/// Parses the `HOST_DIR[:GUEST_DIR][:rw|:ro]` of a directory grant (host paths relative to
/// `base`); read-only unless `rw`.
fn parse_dir(s: &str, base: &Path) -> Result<DirGrant, String> {
    let (rest, writable) = match s.rsplit_once(':') {
        Some((rest, "rw")) => (rest, true),
        Some((rest, "ro")) => (rest, false),
        _ => (s, false),
    };
    let (host, guest) = match rest.split_once(':') {
        Some((host, guest)) => (host, guest.to_string()),
        None => (rest, "/data".to_string()),
    };
    if host.is_empty() || guest.is_empty() {
        return Err(format!(
            "directory grant {s:?}: expected HOST_DIR[:GUEST_DIR][:rw], e.g. /var/cache/geecache:/data:rw"
        ));
    }
    Ok(DirGrant {
        host: base.join(host),
        guest,
        writable,
    })
}

/// Splits `--plugin [NAME=]FILE` into the operator's name for the plugin and its file.
fn parse_plugin_flag(s: &str) -> Result<(String, PathBuf), String> {
    if let Some((name, path)) = s.split_once('=')
        && !name.contains('/')
    {
        crate::plugin::validate_name(name).map_err(|e| format!("--plugin {s:?}: {e}"))?;
        return Ok((name.to_string(), PathBuf::from(path)));
    }
    let path = PathBuf::from(s);
    Ok((file_stem_name(&path)?, path))
}

/// A plugin's default name: its file's stem (`db_getter` for `plugins/db_getter.wasm`).
fn file_stem_name(path: &Path) -> Result<String, String> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    crate::plugin::validate_name(&stem).map_err(|e| {
        format!(
            "plugin file {}: {e}; give it a name with --plugin NAME={}",
            path.display(),
            path.display()
        )
    })?;
    Ok(stem)
}

/// The default on-disk cache of compiled plugins.
fn default_compile_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("geecache"))
}

impl Cli {
    /// Resolves flags, env, the config file and defaults into [`Settings`].
    ///
    /// # Errors
    /// A message saying which flag or file entry is wrong and how to fix it.
    pub fn resolve(&self) -> Result<Settings, String> {
        let (file, base) = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
                let file: FileConfig = toml::from_str(&text)
                    .map_err(|e| format!("config file {}: {e}", path.display()))?;
                (
                    file,
                    path.parent().map(Path::to_path_buf).unwrap_or_default(),
                )
            }
            None => (FileConfig::default(), PathBuf::new()),
        };

        let pick = |cli: &Option<String>, file: &Option<String>, default: &str| {
            cli.clone()
                .or_else(|| file.clone())
                .unwrap_or_else(|| default.to_string())
        };
        let request_timeout = parse_duration(&pick(
            &self.request_timeout,
            &file.request_timeout,
            defaults::REQUEST_TIMEOUT,
        ))?;
        let memory_limit = size_usize(&pick(
            &self.plugin_memory,
            &file.plugin_memory,
            defaults::PLUGIN_MEMORY,
        ))?;
        let instances = InstancePolicy {
            mode: pick(
                &self.plugin_instances,
                &file.plugin_instances,
                defaults::PLUGIN_INSTANCES,
            )
            .parse()?,
            max_calls: self
                .plugin_instance_calls
                .or(file.plugin_instance_calls)
                .unwrap_or(defaults::PLUGIN_INSTANCE_CALLS),
            max_memory: match self
                .plugin_instance_memory
                .as_ref()
                .or(file.plugin_instance_memory.as_ref())
            {
                Some(size) => size_usize(size)?,
                None => InstancePolicy::defaults(memory_limit).max_memory,
            },
        };
        if instances.max_calls == 0 {
            return Err("--plugin-instance-calls must be at least 1".into());
        }
        let runtime = RuntimeOptions {
            memory_limit,
            call_timeout: parse_duration(&pick(
                &self.plugin_timeout,
                &file.plugin_timeout,
                defaults::PLUGIN_TIMEOUT,
            ))?,
            max_concurrent_calls: self
                .plugin_concurrency
                .or(file.plugin_concurrency)
                .unwrap_or(defaults::PLUGIN_CONCURRENCY),
            compile_cache_dir: if self.no_compile_cache {
                None
            } else {
                self.compile_cache_dir
                    .clone()
                    .or_else(default_compile_cache_dir)
            },
            pooling: true,
            instances,
        };
        if runtime.max_concurrent_calls == 0 {
            return Err("--plugin-concurrency must be at least 1".into());
        }

        let mut plugins: Vec<PluginSpec> = Vec::new();
        for p in &file.plugins {
            let name = match &p.name {
                Some(name) => {
                    crate::plugin::validate_name(name)?;
                    name.clone()
                }
                None => file_stem_name(&p.path)?,
            };
            let dirs = p
                .dirs
                .iter()
                .map(|d| parse_dir(d, &base))
                .collect::<Result<_, _>>()?;
            plugins.push(PluginSpec {
                name,
                path: base.join(&p.path),
                grants: PluginGrants {
                    config: p.config.clone(),
                    dirs,
                },
            });
        }
        for flag in &self.plugins {
            let (name, path) = parse_plugin_flag(flag)?;
            plugins.push(PluginSpec {
                name,
                path,
                grants: PluginGrants::default(),
            });
        }
        for (i, p) in plugins.iter().enumerate() {
            if plugins[..i].iter().any(|q| q.name == p.name) {
                return Err(format!(
                    "two plugins are named {:?} ({} and another); name one with --plugin NAME=FILE",
                    p.name,
                    p.path.display()
                ));
            }
        }

        let mut grants_by_name: BTreeMap<String, PluginGrants> = BTreeMap::new();
        for item in &self.plugin_config {
            let (name_key, value) = item.split_once('=').ok_or_else(|| {
                format!("--plugin-config {item:?}: expected NAME.KEY=VALUE, e.g. db_getter.database=demo.db")
            })?;
            let (name, key) = name_key.split_once('.').ok_or_else(|| {
                format!("--plugin-config {item:?}: expected NAME.KEY=VALUE, e.g. db_getter.database=demo.db")
            })?;
            grants_by_name
                .entry(name.into())
                .or_default()
                .config
                .insert(key.into(), value.into());
        }
        for item in &self.plugin_dirs {
            let (name, dir) = item.split_once('=').ok_or_else(|| {
                format!("--plugin-dir {item:?}: expected NAME=HOST_DIR[:GUEST_DIR][:rw], e.g. fs_storage=/var/cache/geecache:rw")
            })?;
            let dir = parse_dir(dir, Path::new("")).map_err(|e| format!("--plugin-dir: {e}"))?;
            grants_by_name
                .entry(name.into())
                .or_default()
                .dirs
                .push(dir);
        }
        // Grants go to the plugin the operator named, never to whatever name a plugin reports.
        for (name, cli) in grants_by_name {
            let Some(spec) = plugins.iter_mut().find(|p| p.name == name) else {
                let known: Vec<&str> = plugins.iter().map(|p| p.name.as_str()).collect();
                return Err(format!(
                    "--plugin-config/--plugin-dir name plugin {name:?}, but no plugin is loaded \
                     under that name (loaded: {known:?}); a plugin's name is its file's stem or \
                     the NAME of --plugin NAME=FILE"
                ));
            };
            spec.grants.config.extend(cli.config);
            spec.grants.dirs.extend(cli.dirs);
        }

        let cache_bytes = parse_size(self.cache_bytes.as_deref().unwrap_or(defaults::CACHE_BYTES))?;
        let base_options = GroupOptions {
            cache_bytes,
            hot_cache_bytes: match &self.hot_cache_bytes {
                Some(s) => parse_size(s)?,
                None => cache_bytes / defaults::HOT_CACHE_DIVISOR,
            },
            hot_ttl: defaults::HOT_TTL,
            ttl: self.ttl.as_deref().map(parse_duration).transpose()?,
            negative_ttl: parse_duration(
                self.negative_ttl
                    .as_deref()
                    .unwrap_or(defaults::NEGATIVE_TTL),
            )?,
            max_key_bytes: self.max_key_bytes.unwrap_or(defaults::MAX_KEY_BYTES),
            max_value_bytes: size_usize(
                self.max_value_bytes
                    .as_deref()
                    .unwrap_or(defaults::MAX_VALUE_BYTES),
            )?,
            load_timeout: request_timeout,
            peer_timeout: parse_duration(
                self.peer_timeout
                    .as_deref()
                    .unwrap_or(defaults::PEER_TIMEOUT),
            )?,
            compression: self
                .compression
                .as_deref()
                .unwrap_or(defaults::COMPRESSION)
                .parse()?,
            compress_min_bytes: size_usize(
                self.compress_min_bytes
                    .as_deref()
                    .unwrap_or(defaults::COMPRESS_MIN_BYTES),
            )?,
            storage_queue_bytes: size_usize(
                self.storage_queue_bytes
                    .as_deref()
                    .unwrap_or(defaults::STORAGE_QUEUE_BYTES),
            )?,
        };
        let groups = if file.groups.is_empty() {
            vec![GroupSpec {
                name: self
                    .group
                    .clone()
                    .unwrap_or_else(|| defaults::GROUP.to_string()),
                getter: None,
                storage: self.storage.clone(),
                options: base_options,
            }]
        } else {
            file.groups
                .iter()
                .map(|g| self.group_from_file(g, &base_options))
                .collect::<Result<_, _>>()?
        };
        for g in &groups {
            validate_group_name(&g.name)?;
            if u32::try_from(g.options.max_value_bytes).is_err() {
                return Err(format!(
                    "group {:?}: values are limited to under 4 GiB (--max-value-bytes)",
                    g.name
                ));
            }
        }

        let bind = self
            .bind
            .or(file.bind)
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let port = self.port.or(file.port).unwrap_or(defaults::PORT);
        let advertise_addr = self.advertise_addr.clone().unwrap_or_else(|| {
            let host = if bind.is_unspecified() {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                bind
            };
            let addr = SocketAddr::new(host, port).to_string();
            if self.tls_cert.is_some() {
                format!("https://{addr}")
            } else {
                addr
            }
        });
        let cluster = ClusterSettings {
            node_id: self
                .node_id
                .clone()
                .unwrap_or_else(|| advertise_addr.clone()),
            advertise_addr,
            peers: self
                .peers
                .iter()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
            etcd_endpoints: self.etcd_endpoints.clone(),
            lease_ttl: parse_duration(self.lease_ttl.as_deref().unwrap_or(defaults::LEASE_TTL))?,
            etcd_max_members: match self.etcd_max_members {
                Some(0) => return Err("--etcd-max-members must be at least 1".into()),
                Some(n) => n,
                None => crate::discovery::etcd::DEFAULT_MAX_MEMBERS,
            },
            etcd_tls: self.etcd_tls()?,
            etcd_user: match (&self.etcd_user, &self.etcd_password) {
                (None, None) => None,
                (Some(name), Some(password)) => Some(crate::discovery::etcd::EtcdUser {
                    name: name.clone(),
                    password: password.clone(),
                }),
                _ => {
                    return Err(
                        "--etcd-user and --etcd-password (GEECACHE_ETCD_PASSWORD) go \
                                together"
                            .into(),
                    );
                }
            },
            secret: self.cluster_secret.clone().filter(|s| !s.is_empty()),
            peer_source: self.peer_source()?,
            peer_ca: self.peer_ca.clone(),
            peer_mtls: self.peer_mtls,
            peers_refresh: parse_duration(self.peers_refresh.as_deref().unwrap_or("5s"))
                .map_err(|e| format!("--peers-refresh: {e}"))?,
            peer_coalesce: match self.peer_coalesce {
                Some(n) if n > crate::peer::MAX_BATCH_KEYS => {
                    return Err(format!(
                        "--peer-coalesce {n}: a batch holds at most {} keys",
                        crate::peer::MAX_BATCH_KEYS
                    ));
                }
                Some(n) => n,
                None => crate::cluster::DEFAULT_COALESCE_KEYS,
            },
        };
        if self.peer_mtls && (self.tls_cert.is_none() || self.peer_ca.is_none()) {
            return Err(
                "--peer-mtls needs --tls-cert, --tls-key (this node's certificate, also shown to \
                 peers) and --peer-ca (what peers' certificates must chain to)"
                    .into(),
            );
        }
        let mut api = self.api_options(&file)?;
        let max_body_bytes = api.max_body_bytes;
        let mut server_limits = ServerLimits {
            max_connections: self
                .max_connections
                .unwrap_or(defaults::MAX_CONNECTIONS)
                .max(1),
            timeouts: crate::api::conn::ConnTimeouts {
                header: positive_duration(
                    "--header-timeout",
                    self.header_timeout.as_deref(),
                    defaults::HEADER_TIMEOUT,
                )?,
                idle: positive_duration(
                    "--idle-timeout",
                    self.idle_timeout.as_deref(),
                    defaults::IDLE_TIMEOUT,
                )?,
                write: positive_duration(
                    "--write-timeout",
                    self.write_timeout.as_deref(),
                    defaults::WRITE_TIMEOUT,
                )?,
            },
            max_inflight_body_bytes: size_usize(
                self.max_inflight_body_bytes
                    .as_deref()
                    .unwrap_or(defaults::MAX_INFLIGHT_BODY_BYTES),
            )?,
            body_timeout: parse_duration(
                self.body_timeout
                    .as_deref()
                    .unwrap_or(defaults::BODY_TIMEOUT),
            )?,
            max_body_bytes,
            max_batch_bytes: api.max_batch_bytes,
            max_plugin_bytes: api.max_plugin_bytes,
            per_client: self.per_client()?,
        };
        // An upload larger than all bodies in flight together could never be received.
        server_limits.max_plugin_bytes = server_limits
            .max_plugin_bytes
            .min(server_limits.max_inflight_body_bytes);
        api.max_plugin_bytes = server_limits.max_plugin_bytes;
        let largest = max_body_bytes.saturating_add(api.max_batch_bytes.saturating_mul(2));
        if server_limits.max_inflight_body_bytes < largest {
            return Err(format!(
                "--max-inflight-body-bytes ({}) is less than --max-body-bytes + 2 x \
                 --max-batch-bytes ({largest}): the largest request could never be served",
                server_limits.max_inflight_body_bytes
            ));
        }
        Ok(Settings {
            addr: SocketAddr::new(bind, port),
            plugins,
            groups,
            runtime,
            api,
            server_limits,
            log_json: self.log_json,
            watch_plugins: self.watch_plugins,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            cluster,
            shutdown_grace: parse_duration(
                self.shutdown_grace
                    .as_deref()
                    .unwrap_or(defaults::SHUTDOWN_GRACE),
            )
            .map_err(|e| format!("--shutdown-grace: {e}"))?,
            worker_threads: match self.worker_threads {
                Some(0) => return Err("--worker-threads must be at least 1".into()),
                n => n,
            },
            codec_concurrency: match self.codec_concurrency {
                Some(0) => return Err("--codec-concurrency must be at least 1".into()),
                Some(n) => n,
                None => crate::compression::builtin::default_concurrency(),
            },
        })
    }

    /// `--etcd-ca`, `--etcd-cert` and `--etcd-key`.
    fn etcd_tls(&self) -> Result<Option<crate::discovery::etcd::EtcdTls>, String> {
        let identity = match (&self.etcd_cert, &self.etcd_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            _ => return Err("--etcd-cert and --etcd-key go together".into()),
        };
        match (&self.etcd_ca, identity) {
            (None, None) => Ok(None),
            (None, Some(_)) => {
                Err("--etcd-cert needs --etcd-ca (the CA etcd's certificate chains to)".into())
            }
            (Some(ca), identity) => Ok(Some(crate::discovery::etcd::EtcdTls {
                ca: ca.clone(),
                identity,
            })),
        }
    }

    /// `--max-connections-per-client`, `--rate-limit` and `--rate-burst`.
    fn per_client(&self) -> Result<crate::api::conn::PerClient, String> {
        let rate = self.rate_limit.unwrap_or(0);
        let burst = match (rate, self.rate_burst) {
            (0, Some(_)) => return Err("--rate-burst needs --rate-limit".into()),
            (_, Some(0)) => return Err("--rate-burst must be at least 1".into()),
            (_, Some(b)) => b,
            (rate, None) => rate,
        };
        Ok(crate::api::conn::PerClient {
            max_connections: self.max_connections_per_client.unwrap_or(0),
            rate,
            burst,
        })
    }

    /// `--peers-file` or `--peers-dns`, which exclude each other, `--peers` and etcd.
    fn peer_source(&self) -> Result<Option<crate::discovery::PeerSource>, String> {
        use crate::discovery::PeerSource;
        let dns: Vec<String> = self
            .peers_dns
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        let sources = [
            !self.peers.is_empty(),
            self.peers_file.is_some(),
            !dns.is_empty(),
            !self.etcd_endpoints.is_empty(),
        ];
        if self.peers_file.is_some() || !dns.is_empty() {
            if sources.iter().filter(|s| **s).count() > 1 {
                return Err(
                    "pick one way to find the peers: --peers, --peers-file, --peers-dns or                      --etcd-endpoints"
                        .into(),
                );
            }
            for name in &dns {
                if name
                    .rsplit_once(':')
                    .is_none_or(|(_, p)| p.parse::<u16>().is_err())
                {
                    return Err(format!(
                        "--peers-dns {name:?}: expected NAME:PORT, e.g. geecache.default.svc.cluster.local:9999"
                    ));
                }
            }
        }
        Ok(match (&self.peers_file, dns.is_empty()) {
            (Some(path), _) => Some(PeerSource::File(path.clone())),
            (None, false) => Some(PeerSource::Dns(dns)),
            (None, true) => None,
        })
    }

    /// The API's limits and access rules, flags winning over the file.
    fn api_options(&self, file: &FileConfig) -> Result<ApiOptions, String> {
        let size = |cli: &Option<String>, file: &Option<String>, default: &str| {
            size_usize(cli.as_deref().or(file.as_deref()).unwrap_or(default))
        };
        let peer_concurrency = self
            .peer_concurrency
            .or(file.peer_concurrency)
            .unwrap_or(defaults::PEER_CONCURRENCY);
        if peer_concurrency == 0 {
            return Err("--peer-concurrency must be at least 1".into());
        }
        let token = match &self.api_token {
            Some(t) => Some(ApiToken::new(t).map_err(|e| format!("--api-token: {e}"))?),
            None => None,
        };
        if self.api_token_reads && token.is_none() {
            return Err("--api-token-reads needs --api-token".into());
        }
        let admin = match &self.admin_token {
            Some(t) if Some(t) == self.api_token.as_ref() => {
                return Err(
                    "--admin-token must differ from --api-token: whoever may read and write \
                     must not also be able to replace the node's code"
                        .into(),
                );
            }
            Some(t) => Some(ApiToken::new(t).map_err(|e| format!("--admin-token: {e}"))?),
            None => None,
        };
        let reload_dir = match &self.reload_dir {
            Some(dir) => {
                let canonical = std::fs::canonicalize(dir)
                    .map_err(|e| format!("--reload-dir {}: {e}", dir.display()))?;
                if !canonical.is_dir() {
                    return Err(format!("--reload-dir {}: not a directory", dir.display()));
                }
                Some(canonical)
            }
            None => None,
        };
        let clustered = !self.etcd_endpoints.is_empty()
            || !self.peers.is_empty()
            || self.peers_file.is_some()
            || !self.peers_dns.is_empty();
        if token.is_some() && clustered && self.cluster_secret.as_deref().is_none_or(str::is_empty)
        {
            return Err(
                "--api-token in a cluster needs --cluster-secret: without it the peer routes \
                 (/_geecache/...) accept writes from anyone, around the token"
                    .into(),
            );
        }
        Ok(ApiOptions {
            max_body_bytes: size(
                &self.max_body_bytes,
                &file.max_body_bytes,
                defaults::MAX_BODY_BYTES,
            )?,
            max_batch_bytes: size(
                &self.max_batch_bytes,
                &file.max_batch_bytes,
                defaults::MAX_BATCH_BYTES,
            )?,
            max_plugin_bytes: size_usize(
                self.max_plugin_bytes
                    .as_deref()
                    .unwrap_or(defaults::MAX_PLUGIN_BYTES),
            )
            .map_err(|e| format!("--max-plugin-bytes: {e}"))?,
            require_peer_cert: self.peer_mtls,
            peer_concurrency,
            access: Access {
                token,
                reads: self.api_token_reads,
                admin,
                reload_dir,
            },
        })
    }

    /// A file group, with CLI flags winning over the file's values.
    fn group_from_file(&self, g: &FileGroup, base: &GroupOptions) -> Result<GroupSpec, String> {
        let ctx = |e: String| format!("group {:?}: {e}", g.name);
        // A file group with its own cache budget gets the default share of it as hot cache,
        // unless --hot-cache-bytes says otherwise.
        let (cache_bytes, hot_cache_bytes) = match (&self.cache_bytes, &g.cache_bytes) {
            (None, Some(s)) => {
                let bytes = parse_size(s).map_err(ctx)?;
                let hot = match &self.hot_cache_bytes {
                    None => bytes / defaults::HOT_CACHE_DIVISOR,
                    Some(_) => base.hot_cache_bytes,
                };
                (bytes, hot)
            }
            _ => (base.cache_bytes, base.hot_cache_bytes),
        };
        let options = GroupOptions {
            cache_bytes,
            hot_cache_bytes,
            ttl: match (&self.ttl, &g.ttl) {
                (None, Some(s)) => Some(parse_duration(s).map_err(ctx)?),
                _ => base.ttl,
            },
            negative_ttl: match (&self.negative_ttl, &g.negative_ttl) {
                (None, Some(s)) => parse_duration(s).map_err(ctx)?,
                _ => base.negative_ttl,
            },
            max_key_bytes: self
                .max_key_bytes
                .or(g.max_key_bytes)
                .unwrap_or(base.max_key_bytes),
            max_value_bytes: match (&self.max_value_bytes, &g.max_value_bytes) {
                (None, Some(s)) => size_usize(s).map_err(ctx)?,
                _ => base.max_value_bytes,
            },
            compression: match (&self.compression, &g.compression) {
                (None, Some(s)) => s.parse().map_err(ctx)?,
                _ => base.compression.clone(),
            },
            compress_min_bytes: match (&self.compress_min_bytes, &g.compress_min_bytes) {
                (None, Some(s)) => size_usize(s).map_err(ctx)?,
                _ => base.compress_min_bytes,
            },
            ..base.clone()
        };
        Ok(GroupSpec {
            name: g.name.clone(),
            getter: g.getter.clone(),
            storage: self.storage.clone().or_else(|| g.storage.clone()),
            options,
        })
    }
}

/// Group names appear in URL paths: keep them plain.
fn validate_group_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "group name {name:?}: use 1-64 characters of A-Z, a-z, 0-9, '_', '-', '.'"
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::plugin::InstanceMode;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["geecache-host"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap()
    }

    #[test]
    fn defaults_serve_scores_on_9999() {
        let s = cli(&["--plugin", "plugins/db_getter.wasm"])
            .resolve()
            .unwrap();
        assert_eq!(s.addr, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(s.groups.len(), 1);
        assert_eq!(s.groups[0].name, "scores");
        assert_eq!(s.groups[0].options.cache_bytes, 64 << 20);
        assert_eq!(s.plugins.len(), 1);
    }

    #[test]
    fn plugin_instances_are_reused_by_default_and_configurable() {
        let plugin = ["--plugin", "plugins/db_getter.wasm"];
        let s = cli(&plugin).resolve().unwrap();
        assert_eq!(s.runtime.instances.mode, InstanceMode::Reuse);
        assert_eq!(s.runtime.instances.max_calls, 10_000);
        assert_eq!(
            s.runtime.instances.max_memory,
            32 << 20,
            "half of --plugin-memory"
        );

        let mut args = plugin.to_vec();
        args.extend([
            "--plugin-instances",
            "fresh",
            "--plugin-memory",
            "16MiB",
            "--plugin-instance-calls",
            "5",
        ]);
        let s = cli(&args).resolve().unwrap();
        assert_eq!(s.runtime.instances.mode, InstanceMode::Fresh);
        assert_eq!(s.runtime.instances.max_calls, 5);
        assert_eq!(s.runtime.instances.max_memory, 8 << 20);

        let mut bad = plugin.to_vec();
        bad.extend(["--plugin-instances", "pooled"]);
        let err = cli(&bad).resolve().unwrap_err();
        assert!(err.contains("\"reuse\" or \"fresh\""), "{err}");
        let mut zero = plugin.to_vec();
        zero.extend(["--plugin-instance-calls", "0"]);
        assert!(cli(&zero).resolve().unwrap_err().contains("at least 1"));
    }

    #[test]
    fn grants_go_to_the_name_the_operator_gave() {
        let s = cli(&[
            "--plugin",
            "plugins/db_getter.wasm,fs=plugins/fs_storage.wasm",
            "--plugin-config",
            "db_getter.database=/tmp/x.db",
            "--plugin-dir",
            "fs=/tmp",
            "--plugin-dir",
            "fs=/var/cache/g:/cache:rw",
        ])
        .resolve()
        .unwrap();
        let [db, fs] = &s.plugins[..] else {
            panic!("two plugins")
        };
        assert_eq!((db.name.as_str(), fs.name.as_str()), ("db_getter", "fs"));
        assert_eq!(db.grants.config["database"], "/tmp/x.db");
        assert!(db.grants.dirs.is_empty() && fs.grants.config.is_empty());
        let read_only = DirGrant {
            host: PathBuf::from("/tmp"),
            guest: "/data".into(),
            writable: false,
        };
        let writable = DirGrant {
            host: PathBuf::from("/var/cache/g"),
            guest: "/cache".into(),
            writable: true,
        };
        assert_eq!(fs.grants.dirs, [read_only, writable]);
    }

    #[test]
    fn a_grant_to_a_name_no_plugin_has_is_refused() {
        // A plugin that reports "db_getter" about itself gets nothing meant for db_getter.
        let err = cli(&[
            "--plugin",
            "plugins/evil.wasm",
            "--plugin-config",
            "db_getter.database=/srv/secret.db",
        ])
        .resolve()
        .unwrap_err();
        assert!(
            err.contains("\"db_getter\"") && err.contains("evil"),
            "{err}"
        );
        let err = cli(&["--plugin", "a/x.wasm,b/x.wasm"])
            .resolve()
            .unwrap_err();
        assert!(err.contains("--plugin NAME=FILE"), "{err}");
        let err = cli(&["--plugin", "Bad Name=x.wasm"]).resolve().unwrap_err();
        assert!(err.contains("a-z"), "{err}");
    }

    #[test]
    fn bad_values_name_the_fix() {
        let err = cli(&["--plugin-config", "nodot"]).resolve().unwrap_err();
        assert!(err.contains("NAME.KEY=VALUE"), "{err}");
        let err = cli(&["--api-token", "t", "--peers", "127.0.0.1:1"])
            .resolve()
            .unwrap_err();
        assert!(err.contains("--cluster-secret"), "{err}");
        let err = cli(&["--plugin-dir", "fs=:rw"]).resolve().unwrap_err();
        assert!(err.contains("HOST_DIR[:GUEST_DIR][:rw]"), "{err}");
        let err = cli(&["--cache-bytes", "lots"]).resolve().unwrap_err();
        assert!(err.contains("64MiB"), "{err}");
        let err = cli(&["--ttl", "soon"]).resolve().unwrap_err();
        assert!(err.contains("10m"), "{err}");
    }

    #[test]
    fn file_groups_and_flag_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("geecache.toml");
        std::fs::write(
            &path,
            r#"
port = 8001
[[plugins]]
path = "db_getter.wasm"
config = { database = "scores.db" }
[[groups]]
name = "scores"
cache_bytes = "1MiB"
ttl = "10m"
[[groups]]
name = "users"
getter = "db_getter"
compression = "zstd:5"
compress_min_bytes = "1KiB"
storage = "fs_storage"
"#,
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let s = cli(&["--config", p, "--port", "8002"]).resolve().unwrap();
        assert_eq!(s.addr.port(), 8002, "the flag wins over the file");
        assert_eq!(s.groups.len(), 2);
        assert_eq!(s.groups[0].options.cache_bytes, 1 << 20);
        assert_eq!(s.groups[0].options.ttl, Some(Duration::from_secs(600)));
        assert_eq!(s.groups[1].getter.as_deref(), Some("db_getter"));
        assert_eq!(s.plugins[0].path, dir.path().join("db_getter.wasm"));
        assert_eq!(s.plugins[0].grants.config["database"], "scores.db");
        let users = &s.groups[1];
        assert_eq!(users.options.compression.to_string(), "zstd:5");
        assert_eq!(users.options.compress_min_bytes, 1024);
        assert_eq!(users.storage.as_deref(), Some("fs_storage"));
        assert_eq!(s.groups[0].options.compression.to_string(), "none");

        let s = cli(&["--config", p, "--compression", "lz4"])
            .resolve()
            .unwrap();
        assert_eq!(
            s.groups[1].options.compression.to_string(),
            "lz4",
            "the flag wins"
        );
        let err = cli(&["--compression", "zstd:high"]).resolve().unwrap_err();
        assert!(err.contains("e.g. zstd:3"), "{err}");
    }

    #[test]
    fn storage_queue_bytes_from_the_flag_or_the_default() {
        let s = cli(&["--plugin", "plugins/db_getter.wasm"])
            .resolve()
            .unwrap();
        assert_eq!(s.groups[0].options.storage_queue_bytes, 64 << 20);
        let s = cli(&[
            "--plugin",
            "plugins/db_getter.wasm",
            "--storage-queue-bytes",
            "1MiB",
        ])
        .resolve()
        .unwrap();
        assert_eq!(s.groups[0].options.storage_queue_bytes, 1 << 20);
    }

    #[test]
    fn admin_routes_and_connection_timers_from_flags() {
        let s = cli(&[]).resolve().unwrap();
        assert!(s.api.access.admin.is_none() && s.api.access.reload_dir.is_none());
        assert_eq!(
            s.server_limits.timeouts,
            crate::api::conn::ConnTimeouts::default()
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let s = cli(&[
            "--admin-token",
            "a",
            "--reload-dir",
            d,
            "--idle-timeout",
            "5s",
        ])
        .resolve()
        .unwrap();
        assert!(s.api.access.admin.is_some());
        assert_eq!(
            s.api.access.reload_dir,
            Some(std::fs::canonicalize(d).unwrap())
        );
        assert_eq!(s.server_limits.timeouts.idle, Duration::from_secs(5));
        let err = cli(&["--admin-token", "t", "--api-token", "t"])
            .resolve()
            .unwrap_err();
        assert!(err.contains("must differ"), "{err}");
        let missing = dir.path().join("missing");
        let err = cli(&["--reload-dir", missing.to_str().unwrap()])
            .resolve()
            .unwrap_err();
        assert!(err.contains("--reload-dir"), "{err}");
        let err = cli(&["--write-timeout", "0s"]).resolve().unwrap_err();
        assert!(err.contains("more than 0"), "{err}");
    }

    #[test]
    fn etcd_tls_and_user_from_flags() {
        use crate::discovery::etcd::{EtcdTls, EtcdUser};
        let s = cli(&[]).resolve().unwrap();
        assert!(s.cluster.etcd_tls.is_none() && s.cluster.etcd_user.is_none());
        let s = cli(&[
            "--etcd-endpoints",
            "https://127.0.0.1:2379",
            "--etcd-ca",
            "/ca.pem",
            "--etcd-cert",
            "/n.pem",
            "--etcd-key",
            "/n.key",
            "--etcd-user",
            "geecache",
            "--etcd-password",
            "pw",
        ])
        .resolve()
        .unwrap();
        assert_eq!(
            s.cluster.etcd_tls,
            Some(EtcdTls {
                ca: "/ca.pem".into(),
                identity: Some(("/n.pem".into(), "/n.key".into())),
            })
        );
        let user = s.cluster.etcd_user.unwrap();
        assert_eq!(
            user,
            EtcdUser {
                name: "geecache".into(),
                password: "pw".into()
            }
        );
        assert!(
            !format!("{user:?}").contains("pw"),
            "the password is never printed"
        );
        for (args, wanted) in [
            (&["--etcd-cert", "/n.pem"][..], "go together"),
            (
                &["--etcd-cert", "/n.pem", "--etcd-key", "/n.key"][..],
                "needs --etcd-ca",
            ),
            (&["--etcd-user", "u"][..], "go together"),
            (&["--etcd-max-members", "0"][..], "at least 1"),
        ] {
            let err = cli(args).resolve().unwrap_err();
            assert!(err.contains(wanted), "{args:?}: {err}");
        }
    }

    #[test]
    fn per_client_limits_and_codec_lanes_from_flags() {
        use crate::api::conn::PerClient;
        let s = cli(&[]).resolve().unwrap();
        assert_eq!(
            s.server_limits.per_client,
            PerClient::default(),
            "off by default"
        );
        assert_eq!(
            s.codec_concurrency,
            crate::compression::builtin::default_concurrency()
        );
        let s = cli(&[
            "--max-connections-per-client",
            "8",
            "--rate-limit",
            "50",
            "--codec-concurrency",
            "3",
        ])
        .resolve()
        .unwrap();
        assert_eq!(
            s.server_limits.per_client,
            PerClient {
                max_connections: 8,
                rate: 50,
                burst: 50,
            },
            "the burst defaults to one second's worth"
        );
        assert_eq!(s.codec_concurrency, 3);
        let s = cli(&["--rate-limit", "5", "--rate-burst", "20"])
            .resolve()
            .unwrap();
        assert_eq!(s.server_limits.per_client.burst, 20);
        for (args, wanted) in [
            (&["--rate-burst", "5"][..], "needs --rate-limit"),
            (
                &["--rate-limit", "5", "--rate-burst", "0"][..],
                "at least 1",
            ),
            (&["--codec-concurrency", "0"][..], "at least 1"),
        ] {
            let err = cli(args).resolve().unwrap_err();
            assert!(err.contains(wanted), "{args:?}: {err}");
        }
    }

    #[test]
    fn api_limits_and_token_from_flags_file_and_defaults() {
        let s = cli(&[]).resolve().unwrap();
        assert_eq!(s.api.max_batch_bytes, 4 << 20);
        assert_eq!(s.api.max_body_bytes, 16 << 20);
        assert_eq!(s.api.peer_concurrency, 256);
        assert!(s.api.access.token.is_none());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limits.toml");
        std::fs::write(&path, "max_batch_bytes = \"1MiB\"\npeer_concurrency = 8\n").unwrap();
        let p = path.to_str().unwrap();
        let s = cli(&["--config", p]).resolve().unwrap();
        assert_eq!(
            (s.api.max_batch_bytes, s.api.peer_concurrency),
            (1 << 20, 8)
        );
        let s = cli(&[
            "--config",
            p,
            "--max-batch-bytes",
            "64KiB",
            "--api-token",
            "t",
        ])
        .resolve()
        .unwrap();
        assert_eq!(s.api.max_batch_bytes, 64 << 10, "the flag wins");
        assert!(s.api.access.token.is_some() && !s.api.access.reads);

        let err = cli(&["--api-token-reads"]).resolve().unwrap_err();
        assert!(err.contains("--api-token"), "{err}");
        let err = cli(&["--api-token", ""]).resolve().unwrap_err();
        assert!(err.contains("empty"), "{err}");
        let err = cli(&["--peer-concurrency", "0"]).resolve().unwrap_err();
        assert!(err.contains("at least 1"), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "prot = 1\n").unwrap();
        let err = cli(&["--config", path.to_str().unwrap()])
            .resolve()
            .unwrap_err();
        assert!(err.contains("prot"), "{err}");
    }
}
