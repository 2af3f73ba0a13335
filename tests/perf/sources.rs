//! `geecache-perf sources`: a node's all-miss latency through a getter that reaches a real
//! source, against the same source asked directly by this tool, in the same run.
//!
//! - `http`: `http_getter` → an origin on 127.0.0.1 (`geecache_tests::origin`, route `/any`:
//!   200 with 100 bytes for every key). Direct: this tool's HTTP client on the origin.
//! - `postgres`: `db_getter` with `SELECT ?1` (`FROM pg_sleep(..)` with `--source-delay`) → a
//!   Postgres on 127.0.0.1
//!   (`geecache_tests::postgres`, initdb into a temporary directory). Direct: tokio-postgres
//!   clients running the same statement (`SELECT $1`, a text parameter), one connection each.
//!
//! Every request asks a key never asked before, so every node answer is a getter call. The
//! figure is the node's added latency at p50, `node p50 / direct p50 − 1`, the median over
//! `--rounds` (each round measures direct, then through the node). With one connection it is
//! latency; with many, on a machine whose cores the client, the node and the source share, it
//! is mostly the node's CPU per request. `--source-delay` gives the source a real source's
//! time to answer.
//!
//! Singleflight: `--collapse-keys` keys, each asked by all `--connections` at once through the
//! node while the source takes 50 ms to answer (`/any-slow`, `pg_sleep(0.05)`); the source's
//! request count per key (the origin's counter; Postgres' rolled-back transactions) shows how
//! many loads reached it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;

use crate::load::{self, Keys, Load, Outcome, Requests, interrupted};
use crate::report;
use crate::servers;
use geecache_tests::origin::{ANY_BODY, Origin};
use geecache_tests::postgres::Postgres;

/// Options of `geecache-perf sources`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Sources: http, postgres (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "http,postgres")]
    pub sources: Vec<String>,
    /// Connections (and, direct to Postgres, clients), each with one request in flight.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Client threads [default: the cores available].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Run the HTTP client's threads under SCHED_BATCH, the default (see `geecache-perf http
    /// --help`); `--client-batch=false` for a normal client.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set)]
    pub client_batch: bool,
    /// Measuring time of each row.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Rounds; each ratio is the median of the rounds'.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// How long the source takes to answer, beyond its own work: the origin waits this long
    /// before it answers, Postgres runs `pg_sleep` for it. 0 is a local source as fast as it
    /// goes; a real one over a network takes a millisecond or more.
    #[arg(long, default_value = "0s", value_parser = crate::parse_duration)]
    pub source_delay: Duration,
    /// Keys of the singleflight check (0: skip it).
    #[arg(long, default_value_t = 20)]
    pub collapse_keys: u64,
    /// The `geecache-host` program for the nodes [default: next to this program].
    #[arg(long)]
    pub host_bin: Option<PathBuf>,
    /// Markdown report file [default: target/perf/sources.md].
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// What one row measured: requests, their latency, and how long it ran.
struct Measured {
    requests: u64,
    failed: u64,
    latency_us: Histogram<u64>,
    elapsed: Duration,
}

impl Measured {
    fn of(o: &Outcome) -> Measured {
        Measured {
            requests: o.requests,
            failed: o.requests - o.ok,
            latency_us: o.latency_us.clone(),
            elapsed: o.elapsed,
        }
    }

