//! `geecache-perf http`: request rate and latency of nodes over HTTP, against fixed-response
//! baselines measured by the same client in the same run.
//!
//! Baselines: nginx answering a fixed body (when installed), and fixed-response servers on the
//! node's own HTTP stack: a hyper service (what a node's plain GET passes through before the
//! node's own work) and an axum router (what its other requests pass through). Workloads, each
//! on fresh nodes that this command starts (the `synth_getter` plugin answering every key) or
//! on `--target` nodes:
//! - `hit`: `--keys` keys loaded once, then asked uniformly (every answer from the cache);
//! - `miss`: a key never asked before on every request (every answer loaded by the getter; in a
//!   cluster, by the key's owner for the node asked);
//! - `zipf`: Zipf-distributed keys over `--zipf-keys` (cold at first, a realistic hit ratio);
//! - `mixed`: the `hit` keys with `--put-percent` of requests setting them.
//!
//! `NAME@N` runs a workload on `N` nodes (static peers on loopback), the client's connections
//! spread over them.
//!
//! The `groupcache` baseline is a peer system rather than a fixed response: three Go groupcache
//! nodes (`groupcache.rs`) asked by the same client with the same requests, keys and value
//! sizes, in two rows, `groupcache hit@3` (the `hit` keys, loaded first) and `groupcache
//! miss@3` (never-asked keys). Rows of ours of the same kind on as many nodes get the ratios
//! "× groupcache" (req/s) and "CPU × groupcache" (server CPU per request, the three Go
//! processes' summed as a cluster's nodes' are).

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::groupcache::{self, GroupcacheCluster};
use crate::load::{self, Keys, Load, Outcome, Requests, Zipf, interrupted};
use crate::report;
use crate::servers::{self, Cluster, CpuTime, Fixed, NodeSpec, Stack};

/// Options of `geecache-perf http`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Workloads, `NAME[@NODES]`, comma-separated; NAME is hit, miss, zipf or mixed; `none`
    /// for none.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "hit,miss,zipf,mixed,hit@3,miss@3"
    )]
    pub workloads: Vec<String>,
    /// Baselines measured first: nginx, hyper, axum, groupcache (3 Go groupcache nodes, a hit
    /// and a miss row); `none` for none. nginx, and groupcache without Go or its groupcache
    /// package, are skipped (with a note) when not installed.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "nginx,hyper,axum,groupcache"
    )]
    pub baselines: Vec<String>,
    /// Drive these running nodes (`http://host:port`, comma-separated) instead of starting
    /// nodes; `@NODES` of the workloads is then ignored.
    #[arg(long, value_delimiter = ',')]
    pub target: Vec<String>,
    /// The group the workloads ask (nodes this command starts serve it from synth_getter).
    #[arg(long, default_value = "perf")]
    pub group: String,
    /// `Authorization: Bearer` token sent with every request (for `--target` nodes with
    /// `--api-token`).
    #[arg(long, env = "GEECACHE_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Connections, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Client threads [default: the cores available].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Run the client's threads under Linux's SCHED_BATCH policy (the default): an answer
    /// that wakes one no longer preempts the server that sent it on a shared core, as with a
    /// client on another machine. `--client-batch=false` keeps the client a normal process,
    /// as wrk is.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set)]
    pub client_batch: bool,
    /// Measuring time of each baseline and workload.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Rounds: the baselines and workloads run this many times, one after the other, and the
    /// table gives each ratio as its median over the rounds (a shared machine drifts between
    /// rows; a ratio within a round is what to compare).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// Bytes of every value (the getter's `value_bytes`, the baselines' body, PUT bodies).
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Keys of the `hit` and `mixed` workloads (loaded once before measuring).
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Keys the `zipf` workload draws from.
    #[arg(long, default_value_t = 1_000_000)]
    pub zipf_keys: u64,
    /// Exponent of the `zipf` workload (0.99 as in YCSB; higher is more skewed).
    #[arg(long, default_value_t = 0.99)]
    pub zipf_exponent: f64,
    /// Percent of `mixed` requests that are PUTs.
    #[arg(long, default_value_t = 10)]
    pub put_percent: u32,
    /// Nodes of a cluster are started without a cluster secret (peer requests unsigned).
    #[arg(long)]
    pub insecure_peers: bool,
    /// A flag for every node this command starts (repeatable), e.g. `--node-arg=--compression=lz4`.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
    /// The `geecache-host` program for the nodes [default: geecache-host (or geecache-node,
    /// whichever is newer) next to this program].
    #[arg(long)]
    pub host_bin: Option<PathBuf>,
    /// The synthetic getter component [default: the one the tests build].
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// How long after a run's end an unanswered request is waited for (then it fails).
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub answer_timeout: Duration,
    /// Markdown report file [default: target/perf/http.md].
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// What a workload does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hit,
    Miss,
    Zipf,
    Mixed,
}

