//! A compressor plugin: a codec the host does not have built in.

use super::bindings::compressor::{CompressorPlugin, CompressorPluginPre};
use super::{PluginError, plugin_kind};

plugin_kind!(
    /// A wasm codec: each call runs in a fresh instance under the runtime's limits.
    WasmCompressor,
    CompressorPluginPre<super::host::HostState>,
    CompressorPlugin,
    geecache_plugin_compressor
);

impl WasmCompressor {
    /// Compresses `data` at `level` (the plugin's default when `None`).
    ///
    /// # Errors
    /// Any [`PluginError`] of the call.
    pub async fn compress(
        &self,
        data: Vec<u8>,
        level: Option<i32>,
    ) -> Result<Vec<u8>, PluginError> {
        self.invoke(move |s, p| {
            p.geecache_plugin_compressor()
                .call_compress(s, &data, level)
        })
        .await
    }

    /// Decompresses `data`, refusing output longer than `max_len`.
    ///
    /// # Errors
    /// Any [`PluginError`] of the call; also when the plugin returns more than `max_len` bytes.
    pub async fn decompress(&self, data: Vec<u8>, max_len: u64) -> Result<Vec<u8>, PluginError> {
        let out = self
            .invoke(move |s, p| {
                p.geecache_plugin_compressor()
                    .call_decompress(s, &data, max_len)
            })
            .await?;
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
