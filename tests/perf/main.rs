//! `geecache-perf`: the perf tool. Measures, prints a table, and writes a report file.
//!
//! ```text
//! cargo build --release -p geecache-host -p geecache-tests
//! target/release/geecache-perf http
//! target/release/geecache-perf memory
//! target/release/geecache-perf compression
//! ```
//!
//! Subcommands:
//! - `http`: request rate, latency percentiles and success of nodes it starts (1 and 3, the
//!   `synth_getter` plugin) or of running ones, for hits, misses, Zipf-skewed keys and mixed
//!   sets and gets, against nginx, fixed-response servers and three Go groupcache nodes
//!   measured by the same client in the same run (see `http.rs` and `groupcache.rs`; the client
//!   is `load.rs`).
//! - `memory`: the resident memory of a node whose cache budget is filled past its size.
//! - `expiry`: one hot key expiring under load through a 3-node cluster, with and without a
//!   stale window: p99 of the second after each expiry against the steady state, and getter
//!   calls per expiry (see `expiry.rs`).
//! - `sources`: a node's all-miss latency through `http_getter` (a local origin) and `db_getter`
//!   (a local Postgres), against the same source asked directly, in the same run; and how many
//!   requests reach the origin when every connection asks one key at once (see `sources.rs`).
//! - `hitratio`: the hit ratio of the node's cache tier, of moka and of quick_cache on the same
//!   Zipf and scan-polluted key traces, replayed in this process (see `hitratio.rs`).
//! - `compression`: ratio, compress MB/s and decompress MB/s of every codec (built-in and the
//!   brotli plugin) at a few levels, on generated realistic corpora (see `geecache_tests::corpus`),
//!   value by value as a cache stores them.
//!
//! Figures are only comparable within one run (the machine may be shared and noisy): the
//! reports give ratios against baselines measured in the same run.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

// mimalloc, not glibc malloc: the request path allocates per request, and glibc's malloc and
// free were ~10% of a loaded node's CPU in `perf` (issue 10). Set in the binaries only, so the
// library (and the fuzz targets, under ASan) keep the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod compression;
mod expiry;
mod groupcache;
mod hitratio;
mod http;
mod load;
mod memory;
mod report;
mod servers;
mod sources;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The geecache perf tool.
#[derive(Debug, Parser)]
#[command(name = "geecache-perf", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load nodes over HTTP: req/s, latency and success per workload, against nginx,
    /// fixed-response servers and Go groupcache nodes in the same run.
    Http(http::Args),
    /// Resident memory of a node with its cache budget filled past its size.
    Memory(memory::Args),
    /// One hot key expiring under load: p99 of the second after expiry against the steady
    /// state, with and without a stale window, and getter calls per expiry.
    Expiry(expiry::Args),
    /// Hit ratio of the node's cache tier against moka and quick_cache on the same Zipf and
    /// scan-polluted traces, replayed in this process.
    Hitratio(hitratio::Args),
    /// Compare codecs: ratio and speed per codec and level, per corpus.
    Compression(compression::Args),
    /// A node's all-miss latency through getters that reach real sources (an HTTP origin,
    /// Postgres), against the same sources asked directly, and singleflight's collapse.
    Sources(sources::Args),
    /// The fixed-response baseline servers `http` starts (a hyper service or an axum router
    /// on the node's own stack).
    #[command(hide = true)]
    FixedServer(servers::FixedArgs),
}

/// Parses a duration flag as the node does (`300ms`, `5s`, `10m`).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    geecache_host::config::parse_duration(s)
}

/// On the first SIGINT or SIGTERM, asks every load and wait to stop, so the servers this
/// process started are stopped by their guards; on the second, exits at once.
fn stop_on_signal() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            geecache_host::server::shutdown_signal().await;
            load::INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
            eprintln!(
                "\ngeecache-perf: interrupted; stopping the servers it started (again to quit now)"
            );
            geecache_host::server::shutdown_signal().await;
            std::process::exit(130);
        });
    });
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Http(args) => {
            stop_on_signal();
            http::run(args)
        }
        Command::Memory(args) => {
            stop_on_signal();
            memory::run(args)
        }
        Command::Expiry(args) => {
            stop_on_signal();
            expiry::run(args)
        }
        Command::Compression(args) => compression::run(args),
        Command::Hitratio(args) => hitratio::run(args),
        Command::Sources(args) => {
            stop_on_signal();
            sources::run(args)
        }
        Command::FixedServer(args) => servers::serve_fixed(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("geecache-perf: {e:#}");
            ExitCode::FAILURE
        }
    }
}
