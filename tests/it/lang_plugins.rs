//! Plugins in other languages, and the template plugin authors start from, each loaded by a real
//! node on 127.0.0.1 and read through the HTTP API.
//!
//! `py_getter` (Python, componentize-py) and `js_getter` (JavaScript, componentize-js) are
//! db_getter's twins: over the same demo database they must give the HTTP answers db_getter
//! gives, for found keys, a missing key and a query the host refuses. `tests/build.rs` builds
//! them; without python3 or node these tests fail and say what to install.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use geecache_host::group::{Getter, Loaded};
use geecache_host::plugin::{LoadedPlugin, PluginGrants, Runtime, RuntimeOptions};
use geecache_tests::{TestNode, compile_cache_dir, demo_db, plugins};

/// A node serving group `scores` from the getter at `path`, granted a fresh demo database under
/// the name `name` (its file stem), with `extra` flags.
async fn node_with(name: &str, path: &str, extra: &[&str]) -> TestNode {
    let database = format!("{name}.database={{db}}");
    let mut args = vec!["--plugin", path, "--plugin-config", &database];
    args.extend_from_slice(extra);
    TestNode::start(&args).await
}

/// The HTTP answers (status and body) of a node for the demo keys, a missing key, and then
/// of a second node whose `query` the host refuses.
async fn answers(name: &str, path: &str) -> Vec<(u16, String)> {
    let node = node_with(name, path, &[]).await;
    assert_eq!(node.plugin_stats(name).await["kind"], "getter");
    let mut seen = Vec::new();
    for path in [
        "/api?key=Tom",
        "/api/v1/groups/scores/keys/Jack",
        "/api?key=user000042",
        "/api?key=Nobody",
        "/api?key=Tom",
    ] {
        let (status, body) = node.get(path).await;
        seen.push((status, String::from_utf8(body).unwrap()));
    }
    let stats = node.group_stats("scores").await;
    assert_eq!(
        stats["getter_calls"], 4,
        "{name}: the second Tom is a hit: {stats}"
    );
    node.stop().await;

    let refused = format!("{name}.query=ATTACH DATABASE '/etc/passwd' AS p");
    let node = node_with(name, path, &["--plugin-config", &refused]).await;
    let (status, body) = node.get("/api?key=Tom").await;
    seen.push((status, String::from_utf8(body).unwrap()));
    node.stop().await;
    seen
}

/// What db_getter answers (checked against the demo data, so the comparison cannot pass by
/// two getters failing alike).
async fn db_getter_answers() -> Vec<(u16, String)> {
    let want = answers("db_getter", plugins::DB_GETTER).await;
    assert_eq!(want[0], (200, "630".to_owned()));
    assert_eq!(want[1], (200, "589".to_owned()));
    assert_eq!(want[2].0, 200);
    assert_eq!(want[3].0, 404);
    assert!(want[3].1.contains("\"key_not_found\""), "{}", want[3].1);
    assert_eq!(want[4], (200, "630".to_owned()));
    assert_eq!(
        want[5].0, 400,
        "the refused query is the plugin's invalid-input: {}",
        want[5].1
    );
    want
}

/// The error body a plugin's error is served with names the plugin; compare the rest.
fn without_name(answers: Vec<(u16, String)>, name: &str) -> Vec<(u16, String)> {
    answers
        .into_iter()
        .map(|(status, body)| (status, body.replace(name, "PLUGIN")))
        .collect()
}

/// Checks that the getter `name` at `path` gives db_getter's answers, then that one warm
/// instance of it serves call after call (each test compiles its component once: later loads
/// hit the on-disk compile cache).
async fn answers_as_db_getter_does(name: &str, path: &str) {
    let want = without_name(db_getter_answers().await, "db_getter");
    let got = without_name(answers(name, path).await, name);
    assert_eq!(got, want, "{name}");
    serves_many_calls_on_one_instance(path).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_getter_answers_as_db_getter_does() {
    answers_as_db_getter_does("py_getter", plugins::py_getter()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_getter_answers_as_db_getter_does() {
    answers_as_db_getter_does("js_getter", plugins::js_getter()).await;
}

/// With the default limits, one warm instance serves call after call: the Python and
/// JavaScript runtimes' heaps stay under the bound past which an instance is retired (half of
/// `--plugin-memory`), so a miss costs a call, not a new runtime.
async fn serves_many_calls_on_one_instance(path: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut grants = PluginGrants::default();
    grants
        .config
        .insert("database".into(), demo_db(dir.path()).display().to_string());
    let rt = Runtime::new(RuntimeOptions {
        compile_cache_dir: Some(compile_cache_dir()),
        ..RuntimeOptions::default()
    })
    .unwrap();
    let LoadedPlugin::Getter(getter) = rt.load(Path::new(path), grants).unwrap() else {
        panic!("{path} is a getter");
    };
    for i in 1..=50 {
        let key = format!("user{i:06}");
        assert!(matches!(
            getter.get("scores", &key).await.unwrap(),
            Loaded::Found { .. }
        ));
    }
    assert_eq!(getter.instances_created(), 1, "{path}");
}

/// Resident memory of a node process with `plugin` (db_getter's config), once it serves.
async fn serving_rss(plugin: &str, name: &str) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let db = demo_db(dir.path());
    let port = geecache_tests::free_port();
    let mut command =
        geecache_tests::node_command(env!("CARGO_BIN_EXE_geecache-node"), port, plugin);
    command
        .arg("--plugin-config")
        .arg(format!("{name}.database={}", db.display()));
    let mut node = geecache_tests::NodeProcess::spawn(command, port, dir.path()).await;
    let answer = reqwest::get(format!("{}/api?key=Tom", node.base))
        .await
        .unwrap();
    assert_eq!(answer.text().await.unwrap(), "630");
    node.memory().0
}

/// Loading a large component (the Python getter, 18 MB) from the compile cache frees several
/// times its size; the node gives that back once the load is done instead of keeping it
/// resident: a node serving the Python getter holds less than 110 MB more than one serving
/// db_getter (~62 MB more here with the fix, ~165 MB without, debug build). The first start,
/// which compiles it, fills the cache (and holds more: see docs/plugins.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_gives_back_the_memory_a_large_plugin_load_freed() {
    serving_rss(plugins::py_getter(), "py_getter").await;
    let rust = serving_rss(plugins::DB_GETTER, "db_getter").await;
    let python = serving_rss(plugins::py_getter(), "py_getter").await;
    let more = python.saturating_sub(rust) >> 20;
    eprintln!(
        "resident: db_getter {} MiB, py_getter {} MiB",
        rust >> 20,
        python >> 20
    );
    assert!(more < 110, "the Python getter's node holds {more} MiB more");
}
