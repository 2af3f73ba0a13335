//! The in-memory cache tiers (main and hot): byte-bounded, with per-entry absolute expiry.
//!
//! Storage, weighting and eviction are quick_cache's ([`quick_cache::sync::Cache`]: sharded,
//! one slab of entries and a table of 4-byte indexes per shard, CLOCK-Pro-like eviction with
//! ghost entries); this module adds what geecache needs on top:
//!
//! - capacity in bytes: an entry weighs its key's and its payload's allocations, as the
//!   allocator rounds them ([`allocation_bytes`]), + [`ENTRY_OVERHEAD_BYTES`];
//!   the budget is split evenly between the store's shards ([`shards_for`]), so the largest
//!   entry a tier takes is a little under a shard's share ([`Cache::largest_entry`]);
//! - absolute expiry per entry (`expires_at_ms`, milliseconds since the Unix epoch), read from an
//!   injected [`Clock`]. [`Cache::get`] checks it on every read, so expiry is exact at the
//!   millisecond; an expired entry nobody reads again stays until eviction reaches it (it
//!   still counts against the budget, and its eviction is counted as an expiry);
//! - negative entries ([`Cached::NotFound`]) so that a missing key cannot hammer the origin;
//! - stale windows: an entry may carry `stale_ms`, how long past its expiry it may still be
//!   answered (marked stale) while it is refreshed; [`Cache::lookup`] tells fresh from stale,
//!   [`Cache::get`] returns fresh entries only;
//! - an eviction counter for metrics, and for the main tier a ghost table (`ghosts.rs`) that
//!   remembers why keys left (evicted, expired, flushed), so a miss is counted by its reason;
//! - keys that carry their hash (`StoreKey`), keyed SipHash computed once per request and
//!   passed through to the store's table and shard choice.
//!
//! Files: this one holds the cache; `entry.rs` the entry (one 64-byte allocation beside its
//! payload's), `clock.rs` the injected clock, `doorkeeper.rs` the doorkeeper that admits hot
//! copies, `ghosts.rs` the table of why keys left.

mod clock;
mod doorkeeper;
mod entry;
mod ghosts;

pub use clock::{Clock, ManualClock, SystemClock};
pub use doorkeeper::Doorkeeper;
pub use entry::CacheEntry;
use ghosts::Ghosts;
pub use ghosts::{MissReason, ghost_slots};

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use crate::compression::Stored;

/// Bytes charged for every entry on top of its key's and payload's allocations.
///
/// It stands for what every entry costs whatever its size (the store's slab slot and its share
/// of ghost slots, the hash-table index, the `CacheEntry`'s 64-byte allocation that holds the
/// codec, the header's fields and the expiry), so that the byte budget bounds resident memory
/// and a flood of tiny or negative entries is still bounded by it. The allocator's rounding of
/// key and payload is charged per entry instead ([`allocation_bytes`]). The figure is what
/// `geecache-perf memory` measures beyond the key's and payload's allocations, rounded up
/// (docs/performance.md).
pub const ENTRY_OVERHEAD_BYTES: u64 = 200;

/// What the cache knows about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    /// The value as the group stores it: possibly compressed, always with its codec tag and
    /// checksum. Its stored length is what counts against the byte budget.
    Value(Stored),
    /// A negative entry: the origin said there is no such key. Cached briefly so that repeated
    /// requests for a missing key do not each reach the origin.
    NotFound,
}

/// Weight of an entry from the lengths of its key and its stored payload (the value as its
/// codec left it, without the header); see [`CacheEntry::weight`].
pub fn weight_of(key_len: usize, payload_len: usize) -> u64 {
    allocation_bytes(key_len)
        .saturating_add(allocation_bytes(payload_len))
        .saturating_add(ENTRY_OVERHEAD_BYTES)
}

/// Bytes the host's allocator sets aside for an allocation of `n` bytes, so that the budget
/// sees the rounding a value pays: mimalloc's size class (what `mi_usable_size` reports) up to
/// 512 KiB: one word for the smallest, then 16-byte steps up to 128 bytes, then four classes
/// per doubling (at most 25% over: 1,036 bytes take 1,280). Above 512 KiB mimalloc maps the
/// allocation on its own, resident only where written: `n` in whole 4 KiB pages. 0 for 0: an
/// empty key or payload allocates nothing. `tests/it/entry_weight.rs` checks it against
/// mimalloc.
pub fn allocation_bytes(n: usize) -> u64 {
    const WORD: u64 = 8;
    const LARGE_MAX: u64 = 512 << 10;
    const PAGE: u64 = 4 << 10;
    let n = u64::try_from(n).unwrap_or(u64::MAX);
    if n > LARGE_MAX {
        return n.div_ceil(PAGE).saturating_mul(PAGE);
    }
    let words = n.div_ceil(WORD);
    if words <= 1 {
        return words * WORD;
    }
    if words <= 8 {
        return words.next_multiple_of(2) * WORD;
    }
    // Four classes per doubling: round up to a quarter of the power of two below.
    let step = 1u64 << ((words - 1).ilog2() - 2);
    words.div_ceil(step) * step * WORD
}

