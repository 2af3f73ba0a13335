//! `POST /api/v1/groups/{group}/flush`: real nodes on 127.0.0.1, the real `db_getter` over
//! SQLite, the real `fs_storage` (and `storage_basic`, a storage plugin without
//! `storage-clear`), a real static cluster signing its admin requests.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use geecache_tests::{ADMIN_TOKEN, TestNode, admin_post, fs_storage_entries, plugins};

/// `POST {base}{path}` with the admin token: status and JSON answer.
async fn post(node: &TestNode, path: &str) -> (u16, serde_json::Value) {
    admin_post(&node.client, &format!("{}{path}", node.base)).await
}

/// How many entry files `fs_storage` keeps under `dir` (see [`fs_storage_entries`]).
fn stored_files(dir: &Path) -> usize {
    fs_storage_entries(dir).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flush_drops_memory_and_storage_and_the_next_get_loads_again() {
    let stored = tempfile::tempdir().unwrap();
    let grant = format!("fs_storage={}:rw", stored.path().display());
    let node =
        TestNode::with_db_getter(&["--plugin", plugins::FS_STORAGE, "--plugin-dir", &grant]).await;
    assert_eq!(node.get("/api?key=Tom").await.1, b"630");
    let (_, view) = node.get_json("/api/v1/plugins/fs_storage").await;
    assert_eq!(view["can_clear"], true, "{view}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored_files(stored.path()) == 0 {
        assert!(Instant::now() < deadline, "Tom never reached fs_storage");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (status, body) = post(&node, "/api/v1/groups/scores/flush").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["group"], "scores");
    assert_eq!(body["storage"], "cleared", "{body}");
    assert_eq!(stored_files(stored.path()), 0, "the group's files are gone");
    // Not in memory, not in storage: the getter is asked again.
    assert_eq!(node.get("/api?key=Tom").await.1, b"630");
    let stats = node.group_stats("scores").await;
    assert_eq!(stats["getter_calls"], 2, "{stats}");
    assert_eq!(stats["storage_hits"], 0, "{stats}");

    // Bad requests get clear errors.
    let (status, body) = post(&node, "/api/v1/groups/nope/flush").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("group_not_found"))
    );
    let r = node
        .client
        .get(format!("{}/api/v1/groups/scores/flush", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    // A whole-cluster flush needs the cluster secret (its requests are signed).
    let (status, body) = post(&node, "/api/v1/groups/scores/flush?cluster=true").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--cluster-secret")
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flush_says_when_the_storage_plugin_cannot_clear_and_needs_the_admin_token() {
    let node =
        TestNode::with_db_getter(&["--plugin", plugins::STORAGE_BASIC, "--api-token", "s3cret"])
            .await;
    assert_eq!(node.get("/api?key=Tom").await.1, b"630");
    let flush = format!("{}/api/v1/groups/scores/flush", node.base);
    let r = node.client.post(&flush).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "a flush is an admin route");
    let r = node
        .client
        .post(&flush)
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
        .post(&flush)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "storage_not_cleared", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("memory was flushed")
            && message.contains("storage_basic")
            && message.contains("storage-clear"),
        "{message}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_plugin_written_before_clear_existed_builds_loads_and_keeps_its_entries() {
    // compat_storage implements the SDK's Storage trait without `clear`, as plugins did
    // before it existed: the SDK's default answers "not supported".
    let node = TestNode::with_db_getter(&["--plugin", plugins::COMPAT_STORAGE]).await;
    assert_eq!(node.get("/api?key=Tom").await.1, b"630");
    let r = node
        .client
        .post(format!("{}/api/v1/groups/scores/flush", node.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "storage_not_cleared", "{body}");
    assert_eq!(
        node.get("/api?key=Tom").await.1,
        b"630",
        "memory was flushed, storage kept it"
    );
    node.stop().await;
}

/// Getter calls of group `scores`, all nodes together.
async fn getter_calls(nodes: &[TestNode]) -> u64 {
    let mut calls = 0;
    for n in nodes {
        calls += n.group_stats("scores").await["getter_calls"]
            .as_u64()
            .unwrap();
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_flush_reaches_every_node() {
    let nodes = TestNode::cluster(
        3,
        &[
            "--plugin",
            plugins::DB_GETTER,
            "--plugin-config",
            "db_getter.database={db}",
            "--cluster-secret",
            "flush-secret",
        ],
    )
    .await;
    let keys: Vec<String> = (1..=30).map(|i| format!("user{i:06}")).collect();
    let read_all = |via: &TestNode| {
        let (client, base, keys) = (via.client.clone(), via.base.clone(), keys.clone());
        async move {
            for key in &keys {
                let r = client
                    .get(format!("{base}/api?key={key}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200, "{key}");
            }
        }
    };
    read_all(&nodes[0]).await;
    assert_eq!(
        getter_calls(&nodes).await,
        30,
        "each key loaded once, by its owner"
    );

    // A flush of one node leaves what the others own: only its own keys load again.
    let (status, body) = post(&nodes[0], "/api/v1/groups/scores/flush").await;
    assert_eq!(
        (status, &body["storage"]),
        (200, &serde_json::json!("none")),
        "{body}"
    );
    read_all(&nodes[0]).await;
    let after_local = getter_calls(&nodes).await;
    assert!(
        (31..60).contains(&after_local),
        "{after_local} getter calls: node 0's keys only"
    );
    let (status, body) = post(&nodes[0], "/api/v1/groups/scores/flush?cluster=true").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["complete"], true, "{body}");
    let report = body["nodes"].as_array().unwrap();
    assert_eq!(report.len(), 3, "{body}");
    assert!(report.iter().all(|n| n["ok"] == true), "{body}");

    // Every owner dropped its keys: all 30 load again.
    read_all(&nodes[1]).await;
    assert_eq!(getter_calls(&nodes).await, after_local + 30);

    // Another node's part is taken only when signed with the cluster secret.
    let (status, _) = post(&nodes[1], "/_geecache_admin/flush/scores").await;
    assert_eq!(status, 401);
    for n in nodes {
        n.stop().await;
    }
}

/// `fs_storage`'s name for `bytes` (its layout: `x` + hex).
fn fs_name(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("x{hex}")
}

/// A flush of a group of 100k stored entries: the host's memory stays bounded. WASI's
/// `read-directory` collects a whole listing in the host, so a flat directory of 100k entries
/// made a ~10 MiB spike per listing; in buckets, one listing holds ~1/256 of the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_of_100k_stored_entries_keeps_host_memory_bounded() {
    use sha2::Digest as _;
    const ENTRIES: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let stored = dir.path().join("stored");
    // The entries, as fs_storage lays them out (any content: a clear never reads them). Long
    // keys, as real ones often are: each name costs the host its bytes in a listing.
    let group = stored.join(fs_name(b"scores"));
    for i in 0..ENTRIES {
        let key = format!("user-profile:{i:08}:preferences-and-settings");
        let bucket = format!("{:02x}", sha2::Sha256::digest(key.as_bytes())[0]);
        let bucket = group.join(bucket);
        std::fs::create_dir_all(&bucket).unwrap();
        std::fs::write(bucket.join(fs_name(key.as_bytes())), b"GCFS").unwrap();
    }
    assert_eq!(stored_files(&stored), ENTRIES);

    let db = geecache_tests::demo_db(dir.path());
    let grant = format!("fs_storage={}:rw", stored.display());
    let mut command = geecache_tests::db_getter_node(
        env!("CARGO_BIN_EXE_geecache-node"),
        geecache_tests::free_port(),
        &db,
    );
    let port: u16 = command
        .get_args()
        .skip_while(|a| *a != "--port")
        .nth(1)
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    command.args([
        "--plugin",
        plugins::FS_STORAGE,
        "--plugin-dir",
        &grant,
        "--admin-token",
        ADMIN_TOKEN,
    ]);
    let mut node = geecache_tests::NodeProcess::spawn(command, port, dir.path()).await;
    let client = reqwest::Client::new();
    let base = node.base.clone();
    let get = |key: String| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let r = client
                .get(format!("{base}/api?key={key}"))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };
    // Warm: the getter's and the storage plugin's instances exist before the peak is read.
    for key in ["Tom", "Jack", "Sam", "nobody"] {
        get(key.to_owned()).await;
    }
    let (_, before) = node.memory();

    let (status, body) = admin_post(
        &client,
        &format!("{}/api/v1/groups/scores/flush", node.base),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(!group.exists(), "the group is empty at once");
    // The clear sweeps for a while; later calls (gets that miss memory ask storage) finish
    // it. Bounded in count and time.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut i = 0;
    while std::fs::read_dir(&stored).unwrap().count() > 0 {
        assert!(
            Instant::now() < deadline,
            "the cleared files were not all removed in 120 s"
        );
        get(format!("sweep-{i}")).await;
        i += 1;
    }
    let (_, after) = node.memory();
    let grew = after.saturating_sub(before);
    assert!(
        grew < 8 << 20,
        "the flush raised the node's peak memory by {} KiB (from {} KiB)",
        grew >> 10,
        before >> 10
    );
}
