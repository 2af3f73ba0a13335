//! Stopping a node: `/readyz` turns 503 while the node still serves (the shutdown grace), and
//! what a node acknowledged or queued for its storage tier (the real `fs_storage` plugin)
//! is there for the next process over the same directory.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use geecache_tests::{TestNode, plugins};

/// GET on a new connection (a new client has no pooled one): what a load balancer's next
/// request does.
async fn fresh_get(node: &TestNode, path: &str) -> (u16, Vec<u8>) {
    let resp = reqwest::Client::new()
        .get(format!("{}{path}", node.base))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_first_and_the_node_serves_through_the_grace() {
    // A grace far longer than the test: the node is still in it when the test ends.
    let mut node = TestNode::with_db_getter(&["--shutdown-grace", "10m"]).await;
    assert_eq!(fresh_get(&node, "/readyz").await.0, 200);
    node.signal_shutdown();
    let mut ready = 200;
    for _ in 0..500 {
        ready = fresh_get(&node, "/readyz").await.0;
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ready, 503, "/readyz never said the node is draining");
    let (status, body) = fresh_get(&node, "/api?key=Tom").await;
    assert_eq!((status, body.as_slice()), (200, b"630".as_slice()));
}

/// A node with `db_getter` and `fs_storage` keeping its files in `dir`.
async fn stored_node(dir: &std::path::Path) -> TestNode {
    let grant = format!("fs_storage={}:rw", dir.display());
    TestNode::start(&[
        "--plugin",
        plugins::DB_GETTER,
        "--plugin-config",
        "db_getter.database={db}",
        "--plugin",
        plugins::FS_STORAGE,
        "--plugin-dir",
        &grant,
    ])
    .await
}

/// Runs `f` on a runtime of its own and then drops that runtime, as the end of a process
/// does: whatever the node left in a task is gone.
fn in_a_process<F: std::future::Future<Output = ()>>(f: F) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(f);
}

const PUTS: usize = 100;
const LOADS: usize = 1000;

fn loaded_keys() -> Vec<String> {
    (1..=LOADS).map(|i| format!("user{i:06}")).collect()
}

/// Loads [`loaded_keys`] in one batch request: their write-through to storage is queued in the
/// background.
async fn load_many(node: &TestNode) {
    let resp = node
        .client
        .post(format!("{}/api/v1/groups/scores/batch", node.base))
        .json(&serde_json::json!({ "keys": loaded_keys() }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[test]
fn acknowledged_puts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    in_a_process(async {
        let node = stored_node(dir.path()).await;
        // Fill the storage queues, so that the PUTs' writes queue behind many others...
        load_many(&node).await;
        // ...then set values that exist only because a client PUT them, all at once, and stop
        // as soon as they are acknowledged.
        let puts = (0..PUTS).map(|i| {
            node.client
                .put(format!("{}/api/v1/groups/scores/keys/put{i:03}", node.base))
                .body(format!("value {i}"))
                .send()
        });
        for resp in futures::future::join_all(puts).await {
            assert_eq!(resp.unwrap().status(), 204);
        }
        node.stop().await;
    });
    in_a_process(async {
        // A new node (a new database, which does not know these keys) over the same storage.
        let node = stored_node(dir.path()).await;
        for i in 0..PUTS {
            let (status, body) = node
                .get(&format!("/api/v1/groups/scores/keys/put{i:03}"))
                .await;
            assert_eq!(
                (status, String::from_utf8_lossy(&body).into_owned()),
                (200, format!("value {i}")),
                "acknowledged PUT put{i:03} was lost"
            );
        }
        node.stop().await;
    });
}

#[test]
fn queued_write_throughs_are_drained_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    in_a_process(async {
        let node = stored_node(dir.path()).await;
        load_many(&node).await;
        // Most write-throughs are still queued now.
        node.stop().await;
    });
    in_a_process(async {
        let node = stored_node(dir.path()).await;
        load_many(&node).await;
        let stats = node.group_stats("scores").await;
        assert_eq!(
            stats["storage_hits"].as_u64().unwrap(),
            LOADS as u64,
            "every value came from storage: {stats}"
        );
        assert_eq!(stats["getter_calls"], 0, "{stats}");
        node.stop().await;
    });
}