/// One `NAME[@NODES]` of `--workloads`.
#[derive(Debug, Clone, Copy)]
struct Workload {
    kind: Kind,
    nodes: usize,
}

impl Workload {
    fn parse(s: &str) -> anyhow::Result<Workload> {
        let (name, nodes) = match s.split_once('@') {
            Some((name, n)) => (
                name,
                n.parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .with_context(|| format!("workload {s:?}: NODES must be 1 or more"))?,
            ),
            None => (s, 1),
        };
        let kind = match name {
            "hit" => Kind::Hit,
            "miss" => Kind::Miss,
            "zipf" => Kind::Zipf,
            "mixed" => Kind::Mixed,
            _ => bail!("no workload {name:?}: hit, miss, zipf or mixed, with an optional @NODES"),
        };
        Ok(Workload { kind, nodes })
    }

    fn name(self) -> String {
        let name = match self.kind {
            Kind::Hit => "hit",
            Kind::Miss => "miss",
            Kind::Zipf => "zipf",
            Kind::Mixed => "mixed",
        };
        if self.nodes == 1 {
            name.to_owned()
        } else {
            format!("{name}@{}", self.nodes)
        }
    }
}

/// One line of the table.
#[derive(Debug)]
struct Row {
    name: String,
    /// Nodes loaded (None for a fixed-response baseline).
    nodes: Option<usize>,
    /// What was measured: what other rows are compared with.
    source: Source,
    outcome: Outcome,
    /// Getter calls during the measured part, summed over the nodes.
    getter_calls: Option<u64>,
    /// Peer requests served during the measured part, summed over the nodes.
    peer_requests: Option<u64>,
    /// The largest peak resident memory among the nodes.
    peak_rss: Option<u64>,
    /// CPU time the servers (the nodes, or the baseline) and this program spent on the row.
    cpu: Cpu,
}

/// What a row measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A fixed-response baseline (nginx, hyper, axum).
    Fixed,
    /// A workload on geecache nodes.
    Ours(Kind),
    /// A workload on Go groupcache nodes (the `groupcache` baseline).
    Groupcache(Kind),
}

/// CPU time spent on a row: of the servers and of the client, from `/proc` (Linux; not for
/// `--target` nodes).
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    /// The servers', summed over their processes.
    servers: Option<Duration>,
    /// This program's (the load generator's).
    client: Option<Duration>,
}

impl Cpu {
    /// Reads the servers' (`pids`, with their children) and the client's CPU time around
    /// `run`.
    fn around<T>(pids: &[u32], run: impl FnOnce() -> T) -> (T, Cpu) {
        let servers = (!pids.is_empty())
            .then(|| CpuTime::of_trees(pids))
            .flatten();
        let client = CpuTime::of_self();
        let out = run();
        let spent = |before: Option<CpuTime>, after: Option<CpuTime>| {
            before.zip(after).map(|(b, a)| a.since(b))
        };
        let cpu = Cpu {
            servers: spent(
                servers,
                (!pids.is_empty())
                    .then(|| CpuTime::of_trees(pids))
                    .flatten(),
            ),
            client: spent(client, CpuTime::of_self()),
        };
        (out, cpu)
    }

    /// Both, summed over rounds.
    fn absorb(&mut self, other: Cpu) {
        let add = |a: Option<Duration>, b: Option<Duration>| a.zip(b).map(|(a, b)| a + b);
        self.servers = add(self.servers, other.servers);
        self.client = add(self.client, other.client);
    }
}

/// Everything a workload needs that does not change between workloads.
#[derive(Debug)]
struct Setup {
    args: Args,
    threads: usize,
    /// Prefix of every key of this run, so keys of one run are not hits of another.
    run_id: String,
    /// Nodes to start, or None with `--target`.
    nodes: Option<NodeSpec>,
    /// `--target` addresses.
    targets: Vec<SocketAddr>,
    /// `PUT` body.
    body: Arc<[u8]>,
}

impl Setup {
    fn requests(&self, key_prefix: &str, keys: Keys, put_percent: u32) -> Requests {
        Requests {
            path_prefix: format!("/api/v1/groups/{}/keys/", self.args.group),
            key_prefix: format!("{}{key_prefix}", self.run_id),
            keys,
            put_percent,
            body: Arc::clone(&self.body),
            authorization: self.args.token.as_ref().map(|t| format!("Bearer {t}")),
        }
    }

