//! Batch gets in a cluster go through the keys' owners: one `_batch` request per owner, all at
//! once, and keys whose owner fails are loaded locally. Three real nodes on 127.0.0.1 (static
//! peers), the real `synth_getter` (a deterministic value for every key).

#![allow(clippy::unwrap_used)]

use geecache_tests::{TestNode, plugins};
use serde_json::Value;

const ARGS: &[&str] = &[
    "--plugin",
    plugins::SYNTH_GETTER,
    "--plugin-config",
    "synth_getter.value_bytes=64",
    "--peer-timeout",
    "2s",
];

async fn batch(node: &TestNode, keys: &[String]) -> Value {
    let (status, answer) = node.batch("scores", keys).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// `count` of the peer-request histogram of `node` for `op` (summed over peers and outcomes).
async fn peer_requests(node: &TestNode, op: &str) -> f64 {
    let text = node.metrics_text().await;
    text.lines()
        .filter(|l| {
            l.starts_with("geecache_peer_request_duration_seconds_count{")
                && l.contains(&format!("op=\"{op}\""))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// The values a single get on `node` answers for `keys`.
async fn single_gets(node: &TestNode, keys: &[String]) -> Vec<String> {
    let mut values = Vec::new();
    for key in keys {
        let (status, body) = node.get(&format!("/api?key={key}")).await;
        assert_eq!(status, 200);
        values.push(String::from_utf8(body).unwrap());
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_asks_each_owner_once_and_answers_every_key() {
    let nodes = TestNode::cluster(3, ARGS).await;
    let keys: Vec<String> = (0..100).map(|i| format!("batch-key-{i}")).collect();
    let answer = batch(&nodes[0], &keys).await;
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 100);
    // One `_batch` request per other node, no single peer get.
    assert_eq!(peer_requests(&nodes[0], "batch").await, 2.0);
    assert_eq!(peer_requests(&nodes[0], "get").await, 0.0);
    // Same values as single gets on another node (which ask the owners one by one).
    let expected = single_gets(&nodes[1], &keys).await;
    for (i, item) in results.iter().enumerate() {
        assert_eq!(item["key"], keys[i].as_str());
        assert_eq!(item["value"], expected[i].as_str(), "{item}");
    }
    // A key fetched once is not kept hot (the doorkeeper): a second batch asks the owners
    // again, which keeps copies; a third asks nobody.
    batch(&nodes[0], &keys).await;
    assert_eq!(peer_requests(&nodes[0], "batch").await, 4.0);
    batch(&nodes[0], &keys).await;
    assert_eq!(peer_requests(&nodes[0], "batch").await, 4.0);
    let stats = nodes[0].group_stats("scores").await;
    assert!(stats["peer_loads"].as_u64().unwrap() > 40, "{stats}");
    assert_eq!(stats["peer_errors"], 0, "{stats}");
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_whose_owner_is_down_are_loaded_locally() {
    let mut nodes = TestNode::cluster(3, ARGS).await;
    let keys: Vec<String> = (0..60).map(|i| format!("down-key-{i}")).collect();
    let expected = single_gets(&nodes[1], &keys).await;
    // Node 2 stops; node 0 still has it on its ring (static peers).
    nodes.pop().unwrap().stop().await;
    let answer = batch(&nodes[0], &keys).await;
    for (i, item) in answer["results"].as_array().unwrap().iter().enumerate() {
        assert_eq!(item["value"], expected[i].as_str(), "{item}");
    }
    let stats = nodes[0].group_stats("scores").await;
    assert!(stats["peer_errors"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["getter_calls"].as_u64().unwrap() > 0, "{stats}");
    for n in nodes {
        n.stop().await;
    }
}

/// Sends single gets for `keys` to `node` all at once; returns the values in key order.
async fn concurrent_gets(node: &TestNode, keys: &[String]) -> Vec<String> {
    let paths: Vec<String> = keys.iter().map(|key| format!("/api?key={key}")).collect();
    futures::future::join_all(paths.iter().map(|path| node.get(path)))
        .await
        .into_iter()
        .map(|(status, body)| {
            assert_eq!(status, 200);
            String::from_utf8(body).unwrap()
        })
        .collect()
}

/// Peer-protocol requests `node` has served (single gets, batches, ...).
/// Peer requests `node` served, less the peeks (a node that just joined asks the key's owner
/// among the others before it loads a key it owns: see warm handoff).
async fn served_peer_requests(node: &TestNode) -> f64 {
    let text = node.metrics_text().await;
    let served: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("geecache_http_request_duration_seconds_count{")
                && l.contains("route=\"/_geecache/{*path}\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    let peeks = node.group_stats("scores").await["peeks_served"]
        .as_u64()
        .unwrap();
    served - peeks as f64
}

/// What 120 concurrent single gets on node 0 of a 3-node cluster started with `extra` flags
/// cost between the nodes.
struct Forwarded {
    /// Keys another node owned and loaded.
    keys: f64,
    /// Gets node 0 timed as `get` (one per forwarded key, alone or in a batch).
    gets: f64,
    /// Batch requests node 0 formed (`coalesced`).
    batches: f64,
    /// Peer requests the other two nodes served.
    served: f64,
}

/// Every value is right, and every key another node owns was loaded by that owner, never
/// locally (whether its get went alone or in a batch).
async fn forwarded_gets(extra: &[&str], prefix: &str) -> Forwarded {
    let args: Vec<&str> = ARGS.iter().chain(extra).copied().collect();
    let nodes = TestNode::cluster(3, &args).await;
    let keys: Vec<String> = (0..120).map(|i| format!("{prefix}-{i}")).collect();
    let values = concurrent_gets(&nodes[0], &keys).await;
    let stats = nodes[0].group_stats("scores").await;
    let forwarded = Forwarded {
        keys: stats["peer_loads"].as_u64().unwrap() as f64,
        gets: peer_requests(&nodes[0], "get").await,
        batches: peer_requests(&nodes[0], "coalesced").await,
        served: served_peer_requests(&nodes[1]).await + served_peer_requests(&nodes[2]).await,
    };
    assert_eq!(stats["peer_errors"], 0, "{stats}");
    // About two thirds of the keys are another node's.
    assert!(forwarded.keys > 40.0, "{stats}");
    assert_eq!(
        stats["getter_calls"].as_u64().unwrap() as f64 + forwarded.keys,
        keys.len() as f64,
        "{stats}"
    );
    assert_eq!(forwarded.gets, forwarded.keys);
    // The same values as another node's single gets, asked one at a time.
    assert_eq!(values, single_gets(&nodes[1], &keys).await);
    for n in nodes {
        n.stop().await;
    }
    forwarded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_coalescing_off_every_forwarded_get_is_its_own_peer_request() {
    let f = forwarded_gets(&["--peer-coalesce", "0"], "alone").await;
    assert_eq!(f.batches, 0.0);
    assert_eq!(f.served, f.keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_coalescing_on_concurrent_gets_are_answered_by_their_owners() {
    let f = forwarded_gets(&[], "together").await;
    // 120 gets at once: those to one owner share requests (81 keys went as 7 batches here),
    // and the owners served every batch sent. What the owners served in all is not compared
    // with the keys: a batch that has not answered within 50 ms has its keys asked again
    // alone (`HEDGE_AFTER`), and on a machine too busy to load a batch that fast (a CI runner
    // with every test running) the owners then serve a request per key on top of the batches.
    assert!(f.batches > 0.0);
    assert!(
        f.batches < f.keys,
        "{} batches for {} keys: none shared",
        f.batches,
        f.keys
    );
    assert!(f.served >= f.batches, "{} < {}", f.served, f.batches);
}

/// Three nodes whose rings disagree, one node's view changed at a time (each reads its own
/// peers file): under load, no request fails or hangs, and no peer request is forwarded again
/// (each owner answers from memory or loads: the gets the nodes served number no more than the
/// gets they sent); the requests from a node whose ring differs are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rings_that_disagree_fail_no_request_and_loop_no_request() {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<std::path::PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("peers-{i}")))
        .collect();
    for f in &files {
        std::fs::write(f, addrs.join("\n")).unwrap();
    }
    let mut nodes = Vec::new();
    for (listener, file) in listeners.into_iter().zip(&files) {
        let file = file.to_str().unwrap().to_owned();
        let mut args: Vec<&str> = ARGS.to_vec();
        args.extend(["--peers-file", &file, "--peers-refresh", "100ms"]);
        nodes.push(TestNode::start_on(listener, &args).await);
    }
    let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|c| {
            let (bases, stop) = (bases.clone(), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(std::time::Duration::from_secs(5))
                    .build()
                    .unwrap();
                let (mut ok, mut failed) = (0u64, Vec::new());
                let mut i = c;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && i < 200_000 {
                    i += 4;
                    let url = format!("{}/api?key=k{}", bases[i % 3], (i * 7919) % 3000);
                    match client.get(&url).send().await {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Ok(r) => failed.push(format!("{url}: {}", r.status())),
                        Err(e) => failed.push(format!("{url}: {e}")),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    // Node 2 leaves every view, one node at a time, then comes back the same way: for a while
    // each pair of nodes disagrees.
    let pause = std::time::Duration::from_millis(400);
    for file in &files {
        std::fs::write(file, addrs[..2].join("\n")).unwrap();
        tokio::time::sleep(pause).await;
    }
    for file in &files {
        std::fs::write(file, addrs.join("\n")).unwrap();
        tokio::time::sleep(pause).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut ok, mut failed) = (0, Vec::new());
    for task in load {
        let (o, f) = task.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    assert!(ok > 300, "the load ran: {ok}");
    let (mut sent, mut served, mut mismatches) = (0.0, 0.0, 0);
    for n in &nodes {
        let stats = n.group_stats("scores").await;
        sent +=
            (stats["peer_loads"].as_u64().unwrap() + stats["peer_errors"].as_u64().unwrap()) as f64;
        served += served_peer_requests(n).await;
        let (_, all) = n.get_json("/api/v1/stats").await;
        mismatches += all["cluster"]["ring_mismatches"].as_u64().unwrap();
    }
    assert!(
        served <= sent,
        "{served} gets served for {sent} sent: a get was forwarded again"
    );
    assert!(
        mismatches > 0,
        "requests from nodes whose ring differed were counted"
    );
    for n in nodes {
        n.stop().await;
    }
}

/// A cluster that starts cold has nothing to hand over: once its nodes' peeks at previous
/// owners have found none of `--handoff-max-misses` keys in a row, they stop peeking (each
/// peek is a peer round trip on every miss), and say so in `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_cluster_stops_peeking_at_previous_owners_that_hold_nothing() {
    let args: Vec<&str> = ARGS
        .iter()
        .copied()
        .chain(["--handoff-max-misses", "8"])
        .collect();
    let nodes = TestNode::cluster(3, &args).await;
    let keys: Vec<String> = (0..300).map(|i| format!("cold-{i}")).collect();
    single_gets(&nodes[0], &keys).await;
    let mut ended = 0.0;
    let mut peeks = 0;
    for node in &nodes {
        let text = node.metrics_text().await;
        ended += text
            .lines()
            .find(|l| l.starts_with("geecache_handoff_windows_ended_total"))
            .map_or(0.0, |l| {
                l.rsplit(' ').next().unwrap().parse::<f64>().unwrap()
            });
        peeks += node.group_stats("scores").await["handoff_misses"]
            .as_u64()
            .unwrap();
    }
    // Each node owns about 100 of the keys and peeked for each while its window lasted: at
    // most 8 per window, where without the bound every one of them would be a peek.
    assert_eq!(ended, 3.0, "every node's window ended early");
    assert!(peeks <= 3 * 8, "{peeks} peeks that found nothing");
    for n in nodes {
        n.stop().await;
    }
}
