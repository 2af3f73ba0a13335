//! Test harness: real plugins (built by `build.rs`), real nodes on 127.0.0.1, a real SQLite
//! database created from the checked-in `plugins/db_getter/demo.sql`, and the Go groupcache
//! node the perf tool compares nodes with (`groupcache`: built from `tests/groupcache/`).

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use geecache_host::config::Cli;
use geecache_host::server::{self, Node};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The admin token of every [`TestNode`] that does not set its own (`--admin-token`).
pub const ADMIN_TOKEN: &str = "test-admin-token";

#[path = "corpus.rs"]
pub mod corpus;
#[path = "groupcache.rs"]
pub mod groupcache;
#[path = "pki.rs"]
pub mod pki;
#[path = "postgres.rs"]
pub mod postgres;

/// A real HTTP origin for `http_getter`.
#[path = "origin.rs"]
pub mod origin;

/// Paths of the plugin components built for this test run.
pub mod plugins {
    /// Reads values from SQLite through the host's `sql` capability.
    pub const DB_GETTER: &str = env!("PLUGIN_DB_GETTER");
    /// `http_getter`: GET {base}/{key} over wasi:http.
    pub const HTTP_GETTER: &str = env!("PLUGIN_HTTP_GETTER");
    /// Panics, loops or allocates without bound, depending on the key.
    pub const CHAOS_GETTER: &str = env!("PLUGIN_CHAOS_GETTER");
    /// Tries to leave its sandbox (sleeps, foreign databases, files, secrets in errors).
    pub const ESCAPE_GETTER: &str = env!("PLUGIN_ESCAPE_GETTER");
    /// A file-backed storage backend.
    pub const FS_STORAGE: &str = env!("PLUGIN_FS_STORAGE");
    /// A brotli codec.
    pub const BROTLI_COMPRESSOR: &str = env!("PLUGIN_BROTLI_COMPRESSOR");
    /// A codec that panics, loops or returns garbage, depending on the value.
    pub const CHAOS_COMPRESSOR: &str = env!("PLUGIN_CHAOS_COMPRESSOR");
    /// Answers every key with a deterministic value of `value_bytes` (config) bytes: the
    /// perf tool's getter.
    pub const SYNTH_GETTER: &str = env!("PLUGIN_SYNTH_GETTER");
    /// Version 1 of `reload_getter` (hot reload tests): answers `KEY@v1`; `slow*` keys after
    /// 50 ms.
    pub const RELOAD_GETTER_V1: &str = env!("PLUGIN_RELOAD_GETTER_V1");
    /// Version 2 of `reload_getter`: answers `KEY@v2`.
    pub const RELOAD_GETTER_V2: &str = env!("PLUGIN_RELOAD_GETTER_V2");
    /// A `reload_getter` whose `info` traps.
    pub const RELOAD_GETTER_BROKEN: &str = env!("PLUGIN_RELOAD_GETTER_BROKEN");
    /// A new version of `chaos_compressor` that takes levels 0 to 3 only.
    pub const RELOAD_COMPRESSOR_NARROW: &str = env!("PLUGIN_RELOAD_COMPRESSOR_NARROW");
    /// A storage backend built without `storage-clear` (world `storage-plugin-basic`), as
    /// storage plugins were before that interface existed; keeps entries in instance memory.
    pub const STORAGE_BASIC: &str = env!("PLUGIN_STORAGE_BASIC");
    /// A storage plugin written against the SDK before `Storage::clear` existed.
    pub const COMPAT_STORAGE: &str = env!("PLUGIN_COMPAT_STORAGE");

    /// `plugins/template`: the getter plugin authors start from.
    pub const HELLO_GETTER: &str = env!("PLUGIN_HELLO_GETTER");

