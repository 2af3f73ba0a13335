//! The plugin runtime against the real plugin components: kind detection, names, grants.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use bytes::Bytes;
use geecache_host::group::{Getter, Loaded, PeerEntry};
use geecache_host::plugin::{
    DirGrant, LoadedPlugin, PluginError, PluginGrants, PluginKind, Runtime, RuntimeOptions,
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
    rt.load(Path::new(path), grants)
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
            expires_at_ms: None,
            stale_ms: None,
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
            expires_at_ms: None,
            stale_ms: None,
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
        dirs: vec![DirGrant {
            host: dir.path().to_path_buf(),
            guest: "/data".into(),
            writable: true,
        }],
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

/// escape_getter with the demo database and, when given, one directory at `/data`.
fn escape_getter(
    rt: &Runtime,
    db: &Path,
    dir: Option<DirGrant>,
) -> std::sync::Arc<geecache_host::plugin::WasmGetter> {
    let mut grants = PluginGrants::default();
    grants
        .config
        .insert("database".into(), db.display().to_string());
    grants.dirs.extend(dir);
    match load(rt, plugins::ESCAPE_GETTER, grants).unwrap() {
        LoadedPlugin::Getter(g) => g,
        other => panic!("escape_getter is a {}", other.kind()),
    }
}

fn runtime_with(timeout_ms: u64, concurrency: usize) -> Runtime {
    Runtime::new(RuntimeOptions {
        compile_cache_dir: Some(compile_cache_dir()),
        call_timeout: std::time::Duration::from_millis(timeout_ms),
        max_concurrent_calls: concurrency,
        ..RuntimeOptions::default()
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_sleeps_in_a_host_call_stops_at_its_time_limit() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime_with(300, 4);
    let getter = escape_getter(&rt, &demo_db(dir.path()), None);
    // Before: the 20 s sleep ran to its end, holding its thread and slot, and the call
    // answered "woke up". (The bound below is a liveness check, 30x the limit, not a benchmark.)
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        getter.get("g", "sleep:20"),
    )
    .await
    .expect("the call ends near its 300 ms limit, not after the guest's 20 s sleep")
    .unwrap_err();
    assert!(
        matches!(
            err.foreign::<PluginError>(),
            Some(PluginError::Timeout { .. })
        ),
        "{err:?}"
    );
    assert_eq!(rt.calls_in_flight(), 0);
    // The plugin keeps serving.
    assert_eq!(getter.get("g", "nothing").await.unwrap(), Loaded::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_call_stops_its_wasm_and_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime_with(2_000, 1);
    let getter = escape_getter(&rt, &demo_db(dir.path()), None);
    // The caller gives up long before the plugin's own deadline. Calls run on the caller's
    // task, so giving up drops the call: its wasm stops and its instance is dropped, so the
    // one slot is free again and no abandoned wasm runs outside the limit.
    let abandoned = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        getter.get("g", "sleep:20"),
    )
    .await;
    assert!(abandoned.is_err(), "the caller timed out");
    assert_eq!(rt.calls_in_flight(), 0, "the abandoned call holds no slot");
    assert_eq!(
        getter.idle_instances(),
        0,
        "its instance was dropped, not pooled"
    );
    assert_eq!(getter.get("g", "nothing").await.unwrap(), Loaded::NotFound);
    assert_eq!(rt.calls_in_flight(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_looping_plugin_does_not_stall_other_requests_on_its_thread() {
    // One runtime thread only: if wasm did not yield, the quick call could only run after
    // the loop hit its 1 s limit.
    let (_rt, chaos) = chaos_with(
        geecache_host::plugin::InstancePolicy::defaults(64 << 20),
        1_000,
    );
    let looping = tokio::spawn({
        let chaos = chaos.clone();
        async move { chaos.get("g", "loop").await }
    });
    tokio::task::yield_now().await;
    for n in 1..=3 {
        assert_eq!(calls_seen(&chaos, "count").await, n.to_string());
        assert!(
            !looping.is_finished(),
            "the quick call {n} was answered while the loop ran"
        );
    }
    let err = looping.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err.foreign::<PluginError>(),
            Some(PluginError::Timeout { .. })
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_reads_the_granted_database_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let db = demo_db(dir.path());
    let other = dir.path().join("other.db");
    let conn = rusqlite::Connection::open(&other).unwrap();
    conn.execute_batch("CREATE TABLE secret(v TEXT); INSERT INTO secret VALUES ('leaked');")
        .unwrap();
    drop(conn);
    let rt = runtime();
    let getter = escape_getter(&rt, &db, None);
    let found = |v: &str| Loaded::Found {
        value: Bytes::from(v.to_string()),
        expires_at_ms: None,
        stale_ms: None,
    };
    assert_eq!(
        getter
            .get("g", "sql:SELECT score FROM scores WHERE name = 'Tom'")
            .await
            .unwrap(),
        found("630")
    );
    let refused = |e: geecache_host::error::Error| match e.foreign::<PluginError>() {
        Some(PluginError::Reported { kind, message, .. }) => {
            assert_eq!(*kind, "invalid-input", "{message}");
            message.clone()
        }
        _ => panic!("expected a refusal, got {e:?}"),
    };
    // Before: ATTACH worked and the plugin read the other file's table.
    let attach = format!("sql:ATTACH DATABASE '{}' AS o", other.display());
    let message = refused(getter.get("g", &attach).await.unwrap_err());
    assert!(message.contains("not authorized"), "{message}");
    refused(
        getter
            .get("g", "sql:SELECT v FROM o.secret")
            .await
            .unwrap_err(),
    );
    // Before: BEGIN was accepted and left a read transaction open on a pooled connection.
    refused(getter.get("g", "sql:BEGIN").await.unwrap_err());
    refused(
        getter
            .get("g", "sql:PRAGMA query_only = 0")
            .await
            .unwrap_err(),
    );
    // Before: the host built a 500 MB blob for the guest.
    refused(
        getter
            .get("g", "sql:SELECT zeroblob(500000000)")
            .await
            .unwrap_err(),
    );
    refused(
        getter
            .get(
                "g",
                "sql:SELECT printf('%.*c', 40000000, 'x') || printf('%.*c', 40000000, 'x')",
            )
            .await
            .unwrap_err(),
    );
    // Still serving reads afterwards.
    assert_eq!(
        getter
            .get("g", "sql:SELECT count(*) FROM scores WHERE name = 'Tom'")
            .await
            .unwrap(),
        found("1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_directory_is_read_only_unless_granted_rw() {
    let dir = tempfile::tempdir().unwrap();
    let db = demo_db(dir.path());
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("hello.txt"), "hi").unwrap();
    let rt = runtime();
    let grant = |writable| DirGrant {
        host: data.path().to_path_buf(),
        guest: "/data".into(),
        writable,
    };
    let reader = escape_getter(&rt, &db, Some(grant(false)));
    assert_eq!(
        reader.get("g", "read:/data/hello.txt").await.unwrap(),
        Loaded::Found {
            value: Bytes::from_static(b"hi"),
            expires_at_ms: None,
            stale_ms: None,
        }
    );
    // Before: every granted directory was writable.
    assert!(reader.get("g", "write:/data/new.txt").await.is_err());
    assert!(!data.path().join("new.txt").exists());
    // Outside its grant there is nothing, and no environment.
    assert!(
        reader
            .get("g", &format!("read:{}", db.display()))
            .await
            .is_err()
    );
    assert_eq!(
        reader.get("g", "env").await.unwrap(),
        Loaded::Found {
            value: Bytes::from_static(b"0"),
            expires_at_ms: None,
            stale_ms: None,
        }
    );

    let writer = escape_getter(&rt, &db, Some(grant(true)));
    writer.get("g", "write:/data/new.txt").await.unwrap();
    assert_eq!(
        std::fs::read(data.path().join("new.txt")).unwrap(),
        b"escaped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_own_error_text_is_for_operators_only() {
    use geecache_host::error::Error;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let getter = escape_getter(&rt, &demo_db(dir.path()), None);
    let other = getter.get("g", "other").await.unwrap_err();
    // The operator's log gets the plugin's words (Display); a client gets the public message.
    assert!(other.to_string().contains("hunter2"));
    let public = other.public_message();
    assert!(
        !public.contains("hunter2") && public.contains("escape_getter"),
        "{public}"
    );
    assert_eq!(other.status(), 503);
    let invalid = getter.get("g", "invalid").await.unwrap_err();
    assert!(matches!(invalid, Error::Plugin(_)));
    assert_eq!(
        invalid.status(),
        400,
        "invalid-input is the request's fault"
    );
    assert!(invalid.public_message().contains("bad key"));
}

/// chaos_getter on a runtime with the given instance policy and time limit (64 MiB cap).
fn chaos_with(
    instances: geecache_host::plugin::InstancePolicy,
    timeout_ms: u64,
) -> (Runtime, std::sync::Arc<geecache_host::plugin::WasmGetter>) {
    let rt = Runtime::new(RuntimeOptions {
        compile_cache_dir: Some(compile_cache_dir()),
        call_timeout: std::time::Duration::from_millis(timeout_ms),
        instances,
        ..RuntimeOptions::default()
    })
    .unwrap();
    let getter = match load(&rt, plugins::CHAOS_GETTER, PluginGrants::default()).unwrap() {
        LoadedPlugin::Getter(g) => g,
        other => panic!("chaos_getter is a {}", other.kind()),
    };
    (rt, getter)
}

/// The chaos getter's per-instance call counter (key `count`, or `grow:N`).
async fn calls_seen(getter: &geecache_host::plugin::WasmGetter, key: &str) -> String {
    match getter.get("g", key).await.unwrap() {
        Loaded::Found { value, .. } => String::from_utf8(value.to_vec()).unwrap(),
        Loaded::NotFound => panic!("{key}: not found"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_instance_serves_many_calls_and_any_failure_retires_it() {
    let (rt, getter) = chaos_with(
        geecache_host::plugin::InstancePolicy::defaults(64 << 20),
        200,
    );
    for n in 1..=3 {
        assert_eq!(calls_seen(&getter, "count").await, n.to_string());
    }
    assert_eq!(
        getter.instances_created(),
        1,
        "one instance served all three"
    );
    assert_eq!(getter.idle_instances(), 1);
    assert_eq!(rt.idle_instances(), 1);

    // A reported `unavailable` or "not found" leaves the instance in service ...
    assert!(getter.get("g", "error").await.is_err());
    assert_eq!(getter.get("g", "missing").await.unwrap(), Loaded::NotFound);
    assert_eq!(calls_seen(&getter, "count").await, "6");
    // ... while a trap, a timeout, a memory-limit hit or an `other` error retires it: the next
    // call starts on a new instance whose counter starts again at 1.
    for bad in ["panic", "loop", "oom", "other"] {
        let err = getter.get("g", bad).await.unwrap_err();
        assert_eq!(getter.idle_instances(), 0, "{bad}: {err}");
        assert_eq!(calls_seen(&getter, "count").await, "1", "after {bad}");
    }
    assert_eq!(getter.instances_created(), 5);

    // The time limit is per call: a warm instance idle for longer than the limit still has
    // its whole budget (the epoch and wall-clock deadlines are re-armed for every call).
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(calls_seen(&getter, "count").await, "2");
    assert_eq!(getter.instances_created(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_is_retired_after_its_calls_or_past_its_memory_bound() {
    use geecache_host::plugin::InstancePolicy;
    let (_rt, getter) = chaos_with(
        InstancePolicy {
            max_calls: 3,
            ..InstancePolicy::defaults(64 << 20)
        },
        200,
    );
    let mut counts = Vec::new();
    for _ in 0..4 {
        counts.push(calls_seen(&getter, "count").await);
    }
    assert_eq!(counts, ["1", "2", "3", "1"], "retired after 3 calls");

    let (_rt, getter) = chaos_with(
        InstancePolicy {
            max_memory: 24 << 20,
            ..InstancePolicy::defaults(64 << 20)
        },
        200,
    );
    // 8 MiB more keeps the instance under its 24 MiB bound; 20 MiB more takes it past: that
    // call answers, and the instance is retired afterwards.
    assert_eq!(calls_seen(&getter, "grow:8").await, "1");
    assert_eq!(calls_seen(&getter, "grow:20").await, "2");
    assert_eq!(getter.idle_instances(), 0);
    assert_eq!(calls_seen(&getter, "count").await, "1");

    // The memory cap covers what the instance holds, whichever call allocated it: 40 MiB kept,
    // then 30 MiB more is past the 64 MiB cap.
    let (_rt, getter) = chaos_with(
        InstancePolicy {
            max_memory: 64 << 20,
            ..InstancePolicy::defaults(64 << 20)
        },
        200,
    );
    assert_eq!(calls_seen(&getter, "grow:20").await, "1");
    assert_eq!(calls_seen(&getter, "grow:20").await, "2");
    let err = getter.get("g", "grow:30").await.unwrap_err();
    assert!(
        matches!(
            err.foreign::<PluginError>(),
            Some(PluginError::MemoryLimit { .. })
        ),
        "{err:?}"
    );
    assert_eq!(calls_seen(&getter, "count").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_leaks_host_resources_is_retired_and_bounded() {
    use geecache_host::plugin::InstancePolicy;
    let (_rt, getter) = chaos_with(InstancePolicy::defaults(64 << 20), 2_000);
    // A few leaked handles: the instance stays in service.
    assert_eq!(calls_seen(&getter, "leak:10").await, "1");
    assert_eq!(calls_seen(&getter, "count").await, "2");
    // More than an idle instance may hold: that call answers, the instance is retired.
    assert_eq!(calls_seen(&getter, "leak:100").await, "3");
    assert_eq!(getter.idle_instances(), 0);
    assert_eq!(calls_seen(&getter, "count").await, "1");
    // More than any instance may hold: creating them fails, so does the call; the next call
    // is served by a new instance.
    let err = getter.get("g", "leak:5000").await.unwrap_err();
    assert!(
        matches!(err, geecache_host::error::Error::Plugin(_)),
        "{err:?}"
    );
    assert_eq!(getter.idle_instances(), 0, "{err}");
    assert_eq!(calls_seen(&getter, "count").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_mode_gives_every_call_a_new_instance() {
    use geecache_host::plugin::{InstanceMode, InstancePolicy};
    let (rt, getter) = chaos_with(
        InstancePolicy {
            mode: InstanceMode::Fresh,
            ..InstancePolicy::defaults(64 << 20)
        },
        200,
    );
    for _ in 0..3 {
        assert_eq!(calls_seen(&getter, "count").await, "1");
    }
    assert_eq!(getter.instances_created(), 3);
    assert_eq!(rt.idle_instances(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synth_getter_answers_any_key_with_a_deterministic_value_of_the_configured_size() {
    use geecache_tests::TestNode;
    let sized = TestNode::start(&[
        "--plugin",
        plugins::SYNTH_GETTER,
        "--plugin-config",
        "synth_getter.value_bytes=1000",
    ])
    .await;
    let plain = TestNode::start(&["--plugin", plugins::SYNTH_GETTER]).await;

    let (status, first) = sized.get("/api?key=perf-1").await;
    assert_eq!(status, 200);
    assert_eq!(first.len(), 1000);
    assert!(
        first
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(b))
    );
    let (_, again) = sized.get("/api/v1/groups/scores/keys/perf-1").await;
    assert_eq!(again, first, "a hit serves the loaded bytes");
    let (_, other) = sized.get("/api?key=perf-2").await;
    assert_ne!(other, first, "another key, another value");

    // Another node (another instance) loads the same bytes for the same key: the default
    // size is 100, and the value is where the same stream stops.
    let (status, short) = plain.get("/api?key=perf-1").await;
    assert_eq!(status, 200);
    assert_eq!(short, first[..100]);

    sized.stop().await;
    plain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synth_getter_with_a_bad_size_fails_its_loads_for_the_operators_log() {
    use geecache_tests::TestNode;
    let node = TestNode::start(&[
        "--plugin",
        plugins::SYNTH_GETTER,
        "--plugin-config",
        "synth_getter.value_bytes=lots",
    ])
    .await;
    let (status, body) = node.get_json("/api?key=k").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "plugin_error", "{body}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_template_plugin_builds_loads_and_greets() {
    use geecache_tests::TestNode;
    // plugins/template, built by tests/build.rs like every plugin, so it cannot rot.
    let node = TestNode::start(&["--plugin", plugins::HELLO_GETTER]).await;
    assert_eq!(
        node.get("/api?key=you").await,
        (200, b"hello, you".to_vec())
    );
    let (status, body) = node.get_json("/api?key=missing-1").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &"key_not_found".into())
    );
    node.stop().await;

    let node = TestNode::start(&[
        "--plugin",
        plugins::HELLO_GETTER,
        "--plugin-config",
        "hello_getter.greeting=hi",
    ])
    .await;
    assert_eq!(node.get("/api?key=you").await, (200, b"hi, you".to_vec()));
    node.stop().await;
}
