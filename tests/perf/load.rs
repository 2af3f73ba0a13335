//! The load generator of `geecache-perf http` and `memory`: keep-alive HTTP/1.1 over plain
//! TCP, one request at a time per connection (no pipelining), a latency histogram per
//! connection merged at the end.
//!
//! It is hand-rolled on purpose: a request is a few bytes written into a reused buffer and a
//! response is parsed by `httparse` from a reused buffer, so the client costs about what wrk
//! costs and is not what a run measures. Connections are split over `threads` OS threads, each
//! running a current-thread tokio runtime (wrk's shape: one event loop per thread, no work
//! stealing between them).
//!
//! A run ends at its duration, or after `max_requests` when it has one (warming, filling),
//! or when the user interrupts. Requests still unanswered `answer_timeout` after the end are
//! counted as errors.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Set by the signal handler: every loop stops at its next request.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether the user asked to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Which keys a run asks for.
#[derive(Debug, Clone)]
pub enum Keys {
    /// Uniformly over `0..count`.
    Uniform(u64),
    /// Every request a key never asked before (every one a miss).
    Unique,
    /// Zipf-distributed ranks over the table's keys (rank 0 the most popular).
    Zipf(Arc<Zipf>),
    /// `0, 1, 2, ...` across all connections, one request each: with `max_requests`, every key
    /// of `0..max_requests` exactly once (warming).
    Sequential,
}

/// How to write each request.
#[derive(Debug, Clone)]
pub struct Requests {
    /// The path up to the key, e.g. `/api/v1/groups/perf/keys/`.
    pub path_prefix: String,
    /// Put before every key (a run id, so keys of one run are not hits of another).
    pub key_prefix: String,
    /// Which keys.
    pub keys: Keys,
    /// Percent of requests that are `PUT`s of `body` (the rest are `GET`s).
    pub put_percent: u32,
    /// The body of every `PUT`.
    pub body: Arc<[u8]>,
    /// `Authorization` header value, when the nodes need a token.
    pub authorization: Option<String>,
}

/// One load run.
#[derive(Debug, Clone)]
pub struct Load {
    /// What the progress line calls it.
    pub label: String,
    /// Connections are spread round-robin over these.
    pub targets: Vec<SocketAddr>,
    /// Connections open at once, each with one request in flight.
    pub connections: usize,
    /// OS threads the connections are split over.
    pub threads: usize,
    /// How long requests are started for.
    pub duration: Duration,
    /// Stop after this many requests in all (before `duration` if it comes first).
    pub max_requests: Option<u64>,
    /// How long after the end an unanswered request is waited for before it counts as failed.
    pub answer_timeout: Duration,
    /// What to ask.
    pub requests: Requests,
    /// The body length every successful `GET` must have, when known.
    pub expect_len: Option<usize>,
    /// Print a progress line every second.
    pub progress: bool,
    /// Run the load threads under SCHED_BATCH (see [`batch_policy`]).
    pub batch: bool,
}

/// Puts the calling thread under Linux's SCHED_BATCH policy: the scheduler treats it as
/// CPU-bound, and when it wakes it does not preempt the thread running on its core. For a
/// client sharing cores with the servers it loads, that is the server which just answered it.
///
/// # Errors
/// The kernel refused (the policy is Linux's).
#[allow(unsafe_code)]
fn batch_policy() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call; pid 0 is this thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &raw const param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Requests answered or failed.
    pub requests: u64,
    /// Answered 2xx (and for `GET`s with the expected body length).
    pub ok: u64,
    /// Answered, but not 2xx.
    pub non_2xx: u64,
    /// 2xx whose body length was not the one expected.
    pub bad_body: u64,
    /// Connect, I/O and protocol errors, and requests unanswered at the end.
    pub errors: u64,
    /// From the first request to the last answer.
    pub elapsed: Duration,
    /// Latency of answered requests, in microseconds.
    pub latency_us: Histogram<u64>,
    /// The first few distinct problems, for the report.
    pub problems: Vec<String>,
}

impl Outcome {
    /// Adds `other`'s requests, time and latencies to this outcome (rounds of one row).
    pub fn absorb(&mut self, other: &Outcome) {
        self.requests += other.requests;
        self.ok += other.ok;
        self.non_2xx += other.non_2xx;
        self.bad_body += other.bad_body;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms of one run have the same bounds");
        for p in &other.problems {
            if self.problems.len() < MAX_PROBLEMS && !self.problems.contains(p) {
                self.problems.push(p.clone());
            }
        }
    }