    fn p(&self, q: f64) -> u64 {
        self.latency_us.value_at_quantile(q)
    }

    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// One source's pair of rows in one round.
struct Pair {
    direct: Measured,
    node: Measured,
}

/// Runs every source's rounds, then the singleflight check; writes the report.
///
/// # Errors
/// A server does not start, the user interrupts, or requests failed (after the report).
pub fn run(args: Args) -> anyhow::Result<()> {
    for s in &args.sources {
        if s != "http" && s != "postgres" {
            bail!("no source {s:?}: http or postgres");
        }
    }
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    let host_bin = servers::host_binary(args.host_bin.as_deref())?;
    let threads = args.threads.unwrap_or_else(report::cores).max(1);
    let dir = tempfile::Builder::new()
        .prefix("geecache-perf-sources-")
        .tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let run_id = format!("{}", std::process::id());
    let mut sections = Vec::new();
    let mut failed = false;
    if args.sources.iter().any(|s| s == "http") {
        let origin = runtime.block_on(Origin::start());
        let route = if args.source_delay.is_zero() {
            "/any/".to_owned()
        } else {
            format!("/delay/{}/", args.source_delay.as_micros())
        };
        let node_args = http_getter_node(&origin, route.trim_end_matches('/'));
        let (node, addr) = servers::start_node(&host_bin, &node_args, dir.path())?;
        let mut pairs = Vec::new();
        for round in 0..args.rounds {
            let key_prefix = format!("{run_id}h{round}-");
            let direct = load::run(&http_load(
                &args,
                threads,
                "http: origin direct",
                origin.addr(),
                &route,
                &key_prefix,
                Some(ANY_BODY.len()),
            ))?;
            let through = load::run(&http_load(
                &args,
                threads,
                "http: node → http_getter → origin",
                addr,
                "/api/v1/groups/perf/keys/",
                &format!("{key_prefix}n"),
                Some(ANY_BODY.len()),
            ))?;
            failed |= !direct.all_ok() || !through.all_ok();
            pairs.push(Pair {
                direct: Measured::of(&direct),
                node: Measured::of(&through),
            });
            if interrupted() {
                bail!("interrupted");
            }
        }
        drop(node);
        let collapse = if args.collapse_keys > 0 {
            let slow_args = http_getter_node(&origin, "/any-slow");
            Some(collapse(
                &args,
                threads,
                &slow_args,
                &host_bin,
                dir.path(),
                &format!("{run_id}h"),
                &|| origin.any_requests(),
            )?)
        } else {
            None
        };
        sections.push(section(
            "http (`http_getter` against a local origin)",
            &pairs,
            collapse,
        ));
    }
    if args.sources.iter().any(|s| s == "postgres") {
        let pg = Postgres::start();
        let node_args = db_getter_node(&pg, &postgres_statement(args.source_delay, "?1"));
        let (node, addr) = servers::start_node(&host_bin, &node_args, dir.path())?;
        let mut pairs = Vec::new();
        for round in 0..args.rounds {
            let key_prefix = format!("{run_id}p{round}-");
            let statement = postgres_statement(args.source_delay, "$1");
            let direct =
                runtime.block_on(postgres_direct(&args, &pg.url(), &statement, &key_prefix))?;
            let through = load::run(&http_load(
                &args,
                threads,
                "postgres: node → db_getter → postgres",
                addr,
                "/api/v1/groups/perf/keys/",
                &format!("{key_prefix}n"),
                None,
            ))?;
            failed |= direct.failed > 0 || !through.all_ok();
            pairs.push(Pair {
                direct,
                node: Measured::of(&through),
            });
            if interrupted() {
                bail!("interrupted");
            }
        }
        drop(node);
        let collapse = if args.collapse_keys > 0 {
            let slow_args =
                db_getter_node(&pg, &postgres_statement(Duration::from_millis(50), "?1"));
            Some(collapse(
                &args,
                threads,
                &slow_args,
                &host_bin,
                dir.path(),
                &format!("{run_id}p"),
                &|| rollbacks(&pg),
            )?)
        } else {
            None
        };
        sections.push(section(
            "postgres (`db_getter` with `SELECT ?1` against a local Postgres)",
            &pairs,
            collapse,
        ));
    }
    let report = render(&args, threads, &sections);
    report::publish(&report, args.report.as_deref(), "sources.md")?;
    anyhow::ensure!(!failed, "some requests failed: see the table");
    Ok(())
}

/// The flags of a node serving group `perf` from `http_getter`, which reads
/// `{origin}{path}/{key}` and is allowed that origin.
fn http_getter_node(origin: &Origin, path: &str) -> Vec<String> {
    vec![
        "--plugin".to_owned(),
        geecache_tests::plugins::HTTP_GETTER.to_owned(),
        "--plugin-config".to_owned(),
        format!("http_getter.base={}{path}", origin.base()),
        "--plugin-http".to_owned(),
        format!("http_getter={}", origin.base()),
        "--group".to_owned(),
        "perf".to_owned(),
    ]
}

/// The flags of a node serving group `perf` from `db_getter`, which runs `statement` on `pg`.
fn db_getter_node(pg: &Postgres, statement: &str) -> Vec<String> {
    vec![
        "--plugin".to_owned(),
        geecache_tests::plugins::DB_GETTER.to_owned(),
        "--plugin-config".to_owned(),
        format!("db_getter.database={}", pg.url()),
        "--plugin-config".to_owned(),
        format!("db_getter.query={statement}"),
        "--group".to_owned(),
        "perf".to_owned(),
    ]
}

/// A load of unique keys under `path` on `target`.
fn http_load(
    args: &Args,
    threads: usize,
    label: &str,
    target: SocketAddr,
    path: &str,
    key_prefix: &str,
    expect_len: Option<usize>,
) -> Load {
    Load {
        label: label.to_owned(),
        targets: vec![target],
        connections: args.connections,
        threads,
        duration: args.duration,
        max_requests: None,
        answer_timeout: Duration::from_secs(10),
        requests: Requests {
            path_prefix: path.to_owned(),
            key_prefix: key_prefix.to_owned(),
            keys: Keys::Unique,
            put_percent: 0,
            body: Arc::from(&b""[..]),
            authorization: None,
        },
        expect_len,
        progress: true,
        batch: args.client_batch,
    }
}

/// `--connections` tokio-postgres clients, each running `SELECT $1` with a new key after the
/// last answer, for `--duration`.
async fn postgres_direct(
    args: &Args,
    url: &str,
    statement: &str,
    key_prefix: &str,
) -> anyhow::Result<Measured> {
    let mut clients = Vec::new();
    for _ in 0..args.connections {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .context("connecting to Postgres")?;
        tokio::spawn(connection);
        clients.push(client);
    }
    let started = Instant::now();
    let end = started + args.duration;
    let mut tasks = Vec::new();
    for (c, client) in clients.into_iter().enumerate() {
        let key_prefix = format!("{key_prefix}{c}-");
        let statement = statement.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("valid histogram bounds");
            let (mut requests, mut failed) = (0u64, 0u64);
            let mut i = 0u64;
            while Instant::now() < end && !interrupted() {
                let key = format!("{key_prefix}{i}");
                i += 1;
                let asked = Instant::now();
                let answer = client
                    .query_typed(&statement, &[(&key, tokio_postgres::types::Type::TEXT)])
                    .await;
                requests += 1;
                match answer {
                    Ok(rows) if rows.len() == 1 => {
                        let us = u64::try_from(asked.elapsed().as_micros()).unwrap_or(u64::MAX);
                        histogram.saturating_record(us.max(1));
                    }
                    _ => failed += 1,
                }
            }
            (histogram, requests, failed)
        }));
    }
    let mut measured = Measured {
        requests: 0,
        failed: 0,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (histogram, requests, failed) = task.await?;
        measured.latency_us.add(&histogram)?;
        measured.requests += requests;
        measured.failed += failed;
    }
    measured.elapsed = started.elapsed();
    eprintln!(
        "postgres: direct: {} queries, {:.0}/s, p50 {}",
        measured.requests,
        measured.rate(),
        report::latency(measured.p(0.5))
    );
    Ok(measured)
}

