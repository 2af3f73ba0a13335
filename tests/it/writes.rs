//! Writes that hold (issue 27): real nodes in this process on 127.0.0.1, the real `db_getter`
//! over SQLite, and `storage_basic` (whose puts of `slow…` keys take a second) as the storage
//! tier where a slow one is needed.
//!
//! - Read-your-writes: a `PUT` through a node that does not own the key, raced by gets on that
//!   node, is read back by the next get on every node, round after round.
//! - A client that disconnects mid-`PUT` does not stop it: the other nodes still drop their
//!   copies.
//! - A `PUT` answered 503 (storage too slow) never lands later.
//!
//! Every loop is bounded in count and time.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use geecache_host::group::PeerPicker as _;
use geecache_tests::{TestNode, plugins};

fn key_url(node: &TestNode, key: &str) -> String {
    format!("{}/api/v1/groups/scores/keys/{key}", node.base)
}

async fn put(node: &TestNode, key: &str, value: impl AsRef<[u8]>) -> (u16, String) {
    let r = node
        .client
        .put(key_url(node, key))
        .body(value.as_ref().to_vec())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The first key of the form `{prefix}{i}` that `owner` owns, as `other` sees the ring.
fn key_owned_by(other: &TestNode, owner: &TestNode, prefix: &str) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| {
            other
                .node
                .cluster
                .pick(k)
                .is_some_and(|p| p.id() == owner.addr.to_string())
        })
        .unwrap()
}

