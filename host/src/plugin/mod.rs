//! The WebAssembly plugin runtime (wasmtime component model, WASI preview 2).
//!
//! - One [`Runtime`] per process: a wasmtime `Engine` (pooling allocator when the machine allows
//!   it, on-demand otherwise), an epoch ticker thread for time limits, an on-disk cache of
//!   compiled components keyed by content hash, and one `Linker` per plugin kind with WASI and
//!   the host capabilities that kind may import (`log` and `config` for all, `sql` for getters
//!   only).
//! - [`Runtime::load`] compiles a component once, detects its kind from what it exports, asks it
//!   for its name, and returns a [`LoadedPlugin`] holding the grants the operator gave that file.
//! - A call runs on a warm instance of its plugin when one is idle (~1 µs), or on a new `Store`
//!   instantiated from an `InstancePre` (~20–30 µs), under a memory cap and a time limit. It
//!   runs on the caller's task (async wasmtime): no thread hop, which measured ~20 µs here.
//!   Wasm yields to the executor at every epoch tick (2 ms) and a SQL query runs inline for at
//!   most a 2 ms slice before moving to a blocking thread, so a slow or looping plugin shares
//!   its worker thread with other requests. A trap, panic or overrun fails that call with a
//!   [`PluginError`] and its instance is dropped, so nothing of it reaches the next call.
//!   Instances that ended cleanly are reused (`plugin/pool.rs` says when they are retired);
//!   `--plugin-instances fresh` gives every call a new one.
//!
//! What holds a call in (the trust model: plugins are operator-chosen but untrusted code):
//! - **Time.** Epoch interruption stops wasm at the deadline; host calls cannot outlast it either:
//!   a clock subscription (how a guest sleeps or waits) never waits past the call's deadline (see
//!   `plugin/host.rs`), and SQL carries the deadline into SQLite. The call's concurrency slot is held
//!   with its instance: a caller that gives up drops the call, which stops its wasm there.
//! - **Memory.** One budget per call over all linear memories and tables of the instance
//!   together (`--plugin-memory`).
//! - **Capabilities.** Only what the operator granted to the plugin's file (or alias): config
//!   values, directories (read-only unless granted `rw`), a database for getters. No sockets, no
//!   environment, no stdio.

mod bindings;
mod compressor;
mod error;
mod getter;
mod host;
pub mod metrics;
mod pool;
pub mod registry;
pub mod sql;
mod storage;
pub mod watch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::WasiCtx;

pub use compressor::WasmCompressor;
pub use error::PluginError;
pub use getter::WasmGetter;
pub use pool::{InstanceMode, InstancePolicy};
pub use registry::{Candidate, PluginEntry, Plugins, ReloadReport, Slot, Source};
pub use storage::WasmStorage;

use host::{CallLimiter, HostState};
use pool::IdleBudget;
pub(crate) use pool::{Pool, Warm};

use crate::telemetry::Metrics;

/// Most bytes one WASI `get-random-bytes` call may ask the host for (wasmtime-wasi's default is
/// 64 MiB, allocated outside the plugin's memory cap).
const MAX_RANDOM_BYTES: u64 = 64 << 10;

/// Pool slots beyond calls in flight and idle instances: load-time probes (`info`) take one
/// without a concurrency permit.
const PROBE_SLOTS: usize = 4;

/// How often the epoch ticker advances the engine's epoch: the granularity of time limits, and
/// the longest stretch wasm runs on a worker thread before it yields to other requests.
const EPOCH_TICK: Duration = Duration::from_millis(2);

/// WIT interface names (without version) that identify a plugin's kind.
const GETTER_EXPORT: &str = "geecache:plugin/getter";
const STORAGE_EXPORT: &str = "geecache:plugin/storage";
const COMPRESSOR_EXPORT: &str = "geecache:plugin/compressor";
const SQL_IMPORT: &str = "geecache:plugin/sql";

/// Limits and knobs of the plugin runtime; see `geecache-host --help` for the flags.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Largest linear memory one call may grow to, in bytes.
    pub memory_limit: usize,
    /// Longest one call may run before it is interrupted.
    pub call_timeout: Duration,
    /// Calls running at once across all plugins; also sizes the pooling allocator.
    pub max_concurrent_calls: usize,
    /// Where compiled components are cached on disk; `None` disables the cache.
    pub compile_cache_dir: Option<PathBuf>,
    /// Try the pooling allocator first (falls back to on-demand when it cannot be created).
    pub pooling: bool,
    /// Whether instances serve many calls, and when they are retired.
    pub instances: InstancePolicy,
}

