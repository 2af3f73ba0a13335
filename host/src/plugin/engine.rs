//! The engine every plugin of the process shares: a wasmtime `Engine` (pooling allocator when
//! the machine allows it, on-demand otherwise), one `Linker` per set of host capabilities, the
//! epoch ticker that drives time limits, and the runtime-wide bounds (calls in flight, idle
//! instances).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::host::{self, HostState};
use super::pool::{IdleBudget, Pool};
use super::{PluginError, RuntimeOptions};
use crate::telemetry::Metrics;

/// Pool slots beyond calls in flight and idle instances: load-time probes (`info`) take one
/// without a concurrency permit.
const PROBE_SLOTS: usize = 4;

/// How often the epoch ticker advances the engine's epoch: the granularity of time limits, and
/// the longest stretch wasm runs on a worker thread before it yields to other requests.
const EPOCH_TICK: Duration = Duration::from_millis(2);

/// The wasmtime engine, linker and ticker shared by every plugin of the process.
pub struct Runtime {
    /// Compiles components and owns the epoch counter.
    pub(super) engine: Engine,
    /// WASI plus the host capabilities a getter may import (`log`, `config`, `sql`).
    pub(super) getter_linker: Linker<HostState>,
    /// WASI plus `log` and `config`: storage backends and compressors get no `sql`.
    pub(super) plain_linker: Linker<HostState>,
    /// Limits applied to every call.
    pub(super) options: RuntimeOptions,
    /// Whether the pooling allocator is in use (false after a fallback).
    pub(super) pooling: bool,
    /// Bounds calls in flight so the pool (and memory) is never oversubscribed.
    pub(super) permits: Arc<tokio::sync::Semaphore>,
    /// Caps idle (warm) instances across all plugins.
    pub(super) idle: Arc<IdleBudget>,
    /// Stops the epoch ticker when the runtime is dropped.
    pub(super) ticker_stop: Arc<AtomicBool>,
    /// The epoch ticker thread, joined on drop.
    pub(super) ticker: Option<JoinHandle<()>>,
    /// Where the plugins' call latencies are recorded (the node's meters).
    pub(super) metrics: Metrics,
    /// The compile cache (`--compile-cache-dir`), for its hit count: whether a load compiled.
    pub(super) compile_cache: Option<wasmtime::Cache>,
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

fn base_config(cache: Option<&wasmtime::Cache>) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // Our calls are synchronous; without component-model concurrency a call is ~2x cheaper.
    config.concurrency_support(false);
    config.cache(cache.cloned());
    config
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
        let compile_cache = match &options.compile_cache_dir {
            Some(dir) => {
                let mut cache = wasmtime::CacheConfig::new();
                cache.with_directory(dir);
                Some(wasmtime::Cache::new(cache).map_err(fail)?)
            }
            None => None,
        };
        let mut engine = None;
        let mut pooling = false;
        if options.pooling {
            let mut config = base_config(compile_cache.as_ref());
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
            None => Engine::new(&base_config(compile_cache.as_ref())).map_err(fail)?,
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
            compile_cache,
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
}