/// The store behind a [`Cache`].
type Store = quick_cache::sync::Cache<StoreKey, CacheEntry, Weigher, StoredHash, Listener>;

/// The SipHash keys every [`StoreKey`] is hashed with: random per process, so that which keys
/// collide cannot be chosen from outside.
static KEY_HASHER: LazyLock<RandomState> = LazyLock::new(RandomState::new);

/// A cache key with its hash, computed once when the key is made.
///
/// The store hashes a key to pick its shard and again when its table grows; hashing a `String`
/// there (SipHash over text behind a second pointer) was a visible share of a miss's CPU under
/// moka, which rehashed often. This key hashes as its stored `u64` alone ([`StoredHash`] passes
/// it through), and a request hashes its key once for every tier it reads.
#[derive(Clone, Debug)]
struct StoreKey {
    /// Keyed SipHash of `text` ([`KEY_HASHER`]).
    hash: u64,
    /// The key.
    text: Box<str>,
}

impl StoreKey {
    fn new(text: &str) -> Self {
        KeyRef::new(text).to_key()
    }
}

/// A key to look a [`StoreKey`] up with: its text, borrowed, and its hash; no copy of the text.
#[derive(Clone, Copy, Debug)]
struct KeyRef<'a> {
    /// Keyed SipHash of `text`, as [`StoreKey::new`] computes it.
    hash: u64,
    /// The key.
    text: &'a str,
}

impl<'a> KeyRef<'a> {
    fn new(text: &'a str) -> Self {
        KeyRef {
            hash: KEY_HASHER.hash_one(text),
            text,
        }
    }

    /// The owned key, for an insert.
    fn to_key(self) -> StoreKey {
        StoreKey {
            hash: self.hash,
            text: self.text.into(),
        }
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl quick_cache::Equivalent<StoreKey> for KeyRef<'_> {
    fn equivalent(&self, key: &StoreKey) -> bool {
        self.hash == key.hash && self.text == &*key.text
    }
}

impl PartialEq for StoreKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.text == other.text
    }
}

impl Eq for StoreKey {}

impl Hash for StoreKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// The build-hasher of the store: a [`StoreKey`]'s hash is already keyed SipHash, so it is
/// passed through unchanged.
#[derive(Clone, Copy, Debug, Default)]
struct StoredHash;

impl BuildHasher for StoredHash {
    type Hasher = PassThrough;

    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

/// Returns the last `u64` written. Anything else written (the store hashes only [`StoreKey`]s and
/// [`KeyRef`]s, which write their `u64`, so nothing is) is mixed in rather than ignored, so it
/// could never make every hash equal.
#[derive(Debug)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut state = KEY_HASHER.build_hasher();
        state.write_u64(self.0);
        state.write(bytes);
        self.0 = state.finish();
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A byte-bounded cache of [`CacheEntry`]s with exact, absolute per-entry expiry.
///
/// It exists so that a group's main and hot tiers share one implementation: quick_cache does
/// the bounded, concurrent storage and eviction, this type adds byte weights, absolute expiry
/// against an injected [`Clock`], an eviction count and miss reasons.
///
/// Cloning is cheap and every clone shares the same entries.
#[derive(Clone)]
pub struct Cache {
    /// The entries, weighted in bytes, in `shards` shards.
    store: Arc<Store>,
    /// Where "now" comes from for expiry.
    clock: Arc<dyn Clock>,
    /// The byte budget.
    max_bytes: u64,
    /// The heaviest entry the store admits (a little under one shard's share of the budget);
    /// a heavier one is refused up front.
    largest_entry: u64,
    /// Entries removed for size or expiry, for the evictions metric; shared with the store's
    /// eviction hook ([`Listener`]).
    evictions: Arc<AtomicU64>,
    /// The tier's name ("main", "hot", ...), for logs and metric labels.
    name: Arc<str>,
    /// Why keys left, for miss reasons (`ghosts.rs`); shared with the eviction hook. `None`
    /// for a tier whose misses need no reason (the hot tier).
    ghosts: Option<Arc<Ghosts>>,
}

/// What [`Cache::lookup`] found for a key.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A live entry.
    Fresh(CacheEntry),
    /// An entry past its expiry but within its stale window: answerable, marked stale, while
    /// it is refreshed.
    Stale(CacheEntry),
    /// Nothing answerable, and why.
    Miss(MissReason),
}

