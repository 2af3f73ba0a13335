use futures::FutureExt;
use proptest::prelude::*;

use super::*;

/// Resolves a built-in codec's future (they are ready at once).
fn now<T>(f: BoxFuture<'_, T>) -> T {
    f.now_or_never().expect("built-in codecs resolve at once")
}

fn specs() -> Vec<CodecSpec> {
    [
        "none", "gzip:1", "gzip", "gzip:9", "snappy", "lz4", "zstd:1", "zstd", "zstd:19", "zstd:-5",
    ]
    .iter()
    .map(|s| s.parse().expect("valid spec"))
    .collect()
}

/// Text that compresses the way cached values do: JSON records with repeated field names.
fn json_records(n: usize, seed: u64) -> Vec<u8> {
    let mut out = String::from("[");
    for i in 0..n {
        let id = seed.wrapping_mul(31).wrapping_add(i as u64);
        out.push_str(&format!(
            r#"{{"id":{id},"name":"user-{}","email":"user{id}@example.com","active":{},"score":{}}},"#,
            id % 977,
            id.is_multiple_of(3),
            id % 1000
        ));
    }
    out.push(']');
    out.into_bytes()
}

fn round_trip(spec: &CodecSpec, value: &[u8]) {
    let codecs = Codecs::builtin();
    let encoding = codecs.encoding(spec, 0).expect("known codec");
    let stored = now(encoding.encode(value).boxed()).expect("encodes");
    assert_eq!(stored.raw_len(), value.len());
    // What a peer or a storage backend would hand back: bytes and tag, re-interned.
    let again = codecs
        .stored(stored.framed(), stored.codec().name())
        .expect("known tag");
    for verify in [Verify::Decoded, Verify::All] {
        let back = now(again.decode(value.len(), verify).boxed()).expect("decodes");
        assert_eq!(&back[..], value, "{spec} {verify:?}");
    }
}

proptest! {
    #[test]
    fn every_codec_round_trips_random_bytes(value in proptest::collection::vec(any::<u8>(), 0..4096)) {
        for spec in specs() {
            round_trip(&spec, &value);
        }
    }

    #[test]
    fn every_codec_round_trips_records(n in 0usize..200, seed in any::<u64>()) {
        let value = json_records(n, seed);
        for spec in specs() {
            round_trip(&spec, &value);
        }
    }

    #[test]
    /// A flipped bit is either detected or harmless (gzip's MTIME and OS header bytes do not
    /// change the value): what decodes is the original value or nothing.
    fn a_flipped_bit_never_yields_a_wrong_value(n in 5usize..100, seed in any::<u64>(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let value = json_records(n, seed);
        let codecs = Codecs::builtin();
        for spec in specs() {
            let stored = now(codecs.encoding(&spec, 0).unwrap().encode(&value).boxed()).unwrap();
            let mut bytes = stored.framed().to_vec();
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            let bad = codecs.stored(Bytes::from(bytes), stored.codec().name()).unwrap();
            if let Ok(decoded) = now(bad.decode(value.len(), Verify::All).boxed()) {
                prop_assert_eq!(&decoded[..], &value[..], "{}: flipped bit {} of byte {}", spec, bit, i);
            }
        }
    }
}

#[test]
fn a_mis_tagged_value_is_detected() {
    let value = json_records(50, 7);
    let codecs = Codecs::builtin();
    for from in specs() {
        let stored = now(codecs.encoding(&from, 0).unwrap().encode(&value).boxed()).unwrap();
        for to in codecs.names() {
            if to == stored.codec().name() {
                continue;
            }
            let wrong = codecs.stored(stored.framed(), &to).unwrap();
            let decoded = now(wrong.decode(value.len(), Verify::All).boxed());
            assert!(
                matches!(decoded, Err(CodecError::Corrupt { .. })),
                "{from} tagged {to}: {decoded:?}"
            );
        }
    }
}

#[test]
fn small_and_incompressible_values_are_kept_raw() {
    let codecs = Codecs::builtin();
    let zstd = codecs.encoding(&"zstd".parse().unwrap(), 256).unwrap();
    let small = now(zstd.encode(&[b'a'; 255]).boxed()).unwrap();
    assert_eq!(small.codec().name(), "none");
    let mut x = 0x9E37_79B9_7F4A_7C15_u64;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            // xorshift64: bytes with no structure for a codec to find.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[3]
        })
        .collect();
    let stored = now(zstd.encode(&random).boxed()).unwrap();
    assert_eq!(stored.codec().name(), "none", "random bytes do not shrink");
    let big = now(zstd.encode(&[b'a'; 4096]).boxed()).unwrap();
    assert_eq!(big.codec().name(), "zstd");
    assert!(
        big.len() < 100,
        "4 KiB of 'a' is {} bytes stored",
        big.len()
    );
}

#[test]
fn decoders_refuse_more_than_max_len_without_allocating_it() {
    let codecs = Codecs::builtin();
    let value = vec![0u8; 1 << 20];
    for spec in specs() {
        let stored = now(codecs.encoding(&spec, 0).unwrap().encode(&value).boxed()).unwrap();
        let err = now(stored.decode(1000, Verify::All).boxed()).unwrap_err();
        assert!(matches!(err, CodecError::Corrupt { .. }), "{spec}: {err}");
        if !stored.codec().is_none() {
            // The codec alone refuses too, whatever the header says.
            let payload = &stored.framed()[HEADER_BYTES..];
            let err = now(stored.codec().compressor().decompress(payload, 1000)).unwrap_err();
            assert!(
                err.to_string().contains("more than the 1000 allowed"),
                "{spec}: {err}"
            );
        }
    }
}

