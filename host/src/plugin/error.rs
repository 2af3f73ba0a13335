//! Errors of the plugin runtime, each with a stable code and HTTP status.

use std::time::Duration;

use crate::compression::CodecError;
use crate::error::{Error, Foreign, SeamError};

/// The WIT `error` case for input the plugin refuses; served as 400.
pub(crate) const INVALID_INPUT: &str = "invalid-input";
/// The WIT `error` case whose message is for operators only.
pub(crate) const OTHER: &str = "other";

/// Why a plugin could not be loaded or why one call into it failed.
///
/// A failed call never takes the host down: the store it ran in is discarded and the next call
/// gets a fresh instance.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    /// The plugin file could not be read, compiled, linked, or is not a geecache plugin.
    #[error("cannot load plugin {path}: {message}")]
    Load {
        /// The file the operator named.
        path: String,
        /// What was wrong, with the fix where there is one.
        message: String,
    },

    /// The plugin trapped (a Rust panic in a guest arrives as an `unreachable` trap).
    #[error("plugin {plugin} trapped: {message}")]
    Trap {
        /// The plugin's reported name.
        plugin: String,
        /// The trap message (first line), for operators.
        message: String,
    },

    /// The call ran past the plugin time limit and was interrupted.
    #[error("plugin {plugin} exceeded its time limit of {limit:?} (--plugin-timeout)")]
    Timeout {
        /// The plugin's reported name.
        plugin: String,
        /// The configured limit.
        limit: Duration,
    },

    /// The call tried to grow memory past the plugin memory cap and was stopped.
    #[error("plugin {plugin} exceeded its memory limit of {limit} bytes (--plugin-memory)")]
    MemoryLimit {
        /// The plugin's reported name.
        plugin: String,
        /// The configured cap in bytes.
        limit: usize,
    },

    /// The plugin ran correctly and reported an error (its source is down, bad input, ...).
    #[error("plugin {plugin} reported {kind}: {message}")]
    Reported {
        /// The plugin's reported name.
        plugin: String,
        /// `invalid-input`, `unavailable` or `other`, as in the WIT `error` variant.
        kind: &'static str,
        /// The plugin's message.
        message: String,
    },

    /// The plugin reported `unavailable` after a source the host reaches for it (its
    /// database) failed during the call: the source, not the plugin, is down. Served as 502.
    #[error("plugin {plugin} reported its source unavailable: {message}")]
    Source {
        /// The plugin's reported name.
        plugin: String,
        /// The plugin's message (it usually passes on the host's, which names the server).
        message: String,
    },

    /// The plugin lacks an optional export the call needs (it was built against an older
    /// `wit/geecache.wit`).
    #[error("plugin {plugin} cannot {what}: {message}")]
    Unsupported {
        /// The plugin's reported name.
        plugin: String,
        /// What was asked, e.g. `clear a group`.
        what: &'static str,
        /// What it lacks and the fix.
        message: String,
    },

    /// The call could not even start (instantiation failed, the runtime is shutting down).
    #[error("plugin {plugin} is unavailable: {message}")]
    Unavailable {
        /// The plugin's reported name.
        plugin: String,
        /// Why.
        message: String,
    },
}

/// Core sees a plugin's error through its seam: code, status and public message as here.
impl SeamError for PluginError {
    fn code(&self) -> &str {
        PluginError::code(self)
    }
    fn status(&self) -> u16 {
        PluginError::status(self)
    }
    fn public_message(&self) -> String {
        PluginError::public_message(self)
    }
}

impl From<PluginError> for Error {
    fn from(e: PluginError) -> Self {
        Error::Plugin(Foreign::new(e))
    }
}

/// A compressor plugin's call that failed.
impl From<PluginError> for CodecError {
    fn from(e: PluginError) -> Self {
        CodecError::Plugin(Foreign::new(e))
    }
}

impl PluginError {
    /// A stable, machine-readable error code for API clients.
    pub fn code(&self) -> &'static str {
        match self {
            PluginError::Load { .. } => "plugin_load_failed",
            PluginError::Trap { .. } => "plugin_trapped",
            PluginError::Timeout { .. } => "plugin_timeout",
            PluginError::MemoryLimit { .. } => "plugin_memory_limit",
            PluginError::Reported { .. } => "plugin_error",
            PluginError::Source { .. } => "source_unavailable",
            PluginError::Unsupported { .. } => "plugin_unsupported",
            PluginError::Unavailable { .. } => "plugin_unavailable",
        }
    }

    /// The HTTP status a request failed by this error is served with: 504 for a time-out, 400
    /// when the plugin judged the request's input unacceptable (`invalid-input`), 502 when the
    /// source behind the getter failed, 503 for everything else (the plugin, not the request,
    /// is at fault).
    pub fn status(&self) -> u16 {
        match self {
            PluginError::Timeout { .. } => 504,
            PluginError::Source { .. } => 502,
            PluginError::Reported {
                kind: INVALID_INPUT,
                ..
            } => 400,
            _ => 503,
        }
    }

    /// What a client may be told. The WIT says an `other(...)` message is for operators only,
    /// and the host's own messages about loading or starting a plugin name files and paths: those
    /// are replaced by a pointer to the node's log, where the full error is written.
    pub fn public_message(&self) -> String {
        match self {
            PluginError::Reported {
                plugin,
                kind: OTHER,
                ..
            } => format!("plugin {plugin} failed; the details are in the node's log"),
            PluginError::Unavailable { plugin, .. } => {
                format!("plugin {plugin} is unavailable; the details are in the node's log")
            }
            PluginError::Load { .. } => {
                "a plugin could not be loaded; the details are in the node's log".to_string()
            }
            other => other.to_string(),
        }
    }
}