    /// Requests per second over the run.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Percent of requests that succeeded (0 for an empty run).
    pub fn success_percent(&self) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        100.0 * self.ok as f64 / self.requests as f64
    }

    /// Whether every request succeeded (and there was at least one).
    pub fn all_ok(&self) -> bool {
        self.requests > 0 && self.ok == self.requests
    }

    /// Latency at `q` (0..1) in microseconds.
    pub fn latency(&self, q: f64) -> u64 {
        self.latency_us.value_at_quantile(q)
    }

    fn merge(&mut self, other: ConnOutcome) {
        self.requests += other.requests;
        self.ok += other.ok;
        self.non_2xx += other.non_2xx;
        self.bad_body += other.bad_body;
        self.errors += other.errors;
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms of one run have the same bounds");
        for p in other.problems {
            if self.problems.len() < MAX_PROBLEMS && !self.problems.contains(&p) {
                self.problems.push(p);
            }
        }
    }
}

/// Distinct problems kept per run.
const MAX_PROBLEMS: usize = 5;

/// Latencies above this (one minute, in µs) are recorded as this.
const MAX_LATENCY_US: u64 = 60_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Zipf's law over `n` ranks with exponent `s`, sampled by inverting its cumulative table.
#[derive(Debug)]
pub struct Zipf {
    /// `cumulative[i]`: the weight of ranks `0..=i`.
    cumulative: Vec<f64>,
}

impl Zipf {
    /// The distribution over `n` ranks (at least one), rank `i` weighing `1 / (i + 1)^s`.
    pub fn new(n: u64, s: f64) -> Zipf {
        let mut total = 0.0;
        let cumulative = (1..=n.max(1))
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(s);
                total
            })
            .collect();
        Zipf { cumulative }
    }

    /// The rank for `u`, uniform in `[0, 1)`.
    pub fn sample(&self, u: f64) -> u64 {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let x = u * total;
        let i = self.cumulative.partition_point(|&c| c <= x);
        i.min(self.cumulative.len() - 1) as u64
    }
}

/// splitmix64: a tiny, fast, good-enough generator for picking keys.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Counters the progress line reads while a run goes on; one per thread, on its own cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Live {
    done: AtomicU64,
    failed: AtomicU64,
}

/// What every connection of a run shares.
#[derive(Debug)]
struct Shared {
    load: Load,
    /// When requests stop being started.
    end: Instant,
    /// Requests issued so far, when the run is bounded by count (or sequential).
    issued: AtomicU64,
}

/// One connection's share of the outcome.
#[derive(Debug)]
struct ConnOutcome {
    requests: u64,
    ok: u64,
    non_2xx: u64,
    bad_body: u64,
    errors: u64,
    latency_us: Histogram<u64>,
    problems: Vec<String>,
}

impl ConnOutcome {
    fn problem(&mut self, what: String) {
        if self.problems.len() < MAX_PROBLEMS && !self.problems.contains(&what) {
            self.problems.push(what);
        }
    }
}

/// Runs `load` to its end and returns what it measured. Blocks the calling thread, which
/// prints the progress line.
pub fn run(load: &Load) -> anyhow::Result<Outcome> {
    anyhow::ensure!(!load.targets.is_empty(), "no target to load");
    let connections = load.connections.max(1);
    let threads = load.threads.clamp(1, connections);
    let started = Instant::now();
    let shared = Arc::new(Shared {
        load: load.clone(),
        end: started + load.duration,
        issued: AtomicU64::new(0),
    });
    let live: Arc<Vec<Live>> = Arc::new((0..threads).map(|_| Live::default()).collect());
    let mut printed = false;

    let outcomes = std::thread::scope(|scope| -> anyhow::Result<Vec<ConnOutcome>> {
        let mut handles = Vec::new();
        for t in 0..threads {
            let shared = Arc::clone(&shared);
            let live = Arc::clone(&live);
            let batch = load.batch;
            handles.push(scope.spawn(move || -> anyhow::Result<Vec<ConnOutcome>> {
                if batch {
                    batch_policy()
                        .map_err(|e| anyhow::anyhow!("SCHED_BATCH for a client thread: {e}"))?;
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let mut tasks = Vec::new();
                    // Connection c lives on thread c % threads and loads target c % targets.
                    for conn in (t..connections).step_by(threads) {
                        let shared = Arc::clone(&shared);
                        let live = Arc::clone(&live);
                        tasks.push(tokio::spawn(async move {
                            connection(&shared, conn, &live[t]).await
                        }));
                    }
                    let mut out = Vec::new();
                    for task in tasks {
                        out.push(task.await?);
                    }
                    Ok(out)
                })
            }));
        }
        let mut last_print = Instant::now();
        while !handles
            .iter()
            .all(std::thread::ScopedJoinHandle::is_finished)
        {
            std::thread::sleep(Duration::from_millis(50));
            if load.progress && last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                print_progress(load, started, &live);
                printed = true;
            }
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("a load thread panicked"))??,
            );
        }
        Ok(all)
    })?;
    if printed && std::io::stderr().is_terminal() {
        // The final figures, then the line ends.
        print_progress(load, started, &live);
        eprintln!();
    }

    let mut outcome = Outcome {
        requests: 0,
        ok: 0,
        non_2xx: 0,
        bad_body: 0,
        errors: 0,
        elapsed: started.elapsed(),
        latency_us: histogram(),
        problems: Vec::new(),
    };
    for o in outcomes {
        outcome.merge(o);
    }
    Ok(outcome)
}