impl fmt::Debug for Cache {
    // The entries themselves are never listed: a summary is what a log line wants.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("name", &self.name)
            .field("max_bytes", &self.max_bytes)
            .field("weighted_size", &self.weighted_size())
            .field("entry_count", &self.entry_count())
            .field("evictions", &self.evictions())
            .field("clock", &self.clock)
            .finish()
    }
}

impl Cache {
    /// Starts building a cache that holds at most `max_bytes` bytes of entries (by
    /// [`CacheEntry::weight`]).
    pub fn builder(max_bytes: u64) -> CacheBuilder {
        CacheBuilder {
            max_bytes,
            clock: Arc::new(SystemClock),
            name: "cache".to_owned(),
            ghosts: false,
            largest_entry: 0,
        }
    }

    /// The live entry for `key`, or `None` on a miss. An entry in its stale window is a miss
    /// here (and stays: [`Cache::lookup`] answers it).
    ///
    /// An entry past its expiry and its stale window is a miss, and is removed (counted in
    /// [`Cache::evictions`]).
    ///
    /// # Concurrent calls on the same key
    ///
    /// A `get` racing an [`insert`](Cache::insert) returns either the old or the new entry. The
    /// removal of an expired entry is atomic per key and removes only an entry that is expired,
    /// so a fresh entry inserted meanwhile is kept (this `get` still reports a miss).
    pub fn get(&self, key: &str) -> Option<CacheEntry> {
        match self.lookup_inner(key, false) {
            Lookup::Fresh(entry) => Some(entry),
            _ => None,
        }
    }

    /// The entry for `key`: fresh, stale (past its expiry, within its stale window), or a miss
    /// with its reason (from the ghost table when the tier keeps one, else "never seen").
    ///
    /// # Concurrent calls on the same key
    /// As [`Cache::get`].
    pub fn lookup(&self, key: &str) -> Lookup {
        self.lookup_inner(key, true)
    }

    fn lookup_inner(&self, key: &str, reason: bool) -> Lookup {
        let key = KeyRef::new(key);
        let Some(entry) = self.store.get(&key) else {
            return Lookup::Miss(match (&self.ghosts, reason) {
                (Some(ghosts), true) => ghosts.reason(key.hash),
                _ => MissReason::NeverSeen,
            });
        };
        // An entry without an expiry needs no clock read (a tenth of a hit's cost).
        let Some(expires_at_ms) = entry.expires_at_ms() else {
            return Lookup::Fresh(entry);
        };
        let now_ms = self.clock.now_ms();
        if expires_at_ms > now_ms {
            return Lookup::Fresh(entry);
        }
        if !entry.is_dead_at(now_ms) {
            return Lookup::Stale(entry);
        }
        // Removes only what is still dead: a fresh entry inserted meanwhile stays.
        if self
            .store
            .remove_if(&key, |current| current.is_dead_at(now_ms))
            .is_some()
        {
            self.evictions.fetch_add(1, Ordering::Relaxed);
            if let Some(ghosts) = &self.ghosts {
                ghosts.record(key.hash, entry.expiry_reason());
            }
        }
        Lookup::Miss(entry.expiry_reason())
    }

    /// Stores `entry` under `key`, replacing any previous entry; returns whether it was stored.
    ///
    /// An entry that is already past its expiry and stale window, or whose weight alone exceeds
    /// [`Cache::largest_entry`], is refused: nothing is stored and `false` is returned. A
    /// refused entry still removes the previous entry under `key`, because that one is older
    /// than the refused one and must not be served in its place.
    ///
    /// When the shard is full, storing evicts what the store's policy picks (counted in
    /// [`Cache::evictions`]); the new entry is always kept.
    ///
    /// # Concurrent calls on the same key
    ///
    /// The last `insert` wins; readers see either the old or the new entry, never a mix.
    pub fn insert(&self, key: &str, entry: CacheEntry) -> bool {
        let key = StoreKey::new(key);
        let now_ms = self.clock.now_ms();
        let weight = entry.weight(&key.text);
        if entry.is_dead_at(now_ms) || weight > self.largest_entry {
            tracing::debug!(
                cache = %self.name,
                key = %key.text,
                weight,
                largest_entry = self.largest_entry,
                expires_at_ms = entry.expires_at_ms(),
                now_ms,
                "cache refused an entry that is expired or heavier than the largest it takes",
            );
            self.store.remove(&key);
            return false;
        }
        // The hook is told which key this insert stores, so that the entry it replaces is not
        // counted as an eviction.
        let mut inserting = Some(key.hash);
        self.store.insert_with_lifecycle(key, entry, &mut inserting);
        true
    }

