//! A compressor plugin: a codec the host does not have built in.

use super::bindings::compressor::{CompressorPlugin, CompressorPluginPre};
use super::{PluginError, plugin_kind};

plugin_kind!(
    /// A wasm codec: each call runs on a warm (or new) instance under the runtime's limits.
    WasmCompressor,
    CompressorPluginPre<super::host::HostState>,
    CompressorPlugin,
    geecache_plugin0_1_0_compressor
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
        self.invoke(|mut w| async move {
            let compressor = w.instance.geecache_plugin0_1_0_compressor();
            let answer = compressor.call_compress(&mut w.store, &data, level).await;
            (w, answer)
        })
        .await
    }

    /// Decompresses `data`, refusing output longer than `max_len`.
    ///
    /// # Errors
    /// Any [`PluginError`] of the call; also when the plugin returns more than `max_len` bytes.
    pub async fn decompress(&self, data: Vec<u8>, max_len: u64) -> Result<Vec<u8>, PluginError> {
        let out = self
            .invoke(|mut w| async move {
                let compressor = w.instance.geecache_plugin0_1_0_compressor();
                let answer = compressor
                    .call_decompress(&mut w.store, &data, max_len)
                    .await;
                (w, answer)
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

/// A compressor plugin is a codec like the built-in ones, named by what it reports. Its output
/// is not trusted: the group checks that it decodes back before storing it.
impl crate::compression::Compressor for WasmCompressor {
    fn name(&self) -> &str {
        &self.core.name
    }

    /// Asks the plugin itself: compresses a small sample at `level` once (at startup, when a
    /// group is built), so a level the plugin refuses stops the node with a clear message
    /// instead of failing every load later.
    fn check_level(&self, level: Option<i32>) -> Result<(), crate::compression::CodecError> {
        let Some(level) = level else {
            return Ok(());
        };
        const SAMPLE: &[u8] = b"geecache level check: geecache level check: geecache";
        let answer = super::on_own_thread(async {
            self.invoke(|mut w| async move {
                let compressor = w.instance.geecache_plugin0_1_0_compressor();
                let answer = compressor
                    .call_compress(&mut w.store, SAMPLE, Some(level))
                    .await;
                (w, answer)
            })
            .await
        });
        match answer {
            Ok(_) => Ok(()),
            Err(PluginError::Reported { message, .. }) => {
                Err(crate::compression::CodecError::BadLevel {
                    codec: self.core.name.clone(),
                    level,
                    range: format!("as the plugin says: {message}"),
                })
            }
            Err(other) => Err(other.into()),
        }
    }

    fn verify_output(&self) -> bool {
        true
    }

    fn compress<'a>(
        &'a self,
        data: &'a [u8],
        level: Option<i32>,
    ) -> futures::future::BoxFuture<'a, Result<Vec<u8>, crate::compression::CodecError>> {
        Box::pin(async move { Ok(WasmCompressor::compress(self, data.to_vec(), level).await?) })
    }

    fn decompress<'a>(
        &'a self,
        data: &'a [u8],
        max_len: usize,
    ) -> futures::future::BoxFuture<'a, Result<Vec<u8>, crate::compression::CodecError>> {
        let max_len = u64::try_from(max_len).unwrap_or(u64::MAX);
        Box::pin(async move { Ok(WasmCompressor::decompress(self, data.to_vec(), max_len).await?) })
    }
}
