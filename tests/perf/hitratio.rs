//! `geecache-perf hitratio`: the hit ratio of the node's cache tier against the stores it could
//! stand on, replayed on the same key traces in this process (no node, no network).
//!
//! Traces, generated from a fixed seed so every run replays the same keys:
//! - `zipf`: `--requests` keys drawn Zipf(`--zipf-exponent`) over `--keys` keys;
//! - `scan`: the same Zipf draws, with a scan of `--scan-length` keys never asked before (and
//!   never again) after every `--scan-every` of them: one-hit traffic that a recency-only
//!   policy lets push the popular keys out.
//!
//! Stores, each with the budget `--cache-percent` of the whole key space's weight (key +
//! value + the node's per-entry charge, as the node weighs an entry):
//! - `node`: `geecache_host::cache::Cache`, the node's main tier as built;
//! - `moka`: `moka::sync::Cache` weighted the same way (TinyLFU admission, LRU eviction);
//! - `quick_cache`: `quick_cache::sync::Cache` weighted the same way (CLOCK-Pro-like).
//!
//! A request is a hit when the store holds the key; a miss inserts it. The ratio counts the
//! Zipf requests after the first `--warmup-percent` of the trace (a scan's keys cannot hit, so
//! counting them would only dilute every store alike).

use std::fmt::Write as _;
use std::path::PathBuf;

use bytes::Bytes;
use geecache_host::cache::{Cache, CacheEntry, Cached, weight_of};
use geecache_host::compression::Stored;

use crate::load::{Rng, Zipf};
use crate::report;

/// Options of `geecache-perf hitratio`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Distinct keys the Zipf draws range over.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Requests per trace.
    #[arg(long, default_value_t = 2_000_000)]
    requests: u64,
    /// The Zipf exponent.
    #[arg(long, default_value_t = 0.99)]
    zipf_exponent: f64,
    /// Each store's budget, in percent of the weight of every key of the key space.
    #[arg(long, default_value_t = 10.0)]
    cache_percent: f64,
    /// Bytes of every value.
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    /// `scan` trace: a scan after this many Zipf requests.
    #[arg(long, default_value_t = 8_000)]
    scan_every: u64,
    /// `scan` trace: keys per scan (each asked once).
    #[arg(long, default_value_t = 2_000)]
    scan_length: u64,
    /// Requests at the start of each trace not counted (the stores fill).
    #[arg(long, default_value_t = 10.0)]
    warmup_percent: f64,
    /// Markdown report file [default: target/perf/hitratio.md].
    #[arg(long)]
    report: Option<PathBuf>,
}

/// One request of a trace.
#[derive(Debug, Clone, Copy)]
enum Request {
    /// A Zipf draw: this rank's key.
    Popular(u64),
    /// A scan's key: asked once, never again.
    Scan(u64),
}

impl Request {
    fn key(self) -> String {
        match self {
            Request::Popular(rank) => format!("key:{rank}"),
            Request::Scan(n) => format!("scan:{n}"),
        }
    }
}

/// A trace: its name and its requests.
struct Trace {
    name: &'static str,
    requests: Vec<Request>,
}

fn traces(args: &Args) -> Vec<Trace> {
    let zipf = Zipf::new(args.keys, args.zipf_exponent);
    let draws = |seed: u64| {
        let mut rng = Rng(seed);
        let zipf = &zipf;
        (0..args.requests).map(move |_| zipf.sample(rng.unit()))
    };
    let plain = draws(0x5eed).map(Request::Popular).collect();
    let mut scanned = Vec::with_capacity(args.requests as usize);
    let mut scan_key = 0;
    for (i, rank) in draws(0x5eed).enumerate() {
        if args.scan_every > 0 && (i as u64).is_multiple_of(args.scan_every) && i > 0 {
            for _ in 0..args.scan_length {
                scanned.push(Request::Scan(scan_key));
                scan_key += 1;
            }
        }
        scanned.push(Request::Popular(rank));
        if scanned.len() as u64 >= args.requests {
            break;
        }
    }
    vec![
        Trace {
            name: "zipf",
            requests: plain,
        },
        Trace {
            name: "scan",
            requests: scanned,
        },
    ]
}

/// A store under test: whether it holds a key (a read, as the node's hit path reads), and
/// inserting one after a miss.
trait Store {
    fn hit(&self, key: &str) -> bool;
    fn insert(&self, key: String);
}

/// The node's weight of an entry ([`weight_of`]: key and raw value as allocated, +
/// `ENTRY_OVERHEAD_BYTES`), for every store alike.
fn weight(key: &str, value: &[u8]) -> u64 {
    weight_of(key.len(), value.len())
}

struct Node {
    cache: Cache,
    value: Stored,
}

impl Store for Node {
    fn hit(&self, key: &str) -> bool {
        self.cache.get(key).is_some()
    }

