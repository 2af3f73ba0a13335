//! Wiring: plugins → groups → cluster → router → listener, and graceful shutdown.
//!
//! [`build`] turns [`Settings`] into a [`Node`] (plugins compiled, groups created, this node
//! alone on its ring); [`join`] brings in the other members (static list or etcd registration)
//! once the node is ready to serve; [`run`] serves a node on a bound listener until a shutdown
//! future resolves, then stops in this order:
//! 1. marks the node as draining: `/readyz` answers 503 from now on;
//! 2. leaves the cluster (deregisters from etcd), so peers stop routing keys here;
//! 3. keeps serving for the shutdown grace (`--shutdown-grace`), so load balancers polling
//!    `/readyz` stop sending before connections are refused; meanwhile it hands the values it
//!    owns to their next owners (`--handoff-bytes`, within three quarters of the grace);
//! 4. stops accepting connections and waits (at most [`DRAIN_TIMEOUT`]) for requests in flight;
//! 5. waits (at most [`DRAIN_TIMEOUT`] again) for the storage tiers' queued writes (getter
//!    loads' write-through; clients' writes were awaited before they were acknowledged), and
//!    logs how many were written and how many it gave up on.
//!
//! [`run`] also watches the plugin files with `--watch-plugins`; [`main`] reloads changed
//! plugins on SIGHUP.
//!
//! Tests call all three with a listener on `127.0.0.1:0`; the binary calls [`main`].

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;

use crate::api::conn::LimitedListener;
use crate::api::guard::RequestGuard;
use crate::api::{self, AppState};
use crate::cache::SystemClock;
use crate::cluster::Cluster;
use crate::compression::Codecs;
use crate::config::{Cli, Settings};
use crate::discovery::{EtcdOptions, Member, Membership, RegistryKey};
use crate::group::{Group, Groups};
use crate::peer::{ClusterSecret, NodeAuth};
use crate::plugin::{Plugins, Runtime};
use crate::telemetry::Metrics;

/// How long requests in flight may take to finish once the node stops accepting connections;
/// and, after them, how long queued storage writes may take.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A node ready to serve: its API state and the plugin runtime behind it.
#[derive(Debug, Clone)]
pub struct Node {
    /// Handlers' shared state (groups, plugins).
    pub state: AppState,
    /// Kept alive for as long as the node runs (engine, epoch ticker).
    pub runtime: Arc<Runtime>,
    /// Ring and peers; a single node is a cluster of one.
    pub cluster: Arc<Cluster>,
    /// What all requests together may hold: connections and request bodies.
    pub guard: RequestGuard,
    /// How long [`run`] keeps serving, not ready, before it stops accepting connections.
    pub shutdown_grace: Duration,
    /// Most bytes [`run`] hands to the keys' next owners during the grace (0: none).
    pub handoff_bytes: u64,
    /// Whether [`run`] reloads plugins whose files are replaced (`--watch-plugins`).
    pub watch_plugins: bool,
    /// TLS of the node's port, when it serves TLS (`--tls-cert`).
    pub tls: Option<crate::tls::ServerTls>,
}

