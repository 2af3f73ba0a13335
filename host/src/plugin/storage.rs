//! A storage backend plugin: a tier below memory.

use std::sync::Arc;

use bytes::Bytes;
use wasmtime::component::InstancePre;

use super::bindings::storage::StoragePluginPre;
use super::bindings::storage::exports::geecache::plugin::storage::Entry;
use super::bindings::types::PluginInfo;
use super::host::HostState;
use super::{PluginCore, PluginError};

/// An entry as a storage backend keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// The stored bytes (possibly compressed; see `codec`).
    pub value: Bytes,
    /// Codec tag of `value`.
    pub codec: String,
    /// Absolute expiry in ms since the Unix epoch, if any.
    pub expires_at_ms: Option<u64>,
}

/// A wasm storage backend: each call runs in a fresh instance under the runtime's limits.
pub struct WasmStorage {
    /// Name, grants, limits, counters.
    core: Arc<PluginCore>,
    /// Pre-linked component.
    pre: StoragePluginPre<HostState>,
}

impl std::fmt::Debug for WasmStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmStorage")
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

pub(super) fn info(
    core: &Arc<PluginCore>,
    pre: &InstancePre<HostState>,
) -> Result<PluginInfo, PluginError> {
    let pre = StoragePluginPre::new(pre.clone()).map_err(|e| core.classify(&e, false))?;
    core.call_blocking(|store| {
        pre.instantiate(&mut *store)?
            .geecache_plugin_storage()
            .call_info(store)
    })
}

impl WasmStorage {
    pub(super) fn new(
        core: Arc<PluginCore>,
        pre: InstancePre<HostState>,
    ) -> Result<Self, PluginError> {
        let pre = StoragePluginPre::new(pre).map_err(|e| core.classify(&e, false))?;
        Ok(WasmStorage { core, pre })
    }

    /// Name, version and counters.
    pub fn core(&self) -> &PluginCore {
        &self.core
    }

    /// The entry stored under `key` of `group`, if any.
    ///
    /// # Errors
    /// Any [`PluginError`] of the call.
    pub async fn get(&self, group: &str, key: &str) -> Result<Option<StoredEntry>, PluginError> {
        let pre = self.pre.clone();
        let (group, key) = (group.to_owned(), key.to_owned());
        let answer = self
            .core
            .call(move |s| {
                pre.instantiate(&mut *s)?
                    .geecache_plugin_storage()
                    .call_get(s, &group, &key)
            })
            .await?;
        let entry = answer.map_err(|e| self.core.reported(e))?;
        Ok(entry.map(|e| StoredEntry {
            value: Bytes::from(e.value),
            codec: e.codec,
            expires_at_ms: e.expires_at_ms,
        }))
    }

    /// Stores `entry` under `key` of `group`.
    ///
    /// # Errors
    /// Any [`PluginError`] of the call.
    pub async fn put(&self, group: &str, key: &str, entry: StoredEntry) -> Result<(), PluginError> {
        let pre = self.pre.clone();
        let (group, key) = (group.to_owned(), key.to_owned());
        let entry = Entry {
            value: entry.value.to_vec(),
            codec: entry.codec,
            expires_at_ms: entry.expires_at_ms,
        };
        let answer = self
            .core
            .call(move |s| {
                pre.instantiate(&mut *s)?
                    .geecache_plugin_storage()
                    .call_put(s, &group, &key, &entry)
            })
            .await?;
        answer.map_err(|e| self.core.reported(e))
    }

    /// Removes `key` of `group`.
    ///
    /// # Errors
    /// Any [`PluginError`] of the call.
    pub async fn delete(&self, group: &str, key: &str) -> Result<(), PluginError> {
        let pre = self.pre.clone();
        let (group, key) = (group.to_owned(), key.to_owned());
        let answer = self
            .core
            .call(move |s| {
                pre.instantiate(&mut *s)?
                    .geecache_plugin_storage()
                    .call_delete(s, &group, &key)
            })
            .await?;
        answer.map_err(|e| self.core.reported(e))
    }
}
