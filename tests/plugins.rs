//! The plugin runtime against the real plugin components: kind detection, names, grants.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use bytes::Bytes;
use geecache_host::group::{Getter, Loaded, PeerEntry};
use geecache_host::plugin::{
    LoadedPlugin, PluginError, PluginGrants, PluginKind, Runtime, RuntimeOptions,
};
use geecache_tests::{compile_cache_dir, demo_db, plugins};

fn runtime() -> Runtime {
    Runtime::new(RuntimeOptions {
        compile_cache_dir: Some(compile_cache_dir()),
        ..RuntimeOptions::default()
    })
    .unwrap()
}

fn load(rt: &Runtime, path: &str, grants: PluginGrants) -> Result<LoadedPlugin, PluginError> {
    rt.load(Path::new(path), &|_| grants.clone())
}

#[test]
fn every_plugin_is_recognised_by_kind_and_named_by_what_it_reports() {
    let dir = tempfile::tempdir().unwrap();
    let db = demo_db(dir.path());
    let rt = runtime();
    let mut db_grants = PluginGrants::default();
    db_grants
        .config
        .insert("database".into(), db.display().to_string());
    let cases = [
        (
            plugins::DB_GETTER,
            db_grants,
            PluginKind::Getter,
            "db_getter",
        ),
        (
            plugins::CHAOS_GETTER,
            PluginGrants::default(),
            PluginKind::Getter,
            "chaos_getter",
        ),
        (
            plugins::FS_STORAGE,
            PluginGrants::default(),
            PluginKind::Storage,
            "fs_storage",
        ),
        (
            plugins::BROTLI_COMPRESSOR,
            PluginGrants::default(),
            PluginKind::Compressor,
            "brotli",
        ),
    ];
    for (path, grants, kind, name) in cases {
        let p = load(&rt, path, grants).unwrap();
        assert_eq!(p.kind(), kind, "{path}");
        assert_eq!(p.info().name, name, "{path}");
        assert!(!p.info().version.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_getter_reads_sqlite_through_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let db = demo_db(dir.path());
    let rt = runtime();
    let mut grants = PluginGrants::default();
    grants
        .config
        .insert("database".into(), db.display().to_string());
    let LoadedPlugin::Getter(getter) = load(&rt, plugins::DB_GETTER, grants.clone()).unwrap()
    else {
        panic!("db_getter is a getter")
    };
    assert_eq!(
        getter.get("scores", "Tom").await.unwrap(),
        Loaded::Found {
            value: Bytes::from_static(b"630"),
            expires_at_ms: None
        }
    );
    assert_eq!(
        getter.get("scores", "Nobody").await.unwrap(),
        Loaded::NotFound
    );

    // The query is the plugin's config: point it at another column.
    grants.config.insert(
        "query".into(),
        "SELECT name || ':' || score FROM scores WHERE name = ?1".into(),
    );
    let LoadedPlugin::Getter(getter) = load(&rt, plugins::DB_GETTER, grants).unwrap() else {
        panic!()
    };
    assert_eq!(
        getter.get("scores", "Sam").await.unwrap(),
        Loaded::Found {
            value: Bytes::from_static(b"Sam:567"),
            expires_at_ms: None
        }
    );
}

#[test]
fn db_getter_without_its_database_fails_to_load_with_the_fix() {
    let rt = runtime();
    let mut grants = PluginGrants::default();
    grants
        .config
        .insert("database".into(), "/nonexistent/demo.db".into());
    let err = load(&rt, plugins::DB_GETTER, grants).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("/nonexistent/demo.db") && msg.contains("plugins/build.sh"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brotli_compressor_round_trips_and_respects_max_len() {
    let rt = runtime();
    let LoadedPlugin::Compressor(c) =
        load(&rt, plugins::BROTLI_COMPRESSOR, PluginGrants::default()).unwrap()
    else {
        panic!("brotli is a compressor")
    };
    let data: Vec<u8> = b"geecache "
        .iter()
        .copied()
        .cycle()
        .take(64 * 1024)
        .collect();
    let packed = c.compress(data.clone(), Some(5)).await.unwrap();
    assert!(packed.len() < data.len() / 10, "{} bytes", packed.len());
    assert_eq!(
        c.decompress(packed.clone(), data.len() as u64)
            .await
            .unwrap(),
        data
    );
    assert!(
        c.decompress(packed, 100).await.is_err(),
        "output above max_len must be refused"
    );
    assert!(
        c.compress(data, Some(99)).await.is_err(),
        "level 99 is invalid"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_storage_works_in_its_granted_directory_only() {
    let rt = runtime();
    // Without a grant the plugin has no files at all.
    let LoadedPlugin::Storage(denied) =
        load(&rt, plugins::FS_STORAGE, PluginGrants::default()).unwrap()
    else {
        panic!("fs_storage is a storage backend")
    };
    let entry = PeerEntry {
        value: Bytes::from_static(b"\x00\x01 any bytes \xff"),
        codec: "none".into(),
        expires_at_ms: Some(1_900_000_000_000),
    };
    assert!(
        denied.put("g", "k", entry.clone()).await.is_err(),
        "no directory was granted"
    );

    let dir = tempfile::tempdir().unwrap();
    let grants = PluginGrants {
        dirs: vec![(dir.path().to_path_buf(), "/data".into())],
        ..Default::default()
    };
    let LoadedPlugin::Storage(storage) = load(&rt, plugins::FS_STORAGE, grants).unwrap() else {
        panic!()
    };
    let odd_key = "a/b c+%?🦀";
    assert_eq!(storage.get("g", odd_key).await.unwrap(), None);
    storage.put("g", odd_key, entry.clone()).await.unwrap();
    assert_eq!(storage.get("g", odd_key).await.unwrap(), Some(entry));
    assert!(
        std::fs::read_dir(dir.path()).unwrap().count() >= 1,
        "it wrote into the granted dir"
    );
    storage.delete("g", odd_key).await.unwrap();
    assert_eq!(storage.get("g", odd_key).await.unwrap(), None);
    storage.delete("g", odd_key).await.unwrap();
}

#[test]
fn the_compile_cache_makes_the_second_load_cheap_and_identical() {
    let dir = tempfile::tempdir().unwrap();
    let options = RuntimeOptions {
        compile_cache_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    for _ in 0..2 {
        let rt = Runtime::new(options.clone()).unwrap();
        let p = load(&rt, plugins::CHAOS_GETTER, PluginGrants::default()).unwrap();
        assert_eq!(p.info().name, "chaos_getter");
    }
    let mut files = 0;
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                files += 1;
            }
        }
    }
    assert!(
        files >= 1,
        "the compiled component was written to the cache dir"
    );
}