#[test]
fn memory_hits_of_raw_values_skip_the_checksum_but_boundaries_do_not() {
    let codecs = Codecs::builtin();
    let stored = now(Encoding::default().encode(b"hello").boxed()).unwrap();
    let mut bytes = stored.framed().to_vec();
    bytes[4] ^= 1; // the checksum
    let bad = codecs.stored(Bytes::from(bytes), "none").unwrap();
    assert_eq!(
        &now(bad.decode(5, Verify::Decoded).boxed()).unwrap()[..],
        b"hello"
    );
    assert!(now(bad.decode(5, Verify::All).boxed()).is_err());
}

#[test]
fn specs_and_levels_are_checked() {
    let codecs = Codecs::builtin();
    assert_eq!("zstd:19".parse::<CodecSpec>().unwrap().level, Some(19));
    assert!("zstd:x".parse::<CodecSpec>().is_err());
    assert!(":3".parse::<CodecSpec>().is_err());
    let bad = |s: &str| {
        codecs
            .encoding(&s.parse().unwrap(), 0)
            .unwrap_err()
            .to_string()
    };
    assert!(bad("gzip:10").contains("0..=9"));
    assert!(bad("lz4:1").contains("no levels"));
    assert!(bad("zstd:99").contains("levels"));
    assert!(bad("brotli").contains("known codecs: gzip, lz4, none, snappy, zstd"));
}

#[test]
fn a_plugin_may_not_shadow_a_builtin() {
    let mut codecs = Codecs::builtin();
    assert!(codecs.add(Arc::new(builtin::Zstd)).is_err());
}

#[test]
fn zstd_contexts_are_reused_across_levels() {
    // The per-thread context is re-levelled, not rebuilt: output at each level matches a
    // freshly built context's.
    let value = json_records(100, 3);
    for level in [1, 19, 3, -1, 1] {
        let reused = now(builtin::Zstd.compress(&value, Some(level))).unwrap();
        let fresh = zstd::bulk::compress(&value, level).unwrap();
        assert_eq!(reused, fresh, "level {level}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_round_trip_off_the_async_path() {
    // 1 MiB is past INLINE_LIMIT: coded under block_in_place on this runtime.
    let value = json_records(8000, 5);
    assert!(value.len() >= builtin::INLINE_LIMIT);
    let codecs = Codecs::builtin();
    for spec in specs() {
        let stored = codecs
            .encoding(&spec, 0)
            .unwrap()
            .encode(&value)
            .await
            .unwrap();
        let back = stored.decode(value.len(), Verify::All).await.unwrap();
        assert_eq!(&back[..], &value[..], "{spec}");
    }
}

#[test]
fn inputs_that_announce_huge_outputs_are_refused() {
    let max = 1 << 20;
    // lz4: a 4-byte length prefix of 4 GiB - 1.
    let lz4 = [0xff, 0xff, 0xff, 0xff, 0x00];
    // snappy: a varint length of 2^32 - 1.
    let snappy = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00];
    // zstd: a frame header claiming 2^40 bytes of content (single segment, 8-byte size).
    let mut zstd = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
    zstd.extend_from_slice(&(1u64 << 40).to_le_bytes());
    zstd.extend_from_slice(&[0x01, 0x00, 0x00]);
    for (codec, input) in [
        ("lz4", &lz4[..]),
        ("snappy", &snappy[..]),
        ("zstd", &zstd[..]),
    ] {
        let c = Codecs::builtin().get(codec).unwrap();
        let err = now(c.compressor().decompress(input, max)).unwrap_err();
        assert!(matches!(err, CodecError::Corrupt { .. }), "{codec}: {err}");
    }
}

proptest! {
    /// The envelope decoder is fed what a peer or a storage backend could send: any bytes,
    /// tagged with any built-in codec, with any length limit. It answers a value or a typed
    /// error, never panics, and never returns more than the limit.
    #[test]
    fn arbitrary_stored_bytes_decode_to_a_value_or_an_error(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        codec in prop::sample::select(vec!["none", "gzip", "snappy", "lz4", "zstd"]),
        max_len in prop_oneof![0usize..64, 0usize..(1 << 20), Just(usize::MAX)],
    ) {
        let codecs = Codecs::builtin();
        let stored = match codecs.stored(Bytes::from(bytes), codec) {
            Ok(stored) => stored,
            // Shorter than the header: refused as it arrives.
            Err(e) => {
                prop_assert_eq!(e.code(), "corrupt_value", "{}", e);
                return Ok(());
            }
        };
        for verify in [Verify::Decoded, Verify::All] {
            match now(stored.decode(max_len, verify).boxed()) {
                Ok(value) => prop_assert!(value.len() <= max_len),
                Err(e) => prop_assert_eq!(e.code(), "corrupt_value", "{}", e),
            }
        }
    }

    /// A header claiming up to 4 GiB is refused by the limit before anything is allocated.
    #[test]
    fn a_header_claiming_more_than_the_limit_is_refused(
        len in any::<u32>(),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        codec in prop::sample::select(vec!["none", "gzip", "snappy", "lz4", "zstd"]),
    ) {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 8]);
        bytes.extend_from_slice(&payload);
        let codecs = Codecs::builtin();
        let stored = codecs.stored(Bytes::from(bytes), codec).unwrap();
        let limit = 1024;
        if let Ok(value) = now(stored.decode(limit, Verify::All).boxed()) {
            prop_assert!(value.len() <= limit);
        }
    }
}