fn print_progress(load: &Load, started: Instant, live: &[Live]) {
    let done: u64 = live.iter().map(|l| l.done.load(Ordering::Relaxed)).sum();
    let failed: u64 = live.iter().map(|l| l.failed.load(Ordering::Relaxed)).sum();
    let secs = started.elapsed().as_secs_f64();
    let of = match load.max_requests {
        Some(max) => format!("{done}/{max} req"),
        None => format!("{secs:.0}/{:.0} s, {done} req", load.duration.as_secs_f64()),
    };
    let line = format!(
        "  {}: {of}, {:.0} req/s, {failed} failed",
        load.label,
        done as f64 / secs.max(1e-9)
    );
    // On a terminal the line rewrites itself; in a log, one line a second.
    if std::io::stderr().is_terminal() {
        eprint!("\r{line}    ");
    } else {
        eprintln!("{line}");
    }
}

/// One connection: requests one after the other until the run ends.
async fn connection(shared: &Shared, conn: usize, live: &Live) -> ConnOutcome {
    let load = &shared.load;
    let mut out = ConnOutcome {
        requests: 0,
        ok: 0,
        non_2xx: 0,
        bad_body: 0,
        errors: 0,
        latency_us: histogram(),
        problems: Vec::new(),
    };
    let hard_end = tokio::time::Instant::from_std(shared.end + load.answer_timeout);
    let mut state = ConnState {
        target: load.targets[conn % load.targets.len()],
        stream: None,
        rng: Rng(0x5eed ^ ((conn as u64) << 32)),
        request: Vec::with_capacity(512 + load.requests.body.len()),
        buf: BytesMut::with_capacity(16 * 1024 + load.expect_len.unwrap_or(0)),
        seq: 0,
    };
    let work = state.requests(shared, conn, live, &mut out);
    if tokio::time::timeout_at(hard_end, work).await.is_err() {
        out.requests += 1;
        out.errors += 1;
        live.failed.fetch_add(1, Ordering::Relaxed);
        out.problem(format!(
            "no answer within {:?} after the end of the run",
            load.answer_timeout
        ));
    }
    out
}

/// What one connection keeps between requests.
#[derive(Debug)]
struct ConnState {
    target: SocketAddr,
    stream: Option<TcpStream>,
    rng: Rng,
    /// The request being sent (reused).
    request: Vec<u8>,
    /// The response being read (reused).
    buf: BytesMut,
    /// Requests this connection made, for unique keys.
    seq: u64,
}

/// A parsed answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    body_len: usize,
    /// The server will close the connection after this answer.
    close: bool,
}

impl ConnState {
    async fn requests(&mut self, shared: &Shared, conn: usize, live: &Live, out: &mut ConnOutcome) {
        let load = &shared.load;
        loop {
            if interrupted() || Instant::now() >= shared.end {
                return;
            }
            let index = match load.max_requests {
                Some(max) => {
                    let i = shared.issued.fetch_add(1, Ordering::Relaxed);
                    if i >= max {
                        return;
                    }
                    Some(i)
                }
                None if matches!(load.requests.keys, Keys::Sequential) => {
                    Some(shared.issued.fetch_add(1, Ordering::Relaxed))
                }
                None => None,
            };
            let is_get = self.write_request(&load.requests, conn, index);
            if self.stream.is_none() {
                match TcpStream::connect(self.target).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        self.stream = Some(s);
                    }
                    Err(e) => {
                        out.requests += 1;
                        out.errors += 1;
                        live.failed.fetch_add(1, Ordering::Relaxed);
                        out.problem(format!("connect to {}: {e}", self.target));
                        // A refused connection fails at once: do not spin on it.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                }
            }
            let stream = self.stream.as_mut().expect("connected above");
            let started = Instant::now();
            let reply = exchange(stream, &self.request, &mut self.buf).await;
            let micros = started
                .elapsed()
                .as_micros()
                .min(u128::from(MAX_LATENCY_US)) as u64;
            out.requests += 1;
            live.done.fetch_add(1, Ordering::Relaxed);
            match reply {
                Ok(reply) => {
                    out.latency_us.saturating_record(micros.max(1));
                    if reply.close {
                        self.stream = None;
                    }
                    if !(200..300).contains(&reply.status) {
                        out.non_2xx += 1;
                        live.failed.fetch_add(1, Ordering::Relaxed);
                        out.problem(format!("status {}", reply.status));
                    } else if is_get && load.expect_len.is_some_and(|n| n != reply.body_len) {
                        out.bad_body += 1;
                        live.failed.fetch_add(1, Ordering::Relaxed);
                        out.problem(format!(
                            "a GET answered {} bytes, not {}",
                            reply.body_len,
                            load.expect_len.unwrap_or(0)
                        ));
                    } else {
                        out.ok += 1;
                    }
                }
                Err(e) => {
                    self.stream = None;
                    out.errors += 1;
                    live.failed.fetch_add(1, Ordering::Relaxed);
                    out.problem(format!("{}: {e}", self.target));
                }
            }
        }
    }

