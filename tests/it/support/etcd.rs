//! A real, private etcd for a test: `/usr/bin/etcd` on two free loopback ports with its own
//! data directory, killed when dropped.
//!
//! `crate::support::etcd` in the integration tests (tests/it/main.rs). Everything here is
//! synchronous (std and the blocking helpers of `geecache_tests`) so any test, async or not, can
//! use it.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use geecache_tests::{free_port, http_get_blocking, wait_child_ready};

/// Where Debian's `etcd-server` package installs the server.
pub const ETCD_BIN: &str = "/usr/bin/etcd";
/// The most a start or restart may take before the test fails (etcd is usually healthy in ~1 s).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// The most a SIGTERM'd etcd may take to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The files of an etcd that speaks TLS and asks for client certificates.
#[derive(Debug, Clone)]
pub struct EtcdTlsFiles {
    /// The CA client certificates must chain to (`--trusted-ca-file`).
    pub ca: PathBuf,
    /// The server's certificate chain and key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One running (or stopped) single-member etcd.
pub struct EtcdServer {
    /// TLS on the client port, with client certificates (`--client-cert-auth`), when set.
    tls: Option<EtcdTlsFiles>,
    /// A plain HTTP port for `/health` (`--listen-metrics-urls`), so health is read without TLS.
    metrics_port: u16,
    /// The server process, while it runs.
    child: Option<Child>,
    /// Client port (`--listen-client-urls`), kept across restarts.
    client_port: u16,
    /// Peer port (`--listen-peer-urls`), kept across restarts.
    peer_port: u16,
    /// Holds the data directory and the log; removed when the server is dropped.
    dir: tempfile::TempDir,
}

impl EtcdServer {
    /// Starts etcd on two free loopback ports and waits until it answers `/health`.
    ///
    /// # Panics
    /// If `/usr/bin/etcd` is missing, or etcd is not healthy within 20 s (the panic message
    /// carries the end of etcd's log).
    pub fn start() -> EtcdServer {
        EtcdServer::start_with(None)
    }

    /// [`EtcdServer::start`] with TLS on the client port and client certificates required.
    pub fn start_tls(files: EtcdTlsFiles) -> EtcdServer {
        EtcdServer::start_with(Some(files))
    }

    fn start_with(tls: Option<EtcdTlsFiles>) -> EtcdServer {
        assert!(
            Path::new(ETCD_BIN).exists(),
            "{ETCD_BIN} not found: these tests run a real etcd; install it with \
             `apt-get install etcd-server etcd-client`"
        );
        let dir = tempfile::Builder::new()
            .prefix("geecache-etcd-")
            .tempdir()
            .unwrap();
        let mut server = EtcdServer {
            tls,
            metrics_port: free_port(),
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            dir,
        };
        // A free port may be taken by another test between `free_port` and etcd's bind: then
        // try again on other ports, from an empty data directory.
        for _ in 0..4 {
            if server.spawn_child() {
                server.wait_healthy();
                return server;
            }
            let _ = std::fs::remove_dir_all(server.dir.path().join("data"));
            server.client_port = free_port();
            server.peer_port = free_port();
            server.metrics_port = free_port();
        }
        server.launch();
        server
    }

    /// Spawns etcd; false when it exits at once because a port was taken (within 2 s).
    fn spawn_child(&mut self) -> bool {
        self.spawn();
        let deadline = Instant::now() + Duration::from_secs(2);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.metrics_port));
        while Instant::now() < deadline {
            let child = self.child.as_mut().unwrap();
            if child.try_wait().unwrap().is_some() {
                self.child = None;
                if self.log().contains("address already in use") {
                    return false;
                }
                // Another failure: let `wait_healthy` of a new launch report it with the log.
                return self.spawn_and_keep();
            }
            if health(addr) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Spawns again for `wait_healthy` to report on.
    fn spawn_and_keep(&mut self) -> bool {
        self.spawn();
        true
    }

    /// The client URL, e.g. `http://127.0.0.1:34567` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Stops etcd gracefully (SIGTERM) and waits for it to exit (killing it after 10 s).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts etcd again with the same data directory and ports (stopping it first if needed).
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// The server's combined stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn launch(&mut self) {
        self.spawn();
        self.wait_healthy();
    }

    /// Starts the process (not waiting for it).
    fn spawn(&mut self) {
        let client_url = self.endpoint();
        let metrics_url = format!("http://127.0.0.1:{}", self.metrics_port);
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut command = Command::new(ETCD_BIN);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", "default"])
            .args(["--listen-metrics-urls", &metrics_url])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {ETCD_BIN}: {e}"));
        self.child = Some(child);
    }

    /// Polls etcd's `/health` (a real read through the server) until it says so.
    fn wait_healthy(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.metrics_port));
        let log = self.log_path();
        let child = self.child.as_mut().unwrap();
        wait_child_ready(
            &format!("etcd at {addr}"),
            child,
            START_TIMEOUT,
            || std::fs::read_to_string(&log).unwrap_or_default(),
            || health(addr),
        );
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `GET /health` → `{"health":"true"}`.
fn health(addr: SocketAddr) -> bool {
    http_get_blocking(addr, "/health")
        .is_some_and(|r| r.starts_with("HTTP/1.1 200") && r.contains(r#""health":"true""#))
}
