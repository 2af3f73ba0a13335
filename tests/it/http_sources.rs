//! Getters that reach an HTTP service: `http_getter` (wasi:http) in a real node, against a
//! real origin on 127.0.0.1 (tests/origin.rs).
//!
//! - Found / not found / cached, and the requests counted per plugin and origin in `/metrics`
//!   (`Cache-Control: max-age` as the entry's expiry is the plugin's unit tests').
//! - An origin that is down or answers 5xx: 502 `source_unavailable`, nothing cached.
//! - An origin slower than the call: 504 at the deadline, and the origin sees the request
//!   dropped (no task of the call left sending).
//! - A 1 GiB answer: refused at its `Content-Length`, or cut at the plugin's memory cap while
//!   it streams; the origin produced a small part of it.
//! - A redirect to an origin outside the allowlist is refused; one inside it is followed.
//! - A name that resolves to loopback is refused unless the address is listed too.
//! - A plugin without a grant: refused, and the node's log says so and how to grant it.
//! - A getter that POSTs a body larger than one stream write (4 KiB) sends all of it.
//! - One call of a hostile getter (`escape_getter`'s `fanout:`) starting 3,000 requests to an
//!   origin that never answers holds at most `--plugin-http-per-call` of them, two calls at
//!   most `--plugin-http-concurrency` together; the rest fail at once (`limited` in
//!   `/metrics`), and the node answers `/healthz` meanwhile.
//! - `--stale`: an expired value is answered at once (`X-Geecache-Source: stale`) while one
//!   refresh reloads it; with the origin down, it is answered for its whole window with no
//!   error, the failed refreshes counted; every miss is counted by its reason.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use crate::support::prometheus::{parse_exposition, percent_encode, value};
use geecache_tests::origin::Origin;
use geecache_tests::{NodeProcess, TestNode, free_port, node_command, plugins};

