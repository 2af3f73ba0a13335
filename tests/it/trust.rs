//! Trust inside the cluster (issue 27): a ring member that does not know the cluster secret
//! can answer, but its answers are never used. A real node (in this process) whose static ring
//! holds a forger: an HTTP server speaking the peer protocol without the secret, serving a
//! well-formed value "forged" for every key, and saying yes to every rollout step.
//!
//! And a node process with a secret, restarted: a signed PUT dated far ahead of its clock is
//! refused, before and after the restart.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;
use geecache_host::compression::Encoding;
use geecache_host::error::Error;
use geecache_host::peer::{Entries, PeerEntry, PeerService};
use geecache_tests::{NodeProcess, TestNode, admin_post, db_getter_node, free_port, plugins};

/// Answers every get with a value "forged", stored as a node would store it.
#[derive(Debug, Default)]
struct Forger {
    gets: AtomicU64,
}

impl Entries for Forger {
    fn get<'a>(
        &'a self,
        _group: &'a str,
        _key: &'a str,
    ) -> BoxFuture<'a, Result<Option<PeerEntry>, Error>> {
        Box::pin(async move {
            self.gets.fetch_add(1, Ordering::Relaxed);
            let stored = Encoding::default().encode(b"forged").await.unwrap();
            Ok(Some(PeerEntry {
                value: stored.framed(),
                codec: "none".into(),
                expires_at_ms: None,
            }))
        })
    }

    fn set<'a>(
        &'a self,
        _group: &'a str,
        _key: &'a str,
        _entry: PeerEntry,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    fn delete<'a>(&'a self, _group: &'a str, _key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}

impl PeerService for Forger {
    fn invalidate<'a>(
        &'a self,
        _group: &'a str,
        _keys: &'a [String],
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_the_secret_never_gets_a_forged_value_to_a_client() {
    let forger = Arc::new(Forger::default());
    let (forger_addr, _) = serve_forger(forger.clone()).await;

    let node =
        TestNode::with_db_getter(&["--peers", &forger_addr, "--cluster-secret", "s3cret"]).await;
    // Keys the forger owns are asked of it; its answers are unsigned, so the node loads them
    // itself (on main: the forged value was served, and cached as a hot copy).
    let mut answered = 0;
    for i in 0..64 {
        let key = if i == 0 {
            "Tom".to_string()
        } else {
            format!("k{i}")
        };
        let (status, body) = node.get(&format!("/api/v1/groups/scores/keys/{key}")).await;
        assert_ne!(body, b"forged", "{key}: a forged value reached the client");
        assert!(status == 200 || status == 404, "{key}: {status}");
        if key == "Tom" {
            assert_eq!((status, body.as_slice()), (200, b"630".as_slice()));
        }
        answered += 1;
    }
    assert_eq!(answered, 64);
    assert!(
        forger.gets.load(Ordering::Relaxed) > 0,
        "the forger owned some keys and was asked"
    );
    let metrics = node.metrics_text().await;
    let unsigned = metrics
        .lines()
        .filter(|l| {
            l.starts_with("geecache_peer_request_duration_seconds_count")
                && l.contains("outcome=\"peer_answer_unsigned\"")
        })
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum::<f64>();
    assert!(unsigned > 0.0, "unsigned answers are counted:\n{metrics}");
}

/// Serves `forger` as a peer, plus a yes to every cluster rollout step and flush; its address,
/// and how many such admin requests it was asked.
async fn serve_forger(forger: Arc<Forger>) -> (String, Arc<AtomicU64>) {
    let steps = Arc::new(AtomicU64::new(0));
    let counted = steps.clone();
    let yes = axum::routing::post(move || {
        counted.fetch_add(1, Ordering::Relaxed);
        async {
            axum::Json(serde_json::json!({ "ok": true, "group": "scores", "storage": "cleared" }))
        }
    });
    let yes = axum::Router::new()
        .route("/_geecache_admin/plugins/{*rest}", yes.clone())
        .route("/_geecache_admin/flush/{*rest}", yes);
    let app = geecache_host::peer::router(forger, None).merge(yes);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, steps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_the_secret_cannot_say_yes_to_a_rollout() {
    let (forger_addr, steps) = serve_forger(Arc::default()).await;
    let plugin = format!("reload_getter={}", plugins::RELOAD_GETTER_V1);
    let node = TestNode::start(&[
        "--plugin",
        &plugin,
        "--peers",
        &forger_addr,
        "--cluster-secret",
        "s3cret",
    ])
    .await;
    let sha = |node: &TestNode| {
        let c = node.client.clone();
        let url = format!("{}/api/v1/plugins/reload_getter", node.base);
        async move {
            let view: serde_json::Value = c.get(url).send().await.unwrap().json().await.unwrap();
            view["sha256"].as_str().unwrap().to_owned()
        }
    };
    let before = sha(&node).await;
    let rollout = format!(
        "{}/api/v1/plugins/reload_getter/reload?cluster=true&path={}",
        node.base,
        plugins::RELOAD_GETTER_V2
    );
    let (status, body) = admin_post(&node.client, &rollout).await;
    // On main the forger's yes counted: the rollout committed, as if it had staged v2.
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["committed"], false, "{body}");
    assert!(
        body.to_string()
            .contains("not signed with the cluster secret"),
        "{body}"
    );
    assert!(steps.load(Ordering::Relaxed) > 0, "the forger was asked");
    assert_eq!(sha(&node).await, before, "the node kept serving v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_the_secret_cannot_say_it_flushed() {
    let (forger_addr, steps) = serve_forger(Arc::default()).await;
    let node =
        TestNode::with_db_getter(&["--peers", &forger_addr, "--cluster-secret", "s3cret"]).await;
    let flush = format!("{}/api/v1/groups/scores/flush?cluster=true", node.base);
    let (status, body) = admin_post(&node.client, &flush).await;
    // Without the answer check, the forger's unsigned yes made the flush complete.
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["complete"], false, "{body}");
    let nodes = body["nodes"].as_array().unwrap();
    let forged = nodes
        .iter()
        .find(|n| n["node"] == forger_addr.as_str())
        .unwrap_or_else(|| panic!("no report for the forger: {body}"));
    assert_eq!(forged["ok"], false, "{body}");
    assert!(
        forged
            .to_string()
            .contains("not signed with the cluster secret"),
        "{body}"
    );
    assert!(steps.load(Ordering::Relaxed) > 0, "the forger was asked");
}

/// A signed PUT dated 25 s ahead of the node's clock was taken (204), and taken again when
/// replayed after the node restarted, rolling the value back: a node now takes dates at most
/// 1 s ahead of its clock (and, as before, after a restart nothing dated before its start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_dated_far_ahead_is_refused_before_and_after_a_restart() {
    use geecache_host::peer::auth::{
        CONTENT_SHA256_HEADER, DATE_HEADER, NONCE_HEADER, SIGNATURE_HEADER, new_nonce, unix_now,
    };
    use geecache_host::peer::{CONTENT_TYPE, ClusterSecret, proto};
    use prost::Message as _;

