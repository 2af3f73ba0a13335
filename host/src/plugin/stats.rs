//! A plugin's counters: [`PluginStats`] (live, shared by every version of the plugin) and
//! [`PluginSnapshot`] (a copy, as `/api/v1/stats` and `/metrics` show it).

use std::sync::atomic::AtomicU64;

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
    /// Log records dropped: past a call's log budget (see `caps::log::LogBudget`).
    pub logs_dropped: AtomicU64,
    /// SQL queries refused because a value, a row, a server's message or the result was larger
    /// than the plugin's memory cap.
    pub sql_too_large: AtomicU64,
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
    /// See [`PluginStats::sql_too_large`].
    pub sql_too_large: u64,
    /// Hex SHA-256 of the version serving now (empty for a plugin outside a [`super::Plugins`]).
    pub sha256: String,
    /// Versions swapped in by hot reload since the node started.
    pub reloads: u64,
    /// Reloads refused (the old version kept serving).
    pub reload_failures: u64,
}
