//! Hot reload of a plugin while the node serves: real components (`reload_getter` v1 answers
//! `KEY@v1`, v2 `KEY@v2`), real nodes on 127.0.0.1, continuous load from several clients.
//!
//! Each trigger (the admin API, `--watch-plugins`, SIGHUP) swaps v1 → v2 under load with no
//! failed request, after which new misses are answered by v2; broken new versions are refused
//! and v1 keeps answering. Every wait is bounded; no sleep is an assertion.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use geecache_host::plugin::registry::sha256_hex;
use geecache_tests::{
    ADMIN_TOKEN, TestNode, admin_post, compile_cache_dir, free_port, plugins, wait_healthy,
};

use crate::support::etcd;

/// The file a test node loads its getter from (a copy of v1 in the test's own directory).
fn plugin_file(dir: &Path) -> PathBuf {
    let file = dir.join("reload_getter.wasm");
    std::fs::copy(plugins::RELOAD_GETTER_V1, &file).unwrap();
    file
}

/// Publishes `src` at `dst` the supported way: a copy beside it, then an atomic rename.
fn publish(src: &str, dst: &Path) {
    let tmp = dst.with_extension("wasm.tmp");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

fn sha_of(path: &str) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

/// Continuous load: `clients` loops of gets, a mix of repeated keys (hits), unique keys
/// (misses) and slow unique keys (calls that are in flight when the reload happens). Every
/// answer must be 200 with `KEY@v1` or `KEY@v2`; anything else is recorded as a failure.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(base: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let started = Instant::now();
        let tasks = (0..clients)
            .map(|c| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                let base = base.to_string();
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let mut n = 0u64;
                    // Bounded in time and count whatever the test does.
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < Duration::from_secs(60)
                        && n < 200_000
                    {
                        n += 1;
                        let key = match n % 4 {
                            0 | 1 => format!("hot{}", n % 16),
                            2 => format!("miss-{c}-{n}"),
                            _ => format!("slow-{c}-{n}"),
                        };
                        let answer = client.get(format!("{base}/api?key={key}")).send().await;
                        let verdict = match answer {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                let body = r.text().await.unwrap_or_default();
                                let good = status == 200
                                    && (body == format!("{key}@v1") || body == format!("{key}@v2"));
                                if good {
                                    Ok(())
                                } else {
                                    Err(format!("{key}: {status} {body}"))
                                }
                            }
                            Err(e) => Err(format!("{key}: {e}")),
                        };
                        match verdict {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                failures.lock().unwrap().push(e);
                                0
                            }
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    /// Waits until at least `n` more requests succeeded (bounded).
    async fn wait_for(&self, n: u64) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ok.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "the load made no progress");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the clients; the requests that succeeded and the failures.
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

async fn get_text(client: &reqwest::Client, base: &str, path: &str) -> (u16, String) {
    let r = client.get(format!("{base}{path}")).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The admin API's view of `reload_getter`.
async fn plugin_view(client: &reqwest::Client, base: &str) -> serde_json::Value {
    plugin_view_of(client, base, "reload_getter").await
}

/// The admin API's view of plugin `name`.
async fn plugin_view_of(client: &reqwest::Client, base: &str, name: &str) -> serde_json::Value {
    let (status, body) = get_text(client, base, &format!("/api/v1/plugins/{name}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls the admin view until the plugin serves `sha256` (bounded).
async fn wait_for_sha(client: &reqwest::Client, base: &str, sha256: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = plugin_view(client, base).await;
        if view["sha256"] == sha256 {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "the plugin still serves {} (wanted {sha256})",
            view["sha256"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After a swap to v2: fresh keys are answered by v2.
async fn assert_v2_answers(client: &reqwest::Client, base: &str) {
    for key in ["fresh-a", "fresh-b", "slow-fresh"] {
        let (status, body) = get_text(client, base, &format!("/api?key={key}")).await;
        assert_eq!((status, body.as_str()), (200, format!("{key}@v2").as_str()));
    }
}

fn node_args(file: &Path) -> Vec<String> {
    vec![
        "--plugin".into(),
        file.display().to_string(),
        "--plugin-concurrency".into(),
        "16".into(),
    ]
}

/// A node in this process serving `reload_getter` v1 from a copy in `dir`, with `extra` flags;
/// and the copy's path.
async fn start_node(dir: &Path, extra: &[&str]) -> (TestNode, PathBuf) {
    let file = plugin_file(dir);
    let mut args = node_args(&file);
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (TestNode::start(&args).await, file)
}

/// Stops the load; fails the test if any request failed.
async fn assert_no_failures(load: Load) {
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(10)]
    );
    assert!(ok > 0);
}

/// Waits (bounded) until every node's ring has `members` members.
async fn wait_ring(nodes: &[TestNode], members: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while nodes
        .iter()
        .any(|n| n.node.cluster.ring_members().len() != members)
    {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_by_api_under_load_loses_no_request_and_v2_answers_after() {
    let dir = tempfile::tempdir().unwrap();
    let (node, file) = start_node(dir.path(), &[]).await;
    let c = &node.client;
    let v1 = sha_of(plugins::RELOAD_GETTER_V1);
    let v2 = sha_of(plugins::RELOAD_GETTER_V2);
    let before = plugin_view(c, &node.base).await;
    assert_eq!(before["sha256"], v1.as_str());
    assert_eq!(before["kind"], "getter");
    assert_eq!(before["version"], "1");
    assert_eq!(before["reloads"], 0);
    assert_eq!(before["source"], file.display().to_string());

    let load = Load::start(&node.base, 6);
    load.wait_for(300).await;
    // Swap by path.
    let by_path = format!(
        "{}/api/v1/plugins/reload_getter/reload?path={}",
        node.base,
        plugins::RELOAD_GETTER_V2
    );
    let (status, report) = admin_post(c, &by_path).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["reload"]["sha256"], v2.as_str());
    assert_eq!(report["reload"]["previous_sha256"], v1.as_str());
    assert_eq!(report["reload"]["version"], "2");
    load.wait_for(300).await;
    // And back to v1 by uploading its bytes, still under load.
    let r = c
        .post(format!("{}/api/v1/plugins/reload_getter/reload", node.base))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/wasm")
        .body(std::fs::read(plugins::RELOAD_GETTER_V1).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    load.wait_for(300).await;
    assert_no_failures(load).await;

    let view = plugin_view(c, &node.base).await;
    assert_eq!(view["sha256"], v1.as_str());
    assert_eq!(view["source"], "upload");
    assert_eq!(view["reloads"], 2);
    assert_eq!(view["reload_failures"], 0);
    assert!(
        view["calls"].as_u64().unwrap() > 0,
        "counters span versions: {view}"
    );

    // The metrics show the version serving and the reloads.
    let metrics = node.metrics_text().await;
    let info = format!(
        "geecache_plugin_info{{kind=\"getter\",plugin=\"reload_getter\",sha256=\"{v1}\",version=\"1\","
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(&info) && l.ends_with(" 1")),
        "{info} not in\n{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("geecache_plugin_reloads_total{")
                && l.contains("plugin=\"reload_getter\"")
                && l.ends_with(" 2")),
        "{metrics}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_in_flight_finish_on_the_old_version_whose_instances_are_drained() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _file) = start_node(dir.path(), &[]).await;
    let plugins = node.node.state.plugins().clone();
    let runtime = node.node.runtime.clone();
    // Warm instances of v1.
    for i in 0..4 {
        let (status, body) = get_text(&node.client, &node.base, &format!("/api?key=warm{i}")).await;
        assert_eq!((status, body), (200, format!("warm{i}@v1")));
    }
    assert!(runtime.idle_instances() >= 1);
    // A slow call (400 ms in the plugin) in flight on v1 while v2 is swapped in. v2 is
    // compiled into the compile cache first, so the reload takes a few ms.
    let _ = runtime.load(Path::new(plugins::RELOAD_GETTER_V2), Default::default());
    let client = node.client.clone();
    let base = node.base.clone();
    let slow =
        tokio::spawn(async move { get_text(&client, &base, "/api?key=slower-inflight").await });
    let waited = Instant::now();
    while runtime.calls_in_flight() == 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(5),
            "the slow call never started"
        );
        tokio::task::yield_now().await;
    }
    let report = plugins
        .reload(
            "reload_getter",
            geecache_host::plugin::Candidate::File(plugins::RELOAD_GETTER_V2.into()),
        )
        .await
        .unwrap();
    assert_eq!(report.version, "2");
    assert!(
        !slow.is_finished(),
        "the slow call was still running on v1 at the swap"
    );
    // v1's idle instances were dropped at the swap, and v2 has served nothing yet.
    assert_eq!(
        runtime.idle_instances(),
        0,
        "the old version's warm instances are drained"
    );
    assert_eq!(slow.await.unwrap(), (200, "slower-inflight@v1".to_string()));
    // The slow call's v1 instance was dropped when it ended, not pooled.
    assert_eq!(runtime.idle_instances(), 0);
    assert_v2_answers(&node.client, &node.base).await;
    assert_eq!(runtime.idle_instances(), 1, "v2's instance is reused");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broken_new_versions_are_refused_and_v1_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let (node, file) = start_node(dir.path(), &[]).await;
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm this is not a component").unwrap();
    let text = dir.path().join("text.wasm");
    std::fs::write(&text, b"hello").unwrap();
    let c = &node.client;
    let load = Load::start(&node.base, 4);
    load.wait_for(100).await;
    let cases: [(&str, &str); 6] = [
        (
            &garbage.display().to_string(),
            "not a valid WebAssembly component",
        ),
        (&text.display().to_string(), "not a WebAssembly file"),
        (plugins::FS_STORAGE, "is a storage plugin"),
        (plugins::BROTLI_COMPRESSOR, "is a compressor plugin"),
        (plugins::RELOAD_GETTER_BROKEN, "info() call failed"),
        (
            plugins::SYNTH_GETTER,
            "reports the name \\\"synth_getter\\\"",
        ),
    ];
    for (path, why) in &cases {
        let r = c
            .post(format!(
                "{}/api/v1/plugins/reload_getter/reload?path={path}",
                node.base
            ))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(status, 422, "{path}: {body}");
        assert!(body.contains("\"code\":\"plugin_refused\""), "{body}");
        assert!(body.contains(why), "{path}: wanted {why:?} in {body}");
    }
    // A missing file, an unknown plugin, both a body and a path.
    let r = c
        .post(format!(
            "{}/api/v1/plugins/reload_getter/reload?path=/nonexistent.wasm",
            node.base
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        403,
        "a path that names no file is refused as any other"
    );
    let r = c
        .post(format!("{}/api/v1/plugins/nope/reload", node.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(r.text().await.unwrap().contains("plugin_not_found"));
    // An upload that is not a component: the refusal names the upload, not the plugin's file.
    let r = c
        .post(format!("{}/api/v1/plugins/reload_getter/reload", node.base))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/wasm")
        .body("hello")
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    assert!(
        body.contains("the uploaded component (5 bytes): not a WebAssembly file"),
        "{body}"
    );
    assert!(!body.contains(&file.display().to_string()), "{body}");
    let r = c
        .post(format!(
            "{}/api/v1/plugins/reload_getter/reload?path=x",
            node.base
        ))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/wasm")
        .body("y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // The same through the watcher-free trigger path: a broken file, re-read by reload_changed.
    publish(plugins::RELOAD_GETTER_BROKEN, &file);
    let results = node.node.state.plugins().reload_changed().await;
    assert_eq!(results.len(), 1);
    assert!(results[0].1.is_err());
    load.wait_for(100).await;
    assert_no_failures(load).await;
    let view = plugin_view(c, &node.base).await;
    assert_eq!(view["sha256"], sha_of(plugins::RELOAD_GETTER_V1).as_str());
    assert_eq!(view["reloads"], 0);
    // The cases, the upload and the broken file; the path that names no file was refused at
    // the door, before any reload began.
    assert_eq!(view["reload_failures"], cases.len() as u64 + 2);
    let (status, body) = get_text(c, &node.base, "/api?key=after-refusals").await;
    assert_eq!((status, body.as_str()), (200, "after-refusals@v1"));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flush_drops_what_the_old_getter_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let (node, file) = start_node(dir.path(), &[]).await;
    let c = &node.client;
    assert_eq!(get_text(c, &node.base, "/api?key=kept").await.1, "kept@v1");
    // Without flush, what v1 loaded stays cached.
    publish(plugins::RELOAD_GETTER_V2, &file);
    let reload = format!("{}/api/v1/plugins/reload_getter/reload", node.base);
    let (status, body) = admin_post(c, &reload).await;
    assert_eq!(status, 200);
    assert_eq!(body["flushed_groups"], serde_json::json!([]));
    assert_eq!(get_text(c, &node.base, "/api?key=kept").await.1, "kept@v1");
    // With flush, the group's memory goes and v2 loads the key again.
    let (_, body) = admin_post(c, &format!("{reload}?flush=true")).await;
    assert_eq!(
        body["flushed_groups"],
        serde_json::json!(["scores"]),
        "{body}"
    );
    assert_eq!(body["reload"]["changed"], false);
    assert_eq!(get_text(c, &node.base, "/api?key=kept").await.1, "kept@v2");
    node.stop().await;
}

/// `POST /api/v1/plugins/reload_getter/reload?flush=true`, which must succeed; its answer.
async fn reload_with_flush(client: &reqwest::Client, base: &str) -> serde_json::Value {
    let url = format!("{base}/api/v1/plugins/reload_getter/reload?flush=true");
    let (status, body) = admin_post(client, &url).await;
    assert_eq!(status, 200, "the reload itself succeeds");
    body
}

/// The entry files `fs_storage` keeps for group `scores` under `dir` (its layout: a directory
/// per group named `x` + the hex of the name, holding a directory per bucket, a file per key
/// in it; names starting with `.` are not entries).
fn stored_files(dir: &Path) -> usize {
    let hex: String = "scores".bytes().map(|b| format!("{b:02x}")).collect();
    let Ok(buckets) = std::fs::read_dir(dir.join(format!("x{hex}"))) else {
        return 0;
    };
    buckets
        .filter_map(|bucket| std::fs::read_dir(bucket.ok()?.path()).ok())
        .flatten()
        .filter(|file| {
            file.as_ref()
                .is_ok_and(|file| !file.file_name().to_string_lossy().starts_with('.'))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flush_empties_the_storage_tier_too() {
    let dir = tempfile::tempdir().unwrap();
    let stored = tempfile::tempdir().unwrap();
    let grant = format!("fs_storage={}:rw", stored.path().display());
    let (node, file) = start_node(
        dir.path(),
        &["--plugin", plugins::FS_STORAGE, "--plugin-dir", &grant],
    )
    .await;
    let c = &node.client;
    assert_eq!(get_text(c, &node.base, "/api?key=kept").await.1, "kept@v1");
    // The load's write-through lands in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored_files(stored.path()) == 0 {
        assert!(
            Instant::now() < deadline,
            "kept@v1 never reached fs_storage"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    publish(plugins::RELOAD_GETTER_V2, &file);
    let body = reload_with_flush(c, &node.base).await;
    assert_eq!(
        body["flushed_groups"],
        serde_json::json!(["scores"]),
        "{body}"
    );
    assert_eq!(body["storage_not_cleared"], serde_json::json!([]), "{body}");
    assert_eq!(stored_files(stored.path()), 0, "the group's files are gone");
    // Not in memory, not in storage: v2 loads it.
    assert_eq!(get_text(c, &node.base, "/api?key=kept").await.1, "kept@v2");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storage_plugin_without_storage_clear_loads_and_a_flush_says_it_kept_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (node, file) = start_node(dir.path(), &["--plugin", plugins::STORAGE_BASIC]).await;
    let c = &node.client;
    let view = plugin_view_of(c, &node.base, "storage_basic").await;
    assert_eq!(view["kind"], "storage", "{view}");
    assert_eq!(view["can_clear"], false, "{view}");
    assert_eq!(get_text(c, &node.base, "/api?key=kept").await.1, "kept@v1");

    publish(plugins::RELOAD_GETTER_V2, &file);
    let body = reload_with_flush(c, &node.base).await;
    assert_eq!(
        body["flushed_groups"],
        serde_json::json!(["scores"]),
        "{body}"
    );
    let left = &body["storage_not_cleared"];
    assert_eq!(left[0]["group"], "scores", "{body}");
    let why = left[0]["error"]["message"].as_str().unwrap();
    assert!(
        why.contains("storage_basic") && why.contains("storage-clear"),
        "says which plugin and what it lacks: {why}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_needs_the_admin_token_not_the_api_token() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _file) = start_node(dir.path(), &["--api-token", "s3cret"]).await;
    let url = format!("{}/api/v1/plugins/reload_getter/reload", node.base);
    let r = node.client.post(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = node
        .client
        .post(&url)
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        401,
        "the API token is not the admin token"
    );
    let r = node
        .client
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Listing is a read.
    assert_eq!(
        get_text(&node.client, &node.base, "/api/v1/plugins")
            .await
            .0,
        200
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_plugins_reloads_a_file_replaced_by_rename_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let (node, file) = start_node(dir.path(), &["--watch-plugins"]).await;
    let c = &node.client;
    let load = Load::start(&node.base, 6);
    load.wait_for(300).await;
    publish(plugins::RELOAD_GETTER_V2, &file);
    let view = wait_for_sha(c, &node.base, &sha_of(plugins::RELOAD_GETTER_V2)).await;
    assert_eq!(
        view["reloads"], 1,
        "one reload for one published file: {view}"
    );
    load.wait_for(300).await;
    // A broken file is refused; v2 keeps serving.
    publish(plugins::RELOAD_GETTER_BROKEN, &file);
    let deadline = Instant::now() + Duration::from_secs(20);
    while plugin_view(c, &node.base).await["reload_failures"] == 0 {
        assert!(Instant::now() < deadline, "the broken file was never tried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    load.wait_for(100).await;
    assert_no_failures(load).await;
    assert_v2_answers(c, &node.base).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_plugins_follows_a_reload_to_a_file_in_another_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _file) = start_node(dir.path(), &["--watch-plugins"]).await;
    let c = &node.client;
    // The operator moves the plugin to a file in a directory the node did not start with.
    let elsewhere = tempfile::tempdir().unwrap();
    let moved = elsewhere.path().join("getter.wasm");
    std::fs::copy(plugins::RELOAD_GETTER_V2, &moved).unwrap();
    let r = c
        .post(format!(
            "{}/api/v1/plugins/reload_getter/reload?path={}",
            node.base,
            moved.display()
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    assert_eq!(
        plugin_view(c, &node.base).await["source"],
        moved.display().to_string()
    );
    // That file is watched from now on: v1 published there is reloaded by itself.
    let v1 = sha_of(plugins::RELOAD_GETTER_V1);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        publish(plugins::RELOAD_GETTER_V1, &moved);
        if tokio::time::timeout(Duration::from_secs(2), wait_for_sha(c, &node.base, &v1))
            .await
            .is_ok()
        {
            break;
        }
        // The watch on the new directory may start a moment after the reload's answer.
        assert!(Instant::now() < deadline, "the moved file is not watched");
        publish(plugins::RELOAD_GETTER_V2, &moved);
    }
    let (status, body) = get_text(c, &node.base, "/api?key=after-move").await;
    assert_eq!((status, body.as_str()), (200, "after-move@v1"));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_reloads_changed_plugin_files_of_a_running_process() {
    let dir = tempfile::tempdir().unwrap();
    let file = plugin_file(dir.path());
    let port = free_port();
    let log = dir.path().join("node.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_geecache-node"))
        .args(node_args(&file))
        .args(["--port", &port.to_string(), "--shutdown-grace", "0s"])
        .arg("--compile-cache-dir")
        .arg(compile_cache_dir())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        wait_healthy(&format!("{base}/healthz"), Duration::from_secs(60)).await,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let c = reqwest::Client::new();
    let load = Load::start(&base, 6);
    load.wait_for(300).await;
    publish(plugins::RELOAD_GETTER_V2, &file);
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    wait_for_sha(&c, &base, &sha_of(plugins::RELOAD_GETTER_V2)).await;
    load.wait_for(300).await;
    assert_no_failures(load).await;
    assert_v2_answers(&c, &base).await;
    let _ = child.kill();
    let _ = child.wait();
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("plugin reloaded"), "{logged}");
    assert!(logged.contains("SIGHUP"), "{logged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_rollout_reaches_every_node_or_none() {
    let etcd = etcd::EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = plugin_file(dir.path());
    let endpoint = etcd.endpoint();
    let common = |extra: &[&str]| {
        let mut args = node_args(&file);
        args.extend(
            [
                "--etcd-endpoints",
                &endpoint,
                "--lease-ttl",
                "2s",
                "--cluster-secret",
                "rollout-secret",
            ]
            .map(String::from),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let mut nodes = Vec::new();
    // The third node takes no component larger than 1 KiB: a rollout it cannot stage.
    for extra in [&[][..], &[][..], &["--max-plugin-bytes", "1KiB"][..]] {
        let args = common(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        nodes.push(TestNode::start(&args).await);
    }
    wait_ring(&nodes, 3, "the ring never had 3 members").await;
    let v1 = sha_of(plugins::RELOAD_GETTER_V1);
    let v2 = sha_of(plugins::RELOAD_GETTER_V2);
    let c = nodes[0].client.clone();
    let rollout = |n: &TestNode| {
        format!(
            "{}/api/v1/plugins/reload_getter/reload?cluster=true&path={}",
            n.base,
            plugins::RELOAD_GETTER_V2
        )
    };
    // Node 3 cannot take it: nothing changes anywhere.
    let (status, body) = admin_post(&c, &rollout(&nodes[0])).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["committed"], false);
    let nodes_report = body["nodes"].as_array().unwrap();
    assert_eq!(nodes_report.len(), 3, "{body}");
    assert_eq!(
        nodes_report.iter().filter(|n| n["ok"] == false).count(),
        1,
        "{body}"
    );
    for n in &nodes {
        assert_eq!(plugin_view(&n.client, &n.base).await["sha256"], v1.as_str());
    }
    // Stop node 3 and wait until the others dropped it; then the rollout reaches everyone.
    let third = nodes.pop().unwrap();
    third.stop().await;
    wait_ring(&nodes, 2, "node 3 never left the ring").await;
    let args = common(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    nodes.push(TestNode::start(&args).await);
    wait_ring(&nodes, 3, "the new node never joined").await;
    let load = Load::start(&nodes[1].base, 4);
    load.wait_for(200).await;
    let (status, body) = admin_post(&c, &rollout(&nodes[0])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["complete"], true, "{body}");
    load.wait_for(200).await;
    assert_no_failures(load).await;
    for n in &nodes {
        let view = plugin_view(&n.client, &n.base).await;
        assert_eq!(view["sha256"], v2.as_str(), "{}: {view}", n.base);
        assert_eq!(view["source"], "upload");
        assert_v2_answers(&n.client, &n.base).await;
    }
    // Without the cluster secret's signature, a node takes no component.
    let r = c
        .post(format!(
            "{}/_geecache_admin/plugins/reload_getter/stage?sha256={v1}",
            nodes[1].base
        ))
        .bearer_auth(ADMIN_TOKEN)
        .body(std::fs::read(plugins::RELOAD_GETTER_V1).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    for n in nodes {
        n.stop().await;
    }
}

/// A compressor's new version must take every level the node's groups compress at with it:
/// one that refuses the group's level is refused (the old version keeps compressing), and the
/// same version is taken by a node whose group's level it takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressor_that_refuses_a_groups_level_is_refused() {
    for (level, taken) in [(9, false), (2, true)] {
        let compression = format!("chaos_compressor:{level}");
        let node = TestNode::start(&[
            "--plugin",
            plugins::SYNTH_GETTER,
            "--plugin",
            plugins::CHAOS_COMPRESSOR,
            "--compression",
            &compression,
            "--compress-min-bytes",
            "1",
        ])
        .await;
        let c = &node.client;
        let r = c
            .post(format!(
                "{}/api/v1/plugins/chaos_compressor/reload?path={}",
                node.base,
                plugins::RELOAD_COMPRESSOR_NARROW
            ))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        let view = plugin_view_of(c, &node.base, "chaos_compressor").await;
        if taken {
            assert_eq!(status, 200, "level {level}: {body}");
            assert_eq!(view["version"], "2-narrow", "{view}");
        } else {
            assert_eq!(status, 422, "level {level}: {body}");
            assert!(body.contains("\"code\":\"plugin_refused\""), "{body}");
            assert!(
                body.contains("refuses level 9, which a group of this node compresses at"),
                "{body}"
            );
            assert_ne!(view["version"], "2-narrow", "{view}");
        }
        // Either way, values are still compressed and served.
        let (status, body) = get_text(c, &node.base, "/api?key=after-reload").await;
        assert_eq!(status, 200, "level {level}: {body}");
        node.stop().await;
    }
}

/// A cluster rollout whose client disconnects while it runs still reaches every node: it runs
/// as a task of its own, not inside the request (which a disconnect drops).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_whose_client_disconnects_still_reaches_every_node() {
    use tokio::io::AsyncWriteExt as _;
    let dir = tempfile::tempdir().unwrap();
    let file = plugin_file(dir.path());
    let mut args = node_args(&file);
    args.extend(["--cluster-secret", "rollout-secret"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let nodes = TestNode::cluster(2, &args).await;
    // v2 with a custom section of 32 MiB: a valid component whose rollout (read, hash, send to
    // the other node, hash there, check) is still running when the client goes.
    let mut component = std::fs::read(plugins::RELOAD_GETTER_V2).unwrap();
    let name = b"geecache-test";
    let filler = vec![0x5a_u8; 32 << 20];
    let mut size = 1 + name.len() + filler.len();
    component.push(0); // a custom section, its size in LEB128
    loop {
        let byte = u8::try_from(size & 0x7f).unwrap();
        size >>= 7;
        if size == 0 {
            component.push(byte);
            break;
        }
        component.push(byte | 0x80);
    }
    component.push(u8::try_from(name.len()).unwrap());
    component.extend(name);
    component.extend(&filler);
    let fresh = dir.path().join("reload_getter_v2_fresh.wasm");
    std::fs::write(&fresh, &component).unwrap();
    let v2 = sha256_hex(&component);
    // The request, sent whole; then the connection is closed before any answer.
    let request = format!(
        "POST /api/v1/plugins/reload_getter/reload?cluster=true&path={} HTTP/1.1\r\n\
         Host: {}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 0\r\n\r\n",
        fresh.display(),
        nodes[0].addr
    );
    let mut conn = tokio::net::TcpStream::connect(nodes[0].addr).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    // Long enough for the node to be handling it (past its middleware: a request the node
    // never got to is not a rollout), then gone.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut answer = [0u8; 512];
    let answered = tokio::time::timeout(
        std::time::Duration::from_millis(1),
        tokio::io::AsyncReadExt::read(&mut conn, &mut answer),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .filter(|n| *n > 0);
    assert!(
        answered.is_none(),
        "the rollout answered within 100 ms, so the test cannot tell: {}",
        String::from_utf8_lossy(&answer[..answered.unwrap_or(0)])
    );
    conn.shutdown().await.unwrap();
    drop(conn);
    for n in &nodes {
        wait_for_sha(&n.client, &n.base, &v2).await;
        assert_v2_answers(&n.client, &n.base).await;
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_past_the_plugin_limit_is_a_json_413_even_without_a_length() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = start_node(dir.path(), &["--max-plugin-bytes", "64KiB"]).await;
    // Sent in chunks, with no Content-Length: refused as it streams, at the limit.
    let mut conn = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/plugins/reload_getter/reload HTTP/1.1\r\nHost: {}\r\n\
         Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/wasm\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        node.addr
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let chunk = [b"2000\r\n".as_slice(), &[0u8; 0x2000], b"\r\n"].concat();
    for _ in 0..16 {
        // The node may answer and close before the last chunk: later writes may fail.
        if conn.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        conn.read_to_end(&mut answer),
    );
    let _ = read.await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"code\":\"body_too_large\""), "{answer}");
}
