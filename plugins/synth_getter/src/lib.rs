//! `synth_getter`: answers every key with a deterministic value of `value_bytes` bytes, at the
//! least cost a getter can have, so that `geecache-perf http` measures the host's miss path and
//! not a database.
//!
//! The value is `value_bytes` (config key, default [`DEFAULT_VALUE_BYTES`]) printable ASCII
//! characters drawn from a generator seeded by a hash of the key: the same key always gives the
//! same bytes, on any node, and different keys give different values that do not compress much
//! (a repeated key would, and would flatter a codec).
//!
//! ```text
//! geecache-host --plugin plugins/synth_getter.wasm --plugin-config synth_getter.value_bytes=1024
//! ```

use std::sync::OnceLock;

use geecache_guest_sdk::{Error, Getter, Lookup, config, export_getter};

/// The value size when the operator did not set config key `value_bytes`.
pub const DEFAULT_VALUE_BYTES: usize = 100;

/// The 64 characters values are made of.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

struct Synth;

impl Getter for Synth {
    const NAME: &'static str = "synth_getter";

    fn get(_group: &str, key: &str) -> Result<Lookup, Error> {
        Ok(Lookup::found(value(key.as_bytes(), value_bytes()?)))
    }
}

/// The configured value size, read from the host once per instance (it cannot change while the
/// instance lives).
fn value_bytes() -> Result<usize, Error> {
    static VALUE_BYTES: OnceLock<Result<usize, String>> = OnceLock::new();
    VALUE_BYTES
        .get_or_init(|| match config::get("value_bytes") {
            None => Ok(DEFAULT_VALUE_BYTES),
            Some(text) => text.trim().parse().map_err(|_| {
                format!("synth_getter: config value_bytes = {text:?} is not a whole number")
            }),
        })
        .clone()
        .map_err(Error::Other)
}

/// `len` characters of [`ALPHABET`] from a splitmix64 stream seeded with the FNV-1a hash of
/// `key`: eight characters per step of the generator.
fn value(key: &[u8], len: usize) -> Vec<u8> {
    let mut state = key.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let take = (len - out.len()).min(8);
        out.extend(
            z.to_le_bytes()[..take]
                .iter()
                .map(|b| ALPHABET[usize::from(b & 63)]),
        );
    }
    out
}

export_getter!(Synth);

#[cfg(test)]
mod tests {
    use super::value;

    #[test]
    fn values_have_the_length_asked_and_depend_only_on_the_key() {
        for len in [0, 1, 7, 8, 9, 100, 1024] {
            assert_eq!(value(b"k1", len).len(), len);
        }
        assert_eq!(value(b"k1", 100), value(b"k1", 100));
        assert_ne!(value(b"k1", 100), value(b"k2", 100));
        // A longer value starts with the shorter one: the size is only where the stream stops.
        assert_eq!(value(b"k1", 1024)[..100], value(b"k1", 100)[..]);
    }
}