    /// Removes the entry for `key`, if any (not counted as an eviction).
    pub fn remove(&self, key: &str) {
        self.store.remove(&KeyRef::new(key));
    }

    /// Removes every entry (not counted as evictions); with a ghost table, each key's next
    /// miss is counted as flushed.
    pub fn clear(&self) {
        if let Some(ghosts) = &self.ghosts {
            for (key, _) in self.store.iter() {
                ghosts.record(key.hash, MissReason::Flushed);
            }
        }
        self.store.clear();
    }

    /// Removes `key` only if its entry is still `entry` (the same allocation a [`Cache::get`]
    /// returned): a newer entry inserted meanwhile is kept.
    pub fn remove_if_same(&self, key: &str, entry: &CacheEntry) {
        self.store
            .remove_if(&KeyRef::new(key), |current| current.same(entry));
    }

    /// Bytes currently held, by [`CacheEntry::weight`]; exact at every moment.
    pub fn weighted_size(&self) -> u64 {
        self.store.weight()
    }

    /// Every entry held now that is fresh at `now_ms`, with its key, in no particular order;
    /// entries inserted or removed meanwhile may or may not be seen. For a stopping node's
    /// handoff.
    pub fn fresh_entries(&self, now_ms: u64) -> impl Iterator<Item = (String, CacheEntry)> + '_ {
        self.store
            .iter()
            .filter(move |(_, entry)| !entry.is_expired_at(now_ms))
            .map(|(key, entry)| (key.text.to_string(), entry))
    }

    /// Entries currently held (negative entries included).
    pub fn entry_count(&self) -> u64 {
        self.store.len() as u64
    }

    /// The byte budget this cache was built with.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The heaviest entry (by [`CacheEntry::weight`]) this cache stores: a little under the
    /// budget divided by the store's shards.
    pub fn largest_entry(&self) -> u64 {
        self.largest_entry
    }

    /// The tier's name, as given to [`CacheBuilder::name`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many entries have been removed for lack of room or because they expired, since the
    /// cache was built. Explicit removals and replacements are not counted.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

/// Builder for [`Cache`], from [`Cache::builder`]; exists so that optional settings (clock,
/// name) have defaults and tests can override them.
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct CacheBuilder {
    /// The byte budget.
    max_bytes: u64,
    /// Source of "now" for expiry; [`SystemClock`] unless overridden.
    clock: Arc<dyn Clock>,
    /// The tier's name, for logs and metrics; "cache" unless overridden.
    name: String,
    /// Whether to keep a ghost table for miss reasons.
    ghosts: bool,
    /// The heaviest entry the caller will store; bounds the shard count ([`shards_for`]).
    largest_entry: u64,
}

/// The share of a shard's budget quick_cache gives its "hot" (frequently used) entries; the
/// rest holds new ("cold") entries on trial. Its own default, set here because it also caps the
/// heaviest entry a shard admits.
const HOT_ALLOCATION: f64 = 0.97;

/// The least budget per shard: a smaller tier has fewer shards.
pub const MIN_SHARD_BYTES: u64 = 16 << 20;

/// How many shards a tier of `max_bytes` has: a power of two, at most 4 per core (quick_cache's
/// default, so concurrent writers rarely meet on a lock), with at least [`MIN_SHARD_BYTES`]
/// each, and with room in each for two entries of `largest_entry` bytes (an entry heavier than
/// a shard's hot share is refused). At least one.
pub fn shards_for(max_bytes: u64, largest_entry: u64) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as u64;
    let by_size = (max_bytes / MIN_SHARD_BYTES).min(max_bytes / largest_entry.max(1) / 2);
    let wanted = by_size.clamp(1, 4 * cores);
    // The largest power of two not above `wanted`.
    1usize << wanted.ilog2()
}

impl CacheBuilder {
    /// Uses `clock` for expiry instead of the system clock (tests pass a [`ManualClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Names the cache ("main", "hot", ...) for logs and metric labels.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Keeps a ghost table so that [`Cache::lookup`] tells why a key is missing (its size
    /// follows the budget: [`ghost_slots`]).
    pub fn miss_reasons(mut self) -> Self {
        self.ghosts = true;
        self
    }

    /// The heaviest entry (by [`CacheEntry::weight`]) the caller means to store: the store
    /// keeps fewer shards, so that each admits it ([`shards_for`]). Without it, a tier has
    /// as many shards as [`MIN_SHARD_BYTES`] allows.
    pub fn largest_entry(mut self, bytes: u64) -> Self {
        self.largest_entry = bytes;
        self
    }