/// The statement both Postgres rows run: the key back, after `pg_sleep(delay)` when there is
/// one.
fn postgres_statement(delay: Duration, param: &str) -> String {
    if delay.is_zero() {
        format!("SELECT {param}")
    } else {
        format!("SELECT {param} FROM pg_sleep({:.6})", delay.as_secs_f64())
    }
}

/// What the singleflight check saw.
struct Collapse {
    keys: u64,
    concurrent: usize,
    origin_requests: u64,
}

/// Each of `--collapse-keys` keys asked by every connection at once, through a node started
/// with `node_args` whose getter's source takes 50 ms to answer: how many requests reached the
/// source, by `source_requests` read before and after (the node stopped first, so a source
/// that counts at the end of a connection has counted).
fn collapse(
    args: &Args,
    threads: usize,
    node_args: &[String],
    host_bin: &std::path::Path,
    dir: &std::path::Path,
    key_prefix: &str,
    source_requests: &dyn Fn() -> u64,
) -> anyhow::Result<Collapse> {
    let before = source_requests();
    let (node, addr) = servers::start_node(host_bin, node_args, dir)?;
    for k in 0..args.collapse_keys {
        let mut l = http_load(
            args,
            threads,
            "one key from every connection at once",
            addr,
            "/api/v1/groups/perf/keys/",
            &format!("{key_prefix}c{k}-"),
            None,
        );
        l.requests.keys = Keys::Uniform(1);
        l.max_requests = Some(args.connections as u64);
        l.progress = false;
        let o = load::run(&l)?;
        anyhow::ensure!(
            o.all_ok(),
            "singleflight check: requests failed: {:?}",
            o.problems
        );
    }
    drop(node);
    Ok(Collapse {
        keys: args.collapse_keys,
        concurrent: args.connections,
        origin_requests: source_requests() - before,
    })
}