impl RuntimeOptions {
    /// Idle instances the runtime keeps across all plugins: as many as calls may run at once
    /// when instances are reused, none otherwise.
    fn idle_cap(&self) -> usize {
        match self.instances.mode {
            InstanceMode::Reuse => self.max_concurrent_calls.max(1),
            InstanceMode::Fresh => 0,
        }
    }
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            memory_limit: 64 << 20,
            call_timeout: Duration::from_secs(1),
            max_concurrent_calls: 32,
            compile_cache_dir: None,
            pooling: true,
            instances: InstancePolicy::defaults(64 << 20),
        }
    }
}

/// A plugin to load and what it is granted.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// The operator's name for it (an alias, or the file's stem): what grants are bound to,
    /// whatever name the plugin reports about itself.
    pub name: String,
    /// The component file.
    pub path: PathBuf,
    /// Everything granted to `name`: its `[[plugins]]` table, then the command line's.
    pub grants: PluginGrants,
}

/// What the operator grants one plugin: bound to the file the operator named (or its alias),
/// never to the name the plugin reports about itself.
#[derive(Debug, Clone, Default)]
pub struct PluginGrants {
    /// Config values the plugin reads through the `config` import.
    pub config: BTreeMap<String, String>,
    /// Host directories preopened for the plugin.
    pub dirs: Vec<DirGrant>,
}

/// One host directory granted to a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the plugin sees it (e.g. `/data`).
    pub guest: String,
    /// Whether the plugin may create, change and delete files there; read-only otherwise.
    pub writable: bool,
}

/// The kind of a plugin, detected from the interface its component exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    /// Exports `geecache:plugin/getter`: loads values on a miss.
    Getter,
    /// Exports `geecache:plugin/storage`: a tier below memory.
    Storage,
    /// Exports `geecache:plugin/compressor`: a codec.
    Compressor,
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PluginKind::Getter => "getter",
            PluginKind::Storage => "storage",
            PluginKind::Compressor => "compressor",
        })
    }
}

/// A loaded plugin of any kind, ready to be called.
#[derive(Debug, Clone)]
pub enum LoadedPlugin {
    /// A getter.
    Getter(Arc<WasmGetter>),
    /// A storage backend.
    Storage(Arc<WasmStorage>),
    /// A compressor.
    Compressor(Arc<WasmCompressor>),
}

impl LoadedPlugin {
    /// The plugin's kind.
    pub fn kind(&self) -> PluginKind {
        match self {
            LoadedPlugin::Getter(_) => PluginKind::Getter,
            LoadedPlugin::Storage(_) => PluginKind::Storage,
            LoadedPlugin::Compressor(_) => PluginKind::Compressor,
        }
    }

    /// The shared part every kind has: name, version, counters.
    pub fn info(&self) -> &PluginCore {
        match self {
            LoadedPlugin::Getter(p) => p.core(),
            LoadedPlugin::Storage(p) => p.core(),
            LoadedPlugin::Compressor(p) => p.core(),
        }
    }

    /// A point-in-time copy of the plugin's counters.
    pub fn snapshot(&self) -> PluginSnapshot {
        let core = self.info();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PluginSnapshot {
            name: core.name.clone(),
            version: core.version.clone(),
            kind: self.kind().to_string(),
            calls: get(&core.stats.calls),
            traps: get(&core.stats.traps),
            timeouts: get(&core.stats.timeouts),
            memory_limits: get(&core.stats.memory_limits),
            reported_errors: get(&core.stats.reported_errors),
            busy_seconds: get(&core.stats.busy_micros) as f64 / 1e6,
            logs_dropped: get(&core.stats.logs_dropped),
            sha256: String::new(),
            reloads: 0,
            reload_failures: 0,
        }
    }
}

/// Counters of one plugin's calls, read by the stats endpoint.
#[derive(Debug, Default)]
pub struct PluginStats {
    /// Calls started.
    pub calls: AtomicU64,
    /// Calls that trapped (including guest panics).
    pub traps: AtomicU64,
    /// Calls interrupted by the time limit.
    pub timeouts: AtomicU64,
    /// Calls stopped by the memory cap.
    pub memory_limits: AtomicU64,
    /// Calls where the plugin reported an error of its own.
    pub reported_errors: AtomicU64,
    /// Total wall time spent in calls, in microseconds.
    pub busy_micros: AtomicU64,
    /// Log records dropped: past a call's log budget (see `host::LogBudget`).
    pub logs_dropped: AtomicU64,
    /// When a dropped record was last reported in the host's log (seconds since the Unix
    /// epoch), so that a plugin logging in a loop is reported once a minute, not once a call.
    pub logs_dropped_noted: AtomicU64,
}