    fn load(&self, label: &str, targets: &[SocketAddr], requests: Requests) -> Load {
        Load {
            label: label.to_owned(),
            targets: targets.to_vec(),
            connections: self.args.connections,
            threads: self.threads,
            duration: self.args.duration,
            max_requests: None,
            answer_timeout: self.args.answer_timeout,
            requests,
            // The value size is known only for nodes this command starts.
            expect_len: self.nodes.as_ref().map(|_| self.args.value_bytes),
            progress: true,
            batch: self.args.client_batch,
        }
    }
}

/// Runs the baselines and workloads, prints the table, writes the report.
///
/// # Errors
/// A server does not start, the user interrupts, or any request failed (after the report is
/// written).
pub fn run(args: Args) -> anyhow::Result<()> {
    let workloads = args
        .workloads
        .iter()
        .filter(|w| *w != "none")
        .map(|w| Workload::parse(w))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let baselines: Vec<String> = args
        .baselines
        .iter()
        .filter(|b| *b != "none")
        .cloned()
        .collect();
    if let Some(b) = baselines
        .iter()
        .find(|b| !BASELINES.contains(&b.as_str()) && *b != GROUPCACHE)
    {
        bail!("no baseline {b:?}: nginx, hyper, axum, groupcache or none");
    }
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    let targets = args
        .target
        .iter()
        .map(|t| target_addr(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let nodes = if targets.is_empty() && !workloads.is_empty() {
        let host_bin = servers::host_binary(args.host_bin.as_deref())?;
        let plugin = args
            .plugin
            .clone()
            .unwrap_or_else(|| geecache_tests::plugins::SYNTH_GETTER.into());
        anyhow::ensure!(plugin.is_file(), "no plugin at {}", plugin.display());
        Some(NodeSpec {
            host_bin,
            plugin,
            value_bytes: args.value_bytes,
            group: args.group.clone(),
            cluster_secret: (!args.insecure_peers).then(|| format!("perf-{}", run_id())),
            extra: args.node_args.clone(),
        })
    } else {
        None
    };
    if cfg!(debug_assertions) {
        eprintln!(
            "geecache-perf: warning: this is a debug build; the client is slow. For figures: \
             cargo run --release -p geecache-tests --bin geecache-perf -- http"
        );
    }
    let setup = Setup {
        threads: args.threads.unwrap_or_else(report::cores).max(1),
        run_id: run_id(),
        nodes,
        targets,
        body: (0..args.value_bytes)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>()
            .into(),
        args,
    };

    let rounds = setup.args.rounds;
    let steps = (baselines.len() + workloads.len()) * rounds as usize;
    let mut all_rounds = Vec::new();
    let mut notes = Vec::new();
    let mut step = 0;
    for round in 1..=rounds {
        let rows = run_round(&setup, &baselines, &workloads, &mut notes, &mut step, steps)?;
        if rounds > 1 {
            eprintln!("round {round}/{rounds} done");
        }
        all_rounds.push(rows);
    }

    let text = render(&setup, &all_rounds, &notes);
    report::publish(&text, setup.args.report.as_deref(), "http.md")?;
    let failed: Vec<&str> = all_rounds
        .iter()
        .flatten()
        .filter(|r| !r.outcome.all_ok())
        .map(|r| r.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "not every request succeeded in: {} (see the report)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// One round: every baseline, then every workload.
fn run_round(
    setup: &Setup,
    baselines: &[String],
    workloads: &[Workload],
    notes: &mut Vec<String>,
    step: &mut usize,
    steps: usize,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for b in baselines {
        *step += 1;
        eprintln!("[{step}/{steps}] baseline {b}");
        if b == GROUPCACHE {
            match geecache_tests::groupcache::binary().map_err(anyhow::Error::msg)? {
                Some(bin) => {
                    for kind in [Kind::Hit, Kind::Miss] {
                        rows.push(run_groupcache(setup, &bin, kind)?);
                        if interrupted() {
                            bail!("interrupted");
                        }
                    }
                }
                None => note(
                    notes,
                    &format!(
                        "Go or its groupcache package is not installed: no groupcache rows ({})",
                        geecache_tests::groupcache::INSTALL
                    ),
                ),
            }
            continue;
        }
        let fixed = match b.as_str() {
            "nginx" => match servers::nginx_binary() {
                Some(nginx) => Fixed::nginx(&nginx, setup.args.value_bytes)?,
                None => {
                    note(
                        notes,
                        "nginx is not installed: no nginx baseline \
                         (Debian: apt-get install nginx-light)",
                    );
                    continue;
                }
            },
            "hyper" => Fixed::stack(Stack::Hyper, setup.args.value_bytes)?,
            _ => Fixed::stack(Stack::Axum, setup.args.value_bytes)?,
        };
        let requests = setup.requests("b", Keys::Uniform(setup.args.keys), 0);
        let mut load = setup.load(b, &[fixed.addr], requests);
        load.expect_len = Some(setup.args.value_bytes);
        let (outcome, cpu) = Cpu::around(&[fixed.pid()], || load::run(&load));
        rows.push(Row {
            name: b.clone(),
            nodes: None,
            source: Source::Fixed,
            outcome: outcome?,
            getter_calls: None,
            peer_requests: None,
            peak_rss: None,
            cpu,
        });
        drop(fixed);
        if interrupted() {
            bail!("interrupted");
        }
    }
    for w in workloads {
        *step += 1;
        eprintln!("[{step}/{steps}] {}", w.name());
        rows.push(run_workload(setup, *w)?);
        if interrupted() {
            bail!("interrupted");
        }
    }
    Ok(rows)
}

/// Prints `note` and keeps it for the report, once.
fn note(notes: &mut Vec<String>, note: &str) {
    eprintln!("  {note}");
    if !notes.iter().any(|n| n == note) {
        notes.push(note.to_owned());
    }
}

/// A short id from the clock, unique enough between runs on one machine.
fn run_id() -> String {
    let mut n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut id = String::new();
    while n > 0 {
        id.push(char::from_digit((n % 36) as u32, 36).unwrap_or('0'));
        n /= 36;
    }
    id
}

/// `http://host:port` (or `host:port`) as a socket address.
fn target_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    anyhow::ensure!(
        !rest.starts_with("https://"),
        "--target {url}: https is not supported"
    );
    let hostport = rest.trim_end_matches('/');
    hostport
        .to_socket_addrs()
        .with_context(|| format!("--target {url}: not host:port"))?
        .next()
        .with_context(|| format!("--target {url}: no address"))
}

fn run_workload(setup: &Setup, w: Workload) -> anyhow::Result<Row> {
    let args = &setup.args;
    let cluster = match &setup.nodes {
        Some(spec) => Some(Cluster::start(spec, w.nodes)?),
        None => None,
    };
    let targets = cluster
        .as_ref()
        .map_or_else(|| setup.targets.clone(), |c| c.addrs.clone());
    // Each workload has its own keys, so no workload finds another's in a `--target` cache.
    let prefix = format!("{}-", w.name().replace('@', "n"));
    if matches!(w.kind, Kind::Hit | Kind::Mixed) {
        load_keys(setup, &w.name(), &targets, &prefix)?;
    }
    let keys = match w.kind {
        Kind::Hit | Kind::Mixed => Keys::Uniform(args.keys),
        Kind::Miss => Keys::Unique,
        Kind::Zipf => Keys::Zipf(Arc::new(Zipf::new(args.zipf_keys, args.zipf_exponent))),
    };
    let put_percent = if w.kind == Kind::Mixed {
        args.put_percent
    } else {
        0
    };
    let load = setup.load(
        &w.name(),
        &targets,
        setup.requests(&prefix, keys, put_percent),
    );
    let before = getter_calls(&targets, &args.group, args.token.as_deref());
    let peers_before = peer_requests(&targets, args.token.as_deref());
    let pids: Vec<u32> = cluster
        .as_ref()
        .map(|c| c.nodes.iter().map(servers::Process::pid).collect())
        .unwrap_or_default();
    let (outcome, cpu) = Cpu::around(&pids, || load::run(&load));
    let outcome = outcome?;
    let after = getter_calls(&targets, &args.group, args.token.as_deref());
    let peers_after = peer_requests(&targets, args.token.as_deref());
    let peak_rss = cluster.as_ref().and_then(|c| {
        c.nodes
            .iter()
            .filter_map(|n| n.memory().map(|m| m.hwm))
            .max()
    });
    Ok(Row {
        name: w.name(),
        nodes: Some(targets.len()),
        source: Source::Ours(w.kind),
        outcome,
        getter_calls: before.zip(after).map(|(b, a)| a.saturating_sub(b)),
        peer_requests: peers_before
            .zip(peers_after)
            .map(|(b, a)| a.saturating_sub(b)),
        peak_rss,
        cpu,
    })
}

/// Asks each of the `--keys` keys under `prefix` once, through `targets`, so the measured part
/// finds them cached.
///
/// # Errors
/// A request fails, or the user interrupts.
fn load_keys(
    setup: &Setup,
    name: &str,
    targets: &[SocketAddr],
    prefix: &str,
) -> anyhow::Result<()> {
    let keys = setup.args.keys;
    let mut warm = setup.load(
        &format!("{name}: loading {keys} keys"),
        targets,
        setup.requests(prefix, Keys::Sequential, 0),
    );
    warm.max_requests = Some(keys);
    warm.duration = Duration::from_secs(600);
    let outcome = load::run(&warm)?;
    if !outcome.all_ok() {
        bail!(
            "{name}: loading the keys failed for {} of {} requests: {}",
            outcome.requests - outcome.ok,
            outcome.requests,
            outcome.problems.join("; ")
        );
    }
    Ok(())
}

/// A `groupcache` row: `kind` (hit or miss) on [`groupcache::NODES`] fresh Go groupcache
/// nodes of `bin`, with the requests, keys and value size of our rows of that kind.
fn run_groupcache(setup: &Setup, bin: &std::path::Path, kind: Kind) -> anyhow::Result<Row> {
    let args = &setup.args;
    let w = Workload {
        kind,
        nodes: groupcache::NODES,
    };
    let name = format!("{GROUPCACHE} {}", w.name());
    let cluster = GroupcacheCluster::start(bin, w.nodes, &args.group, args.value_bytes)?;
    let prefix = format!("gc-{}-", w.name().replace('@', "n"));
    if kind == Kind::Hit {
        load_keys(setup, &name, &cluster.addrs, &prefix)?;
    }
    let keys = match kind {
        Kind::Hit => Keys::Uniform(args.keys),
        _ => Keys::Unique,
    };
    let mut load = setup.load(&name, &cluster.addrs, setup.requests(&prefix, keys, 0));
    load.expect_len = Some(args.value_bytes);
    let before = cluster.counters();
    let (outcome, cpu) = Cpu::around(&cluster.pids(), || load::run(&load));
    let counted = cluster.counters().zip(before).map(|(a, b)| a.since(b));
    Ok(Row {
        name,
        nodes: Some(w.nodes),
        source: Source::Groupcache(kind),
        outcome: outcome?,
        getter_calls: counted.map(|c| c.getter_calls),
        peer_requests: counted.map(|c| c.peer_requests),
        peak_rss: cluster.peak_rss(),
        cpu,
    })
}

/// The group's getter calls summed over `targets`, from `/api/v1/stats`; None if any node
/// does not say.
fn getter_calls(targets: &[SocketAddr], group: &str, token: Option<&str>) -> Option<u64> {
    targets
        .iter()
        .map(|addr| group_stats(*addr, group, token)?["getter_calls"].as_u64())
        .sum()
}

/// Peer requests (`/_geecache/...`, single gets and batches alike) the nodes at `targets` have
/// served, from their `/metrics`; None if any node does not say.
fn peer_requests(targets: &[SocketAddr], token: Option<&str>) -> Option<u64> {
    targets
        .iter()
        .map(|addr| {
            let text = get_body(*addr, "/metrics", token)?;
            Some(
                text.lines()
                    .filter(|l| {
                        l.starts_with("geecache_http_request_duration_seconds_count{")
                            && l.contains("route=\"/_geecache/{*path}\"")
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>() as u64,
            )
        })
        .sum()
}

/// The stats of `group` on the node at `addr`, from `/api/v1/stats`.
pub fn group_stats(
    addr: SocketAddr,
    group: &str,
    token: Option<&str>,
) -> Option<serde_json::Value> {
    let stats = get_json(addr, "/api/v1/stats", token)?;
    stats["groups"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == group)
        .cloned()
}

/// `GET path` on `addr` (one connection, closed after), its body as JSON.
fn get_json(addr: SocketAddr, path: &str, token: Option<&str>) -> Option<serde_json::Value> {
    serde_json::from_str(&get_body(addr, path, token)?).ok()
}

/// `GET path` on `addr` (one connection, closed after), the body of a 200 answer.
pub fn get_body(addr: SocketAddr, path: &str, token: Option<&str>) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        let _ = write!(request, "Authorization: Bearer {t}\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8(response).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    Some(body.to_string())
}

/// Success percent, never rounded up to 100.00 when a request failed.
fn success(o: &Outcome) -> String {
    if o.all_ok() {
        "100.00".into()
    } else {
        format!("{:.2}", (o.success_percent() * 100.0).floor() / 100.0)
    }
}

/// The fixed-response baselines, in the order of their rows and ratio columns.
const BASELINES: [&str; 3] = ["nginx", "hyper", "axum"];

/// The peer-system baseline: Go groupcache nodes (its rows come after the fixed ones').
const GROUPCACHE: &str = "groupcache";

/// The ratio columns: one per fixed baseline, the hit path, then groupcache.
const RATIOS: usize = BASELINES.len() + 2;

/// A row's rate against each comparison row of its own round: the [`BASELINES`] in their
/// order, the hit path (the hit row on as many nodes, else on one node), then groupcache (see
/// [`groupcache_of`]).
fn ratios(round: &[Row], r: &Row) -> [Option<f64>; RATIOS] {
    let baseline = |name: &str| {
        round
            .iter()
            .find(|b| b.source == Source::Fixed && b.name == name)
    };
    let hit_of = |nodes: Option<usize>| {
        round
            .iter()
            .find(|h| h.source == Source::Ours(Kind::Hit) && h.nodes == nodes)
    };
    let hit = match r.source {
        Source::Ours(Kind::Hit) if r.nodes == Some(1) => None,
        Source::Ours(_) => hit_of(r.nodes)
            .filter(|h| h.name != r.name)
            .or_else(|| hit_of(Some(1))),
        Source::Fixed | Source::Groupcache(_) => None,
    };
    let rate = r.outcome.rate();
    let [nginx, hyper, axum] = BASELINES.map(baseline);
    [nginx, hyper, axum, hit, groupcache_of(round, r)]
        .map(|b| b.map(|b| rate / b.outcome.rate().max(1e-9)))
}

/// The groupcache row of `round` a row is compared with: the one of the same kind (hit or
/// miss) on as many nodes (a groupcache row's own, giving 1.00).
fn groupcache_of<'a>(round: &'a [Row], r: &Row) -> Option<&'a Row> {
    let (Source::Ours(kind) | Source::Groupcache(kind)) = r.source else {
        return None;
    };
    round
        .iter()
        .find(|g| g.source == Source::Groupcache(kind) && g.nodes == r.nodes)
}

/// The CPU ratio columns: the row's server CPU per request against the `hyper` baseline's,
/// the 1-node hit's and groupcache's, all of its own round.
const CPU_RATIOS: usize = 3;

/// A row's server CPU per request against the `hyper` baseline's, the 1-node hit row's and
/// the groupcache row's (see [`groupcache_of`]) of its round: the figures the targets are set
/// in, since they do not depend on who wins the shared cores. For a cluster the servers are
/// all its nodes, so `miss@3`'s is the three nodes' CPU summed (and `groupcache miss@3`'s the
/// three Go processes').
fn cpu_ratios(round: &[Row], r: &Row) -> [Option<f64>; CPU_RATIOS] {
    let hyper = round
        .iter()
        .find(|b| b.source == Source::Fixed && b.name == "hyper");
    let hit = round
        .iter()
        .find(|h| h.source == Source::Ours(Kind::Hit) && h.nodes == Some(1))
        .filter(|h| matches!(r.source, Source::Ours(_)) && h.name != r.name);
    let own = r.cpu_per_request();
    [hyper, hit, groupcache_of(round, r)].map(|b| {
        let b = b?.cpu_per_request()?;
        Some(own? / b.max(1e-12))
    })
}

impl Row {
    /// The servers' CPU seconds per request, when measured.
    fn cpu_per_request(&self) -> Option<f64> {
        let servers = self.cpu.servers?;
        (self.outcome.requests > 0).then(|| servers.as_secs_f64() / self.outcome.requests as f64)
    }
}

/// The median of `values` (the mean of the middle two of an even count); None when empty.
pub(crate) fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some(f64::midpoint(values[n / 2 - 1], values[n / 2])),
    }
}

fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.2}"))
}