    /// Builds the cache.
    pub fn build(self) -> Cache {
        let evictions = Arc::new(AtomicU64::new(0));
        let ghosts = self
            .ghosts
            .then(|| Arc::new(Ghosts::new(ghost_slots(self.max_bytes))));
        let shards = shards_for(self.max_bytes, self.largest_entry);
        let shard_bytes = self.max_bytes / shards as u64;
        // It sizes the ghost list (half as many ghosts as entries) by this: entries of a
        // 1 KiB value and a short key.
        let estimated_items = usize::try_from(self.max_bytes / (ENTRY_OVERHEAD_BYTES + 1024))
            .unwrap_or(usize::MAX)
            .max(shards);
        let options = quick_cache::OptionsBuilder::new()
            .shards(shards)
            .weight_capacity(shard_bytes * shards as u64)
            .estimated_items_capacity(estimated_items)
            .hot_allocation(HOT_ALLOCATION)
            .build()
            .unwrap_or_else(|e| unreachable!("every option is set: {e}"));
        let listener = Listener {
            clock: Arc::clone(&self.clock),
            evictions: Arc::clone(&evictions),
            ghosts: ghosts.clone(),
        };
        let store = quick_cache::sync::Cache::with_options(options, Weigher, StoredHash, listener);
        // quick_cache refuses an entry heavier than a shard's hot share (by the same formula);
        // refusing it here first keeps the refusal ours: logged, the older entry dropped, not
        // counted as an eviction. Read back, since quick_cache may merge shards that would
        // hold fewer than 32 entries.
        let capacity = store.shard_capacity();
        let largest_entry =
            ((capacity as f64 * HOT_ALLOCATION) as u64).clamp(capacity.min(1), capacity);
        Cache {
            store: Arc::new(store),
            clock: self.clock,
            max_bytes: self.max_bytes,
            largest_entry,
            evictions,
            name: self.name.into(),
            ghosts,
        }
    }
}

/// Weighs an entry for the store: [`CacheEntry::weight`].
#[derive(Debug, Clone, Copy)]
struct Weigher;

impl quick_cache::Weighter<StoreKey, CacheEntry> for Weigher {
    fn weight(&self, key: &StoreKey, entry: &CacheEntry) -> u64 {
        entry.weight(&key.text)
    }
}

/// The store's eviction hook: counts what it pushes out for room and records why in the
/// ghost table (expired when nothing could answer it any more, else evicted). Explicit
/// removals do not come here; the entry an insert replaces does, and is told apart by the
/// request state: the hash of the key being inserted.
#[derive(Clone)]
struct Listener {
    /// The cache's clock, to tell an expired entry from a live one.
    clock: Arc<dyn Clock>,
    /// The cache's eviction count.
    evictions: Arc<AtomicU64>,
    /// The cache's ghost table, if it keeps one.
    ghosts: Option<Arc<Ghosts>>,
}

impl quick_cache::Lifecycle<StoreKey, CacheEntry> for Listener {
    type RequestState = Option<u64>;

