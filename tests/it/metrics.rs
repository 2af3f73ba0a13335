//! `/metrics` against real consumers: a real Prometheus scraping a real node, promtool's lint,
//! counters that move exactly as driven (one node and an in-process cluster), labels that never
//! carry a key, and the example scrape config and dashboard.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::prometheus::{
    PrometheusServer, Sample, parse_exposition, percent_encode, promtool, value,
};
use geecache_host::group::PeerPicker as _;
use geecache_tests::{TestNode, repo_root};

/// How long a value may take to reach Prometheus (scraped every second).
const SCRAPE_DEADLINE: Duration = Duration::from_secs(30);

async fn samples(node: &TestNode) -> Vec<Sample> {
    parse_exposition(&node.metrics_text().await)
}

fn group_value(samples: &[Sample], name: &str, tier: Option<&str>) -> f64 {
    let mut labels = vec![("group", "scores")];
    labels.extend(tier.map(|t| ("tier", t)));
    value(samples, name, &labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_sees_exactly_the_hits_and_misses_caused() {
    let node = TestNode::with_db_getter(&[]).await;
    let prom = PrometheusServer::start(&[node.addr]);
    const N: usize = 7;
    // One miss (loads Tom into the main cache), then N hits; one miss for a missing key, then
    // one negative hit.
    for _ in 0..=N {
        assert_eq!(node.get("/api?key=Tom").await, (200, b"630".to_vec()));
    }
    assert_eq!(node.get("/api?key=Nobody").await.0, 404);
    assert_eq!(node.get("/api?key=Nobody").await.0, 404);

    let expect = [
        (
            r#"geecache_cache_hits_total{group="scores",tier="main"}"#,
            N as f64 + 1.0,
        ),
        (
            r#"geecache_cache_hits_total{group="scores",tier="hot"}"#,
            0.0,
        ),
        (
            r#"geecache_cache_misses_total{group="scores",tier="main"}"#,
            2.0,
        ),
        (
            r#"geecache_cache_misses_total{group="scores",tier="hot"}"#,
            2.0,
        ),
        (r#"geecache_cache_negative_hits_total{group="scores"}"#, 1.0),
        (r#"geecache_gets_total{group="scores"}"#, N as f64 + 3.0),
        (r#"geecache_local_loads_total{group="scores"}"#, 2.0),
        (
            r#"sum(geecache_http_request_duration_seconds_count{route="/api",status="200"})"#,
            N as f64 + 1.0,
        ),
        (r#"up{job="geecache"}"#, 1.0),
    ];
    for (query, expected) in expect {
        if let Err(e) = prom.wait_for_value(query, expected, SCRAPE_DEADLINE).await {
            panic!("{e}\nprometheus log:\n{}", prom.log());
        }
    }
    // The same numbers through the JSON stats.
    let stats = node.group_stats("scores").await;
    assert_eq!(stats["hits"], N as u64 + 1);
    assert_eq!(stats["misses"], 2);
    node.stop().await;
}

#[tokio::test]
async fn promtool_finds_no_problem_in_the_metrics_page() {
    let nodes = TestNode::cluster(2, &db_getter_args()).await;
    drive_every_kind_of_request(&nodes, &warm_up_keys(&nodes)).await;
    for node in &nodes {
        let text = node.metrics_text().await;
        assert!(text.contains("geecache_peer_request_duration_seconds_bucket"));
        let (ok, report) = promtool(&["check", "metrics"], &text);
        assert!(
            ok && report.trim().is_empty(),
            "promtool check metrics: {report}\n{text}"
        );
    }
    stop_all(nodes).await;
}

#[tokio::test]
async fn n_gets_of_a_cached_key_are_n_hits_and_stats_agree() {
    let node = TestNode::with_db_getter(&[]).await;
    node.get("/api?key=Jack").await;
    let before = samples(&node).await;
    const N: u64 = 25;
    for _ in 0..N {
        assert_eq!(
            node.get("/api/v1/groups/scores/keys/Jack").await,
            (200, b"589".to_vec())
        );
    }
    let after = samples(&node).await;
    let delta = |name: &str, tier: Option<&str>| {
        group_value(&after, name, tier) - group_value(&before, name, tier)
    };
    assert_eq!(delta("geecache_cache_hits_total", Some("main")), N as f64);
    assert_eq!(delta("geecache_gets_total", None), N as f64);
    assert_eq!(delta("geecache_cache_misses_total", Some("main")), 0.0);
    assert_eq!(delta("geecache_loads_total", None), 0.0);
    assert_eq!(
        value(
            &after,
            "geecache_http_request_duration_seconds_count",
            &[
                ("route", "/api/v1/groups/{group}/keys/{key}"),
                ("method", "GET"),
                ("status", "200")
            ]
        ),
        N as f64
    );
    // Every counter of /api/v1/stats has the same value in /metrics (nothing moves meanwhile).
    let stats = node.group_stats("scores").await;
    let text = samples(&node).await;
    for (field, name, tier) in [
        ("gets", "geecache_gets_total", None),
        ("hits", "geecache_cache_hits_total", Some("main")),
        ("hot_hits", "geecache_cache_hits_total", Some("hot")),
        ("main_misses", "geecache_cache_misses_total", Some("main")),
        ("misses", "geecache_cache_misses_total", Some("hot")),
        ("loads", "geecache_loads_total", None),
        ("getter_calls", "geecache_local_loads_total", None),
        ("getter_errors", "geecache_local_load_errors_total", None),
        ("peer_errors", "geecache_peer_load_errors_total", None),
        ("cache_items", "geecache_cache_items", Some("main")),
        ("cache_bytes", "geecache_cache_bytes", Some("main")),
    ] {
        assert_eq!(
            stats[field].as_f64().unwrap(),
            group_value(&text, name, tier),
            "{field} vs {name}"
        );
    }
    let plugin = node.plugin_stats("db_getter").await;
    assert_eq!(
        plugin["calls"].as_f64().unwrap(),
        value(
            &text,
            "geecache_plugin_calls_total",
            &[("plugin", "db_getter"), ("kind", "getter")]
        )
    );
    assert_eq!(plugin["timeouts"], 0);
    assert_eq!(value(&text, "geecache_ring_members", &[]), 1.0);
    assert_eq!(
        value(&text, "geecache_registration_state", &[("state", "static")]),
        1.0
    );
    node.stop().await;
}

fn db_getter_args() -> Vec<&'static str> {
    vec![
        "--plugin",
        geecache_tests::plugins::DB_GETTER,
        "--plugin-config",
        "db_getter.database={db}",
    ]
}

async fn stop_all(nodes: Vec<TestNode>) {
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn a_peer_fetch_is_one_peer_load_on_the_requester_and_one_local_load_on_the_owner() {
    let nodes = TestNode::cluster(2, &db_getter_args()).await;
    let (requester, owner) = (&nodes[0], &nodes[1]);
    let owner_addr = owner.addr.to_string();
    let key = (1..1000)
        .map(|i| format!("user{i:06}"))
        .find(|k| {
            requester
                .node
                .cluster
                .pick(k)
                .is_some_and(|p| p.id() == owner_addr)
        })
        .unwrap();
    let (status, body) = requester.get(&format!("/api?key={key}")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    let asked = samples(requester).await;
    assert_eq!(group_value(&asked, "geecache_peer_loads_total", None), 1.0);
    assert_eq!(group_value(&asked, "geecache_loads_total", None), 1.0);
    assert_eq!(group_value(&asked, "geecache_local_loads_total", None), 0.0);
    assert_eq!(
        group_value(&asked, "geecache_peer_load_errors_total", None),
        0.0
    );
    assert_eq!(
        value(
            &asked,
            "geecache_peer_request_duration_seconds_count",
            &[("peer", &owner_addr), ("op", "get"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(value(&asked, "geecache_ring_members", &[]), 2.0);

    let answered = samples(owner).await;
    assert_eq!(
        group_value(&answered, "geecache_local_loads_total", None),
        1.0
    );
    assert_eq!(group_value(&answered, "geecache_loads_total", None), 1.0);
    assert_eq!(
        group_value(&answered, "geecache_peer_requests_served_total", None),
        1.0
    );
    assert_eq!(
        group_value(&answered, "geecache_peer_loads_total", None),
        0.0
    );
    assert_eq!(group_value(&answered, "geecache_gets_total", None), 0.0);
    assert_eq!(
        value(
            &answered,
            "geecache_http_request_duration_seconds_count",
            &[("route", "/_geecache/{*path}"), ("status", "200")]
        ),
        1.0
    );

    // The second fetch from the owner keeps a hot copy (a key fetched once is not kept);
    // further gets on the requester are hot-cache hits, and the owner hears nothing more.
    assert_eq!(requester.get(&format!("/api?key={key}")).await.0, 200);
    for _ in 0..4 {
        assert_eq!(requester.get(&format!("/api?key={key}")).await.0, 200);
    }
    let asked = samples(requester).await;
    assert_eq!(
        group_value(&asked, "geecache_cache_hits_total", Some("hot")),
        4.0
    );
    assert_eq!(group_value(&asked, "geecache_peer_loads_total", None), 2.0);
    let answered = samples(owner).await;
    assert_eq!(
        group_value(&answered, "geecache_peer_requests_served_total", None),
        2.0
    );
    stop_all(nodes).await;
}

/// Every kind of request the API and the peer protocol serve, for each of `keys`, on every
/// node: classic and REST gets (found and missing), percent-encoded keys, batch, set, remove.
async fn drive_every_kind_of_request(nodes: &[TestNode], keys: &[impl AsRef<str>]) {
    for node in nodes {
        for key in keys {
            let key = key.as_ref();
            let encoded = percent_encode(key);
            node.get(&format!("/api?key={encoded}")).await;
            node.get(&format!("/api?key={encoded}-missing")).await;
            node.get(&format!("/api/v1/groups/scores/keys/{encoded}"))
                .await;
            node.get(&format!("/api/v1/groups/scores/keys/{encoded}-missing"))
                .await;
            let url = format!("{}/api/v1/groups/scores/keys/{encoded}-set", node.base);
            let put = node.client.put(&url).body("v").send().await.unwrap();
            assert_eq!(put.status(), 204);
            let del = node.client.delete(&url).send().await.unwrap();
            assert_eq!(del.status(), 204);
            let batch = node
                .client
                .post(format!("{}/api/v1/groups/scores/batch", node.base))
                .body(serde_json::json!({ "keys": [key, format!("{key}-b")] }).to_string())
                .header("content-type", "application/json")
                .send()
                .await
                .unwrap();
            assert_eq!(batch.status(), 200);
            node.get(&format!("/no/such/route/{encoded}")).await;
        }
    }
}

/// Keys (`user000001`, ...) such that, for every key shape [`drive_every_kind_of_request`] uses
/// (the key, `-missing`, `-set`, `-b`), each node owns one and does not own another.
fn warm_up_keys(nodes: &[TestNode]) -> Vec<String> {
    const SHAPES: [&str; 4] = ["", "-missing", "-set", "-b"];
    let owner = |key: &str| nodes[0].node.cluster.pick(key).map(|p| p.id().to_string());
    let mut seen = BTreeSet::new();
    let mut keys = Vec::new();
    for i in 1..1000 {
        let key = format!("user{i:06}");
        let mut adds = false;
        for shape in SHAPES {
            adds |= seen.insert((shape, owner(&format!("{key}{shape}"))));
        }
        if adds {
            keys.push(key);
        }
        if seen.len() == SHAPES.len() * nodes.len() {
            return keys;
        }
    }
    panic!("no keys cover every owner: {seen:?}");
}

/// The series of every node (name and labels, without `le` buckets' values), once every
/// background invalidation has landed: two reads a second apart that agree.
async fn settled_series(nodes: &[TestNode]) -> BTreeSet<String> {
    let read = || async {
        let mut series = BTreeSet::new();
        for (i, node) in nodes.iter().enumerate() {
            for s in samples(node).await {
                series.insert(format!("node{i} {} {:?}", s.name, s.labels));
            }
        }
        series
    };
    let mut last = read().await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = read().await;
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the series never settled");
}

#[tokio::test]
async fn no_label_carries_a_key_and_the_series_do_not_grow_with_the_keys() {
    let nodes = TestNode::cluster(2, &db_getter_args()).await;
    // Warm up: every kind of request on keys each node owns and keys it does not, so every
    // route, status, op, peer and outcome has its series.
    drive_every_kind_of_request(&nodes, &warm_up_keys(&nodes)).await;
    let before = settled_series(&nodes).await;

    // Many fresh keys, some with characters that need encoding, some that exist.
    let mut seed: u64 = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut keys: Vec<String> = (0..60)
        .map(|i| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            match i % 3 {
                0 => format!("k-{seed:016x}"),
                1 => format!("user{:06}", seed % 100_000 + 1),
                _ => format!("a b/{seed:x}%"),
            }
        })
        .collect();
    keys.sort();
    keys.dedup();
    drive_every_kind_of_request(&nodes, &keys).await;
    let after = settled_series(&nodes).await;
    let new: Vec<&String> = after.difference(&before).collect();
    assert!(new.is_empty(), "series grew with the keys: {new:#?}");

    for node in &nodes {
        for s in samples(node).await {
            for (label, v) in &s.labels {
                assert!(
                    !keys.iter().any(|k| v.contains(k.as_str())),
                    "{} has a key in label {label}={v:?}",
                    s.name
                );
            }
        }
    }
    stop_all(nodes).await;
}

#[tokio::test]
async fn the_example_scrape_config_and_dashboard_are_valid_and_use_real_metric_names() {
    let root = repo_root();
    let config = root.join("deploy/prometheus.yml");
    let (ok, report) = promtool(&["check", "config", config.to_str().unwrap()], "");
    assert!(ok, "promtool check config deploy/prometheus.yml: {report}");

    // The names the node exports (histograms under their series names).
    let nodes = TestNode::cluster(2, &db_getter_args()).await;
    drive_every_kind_of_request(&nodes, &warm_up_keys(&nodes)).await;
    let exported: BTreeSet<String> = samples(&nodes[0])
        .await
        .into_iter()
        .map(|s| s.name)
        .collect();
    stop_all(nodes).await;

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert!(dashboard["title"].is_string() && dashboard["panels"].is_array());
    let mut exprs = Vec::new();
    collect_exprs(&dashboard["panels"], &mut exprs);
    assert!(exprs.len() >= 5, "{exprs:?}");

    // Every expression is valid PromQL (checked by promtool as recording rules, with Grafana's
    // variables filled in) and names only metrics the node exports.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$group", "scores")
            .replace("$instance", "127.0.0.1:9999");
        rules.push_str(&format!(
            "      - record: dashboard:expr{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
        for name in metric_names(&expr) {
            assert!(
                exported.contains(&name),
                "the dashboard uses {name}, which the node does not export: {expr}"
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let rules_path = dir.path().join("rules.yml");
    std::fs::write(&rules_path, &rules).unwrap();
    let (ok, report) = promtool(&["check", "rules", rules_path.to_str().unwrap()], "");
    assert!(ok, "promtool check rules: {report}\n{rules}");
}

fn collect_exprs(panels: &serde_json::Value, out: &mut Vec<String>) {
    for panel in panels.as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(expr.to_string());
            }
        }
        collect_exprs(&panel["panels"], out);
    }
}

/// The `geecache_*` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("geecache_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}
