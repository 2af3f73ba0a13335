//! TLS between clients and nodes and between peers (rustls): certificates from a throwaway CA
//! (rcgen), real nodes on 127.0.0.1 serving https, the real db_getter.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use geecache_tests::pki::TestCa;
use geecache_tests::{TestNode, plugins};
use tokio::net::TcpListener;

/// A certificate authority for one test (a [`TestCa`] in the shapes these tests use).
struct Ca(TestCa);

impl Ca {
    fn new(name: &str) -> Ca {
        Ca(TestCa::new(name))
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    /// Writes the CA certificate to `dir/{name}.crt`.
    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        self.0.write(dir, name)
    }

    /// A client identity (certificate and key, PEM) for `names`, signed by this CA.
    fn identity(&self, names: &[&str]) -> reqwest::Identity {
        reqwest::Identity::from_pem(self.0.identity_pem(names).as_bytes()).unwrap()
    }

    /// A certificate for 127.0.0.1 signed by this CA, written as `dir/{name}.crt` and
    /// `.key`; and its DER.
    fn node_cert(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        self.0.issue_der(dir, name, &["127.0.0.1", "localhost"])
    }
}

/// A client that trusts `ca`.
fn client(ca: &Ca) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .no_proxy()
        .build()
        .unwrap()
}

