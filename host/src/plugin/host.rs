//! What a plugin's store holds, and the linker each kind gets: WASI, and the capabilities of
//! [`super::caps`], each added by its own `add_to_linker`.
//!
//! Host imports return `wasmtime::Result<T>`: an `Err` traps the guest (host bug or abuse),
//! while errors the guest should handle travel inside `T` (e.g. `sql.query`'s `result`).
//!
//! Two walls live here besides the capabilities:
//! - [`CallLimiter`]: one memory budget per call over every linear memory and table of the
//!   instance together, so a component with several memories cannot multiply its cap.
//! - [`DeadlineClock`]: WASI's `monotonic-clock` with subscriptions cut at the call's deadline.
//!   A guest waits (sleeps, polls) only through clock subscriptions and, for a getter, the
//!   pollables of its `wasi:http` requests, whose answers and bodies end at the same deadline
//!   (`caps/http/`) — no sockets, no stdin — so no host call of a plugin can outlast its
//!   time limit; when the wait ends, the next wasm
//!   instruction meets the epoch deadline and the call stops as a timeout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use wasmtime::component::{HasData, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Engine, ResourceLimiter};
use wasmtime_wasi::clocks::{WasiClocksCtxView, WasiClocksView as _};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::WasiHttpCtx;

use super::bindings::types;
use super::caps::http::HttpHooks;
use super::caps::sql::Database;
use super::caps::{self, log::LogBudget};

/// The data of one instance's store (one call's, or many calls' when instances are reused).
pub(crate) struct HostState {
    /// WASI state: no env, no args, no network; only granted directories.
    pub wasi: WasiCtx,
    /// WASI's resource handles.
    pub table: ResourceTable,
    /// Enforces the memory cap and remembers whether it was hit.
    pub limiter: CallLimiter,
    /// The plugin's name, for log records.
    pub plugin: String,
    /// The plugin's counters (dropped log records are counted there).
    pub stats: Arc<super::PluginStats>,
    /// What the current call may still log; renewed before every call.
    pub log_budget: LogBudget,
    /// The plugin's own config values.
    pub config: BTreeMap<String, String>,
    /// The plugin's database, when it imports `sql`.
    pub sql: Option<Arc<Database>>,
    /// When the current call's time is up; bounds host work (SQL) that epochs cannot
    /// interrupt. Re-armed before every call.
    pub deadline: Instant,
    /// Whether a source the host reached for the current call (its database, an HTTP origin)
    /// failed: an `unavailable` the call then reports is the source's (502), not the plugin's
    /// own. Shared with [`HttpHooks`], whose requests finish on tasks of their own; cleared
    /// before every call.
    pub source_failed: Arc<AtomicBool>,
    /// `wasi:http`'s own state (limits on header fields).
    pub http_ctx: WasiHttpCtx,
    /// How `wasi:http` requests are sent: through the plugin's allowlist and pooled client,
    /// with the call's deadline (getters only import `wasi:http`).
    pub http: HttpHooks,
}

impl HostState {
    /// Whether a source failed during the current call: its database, or an HTTP origin (a
    /// transport failure or a 5xx answer).
    pub fn source_failed(&self) -> bool {
        self.source_failed.load(Ordering::Relaxed)
    }

