//! Write generations: per key shard, bumped by every set, remove and invalidation, so that a
//! load that overlapped a write caches nothing (see the module docs of `group`).

use parking_lot::MutexGuard;

use super::{CacheKind, Inner, len64, ms};
use crate::cache::{CacheEntry, Cached};
use crate::compression::Stored;

impl Inner {
    /// The write generation of `key`'s shard; see [`Inner::generations`].
    pub(super) fn generation(&self, key: &str) -> u64 {
        *self.generation_lock(key)
    }

    /// Runs `write` (a change to `key`'s copies) under its shard's lock, after bumping the
    /// generation: a load that read the generation before cannot cache any more, and one that
    /// caches waits for the write to finish. Keep `write` short and non-blocking.
    pub(super) fn write<T>(&self, key: &str, write: impl FnOnce() -> T) -> T {
        let mut generation = self.generation_lock(key);
        *generation += 1;
        write()
    }

    pub(super) fn generation_lock(&self, key: &str) -> MutexGuard<'_, u64> {
        let shard = xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % len64(self.generations.len());
        self.generations[usize::try_from(shard).unwrap_or(0)].lock()
    }

    /// Caches `found` in `tier`, with the TTL policy of that tier and the stale window its
    /// getter chose (`stale_ms`; `None`: the group's), and writes a value through to the
    /// storage tier when `write_through` is set; unless a write to the key happened
    /// since the load started (`generation`): then the load's value may be older than what the
    /// write left, and it only goes to the callers. The check and the caching happen under the
    /// key's shard lock, so no write can slip in between.
    pub(super) fn remember(
        &self,
        tier: CacheKind,
        key: &str,
        found: Option<(&Stored, Option<u64>)>,
        generation: u64,
        write_through: bool,
        stale_ms: Option<u32>,
    ) {
        let current = self.generation_lock(key);
        if *current != generation {
            tracing::debug!(group = %self.name, "a write raced this load; its value is not cached");
            return;
        }
        let now = self.clock.now_ms();
        let o = &self.options;
        let (cached, expires_at_ms, stale_ms) = match found {
            Some((stored, expires)) => (
                Cached::Value(stored.clone()),
                self.expiry(expires),
                stale_ms.unwrap_or_else(|| self.stale_ms()),
            ),
            None if o.negative_ttl.is_zero() => return,
            // "No such key" is never answered stale: it expires, and is asked again.
            None => (
                Cached::NotFound,
                Some(now.saturating_add(ms(o.negative_ttl))),
                0,
            ),
        };
        if let (true, Some((stored, _))) = (write_through, found) {
            // The value's own expiry, before any hot cap: storage keeps what the owner keeps.
            self.store_in_background(key, stored, expires_at_ms);
        }
        let expires_at_ms = match tier {
            CacheKind::Main => expires_at_ms,
            CacheKind::Hot => {
                let cap = now.saturating_add(ms(o.hot_ttl));
                Some(expires_at_ms.map_or(cap, |e| e.min(cap)))
            }
        };
        self.cache(tier)
            .insert(key, CacheEntry::new(cached, expires_at_ms, stale_ms));
        drop(current);
    }
}
