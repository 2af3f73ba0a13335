//! The WebAssembly plugin runtime (wasmtime component model, WASI preview 2).
//!
//! - One [`Runtime`] per process: a wasmtime `Engine` (pooling allocator when the machine allows
//!   it, on-demand otherwise), an epoch ticker thread for time limits, an on-disk cache of
//!   compiled components keyed by content hash, and one `Linker` per plugin kind with WASI and
//!   the host capabilities that kind may import (`log` and `config` for all, `sql` for getters
//!   only).
//! - [`Runtime::load`] compiles a component once, detects its kind from what it exports, asks it
//!   for its name, and returns a [`LoadedPlugin`] holding the grants the operator gave that file.
//! - A call runs on a warm instance of its plugin when one is idle, or on a new `Store`
//!   instantiated from an `InstancePre` (tens of times dearer; docs/performance.md has the
//!   figures), under a memory cap and a time limit. It runs on the caller's task (async
//!   wasmtime): no thread hop.
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
//!   `plugin/host.rs`), SQL carries the deadline into SQLite and Postgres, and an outbound HTTP
//!   request's answer and body end at it (so a wait on their pollables does too). The call's concurrency slot is held
//!   with its instance: a caller that gives up drops the call, which stops its wasm there.
//! - **Memory.** One budget per call over all linear memories and tables of the instance
//!   together (`--plugin-memory`).
//! - **Capabilities.** Only what the operator granted to the plugin's file (or alias): config
//!   values, directories (read-only unless granted `rw`), for getters a database and outbound
//!   HTTP to allowed origins (`wasi:http`, see [`caps::http`]). No sockets, no environment,
//!   no stdio.
//!
//! Files. The runtime: `engine.rs` (the shared engine, linkers, epoch ticker), `load.rs` (from
//! a file to a [`LoadedPlugin`]), `call.rs` (one call's store, limits and outcome), `host.rs`
//! (what a store holds, the memory limiter, the deadline clock, and the linker each kind gets),
//! `bindings.rs` (the one `bindgen!` site), `pool.rs` (warm instances), `slot.rs` (one
//! plugin's current version, swapped by a reload), `registry.rs` (the loaded plugins and hot
//! reload), `watch.rs` (file changes and SIGHUP), `error.rs` ([`PluginError`]), `stats.rs`
//! (counters) and `metrics.rs` (their `/metrics` table); one file per kind (`getter.rs`,
//! `storage.rs`, `compressor.rs`). The capabilities it grants: [`caps`], one part each
//! (`log`, `config`, `sql/`, `http/`).

mod bindings;
mod call;
pub mod caps;
mod compressor;
mod engine;
mod error;
mod getter;
mod host;
pub(crate) mod load;
pub mod metrics;
mod pool;
pub mod registry;
mod slot;
mod stats;
mod storage;
pub mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use call::PluginCore;
pub(crate) use call::plugin_kind;
pub use caps::http::{AllowedOrigin, HttpAllowlist, HttpLimits};
pub use compressor::WasmCompressor;
pub use engine::Runtime;
pub use error::PluginError;
pub use getter::WasmGetter;
pub(crate) use load::on_own_thread;
pub use load::{MAX_COMPONENT_FILE_BYTES, read_component};
pub use pool::{InstanceMode, InstancePolicy};
pub(crate) use pool::{Pool, Warm};
pub use registry::{Candidate, PluginEntry, Plugins, ReloadReport, Slot, Source};
pub use stats::{PluginSnapshot, PluginStats};
pub use storage::WasmStorage;

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
    /// Most outbound HTTP requests in flight, of one call and of one plugin.
    pub http: HttpLimits,
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
            http: HttpLimits::default(),
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
    /// Where a getter's outbound HTTP may go (`--plugin-http`); empty: nowhere.
    pub http: HttpAllowlist,
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
            sql_too_large: get(&core.stats.sql_too_large),
            sha256: String::new(),
            reloads: 0,
            reload_failures: 0,
        }
    }
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
