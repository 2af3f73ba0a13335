//! The error type shared by the group, the plugin runtime and the HTTP API.
//!
//! Every variant maps to one stable, machine-readable [`Error::code`] and one HTTP status
//! ([`Error::status`]); the API turns them into JSON bodies without leaking internals. Errors
//! are `Clone` because one failed load is shared by every waiter of a singleflight call.
//!
//! The errors of the parts core reaches only through a seam (a plugin runtime, a peer
//! protocol) stay in their own crates: each implements [`SeamError`] (its code, status and
//! public message) and converts into [`Error::Plugin`] or [`Error::Peer`] with `From` impls
//! of its own. Callers that know the concrete type get it back with [`Foreign::downcast_ref`].

use std::time::Duration;

use crate::compression::CodecError;
use crate::singleflight::LoaderPanicked;

pub use crate::foreign::{Foreign, SeamError};

/// What went wrong while serving a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request itself is malformed (empty key, bad query string, bad path).
    #[error("bad request: {0}")]
    BadRequest(String),

    /// The key is longer than the node accepts.
    #[error("key is {len} bytes; the limit is {limit} bytes (--max-key-bytes)")]
    KeyTooLarge {
        /// Length of the offending key in bytes.
        len: usize,
        /// The configured limit.
        limit: usize,
    },

    /// A value (loaded or sent) is larger than the node accepts.
    #[error("value is {len} bytes; the limit is {limit} bytes (--max-value-bytes)")]
    ValueTooLarge {
        /// Length of the offending value in bytes.
        len: usize,
        /// The configured limit.
        limit: usize,
    },

    /// A request body is larger than `--max-body-bytes`.
    #[error("request body is larger than {limit} bytes (--max-body-bytes)")]
    BodyTooLarge {
        /// The configured limit.
        limit: usize,
    },

    /// A batch answer reached its byte budget (`--max-batch-bytes`) before this key's turn: the
    /// key was not loaded. Ask for it in a smaller batch, or with a single get.
    #[error(
        "the batch answer reached its budget of {limit} bytes (--max-batch-bytes) before this key; ask for it in a smaller batch or alone"
    )]
    BatchBudget {
        /// The configured budget.
        limit: usize,
    },

    /// No group of that name is configured on this node.
    #[error("no such group: {0:?}")]
    GroupNotFound(String),

    /// The getter reported that the key does not exist in the source.
    #[error("no such key")]
    KeyNotFound,

    /// No loaded plugin reports that name (admin API).
    #[error("no such plugin: {0:?} (GET /api/v1/plugins lists them)")]
    PluginNotFound(String),

    /// A new version of a plugin was refused; the old one keeps serving. The message says why
    /// (it is for the operator who asked for the reload, so it names files).
    #[error("{0}")]
    PluginRefused(String),

    /// A cluster-wide operation that needs the cluster secret was asked of a node without one.
    #[error("{0}")]
    Forbidden(String),

    /// A plugin failed (trap, panic, memory cap, time limit, or an error it reported).
    #[error(transparent)]
    Plugin(Foreign),

    /// A value could not be encoded with the group's codec, or a value sent to this node does
    /// not decode to what it claims.
    #[error(transparent)]
    Codec(#[from] CodecError),

    /// A call to a peer failed: unreachable, timed out, refused our signature, or answered
    /// with an error. Served as 502 (504 for a timeout) with a `peer_*` code.
    #[error(transparent)]
    Peer(Foreign),

    /// The code loading a value panicked; every waiter of that load gets this error.
    #[error("loader panicked: {0}")]
    LoaderPanicked(String),

    /// The storage tier did not take a client's write (set or remove at the owner) within the
    /// request timeout: the backend failed, is too slow, or its queue stayed full. The request
    /// fails (503) rather than acknowledge a write a restart could lose.
    #[error("the storage tier did not take the write: {0}")]
    StorageWrite(String),

    /// A flush emptied the group's memory but not its storage tier: the backend cannot clear
    /// (a storage plugin built without `storage-clear`) or failed.
    #[error("the storage tier was not cleared: {0}")]
    StorageNotCleared(String),

    /// A flush emptied the group's memory, and its storage tier's clear had not finished
    /// within the request timeout; it goes on, in order with the tier's writes.
    #[error(
        "the storage tier's clear had not finished after {0:?} (--request-timeout); it goes \
         on, in order, and reads skip the tier until it is done"
    )]
    StorageClearPending(Duration),

    /// The whole request took longer than the request timeout.
    #[error("request timed out after {0:?} (--request-timeout)")]
    Timeout(Duration),

    /// A bug or an unexpected condition inside the node; details are logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<LoaderPanicked> for Error {
    fn from(p: LoaderPanicked) -> Self {
        Error::LoaderPanicked(p.0)
    }
}

