//! What one client (one address) may hold and ask: its open connections
//! (`--max-connections-per-client`, [`ClientConns`]) and its request rate (`--rate-limit`,
//! `--rate-burst`: a GCRA token bucket per address by `governor`, [`ClientRate`], whose quiet
//! clients are swept out). See `conn.rs` for how the listener uses them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::config::PerClient;

/// The connections each client holds open, for `--max-connections-per-client`.
#[derive(Debug)]
pub(super) struct ClientConns {
    /// The cap.
    pub(super) max: usize,
    /// Open connections by client; a client with none has no entry.
    pub(super) open: Mutex<HashMap<IpAddr, usize>>,
}

impl ClientConns {
    /// One more connection of `ip`, or `None` when it holds `max` already.
    pub(super) fn take(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let mut open = self.open.lock();
        let held = open.entry(ip).or_insert(0);
        if *held >= self.max {
            return None;
        }
        *held += 1;
        Some(ClientSlot {
            table: Arc::clone(self),
            ip,
        })
    }
}

/// One connection counted against its client's cap; gives it back when dropped.
#[derive(Debug)]
pub(super) struct ClientSlot {
    table: Arc<ClientConns>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock();
        if let Some(held) = open.get_mut(&self.ip) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The token buckets of `--rate-limit`, one per client address.
pub(crate) struct ClientRate {
    /// The buckets.
    limiter: governor::DefaultKeyedRateLimiter<IpAddr>,
    /// Requests a second, for the error message.
    per_second: u32,
    /// Checks since the buckets were last swept.
    checks: AtomicU64,
    /// When they were last swept.
    swept: Mutex<std::time::Instant>,
}

impl std::fmt::Debug for ClientRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRate")
            .field("per_second", &self.per_second)
            .field("clients", &self.limiter.len())
            .finish_non_exhaustive()
    }
}

/// How often (in checks, and at most once in this long) the quiet clients' buckets are swept.
const SWEEP_EVERY: u64 = 4096;
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

impl ClientRate {
    /// The buckets of `per_client`, or `None` when it sets no rate.
    pub(crate) fn new(per_client: &PerClient) -> Option<ClientRate> {
        let rate = NonZeroU32::new(per_client.rate)?;
        let burst = NonZeroU32::new(per_client.burst).unwrap_or(rate);
        Some(ClientRate {
            limiter: governor::RateLimiter::keyed(
                governor::Quota::per_second(rate).allow_burst(burst),
            ),
            per_second: rate.get(),
            checks: AtomicU64::new(0),
            swept: Mutex::new(std::time::Instant::now()),
        })
    }

    /// Takes a token of `ip`'s bucket; `Err(wait)` when it has none, `wait` being how long
    /// until it has one.
    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep();
        }
        self.limiter.check_key(&ip).map_err(|not_until| {
            use governor::clock::Clock as _;
            not_until.wait_time_from(self.limiter.clock().now())
        })
    }

    /// Drops the buckets that are full again (their clients have been quiet long enough).
    fn sweep(&self) {
        let mut swept = self.swept.lock();
        if swept.elapsed() >= SWEEP_INTERVAL {
            *swept = std::time::Instant::now();
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
    }

    /// Clients with a bucket now.
    #[cfg(test)]
    pub(super) fn clients(&self) -> usize {
        self.limiter.len()
    }

    /// 429 `rate_limited`: a request of a client past its rate, to retry after `wait`.
    pub(crate) fn limited(&self, wait: Duration) -> axum::response::Response {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut response = super::error_response(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "this client is past --rate-limit ({} requests a second); retry in {seconds}s",
                self.per_second
            ),
        );
        if let Ok(value) = axum::http::HeaderValue::from_str(&seconds.max(1).to_string()) {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, value);
        }
        response
    }
}
