//! A compressor plugin: a codec the host does not have built in.

use std::sync::Arc;

use wasmtime::component::InstancePre;

use super::bindings::compressor::CompressorPluginPre;
use super::bindings::types::PluginInfo;
use super::host::HostState;
use super::{PluginCore, PluginError};

/// A wasm codec: each call runs in a fresh instance under the runtime's limits.
pub struct WasmCompressor {
    /// Name (the codec's name in group configs), grants, limits, counters.
    core: Arc<PluginCore>,
    /// Pre-linked component.
    pre: CompressorPluginPre<HostState>,
}

impl std::fmt::Debug for WasmCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmCompressor")
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

pub(super) fn info(
    core: &Arc<PluginCore>,
    pre: &InstancePre<HostState>,
) -> Result<PluginInfo, PluginError> {
    let pre = CompressorPluginPre::new(pre.clone()).map_err(|e| core.classify(&e, false))?;
    core.call_blocking(|store| {
        pre.instantiate(&mut *store)?
            .geecache_plugin_compressor()
            .call_info(store)
    })
}

impl WasmCompressor {
    pub(super) fn new(
        core: Arc<PluginCore>,
        pre: InstancePre<HostState>,
    ) -> Result<Self, PluginError> {
        let pre = CompressorPluginPre::new(pre).map_err(|e| core.classify(&e, false))?;
        Ok(WasmCompressor { core, pre })
    }

    /// Name, version and counters.
    pub fn core(&self) -> &PluginCore {
        &self.core
    }

    /// Compresses `data` at `level` (the plugin's default when `None`).
    ///
    /// # Errors
    /// Any [`PluginError`] of the call.
    pub async fn compress(
        &self,
        data: Vec<u8>,
        level: Option<i32>,
    ) -> Result<Vec<u8>, PluginError> {
        let pre = self.pre.clone();
        let answer = self
            .core
            .call(move |s| {
                pre.instantiate(&mut *s)?
                    .geecache_plugin_compressor()
                    .call_compress(s, &data, level)
            })
            .await?;
        answer.map_err(|e| self.core.reported(e))
    }

    /// Decompresses `data`, refusing output longer than `max_len`.
    ///
    /// # Errors
    /// Any [`PluginError`] of the call; also when the plugin returns more than `max_len` bytes.
    pub async fn decompress(&self, data: Vec<u8>, max_len: u64) -> Result<Vec<u8>, PluginError> {
        let pre = self.pre.clone();
        let answer = self
            .core
            .call(move |s| {
                pre.instantiate(&mut *s)?
                    .geecache_plugin_compressor()
                    .call_decompress(s, &data, max_len)
            })
            .await?;
        let out = answer.map_err(|e| self.core.reported(e))?;
        if out.len() as u64 > max_len {
            return Err(PluginError::Reported {
                plugin: self.core.name.clone(),
                kind: "other",
                message: format!(
                    "returned {} bytes, more than the {max_len} allowed",
                    out.len()
                ),
            });
        }
        Ok(out)
    }
}
