//! `brotli`: Brotli (RFC 7932) as a geecache compressor plugin, via the pure-Rust `brotli` crate.
//!
//! Levels are Brotli's qualities, 0 (fastest) to 11 (smallest); the default is
//! [`DEFAULT_LEVEL`]. Decompression stops as soon as the output would exceed the host's
//! `max_len`, so a small hostile input cannot make the plugin allocate more than about that
//! much (plus Brotli's window, at most 16 MiB).

use std::io::Read;

use brotli::enc::BrotliEncoderParams;
use brotli_decompressor::BrotliDecoderParameter;
use geecache_guest_sdk::{Compressor, Error, export_compressor};

/// The level used when the operator set none: a good ratio at a few tens of MB/s.
const DEFAULT_LEVEL: i32 = 5;
/// The highest level Brotli has.
const MAX_LEVEL: i32 = 11;
/// Largest window (log2 bytes) for compression: 4 MiB, Brotli's own default.
const MAX_WINDOW_BITS: i32 = 22;
/// Smallest window Brotli allows.
const MIN_WINDOW_BITS: i32 = 10;
/// Internal buffer size of the streaming decoder.
const BUFFER_LEN: usize = 16 * 1024;

struct Brotli;

impl Compressor for Brotli {
    const NAME: &'static str = "brotli";

    fn compress(data: &[u8], level: Option<i32>) -> Result<Vec<u8>, Error> {
        let quality = level.unwrap_or(DEFAULT_LEVEL);
        if !(0..=MAX_LEVEL).contains(&quality) {
            return Err(Error::InvalidInput(format!(
                "brotli level {quality} is not supported (0 to {MAX_LEVEL})"
            )));
        }
        let params = BrotliEncoderParams {
            quality,
            lgwin: window_bits(data.len()),
            size_hint: data.len(),
            ..BrotliEncoderParams::default()
        };
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        brotli::BrotliCompress(&mut &data[..], &mut out, &params)
            .map_err(|err| Error::Other(format!("brotli compression failed: {err}")))?;
        Ok(out)
    }

    fn decompress(data: &[u8], max_len: u64) -> Result<Vec<u8>, Error> {
        let mut decoder = brotli::Decompressor::new(data, BUFFER_LEN);
        // Standard (RFC 7932) windows only, at most 16 MiB: the large-window extension, which
        // this decoder accepts by default, would let a stream ask for a 1 GiB window.
        decoder.set_parameter(BrotliDecoderParameter::BROTLI_DECODER_PARAM_LARGE_WINDOW, 0);
        // Read one byte past the limit: getting it proves the output is too long, without
        // decoding (or allocating) any further.
        let mut out = Vec::new();
        decoder
            .take(max_len.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|err| Error::InvalidInput(format!("not a valid brotli stream: {err}")))?;
        if out.len() as u64 > max_len {
            return Err(Error::InvalidInput(format!(
                "brotli output exceeds the limit of {max_len} bytes"
            )));
        }
        Ok(out)
    }
}

/// The smallest window that holds the whole value: a cache value is usually far smaller than
/// 4 MiB, and the encoder's tables (allocated in a fresh instance on every call) scale with the
/// window, so this is most of the per-call cost for small values. The ratio is unchanged: no
/// match can reach further back than the start of the value anyway.
fn window_bits(len: usize) -> i32 {
    let bits = usize::BITS - len.max(1).leading_zeros();
    (bits as i32).clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS)
}

export_compressor!(Brotli);

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..5_000u32)
            .flat_map(|i| format!("user{:06} scored {}\n", i, i * 7919 % 1000).into_bytes())
            .collect()
    }

    #[test]
    fn round_trips_at_every_level() {
        let data = sample();
        for level in [None, Some(0), Some(1), Some(5), Some(9), Some(11)] {
            let packed = Brotli::compress(&data, level).expect("compresses");
            assert!(
                packed.len() < data.len() / 4,
                "level {level:?}: {}",
                packed.len()
            );
            let unpacked = Brotli::decompress(&packed, data.len() as u64).expect("decompresses");
            assert_eq!(unpacked, data, "level {level:?}");
        }
        let empty = Brotli::compress(b"", None).expect("compresses");
        assert_eq!(Brotli::decompress(&empty, 0).expect("decompresses"), b"");
    }

    #[test]
    fn rejects_bad_levels() {
        for level in [-1, 12, i32::MAX, i32::MIN] {
            assert!(matches!(
                Brotli::compress(b"x", Some(level)),
                Err(Error::InvalidInput(_))
            ));
        }
    }

    #[test]
    fn refuses_output_over_max_len() {
        let bomb = Brotli::compress(&vec![0u8; 16 << 20], Some(5)).expect("compresses");
        assert!(bomb.len() < 16 << 10);
        let err = Brotli::decompress(&bomb, 1 << 20).expect_err("over the limit");
        assert!(matches!(err, Error::InvalidInput(_)), "{err}");
        let data = sample();
        let packed = Brotli::compress(&data, None).expect("compresses");
        assert!(Brotli::decompress(&packed, data.len() as u64 - 1).is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Brotli::decompress(b"definitely not brotli", 1 << 20),
            Err(Error::InvalidInput(_))
        ));
    }
}
