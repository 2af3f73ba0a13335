//! `geecache-perf expiry`: one hot key expiring under load, with and without a stale window.
//!
//! `--nodes` nodes (a static cluster) serve group `perf` from `http_getter`, which reads an
//! origin on 127.0.0.1 that takes `--source-delay` to answer (`geecache_tests::origin`, route
//! `/delay/{micros}/{key}`). Every `--ttl` the key expires. Requests ask it round-robin
//! through the nodes for `--duration`, `--rate` a second on a fixed schedule (an open loop, so
//! a stall delays every request scheduled during it, as it would real clients'), and every
//! request's scheduled start and latency from then are kept. The origin's request counter, read every 2 ms, says
//! when a getter call reached it: each call starts an "after expiry" second. Rows, alternated
//! over `--rounds`: `--stale 0s` (an expired key's next request waits for the load) and
//! `--stale` the given window (it is answered stale at once while one refresh runs).
//!
//! Figures per row: p99 of requests begun in the second after a getter call, p99 of the others
//! (steady state) and their ratio; getter calls against expiries (calls more than half a TTL
//! apart: one expiry each), so "one getter call per expiry across the cluster" reads as 1.00.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::report;
use crate::servers;
use geecache_tests::origin::Origin;

/// Requests in flight at most; one scheduled past it counts as failed.
const MAX_IN_FLIGHT: usize = 2000;

/// Options of `geecache-perf expiry`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Nodes of the cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// The group's time-to-live: how often the key expires.
    #[arg(long, default_value = "2s", value_parser = crate::parse_duration)]
    pub ttl: Duration,
    /// The stale window of the second row.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub stale: Duration,
    /// How long the origin takes to answer.
    #[arg(long, default_value = "20ms", value_parser = crate::parse_duration)]
    pub source_delay: Duration,
    /// Requests per second, started on a fixed schedule (an open loop: a slow answer delays
    /// no later request, and counts from when it should have started).
    #[arg(long, default_value_t = 2000)]
    pub rate: u32,
    /// Measuring time of each row.
    #[arg(long, default_value = "12s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Rounds; each figure is the median of the rounds'.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// The `geecache-host` program for the nodes [default: next to this program].
    #[arg(long)]
    pub host_bin: Option<PathBuf>,
    /// Markdown report file [default: target/perf/expiry.md].
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// One row's run.
#[derive(Debug, Clone, Copy)]
struct Measured {
    requests: u64,
    failed: u64,
    steady_p99_us: u64,
    after_p99_us: u64,
    after_max_us: u64,
    getter_calls: u64,
    expiries: u64,
}

impl Measured {
    fn ratio(&self) -> f64 {
        self.after_p99_us as f64 / self.steady_p99_us.max(1) as f64
    }

    fn calls_per_expiry(&self) -> f64 {
        self.getter_calls as f64 / self.expiries.max(1) as f64
    }
}

/// Runs the rows and publishes the report.
///
/// # Errors
/// Nodes that do not start, a failed request, or the report not written.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0, "--rate must be at least 1");
    anyhow::ensure!(args.nodes > 0, "--nodes must be at least 1");
    anyhow::ensure!(
        args.duration > args.ttl * 2,
        "--duration must cover a few --ttl"
    );
    let host_bin = servers::host_binary(args.host_bin.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let origin = runtime.block_on(Origin::start());
    let stales = [Duration::ZERO, args.stale];
    let mut rows: Vec<Vec<Measured>> = vec![Vec::new(); stales.len()];
    for round in 0..args.rounds {
        for (i, stale) in stales.iter().enumerate() {
            let dir = tempfile::Builder::new()
                .prefix("geecache-perf-expiry-")
                .tempdir()?;
            let node_args = node_args(&origin, &args, *stale);
            let nodes = servers::start_nodes(&host_bin, args.nodes, &node_args, dir.path())?;
            let bases: Vec<String> = nodes.iter().map(|(_, a)| format!("http://{a}")).collect();
            let m = runtime.block_on(measure(&origin, &bases, &args))?;
            eprintln!(
                "round {} stale {}: {} requests, p99 {} steady / {} after expiry ({:.2}x), {} getter calls for {} expiries",
                round + 1,
                humantime(*stale),
                m.requests,
                report::latency(m.steady_p99_us),
                report::latency(m.after_p99_us),
                m.ratio(),
                m.getter_calls,
                m.expiries
            );
            rows[i].push(m);
            drop(nodes);
        }
    }
    let failed: u64 = rows.iter().flatten().map(|m| m.failed).sum();
    let text = render(&args, &stales, &rows);
    report::publish(&text, args.report.as_deref(), "expiry.md")?;
    anyhow::ensure!(failed == 0, "{failed} requests failed: see the table");
    Ok(())
}

