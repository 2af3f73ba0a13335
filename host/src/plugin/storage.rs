//! A storage backend plugin: a tier below memory.

use bytes::Bytes;

use crate::group::PeerEntry;

use super::bindings::storage::exports::geecache::plugin0_1_0::storage::{Entry, Guest};
use super::bindings::storage::{StoragePluginBasic, StoragePluginBasicIndices};
use super::bindings::storage_clear::exports::geecache::plugin0_1_0::storage_clear;
use super::host::HostState;
use super::{PluginError, plugin_kind};

plugin_kind!(
    /// A wasm storage backend: each call runs on a warm (or new) instance under the runtime's
    /// limits.
    WasmStorage,
    StoragePre,
    StorageInstance,
    geecache_plugin0_1_0_storage
);

/// A pre-linked storage component: its `storage` export, and its `storage-clear` export when
/// it has one (a plugin built before that interface existed has not; it still loads).
#[derive(Clone)]
pub struct StoragePre {
    pre: wasmtime::component::InstancePre<HostState>,
    storage: StoragePluginBasicIndices,
    clear: Option<storage_clear::GuestIndices>,
}

impl StoragePre {
    /// Finds the exports.
    ///
    /// # Errors
    /// When the component does not export `storage`.
    pub fn new(pre: wasmtime::component::InstancePre<HostState>) -> wasmtime::Result<Self> {
        let storage = StoragePluginBasicIndices::new(&pre)?;
        let clear = storage_clear::GuestIndices::new(&pre).ok();
        Ok(StoragePre {
            pre,
            storage,
            clear,
        })
    }

    /// A new instance in `store`; its exports are type-checked here, `storage-clear`'s too.
    ///
    /// # Errors
    /// When instantiation fails or an export has the wrong type.
    pub async fn instantiate_async(
        &self,
        mut store: impl wasmtime::AsContextMut<Data = HostState>,
    ) -> wasmtime::Result<StorageInstance> {
        let mut store = store.as_context_mut();
        let instance = self.pre.instantiate_async(&mut store).await?;
        let storage = self.storage.load(&mut store, &instance)?;
        let clear = match &self.clear {
            Some(clear) => Some(clear.load(&mut store, &instance)?),
            None => None,
        };
        Ok(StorageInstance { storage, clear })
    }
}

/// One instance of a storage component.
pub struct StorageInstance {
    storage: StoragePluginBasic,
    clear: Option<storage_clear::Guest>,
}

impl StorageInstance {
    fn geecache_plugin0_1_0_storage(&self) -> &Guest {
        self.storage.geecache_plugin0_1_0_storage()
    }
}

impl WasmStorage {
    /// The entry stored under `key` of `group`, if any.
    ///
    /// # Errors
    /// Any [`PluginError`] of the call.
    pub async fn get(&self, group: &str, key: &str) -> Result<Option<PeerEntry>, PluginError> {
        let (group, key) = (group.to_owned(), key.to_owned());
        let entry = self
            .invoke(|mut w| async move {
                let storage = w.instance.geecache_plugin0_1_0_storage();
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
            let storage = w.instance.geecache_plugin0_1_0_storage();
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
            let storage = w.instance.geecache_plugin0_1_0_storage();
            let answer = storage.call_delete(&mut w.store, &group, &key).await;
            (w, answer)
        })
        .await
    }
}

/// Why a storage plugin without `storage-clear` cannot clear, and the fix.
const NO_CLEAR: &str = "was built without the storage-clear export; rebuild it with the current \
                        guest-sdk (or wit/geecache.wit) to let flushes empty it";

impl WasmStorage {
    /// Whether this plugin exports `storage-clear`, so [`WasmStorage::clear`] can work.
    pub fn can_clear(&self) -> bool {
        self.pre.clear.is_some()
    }

    /// Removes every entry of `group`.
    ///
    /// # Errors
    /// Any [`PluginError`] of the call; [`PluginError::Unsupported`] when the plugin has no
    /// `storage-clear` export.
    pub async fn clear(&self, group: &str) -> Result<(), PluginError> {
        if !self.can_clear() {
            return Err(PluginError::Unsupported {
                plugin: self.core.name.clone(),
                what: "clear a group",
                message: format!("it {NO_CLEAR}"),
            });
        }
        let group = group.to_owned();
        self.invoke(|mut w| async move {
            let answer = match &w.instance.clear {
                Some(clear) => clear.call_clear(&mut w.store, &group).await,
                None => Err(wasmtime::format_err!("storage-clear vanished")),
            };
            (w, answer)
        })
        .await
    }
}

/// A storage plugin is a group's storage tier: entries pass through as stored (bytes, codec
/// tag, expiry); the group checks what comes back.
impl crate::group::Entries for WasmStorage {
    fn get<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
    ) -> futures::future::BoxFuture<'a, crate::error::Result<Option<PeerEntry>>> {
        Box::pin(async move { Ok(WasmStorage::get(self, group, key).await?) })
    }

    fn set<'a>(
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

impl crate::group::Storage for WasmStorage {
    fn name(&self) -> &str {
        &self.core.name
    }

    fn clear<'a>(
        &'a self,
        group: &'a str,
    ) -> futures::future::BoxFuture<'a, crate::error::Result<()>> {
        Box::pin(async move { Ok(WasmStorage::clear(self, group).await?) })
    }

    fn cannot_clear(&self) -> Option<String> {
        (!self.can_clear()).then(|| format!("plugin {} {NO_CLEAR}", self.core.name))
    }
}