/// Loads every plugin and builds every group of `settings`.
///
/// Compiles plugins (CPU-heavy, seconds on a cold compile cache): call it before serving, from
/// a blocking context.
///
/// # Errors
/// A message saying which plugin or group is wrong and how to fix it.
pub fn build(settings: &Settings) -> Result<Node, String> {
    // One set of meters per node (several nodes may share a process in tests).
    let metrics = Metrics::new(&settings.cluster.advertise_addr, crate::api::stats::TABLES);
    let runtime = Arc::new(
        Runtime::with_metrics(settings.runtime.clone(), metrics.clone())
            .map_err(|e| e.to_string())?,
    );
    if !runtime.is_pooling() {
        tracing::info!("plugin instances use on-demand allocation");
    }
    let plugins = Arc::new(Plugins::load(runtime.clone(), &settings.plugins)?);
    let getters = plugins.getters();
    let storages = plugins.storages();
    // Process-wide: the first node of a process sets it (see compression::builtin).
    crate::compression::builtin::set_concurrency(settings.codec_concurrency);
    let mut codecs = Codecs::builtin();
    for c in plugins.compressors() {
        codecs.add(c)?;
    }

    let c = &settings.cluster;
    let secret = match &c.secret {
        Some(s) => Some(ClusterSecret::new(s).map_err(|e| format!("--cluster-secret: {e}"))?),
        None => None,
    };
    let (peer_timeout, load_timeout) = settings
        .groups
        .first()
        .map_or((Duration::from_secs(1), Duration::from_secs(5)), |g| {
            (g.options.peer_timeout, g.options.load_timeout)
        });
    let client_ca = c.peer_ca.as_deref().filter(|_| c.peer_mtls);
    let tls = match &settings.tls {
        Some(files) => Some(crate::tls::ServerTls::load_with_client_ca(
            files.clone(),
            client_ca,
        )?),
        None => None,
    };
    let peer_tls = match &c.peer_ca {
        // With mutual TLS, peers are shown this node's certificate.
        Some(ca) => Some(crate::tls::peer_client_config(
            ca,
            tls.as_ref().filter(|_| c.peer_mtls),
        )?),
        None => None,
    };
    let cluster = Cluster::with_tls(
        &c.node_id,
        &c.advertise_addr,
        secret.clone(),
        peer_timeout,
        metrics.clone(),
        peer_tls,
    );
    cluster.set_coalesce_keys(c.peer_coalesce);
    cluster.set_handoff_window(c.handoff_window);
    cluster.set_handoff_max_misses(c.handoff_max_misses);
    // The owner takes up to its --request-timeout to store a write and a peer timeout to hear
    // the other nodes drop their copies; the exchange, up to a peer timeout more.
    cluster.set_write_timeout(load_timeout.saturating_add(peer_timeout.saturating_mul(2)));
    // A peer's answer holds at most what was asked: one value of the largest size a group
    // takes, or a batch within the budget.
    let max_value = settings
        .groups
        .iter()
        .map(|g| g.options.max_value_bytes)
        .max()
        .unwrap_or(crate::group::GroupOptions::default().max_value_bytes);
    cluster.set_answer_limits(max_value, settings.api.max_batch_bytes);

    let mut groups = Groups::default();
    for spec in &settings.groups {
        let getter = match &spec.getter {
            Some(name) => getters.iter().find(|g| g.name() == name).cloned().ok_or_else(|| {
                format!(
                    "group {:?} wants getter {name:?}, but no loaded getter plugin reports that \
                     name (loaded getters: {:?})",
                    spec.name,
                    getters.iter().map(|g| g.name()).collect::<Vec<_>>()
                )
            })?,
            None => getters.first().cloned().ok_or_else(|| {
                format!(
                    "group {:?} needs a getter: pass one, e.g. \
                     `geecache-host --plugin plugins/db_getter.wasm` (build it with \
                     `bash plugins/build.sh`)",
                    spec.name
                )
            })?,
        };
        let storage = match spec.storage.as_deref() {
            Some("none") => None,
            Some(name) => Some(storages.iter().find(|s| s.name() == name).cloned().ok_or_else(
                || {
                    format!(
                        "group {:?} wants storage {name:?}, but no loaded storage plugin reports \
                         that name (loaded storage plugins: {:?}); load one with --plugin, or \
                         pass --storage none",
                        spec.name,
                        storages.iter().map(|s| s.name()).collect::<Vec<_>>()
                    )
                },
            )?),
            None => storages.first().cloned(),
        };
        let mut builder = Group::builder(spec.name.clone(), getter)
            .options(spec.options.clone())
            .clock(Arc::new(SystemClock))
            .peers(cluster.clone())
            .codecs(codecs.clone());
        if let Some(storage) = storage {
            builder = builder.storage(storage);
        }
        let group = builder.build().map_err(|e| {
            format!(
                "group {:?}: {e} (--compression, or `compression` in the config file)",
                spec.name
            )
        })?;
        groups.insert(group)?;
    }
    let default_group = settings
        .groups
        .first()
        .map(|g| g.name.clone())
        .unwrap_or_default();
    let state = AppState::new(
        groups,
        default_group,
        plugins.clone(),
        settings.api.clone(),
        cluster.clone(),
        // Requests must be signed for this node's advertised address, and after now.
        secret.map(|s| NodeAuth::new(s, &c.advertise_addr)),
        metrics,
    );
    let guard = RequestGuard::new(settings.server_limits.clone())
        .counting_in(state.connections().clone())
        .peers_signed(c.secret.is_some());
    Ok(Node {
        state,
        runtime,
        cluster,
        guard,
        shutdown_grace: settings.shutdown_grace,
        handoff_bytes: c.handoff_bytes,
        watch_plugins: settings.watch_plugins,
        tls,
    })
}

