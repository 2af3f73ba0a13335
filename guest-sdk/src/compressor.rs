//! Compressors: codecs the host does not have built in.

use crate::Error;

/// A compressor plugin: a codec the host can apply to values at rest, by [`NAME`](Self::NAME).
///
/// Implement it on a unit struct and export it with
/// [`export_compressor!`](crate::export_compressor). See the [crate documentation](crate) for a
/// complete plugin.
///
/// Stored values travel between nodes as they are, so `decompress` must accept whatever any
/// version of `compress` with the same `NAME` produced.
pub trait Compressor {
    /// The codec's name, used in group configs and stored with every value it compressed.
    /// Lower-case letters, digits, `_` and `-`, e.g. `brotli`.
    const NAME: &'static str;

    /// The plugin's version, free-form (semver recommended). Empty, the default, means the
    /// `version` of the plugin crate's `Cargo.toml`.
    const VERSION: &'static str = "";

    /// Compresses `data`. `level` is the operator's level setting, if any; pick a default
    /// otherwise.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a level this codec does not support.
    fn compress(data: &[u8], level: Option<i32>) -> Result<Vec<u8>, Error>;

    /// Decompresses `data`, producing at most `max_len` bytes.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when `data` is not valid for this codec, or when the output
    /// would exceed `max_len` bytes. Check that bound while decoding, never after: a small
    /// input may expand enormously.
    fn decompress(data: &[u8], max_len: u64) -> Result<Vec<u8>, Error>;
}

crate::world_glue!(compressor);

/// What [`export_compressor!`](crate::export_compressor) expands to call; not part of the API.
#[doc(hidden)]
pub mod export {
    use super::Compressor;
    use crate::wit::compressor::geecache::plugin0_1_0::types;

    pub fn info<C: Compressor>(crate_version: &str) -> types::PluginInfo {
        types::PluginInfo::of(C::NAME, C::VERSION, crate_version)
    }

    pub fn compress<C: Compressor>(
        data: &[u8],
        level: Option<i32>,
    ) -> Result<Vec<u8>, types::Error> {
        C::compress(data, level).map_err(Into::into)
    }

    pub fn decompress<C: Compressor>(data: &[u8], max_len: u64) -> Result<Vec<u8>, types::Error> {
        C::decompress(data, max_len).map_err(Into::into)
    }
}

/// Exports a [`Compressor`] implementation as this component's `compressor` interface.
///
/// Call it once, at the top level of the plugin crate (a `cdylib` that enables the SDK's
/// `compressor` feature), with the implementing type:
///
/// ```ignore
/// geecache_guest_sdk::export_compressor!(Rle);
/// ```
#[macro_export]
macro_rules! export_compressor {
    ($compressor:ty) => {
        #[allow(unsafe_code)]
        const _: () = {
            struct GeecacheCompressorAdapter;

            impl $crate::wit::compressor::exports::geecache::plugin0_1_0::compressor::Guest
                for GeecacheCompressorAdapter
            {
                fn info() -> $crate::wit::compressor::geecache::plugin0_1_0::types::PluginInfo {
                    $crate::__compressor_export::info::<$compressor>(env!("CARGO_PKG_VERSION"))
                }

                fn compress(
                    data: ::std::vec::Vec<u8>,
                    level: ::std::option::Option<i32>,
                ) -> ::std::result::Result<
                    ::std::vec::Vec<u8>,
                    $crate::wit::compressor::geecache::plugin0_1_0::types::Error,
                > {
                    $crate::__compressor_export::compress::<$compressor>(&data, level)
                }

                fn decompress(
                    data: ::std::vec::Vec<u8>,
                    max_len: u64,
                ) -> ::std::result::Result<
                    ::std::vec::Vec<u8>,
                    $crate::wit::compressor::geecache::plugin0_1_0::types::Error,
                > {
                    $crate::__compressor_export::decompress::<$compressor>(&data, max_len)
                }
            }

            $crate::wit::compressor::export_compressor_world!(
                GeecacheCompressorAdapter with_types_in $crate::wit::compressor
            );
        };
    };
}