/// A point-in-time copy of a plugin's counters, as `/api/v1/stats` and `/metrics` show them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginSnapshot {
    /// Reported name.
    pub name: String,
    /// Reported version.
    pub version: String,
    /// getter, storage or compressor.
    pub kind: String,
    /// See [`PluginStats::calls`].
    pub calls: u64,
    /// See [`PluginStats::traps`].
    pub traps: u64,
    /// See [`PluginStats::timeouts`].
    pub timeouts: u64,
    /// See [`PluginStats::memory_limits`].
    pub memory_limits: u64,
    /// See [`PluginStats::reported_errors`].
    pub reported_errors: u64,
    /// Wall time spent in calls ([`PluginStats::busy_micros`]), in seconds.
    pub busy_seconds: f64,
    /// See [`PluginStats::logs_dropped`].
    pub logs_dropped: u64,
    /// Hex SHA-256 of the version serving now (empty for a plugin outside a [`Plugins`]).
    pub sha256: String,
    /// Versions swapped in by hot reload since the node started.
    pub reloads: u64,
    /// Reloads refused (the old version kept serving).
    pub reload_failures: u64,
}

/// The wasmtime engine, linker and ticker shared by every plugin of the process.
pub struct Runtime {
    /// Compiles components and owns the epoch counter.
    engine: Engine,
    /// WASI plus the host capabilities a getter may import (`log`, `config`, `sql`).
    getter_linker: Linker<HostState>,
    /// WASI plus `log` and `config`: storage backends and compressors get no `sql`.
    plain_linker: Linker<HostState>,
    /// Limits applied to every call.
    options: RuntimeOptions,
    /// Whether the pooling allocator is in use (false after a fallback).
    pooling: bool,
    /// Bounds calls in flight so the pool (and memory) is never oversubscribed.
    permits: Arc<tokio::sync::Semaphore>,
    /// Caps idle (warm) instances across all plugins.
    idle: Arc<IdleBudget>,
    /// Stops the epoch ticker when the runtime is dropped.
    ticker_stop: Arc<AtomicBool>,
    /// The epoch ticker thread, joined on drop.
    ticker: Option<JoinHandle<()>>,
    /// Where the plugins' call latencies are recorded (the node's meters).
    metrics: Metrics,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("options", &self.options)
            .field("pooling", &self.pooling)
            .finish_non_exhaustive()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

fn base_config(options: &RuntimeOptions) -> wasmtime::Result<Config> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // Our calls are synchronous; without component-model concurrency a call is ~2x cheaper.
    config.concurrency_support(false);
    if let Some(dir) = &options.compile_cache_dir {
        let mut cache = wasmtime::CacheConfig::new();
        cache.with_directory(dir);
        config.cache(Some(wasmtime::Cache::new(cache)?));
    }
    Ok(config)
}

fn pooling_config(options: &RuntimeOptions) -> PoolingAllocationConfig {
    // Every live instance takes a slot: calls in flight, idle instances, and probes.
    let slots = options.max_concurrent_calls.max(1) + options.idle_cap() + PROBE_SLOTS;
    let slots = u32::try_from(slots).unwrap_or(u32::MAX);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(8))
        .total_memories(slots.saturating_mul(2))
        .total_tables(slots.saturating_mul(8))
        .max_memory_size(options.memory_limit)
        // A fiber stack per call in flight (calls are async).
        .total_stacks(slots)
        // Reset a released memory or table by rewriting only its dirty pages (found with
        // Linux's PAGEMAP_SCAN where the kernel has it, >= 6.7) instead of madvise: a new
        // instance then costs no page faults and no TLB-shootdown IPIs there. What is past
        // these bounds is still decommitted, in batches.
        .pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident(4 << 20)
        .table_keep_resident(1 << 20)
        .decommit_batch_size(16);
    pool
}

impl Runtime {
    /// A runtime whose call latencies go to meters of its own; see [`Runtime::with_metrics`].
    ///
    /// # Errors
    /// As [`Runtime::with_metrics`].
    pub fn new(options: RuntimeOptions) -> Result<Self, PluginError> {
        Self::with_metrics(options, Metrics::new("plugin-runtime", &[]))
    }

