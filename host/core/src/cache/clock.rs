//! Wall-clock time for the cache, injected so that expiry can be tested instantly and exactly.
//!
//! Expiry in geecache is absolute (milliseconds since the Unix epoch, chosen by the loader or the
//! setter and carried between nodes), so the clock is a wall clock rather than a monotonic one.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Source of "now" for expiry decisions.
///
/// It exists so that production code reads the system clock while tests drive time by hand
/// ([`ManualClock`]) and can check expiry at the exact millisecond without sleeping.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The real wall clock; the default clock of every cache.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        // A clock set before 1970 reads as the epoch rather than failing: expiry then errs on the
        // side of keeping entries, which the byte budget still bounds.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            })
    }
}

/// A clock that moves only when told to, for tests of expiry.
///
/// Share it with the cache as an `Arc<ManualClock>` and keep a clone to move time.
#[derive(Debug, Default)]
pub struct ManualClock {
    /// The current time in milliseconds since the Unix epoch; atomic so that a test can move
    /// time while other threads read it.
    now_ms: AtomicU64,
}

impl ManualClock {
    /// A clock that reads `start_ms` until it is moved.
    pub fn new(start_ms: u64) -> Self {
        Self {
            now_ms: AtomicU64::new(start_ms),
        }
    }

    /// Jumps to `now_ms` (which may be earlier than the current reading).
    pub fn set(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }

    /// Moves time forward by `by`, saturating at `u64::MAX` milliseconds.
    pub fn advance(&self, by: Duration) {
        let by_ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        // `fetch_update` with a closure that always returns `Some` cannot fail.
        let _ = self
            .now_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(by_ms))
            });
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance(Duration::from_millis(250));
        assert_eq!(clock.now_ms(), 1_250);
        clock.set(10);
        assert_eq!(clock.now_ms(), 10);
        clock.advance(Duration::MAX);
        assert_eq!(clock.now_ms(), u64::MAX);
    }

    #[test]
    fn system_clock_reads_the_wall_clock() {
        // 2020-01-01T00:00:00Z; any machine running this is later than that.
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }
}
