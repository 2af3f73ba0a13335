//! The doors one level below requests (issue 26): connections that send nothing, headers sent
//! a byte at a time, answers nobody reads. Each test runs a node as its own process (the
//! `geecache-node` binary), so its resident memory, read from `/proc/<pid>/status`, is its own.
//! Every loop is bounded in time and count.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use geecache_tests::{NodeProcess, demo_db};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const MIB: u64 = 1 << 20;

struct Node {
    process: NodeProcess,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Node {
    type Target = NodeProcess;
    fn deref(&self) -> &NodeProcess {
        &self.process
    }
}

impl Node {
    /// A db_getter node with `args`, once it answers `/healthz`.
    async fn start(args: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let db = demo_db(dir.path());
        let bin = env!("CARGO_BIN_EXE_geecache-node");
        let process = NodeProcess::start(bin, &db, dir.path(), args).await;
        Node { process, _dir: dir }
    }

    /// A node whose one getter is chaos_getter (group `chaos`), once it answers `/healthz`.
    async fn chaos() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let port = geecache_tests::free_port();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_geecache-node"));
        command
            .args(["--plugin", geecache_tests::plugins::CHAOS_GETTER])
            .args(["--group", "chaos", "--port", &port.to_string()])
            .arg("--compile-cache-dir")
            .arg(geecache_tests::compile_cache_dir());
        let process = NodeProcess::spawn(command, port, dir.path()).await;
        Node { process, _dir: dir }
    }

    /// `VmRSS` of the node, in bytes.
    fn rss(&mut self) -> u64 {
        self.process.memory().0
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(("127.0.0.1", self.port)).await.unwrap()
    }

