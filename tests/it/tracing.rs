//! Traces over OTLP/HTTP: a real `geecache-host` process with `OTEL_EXPORTER_OTLP_ENDPOINT` set
//! sends its get-path spans to a collector on 127.0.0.1 (an HTTP server in this test that keeps
//! every `POST /v1/traces` body), and keeps keys out of them at info level. And a node's log
//! says when it compiles a plugin, how long that took, and whether the compile cache answered.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use geecache_tests::{db_getter_node, demo_db, free_port, wait_healthy};

/// Bodies the collector received, in order.
type Received = Arc<Mutex<Vec<Bytes>>>;

async fn collect(State(received): State<Received>, body: Bytes) -> &'static str {
    received.lock().unwrap().push(body);
    // An empty ExportTraceServiceResponse is an empty protobuf message.
    ""
}

/// Whether the protobuf bodies received so far contain `text` (span names and attribute
/// strings travel as plain UTF-8 in OTLP's protobuf encoding).
fn received_contains(received: &Received, text: &str) -> bool {
    received
        .lock()
        .unwrap()
        .iter()
        .any(|b| b.windows(text.len()).any(|w| w == text.as_bytes()))
}

/// How often `text` occurs in the bodies received so far.
fn occurrences(received: &Received, text: &str) -> usize {
    received
        .lock()
        .unwrap()
        .iter()
        .map(|b| {
            b.windows(text.len())
                .filter(|w| *w == text.as_bytes())
                .count()
        })
        .sum()
}

/// The spans every get of a key not yet cached produces.
const GET_PATH: [&str; 4] = [
    "geecache.api.get",
    "geecache.group.get",
    "geecache.group.load",
    "geecache.plugin.call",
];

/// Keys long enough that they cannot turn up by chance in random trace and span ids.
const KEYS: [&str; 2] = ["user000042", "user000077"];

/// Starts an OTLP/HTTP collector on 127.0.0.1: what it receives, and its endpoint.
async fn start_collector() -> (Received, String) {
    let received: Received = Arc::default();
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", collector.local_addr().unwrap());
    let app = Router::new()
        .route("/v1/traces", post(collect))
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(collector, app).await });
    (received, endpoint)
}