    /// Builds the engine (pooling allocator first, on-demand if the pool cannot be reserved),
    /// the linker and the epoch ticker. Plugin call latencies are recorded in `metrics`.
    ///
    /// # Errors
    /// When wasmtime cannot create an engine at all (unsupported platform, bad cache dir).
    pub fn with_metrics(options: RuntimeOptions, metrics: Metrics) -> Result<Self, PluginError> {
        let fail = |e: wasmtime::Error| PluginError::Load {
            path: "<runtime>".into(),
            message: format!("{e:#}"),
        };
        let mut engine = None;
        let mut pooling = false;
        if options.pooling {
            let mut config = base_config(&options).map_err(fail)?;
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(
                &options,
            )));
            match Engine::new(&config) {
                Ok(e) => {
                    engine = Some(e);
                    pooling = true;
                }
                Err(e) => tracing::warn!(
                    error = %format!("{e:#}"),
                    "pooling allocator unavailable here; using on-demand instance allocation"
                ),
            }
        }
        let engine = match engine {
            Some(e) => e,
            None => Engine::new(&base_config(&options).map_err(fail)?).map_err(fail)?,
        };
        let getter_linker = host::linker(&engine, true).map_err(fail)?;
        let plain_linker = host::linker(&engine, false).map_err(fail)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = ticker_stop.clone();
            std::thread::Builder::new()
                .name("geecache-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| PluginError::Load {
                    path: "<runtime>".into(),
                    message: format!("cannot start the epoch thread: {e}"),
                })?
        };
        Ok(Runtime {
            permits: Arc::new(tokio::sync::Semaphore::new(
                options.max_concurrent_calls.max(1),
            )),
            idle: Arc::new(IdleBudget::new(options.idle_cap())),
            engine,
            getter_linker,
            plain_linker,
            options,
            pooling,
            ticker_stop,
            ticker: Some(ticker),
            metrics,
        })
    }

    /// Whether the pooling allocator is in use.
    pub fn is_pooling(&self) -> bool {
        self.pooling
    }

    /// Plugin calls running right now, across all plugins: a slot is held from the moment a
    /// call starts until its instance is gone (not merely until its caller stopped waiting).
    pub fn calls_in_flight(&self) -> usize {
        self.options
            .max_concurrent_calls
            .max(1)
            .saturating_sub(self.permits.available_permits())
    }

    /// An empty pool of warm instances for one plugin, under this runtime's policy.
    pub(crate) fn new_pool<I>(&self) -> Pool<I> {
        Pool::new(self.options.instances, self.idle.clone())
    }

    /// Warm instances waiting for a call, across all plugins.
    pub fn idle_instances(&self) -> usize {
        self.idle.count()
    }

    /// Compiles (or fetches from the compile cache) the component at `path`, detects its kind,
    /// asks it for its name, and prepares it for calls with `grants`, which the operator gave
    /// this file (the plugin's own name plays no part in what it is granted).
    ///
    /// Compilation is CPU-heavy: call this from a blocking context (or before serving).
    ///
    /// # Errors
    /// [`PluginError::Load`] with a message that says what to fix: the file is missing, not a
    /// component, not a geecache plugin, imports something the host does not offer, its
    /// database is missing, or its `info` call fails.
    pub fn load(&self, path: &Path, grants: PluginGrants) -> Result<LoadedPlugin, PluginError> {
        let bytes = read_component(path, MAX_COMPONENT_FILE_BYTES).map_err(|e| PluginError::Load {
            path: path.display().to_string(),
            message: format!(
                "{e}; build the plugins with `bash plugins/build.sh`, which writes plugins/<name>.wasm"
            ),
        })?;
        self.load_bytes(&bytes, path, grants, None)
    }

    /// [`Runtime::load`] of a component's bytes. `path` is the file the plugin is known by (in
    /// messages, and where its default database is looked for); `stats`, when given, are the
    /// counters of the version this one replaces, which the new version goes on counting in.
    ///
    /// # Errors
    /// As [`Runtime::load`].
    pub fn load_bytes(
        &self,
        bytes: &[u8],
        path: &Path,
        grants: PluginGrants,
        stats: Option<Arc<PluginStats>>,
    ) -> Result<LoadedPlugin, PluginError> {
        let load_err = |message: String| PluginError::Load {
            path: path.display().to_string(),
            message,
        };
        if !bytes.starts_with(b"\0asm") {
            return Err(load_err("not a WebAssembly file".into()));
        }
        let component = Component::new(&self.engine, bytes).map_err(|e| {
            load_err(format!(
                "not a valid WebAssembly component ({e:#}); plugins are components built for \
                 wasm32-wasip2, e.g. `cargo build --target wasm32-wasip2 --release`"
            ))
        })?;
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let has = |names: &[String], prefix: &str| {
            names.iter().any(|n| n.split('@').next() == Some(prefix))
        };
        let kinds: Vec<PluginKind> = [
            (GETTER_EXPORT, PluginKind::Getter),
            (STORAGE_EXPORT, PluginKind::Storage),
            (COMPRESSOR_EXPORT, PluginKind::Compressor),
        ]
        .into_iter()
        .filter(|(name, _)| has(&exports, name))
        .map(|(_, kind)| kind)
        .collect();
        let kind = match kinds.as_slice() {
            [kind] => *kind,
            [] => {
                return Err(load_err(format!(
                    "exports none of {GETTER_EXPORT}, {STORAGE_EXPORT}, {COMPRESSOR_EXPORT} \
                     (it exports {exports:?}); build it with geecache-guest-sdk and one of its \
                     export macros"
                )));
            }
            _ => {
                return Err(load_err(format!(
                    "exports more than one plugin kind: {kinds:?}"
                )));
            }
        };
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let wants_sql = has(&imports, SQL_IMPORT);
        if wants_sql && kind != PluginKind::Getter {
            return Err(load_err(format!(
                "a {kind} plugin imports {SQL_IMPORT}, which only getters are offered"
            )));
        }
        let linker = match kind {
            PluginKind::Getter => &self.getter_linker,
            PluginKind::Storage | PluginKind::Compressor => &self.plain_linker,
        };
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| load_err(format!("imports something the host does not offer: {e:#}")))?;

        // Ask the plugin its name with no grants at all, then attach the operator's grants.
        let probe = Arc::new(PluginCore::new(
            path.display().to_string(),
            PluginGrants::default(),
            None,
            self,
        ));
        let info = match kind {
            PluginKind::Getter => getter::info(&probe, &pre),
            PluginKind::Storage => storage::info(&probe, &pre),
            PluginKind::Compressor => compressor::info(&probe, &pre),
        }
        .map_err(|e| load_err(format!("its info() call failed: {e}")))?;
        validate_name(&info.name).map_err(|e| load_err(format!("reports {e}")))?;
        let sql = if wants_sql {
            let db_path = grants
                .config
                .get("database")
                .map(PathBuf::from)
                .unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).join("demo.db"));
            Some(Arc::new(
                sql::SqlDb::open(&db_path, self.options.memory_limit).map_err(load_err)?,
            ))
        } else {
            None
        };
        for dir in &grants.dirs {
            if !dir.host.is_dir() {
                return Err(load_err(format!(
                    "granted directory {} does not exist",
                    dir.host.display()
                )));
            }
        }
        let mut core = PluginCore::new(info.name, grants, sql, self);
        core.version = info.version;
        core.path = path.to_path_buf();
        if let Some(stats) = stats {
            core.stats = stats;
        }
        let core = Arc::new(core);
        tracing::info!(plugin = %core.name, version = %core.version, %kind, path = %path.display(), "plugin loaded");
        Ok(match kind {
            PluginKind::Getter => LoadedPlugin::Getter(Arc::new(WasmGetter::new(core, pre, self)?)),
            PluginKind::Storage => {
                LoadedPlugin::Storage(Arc::new(WasmStorage::new(core, pre, self)?))
            }
            PluginKind::Compressor => {
                LoadedPlugin::Compressor(Arc::new(WasmCompressor::new(core, pre, self)?))
            }
        })
    }
}