impl Error {
    /// The plugin runtime's or the peer protocol's own error, when this is one of theirs and
    /// a `T` (say `PluginError::Timeout`).
    pub fn foreign<T: SeamError>(&self) -> Option<&T> {
        match self {
            Error::Plugin(e) | Error::Peer(e) => e.downcast_ref(),
            Error::Codec(CodecError::Plugin(e)) => e.downcast_ref(),
            _ => None,
        }
    }

    /// A stable, machine-readable error code for API clients.
    pub fn code(&self) -> &str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::KeyTooLarge { .. } => "key_too_large",
            Error::ValueTooLarge { .. } => "value_too_large",
            Error::BodyTooLarge { .. } => "body_too_large",
            Error::BatchBudget { .. } => "too_large",
            Error::GroupNotFound(_) => "group_not_found",
            Error::KeyNotFound => "key_not_found",
            Error::PluginNotFound(_) => "plugin_not_found",
            Error::PluginRefused(_) => "plugin_refused",
            Error::Forbidden(_) => "forbidden",
            Error::Plugin(p) => p.code(),
            Error::Codec(c) => c.code(),
            Error::Peer(p) => p.code(),
            Error::LoaderPanicked(_) => "loader_panicked",
            Error::StorageWrite(_) => "storage_unavailable",
            Error::StorageNotCleared(_) => "storage_not_cleared",
            Error::StorageClearPending(_) => "storage_clear_pending",
            Error::Timeout(_) => "timeout",
            Error::Internal(_) => "internal",
        }
    }

    /// The message a remote caller may see: the error itself, except for [`Error::Internal`],
    /// whose details belong in the node's log only, and an owner's refusal, which is passed on
    /// in the owner's words.
    pub fn public_message(&self) -> String {
        match self {
            Error::Internal(_) => "internal error; see the node's log".to_string(),
            Error::Plugin(p) => p.public_message(),
            Error::Peer(p) => p.public_message(),
            other => other.to_string(),
        }
    }

    /// The HTTP status this error is served with.
    pub fn status(&self) -> u16 {
        match self {
            Error::BadRequest(_) => 400,
            Error::KeyTooLarge { .. }
            | Error::ValueTooLarge { .. }
            | Error::BodyTooLarge { .. }
            | Error::BatchBudget { .. } => 413,
            Error::GroupNotFound(_) | Error::KeyNotFound | Error::PluginNotFound(_) => 404,
            Error::PluginRefused(_) => 422,
            Error::Forbidden(_) => 403,
            Error::Plugin(p) => p.status(),
            Error::Codec(c) => c.status(),
            Error::Peer(p) => p.status(),
            Error::LoaderPanicked(_) | Error::Internal(_) => 500,
            Error::StorageWrite(_) | Error::StorageNotCleared(_) => 503,
            Error::StorageClearPending(_) | Error::Timeout(_) => 504,
        }
    }
}

/// An error and its causes on one line (`outer: cause: root cause`): a library's own message
/// rarely says what failed below it.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
