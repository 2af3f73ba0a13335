//! The compression comparison: every codec and a few levels, on every corpus.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use geecache_host::compression::{CodecSpec, Codecs};
use geecache_host::plugin::{LoadedPlugin, PluginGrants, Runtime, RuntimeOptions};
use geecache_tests::{compile_cache_dir, corpus, plugins};

/// Options of `geecache-perf compression`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Codecs to compare, CODEC[:LEVEL], comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none,lz4,snappy,gzip:1,gzip:6,gzip:9,zstd:1,zstd:3,zstd:9,zstd:19,brotli:1,brotli:5,brotli:9"
    )]
    codecs: Vec<String>,
    /// Corpora to use, comma-separated (json, logs, html, random, compressed).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "json,logs,html,random,compressed"
    )]
    corpora: Vec<String>,
    /// Size of each value, in bytes: values are compressed one by one, as a cache stores them.
    #[arg(long, default_value_t = 16 * 1024)]
    value_bytes: usize,
    /// Values per corpus.
    #[arg(long, default_value_t = 64)]
    values: usize,
    /// Least time spent measuring each direction of each cell; passes repeat until it is spent.
    #[arg(long, default_value = "300ms", value_parser = crate::parse_duration)]
    min_time: Duration,
    /// Most passes per measurement, whatever the time.
    #[arg(long, default_value_t = 1000)]
    max_passes: u32,
    /// Markdown report file [default: target/perf/compression.md].
    #[arg(long)]
    report: Option<PathBuf>,
}

/// One cell of the table.
#[derive(Debug)]
struct Row {
    corpus: String,
    codec: String,
    raw: usize,
    stored: usize,
    compress_mbps: f64,
    decompress_mbps: f64,
}

/// Runs `pass` until `min_time` is spent (at least once, at most `max_passes` times) and
/// returns MB/s for `bytes` processed per pass.
fn measure(bytes: usize, min_time: Duration, max_passes: u32, mut pass: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut passes = 0u32;
    while passes == 0 || (start.elapsed() < min_time && passes < max_passes) {
        pass();
        passes += 1;
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    (bytes as f64 * f64::from(passes)) / secs / 1e6
}

/// The codecs: built-ins plus the brotli plugin (compiled into the on-disk cache once).
fn codecs(rt: &Runtime) -> anyhow::Result<Codecs> {
    let mut codecs = Codecs::builtin();
    let loaded = rt
        .load(
            Path::new(plugins::BROTLI_COMPRESSOR),
            PluginGrants::default(),
        )
        .context("loading the brotli plugin")?;
    let LoadedPlugin::Compressor(brotli) = loaded else {
        bail!("{} is not a compressor plugin", plugins::BROTLI_COMPRESSOR);
    };
    codecs.add(brotli).map_err(anyhow::Error::msg)?;
    Ok(codecs)
}

/// Runs the comparison, prints the table, writes the report.
pub fn run(args: Args) -> anyhow::Result<()> {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rt = Runtime::new(RuntimeOptions {
        compile_cache_dir: Some(compile_cache_dir()),
        // Corpora values may be large; the plugin's working memory grows with them.
        memory_limit: 256 << 20,
        call_timeout: Duration::from_secs(30),
        ..RuntimeOptions::default()
    })?;
    let codecs = Arc::new(codecs(&rt)?);
    let specs: Vec<CodecSpec> = args
        .codecs
        .iter()
        .map(|s| s.parse().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    for spec in &specs {
        codecs.encoding(spec, 0)?;
    }

    let mut rows = Vec::new();
    let cells = args.corpora.len() * specs.len();
    let started = Instant::now();
    for corpus_name in &args.corpora {
        if !corpus::NAMES.contains(&corpus_name.as_str()) {
            bail!("no corpus {corpus_name:?}; corpora: {:?}", corpus::NAMES);
        }
        let values = corpus::values(corpus_name, args.value_bytes, args.values);
        let raw: usize = values.iter().map(Vec::len).sum();
        for spec in &specs {
            eprintln!(
                "[{:>3}/{cells}] {corpus_name:<10} {spec:<10} ({:.0?} so far)",
                rows.len() + 1,
                started.elapsed()
            );
            let codec = codecs.get(&spec.name)?;
            let c = codec.compressor();
            let compress_all = || -> anyhow::Result<Vec<Vec<u8>>> {
                tokio.block_on(async {
                    let mut out = Vec::with_capacity(values.len());
                    for v in &values {
                        out.push(c.compress(v, spec.level).await?);
                    }
                    Ok(out)
                })
            };
            let packed = compress_all()?;
            // Check every value round-trips before timing anything.
            for (v, p) in values.iter().zip(&packed) {
                let back = tokio.block_on(c.decompress(p, v.len()))?;
                if &back != v {
                    bail!("{spec} did not round-trip a {corpus_name} value");
                }
            }
            let stored: usize = packed.iter().map(Vec::len).sum();
            let compress_mbps = measure(raw, args.min_time, args.max_passes, || {
                compress_all().unwrap();
            });
            let decompress_mbps = measure(raw, args.min_time, args.max_passes, || {
                tokio.block_on(async {
                    for (v, p) in values.iter().zip(&packed) {
                        c.decompress(p, v.len()).await.unwrap();
                    }
                });
            });
            rows.push(Row {
                corpus: corpus_name.clone(),
                codec: spec.to_string(),
                raw,
                stored,
                compress_mbps,
                decompress_mbps,
            });
        }
    }

    let report = render(&args, &rows);
    crate::report::publish(&report, args.report.as_deref(), "compression.md")
}

/// MB/s with enough digits to tell slow codecs apart.
fn speed(mbps: f64) -> String {
    if mbps < 10.0 {
        format!("{mbps:.1}")
    } else {
        format!("{mbps:.0}")
    }
}

fn render(args: &Args, rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# geecache-perf compression\n");
    let _ = writeln!(
        s,
        "Machine: {}. Values of {} bytes, {} per corpus, each compressed on its own. \
         Speeds are MB/s of original bytes; `×lz4` is the speed relative to lz4 on the same \
         corpus in this run. Ratio = original / stored payload (higher is better).\n",
        crate::report::machine(),
        args.value_bytes,
        args.values
    );
    let _ = writeln!(
        s,
        "| corpus | codec | ratio | compress MB/s | ×lz4 | decompress MB/s | ×lz4 |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|");
    for r in rows {
        let lz4 = rows
            .iter()
            .find(|b| b.corpus == r.corpus && b.codec == "lz4");
        let rel = |v: f64, base: Option<f64>| {
            base.map_or("-".to_owned(), |b| format!("{:.2}", v / b.max(1e-9)))
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {} | {} | {} | {} |",
            r.corpus,
            r.codec,
            r.raw as f64 / r.stored.max(1) as f64,
            speed(r.compress_mbps),
            rel(r.compress_mbps, lz4.map(|b| b.compress_mbps)),
            speed(r.decompress_mbps),
            rel(r.decompress_mbps, lz4.map(|b| b.decompress_mbps)),
        );
    }
    s
}
