//! Compression end to end, with the real plugins: every codec (the built-ins and the brotli
//! plugin) round-trips random and realistic values byte for byte through the cache, the
//! storage tier (fs_storage, with its codec tag) and a real HTTP peer transfer; a compressor
//! plugin that traps or returns garbage fails that value's operation and nothing corrupt is
//! stored or served; a zstd group holds more entries than a `none` group in the same budget.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use geecache_host::cluster::Cluster;
use geecache_host::compression::Codecs;
use geecache_host::discovery::{Member, Membership};
use geecache_host::error::{Error, Result};
use geecache_host::group::{Getter, Group, GroupOptions, Groups, Loaded, PeerPicker};
use geecache_host::peer;
use geecache_host::plugin::{
    DirGrant, LoadedPlugin, PluginGrants, Runtime, RuntimeOptions, WasmStorage,
};
use geecache_host::telemetry::Metrics;
use geecache_tests::{TestNode, compile_cache_dir, corpus, plugins};
use proptest::prelude::*;

/// The codecs every round trip goes through.
const SPECS: &[&str] = &[
    "none", "gzip:1", "snappy", "lz4", "zstd:3", "zstd:19", "brotli:5",
];

/// A getter over values the test puts in first; a key it was not given is an error, so a test
/// notices a load it did not expect.
#[derive(Debug, Default)]
struct Values(Mutex<HashMap<String, Bytes>>);

impl Getter for Values {
    fn name(&self) -> &str {
        "values"
    }
    fn get<'a>(&'a self, _group: &'a str, key: &'a str) -> BoxFuture<'a, Result<Loaded>> {
        Box::pin(async move {
            match self.0.lock().unwrap().get(key) {
                Some(v) => Ok(Loaded::Found {
                    value: v.clone(),
                    expires_at_ms: None,
                    stale_ms: None,
                }),
                None => Err(Error::Internal(format!("unexpected load of {key:?}"))),
            }
        })
    }
}

/// Two nodes in this process: an owner serving the peer protocol over real HTTP on 127.0.0.1,
/// and a requester whose ring sends keys to it.
struct Setup {
    tokio: tokio::runtime::Runtime,
    _plugins: Runtime,
    codecs: Codecs,
    storage: Arc<WasmStorage>,
    values: Arc<Values>,
    owner: Groups,
    requester: Groups,
    ring: Arc<Cluster>,
    _dir: tempfile::TempDir,
}

fn options(spec: &str) -> GroupOptions {
    GroupOptions {
        compression: spec.parse().unwrap(),
        compress_min_bytes: 0,
        ..GroupOptions::default()
    }
}

