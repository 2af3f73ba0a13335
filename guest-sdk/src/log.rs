//! Structured logging into the host's log stream, tagged with the plugin's name.
//!
//! Messages longer than 4 KiB are truncated by the host, and their control characters
//! (newlines included) are escaped, so a record is always one line. One call may log at most
//! 100 records and 64 KiB; the host drops the rest of that call's records (and counts them in
//! `geecache_plugin_logs_dropped_total`). Whether a level is recorded is the operator's
//! choice (the host's log filter), so format only what is cheap or useful.
//!
//! ```no_run
//! use geecache_guest_sdk::log;
//!
//! let key = "Tom";
//! log::debug(&format!("loading {key}"));
//! ```

use crate::wit::shared::log::Level;

/// Emits one record: into the host's log in a component; natively (in a plugin's unit tests)
/// into the [`FakeHost`](crate::testing::FakeHost) the test runs under.
fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::wit::shared::log::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::log(level, message);
}

/// Logs `message` at trace level: very fine-grained diagnostics.
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Logs `message` at debug level: diagnostics useful while developing a plugin.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Logs `message` at info level: normal operational messages.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Logs `message` at warn level: something unexpected that the plugin recovered from.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Logs `message` at error level: a failure.
pub fn error(message: &str) {
    log(Level::Error, message);
}
