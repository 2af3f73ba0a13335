//! A group's counters, and the snapshot `/api/v1/stats` (and the metrics) read.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Adds one to a counter.
pub(super) fn bump(counter: &AtomicU64) {
    add(counter, 1);
}

/// Adds `n` to a counter.
pub(super) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Declares the counters once: the atomic struct, the serialisable snapshot, and the copy
/// from one to the other, so a counter cannot be added to one and forgotten in the other.
macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident, )*) => {
        /// Counters of one group, exported by `/api/v1/stats` and `/metrics`.
        #[derive(Debug, Default)]
        pub struct GroupStats {
            $( $(#[$doc])* pub $name: AtomicU64, )*
        }

        /// The counters of a group at one instant.
        #[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
        pub struct Counters {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl GroupStats {
            /// The counters now.
            pub fn counters(&self) -> Counters {
                Counters {
                    $( $name: self.$name.load(Ordering::Relaxed), )*
                }
            }
        }
    };
}

counters! {
    /// `get` calls with a valid key.
    gets,
    /// Answers served from the main cache (values and remembered "no such key").
    hits,
    /// Answers served from the hot cache (copies of other nodes' keys).
    hot_hits,
    /// Of the hits (main or hot), those that were a remembered "no such key".
    negative_hits,
    /// Gets neither cache could answer fresh: a load, or a stale answer while it is
    /// refreshed. Counted once more under its reason (`miss_*`): the reasons add up to it.
    misses,
    /// Misses of keys this node has no trace of (never cached, or the trace was overwritten).
    miss_never_seen,
    /// Misses of values that expired (and whose stale window, if any, ended).
    miss_expired,
    /// Misses of values dropped for room.
    miss_evicted,
    /// Misses of a remembered "no such key" that expired.
    miss_negative_expired,
    /// Misses of keys another node owns (asked of the owner).
    miss_not_owner,
    /// Gets answered with a stale value at once while it is refreshed in the background.
    miss_stale_refresh,
    /// Misses of keys a flush removed.
    miss_flushed,
    /// Background refreshes started for stale entries (clients' or peers' requests), one per
    /// key at a time.
    stale_refreshes,
    /// Refreshes started ahead of expiry (`--refresh-ahead`).
    early_refreshes,
    /// Background refreshes (stale or ahead) that failed: the entry is answered as it is until
    /// its stale window ends (stale-if-error).
    refresh_errors,
    /// Loads started (one per singleflight leader, client or peer initiated).
    loads,
    /// Callers that shared another caller's load instead of starting their own.
    loads_deduplicated,
    /// Calls made to the local getter.
    getter_calls,
    /// Getter calls that failed.
    getter_errors,
    /// Loads answered by the owning peer.
    peer_loads,
    /// Peer requests that failed, or answered with a value that did not decode (the node then
    /// loaded locally, or the request failed).
    peer_errors,
    /// Requests served to peers as the key's owner.
    peer_requests_served,
    /// Loads of a key this node newly owns answered by its previous owner's memory (warm
    /// handoff after a ring change), not by the storage tier or the getter.
    handoff_hits,
    /// Peeks at a previous owner that found nothing, failed or timed out (then the key loads
    /// as usual).
    handoff_misses,
    /// Peeks served to a key's new owner (hits or not).
    peeks_served,
    /// Entries this node handed to their next owners while it stopped (`--handoff-bytes`).
    handoff_pushed,
    /// Entries this node could not hand over while it stopped: past the byte budget or the
    /// shutdown grace, or refused or not answered by their next owner (they load again).
    handoff_push_skipped,
    /// Entries taken over from a stopping node, whose next owner this node is.
    handoff_received,
    /// Lookups in the storage tier that found a live value.
    storage_hits,
    /// Lookups in the storage tier that found nothing (or an expired value).
    storage_misses,
    /// Storage tier calls (get, put, delete) that failed.
    storage_errors,
    /// Background storage writes (a load's write-through, a non-owner's delete) dropped
    /// because the tier's queue was full.
    storage_writes_dropped,
    /// Client writes (`PUT`, `DELETE` at the owner) answered with an error because the storage
    /// tier did not finish them in time, then cancelled before they ran or, for a put that
    /// finished anyway, deleted again: an error answer means the write did not happen.
    storage_writes_abandoned,
    /// Invalidations of other nodes' copies after a write that failed or did not answer within
    /// `--peer-timeout` (that node's hot copy then expires by itself).
    invalidations_failed,
    /// Stored values that did not decode (memory, storage tier or peer): dropped and reloaded,
    /// never served.
    corrupt_values,
    /// Values encoded for storage (loaded or set at this node).
    values_encoded,
    /// Of those, values stored compressed (the rest were small or did not shrink).
    values_compressed,
    /// Bytes of the values encoded, before encoding.
    encoded_raw_bytes,
    /// Bytes those values take as stored (header and payload): divide by `encoded_raw_bytes`
    /// for the compression ratio.
    encoded_stored_bytes,
    /// Hits answered with the stored gzip/zstd payload as it is, to a client that accepts that
    /// `Content-Encoding` (no decode on this node).
    encoded_replies,
    /// Values set (at this node as owner).
    sets,
    /// Keys removed (at this node as owner).
    removes,
}

impl Counters {
    /// The misses counted under `reason`.
    pub fn misses_by(&self, reason: crate::cache::MissReason) -> u64 {
        use crate::cache::MissReason as R;
        match reason {
            R::NeverSeen => self.miss_never_seen,
            R::Expired => self.miss_expired,
            R::Evicted => self.miss_evicted,
            R::NegativeExpired => self.miss_negative_expired,
            R::NotOwner => self.miss_not_owner,
            R::StaleRefresh => self.miss_stale_refresh,
            R::Flushed => self.miss_flushed,
        }
    }
}

/// A point-in-time copy of a group's counters and cache occupancy.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupSnapshot {
    /// The group's name.
    pub name: String,
    /// The getter's name.
    pub getter: String,
    /// The codec values are compressed with (`none` when they are not).
    pub compression: String,
    /// The storage tier's name, if the group has one.
    pub storage: Option<String>,
    /// The counters.
    #[serde(flatten)]
    pub counters: Counters,
    /// Lookups the main cache could not answer: `hot_hits + misses` (each one went on to the
    /// hot cache), so it needs no counter of its own.
    pub main_misses: u64,
    /// Entries in the main cache.
    pub cache_items: u64,
    /// Bytes the main cache holds, as weighed against its budget (stored, i.e. compressed,
    /// sizes).
    pub cache_bytes: u64,
    /// The main cache's budget.
    pub cache_max_bytes: u64,
    /// Entries evicted from the main cache (size or expiry).
    pub cache_evictions: u64,
    /// Entries in the hot cache.
    pub hot_items: u64,
    /// Bytes the hot cache holds.
    pub hot_bytes: u64,
    /// The hot cache's budget.
    pub hot_max_bytes: u64,
    /// Entries evicted from the hot cache.
    pub hot_evictions: u64,
}