    /// `plugins/py_getter`: db_getter's twin in Python (componentize-py).
    ///
    /// # Panics
    /// When `tests/build.rs` could not build it (no python3 with venv here, or no network for
    /// the first install of componentize-py).
    pub fn py_getter() -> &'static str {
        built_by_build_lang("py_getter", env!("PLUGIN_PY_GETTER"))
    }

    /// `plugins/js_getter`: db_getter's twin in JavaScript (componentize-js).
    ///
    /// # Panics
    /// When `tests/build.rs` could not build it (no node and npm here, or no network for the
    /// first install of componentize-js).
    pub fn js_getter() -> &'static str {
        built_by_build_lang("js_getter", env!("PLUGIN_JS_GETTER"))
    }

    /// `plugins/js_getter/http_getter.js`: http_getter's twin in JavaScript, with `fetch()`
    /// over wasi:http (componentize-js).
    ///
    /// # Panics
    /// As [`js_getter`].
    pub fn js_http_getter() -> &'static str {
        built_by_build_lang("js_http_getter", env!("PLUGIN_JS_HTTP_GETTER"))
    }

    fn built_by_build_lang(name: &str, path: &'static str) -> &'static str {
        assert!(
            !path.is_empty(),
            "{name}.wasm was not built: tests/build.rs runs plugins/build_lang.sh, which needs \
             python3 with venv (Debian: python3-venv) for py_getter and node with npm (Debian: \
             nodejs npm) for js_getter, and network access to PyPI/npm once. Run `bash \
             plugins/build_lang.sh` to see why, then `cargo test` again."
        );
        path
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("GEECACHE_REPO_ROOT"))
}

/// Where tests keep compiled plugins between runs, so each test does not recompile them.
pub fn compile_cache_dir() -> PathBuf {
    repo_root()
        .join("target")
        .join("geecache-test-compile-cache")
}

/// The node program `bin` (a test's `env!("CARGO_BIN_EXE_geecache-node")`) with db_getter on
/// `db`, on `port`, compiling into [`compile_cache_dir`]: what the tests that run a node as a
/// process of its own add their flags, environment and output to.
pub fn db_getter_node(bin: &str, port: u16, db: &Path) -> std::process::Command {
    let mut command = node_command(bin, port, plugins::DB_GETTER);
    command
        .arg("--plugin-config")
        .arg(format!("db_getter.database={}", db.display()));
    command
}

/// The node program `bin` with the plugin `plugin`, on `port`, compiling into
/// [`compile_cache_dir`] (see [`db_getter_node`]).
pub fn node_command(bin: &str, port: u16, plugin: &str) -> std::process::Command {
    // The child inherits the raised limit (a flood test opens thousands of connections to it).
    raise_fd_limit();
    let mut command = std::process::Command::new(bin);
    command
        .args(["--plugin", plugin, "--port", &port.to_string()])
        .arg("--compile-cache-dir")
        .arg(compile_cache_dir());
    command
}

/// Creates the demo database (Tom 630, Jack 589, Sam 567, 100k generated rows) in `dir` from
/// the same SQL the setup script uses.
pub fn demo_db(dir: &Path) -> PathBuf {
    let path = dir.join("demo.db");
    let sql = std::fs::read_to_string(repo_root().join("plugins/db_getter/demo.sql")).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(&sql).unwrap();
    path
}

