//! The servers `geecache-perf` starts on 127.0.0.1: geecache nodes (child processes of the
//! `geecache-host` program), nginx with a fixed response, and the fixed-response server on the
//! node's own HTTP stack (the Go groupcache nodes, in `groupcache.rs`, are [`Process`]es too). Each process is stopped when its guard drops, so an error, a panic or
//! a Ctrl-C (see `main.rs`) leaves nothing running. A SIGKILL of this program runs no guard:
//! for that, each server is started by util-linux's `setpriv --pdeathsig`, so the kernel sends
//! it a signal when this program dies (see [`Death`]).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::load::interrupted;

/// How long a server may take to answer its readiness check.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stopping server gets after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The signal a server gets from the kernel when this program dies, however it dies.
#[derive(Debug, Clone, Copy)]
pub enum Death {
    /// For nginx, whose master process then stops its workers (killed, it would leave them
    /// running, holding the port).
    Term,
    /// For the others.
    Kill,
}

/// `cmd`, started by `setpriv --pdeathsig SIGNAL --` (util-linux; Debian installs it with every
/// system), which sets the child's parent-death signal and then executes the program as the
/// same process. Without `setpriv`, `cmd` as it is.
///
/// The kernel sends the signal when the thread that started the child ends: every server is
/// started by the program's main thread, whose end is the program's.
fn dying_with_this_program(cmd: Command, death: Death) -> Command {
    let Some(setpriv) = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
    else {
        return cmd;
    };
    let mut wrapped = Command::new(setpriv);
    let signal = match death {
        Death::Term => "TERM",
        Death::Kill => "KILL",
    };
    wrapped
        .args(["--pdeathsig", signal, "--"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (name, value) in cmd.get_envs() {
        match value {
            Some(value) => wrapped.env(name, value),
            None => wrapped.env_remove(name),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

/// A child process, stopped when dropped.
#[derive(Debug)]
pub struct Process {
    /// For messages.
    name: String,
    child: Child,
    /// Where its stdout and stderr go.
    log: PathBuf,
}

impl Process {
    /// Starts `cmd` with stdout and stderr to `log`, to get `death` if this program dies.
    pub fn spawn(name: &str, cmd: Command, log: PathBuf, death: Death) -> anyhow::Result<Process> {
        let mut cmd = dying_with_this_program(cmd, death);
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Process {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The end of the process's log.
    fn log_tail(&self) -> String {
        geecache_tests::log_tail(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Waits until `GET path` on `addr` answers 200.
    ///
    /// # Errors
    /// The process exits, the user interrupts, or [`READY_TIMEOUT`] passes.
    pub fn wait_ready(&mut self, addr: SocketAddr, path: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited during startup ({status}); its log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if geecache_tests::http_get_blocking(addr, path)
                .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
            {
                return Ok(());
            }
            if interrupted() {
                bail!("interrupted");
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer {path} within {READY_TIMEOUT:?}; its log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Resident memory now and at its peak, from `/proc/<pid>/status`.
    pub fn memory(&self) -> Option<Memory> {
        Memory::of(self.pid())
    }
}

impl Drop for Process {
    /// SIGTERM (nginx's master then stops its workers; a node stops at once with
    /// `--shutdown-grace 0s`), then SIGKILL if it is still running after [`STOP_TIMEOUT`].
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // `kill` the program: signalling from Rust without `unsafe` needs a crate we do not
        // otherwise use.
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of a process, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss: u64,
    /// `VmHWM`: the most it has been resident.
    pub hwm: u64,
}

impl Memory {
    /// Reads `/proc/<pid>/status`; `None` where there is no such file (not Linux, or gone).
    pub fn of(pid: u32) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            let kib: u64 = line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(kib * 1024)
        };
        Some(Memory {
            rss: field("VmRSS:")?,
            hwm: field("VmHWM:")?,
        })
    }
}

/// CPU time (user and system) that processes and their descendants have used so far, from
/// `/proc/<pid>/stat`; `None` where there is no `/proc` (not Linux) or a process is gone.
/// Differences of two readings are what a row cost (the client's own: `pid` = this program).
#[derive(Debug, Clone, Copy)]
pub struct CpuTime(Duration);

impl CpuTime {
    /// Of `pids` and every process descended from them (nginx's workers).
    pub fn of_trees(pids: &[u32]) -> Option<CpuTime> {
        let mut all: Vec<u32> = pids.to_vec();
        let mut parents = Vec::new();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1)?.parse::<u32>().ok()) {
                parents.push((pid, ppid));
            }
        }
        // Descendants, generation by generation (a process tree is shallow here).
        let mut i = 0;
        while i < all.len() {
            let parent = all[i];
            all.extend(
                parents
                    .iter()
                    .filter(|(_, pp)| *pp == parent)
                    .map(|(p, _)| *p),
            );
            i += 1;
        }
        CpuTime::of_processes(&all)
    }

    /// This program's own (its threads, not the servers it started).
    pub fn of_self() -> Option<CpuTime> {
        CpuTime::of_processes(&[std::process::id()])
    }

    /// Of exactly `pids`.
    fn of_processes(pids: &[u32]) -> Option<CpuTime> {
        let ticks: u64 = pids
            .iter()
            .map(|pid| {
                let f = stat_fields(*pid)?;
                // After `pid (comm)`: state is field 0, utime 11 and stime 12.
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .sum::<Option<u64>>()?;
        Some(CpuTime(Duration::from_secs_f64(
            ticks as f64 / clock_ticks_per_second(),
        )))
    }

    /// The CPU time spent from `before` to this reading.
    pub fn since(self, before: CpuTime) -> Duration {
        self.0.saturating_sub(before.0)
    }
}

/// The fields of `/proc/<pid>/stat` after `pid (comm)` (the name may hold spaces).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The kernel's clock ticks per second in `/proc` (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// `n` distinct free ports on 127.0.0.1 (all bound at once, then released for the servers).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The program the nodes run: `explicit`, or the newer of `geecache-host` and `geecache-node`
/// (the same program, built by the tests package) next to this executable.
///
/// # Errors
/// Neither exists: the message says how to build it.
pub fn host_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        anyhow::ensure!(
            path.is_file(),
            "--host-bin {}: no such file",
            path.display()
        );
        return Ok(path.to_owned());
    }
    let exe = std::env::current_exe().context("finding this program's path")?;
    let dir = exe.parent().context("this program has no directory")?;
    let mtime = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    ["geecache-host", "geecache-node"]
        .iter()
        .map(|name| dir.join(name))
        .filter_map(|p| mtime(&p).map(|t| (t, p)))
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| p)
        .with_context(|| {
            format!(
                "no geecache-host next to {}: build it with \
                 `cargo build --release -p geecache-host -p geecache-tests` \
                 (both packages in one command, so wasmtime is built once), or pass --host-bin",
                exe.display()
            )
        })
}

/// `path`'s modification time as "YYYY-MM-DD HH:MM UTC"-ish text for the report.
pub fn modified(path: &Path) -> String {
    path.metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or_else(|| "unknown".into(), |d| crate::report::utc(d.as_secs()))
}

/// How to start nodes.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// The `geecache-host` program.
    pub host_bin: PathBuf,
    /// The synthetic getter component.
    pub plugin: PathBuf,
    /// Its `value_bytes`.
    pub value_bytes: usize,
    /// The group it serves.
    pub group: String,
    /// Cluster secret for peer requests (None: peers unauthenticated).
    pub cluster_secret: Option<String>,
    /// More flags for every node.
    pub extra: Vec<String>,
}

/// Nodes started for one workload, stopped when dropped.
#[derive(Debug)]
pub struct Cluster {
    /// Where they listen.
    pub addrs: Vec<SocketAddr>,
    /// The processes (dropped before the directory holding their logs).
    pub nodes: Vec<Process>,
    _dir: TempDir,
}

impl Cluster {
    /// Starts `n` nodes; with more than one, each lists the others with `--peers`.
    pub fn start(spec: &NodeSpec, n: usize) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("geecache-perf-")
            .tempdir()?;
        let mut args = vec![
            "--plugin".to_owned(),
            format!("synth_getter={}", spec.plugin.display()),
            "--plugin-config".to_owned(),
            format!("synth_getter.value_bytes={}", spec.value_bytes),
            "--group".to_owned(),
            spec.group.clone(),
        ];
        if let (true, Some(secret)) = (n > 1, &spec.cluster_secret) {
            args.extend(["--cluster-secret".to_owned(), secret.clone()]);
        }
        args.extend(spec.extra.iter().cloned());
        let (nodes, addrs) = start_nodes(&spec.host_bin, n, &args, dir.path())?
            .into_iter()
            .unzip();
        Ok(Cluster {
            addrs,
            nodes,
            _dir: dir,
        })
    }
}

/// One node of `host_bin` with `args` (its plugins, their grants, its group) on a free port of
/// 127.0.0.1, logging into `dir`; ready when this returns, stopped when the process drops.
///
/// # Errors
/// It does not start, or is not ready in time (the message holds its log's end).
pub fn start_node(
    host_bin: &Path,
    args: &[String],
    dir: &Path,
) -> anyhow::Result<(Process, SocketAddr)> {
    let mut nodes = start_nodes(host_bin, 1, args, dir)?;
    Ok(nodes.remove(0))
}

/// `n` nodes as [`start_node`] starts one; with more than one, each lists the others with
/// `--peers` (add `--cluster-secret` to `args` for signed peers).
///
/// # Errors
/// As [`start_node`].
pub fn start_nodes(
    host_bin: &Path,
    n: usize,
    args: &[String],
    dir: &Path,
) -> anyhow::Result<Vec<(Process, SocketAddr)>> {
    let addrs: Vec<SocketAddr> = free_ports(n)?.into_iter().map(loopback).collect();
    let mut nodes = Vec::new();
    for addr in &addrs {
        let mut cmd = Command::new(host_bin);
        cmd.args(args)
            .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
            .args(["--advertise-addr", &addr.to_string()])
            .arg("--compile-cache-dir")
            .arg(geecache_tests::compile_cache_dir())
            .args(["--shutdown-grace", "0s"]);
        if n > 1 {
            let others: Vec<String> = addrs
                .iter()
                .filter(|a| *a != addr)
                .map(ToString::to_string)
                .collect();
            cmd.args(["--peers", &others.join(",")]);
        }
        let log = dir.join(format!("node-{}.log", addr.port()));
        nodes.push((
            Process::spawn(&format!("node {addr}"), cmd, log, Death::Kill)?,
            *addr,
        ));
    }
    for (node, addr) in &mut nodes {
        node.wait_ready(*addr, "/readyz")?;
    }
    Ok(nodes)
}

/// A fixed-response server, stopped when dropped.
#[derive(Debug)]
pub struct Fixed {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Held so the server stops when this drops.
    process: Process,
    _dir: TempDir,
}

impl Fixed {
    /// The server's process id (nginx: its master's).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// The nginx program, if installed (Debian puts it in /usr/sbin, often not on a user's PATH).
pub fn nginx_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

impl Fixed {
    /// nginx answering every request with `value_bytes` bytes, as many workers as cores, no
    /// access log, keep-alive connections never closed by request count.
    pub fn nginx(nginx: &Path, value_bytes: usize) -> anyhow::Result<Fixed> {
        let dir = tempfile::Builder::new()
            .prefix("geecache-perf-nginx-")
            .tempdir()?;
        let port = free_ports(1)?[0];
        let d = dir.path().display();
        // `return` text is a string with variables: the alphabet of the body has no `$`.
        let body = "x".repeat(value_bytes);
        let conf = format!(
            "worker_processes auto;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 \"{body}\"; }}
    }}
}}
"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let mut cmd = Command::new(nginx);
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_path);
        Fixed::spawn("nginx", cmd, port, dir, "/", Death::Term)
    }

    /// This program's hidden `fixed-server` subcommand: tokio set up as `geecache-host`'s main
    /// sets it up, the node's `api::serve`, and `stack` answering every request with
    /// `value_bytes` bytes.
    pub fn stack(stack: Stack, value_bytes: usize) -> anyhow::Result<Fixed> {
        let dir = tempfile::Builder::new()
            .prefix("geecache-perf-fixed-")
            .tempdir()?;
        let port = free_ports(1)?[0];
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args([
            "fixed-server",
            "--port",
            &port.to_string(),
            "--value-bytes",
            &value_bytes.to_string(),
            "--stack",
            stack.name(),
        ]);
        Fixed::spawn(stack.name(), cmd, port, dir, "/readyz", Death::Kill)
    }

    /// Starts `cmd` (logging into `dir`) and waits until `ready_path` on `port` answers.
    fn spawn(
        name: &str,
        cmd: Command,
        port: u16,
        dir: TempDir,
        ready_path: &str,
        death: Death,
    ) -> anyhow::Result<Fixed> {
        let log = dir.path().join(format!("{name}.log"));
        let mut process = Process::spawn(name, cmd, log, death)?;
        let addr = loopback(port);
        process.wait_ready(addr, ready_path)?;
        Ok(Fixed {
            addr,
            process,
            _dir: dir,
        })
    }
}

