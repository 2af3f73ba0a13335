//! What a plugin's store holds, and the host side of the capabilities plugins import.
//!
//! Host imports return `wasmtime::Result<T>`: an `Err` traps the guest (host bug or abuse),
//! while errors the guest should handle travel inside `T` (e.g. `sql.query`'s `result`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{self, config, log, sql, types};
use super::sql::{SqlDb, SqlError};

/// Log messages from plugins are cut to this many bytes.
const MAX_LOG_MESSAGE: usize = 4096;

/// The data of one call's store.
pub(crate) struct HostState {
    /// WASI state: no env, no args, no network; only granted directories.
    pub wasi: WasiCtx,
    /// WASI's resource handles.
    pub table: ResourceTable,
    /// Enforces the memory cap and remembers whether it was hit.
    pub limiter: CallLimiter,
    /// The plugin's name, for log records.
    pub plugin: String,
    /// The plugin's own config values.
    pub config: BTreeMap<String, String>,
    /// The plugin's database, when it imports `sql`.
    pub sql: Option<Arc<SqlDb>>,
    /// When this call's time is up; bounds host work (SQL) that epochs cannot interrupt.
    pub deadline: Instant,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A `ResourceLimiter` that refuses memory growth past the cap and records that it did, so a
/// call that dies of it is reported as "memory limit" rather than as a bare trap.
pub(crate) struct CallLimiter {
    /// Byte cap for any one linear memory.
    max_memory: usize,
    /// Set when a growth was refused because of the cap.
    hit: bool,
    /// wasmtime's own limits for tables and instance counts.
    inner: StoreLimits,
}

impl CallLimiter {
    pub fn new(max_memory: usize) -> Self {
        CallLimiter {
            max_memory,
            hit: false,
            inner: StoreLimitsBuilder::new()
                .memory_size(max_memory)
                .table_elements(1 << 20)
                .instances(64)
                .tables(64)
                .memories(16)
                .build(),
        }
    }

    pub fn hit(&self) -> bool {
        self.hit
    }
}

impl ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.hit = true;
            return Ok(false);
        }
        self.inner.memory_growing(current, desired, maximum)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// Adds the host capabilities (`log`, `config`, `sql`) to the linker; WASI is added by the
/// caller. One linker serves every plugin kind.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    bindings::getter::GetterPlugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
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

impl config::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.config.get(&key).cloned())
    }
}

impl sql::Host for HostState {
    fn query(
        &mut self,
        statement: String,
        params: Vec<sql::Value>,
        max_rows: u32,
    ) -> wasmtime::Result<Result<Vec<Vec<sql::Value>>, types::Error>> {
        let Some(db) = &self.sql else {
            return Ok(Err(types::Error::Unavailable(
                "no database is configured for this plugin (set NAME.database)".into(),
            )));
        };
        Ok(db
            .query(&statement, &params, max_rows, self.deadline)
            .map_err(|e| match e {
                SqlError::InvalidInput(m) => types::Error::InvalidInput(m),
                SqlError::Unavailable(m) => types::Error::Unavailable(m),
            }))
    }
}