/// A node running in this process on 127.0.0.1 (random port), with its own temp directory.
pub struct TestNode {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http://addr`.
    pub base: String,
    /// The node's state (groups, plugins), for direct inspection.
    pub node: Node,
    /// An HTTP client for requests to it.
    pub client: reqwest::Client,
    /// Temp dir holding the demo database.
    pub dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl std::fmt::Debug for TestNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNode")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TestNode {
    /// Starts a node on a random 127.0.0.1 port with `args`. `{db}` in an argument is replaced
    /// by the path of a fresh demo database.
    pub async fn start(args: &[&str]) -> TestNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        TestNode::start_on(listener, args).await
    }

    /// Starts `n` nodes in this process, each listing the others with `--peers` (a static
    /// cluster), each with `args` (as for [`TestNode::start`]).
    pub async fn cluster(n: usize, args: &[&str]) -> Vec<TestNode> {
        let mut listeners = Vec::new();
        for _ in 0..n {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let addrs: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().to_string())
            .collect();
        let mut nodes = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let others: Vec<&str> = addrs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, a)| a.as_str())
                .collect();
            let peers = others.join(",");
            let mut argv: Vec<&str> = args.to_vec();
            argv.extend(["--peers", &peers]);
            nodes.push(TestNode::start_on(listener, &argv).await);
        }
        nodes
    }

    /// Starts a node serving on `listener`, advertised at its address, with `args` (as for
    /// [`TestNode::start`]).
    pub async fn start_on(listener: TcpListener, args: &[&str]) -> TestNode {
        raise_fd_limit();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let needs_db = args.iter().any(|a| a.contains("{db}"));
        let db = if needs_db {
            demo_db(dir.path())
        } else {
            PathBuf::new()
        };
        let cache = compile_cache_dir();
        let mut argv: Vec<String> = vec![
            "geecache-host".into(),
            "--port".into(),
            "0".into(),
            "--compile-cache-dir".into(),
            cache.display().to_string(),
        ];
        // Advertised at its address, unless the test says how (e.g. https://...).
        if !args.contains(&"--advertise-addr") {
            argv.extend(["--advertise-addr".into(), addr.to_string()]);
        }
        // Tests stop at once unless they ask for a grace.
        if !args.contains(&"--shutdown-grace") {
            argv.extend(["--shutdown-grace".into(), "0s".into()]);
        }
        // The admin routes open with [`ADMIN_TOKEN`], and `?path=` may name any file (the
        // tests' plugins live under target/ and temporary directories), unless the test says.
        if !args.contains(&"--admin-token") {
            argv.extend(["--admin-token".into(), ADMIN_TOKEN.into()]);
        }
        if !args.contains(&"--reload-dir") {
            argv.extend(["--reload-dir".into(), "/".into()]);
        }
        argv.extend(
            args.iter()
                .map(|a| a.replace("{db}", &db.display().to_string())),
        );
        let cli = <Cli as clap::Parser>::try_parse_from(argv).unwrap();
        let settings = cli.resolve().unwrap();
        let (node, settings) =
            tokio::task::spawn_blocking(move || server::build(&settings).map(|n| (n, settings)))
                .await
                .unwrap()
                .unwrap();
        server::join(&node, &settings).await.unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, node.clone(), async move {
            let _ = rx.await;
        }));
        TestNode {
            addr,
            base: format!("http://{addr}"),
            node,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            dir,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// A node serving group `scores` from `db_getter` over a fresh demo database.
    pub async fn with_db_getter(extra: &[&str]) -> TestNode {
        let mut args = vec![
            "--plugin",
            plugins::DB_GETTER,
            "--plugin-config",
            "db_getter.database={db}",
        ];
        args.extend_from_slice(extra);
        TestNode::start(&args).await
    }

    /// `GET /api/v1/groups/{group}/keys/{key}`: status and body as text.
    pub async fn get_key(&self, group: &str, key: &str) -> (u16, String) {
        let (status, body) = self
            .get(&format!("/api/v1/groups/{group}/keys/{key}"))
            .await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// `POST /api/v1/groups/{group}/batch` for `keys`: status and JSON answer.
    pub async fn batch(&self, group: &str, keys: &[String]) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .post(format!("{}/api/v1/groups/{group}/batch", self.base))
            .json(&serde_json::json!({ "keys": keys }))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    /// GET `path` (starting with `/`): status and body.
    pub async fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.bytes().await.unwrap().to_vec())
    }

    /// GET `path` and parse the body as JSON.
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = self.get(path).await;
        let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "{path}: body is not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        });
        (status, json)
    }

    /// The stats of group `group`, read over HTTP from `/api/v1/stats`.
    pub async fn group_stats(&self, group: &str) -> serde_json::Value {
        let (status, stats) = self.get_json("/api/v1/stats").await;
        assert_eq!(status, 200);
        stats["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == group)
            .unwrap_or_else(|| panic!("no group {group} in {stats}"))
            .clone()
    }

    /// The body of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200);
        String::from_utf8(body).unwrap()
    }

    /// The stats of plugin `name`.
    pub async fn plugin_stats(&self, name: &str) -> serde_json::Value {
        let (_, stats) = self.get_json("/api/v1/stats").await;
        stats["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no plugin {name} in {stats}"))
            .clone()
    }

    /// Starts the node's graceful shutdown without waiting for it (see `server::run` for
    /// the steps a test can then watch).
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Stops the node gracefully and waits for it.
    pub async fn stop(mut self) {
        self.signal_shutdown();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound then released; fine for tests that start a process).
