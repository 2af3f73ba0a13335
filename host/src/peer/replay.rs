//! The replay guard: the nonces of the signed requests a node accepted, by signing second,
//! for as long as their date can be accepted, in a bounded, compact ring.

use std::collections::HashSet;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use parking_lot::Mutex;

use super::auth::{AuthError, MAX_CLOCK_SKEW, MAX_REMEMBERED_NONCES, NONCE_WINDOW, unix_now_ms};

/// Hashes a nonce by folding its halves: nonces are random, and only nonces of correctly
/// signed requests are stored, so no one without the secret can aim at a hash bucket.
#[derive(Debug, Default)]
struct NonceHasher(u64);

impl Hasher for NonceHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 = (n as u64) ^ ((n >> 64) as u64);
    }
}

/// Recent nonces of one second, before they join its sorted ones.
type NonceSet = HashSet<u128, BuildHasherDefault<NonceHasher>>;

/// How many nonces a slot takes in its hash set before it merges them into its sorted slice:
/// large enough that merging is rare (amortized a few moves per nonce), small enough that the
/// sets of all slots stay within a few MiB.
const MERGE_AT: usize = 4096;

/// The nonces signed in one second, stored compactly: most in a sorted slice of exactly their
/// size (16 bytes each), the latest in a small hash set.
#[derive(Debug, Default)]
struct Slot {
    /// The signing date whose nonces these are.
    date: u64,
    /// Nonces merged so far, sorted, without spare room.
    sorted: Box<[u128]>,
    /// Nonces since the last merge (fewer than [`MERGE_AT`]).
    recent: NonceSet,
}

impl Slot {
    fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    fn contains(&self, nonce: u128) -> bool {
        self.recent.contains(&nonce) || self.sorted.binary_search(&nonce).is_ok()
    }

    /// Adds a nonce not in the slot yet.
    fn insert(&mut self, nonce: u128) {
        self.recent.insert(nonce);
        if self.recent.len() >= MERGE_AT {
            let mut recent: Vec<u128> = self.recent.drain().collect();
            recent.sort_unstable();
            let mut merged = Vec::with_capacity(self.sorted.len() + recent.len());
            let (mut old, mut new) = (self.sorted.iter().peekable(), recent.iter().peekable());
            while let (Some(&&a), Some(&&b)) = (old.peek(), new.peek()) {
                if a < b {
                    merged.push(a);
                    old.next();
                } else {
                    merged.push(b);
                    new.next();
                }
            }
            merged.extend(old);
            merged.extend(new);
            self.sorted = merged.into_boxed_slice();
        }
    }
}

/// Slots of the guard's ring: one per signing date a request can still be accepted with.
const RING: usize = NONCE_WINDOW.as_secs() as usize;

/// The nonces of the signed requests a node accepted, by signing date, for as long as that date
/// is acceptable ([`NONCE_WINDOW`]), and the time the node started: a request whose date is
/// still acceptable cannot be replayed, and one signed before the node started (whose nonce it
/// cannot know) is refused. Bounded: when it holds `capacity` nonces it refuses new requests
/// rather than forget old nonces (forgetting would reopen the replay window). Cheap to clone;
/// clones share the nonces.
#[derive(Clone)]
pub struct ReplayGuard {
    /// The nonces and their count, behind one lock (a check holds it for a lookup and an
    /// insert; one in [`MERGE_AT`] also merges a second's nonces).
    state: Arc<Mutex<Nonces>>,
    /// The first signing date accepted, in unix milliseconds: just after the guard was made.
    /// (Dates carry milliseconds, so a node that just started takes requests signed a moment
    /// after it rather than refusing the whole second it started in.)
    started_ms: u64,
    /// Most nonces held at once.
    capacity: u64,
}

/// The ring of per-second nonce slots.
#[derive(Debug, Default)]
struct Nonces {
    /// Slot `date % RING` holds the nonces signed at `date` (the slot's first field); a slot
    /// whose date has aged out is emptied before it is counted or reused.
    ring: Vec<Slot>,
    /// Nonces in the ring, all slots together.
    held: u64,
}

impl Nonces {
    /// Empties the slots whose date can no longer be accepted at `now`.
    fn expire(&mut self, now: u64) {
        for slot in &mut self.ring {
            if slot.len() > 0 && !still_acceptable(slot.date, now) {
                self.held -= slot.len() as u64;
                *slot = Slot::default();
            }
        }
    }
}

