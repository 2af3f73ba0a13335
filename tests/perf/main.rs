//! `geecache-perf`: the perf tool. Measures, prints a table, and writes a report file.
//!
//! ```text
//! cargo run --release -p geecache-tests --bin geecache-perf -- compression
//! ```
//!
//! Subcommands:
//! - `compression`: ratio, compress MB/s and decompress MB/s of every codec (built-in and the
//!   brotli plugin) at a few levels, on generated realistic corpora (see `geecache_tests::corpus`),
//!   value by value as a cache stores them.
//!
//! Figures are only comparable within one run (the machine may be shared and noisy): the
//! report gives speeds as ratios against lz4, measured in the same run.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod compression;

use std::path::PathBuf;
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
    /// Compare codecs: ratio and speed per codec and level, per corpus.
    Compression(compression::Args),
}

/// Where reports go unless `--report` says otherwise.
fn default_report(name: &str) -> PathBuf {
    geecache_tests::repo_root()
        .join("target")
        .join("perf")
        .join(name)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Compression(args) => compression::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("geecache-perf: {e:#}");
            ExitCode::FAILURE
        }
    }
}