/// A node whose `http_getter` reads `{base}` under `route`, allowed `allow` (none when empty).
async fn node(origin: &Origin, route: &str, allow: &[String], extra: &[&str]) -> TestNode {
    let base = format!("http_getter.base={}/{route}", origin.base());
    let mut args = vec!["--plugin", plugins::HTTP_GETTER, "--plugin-config", &base];
    let grant = format!("http_getter={}", allow.join(","));
    if !allow.is_empty() {
        args.extend(["--plugin-http", &grant]);
    }
    args.extend_from_slice(extra);
    TestNode::start(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_getter_loads_from_the_origin_and_the_node_caches_it() {
    let origin = Origin::start().await;
    let node = node(&origin, "items", &[origin.base()], &[]).await;
    assert_eq!(node.get_key("scores", "Tom").await, (200, "630".to_owned()));
    assert_eq!(node.get_key("scores", "Tom").await, (200, "630".to_owned()));
    assert_eq!(
        node.get_key("scores", "Jack").await,
        (200, "589".to_owned())
    );
    assert_eq!(node.get_key("scores", "nobody").await.0, 404);
    assert_eq!(origin.item_requests(), 3, "Tom was served from the cache");
    let metrics = node.metrics_text().await;
    let line = format!(
        "geecache_plugin_http_request_duration_seconds_count{{origin=\"{}\",outcome=\"2xx\",plugin=\"http_getter\"",
        origin.base()
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(&line) && l.ends_with(" 2")),
        "{line} in:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("plugin_http"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_is_down_or_failing_is_a_502_and_nothing_is_cached() {
    let origin = Origin::start().await;
    let failing = node(&origin, "boom", &[origin.base()], &[]).await;
    let (status, body) = failing.get_key("scores", "Tom").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("source_unavailable"), "{body}");

    // Nothing listens on `down` any more.
    let down = free_port();
    let base = format!("http_getter.base=http://127.0.0.1:{down}/items");
    let grant = format!("http_getter=http://127.0.0.1:{down}");
    let node = TestNode::start(&[
        "--plugin",
        plugins::HTTP_GETTER,
        "--plugin-config",
        &base,
        "--plugin-http",
        &grant,
    ])
    .await;
    for _ in 0..2 {
        let (status, body) = node.get_key("scores", "Tom").await;
        assert_eq!(status, 502, "{body}");
        assert!(body.contains("source_unavailable"), "{body}");
    }
    let stats = node.group_stats("scores").await;
    assert_eq!(stats["loads"], 2, "not cached: {stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_slower_than_the_call_ends_at_the_deadline_and_is_hung_up_on() {
    let origin = Origin::start().await;
    let node = node(
        &origin,
        "slow",
        &[origin.base()],
        &["--plugin-timeout", "300ms"],
    )
    .await;
    let started = Instant::now();
    let (status, body) = node.get_key("scores", "Tom").await;
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("plugin_timeout"), "{body}");
    assert!(
        took < Duration::from_secs(4),
        "the origin answers after 5 s; took {took:?}"
    );
    // The call's request was dropped with it: the origin sees its client gone.
    let deadline = Instant::now() + Duration::from_secs(4);
    while origin.slow_dropped() < origin.slow_started() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(origin.slow_started(), 1);
    assert_eq!(origin.slow_dropped(), 1, "the request outlived its call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_answer_is_refused_or_cut_at_the_memory_cap() {
    let origin = Origin::start().await;
    let allow = [origin.base()];
    let announced = node(&origin, "huge-announced", &allow, &[]).await;
    let (status, body) = announced.get_key("scores", "k").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("larger than the plugin may hold"), "{body}");
    assert!(
        origin.huge_bytes() < 16 << 20,
        "refused at its Content-Length: {} bytes produced",
        origin.huge_bytes()
    );

    let streamed = node(&origin, "huge", &allow, &["--plugin-memory", "32MiB"]).await;
    let before = origin.huge_bytes();
    let (status, body) = streamed.get_key("scores", "k").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("plugin_memory_limit"), "{body}");
    let produced = origin.huge_bytes() - before;
    assert!(
        produced < 128 << 20,
        "cut near the 32 MiB cap, not read whole: {produced} bytes produced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_followed_only_inside_the_allowlist() {
    let origin = Origin::start().await;
    let allow = [origin.base()];
    let inside = node(&origin, "to-items", &allow, &[]).await;
    assert_eq!(
        inside.get_key("scores", "Tom").await,
        (200, "630".to_owned())
    );
    assert_eq!(origin.item_requests(), 1);

    // To http://localhost:{port}: the same server, but not an allowed origin.
    let outside = node(&origin, "to-localhost", &allow, &[]).await;
    let (status, body) = outside.get_key("scores", "Jack").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("not in this plugin's --plugin-http allowlist"),
        "{body}"
    );
    assert_eq!(origin.item_requests(), 1, "the redirect was not followed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_resolves_to_loopback_is_refused_unless_its_address_is_listed() {
    let origin = Origin::start().await;
    let by_name = format!("http://localhost:{}", origin.port);
    let base = format!("http_getter.base={by_name}/items");
    let start = |allow: String| {
        let base = base.clone();
        async move {
            TestNode::start(&[
                "--plugin",
                plugins::HTTP_GETTER,
                "--plugin-config",
                &base,
                "--plugin-http",
                &format!("http_getter={allow}"),
            ])
            .await
        }
    };
    let refused = start(by_name.clone()).await;
    let (status, body) = refused.get_key("scores", "Tom").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("resolves to an address plugins may not reach"),
        "{body}"
    );
    assert_eq!(origin.item_requests(), 0);

    let listed = start(format!("{by_name},{}", origin.base())).await;
    assert_eq!(
        listed.get_key("scores", "Tom").await,
        (200, "630".to_owned())
    );
    assert_eq!(origin.item_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_without_a_grant_is_refused_and_the_log_says_how_to_grant_it() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut command = node_command(
        env!("CARGO_BIN_EXE_geecache-node"),
        port,
        plugins::HTTP_GETTER,
    );
    command
        .arg("--plugin-config")
        .arg(format!("http_getter.base={}/items", origin.base()));
    let node = NodeProcess::spawn(command, port, dir.path()).await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let answer = client
            .get(format!("{}/api/v1/groups/scores/keys/Tom", node.base))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 503);
    }
    assert_eq!(origin.item_requests(), 0);
    let log = std::fs::read_to_string(&node.log).unwrap();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("HTTP request was refused"))
        .collect();
    assert_eq!(said.len(), 1, "said once a minute, not per request:\n{log}");
    assert!(said[0].contains("granted no outbound HTTP"), "{}", said[0]);
    assert!(said[0].contains("--plugin-http"), "{}", said[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_http_getter_fetches_the_same_answers_within_the_same_allowlist() {
    let origin = Origin::start().await;
    let start = |route: &str, allow: Option<String>| {
        let base = format!("js_http_getter.base={}/{route}", origin.base());
        async move {
            let mut args = vec![
                "--plugin".to_owned(),
                plugins::js_http_getter().to_owned(),
                "--plugin-config".to_owned(),
                base,
            ];
            if let Some(allow) = allow {
                args.extend([
                    "--plugin-http".to_owned(),
                    format!("js_http_getter={allow}"),
                ]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            TestNode::start(&args).await
        }
    };
    let node = start("items", Some(origin.base())).await;
    assert_eq!(node.get_key("scores", "Tom").await, (200, "630".to_owned()));
    assert_eq!(node.get_key("scores", "Tom").await, (200, "630".to_owned()));
    assert_eq!(node.get_key("scores", "nobody").await.0, 404);
    assert_eq!(origin.item_requests(), 2, "Tom was served from the cache");

    let failing = start("boom", Some(origin.base())).await;
    let (status, body) = failing.get_key("scores", "Tom").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("source_unavailable"), "{body}");

    // fetch() follows the redirect; the host refuses its second request.
    let outside = start("to-localhost", Some(origin.base())).await;
    let (status, body) = outside.get_key("scores", "Jack").await;
    assert_eq!(status, 503, "{body}");
    let ungranted = start("items", None).await;
    let (status, body) = ungranted.get_key("scores", "Jack").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        origin.item_requests(),
        2,
        "neither reached the origin's items"
    );
}

/// `GET /api?key=Tom`: status, `X-Geecache-Source`, body.
async fn get_sourced(node: &TestNode) -> (u16, String, String) {
    let r = node
        .client
        .get(format!("{}/api?key=Tom", node.base))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let source = r
        .headers()
        .get("x-geecache-source")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, source, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_values_are_answered_at_once_and_cover_an_origin_that_is_down() {
    let origin = Origin::start().await;
    let node = node(&origin, "flaky", &[origin.base()], &["--stale", "4s"]).await;
    let ok = |source: &str| (200, source.to_owned(), "630".to_owned());
    assert_eq!(get_sourced(&node).await, ok("getter"));
    assert_eq!(get_sourced(&node).await, ok("main"));
    // max-age=1: expired after a second, then answered stale while one refresh reloads it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = origin.flaky_requests();
    assert_eq!(get_sourced(&node).await, ok("stale"));
    // The refresh lands within a few ms (a local origin): the next ones are stale or fresh.
    let mut stale_answers = 1;
    for _ in 0..9 {
        let (status, source, body) = get_sourced(&node).await;
        assert_eq!((status, body.as_str()), (200, "630"));
        assert!(source == "stale" || source == "main", "{source}");
        stale_answers += u64::from(source == "stale");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while get_sourced(&node).await.1 != "main" {
        assert!(Instant::now() < deadline, "the refresh never landed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        origin.flaky_requests() - before,
        1,
        "one refresh for eleven requests"
    );

    // The origin goes down: the value is answered, stale, for its whole window (4 s past its
    // expiry), never an error; then the origin's failure shows (502).
    origin.set_down(true);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        assert_eq!(get_sourced(&node).await, ok("stale"), "stale-if-error");
        answered += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered > 20);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(get_sourced(&node).await.0, 502, "past the window");
    let samples = parse_exposition(&node.metrics_text().await);
    let errors = value(
        &samples,
        "geecache_refresh_errors_total",
        &[("group", "scores")],
    );
    assert!(errors >= 1.0, "{errors}");
    let stale = value(
        &samples,
        "geecache_misses_total",
        &[("group", "scores"), ("reason", "stale_refresh")],
    );
    assert!(stale >= (stale_answers + answered) as f64, "{stale}");
    // The reasons add up to the misses, in /api/v1/stats as in /metrics.
    let stats = node.group_stats("scores").await;
    let reasons: u64 = [
        "miss_never_seen",
        "miss_expired",
        "miss_evicted",
        "miss_negative_expired",
        "miss_not_owner",
        "miss_stale_refresh",
        "miss_flushed",
    ]
    .iter()
    .map(|r| stats[r].as_u64().unwrap())
    .sum();
    assert_eq!(reasons, stats["misses"].as_u64().unwrap(), "{stats}");
    assert_eq!(stats["miss_never_seen"], 1, "{stats}");
}

/// The origin's `stale-while-revalidate` / `stale-if-error` reach the cache through the
/// getter's `found` (WIT 0.2.0): with no `--stale` on the node, an expired value is still
/// answered stale while the origin is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origins_stale_if_error_covers_it_without_a_stale_flag() {
    let origin = Origin::start().await;
    let node = node(&origin, "flaky-swr", &[origin.base()], &[]).await;
    let ok = |source: &str| (200, source.to_owned(), "630".to_owned());
    assert_eq!(get_sourced(&node).await, ok("getter"));
    origin.set_down(true);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..3 {
        assert_eq!(get_sourced(&node).await, ok("stale"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_larger_than_one_stream_write_is_sent_whole() {
    let origin = Origin::start().await;
    // 10 copies of the key in a 1,000-byte template: a 10 KiB body, past wasi:io's 4 KiB write.
    let template = format!("{}{{key}}", "x".repeat(996)).repeat(10);
    let body = format!("http_getter.body={template}");
    let node = node(
        &origin,
        "echo-len",
        &[origin.base()],
        &["--plugin-config", &body],
    )
    .await;
    assert_eq!(
        node.get_key("scores", "abcd").await,
        (200, "10000".to_owned())
    );
}

/// An origin on 127.0.0.1 that accepts connections and never answers: its port, and how many
/// connections it accepted (it keeps them open until the test's runtime ends).
async fn silent_origin() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::<std::sync::atomic::AtomicUsize>::default();
    let counter = std::sync::Arc::clone(&accepted);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    (port, accepted)
}

/// `geecache_plugin_http_request_duration_seconds_count{outcome="limited"}` of escape_getter.
async fn limited(node: &NodeProcess) -> f64 {
    value(
        &parse_exposition(&node.metrics_text().await),
        "geecache_plugin_http_request_duration_seconds_count",
        &[("outcome", "limited"), ("plugin", "escape_getter")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cannot_start_thousands_of_requests_to_an_origin_that_never_answers() {
    use std::sync::atomic::Ordering::SeqCst;
    let (origin_port, accepted) = silent_origin().await;
    let origin = format!("http://127.0.0.1:{origin_port}");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut command = node_command(
        env!("CARGO_BIN_EXE_geecache-node"),
        port,
        plugins::ESCAPE_GETTER,
    );
    let database = geecache_tests::demo_db(dir.path());
    command.args([
        "--plugin-config",
        &format!("escape_getter.database={}", database.display()),
        "--plugin-http",
        &format!("escape_getter={origin}"),
        "--plugin-timeout",
        "20s",
        "--plugin-http-concurrency",
        "24",
    ]);
    let node = NodeProcess::spawn(command, port, dir.path()).await;
    let client = reqwest::Client::new();
    let fanout = |n: usize| {
        let key = percent_encode(&format!("fanout:{n}:2500:{origin}/"));
        client
            .get(format!("{}/api/v1/groups/scores/keys/{key}", node.base))
            .send()
    };
    let started = |answer: reqwest::Response| async move {
        assert_eq!(answer.status(), 200);
        answer.text().await.unwrap()
    };

    // One call starting 3,000 requests: 16 reach the origin, the rest fail at once.
    let text = started(fanout(3000).await.unwrap()).await;
    assert_eq!(text, "started:3000 refused:0");
    assert_eq!(accepted.load(SeqCst), 16, "connections of one call");
    assert_eq!(limited(&node).await, 2984.0);

    // Two calls at once (two keys: no coalescing): the plugin's 24 between them.
    let (first, second) = (tokio::spawn(fanout(3001)), tokio::spawn(fanout(2999)));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Meanwhile the node answers its probe.
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
        .get(format!("{}/healthz", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 200);
    for call in [first, second] {
        let text = started(call.await.unwrap().unwrap()).await;
        assert!(text.starts_with("started:"), "{text}");
    }
    let both = accepted.load(SeqCst) - 16;
    assert!(
        both <= 24,
        "the origin accepted {both} connections of two calls"
    );
    assert!(limited(&node).await >= 2984.0 + 6000.0 - 24.0);
}