/// Brings the other members into the node's ring: registers in etcd and follows it, or takes
/// the static `--peers` list. Call it once the node can serve (peers route keys to it at once).
///
/// # Errors
/// When etcd cannot be reached at startup (the message names the endpoints and the fix).
pub async fn join(node: &Node, settings: &Settings) -> Result<(), String> {
    let c = &settings.cluster;
    let me = Member {
        id: c.node_id.clone(),
        addr: c.advertise_addr.clone(),
    };
    let membership = if let Some(source) = &c.peer_source {
        Membership::polled(me, source.clone(), c.peers_refresh)
            .await
            .map_err(|e| e.to_string())?
    } else if c.etcd_endpoints.is_empty() {
        let peers = c
            .peers
            .iter()
            .map(|a| Member {
                id: a.clone(),
                addr: a.clone(),
            })
            .collect();
        Membership::fixed(me, peers)
    } else {
        let options = EtcdOptions {
            lease_ttl: c.lease_ttl,
            max_members: c.etcd_max_members,
            tls: c.etcd_tls.clone(),
            user: c.etcd_user.clone(),
            signing: c.secret.as_deref().map(RegistryKey::new),
            ..EtcdOptions::new(c.etcd_endpoints.clone())
        };
        Membership::etcd(me, options)
            .await
            .map_err(|e| e.to_string())?
    };
    node.cluster.join(membership);
    if c.is_clustered() && c.secret.is_none() {
        tracing::warn!(
            "no --cluster-secret: the peer routes under /_geecache/ accept requests from anyone \
             who can reach this port; set the same secret on every node"
        );
    }
    tracing::info!(members = ?node.cluster.ring_members(), "cluster joined");
    Ok(())
}

/// Serves `node` on `listener` until `shutdown` resolves, then stops as the module doc says:
/// not ready, out of the cluster, the grace, then requests and storage writes drained (each
/// for at most [`DRAIN_TIMEOUT`]).
///
/// # Errors
/// I/O errors of the listener.
pub async fn run(
    listener: TcpListener,
    node: Node,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = node.state.clone();
    let cluster = node.cluster.clone();
    let grace = node.shutdown_grace;
    let handoff_bytes = node.handoff_bytes;
    let _watch = if node.watch_plugins {
        Some(crate::plugin::watch::watch(state.plugins().clone()).map_err(std::io::Error::other)?)
    } else {
        None
    };
    let app = node.guard.apply(api::router(node.state.clone()));
    let limits = node.guard.limits();
    let listener = LimitedListener::new(
        listener,
        limits.max_connections,
        limits.timeouts,
        node.guard.counters().clone(),
    )
    .per_client(limits.per_client.max_connections);
    let tls = node.tls.clone();
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        // Not ready first: whoever polls /readyz stops sending while we still serve.
        state.set_draining();
        // Then out of the ring, so no peer routes new keys here.
        cluster.leave().await;
        if !grace.is_zero() {
            tracing::info!(
                ?grace,
                "shutting down: not ready and out of the cluster; still serving for the grace"
            );
            // Meanwhile the keys' next owners take their values, within three quarters of the
            // grace: they are sent while this node still answers, and they take them.
            let handoff = async {
                if handoff_bytes == 0 {
                    return;
                }
                let deadline = tokio::time::Instant::now() + grace * 3 / 4;
                let sent = state.groups().hand_off(handoff_bytes, deadline).await;
                if sent.entries > 0 || sent.skipped > 0 {
                    tracing::info!(
                        entries = sent.entries,
                        bytes = sent.bytes,
                        skipped = sent.skipped,
                        "shutting down: handed values to their next owners"
                    );
                }
            };
            tokio::join!(handoff, tokio::time::sleep(grace));
        }
        tracing::info!("shutting down: no new connections; draining requests in flight");
        let _ = drain_tx.send(());
    };
    let drained = async {
        let _ = drain_rx.await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    let app = api::Shortcut::new(app, node.state.clone(), node.guard.clone());
    let served = match tls {
        Some(tls) => {
            let listener = crate::tls::TlsListener::new(listener, &tls);
            serve_tls_until(listener, app, signal, drained).await
        }
        None => serve_until(listener, app, signal, drained).await,
    };
    // Requests are done (or were given up on): what they queued is written now, and a
    // straggler's write is waited for too.
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    let drained = node.state.groups().drain_storage(deadline).await;
    if drained.abandoned > 0 {
        tracing::warn!(
            "storage tier: drained {} writes, gave up on {} writes after {DRAIN_TIMEOUT:?}",
            drained.written,
            drained.abandoned
        );
    } else if drained.written > 0 {
        tracing::info!("storage tier: drained {} writes", drained.written);
    }
    served
}