/// Whether a request dated `date` may still be accepted at `now`, or was within the last
/// second (so its nonce must still be remembered).
fn still_acceptable(date: u64, now: u64) -> bool {
    now <= date + MAX_CLOCK_SKEW.as_secs() + 1
}

impl fmt::Debug for ReplayGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self.state.lock().held;
        f.debug_struct("ReplayGuard")
            .field("held", &held)
            .field("capacity", &self.capacity)
            .field("started_ms", &self.started_ms)
            .finish()
    }
}

impl Default for ReplayGuard {
    fn default() -> Self {
        ReplayGuard::with_capacity(MAX_REMEMBERED_NONCES)
    }
}

impl ReplayGuard {
    /// A guard started now, remembering at most `capacity` nonces.
    pub fn with_capacity(capacity: u64) -> ReplayGuard {
        ReplayGuard::started_at_ms(unix_now_ms() + 1, capacity)
    }

    /// A guard that refuses requests dated before `started` (unix seconds), remembering at
    /// most `capacity` nonces.
    pub fn started_at(started: u64, capacity: u64) -> ReplayGuard {
        ReplayGuard::started_at_ms(started.saturating_mul(1000), capacity)
    }

    /// A guard that refuses requests dated before `started_ms` (unix milliseconds).
    pub fn started_at_ms(started_ms: u64, capacity: u64) -> ReplayGuard {
        ReplayGuard {
            state: Arc::new(Mutex::new(Nonces {
                ring: (0..RING).map(|_| Slot::default()).collect(),
                held: 0,
            })),
            started_ms,
            capacity,
        }
    }

    /// The first whole signing second all of which this guard accepts.
    pub fn started(&self) -> u64 {
        self.started_ms.div_ceil(1000)
    }

    /// Remembers `nonce`, signed at `date`, seen at `now` (unix seconds; the caller has checked
    /// that `date` is within [`MAX_CLOCK_SKEW`] of `now`).
    ///
    /// # Errors
    /// [`AuthError::BeforeStart`] when `date` is before the guard started;
    /// [`AuthError::Replayed`] when the nonce was seen before with this date;
    /// [`AuthError::TooManyNonces`] when the guard is full.
    pub fn check(&self, nonce: u128, date: u64, now: u64) -> Result<(), AuthError> {
        self.check_ms(nonce, date.saturating_mul(1000), now)
    }

    /// [`ReplayGuard::check`] with the date in milliseconds (the start is checked to the
    /// millisecond; nonces are kept by second).
    ///
    /// # Errors
    /// As [`ReplayGuard::check`].
    pub fn check_ms(&self, nonce: u128, date_ms: u64, now: u64) -> Result<(), AuthError> {
        if date_ms < self.started_ms {
            return Err(AuthError::BeforeStart);
        }
        let date = date_ms / 1000;
        if !still_acceptable(date, now) {
            // The caller checks the skew; never store what the ring cannot keep.
            return Err(AuthError::Stale {
                skew_secs: now - date,
            });
        }
        let mut nonces = self.state.lock();
        let slot = (date % RING as u64) as usize;
        if nonces.ring[slot].date == date && nonces.ring[slot].contains(nonce) {
            return Err(AuthError::Replayed);
        }
        nonces.expire(now);
        if nonces.held >= self.capacity {
            return Err(AuthError::TooManyNonces);
        }
        let slot = &mut nonces.ring[slot];
        if slot.date != date {
            // Emptied by `expire`: the date it held is at least RING seconds older than
            // `date`, and `date` is at most MAX_CLOCK_SKEW + 1 s old, so it aged out.
            debug_assert_eq!(slot.len(), 0);
            slot.date = date;
        }
        slot.insert(nonce);
        nonces.held += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: u64 = 1_700_000_000;

    /// Past [`MERGE_AT`] nonces a second, they move to the sorted slice and are still found.
    #[test]
    fn a_busy_second_merges_its_nonces_and_still_finds_each() {
        let guard = ReplayGuard::started_at(DATE, 100_000);
        let nonces: Vec<u128> = (0..3 * MERGE_AT as u128 + 7)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
            .collect();
        for &n in &nonces {
            assert_eq!(guard.check(n, DATE, DATE), Ok(()));
        }
        for &n in &nonces {
            assert_eq!(guard.check(n, DATE, DATE), Err(AuthError::Replayed));
        }
        let state = guard.state.lock();
        let slot = &state.ring[(DATE % RING as u64) as usize];
        assert_eq!(slot.sorted.len(), 3 * MERGE_AT);
        assert!(slot.sorted.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(state.held, nonces.len() as u64);
    }
}
