//! What a plugin's store holds, and the host side of the capabilities plugins import.
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
//!   (`plugin/http.rs`) — no sockets, no stdin — so no host call of a plugin can outlast its
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
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::{self, config, log, sql, types};
use super::database::Database;
use super::http::HttpHooks;
use super::sql::SqlError;

/// Log messages from plugins are cut to this many bytes.
const MAX_LOG_MESSAGE: usize = 4096;

/// Most log records one call may write; the rest of the call's records are dropped.
pub(crate) const MAX_LOG_RECORDS_PER_CALL: u32 = 100;
/// Most bytes of log text one call may write (after each message's cut).
pub(crate) const MAX_LOG_BYTES_PER_CALL: usize = 64 << 10;
/// A plugin's dropped records are reported in the host's log at most this often.
const LOG_DROP_NOTE_EVERY_SECS: u64 = 60;

/// What one call may still log: [`MAX_LOG_RECORDS_PER_CALL`] records and
/// [`MAX_LOG_BYTES_PER_CALL`] bytes, renewed before every call. A plugin that logs in a loop
/// fills the host's log with at most that much per call; what it logs past it is counted in
/// `geecache_plugin_logs_dropped_total` and reported once a minute.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogBudget {
    records: u32,
    bytes: usize,
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget {
            records: MAX_LOG_RECORDS_PER_CALL,
            bytes: MAX_LOG_BYTES_PER_CALL,
        }
    }
}

impl LogBudget {
    /// Takes a record of `len` bytes from the budget; false (and nothing taken) when it does
    /// not fit.
    fn take(&mut self, len: usize) -> bool {
        if self.records == 0 || len > self.bytes {
            self.records = 0;
            return false;
        }
        self.records -= 1;
        self.bytes -= len;
        true
    }
}

/// `message` as it may go into the host's log: control characters (newlines, carriage
/// returns, escape sequences) and the Unicode controls that reorder or hide text are written
/// as `\u{..}` escapes (`\n`, `\r`, `\t` as such), so a plugin cannot forge a log line or
/// repaint a terminal. Text without them is returned as it is.
fn escape_log(message: &str) -> std::borrow::Cow<'_, str> {
    let hazardous = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
    };
    if !message.contains(hazardous) {
        return std::borrow::Cow::Borrowed(message);
    }
    let mut out = String::with_capacity(message.len() + 16);
    for c in message.chars() {
        if hazardous(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

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

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http,
        }
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
/// capabilities: `log` and `config` for every kind; for getters (`getter`) also `sql` and
/// `wasi:http/outgoing-handler` (sent by [`HttpHooks`]).
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
    if getter {
        bindings::getter::GetterPlugin::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    } else {
        let l = &mut linker;
        types::add_to_linker::<HostState, HasSelf<HostState>>(l, |s| s)?;
        log::add_to_linker::<HostState, HasSelf<HostState>>(l, |s| s)?;
        config::add_to_linker::<HostState, HasSelf<HostState>>(l, |s| s)?;
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

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let mut message = message;
        if message.len() > MAX_LOG_MESSAGE {
            let mut cut = MAX_LOG_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let message = escape_log(&message);
        if !self.log_budget.take(message.len()) {
            self.dropped_log();
            return Ok(());
        }
        let plugin = self.plugin.as_str();
        match level {
            log::Level::Trace => tracing::trace!(target: "geecache::plugin", plugin, "{message}"),
            log::Level::Debug => tracing::debug!(target: "geecache::plugin", plugin, "{message}"),
            log::Level::Info => tracing::info!(target: "geecache::plugin", plugin, "{message}"),
            log::Level::Warn => tracing::warn!(target: "geecache::plugin", plugin, "{message}"),
            log::Level::Error => tracing::error!(target: "geecache::plugin", plugin, "{message}"),
        }
        Ok(())
    }
}

impl HostState {
    /// Counts a log record dropped past the call's budget, and says so in the host's log at
    /// most once a minute per plugin.
    fn dropped_log(&self) {
        use std::sync::atomic::Ordering;
        let dropped = self.stats.logs_dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let noted = self.stats.logs_dropped_noted.load(Ordering::Relaxed);
        if now >= noted.saturating_add(LOG_DROP_NOTE_EVERY_SECS)
            && self
                .stats
                .logs_dropped_noted
                .compare_exchange(noted, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                plugin = %self.plugin,
                dropped,
                "a plugin logged past its budget of {MAX_LOG_RECORDS_PER_CALL} records or \
                 {MAX_LOG_BYTES_PER_CALL} bytes in one call; the rest of such calls' records \
                 are dropped (counted in geecache_plugin_logs_dropped_total)"
            );
        }
    }
}

impl config::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.config.get(&key).cloned())
    }
}

impl sql::Host for HostState {
    async fn query(
        &mut self,
        statement: String,
        params: Vec<sql::Value>,
        max_rows: u32,
    ) -> wasmtime::Result<Result<Vec<Vec<sql::Value>>, types::Error>> {
        let Some(db) = self.sql.clone() else {
            return Ok(Err(types::Error::Unavailable(
                "no database is configured for this plugin (set NAME.database)".into(),
            )));
        };
        let answer = db.query(statement, params, max_rows, self.deadline).await;
        Ok(answer.map_err(|e| match e {
            SqlError::InvalidInput(m) => types::Error::InvalidInput(m),
            SqlError::TooLarge(m) => {
                self.stats.sql_too_large.fetch_add(1, Ordering::Relaxed);
                types::Error::InvalidInput(m)
            }
            SqlError::Unavailable(m) => {
                self.source_failed.store(true, Ordering::Relaxed);
                types::Error::Unavailable(m)
            }
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use wasmtime::{Instance, Module, Store};

    const PAGE: usize = 64 << 10;

    #[test]
    fn log_text_cannot_forge_lines_or_repaint_the_terminal() {
        assert!(matches!(
            escape_log("plain text, ünïcode"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            escape_log("ok\n2026-12-03T00:00:00Z  INFO forged\r\x1b[2J\u{202e}"),
            "ok\\n2026-12-03T00:00:00Z  INFO forged\\r\\u{1b}[2J\\u{202e}"
        );
    }

    #[test]
    fn a_call_logs_at_most_its_budget() {
        let mut budget = LogBudget::default();
        let taken = (0..1000).filter(|_| budget.take(10)).count();
        assert_eq!(taken, MAX_LOG_RECORDS_PER_CALL as usize);
        let mut budget = LogBudget::default();
        assert!(budget.take(MAX_LOG_BYTES_PER_CALL - 1));
        assert!(!budget.take(2), "past the bytes");
        assert!(!budget.take(0), "and nothing more in that call");
    }

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
