//! The plugin's own configuration values, as set by the operator
//! (`--plugin-config NAME.KEY=VALUE` or the `[plugins.config]` table of the config file).
//!
//! ```no_run
//! use geecache_guest_sdk::config;
//!
//! let dir = config::get("dir").unwrap_or_else(|| "/data".to_owned());
//! ```

/// Returns the value of `key`, or `None` when the operator did not set it.
///
/// Natively (in a plugin's unit tests) the answer comes from the
/// [`FakeHost`](crate::testing::FakeHost) the test runs under.
pub fn get(key: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    return crate::wit::shared::config::get(key);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::config_get(key);
}
