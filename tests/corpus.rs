//! Realistic values for the compression tests and the perf tool, generated (not shipped) from a
//! fixed seed, so every run compresses the same bytes.
//!
//! | corpus       | what it looks like                                                   |
//! |--------------|----------------------------------------------------------------------|
//! | `json`       | API-style JSON records: repeated field names, ids, emails, numbers   |
//! | `logs`       | access-log lines: timestamps, levels, paths, status codes, latencies |
//! | `html`       | an HTML page: repeated markup around prose from a small vocabulary   |
//! | `random`     | uniformly random bytes: nothing to find                              |
//! | `compressed` | the logs corpus already compressed (zstd -19): nothing left to find  |

use std::fmt::Write as _;

use futures::FutureExt;
use geecache_host::compression::Compressor;
use geecache_host::compression::builtin::Zstd;

/// The corpora, by name, in report order.
pub const NAMES: &[&str] = &["json", "logs", "html", "random", "compressed"];

/// A small deterministic generator (xorshift64*), so corpora are the same on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; 0 is mapped to a fixed odd constant).
    pub fn new(seed: u64) -> Self {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// One of `items`.
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const WORDS: &[&str] = &[
    "cache",
    "node",
    "value",
    "key",
    "group",
    "ring",
    "peer",
    "load",
    "miss",
    "hit",
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "with",
    "distributed",
    "consistent",
    "hash",
    "request",
    "response",
    "server",
    "client",
    "memory",
    "budget",
    "expiry",
    "plugin",
    "component",
];

fn json(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut s = String::from("[");
    let mut id = 10_000 + rng.below(1000);
    while s.len() < len {
        id += 1 + rng.below(7);
        let _ = write!(
            s,
            r#"{{"id":{id},"name":"{} {}","email":"{}{id}@example.com","active":{},"score":{},"tags":["{}","{}"],"created_at":"2026-{:02}-{:02}T{:02}:{:02}:{:02}Z"}},"#,
            rng.pick(&[
                "Ada", "Alan", "Grace", "Linus", "Barbara", "Ken", "Tom", "Jack", "Sam"
            ]),
            rng.pick(&[
                "Lovelace", "Turing", "Hopper", "Torvalds", "Liskov", "Thompson"
            ]),
            rng.pick(&["ada", "alan", "grace", "linus", "barbara", "ken"]),
            rng.below(2) == 0,
            rng.below(1000),
            rng.pick(WORDS),
            rng.pick(WORDS),
            1 + rng.below(12),
            1 + rng.below(28),
            rng.below(24),
            rng.below(60),
            rng.below(60),
        );
    }
    s.push(']');
    s.into_bytes()
}

fn logs(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut s = String::new();
    let mut t = 1_764_000_000u64 + rng.below(100_000) as u64;
    while s.len() < len {
        t += rng.below(3) as u64;
        let _ = writeln!(
            s,
            "2026-11-25T{:02}:{:02}:{:02}.{:03}Z {} geecache::api 10.0.{}.{} \"{} /api/v1/groups/{}/keys/{}{} HTTP/1.1\" {} {}B {:.3}ms req_id={:016x}",
            (t / 3600) % 24,
            (t / 60) % 60,
            t % 60,
            rng.below(1000),
            rng.pick(&["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"]),
            rng.below(4),
            rng.below(256),
            rng.pick(&["GET", "GET", "GET", "PUT", "DELETE"]),
            rng.pick(&["scores", "users", "sessions"]),
            rng.pick(WORDS),
            rng.below(100_000),
            rng.pick(&["200", "200", "200", "404", "304", "502"]),
            rng.below(20_000),
            rng.below(50_000) as f64 / 1000.0,
            rng.next_u64(),
        );
    }
    s.into_bytes()
}

fn html(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut s = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>geecache</title>\
         <link rel=\"stylesheet\" href=\"/static/site.css\"></head>\n<body>\n<nav class=\"top\">\
         <a href=\"/\">Home</a> <a href=\"/docs\">Docs</a> <a href=\"/blog\">Blog</a></nav>\n",
    );
    while s.len() < len {
        let _ = write!(
            s,
            "<article class=\"post\" id=\"post-{}\">\n<h2>{} {}</h2>\n<p>",
            rng.below(10_000),
            rng.pick(WORDS),
            rng.pick(WORDS)
        );
        for _ in 0..(20 + rng.below(60)) {
            s.push_str(rng.pick(WORDS));
            s.push(' ');
        }
        s.push_str("</p>\n<ul class=\"meta\"><li>tag</li><li>");
        s.push_str(rng.pick(WORDS));
        s.push_str("</li></ul>\n</article>\n");
    }
    s.push_str("</body>\n</html>\n");
    s.into_bytes()
}

fn random(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len.div_ceil(8))
        .flat_map(|_| rng.next_u64().to_le_bytes())
        .take(len)
        .collect()
}

fn compressed(rng: &mut Rng, len: usize) -> Vec<u8> {
    // Compress ~4x as much text as asked, so the output is about `len` bytes.
    let text = logs(rng, len * 4);
    let mut out = Zstd
        .compress(&text, Some(19))
        .now_or_never()
        .expect("built-in codecs resolve at once")
        .expect("zstd compresses");
    out.truncate(len);
    out
}

/// About `len` bytes of corpus `name` (exactly `len` for random/compressed), from `seed`.
///
/// # Panics
/// For a name not in [`NAMES`].
pub fn generate(name: &str, seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    match name {
        "json" => json(&mut rng, len),
        "logs" => logs(&mut rng, len),
        "html" => html(&mut rng, len),
        "random" => random(&mut rng, len),
        "compressed" => compressed(&mut rng, len),
        other => panic!("no corpus {other:?}; corpora: {NAMES:?}"),
    }
}

/// `count` values of about `value_len` bytes each from corpus `name`, each different.
pub fn values(name: &str, value_len: usize, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| generate(name, 1 + i as u64, value_len))
        .collect()
}