    /// A connection from `source` (another loopback address is another client).
    async fn connect_from(&self, source: [u8; 4]) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((source, 0).into()).unwrap();
        socket
            .connect(([127, 0, 0, 1], self.port).into())
            .await
            .unwrap()
    }

    /// Status and body of `GET path` on a connection of its own (`Connection: close`), or
    /// `None` when the node closed it without an answer; at most 5 s.
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        self.get_from([127, 0, 0, 1], path).await
    }

    /// [`Node::get`] from the client address `source`.
    async fn get_from(&self, source: [u8; 4], path: &str) -> Option<(u16, String)> {
        let mut stream = self.connect_from(source).await;
        let request =
            format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .ok()?
            .ok()?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text.get(9..12)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((status, body))
    }

    /// Waits until the start's own health checks have closed their connections (else one of
    /// them could free a slot after a test's connections came).
    async fn wait_quiet(&self) {
        let mut open = u64::MAX;
        for _ in 0..100 {
            open = self.stats().await["connections"]["open"].as_u64().unwrap();
            if open == 1 {
                // Every earlier connection was gone; the stats request's own closes as soon as
                // its answer is written, which its client saw end.
                tokio::time::sleep(Duration::from_millis(300)).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{open} connections stay open, not only the stats request's");
    }

    async fn stats(&self) -> serde_json::Value {
        let (status, body) = self.get("/api/v1/stats").await.unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// Whether the node closes `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_in_every_slot_leave_probes_answered_and_are_closed() {
    let node = Node::start(&["--max-connections", "8", "--header-timeout", "6s"]).await;
    node.wait_quiet().await;
    // Every slot taken by a connection that sends nothing (on main: every later connection,
    // /readyz included, was refused for as long as they stayed open).
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(node.connect().await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = node.get("/readyz").await.expect("a probe is answered");
    assert_eq!(status, 200, "{body}");
    let (status, body) = node
        .get("/api?key=Tom")
        .await
        .expect("refused with an answer");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("too_many_connections"), "{body}");
    // The node closes each silent connection after the header timeout.
    for stream in &mut silent {
        assert!(
            closed_within(stream, Duration::from_secs(10)).await,
            "a silent connection stayed open"
        );
    }
    let (status, body) = node.get("/api?key=Tom").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "630"));
    let stats = node.stats().await;
    let c = &stats["connections"];
    assert!(c["header_timeouts"].as_u64().unwrap() >= 8, "{c}");
    assert!(c["reserve_accepted"].as_u64().unwrap() >= 2, "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_sent_a_byte_at_a_time_is_cut_off_at_the_header_timeout() {
    let node = Node::start(&["--header-timeout", "2s"]).await;
    let mut stream = node.connect().await;
    let request = b"GET /api?key=Tom HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let started = Instant::now();
    let mut cut = false;
    // A byte every 200 ms: on main, the connection stayed open for as long as bytes came.
    for byte in request {
        if stream.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await
        {
            cut = true;
            break;
        }
    }
    assert!(cut, "the slow header was never cut off");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(
        node.stats().await["connections"]["header_timeouts"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let node = Node::start(&["--idle-timeout", "2s", "--header-timeout", "1s"]).await;
    let mut stream = node.connect().await;
    stream
        .write_all(b"GET /api?key=Tom HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).ends_with("630"));
    // Idle past the header timeout, within the idle one: still open, and it answers.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream
        .write_all(b"GET /api?key=Jack HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).ends_with("589"));
    assert!(closed_within(&mut stream, Duration::from_secs(10)).await);
    assert!(
        node.stats().await["connections"]["idle_timeouts"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_nobody_reads_stay_within_the_in_flight_budget() {
    // Larger than what loopback's socket buffers take, so an unread answer stalls its writes.
    const VALUE: usize = 16 << 20;
    const CLIENTS: usize = 40;
    const INFLIGHT_MIB: u64 = 64;
    let mut node = Node::start(&[
        "--cache-bytes",
        "64MiB",
        "--max-inflight-body-bytes",
        &format!("{INFLIGHT_MIB}MiB"),
        "--max-body-bytes",
        "16MiB",
        "--max-value-bytes",
        "16MiB",
        "--write-timeout",
        "3s",
        "--header-timeout",
        "30s",
    ])
    .await;
    let client = reqwest::Client::new();
    let put = client
        .put(format!("{}/api/v1/groups/scores/keys/big", node.base))
        .body(vec![b'v'; VALUE])
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 204);
    let before = node.rss();
    // Clients that ask for the value and never read (on main: RSS grew by the value's size
    // for each of them, 2.2 GiB for 300 clients of an 8 MiB value).
    let mut unread = Vec::new();
    for _ in 0..CLIENTS {
        let mut stream = node.connect().await;
        stream
            .write_all(b"GET /api/v1/groups/scores/keys/big HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        unread.push(stream);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let grown = node.rss().saturating_sub(before);
    println!(
        "{CLIENTS} unread answers of {} MiB: node RSS grew by {} MiB (budget {INFLIGHT_MIB} MiB)",
        VALUE as u64 / MIB,
        grown / MIB
    );
    let bound = (INFLIGHT_MIB * MIB) * 5 / 4 + 32 * MIB;
    assert!(grown < bound, "RSS grew by {} MiB", grown / MIB);
    // Another client is answered meanwhile: small values at once, the big one 503 or 200.
    let (status, body) = node.get("/api?key=Tom").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "630"));
    let stats = node.stats().await;
    assert!(
        stats["connections"]["answers_refused"].as_u64().unwrap() > 0,
        "{}",
        stats["connections"]
    );
    // The write timeout closes the unread connections (nothing here reads them); the budget
    // is whole again.
    let mut stats = node.stats().await;
    for _ in 0..150 {
        if stats["connections"]["write_timeouts"].as_u64().unwrap() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        stats = node.stats().await;
    }
    assert!(
        stats["connections"]["write_timeouts"].as_u64().unwrap() > 0,
        "{}",
        stats["connections"]
    );
    drop(unread);
    let big = client
        .get(format!("{}/api/v1/groups/scores/keys/big", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 200);
    assert_eq!(big.bytes().await.unwrap().len(), VALUE);
}

/// `POST path` with `token` (as a bearer), `headers` and `body`: status and body, within 5 s.
async fn post(
    node: &Node,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, String) {
    let client = reqwest::Client::new();
    let mut req = client
        .post(format!("{}{path}", node.base))
        .timeout(Duration::from_secs(5))
        .body(body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let r = req.send().await.expect("answered within 5 s");
    (r.status().as_u16(), r.text().await.unwrap())
}

const WASM: (&str, &str) = ("content-type", "application/wasm");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_are_closed_on_a_default_node() {
    let node = Node::start(&[]).await;
    let component = std::fs::read(geecache_tests::plugins::DB_GETTER).unwrap();
    let reload = "/api/v1/plugins/db_getter/reload";
    // On main: 200, anyone who reached the port replaced the getter.
    let (status, body) = post(&node, reload, None, &[WASM], component).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("admin_disabled") && body.contains("--admin-token"),
        "{body}"
    );
    // On main: no answer in 20 s, +6.4 GiB.
    let zero = format!("{reload}?path=/dev/zero");
    let (status, body) = post(&node, &zero, None, &[], Vec::new()).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = post(&node, "/api/v1/groups/scores/flush", None, &[], Vec::new()).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(node.get("/api?key=Tom").await.unwrap(), (200, "630".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_paths_bodies_and_origins_are_checked_before_anything_is_read() {
    let plugins = tempfile::tempdir().unwrap();
    let good = plugins.path().join("good.wasm");
    std::fs::copy(geecache_tests::plugins::DB_GETTER, &good).unwrap();
    let fifo = plugins.path().join("pipe.wasm");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let dir = plugins.path().to_str().unwrap();
    let mut node = Node::start(&["--admin-token", "adm", "--reload-dir", dir]).await;
    let reload = "/api/v1/plugins/db_getter/reload";
    let admin = Some("adm");
    let before = node.rss();
    // A device, a FIFO (on main: a hang, and later reloads waited behind it), a path out of
    // the directory: each refused at once, all in the same words.
    let mut refusals = Vec::new();
    for path in [
        "/dev/zero".to_string(),
        "pipe.wasm".into(),
        "../outside.wasm".into(),
        geecache_tests::plugins::DB_GETTER.into(),
        "/no/such/dir/x.wasm".into(),
    ] {
        let (status, body) =
            post(&node, &format!("{reload}?path={path}"), admin, &[], vec![]).await;
        assert_eq!(status, 403, "{path}: {body}");
        refusals.push(body);
    }
    assert!(
        refusals.windows(2).all(|w| w[0] == w[1]),
        "one answer, whether or not the file exists: {refusals:#?}"
    );
    assert!(
        node.rss().saturating_sub(before) < 64 * MIB,
        "nothing large was read"
    );
    // A file inside the directory is taken, and the FIFO held nothing up.
    let (status, body) = post(
        &node,
        &format!("{reload}?path=good.wasm"),
        admin,
        &[],
        vec![],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // A body must say it is a component; the admin token is not the only check.
    let component = std::fs::read(&good).unwrap();
    let (status, body) = post(&node, reload, admin, &[], component.clone()).await;
    assert_eq!(status, 415, "{body}");
    let evil = [WASM, ("origin", "http://evil.example")];
    let (status, body) = post(&node, reload, admin, &evil, component.clone()).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("cross_origin"), "{body}");
    let (status, body) = post(&node, reload, Some("wrong"), &[WASM], component.clone()).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = post(&node, reload, admin, &[WASM], component).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(node.get("/api?key=Tom").await.unwrap(), (200, "630".into()));
}

/// `method path` with `Host: host` (and `Origin: http://host`) and `body`, as a page whose name
/// was rebound to the node's address would send it: status and body.
async fn as_host(node: &Node, host: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = node.connect().await;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\norigin: http://{host}\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text[9..12].parse().unwrap();
    (status, text.split_once("\r\n\r\n").unwrap().1.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_rebound_to_the_node_by_dns_is_refused_by_its_host() {
    let node = Node::start(&[]).await;
    let key = "/api/v1/groups/scores/keys/Tom";
    let (status, body) = as_host(&node, "rebind.test", "PUT", key, "1").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("host_not_allowed"), "{body}");
    let (status, body) = as_host(&node, "rebind.test:80", "GET", key, "").await;
    assert_eq!(
        (status, body.contains("host_not_allowed")),
        (403, true),
        "{body}"
    );
    // Probes answer whatever the Host; the value did not change; by its address, the node
    // answers as before.
    assert_eq!(
        as_host(&node, "rebind.test", "GET", "/healthz", "").await.0,
        200
    );
    assert_eq!(node.get("/api?key=Tom").await.unwrap(), (200, "630".into()));
    let (status, body) = as_host(&node, "localhost", "GET", key, "").await;
    assert_eq!((status, body.as_str()), (200, "630"));
    let refused = &node.stats().await["connections"]["wrong_host"];
    assert_eq!(refused, 2, "{refused}");

    // A name the operator gave is taken.
    let node = Node::start(&["--allowed-host", "cache.internal,rebind.test"]).await;
    let (status, body) = as_host(&node, "rebind.test", "PUT", key, "1").await;
    assert_eq!(status, 204, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_millions_of_keys_are_refused_while_they_are_decoded() {
    let mut node = Node::start(&[]).await;
    // 3 million empty keys: 9 MB of JSON each (on main: all decoded, then refused; 8 at once
    // grew the node's RSS by 421 MiB).
    let body = format!("{{\"keys\":[{}\"\"]}}", "\"\",".repeat(3_000_000 - 1));
    let before = node.rss();
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/groups/scores/batch", node.base);
    let requests = (0..8).map(|_| {
        client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .timeout(Duration::from_secs(20))
            .send()
    });
    for answer in futures::future::join_all(requests).await {
        let answer = answer.unwrap();
        assert_eq!(answer.status(), 400);
        let text = answer.text().await.unwrap();
        assert!(text.contains("more than 1000 keys"), "{text}");
    }
    let grown = node.rss().saturating_sub(before);
    println!("8 batches of 3M keys: node RSS grew by {} MiB", grown / MIB);
    // The bodies themselves (8 x 9 MB, held while they are read) and little else.
    assert!(grown < 160 * MIB, "RSS grew by {} MiB", grown / MIB);
    assert_eq!(node.get("/api?key=Tom").await.unwrap(), (200, "630".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_hold_every_connection() {
    let node = Node::start(&[
        "--max-connections-per-client",
        "4",
        "--header-timeout",
        "30s",
    ])
    .await;
    node.wait_quiet().await;
    // 127.0.0.1 holds its four connections, silent.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(node.connect().await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = node.get("/api?key=Tom").await.expect("an answer");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("too_many_connections") && body.contains("--max-connections-per-client"),
        "{body}"
    );
    let (status, _) = node.get("/readyz").await.expect("a probe is answered");
    assert_eq!(status, 200);
    // Another client is served meanwhile.
    let (status, body) = node.get_from([127, 0, 0, 2], "/api?key=Tom").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "630"));
    // A closed connection gives its place back.
    drop(held.pop());
    let mut answered = None;
    for _ in 0..50 {
        answered = node.get("/api?key=Tom").await;
        if answered.as_ref().is_some_and(|(s, _)| *s == 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answered, Some((200, "630".into())));
    // Asked from another address: 127.0.0.1's last connection may hold its slot a moment
    // after its answer was read.
    let (status, body) = node
        .get_from([127, 0, 0, 2], "/api/v1/stats")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    let c = &stats["connections"];
    assert!(c["over_client_cap"].as_u64().unwrap() >= 2, "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_its_rate_is_told_when_to_retry_and_others_are_served() {
    let node = Node::start(&["--rate-limit", "5", "--rate-burst", "5"]).await;
    // 30 requests on one keep-alive connection, as fast as they are answered.
    let client = reqwest::Client::new();
    let url = format!("{}/api?key=Tom", node.base);
    let (mut served, mut limited) = (0, 0);
    for _ in 0..30 {
        let r = client
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => served += 1,
            429 => {
                let retry: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=2).contains(&retry), "Retry-After: {retry}");
                let body = r.text().await.unwrap();
                assert!(body.contains("rate_limited"), "{body}");
                limited += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    println!("30 requests at --rate-limit 5: {served} served, {limited} refused");
    assert!(served >= 5, "the burst is served: {served}");
    assert!(limited >= 10, "the rest is held back: {limited}");
    // The probes are not counted, and another client has its own bucket.
    let (status, _) = node.get("/healthz").await.unwrap();
    assert_eq!(status, 200);
    // This node has no cluster secret: its peer routes are anyone's, so they count too (ten
    // unsigned peer gets from a fresh address: the burst of 5, then 429s).
    let mut peer_limited = 0;
    for _ in 0..10 {
        let (status, _) = node
            .get_from([127, 0, 0, 4], "/_geecache/scores/Tom")
            .await
            .unwrap();
        peer_limited += u32::from(status == 429);
    }
    assert!(
        peer_limited >= 4,
        "unsigned peer gets are rate-limited: {peer_limited}"
    );
    let (status, body) = node.get_from([127, 0, 0, 2], "/api?key=Tom").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "630"));
    // (Asked from a third address, whose bucket is full.)
    let (status, stats) = node
        .get_from([127, 0, 0, 3], "/api/v1/stats")
        .await
        .unwrap();
    assert_eq!(status, 200, "{stats}");
    let c = serde_json::from_str::<serde_json::Value>(&stats).unwrap()["connections"].clone();
    assert!(c["rate_limited"].as_u64().unwrap() >= 10, "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_logs_in_a_loop_is_cut_off_and_cannot_forge_lines() {
    let node = Node::chaos().await;
    // 10,000 records in one call, each with a forged log line after a newline.
    for i in 0..3 {
        let (status, body) = node
            .get(&format!("/api/v1/groups/chaos/keys/logflood{i}"))
            .await
            .unwrap();
        assert_eq!((status, body.as_str()), (200, "flooded"));
    }
    let log = std::fs::read_to_string(&node.log).unwrap();
    let flood_lines = log.lines().filter(|l| l.contains("flood ")).count();
    assert_eq!(
        flood_lines, 300,
        "each call logs its budget of 100 records, no more"
    );
    for line in log.lines().filter(|l| l.contains("forged admin login")) {
        assert!(
            line.contains("flood ") && line.contains("\\n1999-01-01"),
            "a forged line stands on its own: {line}"
        );
    }
    let notes = log
        .lines()
        .filter(|l| l.contains("logged past its budget"))
        .count();
    assert_eq!(
        notes, 1,
        "the cut is reported once a minute, not once a call"
    );
    let plugin = node.stats().await["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "chaos_getter")
        .cloned()
        .unwrap();
    assert_eq!(plugin["calls"], 3, "{plugin}");
    assert_eq!(plugin["logs_dropped"], 3 * (10_000 - 100), "{plugin}");
}

/// `n` bytes of text that zstd compresses, slowly at its high levels (words from a small
/// vocabulary in a pseudo-random order).
fn compressible(n: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "cache ", "group ", "peer ", "ring ", "owner ", "value ", "key ", "miss ", "hit ", "node ",
        "load ", "plugin ", "etcd ", "codec ", "batch ", "flush ",
    ];
    let mut out = Vec::with_capacity(n + 8);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(WORDS[(x % 16) as usize].as_bytes());
        if x.is_multiple_of(7) {
            out.extend_from_slice(&x.to_le_bytes()[..3]);
        }
    }
    out.truncate(n);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_puts_at_high_zstd_levels_take_turns_and_give_up_at_their_deadline() {
    const PUTS: usize = 16;
    let node = Node::start(&[
        "--compression",
        "zstd:19",
        "--codec-concurrency",
        "1",
        "--request-timeout",
        "1s",
    ])
    .await;
    let value = bytes::Bytes::from(compressible(8 << 20));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let puts = (0..PUTS).map(|i| {
        client
            .put(format!("{}/api/v1/groups/scores/keys/big{i}", node.base))
            .body(value.clone())
            .timeout(Duration::from_secs(60))
            .send()
    });
    let puts = tokio::spawn(futures::future::join_all(puts));
    // Meanwhile the lane never runs more than one coding, and other requests are answered.
    let mut most_running = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let lane = node.stats().await["codec_lane"].clone();
        most_running = most_running.max(lane["running"].as_u64().unwrap());
        assert_eq!(lane["concurrency"], 1, "{lane}");
    }
    assert_eq!(node.get("/api?key=Tom").await.unwrap(), (200, "630".into()));
    let answers = puts.await.unwrap();
    let mut statuses = Vec::new();
    for answer in answers {
        let answer = answer.unwrap();
        let status = answer.status().as_u16();
        if status == 504 {
            let body = answer.text().await.unwrap();
            assert!(body.contains("timeout"), "{body}");
        }
        statuses.push(status);
    }
    let timed_out = statuses.iter().filter(|s| **s == 504).count();
    let stored = statuses.iter().filter(|s| **s == 204).count();
    println!(
        "{PUTS} PUTs of 8 MiB at zstd:19, one lane, 1 s deadline: {stored} stored, {timed_out} \
         gave up, in {:?}",
        started.elapsed()
    );
    assert_eq!(stored + timed_out, PUTS, "{statuses:?}");
    assert!(stored >= 1, "{statuses:?}");
    assert!(
        timed_out >= PUTS / 2,
        "the rest waited past their deadline: {statuses:?}"
    );
    assert!(most_running <= 1);
    // A PUT that gave up stored nothing.
    for (i, status) in statuses.iter().enumerate() {
        if *status == 504 {
            let r = client
                .get(format!("{}/api/v1/groups/scores/keys/big{i}", node.base))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "big{i}");
        }
    }
}
