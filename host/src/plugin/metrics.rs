//! The plugins' metrics: the table of the runtime's plugin series and how a [`PluginSnapshot`]
//! maps to them and to the capabilities' own (labels `plugin` and `kind`; the info metric also
//! `version` and `sha256`). Each capability keeps its table beside its code
//! ([`super::caps::log::METRICS`], [`super::caps::sql::METRICS`]); [`PLUGIN_TABLES`] lists
//! them all.

use geecache_core::metrics::{Sample, Table};

use super::PluginSnapshot;

/// Help text of the runtime's plugin metrics; [`plugin_series`] emits these names and the
/// capabilities'.
pub const PLUGIN_METRICS: Table = &[
    ("geecache_plugin_calls_total", "Plugin calls started."),
    (
        "geecache_plugin_traps_total",
        "Plugin calls that trapped (guest panics included).",
    ),
    (
        "geecache_plugin_timeouts_total",
        "Plugin calls stopped by the time limit.",
    ),
    (
        "geecache_plugin_memory_limit_hits_total",
        "Plugin calls stopped by the memory cap.",
    ),
    (
        "geecache_plugin_reported_errors_total",
        "Errors a plugin reported itself.",
    ),
    (
        "geecache_plugin_busy_seconds_total",
        "Wall time spent running plugin calls.",
    ),
    (
        "geecache_plugin_reloads_total",
        "New plugin versions swapped in by hot reload.",
    ),
    (
        "geecache_plugin_reload_failures_total",
        "Plugin reloads refused (the old version kept serving).",
    ),
];

/// The info metric of plugins: 1 for the version each plugin serves now.
pub const PLUGIN_INFO: (&str, &str) = (
    "geecache_plugin_info",
    "1 per plugin, labelled with the version and the component's SHA-256 it serves now.",
);

/// Maps a plugin's snapshot to its series (labels `plugin` and `kind`).
pub fn plugin_series(p: &PluginSnapshot) -> Vec<(&'static str, f64)> {
    vec![
        ("geecache_plugin_calls_total", p.calls as f64),
        ("geecache_plugin_traps_total", p.traps as f64),
        ("geecache_plugin_timeouts_total", p.timeouts as f64),
        (
            "geecache_plugin_memory_limit_hits_total",
            p.memory_limits as f64,
        ),
        (
            "geecache_plugin_reported_errors_total",
            p.reported_errors as f64,
        ),
        ("geecache_plugin_busy_seconds_total", p.busy_seconds),
        ("geecache_plugin_reloads_total", p.reloads as f64),
        (
            "geecache_plugin_reload_failures_total",
            p.reload_failures as f64,
        ),
        super::caps::log::series(p),
        super::caps::sql::series(p),
    ]
}

/// Every table of plugin series: the runtime's and each capability's.
pub const PLUGIN_TABLES: [Table; 3] = [
    PLUGIN_METRICS,
    super::caps::log::METRICS,
    super::caps::sql::METRICS,
];

/// [`PLUGIN_INFO`] as a table of its own.
pub const PLUGIN_INFO_METRICS: Table = &[PLUGIN_INFO];

/// Every series of `p`, and its info series.
pub fn plugin_samples(p: &PluginSnapshot) -> Vec<Sample> {
    let labelled = |sample: Sample| {
        sample
            .with("plugin", p.name.clone())
            .with("kind", p.kind.clone())
    };
    let mut samples: Vec<Sample> = plugin_series(p)
        .into_iter()
        .map(|(name, value)| labelled(Sample::new(name, value)))
        .collect();
    samples.push(
        labelled(Sample::new(PLUGIN_INFO.0, 1.0))
            .with("version", p.version.clone())
            .with("sha256", p.sha256.clone()),
    );
    samples
}