async fn group_stats(client: &reqwest::Client, base: &str) -> serde_json::Value {
    let stats: serde_json::Value = client
        .get(format!("{base}/api/v1/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stats["groups"][0].clone()
}

/// The DER of the certificate a TLS connection to `addr` is served, trusting `ca`.
async fn served_cert(addr: &str, ca: &Ca) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.0.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Starts one node per certificate issuer in `issuers` on 127.0.0.1 over https, each listing
/// the others as peers, with `extra` flags; their `https://` addresses, the nodes, and each
/// node's certificate (file, key file, DER).
async fn tls_nodes(
    dir: &Path,
    issuers: &[&Ca],
    ca_file: &Path,
    extra: &[&str],
) -> (Vec<String>, Vec<TestNode>, Vec<(PathBuf, PathBuf, Vec<u8>)>) {
    let mut listeners = Vec::new();
    for _ in issuers {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| format!("https://{}", l.local_addr().unwrap()))
        .collect();
    let (mut nodes, mut certs) = (Vec::new(), Vec::new());
    let ca_path = ca_file.display().to_string();
    for (i, listener) in listeners.into_iter().enumerate() {
        let (crt, key, der) = issuers[i].node_cert(dir, &format!("node{i}"));
        let (crt_s, key_s) = (crt.display().to_string(), key.display().to_string());
        certs.push((crt, key, der));
        let peers: Vec<&str> = addrs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, a)| a.as_str())
            .collect();
        let peers = peers.join(",");
        let mut args = vec![
            "--plugin",
            plugins::DB_GETTER,
            "--plugin-config",
            "db_getter.database={db}",
            "--tls-cert",
            &crt_s,
            "--tls-key",
            &key_s,
            "--peer-ca",
            &ca_path,
            "--advertise-addr",
            &addrs[i],
            "--peers",
            &peers,
        ];
        args.extend_from_slice(extra);
        nodes.push(TestNode::start_on(listener, &args).await);
    }
    (addrs, nodes, certs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_over_tls_serves_and_refuses_a_peer_of_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other_ca) = (Ca::new("geecache test CA"), Ca::new("someone else's CA"));
    let ca_file = ca.write(dir.path(), "ca");
    // Three nodes with certificates of the cluster's CA, a fourth with another CA's.
    let (addrs, nodes, certs) = tls_nodes(
        dir.path(),
        &[&ca, &ca, &ca, &other_ca],
        &ca_file,
        &["--cluster-secret", "tls-cluster"],
    )
    .await;
    let https = client(&ca);
    let a = &addrs[0];
    // Every key answers, through whichever owner.
    for i in 1..=60 {
        let r = https
            .get(format!("{a}/api?key=user{i:06}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "user{i:06}");
    }
    let stats = group_stats(&https, a).await;
    assert!(stats["peer_loads"].as_u64().unwrap() > 0, "{stats}");
    // The fourth node's certificate is refused: its keys were loaded locally.
    assert!(stats["peer_errors"].as_u64().unwrap() > 0, "{stats}");
    // ...though it serves TLS, as a client that trusts its CA sees.
    let theirs = client(&other_ca);
    let r = theirs
        .get(format!("{}/healthz", addrs[3]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Nodes 1 and 2 took no error from each other or from node 0.
    for addr in &addrs[1..3] {
        let s = group_stats(&https, addr).await;
        assert!(s["peer_requests_served"].as_u64().unwrap() > 0, "{s}");
    }
    // Plain HTTP to a TLS port gets no answer.
    let plain = reqwest::Client::new();
    assert!(
        plain
            .get(format!("http://{}/healthz", nodes[0].addr))
            .send()
            .await
            .is_err()
    );

    // A renewed certificate (SIGHUP in the binary) is served to new connections; the
    // connections open before keep working.
    let addr0 = nodes[0].addr.to_string();
    assert_eq!(served_cert(&addr0, &ca).await, certs[0].2);
    let (crt, key, new_der) = ca.node_cert(dir.path(), "node0-renewed");
    std::fs::copy(&crt, &certs[0].0).unwrap();
    std::fs::copy(&key, &certs[0].1).unwrap();
    nodes[0].node.tls.as_ref().unwrap().reload().unwrap();
    assert_eq!(served_cert(&addr0, &ca).await, new_der);
    let r = https.get(format!("{a}/api?key=Tom")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "630");
    // A key that does not match is refused, and the served certificate stays.
    std::fs::copy(&certs[1].1, &certs[0].1).unwrap();
    assert!(nodes[0].node.tls.as_ref().unwrap().reload().is_err());
    assert_eq!(served_cert(&addr0, &ca).await, new_der);
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_mutual_tls_peers_show_certificates_and_api_clients_need_none() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("geecache mtls CA");
    let ca_file = ca.write(dir.path(), "ca");
    let (addrs, nodes, _) =
        tls_nodes(dir.path(), &[&ca, &ca, &ca], &ca_file, &["--peer-mtls"]).await;
    // An API client with no certificate of its own is served; peers show theirs.
    let https = client(&ca);
    for i in 1..=40 {
        let r = https
            .get(format!("{}/api?key=user{i:06}", addrs[0]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "user{i:06}");
    }
    let stats = group_stats(&https, &addrs[0]).await;
    assert!(stats["peer_loads"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["peer_errors"], 0, "{stats}");
    // A peer request on a connection without a client certificate is refused.
    let r = https
        .get(format!("{}/_geecache/scores/Tom", addrs[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.text().await.unwrap().contains("client certificate"));
    // A certificate of the same CA for a host that is no ring member's is refused too; one for
    // the members' host (127.0.0.1) is a peer's.
    for (names, status) in [(&["intruder.example"][..], 401), (&["127.0.0.1"][..], 200)] {
        let with_cert = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
            .identity(ca.identity(names))
            .no_proxy()
            .build()
            .unwrap();
        let r = with_cert
            .get(format!("{}/_geecache/scores/Tom", addrs[1]))
            .send()
            .await
            .unwrap();
        let got = r.status().as_u16();
        // A node that has just joined is a member a moment later: the refusal says to retry.
        let retry_after = r.headers().get("retry-after").cloned();
        let body = r.text().await.unwrap_or_default();
        assert_eq!(got, status, "{names:?}: {body}");
        if status == 401 {
            assert!(body.contains("names no host of a ring member"), "{body}");
            assert_eq!(retry_after.unwrap(), "1");
        }
    }
    for n in nodes {
        n.stop().await;
    }
}

/// The `geecache-node` process itself: `kill -HUP` makes it serve a renewed certificate to new
/// connections, keeps serving, and a renewal whose key does not match is refused (logged) with
/// the served certificate kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_makes_a_running_process_serve_its_renewed_certificate() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("sighup-ca");
    let (crt, key, first_der) = ca.node_cert(dir.path(), "node");
    let db = geecache_tests::demo_db(dir.path());
    let port = geecache_tests::free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = dir.path().join("node.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_geecache-node"))
        .args(["--plugin", plugins::DB_GETTER, "--plugin-config"])
        .arg(format!("db_getter.database={}", db.display()))
        .arg("--tls-cert")
        .arg(&crt)
        .arg("--tls-key")
        .arg(&key)
        .args(["--port", &port.to_string(), "--shutdown-grace", "0s"])
        .arg("--compile-cache-dir")
        .arg(geecache_tests::compile_cache_dir())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let https = client(&ca);
    let base = format!("https://{addr}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while https.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the node never answered: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served_cert(&addr, &ca).await, first_der);
    async fn assert_tom(https: &reqwest::Client, base: &str) {
        let r = https
            .get(format!("{base}/api?key=Tom"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), "630");
    }
    let hup = || {
        let status = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };

    // Renewed on disk, then SIGHUP: new connections get the new certificate.
    let (new_crt, new_key, new_der) = ca.node_cert(dir.path(), "renewed");
    std::fs::copy(&new_crt, &crt).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    hup();
    let deadline = Instant::now() + Duration::from_secs(20);
    while served_cert(&addr, &ca).await != new_der {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate is never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_tom(&https, &base).await;

    // A key that does not match the certificate: refused, the renewed one is still served.
    let (_, other_key, _) = ca.node_cert(dir.path(), "other");
    std::fs::copy(&other_key, &key).unwrap();
    hup();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        if logged.contains("TLS certificate was not reloaded") {
            break;
        }
        assert!(Instant::now() < deadline, "no refusal logged: {logged}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served_cert(&addr, &ca).await, new_der);
    assert_tom(&https, &base).await;
    let _ = child.kill();
    let _ = child.wait();
}
