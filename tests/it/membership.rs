//! Membership without etcd: a peers file read again as it changes (`--peers-file`), and DNS
//! names whose records are the peers (`--peers-dns`). Real nodes on 127.0.0.1; every wait is
//! bounded.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use geecache_tests::{TestNode, plugins};
use tokio::net::TcpListener;

/// Waits until `node`'s ring has exactly `members` (addresses, any order).
async fn wait_ring(node: &TestNode, members: &[&str]) {
    let mut want: Vec<String> = members.iter().map(|m| m.to_string()).collect();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut ring = node.node.cluster.ring_members();
        ring.sort();
        if ring == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: ring {ring:?}, wanted {want:?}",
            node.addr
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Replaces the peers file the supported way (write beside it, rename over it).
fn write_peers(file: &Path, addrs: &[&str]) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("# geecache peers\n{}\n", addrs.join("\n"))).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

async fn listeners(n: usize) -> (Vec<TcpListener>, Vec<String>) {
    let mut ls = Vec::new();
    for _ in 0..n {
        ls.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs = ls
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    (ls, addrs)
}

const GETTER: [&str; 4] = [
    "--plugin",
    plugins::SYNTH_GETTER,
    "--plugin-config",
    "synth_getter.value_bytes=16",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peers_file_is_followed_as_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("peers.txt");
    let (ls, addrs) = listeners(3).await;
    let (a, b, c) = (addrs[0].as_str(), addrs[1].as_str(), addrs[2].as_str());
    write_peers(&file, &[a, b]);
    let path = file.display().to_string();
    let mut args: Vec<&str> = GETTER.to_vec();
    args.extend(["--peers-file", &path, "--peers-refresh", "100ms"]);
    let mut nodes = Vec::new();
    for l in ls {
        nodes.push(TestNode::start_on(l, &args).await);
    }
    wait_ring(&nodes[0], &[a, b]).await;
    wait_ring(&nodes[2], &[a, b, c]).await;
    // C joins the file: everyone follows.
    write_peers(&file, &[a, b, c]);
    for n in &nodes {
        wait_ring(n, &[a, b, c]).await;
    }
    // Keys owned by any node are answered through it.
    let (_, value_from_a) = nodes[0].get("/api?key=shared-key").await;
    let (status, value_from_b) = nodes[1].get("/api?key=shared-key").await;
    assert_eq!(status, 200);
    assert_eq!(value_from_a, value_from_b);
    // B leaves the file; a file that vanishes for a moment changes nothing.
    write_peers(&file, &[a, c]);
    wait_ring(&nodes[0], &[a, c]).await;
    std::fs::remove_file(&file).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    wait_ring(&nodes[0], &[a, c]).await;
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test]
async fn a_missing_peers_file_stops_startup_with_a_clear_message() {
    let cli = <geecache_host::config::Cli as clap::Parser>::try_parse_from([
        "geecache-host",
        "--plugin",
        plugins::SYNTH_GETTER,
        "--peers-file",
        "/nonexistent/peers.txt",
    ])
    .unwrap();
    let settings = cli.resolve().unwrap();
    let node = tokio::task::spawn_blocking({
        let settings = settings.clone();
        move || geecache_host::server::build(&settings).unwrap()
    })
    .await
    .unwrap();
    let err = geecache_host::server::join(&node, &settings)
        .await
        .unwrap_err();
    assert!(err.contains("/nonexistent/peers.txt"), "{err}");
    // And the flags exclude each other.
    let both = <geecache_host::config::Cli as clap::Parser>::try_parse_from([
        "geecache-host",
        "--peers-file",
        "x",
        "--peers",
        "127.0.0.1:1",
    ])
    .unwrap();
    assert!(both.resolve().unwrap_err().contains("pick one way"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dns_names_make_the_members() {
    let (ls, addrs) = listeners(3).await;
    let names: Vec<String> = addrs
        .iter()
        .map(|a| format!("localhost:{}", a.rsplit_once(':').unwrap().1))
        .collect();
    let names = names.join(",");
    let mut args: Vec<&str> = GETTER.to_vec();
    args.extend(["--peers-dns", &names, "--peers-refresh", "200ms"]);
    let mut nodes = Vec::new();
    for l in ls {
        nodes.push(TestNode::start_on(l, &args).await);
    }
    let members: Vec<&str> = addrs.iter().map(String::as_str).collect();
    for n in &nodes {
        wait_ring(n, &members).await;
    }
    let keys: Vec<String> = (0..30).map(|i| format!("dns-key-{i}")).collect();
    let (status, answer) = nodes[0].batch("scores", &keys).await;
    assert_eq!(status, 200, "{answer}");
    let stats = nodes[0].group_stats("scores").await;
    assert!(stats["peer_loads"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["peer_errors"], 0, "{stats}");
    for n in nodes {
        n.stop().await;
    }
}
