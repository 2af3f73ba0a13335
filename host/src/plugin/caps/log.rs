//! The `log` capability: a plugin's records go to the host's log (target `geecache::plugin`,
//! field `plugin`), cut to [`MAX_LOG_MESSAGE`] bytes, escaped so that no record can forge a
//! line or repaint a terminal, and within a budget per call ([`LogBudget`]); what is dropped
//! past it is counted in `geecache_plugin_logs_dropped_total`.

use wasmtime::component::{HasSelf, Linker};

use crate::plugin::bindings::log;
use crate::plugin::host::HostState;

/// The log capability's metric (labels `plugin` and `kind`, as every plugin series).
pub const METRICS: geecache_core::metrics::Table = &[(
    "geecache_plugin_logs_dropped_total",
    "Plugin log records dropped: past the budget of one call (100 records or 64KiB).",
)];

/// The series of [`METRICS`] for one plugin.
pub(crate) fn series(p: &crate::plugin::PluginSnapshot) -> (&'static str, f64) {
    ("geecache_plugin_logs_dropped_total", p.logs_dropped as f64)
}

/// Adds the `log` interface, served by [`HostState`], to `linker` (every plugin kind).
///
/// # Errors
/// When the interface is in the linker already.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    log::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