/// Runs `work` to completion on a thread of its own with a small tokio runtime: for the few
/// calls made outside the serving path (the `info` probe while loading, a compressor's level
/// check while building a group), which may come from sync code inside or outside a runtime.
pub(crate) fn on_own_thread<R: Send>(
    work: impl Future<Output = Result<R, PluginError>> + Send,
) -> Result<R, PluginError> {
    let unavailable = |message: String| PluginError::Unavailable {
        plugin: "<runtime>".into(),
        message,
    };
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("geecache-plugin-probe".into())
            .spawn_scoped(scope, || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .map_err(|e| unavailable(format!("cannot start a runtime: {e}")))?
                    .block_on(work)
            })
            .map_err(|e| unavailable(format!("cannot start a thread: {e}")))?
            .join()
            .unwrap_or_else(|_| Err(unavailable("the probe thread panicked".into())))
    })
}

/// Checks a plugin name, whether a plugin reported it or an operator gave it: 1-64 characters
/// of a-z, 0-9, '_' and '-'.
///
/// # Errors
/// A message naming the rule.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the name {name:?}: names are 1-64 characters of a-z, 0-9, '_' and '-'"
        ))
    }
}

/// Declares the wasm implementation of one plugin kind: the struct (core + pre-linked component +
/// warm instances), its `Debug`, `new`, `core`, the `info` probe used while loading, and
/// `invoke`, which runs one export on a warm instance (or a new one) and turns a guest-reported
/// error into a [`PluginError`].
macro_rules! plugin_kind {
    ($(#[$doc:meta])* $name:ident, $pre:ty, $instance:ty, $export:ident) => {
        $(#[$doc])*
        pub struct $name {
            /// Name, grants, limits, counters.
            core: std::sync::Arc<$crate::plugin::PluginCore>,
            /// Pre-linked component; instantiating from it costs ~10–30 µs.
            pre: $pre,
            /// Instances that finished a call cleanly, ready for the next.
            pool: $crate::plugin::Pool<$instance>,
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).field("core", &self.core).finish_non_exhaustive()
            }
        }

        /// Asks a freshly loaded component for its name and version, on a fresh instance that
        /// is dropped afterwards (the plugin has no grants yet).
        pub(super) fn info(
            core: &std::sync::Arc<$crate::plugin::PluginCore>,
            pre: &wasmtime::component::InstancePre<$crate::plugin::host::HostState>,
        ) -> Result<$crate::plugin::bindings::types::PluginInfo, $crate::plugin::PluginError> {
            let pre = <$pre>::new(pre.clone()).map_err(|e| core.classify(&e, false))?;
            $crate::plugin::on_own_thread(async {
                let mut store = core.new_store()?;
                let answer = async {
                    let instance = pre.instantiate_async(&mut store).await?;
                    instance.$export().call_info(&mut store).await
                }
                .await;
                core.checked(answer, &store)
            })
        }

        impl $name {
            pub(super) fn new(
                core: std::sync::Arc<$crate::plugin::PluginCore>,
                pre: wasmtime::component::InstancePre<$crate::plugin::host::HostState>,
                runtime: &$crate::plugin::Runtime,
            ) -> Result<Self, $crate::plugin::PluginError> {
                let pre = <$pre>::new(pre).map_err(|e| core.classify(&e, false))?;
                Ok($name { core, pre, pool: runtime.new_pool() })
            }

            /// Name, version and counters.
            pub fn core(&self) -> &$crate::plugin::PluginCore {
                &self.core
            }

            /// Instances created for calls so far (how often a call could not reuse one).
            pub fn instances_created(&self) -> u64 {
                self.pool.created.load(std::sync::atomic::Ordering::Relaxed)
            }

            /// Warm instances of this plugin waiting for a call.
            pub fn idle_instances(&self) -> usize {
                self.pool.idle()
            }

            /// Drops this version's warm instances, now and as calls in flight finish: it was
            /// replaced by a new version (hot reload).
            pub(crate) fn retire(&self) {
                self.pool.retire();
            }

            /// Runs `call` on a warm instance or a new one, under the limits (see
            /// [`PluginCore::permit`]). `call` gets the instance and must hand it back with the
            /// call's result.
            async fn invoke<R, Fut>(
                &self,
                call: impl FnOnce($crate::plugin::Warm<$instance>) -> Fut,
            ) -> Result<R, $crate::plugin::PluginError>
            where
                Fut: std::future::Future<
                    Output = (
                        $crate::plugin::Warm<$instance>,
                        wasmtime::Result<Result<R, $crate::plugin::bindings::types::Error>>,
                    ),
                >,
            {
                use tracing::Instrument as _;
                let core = &self.core;
                let started = std::time::Instant::now();
                let span = tracing::info_span!("geecache.plugin.call", plugin = %core.name);
                let answer = async {
                    let _permit = core.permit().await?;
                    let warm = match self.pool.take() {
                        Some(mut warm) => {
                            core.arm(&mut warm.store);
                            warm
                        }
                        None => {
                            self.pool.created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let mut store = core.new_store()?;
                            match self.pre.instantiate_async(&mut store).await {
                                Ok(instance) => $crate::plugin::Warm { store, instance, calls: 0 },
                                Err(e) => return Err(core.classify(&e, store.data().limiter.hit())),
                            }
                        }
                    };
                    let (warm, result) = call(warm).await;
                    core.finish(&self.pool, warm, result)
                }
                .instrument(span)
                .await
                .and_then(|answer| answer.map_err(|e| core.reported(e)));
                core.observe_call(started, &answer);
                answer
            }
        }
    };
}
use plugin_kind;