/// Raises this process's soft limit on open descriptors to its hard limit, once: a test that
/// runs 1,000 concurrent requests holds both ends of each connection, past the common 1024.
#[allow(unsafe_code)]
pub fn raise_fd_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) == 0
                && lim.rlim_cur < lim.rlim_max
            {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim);
            }
        }
    });
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `POST url` (no body) with the admin token ([`ADMIN_TOKEN`]): its status and JSON body.
///
/// # Panics
/// If the request fails or the answer is not JSON.
#[allow(clippy::unwrap_used)]
pub async fn admin_post(client: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let r = client
        .post(url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// Polls `url` until it answers 200 or `timeout` passes.
pub async fn wait_healthy(url: &str, timeout: Duration) -> bool {
    let client = reqwest::Client::new();
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// `GET path` on `addr` with std only (for harnesses that are not async): the whole raw
/// response, or `None` when the server cannot be reached.
pub fn http_get_blocking(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    Some(response)
}

/// The last 30 lines of a log, for panic messages.
pub fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Waits (polling every 50 ms, at most `timeout`) until `ready()` holds for a server process a
/// test started.
///
/// # Panics
/// If the process exits first or the timeout passes; the message names `what` and carries the
/// end of `log()`.
pub fn wait_child_ready(
    what: &str,
    child: &mut Child,
    timeout: Duration,
    log: impl Fn() -> String,
    mut ready: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{what} exited during startup ({status}); log:\n{}",
                log_tail(&log())
            );
        }
        if ready() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not ready within {timeout:?}; log:\n{}",
            log_tail(&log())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A db_getter node running as its own process (the `geecache-node` binary `bin`), so that its
/// resident memory, read from `/proc/<pid>/status`, is its own. Killed when dropped.
#[derive(Debug)]
pub struct NodeProcess {
    /// The process.
    pub child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its stderr, for the message when it dies.
    pub log: PathBuf,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProcess {
    /// Starts `bin` with db_getter on the database `db` and `args`, logging into `dir`, and
    /// returns once it answers `/healthz` (at most 60 s).
    pub async fn start(bin: &str, db: &Path, dir: &Path, args: &[&str]) -> NodeProcess {
        let port = free_port();
        let mut command = db_getter_node(bin, port, db);
        command.args(args);
        NodeProcess::spawn(command, port, dir).await
    }

    /// Runs `command` (a node listening on `port`), logging into `dir`, and returns once it
    /// answers `/healthz` (at most 60 s).
    pub async fn spawn(mut command: std::process::Command, port: u16, dir: &Path) -> NodeProcess {
        let log = dir.join("node.log");
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let node = NodeProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
            port,
            log,
        };
        // No connection kept for later: a test may count the node's connections next.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        for _ in 0..600 {
            if let Ok(r) = client.get(format!("{}/healthz", node.base)).send().await
                && r.status().is_success()
            {
                return node;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the node did not start: {}", node.log_tail());
    }

    /// Its `/metrics` page.
    pub async fn metrics_text(&self) -> String {
        let answer = reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        answer.text().await.unwrap()
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        log_tail(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// `VmRSS` and `VmHWM` of the node, in bytes; panics with its log if it died.
    pub fn memory(&mut self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kb| kb * 1024)
        };
        match (field("VmRSS:"), field("VmHWM:")) {
            (Some(rss), Some(peak)) => (rss, peak),
            _ => {
                let exit = self.child.try_wait();
                panic!(
                    "the node died ({exit:?}); its log ends:\n{}",
                    self.log_tail()
                );
            }
        }
    }
}

/// The entry files `fs_storage` keeps under `dir`, all groups, cleared ones not yet swept
/// included (its layout: `<dir>/<group>/<bucket>/<key>`; names starting with `.`, such as
/// `.usage` and temporary files, are not entries).
pub fn fs_storage_entries(dir: &Path) -> Vec<PathBuf> {
    let children = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .map(|r| r.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    };
    children(dir)
        .iter()
        .flat_map(|group| children(group))
        .filter(|bucket| bucket.is_dir())
        .flat_map(|bucket| children(&bucket))
        .filter(|file| !file.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect()
}