/// One row of the table: a row of every round, pooled, with each ratio the median of the
/// rounds' own ratios.
struct Combined<'a> {
    first: &'a Row,
    outcome: Outcome,
    ratios: [Option<f64>; RATIOS],
    cpu_ratios: [Option<f64>; CPU_RATIOS],
    getter_calls: Option<u64>,
    peer_requests: Option<u64>,
    peak_rss: Option<u64>,
    cpu: Cpu,
}

fn combine<'a>(rounds: &'a [Vec<Row>], i: usize) -> Combined<'a> {
    let rows: Vec<(&Vec<Row>, &Row)> = rounds
        .iter()
        .filter_map(|round| round.get(i).map(|r| (round, r)))
        .collect();
    let first = rows[0].1;
    let mut outcome = first.outcome.clone();
    let mut cpu = first.cpu;
    for (_, r) in &rows[1..] {
        outcome.absorb(&r.outcome);
        cpu.absorb(r.cpu);
    }
    let per_round: Vec<[Option<f64>; RATIOS]> =
        rows.iter().map(|(round, r)| ratios(round, r)).collect();
    let ratios = std::array::from_fn(|k| median(per_round.iter().filter_map(|r| r[k]).collect()));
    let cpu_per_round: Vec<[Option<f64>; CPU_RATIOS]> =
        rows.iter().map(|(round, r)| cpu_ratios(round, r)).collect();
    let cpu_ratios =
        std::array::from_fn(|k| median(cpu_per_round.iter().filter_map(|r| r[k]).collect()));
    let sum = |f: fn(&Row) -> Option<u64>| rows.iter().map(|(_, r)| f(r)).sum::<Option<u64>>();
    Combined {
        first,
        outcome,
        ratios,
        cpu_ratios,
        getter_calls: sum(|r| r.getter_calls),
        peer_requests: sum(|r| r.peer_requests),
        peak_rss: rows.iter().filter_map(|(_, r)| r.peak_rss).max(),
        cpu,
    }
}