fn group_name(spec: &str) -> String {
    format!("g-{}", spec.replace(':', "-"))
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let rt = Runtime::new(RuntimeOptions {
            compile_cache_dir: Some(compile_cache_dir()),
            ..RuntimeOptions::default()
        })
        .unwrap();
        let mut codecs = Codecs::builtin();
        match rt
            .load(
                Path::new(plugins::BROTLI_COMPRESSOR),
                PluginGrants::default(),
            )
            .unwrap()
        {
            LoadedPlugin::Compressor(c) => codecs.add(c).unwrap(),
            other => panic!("brotli is a {}", other.kind()),
        }
        let grants = PluginGrants {
            dirs: vec![DirGrant {
                host: dir.path().to_path_buf(),
                guest: "/data".into(),
                writable: true,
            }],
            ..PluginGrants::default()
        };
        let storage = match rt
            .load(Path::new(plugins::FS_STORAGE), grants.clone())
            .unwrap()
        {
            LoadedPlugin::Storage(s) => s,
            other => panic!("fs_storage is a {}", other.kind()),
        };
        let values = Arc::new(Values::default());

        let (owner, requester, ring) = tokio.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let owner_addr = listener.local_addr().unwrap().to_string();
            let mut owner = Groups::default();
            for spec in SPECS {
                let g = Group::builder(group_name(spec), values.clone())
                    .options(options(spec))
                    .codecs(codecs.clone())
                    .storage(storage.clone())
                    .build()
                    .unwrap();
                owner.insert(g).unwrap();
            }
            let router = peer::router(Arc::new(owner.clone()), None);
            tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

            // The requester's ring: itself (never served; its keys are not used) and the owner.
            let me = "127.0.0.1:9".to_owned();
            let ring = Cluster::new(
                &me,
                &me,
                None,
                Duration::from_secs(5),
                Metrics::new(&me, &[]),
            );
            ring.join(Membership::fixed(
                Member {
                    id: me.clone(),
                    addr: me.clone(),
                },
                vec![Member {
                    id: owner_addr.clone(),
                    addr: owner_addr,
                }],
            ));
            let mut requester = Groups::default();
            for spec in SPECS {
                // The requester stores raw itself: what it keeps from the owner is the owner's
                // encoding, as received.
                let g = Group::builder(group_name(spec), Arc::new(Values::default()))
                    .options(options("none"))
                    .codecs(codecs.clone())
                    .peers(ring.clone())
                    .build()
                    .unwrap();
                requester.insert(g).unwrap();
            }
            (owner, requester, ring)
        });
        Setup {
            tokio,
            _plugins: rt,
            codecs,
            storage,
            values,
            owner,
            requester,
            ring,
            _dir: dir,
        }
    })
}

/// The shared setup, for one test at a time: the counter checks compare before and after.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A fresh key the requester's ring assigns to the owner.
fn remote_key(s: &Setup) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = format!("key-{n}");
        if s.ring.pick(&key).is_some() {
            return key;
        }
    }
}

