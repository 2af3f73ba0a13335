//! One plugin call, whatever the plugin's kind: [`PluginCore`] (identity, grants, limits,
//! counters) builds a call's `Store` under the memory cap and deadline, takes a concurrency
//! slot, classifies a trap, timeout or overrun, and hands a cleanly finished instance back to
//! its pool; `plugin_kind!` declares each kind's wasm type around it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtx;

use super::caps::http::{HttpHooks, PluginHttp};
use super::caps::log::LogBudget;
use super::caps::sql::Database;
use super::host::{CallLimiter, HostState};
use super::pool::{self, Pool, Warm};
use super::{PluginError, PluginGrants, PluginStats, Runtime, bindings, error};
use crate::telemetry::Metrics;

/// Most bytes one WASI `get-random-bytes` call may ask the host for (wasmtime-wasi's default is
/// 64 MiB, allocated outside the plugin's memory cap).
const MAX_RANDOM_BYTES: u64 = 64 << 10;

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
                .await;
                core.observe_call(started, &answer);
                answer
            }
        }
    };
}
pub(crate) use plugin_kind;

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
    pub(super) grants: PluginGrants,
    /// The plugin's database, when it imports `sql`.
    pub(super) sql: Option<Arc<Database>>,
    /// Where its outbound HTTP may go, and the pooled client that takes it there.
    pub(super) http: Arc<PluginHttp>,
    /// Shared with the runtime: engine for stores.
    pub(super) engine: Engine,
    /// Limits applied to each call.
    pub(super) memory_limit: usize,
    /// Time limit of each call.
    pub(super) call_timeout: Duration,
    /// Bounds concurrent calls across the runtime.
    pub(super) permits: Arc<tokio::sync::Semaphore>,
    /// Where call latencies are recorded.
    pub(super) metrics: Metrics,
    /// `name` as a metric label, shared rather than copied per call.
    pub(super) name_label: opentelemetry::StringValue,
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
    pub(super) fn new(
        name: String,
        grants: PluginGrants,
        sql: Option<Arc<Database>>,
        runtime: &Runtime,
    ) -> Self {
        let http = Arc::new(PluginHttp::new(
            &name,
            grants.http.clone(),
            runtime.options.memory_limit,
            runtime.options.http,
            runtime.metrics.clone(),
        ));
        PluginCore {
            http,
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
    pub(super) fn observe_call<R>(&self, started: Instant, answer: &Result<R, PluginError>) {
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.stats.busy_micros.fetch_add(micros, Ordering::Relaxed);
        let outcome = answer.as_ref().map_or_else(PluginError::code, |_| "ok");
        self.metrics
            .record_plugin_call(self.name_label.clone(), outcome, started.elapsed());
    }

    pub(super) fn new_store(&self) -> Result<Store<HostState>, PluginError> {
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
        let source_failed = Arc::<std::sync::atomic::AtomicBool>::default();
        let state = HostState {
            wasi: wasi.build(),
            table,
            limiter: CallLimiter::new(self.memory_limit),
            plugin: self.name.clone(),
            stats: Arc::clone(&self.stats),
            log_budget: LogBudget::default(),
            config: self.grants.config.clone(),
            sql: self.sql.clone(),
            deadline: Instant::now() + self.call_timeout,
            source_failed: Arc::clone(&source_failed),
            http_ctx: wasmtime_wasi_http::WasiHttpCtx::new(),
            http: HttpHooks {
                shared: Arc::clone(&self.http),
                deadline: Instant::now() + self.call_timeout,
                call_permits: Arc::new(tokio::sync::Semaphore::new(self.http.per_call)),
                source_failed,
            },
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
    pub(super) fn arm(&self, store: &mut Store<HostState>) {
        store.set_epoch_deadline(1);
        let state = store.data_mut();
        state.new_call(Instant::now() + self.call_timeout);
        state.limiter.new_call();
        state.log_budget = LogBudget::default();
    }

    /// The call's result, or its failure classified. The time limit is wall-clock time: an
    /// answer that comes back after the call's deadline is a timeout too. (A guest whose wait
    /// was cut at the deadline may otherwise slip out between two epoch ticks with an answer.)
    pub(super) fn checked<R>(
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

    /// Ends a call on `warm`: classifies its failure (a trap, the time limit, or the error the
    /// guest reported), and gives the instance back to `pool` when the call ended cleanly (see
    /// [`super::pool`] for when it is retired instead).
    pub(super) fn finish<I, R>(
        &self,
        pool: &Pool<I>,
        mut warm: Warm<I>,
        result: wasmtime::Result<Result<R, bindings::types::Error>>,
    ) -> Result<R, PluginError> {
        warm.calls += 1;
        let answer = self.checked(result, &warm.store)?;
        let state = warm.store.data();
        let healthy =
            !state.limiter.hit() && !matches!(answer, Err(bindings::types::Error::Other(_)));
        let source_failed = state.source_failed();
        pool.give_back(warm, healthy);
        answer.map_err(|e| self.reported(e, source_failed))
    }

    pub(super) fn classify(&self, e: &wasmtime::Error, memory_limit_hit: bool) -> PluginError {
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
    /// [`super::host`]). A caller that stops waiting (request timeout, client gone) drops the call:
    /// its wasm stops there and its instance is dropped with it, so an abandoned call never
    /// keeps running outside the concurrency limit.
    pub(super) async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, PluginError> {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.permits
            .acquire()
            .await
            .map_err(|_| PluginError::Unavailable {
                plugin: self.name.clone(),
                message: "the plugin runtime is shutting down".into(),
            })
    }

    /// Records a guest-reported error and converts it: an `unavailable` after a source the host
    /// reached for this call failed (`source_failed`) is the source's.
    pub(super) fn reported(&self, e: bindings::types::Error, source_failed: bool) -> PluginError {
        self.stats.reported_errors.fetch_add(1, Ordering::Relaxed);
        let (kind, message) = match e {
            bindings::types::Error::InvalidInput(m) => (error::INVALID_INPUT, m),
            bindings::types::Error::Unavailable(message) if source_failed => {
                return PluginError::Source {
                    plugin: self.name.clone(),
                    message,
                };
            }
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