/// What every loaded plugin has, whatever its kind: identity, grants, limits, counters.
pub struct PluginCore {
    /// The name the plugin reported; how operators and configs refer to it.
    pub name: String,
    /// The version the plugin reported.
    pub version: String,
    /// The file it was loaded from.
    pub path: PathBuf,
    /// Per-call counters, shared by every version of the plugin (hot reload keeps them).
    pub stats: Arc<PluginStats>,
    /// What the operator granted this plugin.
    grants: PluginGrants,
    /// The plugin's database, when it imports `sql`.
    sql: Option<Arc<sql::SqlDb>>,
    /// Shared with the runtime: engine for stores.
    engine: Engine,
    /// Limits applied to each call.
    memory_limit: usize,
    /// Time limit of each call.
    call_timeout: Duration,
    /// Bounds concurrent calls across the runtime.
    permits: Arc<tokio::sync::Semaphore>,
    /// Where call latencies are recorded.
    metrics: Metrics,
    /// `name` as a metric label, shared rather than copied per call.
    name_label: opentelemetry::StringValue,
}

impl std::fmt::Debug for PluginCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginCore")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl PluginCore {
    fn new(
        name: String,
        grants: PluginGrants,
        sql: Option<Arc<sql::SqlDb>>,
        runtime: &Runtime,
    ) -> Self {
        PluginCore {
            name_label: opentelemetry::StringValue::from(Arc::<str>::from(name.as_str())),
            name,
            version: String::new(),
            path: PathBuf::new(),
            stats: Arc::default(),
            grants,
            sql,
            engine: runtime.engine.clone(),
            memory_limit: runtime.options.memory_limit,
            call_timeout: runtime.options.call_timeout,
            permits: runtime.permits.clone(),
            metrics: runtime.metrics.clone(),
        }
    }

    /// Records a finished call (started at `started`) in the latency histogram, by outcome.
    fn observe_call<R>(&self, started: Instant, answer: &Result<R, PluginError>) {
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.stats.busy_micros.fetch_add(micros, Ordering::Relaxed);
        let outcome = answer.as_ref().map_or_else(PluginError::code, |_| "ok");
        self.metrics
            .record_plugin_call(self.name_label.clone(), outcome, started.elapsed());
    }

    fn new_store(&self) -> Result<Store<HostState>, PluginError> {
        let mut wasi = WasiCtx::builder();
        // Deny by default: no env, no args, no stdio, no network; only granted directories.
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        wasi.socket_addr_check(|_, _| Box::pin(async { false }));
        // `get-random-bytes` allocates its answer on the host: keep it small.
        wasi.max_random_size(MAX_RANDOM_BYTES);
        for dir in &self.grants.dirs {
            let perms = if dir.writable {
                wasmtime_wasi::FsPerms::ReadWrite
            } else {
                wasmtime_wasi::FsPerms::ReadOnly
            };
            wasi.preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(|e| PluginError::Unavailable {
                    plugin: self.name.clone(),
                    message: format!("cannot preopen {}: {e:#}", dir.host.display()),
                })?;
        }
        let mut table = ResourceTable::new();
        table.set_max_capacity(pool::MAX_RESOURCES);
        let state = HostState {
            wasi: wasi.build(),
            table,
            limiter: CallLimiter::new(self.memory_limit),
            plugin: self.name.clone(),
            stats: Arc::clone(&self.stats),
            log_budget: host::LogBudget::default(),
            config: self.grants.config.clone(),
            sql: self.sql.clone(),
            deadline: Instant::now() + self.call_timeout,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        // At every epoch tick: stop a call past its deadline, else yield to the executor, so
        // wasm that runs long (or loops) shares its worker thread with other requests.
        store.epoch_deadline_callback(|store| {
            Ok(if Instant::now() >= store.data().deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        self.arm(&mut store);
        Ok(store)
    }

    /// Starts a call's limits on `store`: the wall-clock deadline (which bounds host calls and
    /// wasm: the epoch callback checks it at every tick) and a clean memory-limit record. Run
    /// before every call, whether the instance is new or warm.
    fn arm(&self, store: &mut Store<HostState>) {
        store.set_epoch_deadline(1);
        let state = store.data_mut();
        state.deadline = Instant::now() + self.call_timeout;
        state.limiter.new_call();
        state.log_budget = host::LogBudget::default();
    }

    /// The call's result, or its failure classified. The time limit is wall-clock time: an
    /// answer that comes back after the call's deadline is a timeout too. (A guest whose wait
    /// was cut at the deadline may otherwise slip out between two epoch ticks with an answer.)
    fn checked<R>(
        &self,
        result: wasmtime::Result<R>,
        store: &Store<HostState>,
    ) -> Result<R, PluginError> {
        result
            .and_then(|answer| {
                if Instant::now() >= store.data().deadline {
                    Err(wasmtime::Error::new(Trap::Interrupt))
                } else {
                    Ok(answer)
                }
            })
            .map_err(|e| self.classify(&e, store.data().limiter.hit()))
    }

    /// Ends a call on `warm`: classifies its failure, and gives the instance back to `pool`
    /// when the call ended cleanly (see [`pool`] for when it is retired instead).
    fn finish<I, R>(
        &self,
        pool: &Pool<I>,
        mut warm: Warm<I>,
        result: wasmtime::Result<Result<R, bindings::types::Error>>,
    ) -> Result<Result<R, bindings::types::Error>, PluginError> {
        warm.calls += 1;
        let answer = self.checked(result, &warm.store)?;
        let healthy = !warm.store.data().limiter.hit()
            && !matches!(answer, Err(bindings::types::Error::Other(_)));
        pool.give_back(warm, healthy);
        Ok(answer)
    }

    fn classify(&self, e: &wasmtime::Error, memory_limit_hit: bool) -> PluginError {
        let plugin = self.name.clone();
        let bump = |c: &AtomicU64| c.fetch_add(1, Ordering::Relaxed);
        if memory_limit_hit {
            bump(&self.stats.memory_limits);
            return PluginError::MemoryLimit {
                plugin,
                limit: self.memory_limit,
            };
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => {
                bump(&self.stats.timeouts);
                PluginError::Timeout {
                    plugin,
                    limit: self.call_timeout,
                }
            }
            Some(trap) => {
                bump(&self.stats.traps);
                let hint = if *trap == Trap::UnreachableCodeReached {
                    " (a panic in the plugin arrives as this trap)"
                } else {
                    ""
                };
                PluginError::Trap {
                    plugin,
                    message: format!("{trap}{hint}"),
                }
            }
            None => {
                bump(&self.stats.traps);
                let message = format!("{e:#}");
                let message = message.lines().next().unwrap_or_default().to_string();
                PluginError::Trap { plugin, message }
            }
        }
    }

    /// A concurrency slot for one call, held for as long as the call's instance is in use.
    ///
    /// Calls run on the caller's task (async wasmtime): no thread hop. Wasm yields to the
    /// executor at every epoch tick, so a long or looping call shares its worker with other
    /// requests and ends at its deadline; a SQL query runs inline only for a short slice (see
    /// [`host`]). A caller that stops waiting (request timeout, client gone) drops the call:
    /// its wasm stops there and its instance is dropped with it, so an abandoned call never
    /// keeps running outside the concurrency limit.
    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, PluginError> {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.permits
            .acquire()
            .await
            .map_err(|_| PluginError::Unavailable {
                plugin: self.name.clone(),
                message: "the plugin runtime is shutting down".into(),
            })
    }

    /// Records a guest-reported error and converts it.
    fn reported(&self, e: bindings::types::Error) -> PluginError {
        self.stats.reported_errors.fetch_add(1, Ordering::Relaxed);
        let (kind, message) = match e {
            bindings::types::Error::InvalidInput(m) => (error::INVALID_INPUT, m),
            bindings::types::Error::Unavailable(m) => ("unavailable", m),
            bindings::types::Error::Other(m) => (error::OTHER, m),
        };
        PluginError::Reported {
            plugin: self.name.clone(),
            kind,
            message,
        }
    }
}

/// Largest component file read from disk where no request set a limit (the files given at
/// start, a plugin's own file read again on SIGHUP or a file change).
pub const MAX_COMPONENT_FILE_BYTES: u64 = 1 << 30;

/// Reads the component file at `path`, which must be a regular file of at most `max` bytes.
/// It is opened without blocking (a FIFO does not hang the caller) and checked before a
/// byte is read, so a device such as `/dev/zero` is refused rather than read for ever.
///
/// # Errors
/// The file cannot be opened, is not a regular file, or is larger than `max`.
pub fn read_component(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} bytes, more than the {max} a component may have",
                meta.len()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // Bounded even if the file grows while it is read.
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("more than the {max} bytes a component may have"),
        ));
    }
    Ok(bytes)
}