/// One value through one codec: owner cache → HTTP → requester; storage tier; fresh node.
/// Returns the codec the value was stored with (`none` when it did not shrink).
async fn round_trip(s: &Setup, spec: &str, value: &Bytes) -> String {
    let name = group_name(spec);
    let key = remote_key(s);
    s.values
        .0
        .lock()
        .unwrap()
        .insert(key.clone(), value.clone());
    let requester = s.requester.get(&name).unwrap();
    let owner = s.owner.get(&name).unwrap();
    let before = requester.snapshot();

    // Over the wire: the owner loads, encodes and answers with its stored bytes.
    assert_eq!(
        &requester.get(&key).await.unwrap(),
        value,
        "{spec}: via peer"
    );
    // Fetched again, which keeps a hot copy (a key fetched once is not kept); then from the
    // requester's hot copy, and from the owner's cache.
    for _ in 0..2 {
        assert_eq!(
            &requester.get(&key).await.unwrap(),
            value,
            "{spec}: hot copy"
        );
    }
    assert_eq!(
        &owner.get(&key).await.unwrap(),
        value,
        "{spec}: owner cache"
    );
    let after = requester.snapshot();
    assert_eq!(
        after.counters.peer_loads,
        before.counters.peer_loads + 2,
        "{spec}"
    );
    assert_eq!(
        after.counters.hot_hits,
        before.counters.hot_hits + 1,
        "{spec}"
    );

    // The storage tier holds the owner's stored bytes with their codec tag.
    let mut stored = None;
    for _ in 0..400 {
        stored = s.storage.get(&name, &key).await.unwrap();
        if stored.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stored = stored.expect("the owner writes loaded values through to storage");
    let codec = spec.split(':').next().unwrap();
    assert!(
        stored.codec == codec || stored.codec == "none",
        "{spec}: stored as {}",
        stored.codec
    );
    // A fresh owner (empty memory, a getter that knows nothing) serves it from storage.
    let fresh = Group::builder(&name, Arc::new(Values::default()))
        .options(options(spec))
        .codecs(s.codecs.clone())
        .storage(s.storage.clone())
        .build()
        .unwrap();
    assert_eq!(
        &fresh.get(&key).await.unwrap(),
        value,
        "{spec}: from storage"
    );
    assert_eq!(fresh.snapshot().counters.storage_hits, 1, "{spec}");
    stored.codec
}

fn realistic() -> impl Strategy<Value = Vec<u8>> {
    (0..corpus::NAMES.len(), any::<u64>(), 0usize..12_000)
        .prop_map(|(i, seed, len)| corpus::generate(corpus::NAMES[i], seed, len))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn every_codec_round_trips_random_bytes(value in proptest::collection::vec(any::<u8>(), 0..6000)) {
        round_trip_every_codec(value);
    }

    #[test]
    fn every_codec_round_trips_realistic_values(value in realistic()) {
        round_trip_every_codec(value);
    }
}

/// [`round_trip`] of `value` through every codec of [`SPECS`].
fn round_trip_every_codec(value: Vec<u8>) {
    let _one_at_a_time = serial();
    let s = setup();
    let value = Bytes::from(value);
    for spec in SPECS {
        s.tokio.block_on(round_trip(s, spec, &value));
    }
}

#[test]
fn compressible_values_travel_and_rest_compressed() {
    let _one_at_a_time = serial();
    let s = setup();
    let value = Bytes::from(corpus::generate("json", 7, 8192));
    for spec in SPECS.iter().filter(|s| **s != "none") {
        let owner = s.owner.get(&group_name(spec)).unwrap();
        let before = owner.snapshot().counters;
        let codec = s.tokio.block_on(round_trip(s, spec, &value));
        assert_eq!(
            codec,
            spec.split(':').next().unwrap(),
            "{spec}: stored compressed"
        );
        let after = owner.snapshot().counters;
        assert_eq!(
            after.values_compressed,
            before.values_compressed + 1,
            "{spec}"
        );
        let (raw, stored) = (
            after.encoded_raw_bytes - before.encoded_raw_bytes,
            after.encoded_stored_bytes - before.encoded_stored_bytes,
        );
        assert_eq!(raw, value.len() as u64, "{spec}");
        assert!(stored * 2 < raw, "{spec}: {stored} of {raw} bytes");
    }
}

#[tokio::test]
async fn a_compressor_plugin_that_traps_or_returns_garbage_fails_only_that_value() {
    let node = TestNode::start(&[
        "--plugin",
        plugins::DB_GETTER,
        "--plugin-config",
        "db_getter.database={db}",
        "--plugin",
        plugins::CHAOS_COMPRESSOR,
        "--compression",
        "chaos_compressor",
        "--compress-min-bytes",
        "0",
        "--plugin-timeout",
        "200ms",
    ])
    .await;
    let url = |key: &str| format!("{}/api/v1/groups/scores/keys/{key}", node.base);
    for (value, status, code) in [
        ("panic now", 503, "plugin_trapped"),
        ("loop forever", 504, "plugin_timeout"),
        ("garbage in, garbage out", 503, "plugin_bad_output"),
    ] {
        let resp = node.client.put(url("k")).body(value).send().await.unwrap();
        assert_eq!(resp.status(), status, "{value}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{value}: {body}");
        // Nothing was stored: the key still reads from the getter (db_getter has no "k").
        let (status, _) = node.get("/api/v1/groups/scores/keys/k").await;
        assert_eq!(status, 404, "{value}");
    }
    // A value the plugin handles, and a load through the getter, still work.
    let resp = node.client.put(url("k")).body("fine").send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(
        node.get("/api/v1/groups/scores/keys/k").await,
        (200, b"fine".to_vec())
    );
    assert_eq!(node.get("/api?key=Tom").await, (200, b"630".to_vec()));
    let stats = node.group_stats("scores").await;
    assert_eq!(stats["compression"], "chaos_compressor");
    assert_eq!(stats["corrupt_values"], 0);
    node.stop().await;
}

#[tokio::test]
async fn a_zstd_node_holds_more_entries_than_a_raw_one_in_the_same_budget() {
    let value = corpus::generate("json", 3, 4096);
    let mut held = Vec::new();
    for codec in ["none", "zstd"] {
        let node =
            TestNode::with_db_getter(&["--cache-bytes", "256KiB", "--compression", codec]).await;
        for i in 0..300 {
            let url = format!("{}/api/v1/groups/scores/keys/doc-{i}", node.base);
            let resp = node
                .client
                .put(url)
                .body(value.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 204);
        }
        let stats = node.group_stats("scores").await;
        assert!(
            stats["cache_bytes"].as_u64().unwrap() <= 256 << 10,
            "{stats}"
        );
        held.push(stats["cache_items"].as_u64().unwrap());
        // Whatever was kept reads back intact.
        let (status, body) = node.get("/api/v1/groups/scores/keys/doc-299").await;
        if status == 200 {
            assert_eq!(body, value);
        }
        node.stop().await;
    }
    assert!(
        held[1] > 2 * held[0],
        "zstd held {} entries, none {}",
        held[1],
        held[0]
    );
}

#[tokio::test]
async fn clients_that_accept_the_stored_coding_get_the_stored_payload() {
    let value = corpus::generate("json", 11, 4096);
    for codec in ["gzip", "zstd"] {
        let node = TestNode::with_db_getter(&["--compression", codec]).await;
        let url = format!("{}/api/v1/groups/scores/keys/doc", node.base);
        let resp = node
            .client
            .put(&url)
            .body(value.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        let get = |accept: &'static str| {
            let req = node.client.get(&url);
            let req = if accept.is_empty() {
                req
            } else {
                req.header("accept-encoding", accept)
            };
            async move {
                let resp = req.send().await.unwrap();
                assert_eq!(resp.status(), 200);
                let coding = resp
                    .headers()
                    .get("content-encoding")
                    .map(|v| v.to_str().unwrap().to_owned());
                assert_eq!(resp.headers()["vary"], "accept-encoding");
                (coding, resp.bytes().await.unwrap())
            }
        };
        // Accepted: the stored payload, a standard gzip member / zstd frame.
        let (coding, body) = get(if codec == "gzip" {
            "gzip, br"
        } else {
            "br, zstd"
        })
        .await;
        assert_eq!(coding.as_deref(), Some(codec));
        assert!(
            body.len() < value.len() / 2,
            "{codec}: {} bytes",
            body.len()
        );
        let codecs = Codecs::builtin();
        let plain = codecs
            .get(codec)
            .unwrap()
            .compressor()
            .decompress(&body, value.len())
            .await
            .unwrap();
        assert_eq!(plain, value, "{codec}");
        // Not accepted (absent, refused, or another coding): the plain value.
        for accept in ["", "identity", "gzip;q=0, zstd;q=0", "br"] {
            let (coding, body) = get(accept).await;
            assert_eq!(
                (coding, &body[..]),
                (None, &value[..]),
                "{codec} {accept:?}"
            );
        }
        let stats = node.group_stats("scores").await;
        assert_eq!(stats["encoded_replies"], 1, "{stats}");
        assert_eq!(stats["hits"], 5, "{stats}");
        node.stop().await;
    }
}

#[test]
fn a_plugin_codec_level_is_checked_by_the_plugin_at_startup() {
    let s = setup();
    let err = s
        .codecs
        .encoding(&"brotli:99".parse().unwrap(), 0)
        .unwrap_err();
    assert_eq!(err.code(), "bad_codec_level", "{err}");
    assert!(err.to_string().contains("0 to 11"), "{err}");
    assert!(s.codecs.encoding(&"brotli:11".parse().unwrap(), 0).is_ok());
    assert!(s.codecs.encoding(&"brotli".parse().unwrap(), 0).is_ok());
}
