//! A getter plugin behind the group's [`Getter`] trait.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use wasmtime::component::InstancePre;

use super::bindings::getter::GetterPluginPre;
use super::bindings::getter::exports::geecache::plugin::getter::Lookup;
use super::bindings::types::PluginInfo;
use super::host::HostState;
use super::{PluginCore, PluginError};
use crate::error::Result;
use crate::group::{Getter, Loaded};

/// A wasm getter: each `get` runs in a fresh instance under the runtime's limits.
pub struct WasmGetter {
    /// Name, grants, limits, counters.
    core: Arc<PluginCore>,
    /// Pre-linked component; instantiating from it costs ~10–20 µs.
    pre: GetterPluginPre<HostState>,
}

impl std::fmt::Debug for WasmGetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmGetter")
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

pub(super) fn info(
    core: &Arc<PluginCore>,
    pre: &InstancePre<HostState>,
) -> Result<PluginInfo, PluginError> {
    let pre = GetterPluginPre::new(pre.clone()).map_err(|e| core.classify(&e, false))?;
    core.call_blocking(|store| {
        pre.instantiate(&mut *store)?
            .geecache_plugin_getter()
            .call_info(store)
    })
}

impl WasmGetter {
    pub(super) fn new(
        core: Arc<PluginCore>,
        pre: InstancePre<HostState>,
    ) -> Result<Self, PluginError> {
        let pre = GetterPluginPre::new(pre).map_err(|e| core.classify(&e, false))?;
        Ok(WasmGetter { core, pre })
    }

    /// Name, version and counters.
    pub fn core(&self) -> &PluginCore {
        &self.core
    }
}

impl Getter for WasmGetter {
    fn name(&self) -> &str {
        &self.core.name
    }

    fn get<'a>(&'a self, group: &'a str, key: &'a str) -> BoxFuture<'a, Result<Loaded>> {
        let pre = self.pre.clone();
        let (group, key) = (group.to_owned(), key.to_owned());
        Box::pin(async move {
            let answer = self
                .core
                .call(move |store| {
                    pre.instantiate(&mut *store)?
                        .geecache_plugin_getter()
                        .call_get(store, &group, &key)
                })
                .await?;
            match answer {
                Ok(Lookup::Found(found)) => Ok(Loaded::Found {
                    value: Bytes::from(found.value),
                    expires_at_ms: found.expires_at_ms,
                }),
                Ok(Lookup::NotFound) => Ok(Loaded::NotFound),
                Err(e) => Err(self.core.reported(e).into()),
            }
        })
    }
}