    fn on_evict(&self, inserting: &mut Option<u64>, key: StoreKey, entry: CacheEntry) {
        if *inserting == Some(key.hash) {
            return;
        }
        self.evictions.fetch_add(1, Ordering::Relaxed);
        if let Some(ghosts) = &self.ghosts {
            ghosts.record(key.hash, entry.eviction_reason(self.clock.now_ms()));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A raw value as the group would store it (header + bytes).
    fn raw(bytes: &[u8]) -> Cached {
        Cached::Value(Stored::raw(bytes))
    }

    /// 2026-01-01T00:00:00Z: any fixed start works, a realistic one reads better in failures.
    const START_MS: u64 = 1_767_225_600_000;
    /// An expiry far enough ahead of [`START_MS`] that only the tests' clock moves reach it.
    const TTL_MS: u64 = 3_600_000;

    fn value(bytes: &'static [u8], expires_at_ms: Option<u64>) -> CacheEntry {
        CacheEntry::new(raw(bytes), expires_at_ms, 0)
    }

    fn not_found(expires_at_ms: Option<u64>) -> CacheEntry {
        CacheEntry::new(Cached::NotFound, expires_at_ms, 0)
    }

    fn manual_cache(max_bytes: u64) -> (Cache, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(START_MS));
        let cache = Cache::builder(max_bytes)
            .clock(clock.clone())
            .name("test")
            .build();
        (cache, clock)
    }

    #[test]
    fn stores_and_returns_values_and_negative_entries() {
        let (cache, _clock) = manual_cache(1 << 20);
        assert!(cache.insert("k", value(b"v", None)));
        assert!(cache.insert("missing", not_found(None)));
        assert_eq!(cache.get("k").unwrap().cached(), raw(b"v"));
        assert_eq!(cache.get("missing").unwrap().cached(), Cached::NotFound);
        assert!(cache.get("other").is_none());
    }

    #[test]
    fn weight_is_key_plus_payload_as_allocated_plus_overhead() {
        // A 3-byte key and a 5-byte payload each take a word.
        assert_eq!(
            value(b"12345", None).weight("abc"),
            8 + 8 + ENTRY_OVERHEAD_BYTES
        );
        assert_eq!(not_found(None).weight("abc"), 8 + ENTRY_OVERHEAD_BYTES);
        assert_eq!(not_found(None).weight(""), ENTRY_OVERHEAD_BYTES);
        assert_eq!(weight_of(usize::MAX, usize::MAX), u64::MAX);

        let (cache, _clock) = manual_cache(1 << 20);
        cache.insert("abc", value(b"12345", None));
        assert_eq!(cache.weighted_size(), 8 + 8 + ENTRY_OVERHEAD_BYTES);
    }

    #[test]
    fn allocations_round_to_mimallocs_classes() {
        let cases = [
            (0, 0),
            (1, 8),
            (9, 16),
            (17, 32),
            (64, 64),
            (65, 80),
            (1024, 1024),
            (1025, 1280),
            (1036, 1280),
            (1281, 1536),
            (2049, 2560),
            (64 << 10, 64 << 10),
            ((64 << 10) + 1, (80 << 10)),
            (512 << 10, 512 << 10),
            ((512 << 10) + 1, (516 << 10)),
            (1 << 20, 1 << 20),
        ];
        for (n, want) in cases {
            assert_eq!(allocation_bytes(n), want, "{n} bytes");
        }
        assert_eq!(allocation_bytes(usize::MAX), u64::MAX);
    }

    #[test]
    fn capacity_in_bytes_is_respected() {
        const MAX_BYTES: u64 = 10_000;
        const INSERTED: u64 = 500;
        let (cache, _clock) = manual_cache(MAX_BYTES);
        let payload = raw(&[7u8; 100]);
        for i in 0..INSERTED {
            let entry = CacheEntry::new(payload.clone(), None, 0);
            assert!(cache.insert(&format!("key-{i:04}"), entry));
        }
        assert!(
            cache.weighted_size() <= MAX_BYTES,
            "weighted_size {} > {MAX_BYTES}",
            cache.weighted_size()
        );
        assert!(cache.entry_count() < INSERTED);
        assert!(cache.entry_count() > 0);
        assert_eq!(cache.evictions(), INSERTED - cache.entry_count());
    }

    #[test]
    fn an_entry_heavier_than_the_largest_it_takes_is_refused() {
        let (cache, _clock) = manual_cache(1_000);
        // One shard: the largest entry is its hot share of the whole budget.
        assert_eq!(cache.largest_entry(), 970);
        let too_big = CacheEntry::new(raw(&[0u8; 1_000]), None, 0);
        assert!(!cache.insert("big", too_big));
        assert!(cache.get("big").is_none());
        assert_eq!(cache.weighted_size(), 0);
        assert_eq!(cache.entry_count(), 0);

        // The longest value whose weight is within the largest fits; a byte more does not.
        let sized = |len: usize| CacheEntry::new(raw(&vec![0u8; len]), None, 0);
        let len = (0..1000)
            .take_while(|&len| sized(len).weight("fits") <= 970)
            .last()
            .unwrap();
        assert!(sized(len + 1).weight("fits") > 970);
        assert!(!cache.insert("over", sized(len + 1)));
        assert!(cache.insert("fits", sized(len)));
        assert!(cache.get("fits").is_some());
        assert_eq!(cache.evictions(), 0);
    }

    #[test]
    fn shards_keep_room_for_the_largest_entry_and_a_floor_of_bytes_each() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        assert_eq!(shards_for(1_000, 0), 1);
        assert_eq!(shards_for(MIN_SHARD_BYTES * 2 - 1, 0), 1);
        assert_eq!(shards_for(MIN_SHARD_BYTES * 2, 0), 2.min(4 * cores));
        assert_eq!(shards_for(1 << 40, 0), 1 << (4 * cores).ilog2());
        // Room for two of the largest entry in each shard.
        assert_eq!(shards_for(256 << 20, 64 << 20), 2);
        assert_eq!(shards_for(256 << 20, 200 << 20), 1);
        // A whole tier built so: its largest entry is above what it was told.
        let cache = Cache::builder(256 << 20).largest_entry(64 << 20).build();
        assert!(
            cache.largest_entry() >= 64 << 20,
            "{}",
            cache.largest_entry()
        );
        assert!(cache.largest_entry() < 128 << 20);
    }

