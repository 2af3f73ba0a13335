//! Baselines of the get path: a cache hit through `Group::get` (a small raw value, and a 16 KiB
//! value stored raw, lz4 or zstd), a ring lookup, and one wasm getter call on a warm instance and
//! on a fresh one (with and without a SQL query; the SQL getter in Rust, Python and JavaScript),
//! next to a native getter and a bare blocking-pool round trip (the thread hop every wasm call
//! used to pay) for the ratios.
//!
//! `cargo bench -p geecache-tests --bench get_path`

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures::future::BoxFuture;
use geecache_host::error::Result;
use geecache_host::group::{Getter, Group, GroupOptions, Loaded};
use geecache_host::plugin::{
    InstanceMode, InstancePolicy, LoadedPlugin, PluginGrants, Runtime, RuntimeOptions,
};
use geecache_host::ring::Ring;
use geecache_tests::{compile_cache_dir, corpus, demo_db, plugins};

/// A getter that answers from memory: the floor a wasm getter is compared with.
#[derive(Debug)]
struct Native;

impl Getter for Native {
    fn name(&self) -> &str {
        "native"
    }
    fn get<'a>(&'a self, _group: &'a str, key: &'a str) -> BoxFuture<'a, Result<Loaded>> {
        Box::pin(async move {
            Ok(Loaded::Found {
                value: Bytes::from(format!("native:{key}")),
                expires_at_ms: None,
                stale_ms: None,
            })
        })
    }
}

fn load_getter(rt: &Runtime, path: &str, grants: PluginGrants) -> Arc<dyn Getter> {
    match rt.load(Path::new(path), grants).unwrap() {
        LoadedPlugin::Getter(g) => g,
        other => panic!("{path} is a {}", other.kind()),
    }
}

fn benches(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = demo_db(dir.path());
    let rt = Runtime::new(RuntimeOptions {
        compile_cache_dir: Some(compile_cache_dir()),
        ..RuntimeOptions::default()
    })
    .unwrap();
    let mut db_grants = PluginGrants::default();
    db_grants
        .config
        .insert("database".into(), db.display().to_string());
    let db_getter = load_getter(&rt, plugins::DB_GETTER, db_grants.clone());
    let chaos = load_getter(&rt, plugins::CHAOS_GETTER, PluginGrants::default());
    let fresh_rt = Runtime::new(RuntimeOptions {
        compile_cache_dir: Some(compile_cache_dir()),
        instances: InstancePolicy {
            mode: InstanceMode::Fresh,
            ..InstancePolicy::defaults(64 << 20)
        },
        ..RuntimeOptions::default()
    })
    .unwrap();
    let db_getter_fresh = load_getter(&fresh_rt, plugins::DB_GETTER, db_grants.clone());
    // db_getter's twins in Python and JavaScript, over the same database.
    // (language, on a warm instance, on a fresh one)
    type Twins = (&'static str, Arc<dyn Getter>, Arc<dyn Getter>);
    let lang: Vec<Twins> = [("py", plugins::py_getter()), ("js", plugins::js_getter())]
        .into_iter()
        .map(|(lang, path)| {
            (
                lang,
                load_getter(&rt, path, db_grants.clone()),
                load_getter(&fresh_rt, path, db_grants.clone()),
            )
        })
        .collect();
    let chaos_fresh = load_getter(&fresh_rt, plugins::CHAOS_GETTER, PluginGrants::default());

    let ring = Ring::new(
        geecache_host::ring::DEFAULT_REPLICAS,
        ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"],
    );
    let keys: Vec<String> = (0..1024).map(|i| format!("key-{i}")).collect();
    let mut i = 0usize;
    c.bench_function("ring/owner_3_nodes", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            ring.owner(&keys[i]).unwrap().len()
        })
    });

    let group = Group::builder("bench", Arc::new(Native)).build().unwrap();
    tokio.block_on(group.get("hot")).unwrap();
    c.bench_function("group_get/cache_hit", |b| {
        b.to_async(&tokio)
            .iter(|| async { group.get("hot").await.unwrap() })
    });
    // A 16 KiB JSON value hit in a raw group and in zstd/lz4 groups: what decoding costs a hit.
    let doc = Bytes::from(corpus::generate("json", 1, 16 * 1024));
    for codec in ["none", "lz4", "zstd"] {
        let group = Group::builder("bench", Arc::new(Native))
            .options(GroupOptions {
                compression: codec.parse().unwrap(),
                ..GroupOptions::default()
            })
            .build()
            .unwrap();
        tokio.block_on(group.set("doc", doc.clone(), None)).unwrap();
        c.bench_function(&format!("group_get/cache_hit_16KiB_{codec}"), |b| {
            b.to_async(&tokio)
                .iter(|| async { group.get("doc").await.unwrap() })
        });
    }
    c.bench_function("getter_call/native", |b| {
        b.to_async(&tokio)
            .iter(|| async { Native.get("g", "Tom").await.unwrap() })
    });
    c.bench_function("getter_call/blocking_pool_round_trip", |b| {
        b.to_async(&tokio)
            .iter(|| async { tokio::task::spawn_blocking(|| 1u8).await.unwrap() })
    });
    c.bench_function("getter_call/wasm_warm_instance", |b| {
        b.to_async(&tokio)
            .iter(|| async { chaos.get("g", "Tom").await.unwrap() })
    });
    c.bench_function("getter_call/wasm_fresh_instance", |b| {
        b.to_async(&tokio)
            .iter(|| async { chaos_fresh.get("g", "Tom").await.unwrap() })
    });
    c.bench_function("getter_call/wasm_db_getter_sqlite_warm", |b| {
        b.to_async(&tokio)
            .iter(|| async { db_getter.get("scores", "Tom").await.unwrap() })
    });
    c.bench_function("getter_call/wasm_db_getter_sqlite_fresh", |b| {
        b.to_async(&tokio)
            .iter(|| async { db_getter_fresh.get("scores", "Tom").await.unwrap() })
    });
    for (lang, warm, fresh) in &lang {
        c.bench_function(
            &format!("getter_call/wasm_{lang}_getter_sqlite_warm"),
            |b| {
                b.to_async(&tokio)
                    .iter(|| async { warm.get("scores", "Tom").await.unwrap() })
            },
        );
        c.bench_function(
            &format!("getter_call/wasm_{lang}_getter_sqlite_fresh"),
            |b| {
                b.to_async(&tokio)
                    .iter(|| async { fresh.get("scores", "Tom").await.unwrap() })
            },
        );
    }
}

criterion_group! {
    name = get_path;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = benches
}
criterion_main!(get_path);
