//! A storage backend plugin: a tier below memory.

use bytes::Bytes;

use crate::group::PeerEntry;

use super::bindings::storage::exports::geecache::plugin::storage::Entry;
use super::bindings::storage::{StoragePlugin, StoragePluginPre};
use super::{PluginError, plugin_kind};

plugin_kind!(
    /// A wasm storage backend: each call runs on a warm (or new) instance under the runtime's
    /// limits.
    WasmStorage,
    StoragePluginPre<super::host::HostState>,
    StoragePlugin,
    geecache_plugin_storage
);

impl WasmStorage {
    /// The entry stored under `key` of `group`, if any.
    ///
    /// # Errors
    /// Any [`PluginError`] of the call.
    pub async fn get(&self, group: &str, key: &str) -> Result<Option<PeerEntry>, PluginError> {
        let (group, key) = (group.to_owned(), key.to_owned());
        let entry = self
            .invoke(|mut w| async move {
                let storage = w.instance.geecache_plugin_storage();
                let answer = storage.call_get(&mut w.store, &group, &key).await;
                (w, answer)
            })
            .await?;
        Ok(entry.map(|e| PeerEntry {
            value: Bytes::from(e.value),
            codec: e.codec,
            expires_at_ms: e.expires_at_ms,
        }))
    }

    /// Stores `entry` under `key` of `group`.
    ///
    /// # Errors
    /// Any [`PluginError`] of the call.
    pub async fn put(&self, group: &str, key: &str, entry: PeerEntry) -> Result<(), PluginError> {
        let (group, key) = (group.to_owned(), key.to_owned());
        let entry = Entry {
            value: entry.value.to_vec(),
            codec: entry.codec,
            expires_at_ms: entry.expires_at_ms,
        };
        self.invoke(|mut w| async move {
            let storage = w.instance.geecache_plugin_storage();
            let answer = storage.call_put(&mut w.store, &group, &key, &entry).await;
            (w, answer)
        })
        .await
    }

    /// Removes `key` of `group`.
    ///
    /// # Errors
    /// Any [`PluginError`] of the call.
    pub async fn delete(&self, group: &str, key: &str) -> Result<(), PluginError> {
        let (group, key) = (group.to_owned(), key.to_owned());
        self.invoke(|mut w| async move {
            let storage = w.instance.geecache_plugin_storage();
            let answer = storage.call_delete(&mut w.store, &group, &key).await;
            (w, answer)
        })
        .await
    }
}

/// A storage plugin is a group's storage tier: entries pass through as stored (bytes, codec
/// tag, expiry); the group checks what comes back.
impl crate::group::Storage for WasmStorage {
    fn name(&self) -> &str {
        &self.core.name
    }

    fn get<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
    ) -> futures::future::BoxFuture<'a, crate::error::Result<Option<PeerEntry>>> {
        Box::pin(async move { Ok(WasmStorage::get(self, group, key).await?) })
    }

    fn put<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        entry: PeerEntry,
    ) -> futures::future::BoxFuture<'a, crate::error::Result<()>> {
        Box::pin(async move { Ok(WasmStorage::put(self, group, key, entry).await?) })
    }

    fn delete<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
    ) -> futures::future::BoxFuture<'a, crate::error::Result<()>> {
        Box::pin(async move { Ok(WasmStorage::delete(self, group, key).await?) })
    }
}