/// The flags of a node serving group `perf` from `http_getter` on the origin's slow route.
fn node_args(origin: &Origin, args: &Args, stale: Duration) -> Vec<String> {
    [
        "--plugin",
        geecache_tests::plugins::HTTP_GETTER,
        "--plugin-config",
        &format!(
            "http_getter.base={}/delay/{}",
            origin.base(),
            args.source_delay.as_micros()
        ),
        "--plugin-http",
        &format!("http_getter={}", origin.base()),
        "--group",
        "perf",
        "--ttl",
        &format!("{}ms", args.ttl.as_millis()),
        "--stale",
        &format!("{}ms", stale.as_millis()),
        "--cluster-secret",
        "geecache-perf-expiry",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// One row: the load on one hot key, the origin's calls watched meanwhile.
async fn measure(origin: &Origin, bases: &[String], args: &Args) -> anyhow::Result<Measured> {
    let key = format!("hot-{}-{}", std::process::id(), rand_suffix());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .timeout(Duration::from_secs(10))
        .build()?;
    // Loaded once first: the measured run starts with the key cached everywhere it will be.
    for base in bases {
        client
            .get(format!("{base}/api/v1/groups/perf/keys/{key}"))
            .send()
            .await?
            .error_for_status()?;
    }
    let start = Instant::now();
    let calls_before = origin.any_requests();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        let counter = origin.clone_counter();
        tokio::spawn(async move {
            let (mut seen, mut calls) = (counter(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(2)).await;
                let now = counter();
                for _ in seen..now {
                    calls.push(start.elapsed());
                }
                seen = now;
            }
            calls
        })
    };
    // Open loop: requests start on a fixed schedule whatever the answers do, and each one's
    // latency counts from its scheduled start, so a stall shows in every request it delays.
    let total = (args.rate as f64 * args.duration.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = Vec::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..total {
        ticker.tick().await;
        let scheduled = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
        let began = scheduled - start;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            tasks.push(tokio::spawn(async move { (began, None) }));
            continue;
        };
        let client = client.clone();
        let url = format!(
            "{}/api/v1/groups/perf/keys/{key}",
            bases[(i as usize) % bases.len()]
        );
        tasks.push(tokio::spawn(async move {
            let ok = match client.get(&url).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            drop(permit);
            (began, ok.then(|| scheduled.elapsed()))
        }));
    }
    stop.store(true, Ordering::Relaxed);
    let (mut samples, mut failed) = (Vec::new(), 0);
    for t in tasks {
        match t.await? {
            (began, Some(latency)) => samples.push((began, latency)),
            (_, None) => failed += 1,
        }
    }
    let calls = watcher.await?;
    let getter_calls = origin.any_requests() - calls_before;
    // Calls closer than half a TTL belong to one expiry.
    let mut expiries: Vec<Duration> = Vec::new();
    for at in &calls {
        if expiries
            .last()
            .is_none_or(|last| *at - *last > args.ttl / 2)
        {
            expiries.push(*at);
        }
    }
    let (mut steady, mut after) = (histogram(), histogram());
    for (began, latency) in &samples {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // The second after an expiry's first call (and the load a call runs within it).
        let in_after = expiries.iter().any(|e| {
            *began + Duration::from_millis(5) >= *e && *began < *e + Duration::from_secs(1)
        });
        if in_after {
            after.saturating_record(us);
        } else {
            steady.saturating_record(us);
        }
    }
    Ok(Measured {
        requests: samples.len() as u64 + failed,
        failed,
        steady_p99_us: steady.value_at_quantile(0.99),
        after_p99_us: after.value_at_quantile(0.99),
        after_max_us: after.max(),
        getter_calls,
        expiries: expiries.len() as u64,
    })
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// A few random hex digits, so a round's key is never another's.
fn rand_suffix() -> String {
    use std::hash::{BuildHasher as _, RandomState};
    format!("{:08x}", RandomState::new().hash_one(Instant::now()) as u32)
}

/// The median of `values`.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn render(args: &Args, stales: &[Duration], rows: &[Vec<Measured>]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# geecache-perf expiry\n");
    let _ = writeln!(out, "- machine: {}", report::machine());
    let _ = writeln!(out, "- when: {}", report::now());
    let _ = writeln!(out, "- command: `{}`", report::command_line());
    let _ = writeln!(
        out,
        "- {} nodes, one hot key, ttl {}, origin answers in {}, {} requests/s (open loop), {} per row, {} rounds (medians)\n",
        args.nodes,
        humantime(args.ttl),
        humantime(args.source_delay),
        args.rate,
        humantime(args.duration),
        args.rounds
    );
    let _ = writeln!(
        out,
        "| stale window | requests | p99 steady | p99 second after expiry | ratio | max after expiry | getter calls per expiry | failed |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for (stale, runs) in stales.iter().zip(rows) {
        let med = |f: &dyn Fn(&Measured) -> f64| median(runs.iter().map(f).collect());
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {} | {:.2}× | {} | {:.2} | {} |",
            humantime(*stale),
            med(&|m| m.requests as f64),
            report::latency(med(&|m| m.steady_p99_us as f64) as u64),
            report::latency(med(&|m| m.after_p99_us as f64) as u64),
            med(&|m| m.ratio()),
            report::latency(med(&|m| m.after_max_us as f64) as u64),
            med(&|m| m.calls_per_expiry()),
            runs.iter().map(|m| m.failed).sum::<u64>()
        );
    }
    out
}

fn humantime(d: Duration) -> String {
    if d.is_zero() {
        "0s".into()
    } else if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
