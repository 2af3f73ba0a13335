//! The command line: every flag of `geecache-host`, each with its `GEECACHE_*` env fallback.
//! Only what was given is kept here (`None` when absent); defaults are applied when the flags
//! are resolved (see the sibling modules), so that a config file can sit between the two.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;

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
    /// file) and `query`. Several in one value (or in the env variable) are separated by commas;
    /// a comma not followed by `NAME.KEY=` stays in the value (`db_getter.query=SELECT a, b ...`).
    #[arg(
        long = "plugin-config",
        value_name = "NAME.KEY=VALUE",
        env = "GEECACHE_PLUGIN_CONFIG"
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

    /// Allow the getter loaded as NAME outbound HTTP to these origins,
    /// `NAME=SCHEME://HOST[:PORT][,...]` (repeatable; several in one value, or in the env
    /// variable, are separated by `;`). HOST may be `*.domain` or `*`, PORT `*`; e.g.
    /// `http_getter=https://api.example.com,https://*.internal:8443`. Names that resolve to
    /// loopback or link-local addresses are refused unless the address is listed too, e.g.
    /// `http://127.0.0.1:8080`. Getters get no network otherwise.
    #[arg(
        long = "plugin-http",
        value_name = "NAME=URL[,URL]",
        env = "GEECACHE_PLUGIN_HTTP",
        value_delimiter = ';'
    )]
    pub plugin_http: Vec<String>,

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

    /// How long past its expiry a value is still answered (X-Geecache-Source: stale) while
    /// one background refresh per key reloads it at its owner; a failing source is covered
    /// for as long (stale-if-error); 0s disables [default: 0s].
    #[arg(long, value_name = "DURATION", env = "GEECACHE_STALE")]
    pub stale: Option<String>,

    /// Window before expiry in which hits may refresh a value early, more likely as the
    /// expiry nears (XFetch); 0s disables [default: 0s].
    #[arg(long, value_name = "DURATION", env = "GEECACHE_REFRESH_AHEAD")]
    pub refresh_ahead: Option<String>,

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

    /// Host names clients may reach this node by (the `Host` header), comma-separated, besides
    /// its --advertise-addr's host, IP literals and localhost; `*` takes any (behind a proxy
    /// that checks Host itself). Other names get 403 host_not_allowed, so a web page cannot
    /// reach the node through DNS rebinding.
    #[arg(long, env = "GEECACHE_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_host: Vec<String>,

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

    /// Outbound HTTP requests one plugin call may have in flight; past it a request fails at
    /// once with `connection-limit-reached` [default: 16].
    #[arg(long, env = "GEECACHE_PLUGIN_HTTP_PER_CALL")]
    pub plugin_http_per_call: Option<usize>,

    /// Outbound HTTP requests one plugin may have in flight, all its calls together [default:
    /// 64].
    #[arg(long, env = "GEECACHE_PLUGIN_HTTP_CONCURRENCY")]
    pub plugin_http_concurrency: Option<usize>,

    /// Name lookups of one plugin's outbound HTTP running at once, each on a thread until the
    /// system's resolver answers or gives up; the others wait [default: 4].
    #[arg(long, env = "GEECACHE_PLUGIN_DNS_CONCURRENCY")]
    pub plugin_dns_concurrency: Option<usize>,

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

    /// For this long after the ring changes (or after this node joins), a key this node newly
    /// owns is first asked of the node that held it before, from memory, before the storage
    /// tier's miss goes to the getter (warm handoff); 0s disables [default: 1m].
    #[arg(long, value_name = "DURATION", env = "GEECACHE_HANDOFF_WINDOW")]
    pub handoff_window: Option<String>,

    /// The handoff window ends early once this many keys in a row were found in no previous
    /// owner's memory (a cluster that started cold has nothing to hand over, and each peek is
    /// a peer round trip); 0 keeps the whole window [default: 256].
    #[arg(long, value_name = "KEYS", env = "GEECACHE_HANDOFF_MAX_MISSES")]
    pub handoff_max_misses: Option<u64>,

    /// Longest a key's new owner waits for the previous owner's answer to such a peek before
    /// loading the key itself [default: 50ms].
    #[arg(long, value_name = "DURATION", env = "GEECACHE_HANDOFF_TIMEOUT")]
    pub handoff_timeout: Option<String>,

    /// On shutdown, during --shutdown-grace, the node hands the values it owns to their next
    /// owners (the node that owns each key without it), at most this many bytes of keys and
    /// values in all, so its keys are not loaded again while it is away or when it comes back;
    /// 0 disables [default: 64MiB].
    #[arg(long, value_name = "BYTES", env = "GEECACHE_HANDOFF_BYTES")]
    pub handoff_bytes: Option<String>,

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
