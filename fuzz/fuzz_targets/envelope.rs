//! The stored-value envelope, as a peer or a storage backend hands it over: any bytes under any
//! built-in codec tag must decode to a value or a typed error, never panic or over-allocate.
#![no_main]

use bytes::Bytes;
use geecache_core::compression::{Codecs, Verify};
use libfuzzer_sys::fuzz_target;

/// The largest value a decode may produce here, as `--max-value-bytes` bounds it in a node.
const MAX_LEN: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let codecs = Codecs::builtin();
    let names = codecs.names();
    let name = &names[usize::from(pick) % names.len()];
    let Ok(stored) = codecs.stored(Bytes::copy_from_slice(bytes), name) else {
        return;
    };
    for verify in [Verify::All, Verify::Decoded] {
        if let Ok(value) = futures::executor::block_on(stored.decode(MAX_LEN, verify)) {
            assert!(value.len() <= MAX_LEN);
        }
    }
});
