//! The capabilities a plugin may be granted, apart from the runtime that grants them (as
//! Spin's factors and wasmtime's per-interface WASI crates are). Each is one part with its own
//! `add_to_linker` (called by `host::linker` for the kinds that may import it), its own errors,
//! its own metric table (gathered by `plugin/metrics.rs`), and the state it keeps in a call's
//! [`HostState`](super::host::HostState):
//!
//! - [`log`]: records into the host's log, escaped and within a budget per call (every kind);
//! - [`config`]: the operator's values for the plugin (every kind);
//! - [`sql`]: a getter's database, SQLite or Postgres, read-only, bounded in rows, bytes and
//!   time;
//! - [`http`]: a getter's outbound `wasi:http`, to the origins the operator allowed, with
//!   resolved addresses checked and bounded in time, bytes and requests.
//!
//! A new capability (a key-value store, a message queue) is one new part here: its WIT
//! interface in `wit/`, its bindings in `bindings.rs`, its state in `HostState`, its
//! `add_to_linker` in `host::linker`, its table in `metrics::PLUGIN_TABLES`.

pub(crate) mod config;
pub(crate) mod http;
pub(crate) mod log;
pub mod sql;