/// Options of the hidden `fixed-server` subcommand.
#[derive(Debug, clap::Args)]
pub struct FixedArgs {
    /// Port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    /// Bytes of every answer.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// What answers each request.
    #[arg(long, value_enum, default_value_t = Stack::Axum)]
    stack: Stack,
}

/// What answers a fixed-response baseline's requests, on the node's `api::serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stack {
    /// A hyper service that answers at once: what a node's plain GET of a key passes through
    /// (its shortcut) before any of the node's own work.
    Hyper,
    /// An axum router with one fallback route: what a node's other requests pass through.
    Axum,
}

impl Stack {
    /// The baseline's name: its row, and its word in `--baselines`.
    pub fn name(self) -> &'static str {
        match self {
            Stack::Hyper => "hyper",
            Stack::Axum => "axum",
        }
    }
}

/// The fixed answer: `body`, with the status and content type of a node's value.
fn fixed_response(body: &bytes::Bytes) -> axum::response::Response {
    let mut response = axum::response::Response::new(axum::body::Body::from(body.clone()));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// Serves the fixed response until SIGINT or SIGTERM on the node's own HTTP stack: a
/// multi-thread tokio runtime with default settings (as `geecache-host`'s main), connections
/// served by `geecache_host::api::serve` (hyper's HTTP/1.1), each request answered by
/// `args.stack`, `TCP_NODELAY` on every connection (as the node's listener), every path
/// answered `200` with the same bytes and content type as a node's value.
pub fn serve_fixed(args: &FixedArgs) -> anyhow::Result<()> {
    use axum::serve::ListenerExt as _;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let body = bytes::Bytes::from(vec![b'x'; args.value_bytes]);
    let stack = args.stack;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(loopback(args.port))
            .await?
            .tap_io(|s| {
                let _ = s.set_nodelay(true);
            });
        let stop = geecache_host::server::shutdown_signal();
        match stack {
            Stack::Hyper => {
                let service = hyper::service::service_fn(move |_| {
                    std::future::ready(Ok::<_, std::convert::Infallible>(fixed_response(&body)))
                });
                geecache_host::api::serve(listener, move |_| service.clone(), stop).await;
            }
            Stack::Axum => {
                let app = axum::Router::new().fallback(move || {
                    let response = fixed_response(&body);
                    async move { response }
                });
                let service = geecache_host::api::RouterService(app);
                geecache_host::api::serve(listener, move |_| service.clone(), stop).await;
            }
        }
        Ok(())
    })
}