/// Transactions the database `app` rolled back: one per query of the node (its read-only
/// transactions end in `ROLLBACK`), counted by Postgres at the latest when a connection
/// ends. Read a moment after the node stopped.
fn rollbacks(pg: &Postgres) -> u64 {
    std::thread::sleep(Duration::from_millis(1500));
    pg.psql(
        "postgres",
        "SELECT xact_rollback FROM pg_stat_database WHERE datname = 'app'",
    )
    .trim()
    .parse()
    .unwrap_or(0)
}

fn section(title: &str, pairs: &[Pair], collapse: Option<Collapse>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## {title}\n");
    let _ = writeln!(
        out,
        "| round | direct p50 | node p50 | added at p50 | direct p99 | node p99 | direct req/s | node req/s | failed |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    let mut added = Vec::new();
    for (i, p) in pairs.iter().enumerate() {
        let ratio = p.node.p(0.5) as f64 / (p.direct.p(0.5).max(1)) as f64 - 1.0;
        added.push(ratio);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:+.0}% | {} | {} | {:.0} | {:.0} | {} |",
            i + 1,
            report::latency(p.direct.p(0.5)),
            report::latency(p.node.p(0.5)),
            ratio * 100.0,
            report::latency(p.direct.p(0.99)),
            report::latency(p.node.p(0.99)),
            p.direct.rate(),
            p.node.rate(),
            p.direct.failed + p.node.failed,
        );
    }
    if let Some(m) = crate::http::median(added) {
        let _ = writeln!(
            out,
            "\nThe node's miss adds **{:+.0}%** to the source's own p50 latency (median of {} \
             rounds; goal: at most +25%).",
            m * 100.0,
            pairs.len()
        );
    }
    if let Some(c) = collapse {
        let _ = writeln!(
            out,
            "\nSingleflight: {} keys, each asked by {} connections at once while the source \
             takes 50 ms: **{} source requests** ({:.2} per key; 1 is fully collapsed).",
            c.keys,
            c.concurrent,
            c.origin_requests,
            c.origin_requests as f64 / c.keys.max(1) as f64
        );
    }
    out.push('\n');
    out
}

fn render(args: &Args, threads: usize, sections: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# geecache-perf sources\n");
    let _ = writeln!(out, "- when: {}", report::now());
    let _ = writeln!(out, "- machine: {}", report::machine());
    let _ = writeln!(out, "- command: `{}`", report::command_line());
    let _ = writeln!(
        out,
        "- {} connections, {} client threads{}, {} per row, {} rounds, source delay {}; every \
         request a key never asked before\n",
        args.connections,
        threads,
        if args.client_batch {
            " (SCHED_BATCH)"
        } else {
            " (normal scheduling, `--client-batch=false`)"
        },
        humantime(args.duration),
        args.rounds,
        humantime(args.source_delay)
    );
    for s in sections {
        out.push_str(s);
    }
    out
}

fn humantime(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_micros().is_multiple_of(1000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}µs", d.as_micros())
    }
}