/// Runs a `geecache-node` process with `RUST_LOG=rust_log` exporting to a collector in this
/// test, gets each of [`KEYS`] twice, waits (at most 30 s) until the [`GET_PATH`] spans arrive,
/// stops the node with SIGTERM, and returns what the collector received.
async fn export_get_path(rust_log: &str) -> Received {
    let (received, endpoint) = start_collector().await;

    let dir = tempfile::tempdir().unwrap();
    let db = demo_db(dir.path());
    let port = free_port();
    let mut node = db_getter_node(env!("CARGO_BIN_EXE_geecache-node"), port, &db)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("node.log")).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let log = || std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default();
    assert!(
        wait_healthy(&format!("{base}/healthz"), Duration::from_secs(60)).await,
        "{}",
        log()
    );
    let client = reqwest::Client::new();
    for key in KEYS.iter().chain(&KEYS) {
        let answer = client
            .get(format!("{base}/api?key={key}"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    // Wait for every get's group span (the one that may carry the key), not just the first
    // batch: spans still buffered at shutdown may not be flushed on a loaded machine.
    let gets = 2 * KEYS.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && !(GET_PATH.iter().all(|n| received_contains(&received, n))
            && occurrences(&received, "geecache.group.get") >= gets)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ok = Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(node.wait().unwrap().success(), "{}", log());
    for name in GET_PATH {
        assert!(
            received_contains(&received, name),
            "no {name} span reached the collector; node log:\n{}",
            log()
        );
    }
    received
}

#[tokio::test]
async fn get_path_spans_reach_an_otlp_collector_without_keys() {
    let received = export_get_path("info").await;
    assert!(received_contains(&received, "geecache"), "service name");
    assert!(
        received_contains(&received, "db_getter"),
        "the plugin span names its plugin"
    );
    for key in KEYS {
        assert!(
            !received_contains(&received, key),
            "the key {key} reached the collector at info level"
        );
    }
}

#[tokio::test]
async fn at_debug_level_the_group_span_carries_the_key() {
    let received = export_get_path("info,geecache_host=debug").await;
    for key in KEYS {
        assert!(received_contains(&received, key), "no span carries {key}");
    }
}

/// One `geecache-node` process of a static cluster, exporting its spans to a collector of its
/// own; stopped (SIGKILL) when dropped.
struct TracedNode {
    child: std::process::Child,
    base: String,
    received: Received,
    log: std::path::PathBuf,
}

impl Drop for TracedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn traced_node(
    port: u16,
    peer: u16,
    db: &std::path::Path,
    dir: &std::path::Path,
) -> TracedNode {
    let (received, endpoint) = start_collector().await;
    let log = dir.join(format!("node-{port}.log"));
    let child = db_getter_node(env!("CARGO_BIN_EXE_geecache-node"), port, db)
        .args([
            "--peers",
            &format!("127.0.0.1:{peer}"),
            "--cluster-secret",
            "traces",
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    TracedNode {
        child,
        base: format!("http://127.0.0.1:{port}"),
        received,
        log,
    }
}

#[tokio::test]
async fn one_trace_crosses_nodes_from_the_callers_traceparent() {
    let dir = tempfile::tempdir().unwrap();
    let db = demo_db(dir.path());
    let (a_port, b_port) = (free_port(), free_port());
    let a = traced_node(a_port, b_port, &db, dir.path()).await;
    let b = traced_node(b_port, a_port, &db, dir.path()).await;
    for n in [&a, &b] {
        assert!(
            wait_healthy(&format!("{}/healthz", n.base), Duration::from_secs(60)).await,
            "{}",
            std::fs::read_to_string(&n.log).unwrap_or_default()
        );
    }
    // The caller's trace: W3C traceparent with a trace id of our choosing.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let client = reqwest::Client::new();
    // Enough keys that node B owns some of them: those go A → B → B's getter.
    for i in 0..16 {
        let answer = client
            .get(format!("{}/api?key=user{:06}", a.base, 100 + i))
            .header("traceparent", &traceparent)
            .header("tracestate", "geecache=test")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    let has_trace = |received: &Received| {
        received
            .lock()
            .unwrap()
            .iter()
            .any(|body| body.windows(16).any(|w| w == trace_bytes.as_slice()))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && !(has_trace(&a.received)
            && has_trace(&b.received)
            && received_contains(&b.received, "geecache.peer.serve")
            && received_contains(&b.received, "geecache.plugin.call"))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        has_trace(&a.received),
        "node A's spans are not in the caller's trace"
    );
    assert!(
        has_trace(&b.received),
        "node B's spans are not in the caller's trace: the peer request did not carry it"
    );
    assert!(received_contains(&b.received, "geecache.peer.serve"));
    assert!(received_contains(&b.received, "geecache.plugin.call"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_getters_http_request_carries_the_trace_to_the_origin() {
    let origin = geecache_tests::origin::Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Kept running: the node exports its spans there.
    let (_received, endpoint) = start_collector().await;
    let port = free_port();
    let mut command = geecache_tests::node_command(
        env!("CARGO_BIN_EXE_geecache-node"),
        port,
        geecache_tests::plugins::HTTP_GETTER,
    );
    command
        .arg("--plugin-config")
        .arg(format!("http_getter.base={}/items", origin.base()))
        .arg("--plugin-http")
        .arg(format!("http_getter={}", origin.base()))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("RUST_LOG", "info");
    let node = geecache_tests::NodeProcess::spawn(command, port, dir.path()).await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let answer = reqwest::Client::new()
        .get(format!("{}/api?key=Tom", node.base))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let seen = origin.traceparents();
    drop(node);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].starts_with(&format!("00-{trace_id}-")),
        "the origin got {seen:?}, not the caller's trace"
    );
}

/// A first start compiles the plugin and says so (and that the next start will not); the next
/// start, with the same compile cache, says it read the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_logs_its_plugin_compile_and_whether_the_cache_answered() {
    let dir = tempfile::tempdir().unwrap();
    let db = demo_db(dir.path());
    let cache = dir.path().join("compile-cache");
    let start = |run: &str| {
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_geecache-node"));
        command
            .args(["--plugin", geecache_tests::plugins::DB_GETTER])
            .args(["--port", &port.to_string()])
            .arg("--compile-cache-dir")
            .arg(&cache)
            .arg("--plugin-config")
            .arg(format!("db_getter.database={}", db.display()))
            .env("RUST_LOG", "info");
        let run_dir = dir.path().join(run);
        std::fs::create_dir_all(&run_dir).unwrap();
        async move { geecache_tests::NodeProcess::spawn(command, port, &run_dir).await }
    };
    let first = start("first").await;
    let log = std::fs::read_to_string(&first.log).unwrap();
    drop(first);
    assert!(
        log.contains("plugin: compiling (or reading the compile cache)"),
        "{log}"
    );
    assert!(
        log.contains("plugin: compiled; the next start reads it from the compile cache"),
        "{log}"
    );
    let second = start("second").await;
    let log = std::fs::read_to_string(&second.log).unwrap();
    drop(second);
    assert!(log.contains("plugin: read from the compile cache"), "{log}");
}