    #[test]
    fn a_refused_insert_drops_the_older_entry_for_the_key() {
        let (cache, clock) = manual_cache(1_000);
        assert!(cache.insert("k", value(b"old", None)));
        assert!(!cache.insert("k", value(b"new", Some(clock.now_ms()))));
        assert!(cache.get("k").is_none());

        assert!(cache.insert("k", value(b"old", None)));
        let too_big = CacheEntry::new(raw(&[0u8; 2_000]), None, 0);
        assert!(!cache.insert("k", too_big));
        assert!(cache.get("k").is_none());
    }

    #[test]
    fn entry_expires_exactly_at_its_expiry() {
        let (cache, clock) = manual_cache(1 << 20);
        let expires_at = START_MS + TTL_MS;
        assert!(cache.insert("k", value(b"v", Some(expires_at))));

        clock.set(expires_at - 1);
        assert!(cache.get("k").is_some());
        assert_eq!(cache.evictions(), 0);

        clock.set(expires_at);
        assert!(cache.get("k").is_none());
        assert_eq!(cache.evictions(), 1);

        // It was removed, not just hidden: turning the clock back does not resurrect it.
        clock.set(START_MS);
        assert!(cache.get("k").is_none());
        assert_eq!(cache.entry_count(), 0);
        assert_eq!(cache.weighted_size(), 0);
        assert_eq!(cache.evictions(), 1);
    }

    #[test]
    fn negative_entries_expire_the_same_way() {
        let (cache, clock) = manual_cache(1 << 20);
        let expires_at = START_MS + TTL_MS;
        assert!(cache.insert("missing", not_found(Some(expires_at))));
        clock.set(expires_at - 1);
        assert_eq!(cache.get("missing").unwrap().cached(), Cached::NotFound);
        clock.set(expires_at);
        assert!(cache.get("missing").is_none());
        assert_eq!(cache.evictions(), 1);
    }

    #[test]
    fn no_expiry_never_expires() {
        let (cache, clock) = manual_cache(1 << 20);
        assert!(cache.insert("k", value(b"v", None)));
        assert!(cache.insert("missing", not_found(None)));
        clock.advance(Duration::from_secs(100 * 365 * 24 * 3600));
        assert!(cache.get("k").is_some());
        assert!(cache.get("missing").is_some());
        clock.set(u64::MAX);
        assert!(cache.get("k").is_some());
        assert_eq!(cache.evictions(), 0);
    }

    #[test]
    fn an_already_expired_entry_is_refused() {
        let (cache, clock) = manual_cache(1 << 20);
        assert!(!cache.insert("now", value(b"v", Some(clock.now_ms()))));
        assert!(!cache.insert("past", not_found(Some(clock.now_ms() - 1))));
        assert!(cache.insert("soon", value(b"v", Some(clock.now_ms() + 1))));
        assert_eq!(cache.entry_count(), 1);
    }

    #[test]
    fn replacing_an_entry_takes_the_new_expiry_and_is_not_an_eviction() {
        let (cache, clock) = manual_cache(1 << 20);
        assert!(cache.insert("k", value(b"v1", Some(START_MS + 10))));
        assert!(cache.insert("k", value(b"v2", Some(START_MS + TTL_MS))));
        clock.set(START_MS + 10);
        let entry = cache.get("k").unwrap();
        assert_eq!(entry.cached(), raw(b"v2"));
        assert_eq!(cache.evictions(), 0);
    }

    #[test]
    fn remove_is_not_an_eviction() {
        let (cache, _clock) = manual_cache(1 << 20);
        cache.insert("k", value(b"v", None));
        cache.remove("k");
        assert!(cache.get("k").is_none());
        assert_eq!(cache.entry_count(), 0);
        assert_eq!(cache.evictions(), 0);
    }

    #[test]
    fn clones_share_entries() {
        let (cache, _clock) = manual_cache(1 << 20);
        let clone = cache.clone();
        clone.insert("k", value(b"v", None));
        assert!(cache.get("k").is_some());
        assert_eq!(cache.name(), "test");
        assert_eq!(clone.max_bytes(), 1 << 20);
    }