    /// Starts a new call's time on this store: `deadline` for host work and outbound HTTP.
    pub fn new_call(&mut self, deadline: Instant) {
        self.deadline = deadline;
        self.http.deadline = deadline;
        self.http.call_permits = Arc::new(tokio::sync::Semaphore::new(self.http.shared.per_call));
        self.source_failed.store(false, Ordering::Relaxed);
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// What one table element is charged against the call's memory budget: wasmtime keeps a
/// pointer-sized slot per element (more for some reference types), so 16 bytes is on the safe
/// side.
pub(crate) const TABLE_ELEMENT_BYTES: usize = 16;

/// Most core instances, memories and tables one call's instance may create.
const MAX_INSTANCES: usize = 64;
const MAX_MEMORIES: usize = 16;
const MAX_TABLES: usize = 64;

/// A `ResourceLimiter` with one byte budget for a call's instance: every linear memory and
/// every table (at [`TABLE_ELEMENT_BYTES`] an element) is charged to it, so a component with
/// several memories or large tables cannot use more than the cap in all. It records a refusal,
/// so a call that dies of it is reported as "memory limit" rather than as a bare trap.
pub(crate) struct CallLimiter {
    /// The budget in bytes (`--plugin-memory`).
    budget: usize,
    /// Bytes charged so far: the sum of every memory's and table's current size.
    used: usize,
    /// Set when a growth was refused because of the budget.
    hit: bool,
}

impl CallLimiter {
    pub fn new(budget: usize) -> Self {
        CallLimiter {
            budget,
            used: 0,
            hit: false,
        }
    }

    /// Whether a growth was refused because of the budget.
    pub fn hit(&self) -> bool {
        self.hit
    }

    /// Bytes charged so far: what the instance's memories and tables hold now.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Starts a new call on the same instance: what it holds stays charged (memory never
    /// shrinks), the record of a refusal is cleared.
    pub fn new_call(&mut self) {
        self.hit = false;
    }

    /// Charges growing one memory or table from `current` to `desired` bytes, or refuses.
    fn charge(&mut self, current: usize, desired: usize) -> bool {
        let more = desired.saturating_sub(current);
        match self.used.checked_add(more) {
            Some(total) if total <= self.budget => {
                self.used = total;
                true
            }
            _ => {
                self.hit = true;
                false
            }
        }
    }
}

impl ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        Ok(self.charge(current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let bytes = |elements: usize| elements.saturating_mul(TABLE_ELEMENT_BYTES);
        Ok(self.charge(bytes(current), bytes(desired)))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// A linker with WASI (its monotonic clock replaced by [`DeadlineClock`]) and the host
/// capabilities, each added by its own part of `caps/`: `log` and `config` for every kind;
/// for getters (`getter`) also `sql` and `wasi:http/outgoing-handler` (sent by
/// [`caps::http::HttpHooks`]).
pub(crate) fn linker(engine: &Engine, getter: bool) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    // Replace WASI's monotonic clock with one whose waits end at the call's deadline.
    linker.allow_shadowing(true);
    monotonic_clock::add_to_linker::<HostState, DeadlineClock>(&mut linker, |s| DeadlineClocks {
        deadline: s.deadline,
        inner: s.clocks(),
    })?;
    linker.allow_shadowing(false);
    types::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
    caps::log::add_to_linker(&mut linker)?;
    caps::config::add_to_linker(&mut linker)?;
    if getter {
        caps::sql::add_to_linker(&mut linker)?;
        caps::http::add_to_linker(&mut linker)?;
    }
    Ok(linker)
}

/// Marks [`DeadlineClocks`] as the data of the replaced `monotonic-clock` interface.
pub(crate) struct DeadlineClock;

impl HasData for DeadlineClock {
    type Data<'a> = DeadlineClocks<'a>;
}

/// WASI's monotonic clock for one call, with every subscription cut at the call's deadline.
pub(crate) struct DeadlineClocks<'a> {
    /// When the call's time is up.
    deadline: Instant,
    /// WASI's own clock and resource table.
    inner: WasiClocksCtxView<'a>,
}

impl DeadlineClocks<'_> {
    /// `wanted` nanoseconds, or what is left until the deadline if that is less.
    fn cut(&self, wanted: u64) -> u64 {
        let left = self.deadline.saturating_duration_since(Instant::now());
        wanted.min(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX))
    }
}

impl monotonic_clock::Host for DeadlineClocks<'_> {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        monotonic_clock::Host::now(&mut self.inner)
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        monotonic_clock::Host::resolution(&mut self.inner)
    }

    fn subscribe_instant(
        &mut self,
        when: monotonic_clock::Instant,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        let now = monotonic_clock::Host::now(&mut self.inner)?;
        let wait = self.cut(when.saturating_sub(now));
        monotonic_clock::Host::subscribe_duration(&mut self.inner, wait)
    }

    fn subscribe_duration(
        &mut self,
        duration: monotonic_clock::Duration,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        let wait = self.cut(duration);
        monotonic_clock::Host::subscribe_duration(&mut self.inner, wait)
    }
}

impl types::Host for HostState {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use wasmtime::{Instance, Module, Store};

    const PAGE: usize = 64 << 10;

    /// A module with two memories and a table, each growable from outside.
    fn instance(budget: usize) -> (Store<CallLimiter>, Instance) {
        let engine = Engine::default();
        let wasm = wat::parse_str(
            r#"(module
                 (memory $a 1)
                 (memory $b 1)
                 (table $t 16 funcref)
                 (func (export "grow_a") (param i32) (result i32)
                   (memory.grow $a (local.get 0)))
                 (func (export "grow_b") (param i32) (result i32)
                   (memory.grow $b (local.get 0)))
                 (func (export "grow_t") (param i32) (result i32)
                   (table.grow $t (ref.null func) (local.get 0))))"#,
        )
        .unwrap();
        let module = Module::new(&engine, wasm).unwrap();
        let mut store = Store::new(&engine, CallLimiter::new(budget));
        store.limiter(|l| l);
        let instance = Instance::new(&mut store, &module, &[]).unwrap();
        (store, instance)
    }

    fn grow(store: &mut Store<CallLimiter>, instance: &Instance, export: &str, by: i32) -> i32 {
        instance
            .get_typed_func::<i32, i32>(&mut *store, export)
            .unwrap()
            .call(&mut *store, by)
            .unwrap()
    }

    #[test]
    fn one_budget_covers_every_memory_together() {
        // 64 pages in all; the module starts with one page in each memory.
        let (mut store, instance) = instance(64 * PAGE);
        assert_eq!(grow(&mut store, &instance, "grow_a", 40), 1);
        assert!(!store.data().hit());
        // Each memory alone would fit under the cap; together they would not.
        assert_eq!(grow(&mut store, &instance, "grow_b", 40), -1);
        assert!(store.data().hit());
        assert_eq!(
            grow(&mut store, &instance, "grow_b", 20),
            1,
            "what is left may be used"
        );
    }

    #[test]
    fn tables_are_charged_to_the_same_budget() {
        let (mut store, instance) = instance(64 * PAGE);
        assert_eq!(grow(&mut store, &instance, "grow_a", 60), 1);
        // 100k elements are far below any per-table limit, but not within what is left.
        assert_eq!(grow(&mut store, &instance, "grow_t", 100_000), -1);
        assert!(store.data().hit());
        assert_eq!(grow(&mut store, &instance, "grow_t", 1_000), 16);
    }
}