/// Serves `app` on `listener` until `signal` (graceful: requests in flight finish) or, after
/// it, until `drained` resolves (the drain timeout: remaining connections are closed).
async fn serve_until(
    listener: LimitedListener,
    app: api::Shortcut,
    signal: impl Future<Output = ()> + Send + 'static,
    drained: impl Future<Output = ()>,
) -> std::io::Result<()> {
    until_drained(
        api::serve(listener, move |io| app.for_connection(io.conn()), signal),
        drained,
    )
    .await
}

/// Runs `serve` until it ends, or until `drained` (the drain timeout) resolves first.
async fn until_drained(
    serve: impl Future<Output = ()>,
    drained: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let serve = std::pin::pin!(serve);
    tokio::select! {
        () = serve => Ok(()),
        () = drained => {
            tracing::warn!("drain timeout passed; closing remaining connections");
            Ok(())
        }
    }
}

/// [`serve_until`] for TLS connections, each with its [`crate::tls::PeerIdentity`] (whether
/// its client showed a verified certificate), which the peer routes check with `--peer-mtls`.
async fn serve_tls_until(
    listener: crate::tls::TlsListener<LimitedListener>,
    app: api::Shortcut,
    signal: impl Future<Output = ()> + Send + 'static,
    drained: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let serve = api::serve(
        listener,
        move |io| {
            let app = match io.inner() {
                Some(stream) => app.for_connection(stream.conn()),
                None => app.clone(),
            };
            app.with_identity(io.identity())
        },
        signal,
    );
    until_drained(serve, drained).await
}

/// Reloads, on every SIGHUP: the plugins whose files changed, and the TLS certificate.
async fn on_sighup(plugins: Arc<crate::plugin::Plugins>, tls: Option<crate::tls::ServerTls>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; plugins reload through the API only");
                return;
            }
        };
        while hup.recv().await.is_some() {
            if let Some(tls) = &tls
                && let Err(e) = tls.reload()
            {
                tracing::error!(error = %e, "SIGHUP: the TLS certificate was not reloaded; the old one is served");
            }
            crate::plugin::watch::reload_changed_on_signal(&plugins).await;
        }
    }
    #[cfg(not(unix))]
    drop((plugins, tls));
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// The `geecache-host` program: parse flags, start logging, build, bind, serve until a signal.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match cli.resolve() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("geecache-host: {e}");
            return ExitCode::from(2);
        }
    };
    // Held to the end of main: dropping it flushes the spans still buffered for OTLP.
    let _telemetry = crate::telemetry::init(settings.log_json);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = settings.worker_threads {
        builder.worker_threads(n);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("geecache-host: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(async move {
        // Bind first: a taken port fails before plugins compile, and `--port 0` learns its port.
        let listener = match TcpListener::bind(settings.addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "geecache-host: cannot listen on {}: {e} (pick another with --port or --bind)",
                    settings.addr
                );
                return ExitCode::from(2);
            }
        };
        let mut settings = settings;
        if let Some(host) = settings.cluster.advertise_addr.strip_suffix(":0")
            && let Ok(local) = listener.local_addr()
        {
            let advertise = format!("{host}:{}", local.port());
            if settings.cluster.node_id == settings.cluster.advertise_addr {
                settings.cluster.node_id.clone_from(&advertise);
            }
            settings.cluster.advertise_addr = advertise;
        }
        let built = tokio::task::spawn_blocking(move || build(&settings).map(|n| (n, settings))).await;
        // On the main thread too: only there does mimalloc take back the pages of threads that
        // ended (the load's probe threads).
        crate::plugin::load::release_freed_memory();
        let (node, settings) = match built {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                eprintln!("geecache-host: {e}");
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("geecache-host: startup failed: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = join(&node, &settings).await {
            eprintln!("geecache-host: {e}");
            return ExitCode::from(2);
        }
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let groups: Vec<String> = node.state.groups().iter().map(|g| g.name().to_string()).collect();
        tokio::spawn(on_sighup(node.state.plugins().clone(), node.tls.clone()));
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        tracing::info!(%addr, ?groups, workers, "geecache-host listening; try: curl \"http://{addr}/api?key=Tom\"");
        match run(listener, node, shutdown_signal()).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("geecache-host: server error: {e}");
                ExitCode::FAILURE
            }
        }
    });
    // A plugin call stuck in host code (a granted FIFO, a slow mount) must not keep the process
    // alive: blocking threads still running after the drain are abandoned.
    rt.shutdown_timeout(DRAIN_TIMEOUT);
    code
}
