//! Why a key is not in the cache: a fixed table that remembers, for keys that left it, how
//! they left (evicted for room, expired, flushed), so a miss can be counted by its reason.
//!
//! Direct-mapped and lock-free: one `u64` slot per bucket holding the key's hash with the
//! reason in its low bits. A later key that lands in the same bucket overwrites it, and a key
//! whose slot was overwritten (or that never left the cache) reads as "never seen": the table
//! may lose a reason, never invent one for a key it did not record (a 61-bit hash match).
//! Its size is fixed when the cache is built ([`ghost_slots`]): one slot per KiB of budget,
//! between 1,024 and 1,048,576 slots (8 B each: 0.8% of the budget).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Why a lookup found no live entry for a key. The reasons a cache tier can tell; a group adds
/// [`MissReason::NotOwner`] and [`MissReason::StaleRefresh`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum MissReason {
    /// No trace of the key: never cached here, or its trace was overwritten.
    NeverSeen,
    /// A value that expired (and its stale window, if any, ended).
    Expired,
    /// Dropped for room (the byte budget).
    Evicted,
    /// A remembered "no such key" that expired.
    NegativeExpired,
    /// Another node owns the key (a non-owner's miss goes to the owner).
    NotOwner,
    /// A stale value answered at once while it is refreshed in the background.
    StaleRefresh,
    /// Removed by a flush of the group.
    Flushed,
}

impl MissReason {
    /// Every reason, in the order the stats and metrics list them.
    pub const ALL: [MissReason; 7] = [
        MissReason::NeverSeen,
        MissReason::Expired,
        MissReason::Evicted,
        MissReason::NegativeExpired,
        MissReason::NotOwner,
        MissReason::StaleRefresh,
        MissReason::Flushed,
    ];

    /// The reason's label in metrics and stats.
    pub fn label(self) -> &'static str {
        match self {
            MissReason::NeverSeen => "never_seen",
            MissReason::Expired => "expired",
            MissReason::Evicted => "evicted",
            MissReason::NegativeExpired => "negative_expired",
            MissReason::NotOwner => "not_owner",
            MissReason::StaleRefresh => "stale_refresh",
            MissReason::Flushed => "flushed",
        }
    }
}

/// Bits of a slot that hold the reason.
const REASON_BITS: u32 = 3;
const REASON_MASK: u64 = (1 << REASON_BITS) - 1;

/// Slots of the ghost table of a cache of `max_bytes`: one per KiB, a power of two between
/// 2^10 and 2^20.
pub fn ghost_slots(max_bytes: u64) -> usize {
    let per_kib = usize::try_from(max_bytes / 1024).unwrap_or(usize::MAX);
    // The bounds are powers of two, so rounding up stays within them.
    per_kib.clamp(1 << 10, 1 << 20).next_power_of_two()
}

/// The table; see the module docs.
#[derive(Debug)]
pub(super) struct Ghosts {
    slots: Box<[AtomicU64]>,
}

impl Ghosts {
    /// A table of `slots` slots (a power of two).
    pub(super) fn new(slots: usize) -> Ghosts {
        debug_assert!(slots.is_power_of_two());
        Ghosts {
            slots: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn slot(&self, hash: u64) -> &AtomicU64 {
        // The index from the high bits, the tag check on the rest: a key's slot and its tag do
        // not come from the same bits only.
        let index = (hash.rotate_left(20) as usize) & (self.slots.len() - 1);
        &self.slots[index]
    }

    /// Remembers that the key hashing to `hash` left the cache for `reason`.
    pub(super) fn record(&self, hash: u64, reason: MissReason) {
        let tag = hash & !REASON_MASK;
        // The reason's discriminant, its index in `MissReason::ALL` (below 8).
        self.slot(hash)
            .store(tag | reason as u64, Ordering::Relaxed);
    }

    /// Why the key hashing to `hash` left, if its trace is still here.
    pub(super) fn reason(&self, hash: u64) -> MissReason {
        let slot = self.slot(hash).load(Ordering::Relaxed);
        if slot & !REASON_MASK != hash & !REASON_MASK {
            return MissReason::NeverSeen;
        }
        usize::try_from(slot & REASON_MASK)
            .ok()
            .and_then(|code| MissReason::ALL.get(code).copied())
            .unwrap_or(MissReason::NeverSeen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_reads_back_and_a_stranger_is_never_seen() {
        let g = Ghosts::new(1024);
        g.record(0xdead_beef_0000_1000, MissReason::Evicted);
        assert_eq!(g.reason(0xdead_beef_0000_1000), MissReason::Evicted);
        assert_eq!(g.reason(0xdead_beef_0000_2000), MissReason::NeverSeen);
        g.record(0xdead_beef_0000_1000, MissReason::Flushed);
        assert_eq!(g.reason(0xdead_beef_0000_1000), MissReason::Flushed);
    }

    #[test]
    fn a_reasons_code_is_its_place_in_all() {
        for (i, reason) in MissReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{reason:?}");
        }
    }

    #[test]
    fn slots_follow_the_budget_within_bounds() {
        assert_eq!(ghost_slots(0), 1024);
        assert_eq!(ghost_slots(64 << 20), 65536);
        assert_eq!(ghost_slots(u64::MAX), 1 << 20);
    }
}