    fn insert(&self, key: String) {
        self.cache.insert(
            &key,
            CacheEntry::new(Cached::Value(self.value.clone()), None, 0),
        );
    }
}

struct Moka {
    cache: moka::sync::Cache<String, Bytes>,
    value: Bytes,
}

impl Store for Moka {
    fn hit(&self, key: &str) -> bool {
        self.cache.get(key).is_some()
    }

    fn insert(&self, key: String) {
        self.cache.insert(key, self.value.clone());
    }
}

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<String, Bytes> for Weigh {
    fn weight(&self, key: &String, value: &Bytes) -> u64 {
        weight(key, value)
    }
}

struct Quick {
    cache: quick_cache::sync::Cache<String, Bytes, Weigh>,
    value: Bytes,
}

impl Store for Quick {
    fn hit(&self, key: &str) -> bool {
        self.cache.get(key).is_some()
    }

    fn insert(&self, key: String) {
        self.cache.insert(key, self.value.clone());
    }
}

/// The three stores, each with `budget` bytes.
fn stores(budget: u64, value_bytes: usize) -> Vec<(&'static str, Box<dyn Store>)> {
    let value = Bytes::from(vec![7u8; value_bytes]);
    let per_entry = weight("key:12345", &value);
    let node = Node {
        cache: Cache::builder(budget).name("main").build(),
        value: Stored::raw(&value),
    };
    let moka = Moka {
        cache: moka::sync::Cache::builder()
            .max_capacity(budget)
            .weigher(|key: &String, value: &Bytes| {
                u32::try_from(weight(key, value)).unwrap_or(u32::MAX)
            })
            .build(),
        value: value.clone(),
    };
    let quick = Quick {
        cache: quick_cache::sync::Cache::with_weighter(
            usize::try_from(budget / per_entry).unwrap_or(usize::MAX),
            budget,
            Weigh,
        ),
        value,
    };
    vec![
        ("node", Box::new(node)),
        ("moka", Box::new(moka)),
        ("quick_cache", Box::new(quick)),
    ]
}

/// Replays `trace` on `store`: the hit ratio of the counted Zipf requests.
fn replay(store: &dyn Store, trace: &Trace, warmup: usize) -> f64 {
    let (mut hits, mut counted) = (0u64, 0u64);
    for (i, request) in trace.requests.iter().enumerate() {
        let key = request.key();
        let hit = store.hit(&key);
        if !hit {
            store.insert(key);
        }
        if i >= warmup && matches!(request, Request::Popular(_)) {
            counted += 1;
            hits += u64::from(hit);
        }
    }
    hits as f64 / counted.max(1) as f64
}

/// Runs every store on every trace, prints the table, writes the report.
pub fn run(args: Args) -> anyhow::Result<()> {
    let started = report::now();
    let value = vec![0u8; args.value_bytes];
    let key_space: u64 = (0..args.keys)
        .map(|rank| weight(&format!("key:{rank}"), &value))
        .sum();
    let budget = (key_space as f64 * args.cache_percent / 100.0) as u64;
    let mut table = String::new();
    let _ = writeln!(table, "| trace | store | hit ratio | × moka |");
    let _ = writeln!(table, "|---|---|---:|---:|");
    for trace in traces(&args) {
        let warmup = (trace.requests.len() as f64 * args.warmup_percent / 100.0) as usize;
        let mut rows = Vec::new();
        for (name, store) in stores(budget, args.value_bytes) {
            eprintln!("{}: {name}", trace.name);
            rows.push((name, replay(store.as_ref(), &trace, warmup)));
        }
        let moka = rows
            .iter()
            .find(|(name, _)| *name == "moka")
            .map_or(f64::NAN, |(_, ratio)| *ratio);
        for (name, ratio) in rows {
            let _ = writeln!(
                table,
                "| {} | {name} | {:.4} | {:.3} |",
                trace.name,
                ratio,
                ratio / moka
            );
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "# geecache-perf hitratio\n");
    let _ = writeln!(out, "- Started: {started}");
    let _ = writeln!(out, "- Machine: {}", report::machine());
    let _ = writeln!(out, "- Command: `{}`", report::command_line());
    let _ = writeln!(
        out,
        "- Keys: {} ({} B values), Zipf {}; {} requests per trace; budget {} ({}% of the key \
         space's weight); `scan`: {} one-time keys after every {} Zipf requests; the first {}% \
         of each trace not counted, nor any scan key.\n",
        args.keys,
        args.value_bytes,
        args.zipf_exponent,
        args.requests,
        report::mib(budget),
        args.cache_percent,
        args.scan_length,
        args.scan_every,
        args.warmup_percent,
    );
    out.push_str(&table);
    report::publish(&out, args.report.as_deref(), "hitratio.md")
}