    /// Writes the next request into `self.request`; true for a `GET`.
    fn write_request(&mut self, requests: &Requests, conn: usize, index: Option<u64>) -> bool {
        use std::io::Write as _;
        let is_put = requests.put_percent > 0
            && self.rng.below(100) < u64::from(requests.put_percent.min(100));
        let r = &mut self.request;
        r.clear();
        r.extend_from_slice(if is_put { b"PUT " } else { b"GET " });
        r.extend_from_slice(requests.path_prefix.as_bytes());
        r.extend_from_slice(requests.key_prefix.as_bytes());
        // Writing into a Vec cannot fail.
        let _ = match &requests.keys {
            Keys::Uniform(count) => write!(r, "{}", self.rng.below((*count).max(1))),
            Keys::Zipf(zipf) => write!(r, "{}", zipf.sample(self.rng.unit())),
            Keys::Sequential => write!(r, "{}", index.unwrap_or(self.seq)),
            Keys::Unique => match index {
                Some(i) => write!(r, "{i}"),
                None => write!(r, "{conn}-{}", self.seq),
            },
        };
        self.seq += 1;
        let _ = write!(r, " HTTP/1.1\r\nHost: {}\r\n", self.target);
        if let Some(auth) = &requests.authorization {
            let _ = write!(r, "Authorization: {auth}\r\n");
        }
        if is_put {
            let _ = write!(r, "Content-Length: {}\r\n\r\n", requests.body.len());
            r.extend_from_slice(&requests.body);
        } else {
            r.extend_from_slice(b"\r\n");
        }
        !is_put
    }
}

fn protocol_error(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

/// Sends `request` and reads one response (headers, then a `Content-Length` body).
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut BytesMut,
) -> std::io::Result<Reply> {
    stream.write_all(request).await?;
    buf.clear();
    let (head_len, reply) = loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(buf) {
                Ok(httparse::Status::Complete(n)) => break (n, parse_head(&response)?),
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(protocol_error(format!("bad response: {e}"))),
            }
        }
        read_more(stream, buf).await?;
    };
    let total = head_len + reply.body_len;
    while buf.len() < total {
        read_more(stream, buf).await?;
    }
    if buf.len() > total {
        return Err(protocol_error("more bytes than the response announced"));
    }
    buf.advance(total);
    Ok(reply)
}

async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<()> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    if stream.read_buf(buf).await? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    Ok(())
}

/// Status, body length and whether the connection closes, from a complete head.
fn parse_head(response: &httparse::Response<'_, '_>) -> std::io::Result<Reply> {
    let status = response.code.unwrap_or(0);
    let mut body_len = None;
    let mut close = response.version == Some(0);
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(h.value).unwrap_or("");
            body_len = Some(
                text.trim()
                    .parse::<usize>()
                    .map_err(|_| protocol_error(format!("bad Content-Length {text:?}")))?,
            );
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(protocol_error(
                "chunked responses are not supported by this client",
            ));
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.eq_ignore_ascii_case(b"close");
        }
    }
    let body_len = match body_len {
        Some(n) => n,
        // These never have a body.
        None if status == 204 || status == 304 || (100..200).contains(&status) => 0,
        None => {
            return Err(protocol_error(format!(
                "status {status} without Content-Length"
            )));
        }
    };
    Ok(Reply {
        status,
        body_len,
        close,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_low_ranks_and_stays_in_range() {
        let zipf = Zipf::new(1000, 0.99);
        let mut rng = Rng(1);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[zipf.sample(rng.unit()) as usize] += 1;
        }
        assert!(counts[0] > counts[1] && counts[1] > counts[10] && counts[10] > counts[999]);
        assert_eq!(zipf.sample(0.0), 0);
        assert_eq!(zipf.sample(0.999_999_999), 999);
    }
}