const DB: [&str; 4] = [
    "--plugin",
    plugins::DB_GETTER,
    "--plugin-config",
    "db_getter.database={db}",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_put_through_a_non_owner_is_read_back_on_every_node_while_gets_race_it() {
    let nodes = TestNode::cluster(2, &DB).await;
    let (front, owner) = (&nodes[0], &nodes[1]);
    let key = key_owned_by(front, owner, "ryw");
    assert_eq!(put(front, &key, "v0").await.0, 204);

    // Readers on the non-owner, all along: each miss there asks the owner, and from the
    // key's second fetch on keeps a hot copy.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (stop, reads) = (stop.clone(), reads.clone());
            let (client, url) = (front.client.clone(), key_url(front, &key));
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let r = client.get(&url).send().await.unwrap();
                    assert_eq!(r.status().as_u16(), 200);
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let started = Instant::now();
    let mut rounds = 0;
    for round in 1..=200 {
        if started.elapsed() > Duration::from_secs(30) {
            break;
        }
        let value = format!("v{round}");
        assert_eq!(put(front, &key, &value).await.0, 204, "round {round}");
        for node in [front, owner] {
            let (status, body) = node.get_key("scores", &key).await;
            assert_eq!(
                (status, body.as_str()),
                (200, value.as_str()),
                "round {round}: {} served an old value after the PUT's 204",
                node.base
            );
        }
        rounds = round;
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    assert!(rounds >= 20, "only {rounds} rounds ran");
    assert!(reads.load(Ordering::Relaxed) > 0);
    let stats = front.group_stats("scores").await;
    assert!(
        stats["hot_hits"].as_u64().unwrap() > 0,
        "the race was real: the non-owner served hot copies: {stats}"
    );
}

/// Two nodes, each with `storage_basic` as the storage tier of `scores`, and `extra` flags.
async fn stored_cluster(extra: &[&str]) -> Vec<TestNode> {
    let mut args = DB.to_vec();
    args.extend(["--plugin", plugins::STORAGE_BASIC, "--plugin-timeout", "5s"]);
    args.extend_from_slice(extra);
    TestNode::cluster(2, &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_disconnects_mid_put_does_not_stop_the_invalidation() {
    let nodes = stored_cluster(&[]).await;
    let (owner, other) = (&nodes[0], &nodes[1]);
    // A `slow…` key: its storage put takes a second.
    let key = key_owned_by(other, owner, "slow-gone");
    assert_eq!(put(owner, &key, "old").await.0, 204);
    // The other node keeps a hot copy (from the key's second fetch on).
    for _ in 0..3 {
        assert_eq!(other.get_key("scores", &key).await, (200, "old".to_owned()));
    }
    assert!(
        other.group_stats("scores").await["hot_hits"]
            .as_u64()
            .unwrap()
            > 0
    );

    // The client gives up (and its connection closes) while storage still has the write.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gave_up = impatient.put(key_url(owner, &key)).body("new").send().await;
    assert!(
        gave_up.is_err(),
        "the PUT answered within 300 ms: {gave_up:?}"
    );
    drop(impatient);

    // The write goes on: storage, then the other node is told to drop its copy. (Before, it
    // was cut off with the request, and the other node served "old" for up to 60 s.)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = other.get_key("scores", &key).await;
        if answer == (200, "new".to_owned()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the other node still serves {answer:?} 10 s after the write"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(owner.get_key("scores", &key).await, (200, "new".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_whose_client_left_keeps_its_body_reserved_until_it_lands() {
    // Room for one 1 MiB body in flight, not for a second body of half that beside it.
    let mut args = DB.to_vec();
    args.extend([
        "--plugin",
        plugins::STORAGE_BASIC,
        "--plugin-timeout",
        "10s",
        "--request-timeout",
        "10s",
        "--max-body-bytes",
        "1MiB",
        "--max-batch-bytes",
        "64KiB",
        "--max-inflight-body-bytes",
        "1280KiB",
    ]);
    let node = TestNode::start(&args).await;
    // A `slow5…` key: its storage put takes five seconds; its client gives up after one.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let big = vec![b'x'; 1 << 20];
    let gave_up = impatient
        .put(key_url(&node, "slow5-held"))
        .body(big.clone())
        .send()
        .await;
    assert!(gave_up.is_err(), "the PUT answered within 1 s: {gave_up:?}");
    drop(impatient);

    // The write still holds its 1 MiB (it goes on to storage): half as much again is refused.
    let half = vec![b'y'; 512 << 10];
    // The node answers 503 before it reads the body and then closes that connection; a client
    // of its own keeps the pool of `node.client` from handing the closing connection to the gets
    // below (seen in CI: their request failed with a broken pipe).
    let refused = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let r = refused
        .put(key_url(&node, "beside"))
        .body(half.clone())
        .send()
        .await
        .unwrap();
    let (status, body) = (r.status().as_u16(), r.text().await.unwrap());
    drop(refused);
    assert_eq!(
        status, 503,
        "a 512 KiB PUT beside a 1 MiB write still running, in a 1.25 MiB budget: {body}"
    );
    assert!(body.contains("busy"), "{body}");

    // Once it has landed, its bytes are given back.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, value) = node.get_key("scores", "slow5-held").await;
        if status == 200 {
            assert_eq!(value.len(), big.len());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the write never landed ({status})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(put(&node, "beside", half).await.0, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_put_answered_503_never_comes_back() {
    // Storage takes a second for `slow…` keys; the request may take half of one.
    let mut args = DB.to_vec();
    args.extend([
        "--plugin",
        plugins::STORAGE_BASIC,
        "--plugin-timeout",
        "5s",
        "--request-timeout",
        "500ms",
    ]);
    let node = TestNode::start(&args).await;
    let (status, body) = put(&node, "slow-failed", "failed").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("storage_unavailable"), "{body}");
    // The put lands after its 503, and is deleted again at once; memory never kept it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.group_stats("scores").await["storage_writes_abandoned"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the abandoned write was not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let (status, body) = node.get_key("scores", "slow-failed").await;
        assert_eq!(status, 404, "the value answered 503 came back: {body}");
    }
    let metrics = node.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("geecache_storage_writes_abandoned_total") && l.ends_with(" 1")),
        "{metrics}"
    );
}

/// Bytes of the entry files `fs_storage` keeps under `dir`.
fn stored_bytes(dir: &std::path::Path) -> u64 {
    geecache_tests::fs_storage_entries(dir)
        .iter()
        .map(|f| f.metadata().unwrap().len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_at_its_storage_quota_refuses_writes_with_a_clear_error() {
    const QUOTA: u64 = 64 << 10;
    let stored = tempfile::tempdir().unwrap();
    let grant = format!("fs_storage={}:rw", stored.path().display());
    let mut args = DB.to_vec();
    args.extend([
        "--plugin",
        plugins::FS_STORAGE,
        "--plugin-dir",
        &grant,
        "--plugin-config",
        "fs_storage.quota_bytes=64KiB",
    ]);
    let node = TestNode::start(&args).await;
    let value = "q".repeat(4 << 10);
    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..200 {
        let key = format!("quota-{i}");
        match put(&node, &key, &value).await {
            (204, _) => accepted.push(key),
            (status, body) => {
                refused = Some((status, body));
                break;
            }
        }
    }
    let (status, body) = refused.expect("200 values of 4 KiB all fit in a 64 KiB quota");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("storage_unavailable") && body.contains("quota"),
        "{body}"
    );
    assert!(
        accepted.len() >= 4 && accepted.len() <= 16,
        "{} values of 4 KiB taken by a 64 KiB quota",
        accepted.len()
    );
    let used = stored_bytes(stored.path());
    assert!(
        used <= QUOTA,
        "{used} bytes stored under a {QUOTA}-byte quota"
    );
    // What was taken is served; one value larger than the whole quota is refused outright.
    assert_eq!(
        node.get_key("scores", &accepted[0]).await,
        (200, value.clone())
    );
    let (status, body) = put(&node, "quota-huge", &"h".repeat(80 << 10)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("quota"), "{body}");
}