fn render(setup: &Setup, rounds: &[Vec<Row>], notes: &[String]) -> String {
    let args = &setup.args;
    let mut s = String::new();
    let _ = writeln!(s, "# geecache-perf http\n");
    let _ = writeln!(s, "- When: {}", report::now());
    let _ = writeln!(s, "- Machine: {}", report::machine());
    let _ = writeln!(s, "- Command: `{}`", report::command_line());
    match &setup.nodes {
        Some(spec) => {
            let _ = writeln!(
                s,
                "- Nodes: `{}` (built {}), started per workload on 127.0.0.1, group `{}` from \
                 `synth_getter` (value_bytes={}){}{}",
                spec.host_bin.display(),
                servers::modified(&spec.host_bin),
                args.group,
                args.value_bytes,
                if spec.cluster_secret.is_some() {
                    "; clusters sign peer requests (--cluster-secret)"
                } else {
                    "; clusters without a secret"
                },
                if spec.extra.is_empty() {
                    String::new()
                } else {
                    format!("; node flags `{}`", spec.extra.join(" "))
                }
            );
        }
        None if !setup.targets.is_empty() => {
            let _ = writeln!(s, "- Nodes: running at {}", args.target.join(", "));
        }
        None => {}
    }
    let _ = writeln!(
        s,
        "- Client: {} keep-alive HTTP/1.1 connections on {} threads{}, one request in flight \
         each, {:?} per row{}; {}-byte values; hit/mixed over {} keys loaded first, zipf over {} \
         keys (s={}), mixed {}% PUT",
        args.connections,
        setup.threads,
        if args.client_batch {
            " under SCHED_BATCH (the default; `--client-batch=false` for a normal client)"
        } else {
            " as normal processes (`--client-batch=false`)"
        },
        args.duration,
        if rounds.len() > 1 {
            format!(", {} rounds", rounds.len())
        } else {
            String::new()
        },
        args.value_bytes,
        args.keys,
        args.zipf_keys,
        args.zipf_exponent,
        args.put_percent
    );
    let _ = writeln!(
        s,
        "- The client and the servers share the machine's cores: compare ratios within one run.\n"
    );
    let _ = writeln!(
        s,
        "| run | nodes | req/s | p50 | p99 | p99.9 | success % | × nginx | × hyper | × axum | × hit | \
         getter calls / req | peer requests / req | node peak RSS | server CPU / req | \
         CPU × hyper | CPU × hit | client CPU / req | × groupcache | CPU × groupcache |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:\
         |---:|---:|"
    );
    let rows_per_round = rounds.first().map_or(0, Vec::len);
    for i in 0..rows_per_round {
        let c = combine(rounds, i);
        let o = &c.outcome;
        let per_request = |n: Option<u64>| {
            n.map_or_else(
                || "-".into(),
                |n| format!("{:.3}", n as f64 / o.requests.max(1) as f64),
            )
        };
        let cpu_per_request = |d: Option<Duration>| {
            d.map_or_else(
                || "-".into(),
                |d| format!("{:.1} µs", d.as_secs_f64() * 1e6 / o.requests.max(1) as f64),
            )
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} \
             | {} | {} | {} |",
            c.first.name,
            c.first.nodes.map_or_else(|| "-".into(), |n| n.to_string()),
            o.rate(),
            report::latency(o.latency(0.5)),
            report::latency(o.latency(0.99)),
            report::latency(o.latency(0.999)),
            success(o),
            ratio(c.ratios[0]),
            ratio(c.ratios[1]),
            ratio(c.ratios[2]),
            ratio(c.ratios[3]),
            per_request(c.getter_calls),
            per_request(c.peer_requests),
            c.peak_rss.map_or_else(|| "-".into(), report::mib),
            cpu_per_request(c.cpu.servers),
            ratio(c.cpu_ratios[0]),
            ratio(c.cpu_ratios[1]),
            cpu_per_request(c.cpu.client),
            ratio(c.ratios[4]),
            ratio(c.cpu_ratios[2]),
        );
    }
    if rounds.len() > 1 {
        let _ = writeln!(s, "\n### Each round\n");
        let _ = writeln!(
            s,
            "| round | run | req/s | × nginx | × hyper | × axum | × hit | server CPU / req | \
             CPU × hyper | CPU × hit | × groupcache | CPU × groupcache |"
        );
        let _ = writeln!(
            s,
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (n, round) in rounds.iter().enumerate() {
            for r in round {
                let [a, b, c, d, g] = ratios(round, r);
                let [e, f, h] = cpu_ratios(round, r);
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    n + 1,
                    r.name,
                    r.outcome.rate(),
                    ratio(a),
                    ratio(b),
                    ratio(c),
                    ratio(d),
                    r.cpu_per_request()
                        .map_or_else(|| "-".into(), |c| format!("{:.1} µs", c * 1e6)),
                    ratio(e),
                    ratio(f),
                    ratio(g),
                    ratio(h)
                );
            }
        }
    }
    let failures: Vec<&Row> = rounds
        .iter()
        .flatten()
        .filter(|r| !r.outcome.all_ok())
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(s, "\n## Failures\n");
        for r in failures {
            let o = &r.outcome;
            let _ = writeln!(
                s,
                "- {}: {} requests, {} non-2xx, {} with a wrong body length, {} errors; {}",
                r.name,
                o.requests,
                o.non_2xx,
                o.bad_body,
                o.errors,
                o.problems.join("; ")
            );
        }
    }
    let _ = writeln!(
        s,
        "\nreq/s counts every request finished in the row's time; success is 2xx with the \
         expected body length. × nginx, × hyper, × axum: req/s against the fixed-response \
         baselines (nginx; on tokio and the node's own connection loop, a hyper service that \
         answers at once, and an axum router with one route). × hit: against the hit row on as many \
         nodes, else on one node. With several rounds, req/s, latencies and success pool every \
         round, and each ratio is the median of the rounds' own ratios (each against the \
         baseline measured in its round). Getter calls / req: the nodes' getter calls during the row \
         over its requests (1 for all-miss, 0 for all-hit). Peer requests / req: the peer requests \
         (single gets and batches) the nodes served during the row over its requests (up to \
         0.67 for all-miss on 3 nodes; less when gets to one owner were coalesced into \
         batches). Node peak RSS: the largest VmHWM \
         among the row's nodes. Server CPU / req: user and system time of the row's servers \
         (its nodes, or the baseline's processes) over its requests; client CPU / req: this \
         program's; both from /proc, over the row's whole run, in the kernel's 10 ms ticks. \
         CPU × hyper and CPU × hit: the row's server CPU / req against the hyper baseline's and \
         the 1-node hit row's of the same round (the median of the rounds'); a cluster's is its \
         nodes' CPU summed. These are the figures docs/performance.md's targets are set in: \
         they do not depend on who wins the shared cores. groupcache rows: the same client, \
         requests, keys and value size against 3 Go groupcache nodes (tests/groupcache/main.go: \
         HTTPPool peers over pooled keep-alive connections, a getter making synth_getter's \
         values, 72 MiB of cache each); its getter calls and peer requests are groupcache's \
         LocalLoads and ServerRequests. × groupcache and CPU × groupcache: the row's req/s and \
         server CPU / req against the groupcache row of the same kind (hit or miss) on as many \
         nodes, in the same round (ours / groupcache: above 1 is more requests, below 1 is less \
         CPU)."
    );
    for n in notes {
        let _ = writeln!(s, "\nNote: {n}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![0.7]), Some(0.7));
        assert_eq!(median(vec![0.9, 0.5, 0.7]), Some(0.7));
        assert_eq!(median(vec![0.8, 0.5, 0.6, 0.9]), Some(0.7));
    }
}