    let dir = tempfile::tempdir().unwrap();
    let db = geecache_tests::demo_db(dir.path());
    let port = free_port();
    let start = || {
        let mut command = db_getter_node(env!("CARGO_BIN_EXE_geecache-node"), port, &db);
        command.args(["--cluster-secret", "s3cret"]);
        NodeProcess::spawn(command, port, dir.path())
    };
    let node = start().await;
    let secret = ClusterSecret::new("s3cret").unwrap();
    let (authority, path) = (format!("127.0.0.1:{port}"), "/_geecache/scores/Tom");
    let stored = Encoding::default().encode(b"rolled back").await.unwrap();
    let body = proto::SetRequest {
        entry: Some(
            PeerEntry {
                value: stored.framed(),
                codec: "none".into(),
                expires_at_ms: None,
            }
            .into(),
        ),
    }
    .encode_to_vec();
    let (date, nonce) = (unix_now() + 25, new_nonce());
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body));
    let signature = secret.sign("PUT", &authority, path, date, &nonce, &hash);
    let put = || async {
        reqwest::Client::new()
            .put(format!("http://{authority}{path}"))
            .header("content-type", CONTENT_TYPE)
            .header(DATE_HEADER, date.to_string())
            .header(NONCE_HEADER, &nonce)
            .header(CONTENT_SHA256_HEADER, &hash)
            .header(SIGNATURE_HEADER, &signature)
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(put().await, 401);
    drop(node);
    let node = start().await;
    assert_eq!(put().await, 401, "replayed after the restart");
    // Counted by reason: the clocks are (as far as the node can tell) apart.
    let metrics = node.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("geecache_peer_requests_refused_total{")
                && l.contains("reason=\"clock\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    let value = reqwest::get(format!("{}/api?key=Tom", node.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(value, "630");
}
