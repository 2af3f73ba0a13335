//! What a client puts in a URL: a percent-encoded path segment, and the sizes and durations of
//! query parameters and flags. Each must parse or fail with a message, never panic or overflow.
#![no_main]

use geecache_host::api::expiry_of_ttl;
use geecache_core::units::{parse_duration, parse_size};
use geecache_host::peer::decode_segment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = decode_segment(text, "key");
    let _ = parse_size(text);
    let _ = parse_duration(text);
    // What `PUT ...?ttl=` does with it, at the start and the far end of the clock.
    for now_ms in [0, 1_800_000_000_000, u64::MAX - 1] {
        let _ = expiry_of_ttl(text, now_ms);
    }
});