    #[test]
    fn an_expired_entry_nobody_reads_leaves_for_room() {
        const MAX_BYTES: u64 = 200_000;
        let (cache, clock) = manual_cache(MAX_BYTES);
        // More entries than fit, twice over.
        let n = MAX_BYTES / value(b"v", None).weight("first-0000") + 10;
        // A full cache: what comes in now is on trial (cold) until it is read again.
        for i in 0..n {
            cache.insert(&format!("first-{i:04}"), value(b"v", None));
        }
        let before = cache.evictions();
        assert!(before > 0);
        assert!(cache.insert("old", value(b"v", Some(START_MS + 10))));
        clock.set(START_MS + 10);
        for i in 0..n {
            cache.insert(&format!("new-{i:04}"), value(b"v", None));
        }
        assert!(cache.weighted_size() <= MAX_BYTES);
        assert!(cache.evictions() >= before + n);
        // Gone from the store, not only hidden by the clock.
        clock.set(START_MS);
        assert!(cache.get("old").is_none());
    }

    #[test]
    fn the_eviction_hook_tells_expired_from_evicted_and_skips_replacements() {
        let clock = Arc::new(ManualClock::new(START_MS));
        let ghosts = Arc::new(Ghosts::new(1024));
        let listener = Listener {
            clock: clock.clone(),
            evictions: Arc::default(),
            ghosts: Some(ghosts.clone()),
        };
        let evict = |text: &str, entry: CacheEntry, inserting: Option<u64>| {
            let key = StoreKey::new(text);
            let hash = key.hash;
            quick_cache::Lifecycle::on_evict(&listener, &mut inserting.clone(), key, entry);
            (hash, ghosts.reason(hash))
        };
        let live = value(b"v", Some(START_MS + 10));
        assert_eq!(evict("live", live.clone(), None).1, MissReason::Evicted);
        clock.set(START_MS + 10);
        assert_eq!(evict("dead", live, None).1, MissReason::Expired);
        assert_eq!(
            evict("missing", not_found(Some(START_MS + 10)), None).1,
            MissReason::NegativeExpired
        );
        // Within its stale window an entry is still answerable: evicted, not expired.
        let stale = CacheEntry::new(raw(b"v"), Some(START_MS + 10), 5);
        assert_eq!(evict("stale", stale, None).1, MissReason::Evicted);
        assert_eq!(listener.evictions.load(Ordering::Relaxed), 4);
        // The entry an insert of the same key replaces is not an eviction.
        let replaced = StoreKey::new("replaced").hash;
        assert_eq!(
            evict("replaced", value(b"v", None), Some(replaced)).1,
            MissReason::NeverSeen
        );
        assert_eq!(listener.evictions.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn keys_whose_hashes_collide_stay_apart() {
        // Force a collision: the same stored hash on two different texts.
        let a = StoreKey::new("a");
        let b = StoreKey {
            hash: a.hash,
            text: "b".into(),
        };
        assert_ne!(a, b);
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(START_MS));
        let listener = Listener {
            clock,
            evictions: Arc::default(),
            ghosts: None,
        };
        let store: Store =
            quick_cache::sync::Cache::with(100, 1 << 20, Weigher, StoredHash, listener);
        store.insert(a.clone(), value(b"for a", None));
        store.insert(b.clone(), value(b"for b", None));
        assert_eq!(store.get(&a).unwrap().cached(), raw(b"for a"));
        assert_eq!(store.get(&b).unwrap().cached(), raw(b"for b"));
        // Looked up by reference (what `Cache::get` does), the text still decides.
        let by_ref = |text| KeyRef { hash: a.hash, text };
        assert_eq!(store.get(&by_ref("a")).unwrap().cached(), raw(b"for a"));
        assert_eq!(store.get(&by_ref("b")).unwrap().cached(), raw(b"for b"));
        assert!(store.get(&by_ref("c")).is_none());
        store.remove(&a);
        assert!(store.get(&a).is_none());
        assert_eq!(store.get(&b).unwrap().cached(), raw(b"for b"));
    }

    #[test]
    fn a_key_hashes_as_its_stored_hash_and_other_writes_still_mix() {
        let key = StoreKey::new("some key");
        assert_eq!(StoredHash.hash_one(&key), key.hash);
        assert_eq!(key.hash, StoreKey::new("some key").hash);
        assert_ne!(key.hash, StoreKey::new("some kez").hash);
        // Bytes written to the pass-through hasher are mixed in, never dropped.
        assert_ne!(StoredHash.hash_one("x"), StoredHash.hash_one("y"));
    }

    #[test]
    fn debug_is_a_summary() {
        let (cache, _clock) = manual_cache(1 << 20);
        cache.insert("secret-key", value(b"secret-value", None));
        let debug = format!("{cache:?}");
        assert!(debug.contains("\"test\""));
        assert!(!debug.contains("secret"));
    }
}
