//! `geecache-perf memory`: the resident memory of a node whose cache is full.
//!
//! Starts one node with a `--cache-bytes` budget and `synth_getter` answering `--value-bytes`
//! values, asks it for unique keys until the values loaded are `--fill-factor` times the budget
//! (so the cache fills and then evicts), and reads the node's `VmRSS` and `VmHWM` from
//! `/proc/<pid>/status`, against `--target-rss`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::load::{self, Keys, Load, Requests};
use crate::report;
use crate::servers::{self, Cluster, Memory, NodeSpec};

/// Options of `geecache-perf memory`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node's cache budget (`--cache-bytes`).
    #[arg(long, default_value = "256MiB")]
    cache_bytes: String,
    /// Bytes of every value.
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    /// Values loaded, as a multiple of the budget (over 1: the cache evicts).
    #[arg(long, default_value_t = 2.0)]
    fill_factor: f64,
    /// The resident memory the node should stay within (reported, not enforced).
    #[arg(long, default_value = "320MiB")]
    target_rss: String,
    /// Connections loading the values.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Longest the filling may take; it stops there (and says so).
    #[arg(long, default_value = "10m", value_parser = crate::parse_duration)]
    max_duration: Duration,
    /// The `geecache-host` program [default: as for `http`].
    #[arg(long)]
    host_bin: Option<PathBuf>,
    /// The synthetic getter component [default: the one the tests build].
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// A flag for the node (repeatable).
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
    /// Markdown report file [default: target/perf/memory.md].
    #[arg(long)]
    report: Option<PathBuf>,
}

/// Fills the node, reads its memory, prints and writes the report.
///
/// # Errors
/// The node does not start, the user interrupts, or a load failed.
pub fn run(args: Args) -> anyhow::Result<()> {
    let budget = geecache_host::config::parse_size(&args.cache_bytes)
        .map_err(anyhow::Error::msg)
        .context("--cache-bytes")?;
    let target = geecache_host::config::parse_size(&args.target_rss)
        .map_err(anyhow::Error::msg)
        .context("--target-rss")?;
    anyhow::ensure!(args.value_bytes > 0, "--value-bytes must be at least 1");
    let mut extra = vec!["--cache-bytes".to_owned(), args.cache_bytes.clone()];
    extra.extend(args.node_args.iter().cloned());
    let spec = NodeSpec {
        host_bin: servers::host_binary(args.host_bin.as_deref())?,
        plugin: args
            .plugin
            .clone()
            .unwrap_or_else(|| geecache_tests::plugins::SYNTH_GETTER.into()),
        value_bytes: args.value_bytes,
        group: "perf".into(),
        cluster_secret: None,
        extra,
    };
    let node = Cluster::start(&spec, 1)?;
    let process = &node.nodes[0];
    let idle = process.memory().context("reading /proc/<pid>/status")?;
    let values = (args.fill_factor * budget as f64 / args.value_bytes as f64).ceil() as u64;
    eprintln!(
        "loading {values} values of {} bytes into a {} cache",
        args.value_bytes,
        report::mib(budget)
    );
    let load = Load {
        label: "filling".into(),
        targets: node.addrs.clone(),
        connections: args.connections,
        threads: report::cores(),
        duration: args.max_duration,
        max_requests: Some(values),
        answer_timeout: Duration::from_secs(10),
        requests: Requests {
            path_prefix: "/api/v1/groups/perf/keys/".into(),
            key_prefix: "m".into(),
            keys: Keys::Unique,
            put_percent: 0,
            body: Arc::from(Vec::new()),
            authorization: None,
        },
        expect_len: Some(args.value_bytes),
        progress: true,
        batch: false,
    };
    let outcome = load::run(&load)?;
    if load::interrupted() {
        bail!("interrupted");
    }
    let full = process.memory().context("reading /proc/<pid>/status")?;
    let stats = crate::http::group_stats(node.addrs[0], "perf", None);

    let mut s = String::new();
    let _ = writeln!(s, "# geecache-perf memory\n");
    let _ = writeln!(s, "- When: {}", report::now());
    let _ = writeln!(s, "- Machine: {}", report::machine());
    let _ = writeln!(s, "- Command: `{}`", report::command_line());
    let _ = writeln!(
        s,
        "- Node: `{}` (built {}), `--cache-bytes {}`, synth_getter value_bytes={}\n",
        spec.host_bin.display(),
        servers::modified(&spec.host_bin),
        args.cache_bytes,
        args.value_bytes
    );
    let _ = writeln!(s, "| what | value |");
    let _ = writeln!(s, "|---|---:|");
    let mut row = |what: &str, value: String| {
        let _ = writeln!(s, "| {what} | {value} |");
    };
    row("cache budget", report::mib(budget));
    row(
        "values asked (unique keys)",
        format!(
            "{} ({} of values, {:.1}× the budget)",
            outcome.requests,
            report::mib(outcome.requests * args.value_bytes as u64),
            outcome.requests as f64 * args.value_bytes as f64 / budget as f64
        ),
    );
    row(
        "answered 200 with the value",
        format!("{} ({:.0} req/s)", outcome.ok, outcome.rate()),
    );
    if let Some(g) = &stats {
        let n = |k: &str| g[k].as_u64().unwrap_or(0);
        row(
            "cache items / bytes (as weighed)",
            format!("{} / {}", n("cache_items"), report::mib(n("cache_bytes"))),
        );
        row("cache evictions", n("cache_evictions").to_string());
    }
    let Memory { rss, hwm } = full;
    row("VmRSS idle (before filling)", report::mib(idle.rss));
    row("VmRSS full", report::mib(rss));
    if let Some(items) = stats.as_ref().and_then(|g| g["cache_items"].as_u64()) {
        row(
            "resident bytes per cached item ((full - idle) / items)",
            format!(
                "{:.0}",
                rss.saturating_sub(idle.rss) as f64 / items.max(1) as f64
            ),
        );
    }
    row("VmHWM (peak)", report::mib(hwm));
    row(
        "target",
        format!(
            "{} — peak {} ({:.2}× the target)",
            report::mib(target),
            if hwm <= target { "within" } else { "OVER" },
            hwm as f64 / target as f64
        ),
    );
    report::publish(&s, args.report.as_deref(), "memory.md")?;
    if !outcome.all_ok() {
        bail!(
            "{} of {} loads failed: {}",
            outcome.requests - outcome.ok,
            outcome.requests,
            outcome.problems.join("; ")
        );
    }
    if outcome.requests < values {
        bail!(
            "only {} of {values} values were loaded within --max-duration {:?}",
            outcome.requests,
            args.max_duration
        );
    }
    Ok(())
}
