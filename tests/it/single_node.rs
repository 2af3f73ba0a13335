//! One node, real plugins, real HTTP on 127.0.0.1, real SQLite.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use geecache_tests::{TestNode, db_getter_node, free_port, plugins, wait_healthy};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tom_is_630_and_the_second_read_is_served_from_cache() {
    let node = TestNode::with_db_getter(&[]).await;

    let (status, body) = node.get("/api?key=Tom").await;
    assert_eq!((status, body.as_slice()), (200, b"630".as_slice()));
    let stats = node.group_stats("scores").await;
    assert_eq!(stats["getter_calls"], 1);
    assert_eq!(stats["misses"], 1);
    assert_eq!(stats["hits"], 0);

    let (status, body) = node.get("/api?key=Tom").await;
    assert_eq!((status, body.as_slice()), (200, b"630".as_slice()));
    let stats = node.group_stats("scores").await;
    assert_eq!(
        stats["getter_calls"], 1,
        "the second read must not call the getter: {stats}"
    );
    assert_eq!(stats["hits"], 1);
    assert_eq!(stats["cache_items"], 1);

    // The REST form and the explicit group reach the same group and cache.
    let (status, body) = node.get("/api/v1/groups/scores/keys/Tom").await;
    assert_eq!((status, body.as_slice()), (200, b"630".as_slice()));
    let (status, body) = node.get("/api?key=Jack&group=scores").await;
    assert_eq!((status, body.as_slice()), (200, b"589".as_slice()));
    let (status, body) = node.get("/api/v1/groups/scores/keys/user000001").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(node.group_stats("scores").await["getter_calls"], 3);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_key_is_a_404_with_a_json_body_and_is_remembered_briefly() {
    let node = TestNode::with_db_getter(&["--negative-ttl", "1h"]).await;
    let (status, body) = node.get_json("/api?key=Nobody").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "key_not_found", "{body}");
    assert!(body["error"]["message"].is_string());

    let (status, _) = node.get_json("/api/v1/groups/scores/keys/Nobody").await;
    assert_eq!(status, 404);
    let stats = node.group_stats("scores").await;
    assert_eq!(
        stats["getter_calls"], 1,
        "the miss must be negatively cached: {stats}"
    );
    assert_eq!(stats["negative_hits"], 1);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_clear_json_errors() {
    let node = TestNode::with_db_getter(&["--max-key-bytes", "16"]).await;
    let cases: &[(&str, u16, &str)] = &[
        ("/api", 400, "bad_request"),
        ("/api?key=", 400, "bad_request"),
        ("/api?key=Tom&group=nope", 404, "group_not_found"),
        ("/api/v1/groups/nope/keys/Tom", 404, "group_not_found"),
        ("/api?key=aaaaaaaaaaaaaaaaaaaaaaaa", 413, "key_too_large"),
        ("/api/v1/groups/scores/keys/%FF%FE", 400, "bad_request"),
        ("/no/such/route", 404, "route_not_found"),
    ];
    for (path, want_status, want_code) in cases {
        let (status, body) = node.get_json(path).await;
        assert_eq!(status, *want_status, "{path}: {body}");
        assert_eq!(body["error"]["code"], *want_code, "{path}: {body}");
    }
    let resp = node
        .client
        .post(format!("{}/api/v1/stats", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");

    // None of that disturbed the cache or the getter.
    let (status, body) = node.get("/api?key=Sam").await;
    assert_eq!((status, body.as_slice()), (200, b"567".as_slice()));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_misses_of_one_key_call_the_getter_once() {
    let node = TestNode::with_db_getter(&[]).await;
    let url = format!("{}/api?key=user000042", node.base);
    let requests = (0..1000).map(|_| {
        let client = node.client.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let resp = client.get(url).send().await.unwrap();
            (resp.status().as_u16(), resp.bytes().await.unwrap())
        })
    });
    let answers = futures::future::join_all(requests).await;
    let first = answers[0].as_ref().unwrap().1.clone();
    assert!(!first.is_empty());
    for answer in &answers {
        let (status, body) = answer.as_ref().unwrap();
        assert_eq!(*status, 200);
        assert_eq!(body, &first, "every caller gets the same value");
    }
    let stats = node.group_stats("scores").await;
    assert_eq!(stats["getter_calls"], 1, "{stats}");
    assert_eq!(stats["gets"], 1000);
    // One load: every other caller was a hit, shared the load, or (a caller that missed just
    // as the load finished) led a flight of its own that found the value in the cache.
    assert_eq!(stats["loads"], 1, "{stats}");
    let hits = stats["hits"].as_u64().unwrap();
    let shared = stats["loads_deduplicated"].as_u64().unwrap();
    assert!(hits + shared <= 999, "{stats}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn misbehaving_plugins_fail_only_their_own_request() {
    let node = TestNode::start(&[
        "--plugin",
        plugins::CHAOS_GETTER,
        "--group",
        "chaos",
        "--plugin-timeout",
        "300ms",
        "--plugin-memory",
        "32MiB",
    ])
    .await;

    // A loop runs while other keys are served: the stuck call holds one blocking thread only.
    let looping = {
        let client = node.client.clone();
        let url = format!("{}/api?key=loop", node.base);
        tokio::spawn(async move {
            let resp = client.get(url).send().await.unwrap();
            (
                resp.status().as_u16(),
                resp.json::<serde_json::Value>().await.unwrap(),
            )
        })
    };
    let (status, body) = node.get("/api?key=fine").await;
    assert_eq!((status, body.as_slice()), (200, b"chaos:fine".as_slice()));

    let (status, body) = looping.await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "plugin_timeout", "{body}");

    let (status, body) = node.get_json("/api?key=panic").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "plugin_trapped", "{body}");

    let (status, body) = node.get_json("/api?key=oom").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "plugin_memory_limit", "{body}");

    let (status, body) = node.get_json("/api?key=error").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "plugin_error", "{body}");

    let (status, _) = node.get_json("/api?key=missing").await;
    assert_eq!(status, 404);

    // Failures are not cached: the same key fails again (fresh instance), others still work.
    let (status, _) = node.get_json("/api?key=panic").await;
    assert_eq!(status, 503);
    for key in ["a", "b", "after-all-that"] {
        let (status, body) = node.get(&format!("/api?key={key}")).await;
        assert_eq!(status, 200);
        assert_eq!(body, format!("chaos:{key}").into_bytes());
    }

    let stats = node.plugin_stats("chaos_getter").await;
    assert_eq!(stats["kind"], "getter");
    assert_eq!(stats["timeouts"], 1, "{stats}");
    assert_eq!(stats["traps"], 2, "{stats}");
    assert_eq!(stats["memory_limits"], 1, "{stats}");
    assert_eq!(stats["reported_errors"], 1, "{stats}");
    node.stop().await;
}

/// Runs the real binary the way the README does, then stops it with SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_tom_and_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = geecache_tests::demo_db(dir.path());
    let port = free_port();
    let child = db_getter_node(env!("CARGO_BIN_EXE_geecache-node"), port, &db)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    assert!(wait_healthy(&format!("{base}/healthz"), Duration::from_secs(60)).await);
    let body = reqwest::get(format!("{base}/api?key=Tom"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "630");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(status.status.success(), "exit: {:?}", status.status);
    let log = String::from_utf8_lossy(&status.stderr);
    assert!(log.contains("shutting down"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_sizes_the_runtime_and_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = geecache_tests::demo_db(dir.path());
    for workers in [1, 3] {
        let port = free_port();
        let mut child = db_getter_node(env!("CARGO_BIN_EXE_geecache-node"), port, &db)
            .args(["--worker-threads", &workers.to_string(), "--log-json"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        assert!(wait_healthy(&format!("{base}/healthz"), Duration::from_secs(60)).await);
        let body = reqwest::get(format!("{base}/api?key=Tom")).await.unwrap();
        assert_eq!(body.text().await.unwrap(), "630");
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        let listening = log
            .lines()
            .find(|l| l.contains("listening"))
            .unwrap_or_default();
        assert!(
            listening.contains(&format!("\"workers\":{workers}")),
            "{listening}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_geecache-node"))
        .args(["--plugin", plugins::DB_GETTER, "--port", "0"])
        .args(["--worker-threads", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--worker-threads must be at least 1"), "{err}");
}

#[test]
fn a_missing_plugin_file_is_a_clear_cli_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_geecache-node"))
        .args(["--plugin", "/nonexistent/db_getter.wasm", "--port", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/db_getter.wasm"), "{err}");
    assert!(err.contains("plugins/build.sh"), "{err}");
}

#[test]
fn a_file_that_is_not_a_plugin_is_a_clear_cli_error() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"\0asm\x01\0\0\0").unwrap(); // a valid, empty core module
    let out = Command::new(env!("CARGO_BIN_EXE_geecache-node"))
        .arg("--plugin")
        .arg(&bogus)
        .args(["--port", "0", "--no-compile-cache"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("component"), "{err}");
}

#[test]
fn no_getter_at_all_says_how_to_get_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_geecache-node"))
        .args(["--port", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--plugin plugins/db_getter.wasm"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_delete_and_batch_on_one_node() {
    let node = TestNode::with_db_getter(&["--max-body-bytes", "1KiB"]).await;
    let url = |k: &str| format!("{}/api/v1/groups/scores/keys/{k}", node.base);

    // PUT stores any bytes under any key; GET returns them byte for byte.
    let odd = "a%2Fb%20c%2B%F0%9F%A6%80"; // "a/b c+🦀"
    let value = vec![0u8, 255, 10, 13, 1, 2, 3];
    let resp = node
        .client
        .put(url(odd))
        .body(value.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (status, body) = node.get(&format!("/api/v1/groups/scores/keys/{odd}")).await;
    assert_eq!((status, body), (200, value));

    // DELETE drops the value; the next GET reloads it from the getter.
    node.get("/api?key=Tom").await;
    let calls = node.group_stats("scores").await["getter_calls"]
        .as_u64()
        .unwrap();
    let resp = node
        .client
        .put(url("Tom"))
        .body("999")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(node.get("/api?key=Tom").await.1, b"999");
    let resp = node.client.delete(url("Tom")).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(node.get("/api?key=Tom").await.1, b"630");
    let after = node.group_stats("scores").await["getter_calls"]
        .as_u64()
        .unwrap();
    assert_eq!(after, calls + 1, "exactly one reload after DELETE");

    // Limits: body over --max-body-bytes, bad ttl.
    let resp = node
        .client
        .put(url("big"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "body_too_large");
    let resp = node
        .client
        .put(format!("{}?ttl=soon", url("k")))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // Batch: values, misses and bad keys each get their own answer.
    let resp = node
        .client
        .post(format!("{}/api/v1/groups/scores/batch", node.base))
        .json(&serde_json::json!({ "keys": ["Jack", "Nobody", "", "user000007"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["value"], "589");
    assert_eq!(results[1]["error"]["code"], "key_not_found");
    assert_eq!(results[2]["error"]["code"], "bad_request");
    assert!(results[3]["value"].is_string());
    let resp = node
        .client
        .post(format!("{}/api/v1/groups/scores/batch", node.base))
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    node.stop().await;
}

/// A node on a system without CA certificates (a minimal container image) starts and serves:
/// its peers may be plain `http://`, and `https://` ones are trusted with `--peer-ca` there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_on_a_system_without_ca_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let db = geecache_tests::demo_db(dir.path());
    let empty = dir.path().join("no-certs");
    std::fs::create_dir(&empty).unwrap();
    let port = free_port();
    let mut child = db_getter_node(env!("CARGO_BIN_EXE_geecache-node"), port, &db)
        // Where the system's certificates are looked for: nowhere with any.
        .env("SSL_CERT_FILE", empty.join("none.pem"))
        .env("SSL_CERT_DIR", &empty)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let healthy = wait_healthy(&format!("{base}/healthz"), Duration::from_secs(60)).await;
    if healthy {
        let body = reqwest::get(format!("{base}/api?key=Tom")).await.unwrap();
        assert_eq!(body.text().await.unwrap(), "630");
        child.kill().unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(healthy, "the node did not start: {log}");
    assert!(log.contains("no system CA certificates"), "{log}");
}

/// Every error code the host's code can answer with is in docs/api.md's error table. The codes
/// are read off the sources: the string literals of every `fn code` (the error types' codes),
/// and the code given to every `error_response(StatusCode::…, "code", …)`, peer
/// `Failure::new(StatusCode::…, "code", …)` and `"code": "…"` JSON.
#[test]
fn every_error_code_the_code_can_answer_is_in_the_api_docs() {
    let root = geecache_tests::repo_root();
    let mut files = Vec::new();
    for dir in ["host/src", "host/core/src"] {
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let path = e.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|x| x == "rs")
                    && path.file_name().is_some_and(|n| n != "tests.rs")
                {
                    files.push(path);
                }
            }
        }
    }
    let literal = |s: &str| -> Option<String> {
        let start = s.find('"')? + 1;
        let len = s[start..].find('"')?;
        let text = &s[start..start + len];
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .then(|| text.to_owned())
    };
    let mut codes = std::collections::BTreeSet::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        // Tests inside a source file come last; their codes are not answers.
        let text = text.split("#[cfg(test)]").next().unwrap();
        for (i, _) in text.match_indices("fn code(") {
            let body = &text[i..];
            let end = ["\n    }\n", "\n}\n"]
                .iter()
                .filter_map(|close| body.find(close))
                .min()
                .unwrap_or(body.len());
            for line in body[..end].lines().filter(|l| l.contains("=>")) {
                if let Some(code) = line.split("=>").nth(1).and_then(literal) {
                    codes.insert(code);
                }
            }
        }
        for call in ["error_response(", "Failure::new("] {
            for (i, _) in text.match_indices(call) {
                let after = &text[i + call.len()..];
                // `error_response(StatusCode::X, "code", ...)`: the status first, the code next.
                let Some(status) = after.find("StatusCode::").filter(|s| *s < 80) else {
                    continue;
                };
                let Some(comma) = after[status..].find(',') else {
                    continue;
                };
                let next = after[status + comma + 1..].trim_start();
                if next.starts_with('"')
                    && let Some(code) = literal(next)
                {
                    codes.insert(code);
                }
            }
        }
        for (i, _) in text.match_indices("\"code\": \"") {
            if let Some(code) = literal(&text[i + 7..]) {
                codes.insert(code);
            }
        }
    }
    assert!(codes.len() > 30, "the scan found codes: {codes:?}");
    let api = std::fs::read_to_string(root.join("docs/api.md")).unwrap();
    let table = api
        .split("## Error codes")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .unwrap();
    let missing: Vec<&String> = codes
        .iter()
        .filter(|c| !table.contains(&format!("`{c}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "codes the host answers with that docs/api.md's error table does not name: {missing:?}"
    );
}

/// The config file example of docs/operations.md starts as it is written, laid out as its
/// prose says (the file in the repository root, the plugins built, its storage directory
/// made): a node from that exact TOML block answers Tom, and a write reaches the storage tier.
/// Only the port is a flag (flags win over the file), so the test never takes 9999.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_example_of_the_docs_starts_as_written() {
    let root = geecache_tests::repo_root();
    let docs = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let section = docs.split("### The config file").nth(1).unwrap();
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plugins_dir = dir.path().join("plugins");
    std::fs::create_dir(&plugins_dir).unwrap();
    geecache_tests::demo_db(&plugins_dir);
    for (name, built) in [
        ("db_getter", geecache_tests::plugins::DB_GETTER),
        ("fs_storage", geecache_tests::plugins::FS_STORAGE),
    ] {
        std::os::unix::fs::symlink(built, plugins_dir.join(format!("{name}.wasm"))).unwrap();
    }
    std::fs::write(dir.path().join("geecache.toml"), block).unwrap();
    // The docs' next step: `mkdir -p geecache-data`.
    std::fs::create_dir(dir.path().join("geecache-data")).unwrap();
    let port = geecache_tests::free_port();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_geecache-node"));
    command
        .current_dir(dir.path())
        .args(["--config", "geecache.toml", "--port", &port.to_string()])
        .arg("--compile-cache-dir")
        .arg(geecache_tests::compile_cache_dir());
    let node = geecache_tests::NodeProcess::spawn(command, port, dir.path()).await;
    let client = reqwest::Client::new();
    let tom = client
        .get(format!("{}/api?key=Tom", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(tom.status(), 200, "{}", node.log_tail());
    assert_eq!(tom.text().await.unwrap(), "630");
    let put = client
        .put(format!("{}/api/v1/groups/scores/keys/Ann", node.base))
        .body("700")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 204, "{}", node.log_tail());
    let stored = std::fs::read_dir(dir.path().join("geecache-data"))
        .unwrap()
        .count();
    assert!(stored > 0, "the write reached the storage directory");
    assert!(
        !std::fs::read_to_string(&node.log)
            .unwrap()
            .contains("storage get failed"),
        "{}",
        node.log_tail()
    );
}

/// README's first `curl` block, run against a node started as its command 1 starts one (the
/// db_getter plugin with its demo database): every line answers, with the value, error code
/// and status its comment gives where it gives one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_curl_block_answers_as_its_comments_say() {
    let readme = std::fs::read_to_string(geecache_tests::repo_root().join("README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .map(|b| b.split("\n```").next().unwrap())
        .find(|b| b.starts_with("curl \"localhost:9999/api?key=Tom\""))
        .expect("README's curl block");
    let dir = tempfile::tempdir().unwrap();
    let db = geecache_tests::demo_db(dir.path());
    let node = geecache_tests::NodeProcess::start(
        env!("CARGO_BIN_EXE_geecache-node"),
        &db,
        dir.path(),
        &[],
    )
    .await;
    let client = reqwest::Client::new();
    let mut lines = 0;
    for line in block.lines() {
        let (command, comment) = line.split_once('#').unwrap();
        let url = command
            .trim()
            .strip_prefix("curl \"")
            .and_then(|u| u.strip_suffix('"'))
            .unwrap()
            .replace("localhost:9999", &format!("127.0.0.1:{}", node.port));
        let comment = comment.trim();
        let r = client.get(format!("http://{url}")).send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        let expected_status = comment
            .rsplit_once('(')
            .and_then(|(_, s)| s.strip_suffix(')'))
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(200);
        assert_eq!(status, expected_status, "{line}: {body}");
        if comment.starts_with('{') {
            let prefix = comment.split("...").next().unwrap();
            assert!(body.starts_with(prefix), "{line}: {body}");
        } else if comment.bytes().all(|b| b.is_ascii_digit()) {
            assert_eq!(body, comment, "{line}");
        }
        lines += 1;
    }
    assert_eq!(lines, 4, "{block}");
}
