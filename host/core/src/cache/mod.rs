//! The in-memory cache tiers (main and hot): byte-bounded, with per-entry absolute expiry.
//!
//! Storage, weighting and eviction are moka's ([`moka::sync::Cache`]); this module adds what
//! geecache needs on top:
//!
//! - capacity in bytes: an entry weighs its key bytes + value bytes + [`ENTRY_OVERHEAD_BYTES`];
//! - absolute expiry per entry (`expires_at_ms`, milliseconds since the Unix epoch), read from an
//!   injected [`Clock`]. [`Cache::get`] checks it on every read, so expiry is exact at the
//!   millisecond whatever moka's own timer does; moka is also told the remaining time (through
//!   [`moka::Expiry`]) so that expired entries nobody reads are dropped eventually;
//! - negative entries ([`Cached::NotFound`]) so that a missing key cannot hammer the origin;
//! - stale windows: an entry may carry `stale_ms`, how long past its expiry it may still be
//!   answered (marked stale) while it is refreshed; [`Cache::lookup`] tells fresh from stale,
//!   [`Cache::get`] returns fresh entries only;
//! - an eviction counter for metrics, and for the main tier a ghost table (`ghosts.rs`) that
//!   remembers why keys left (evicted, expired, flushed), so a miss is counted by its reason;
//! - keys that carry their hash (`StoreKey`), so that moka's table rehashes read a stored
//!   number instead of hashing every key's text again.
//!
//! Files: this one holds the cache; `clock.rs` the injected clock, `doorkeeper.rs` the
//! doorkeeper that admits hot copies, `ghosts.rs` the table of why keys left.

mod clock;
mod doorkeeper;
mod ghosts;

pub use clock::{Clock, ManualClock, SystemClock};
pub use doorkeeper::Doorkeeper;
use ghosts::Ghosts;
pub use ghosts::{MissReason, ghost_slots};

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use moka::Expiry;

use crate::compression::Stored;
use moka::notification::RemovalCause;
use moka::ops::compute::{CompResult, Op};

/// Bytes charged for every entry on top of its key and value bytes.
///
/// It stands for what an entry costs beyond its payload (moka's node, hash-table slot, access
/// and write deques and timer wheel entry, the `Arc<CacheEntry>`, the `Bytes` header, the key's
/// allocation, the allocator's rounding), so that the byte budget bounds resident memory and a
/// flood of tiny or negative entries is still bounded by it. The figure is what `geecache-perf
/// memory` measures beyond key and stored value, rounded (docs/performance.md).
pub const ENTRY_OVERHEAD_BYTES: u64 = 640;

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

/// One cached entry: the value (or its absence) and when it stops being valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// The value or the negative result.
    pub cached: Cached,
    /// Absolute expiry, in milliseconds since the Unix epoch, as chosen by the loader or the
    /// setter; the entry is a miss from this instant on. `None` never expires (the byte budget
    /// still evicts it).
    pub expires_at_ms: Option<u64>,
    /// How long past `expires_at_ms` the entry may still be answered, marked stale, while it
    /// is refreshed (stale-while-revalidate, stale-if-error); 0: not at all. The cache drops
    /// it at the window's end.
    pub stale_ms: u32,
}

impl CacheEntry {
    /// Whether the entry is expired at `now_ms`; an entry expires at its `expires_at_ms`
    /// exactly, not one millisecond later.
    pub fn is_expired_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// Whether the entry is past its stale window too at `now_ms`: nothing may answer it.
    pub fn is_dead_at(&self, now_ms: u64) -> bool {
        self.dead_at_ms().is_some_and(|at| at <= now_ms)
    }

    /// When the entry stops being answerable at all: its expiry plus its stale window.
    fn dead_at_ms(&self) -> Option<u64> {
        self.expires_at_ms
            .map(|at| at.saturating_add(u64::from(self.stale_ms)))
    }

    /// Why this entry, once expired, is a miss.
    fn expiry_reason(&self) -> MissReason {
        match self.cached {
            Cached::Value(_) => MissReason::Expired,
            Cached::NotFound => MissReason::NegativeExpired,
        }
    }

    /// What the entry counts against the byte budget when stored under `key`: key bytes + value
    /// bytes + [`ENTRY_OVERHEAD_BYTES`]. Exposed so callers can tell in advance whether a value
    /// can fit at all.
    pub fn weight(&self, key: &str) -> u64 {
        let value_len = match &self.cached {
            Cached::Value(stored) => stored.len(),
            Cached::NotFound => 0,
        };
        weight_of(key.len(), value_len)
    }

    /// Time left before the end of the stale window at `now_ms`, for moka's timer; `None`
    /// for "never".
    fn remaining_at(&self, now_ms: u64) -> Option<Duration> {
        self.dead_at_ms()
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms)))
    }
}

/// Weight of an entry from its key and value lengths; see [`CacheEntry::weight`].
fn weight_of(key_len: usize, value_len: usize) -> u64 {
    let len = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    len(key_len)
        .saturating_add(len(value_len))
        .saturating_add(ENTRY_OVERHEAD_BYTES)
}

/// Moka's weigher takes a `u32`; an entry heavier than 4 GiB is counted as 4 GiB.
fn moka_weight(weight: u64) -> u32 {
    u32::try_from(weight).unwrap_or(u32::MAX)
}

/// The moka store behind a [`Cache`].
type Store = moka::sync::Cache<StoreKey, Arc<CacheEntry>, StoredHash>;

/// The SipHash keys every [`StoreKey`] is hashed with: random per process, so that which keys
/// collide cannot be chosen from outside.
static KEY_HASHER: LazyLock<RandomState> = LazyLock::new(RandomState::new);

/// A cache key with its hash, computed once when the key is made.
///
/// Moka's table rehashes every key it holds each time its removed entries (tombstones) reach a
/// tenth of its slots, which for a full cache under unique keys is every few inserts per
/// entry; hashing a `String` there (SipHash over text behind a second pointer) was a visible
/// share of a miss's CPU. This key hashes as its stored `u64` alone ([`StoredHash`] passes it
/// through).
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

    /// The owned key, for an insert or moka's entry API.
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

impl moka::Equivalent<StoreKey> for KeyRef<'_> {
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

/// The build-hasher of the moka store: a [`StoreKey`]'s hash is already keyed SipHash, so it is
/// passed through unchanged.
#[derive(Clone, Copy, Debug, Default)]
struct StoredHash;

impl BuildHasher for StoredHash {
    type Hasher = PassThrough;

    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

/// Returns the last `u64` written. Anything else written (moka hashes only [`StoreKey`]s and
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
/// It exists so that a group's main and hot tiers share one implementation: moka does the
/// bounded, concurrent storage and eviction (TinyLFU admission, LRU eviction), this type adds byte
/// weights, absolute expiry against an injected [`Clock`] and an eviction count.
///
/// Cloning is cheap and every clone shares the same entries.
#[derive(Clone)]
pub struct Cache {
    /// The entries, weighted in bytes, with moka's timer fed by [`ClockExpiry`].
    store: Store,
    /// Where "now" comes from for expiry; the same clock feeds moka's timer.
    clock: Arc<dyn Clock>,
    /// The byte budget, kept here to refuse an entry heavier than the whole budget up front.
    max_bytes: u64,
    /// Entries removed for size or expiry, for the evictions metric; shared with moka's
    /// eviction listener.
    evictions: Arc<AtomicU64>,
    /// The tier's name ("main", "hot", ...), for logs and metric labels.
    name: Arc<str>,
    /// Why keys left, for miss reasons (`ghosts.rs`); shared with moka's eviction listener.
    /// `None` for a tier whose misses need no reason (the hot tier).
    ghosts: Option<Arc<Ghosts>>,
}

/// What [`Cache::lookup`] found for a key.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A live entry.
    Fresh(Arc<CacheEntry>),
    /// An entry past its expiry but within its stale window: answerable, marked stale, while
    /// it is refreshed.
    Stale(Arc<CacheEntry>),
    /// Nothing answerable, and why.
    Miss(MissReason),
}

impl fmt::Debug for Cache {
    // Moka's own `Debug` lists every entry; a summary is what a log line wants.
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
    pub fn get(&self, key: &str) -> Option<Arc<CacheEntry>> {
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
        let Some(expires_at_ms) = entry.expires_at_ms else {
            return Lookup::Fresh(entry);
        };
        let now_ms = self.clock.now_ms();
        if expires_at_ms > now_ms {
            return Lookup::Fresh(entry);
        }
        if !entry.is_dead_at(now_ms) {
            return Lookup::Stale(entry);
        }
        let outcome = self
            .store
            .entry(key.to_key())
            .and_compute_with(|current| match current {
                Some(current) if current.value().is_dead_at(now_ms) => Op::Remove,
                _ => Op::Nop,
            });
        // Moka reports this removal as explicit, so it is counted here rather than by the
        // eviction listener.
        if matches!(outcome, CompResult::Removed(_)) {
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
    /// [`Cache::max_bytes`], is refused: nothing is stored and `false` is returned. A refused
    /// entry still removes the previous entry under `key`, because that one is older than the
    /// refused one and must not be served in its place.
    ///
    /// `true` means the entry was handed to moka; when the cache is full, moka may still evict
    /// it (or decline to admit it, if it is less popular than what it would displace) at its
    /// next housekeeping, which [`Cache::evictions`] counts.
    ///
    /// # Concurrent calls on the same key
    ///
    /// The last `insert` wins; readers see either the old or the new entry, never a mix.
    pub fn insert(&self, key: &str, entry: CacheEntry) -> bool {
        let key = StoreKey::new(key);
        let now_ms = self.clock.now_ms();
        let weight = entry.weight(&key.text);
        if entry.is_dead_at(now_ms) || weight > self.max_bytes {
            tracing::debug!(
                cache = %self.name,
                key = %key.text,
                weight,
                max_bytes = self.max_bytes,
                expires_at_ms = entry.expires_at_ms,
                now_ms,
                "cache refused an entry that is expired or heavier than the whole budget",
            );
            self.store.invalidate(&key);
            return false;
        }
        self.store.insert(key, Arc::new(entry));
        true
    }

    /// Removes the entry for `key`, if any (not counted as an eviction).
    pub fn remove(&self, key: &str) {
        self.store.invalidate(&KeyRef::new(key));
    }

    /// Removes every entry (not counted as evictions); with a ghost table, each key's next
    /// miss is counted as flushed.
    pub fn clear(&self) {
        if let Some(ghosts) = &self.ghosts {
            for (key, _) in self.store.iter() {
                ghosts.record(key.hash, MissReason::Flushed);
            }
        }
        self.store.invalidate_all();
    }

    /// Removes `key` only if its entry is still `entry` (the same allocation a [`Cache::get`]
    /// returned): a newer entry inserted meanwhile is kept.
    pub fn remove_if_same(&self, key: &str, entry: &Arc<CacheEntry>) {
        self.store
            .entry(StoreKey::new(key))
            .and_compute_with(|current| match current {
                Some(current) if Arc::ptr_eq(current.value(), entry) => Op::Remove,
                _ => Op::Nop,
            });
    }

    /// Bytes currently held, by [`CacheEntry::weight`].
    ///
    /// Moka updates it during housekeeping; call [`Cache::run_pending_tasks`] first for an
    /// exact figure.
    pub fn weighted_size(&self) -> u64 {
        self.store.weighted_size()
    }

    /// Every entry held now that is fresh at `now_ms`, with its key, in no particular order;
    /// entries inserted or removed meanwhile may or may not be seen. For a stopping node's
    /// handoff.
    pub fn fresh_entries(
        &self,
        now_ms: u64,
    ) -> impl Iterator<Item = (String, Arc<CacheEntry>)> + '_ {
        self.store
            .iter()
            .filter(move |(_, entry)| !entry.is_expired_at(now_ms))
            .map(|(key, entry)| (key.text.to_string(), entry))
    }

    /// Entries currently held (negative entries included); exact after
    /// [`Cache::run_pending_tasks`].
    pub fn entry_count(&self) -> u64 {
        self.store.entry_count()
    }

    /// The byte budget this cache was built with.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The tier's name, as given to [`CacheBuilder::name`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs moka's pending housekeeping now (applying evictions, expiries and size accounting),
    /// so that tests and stats read exact numbers. Moka also does this by itself, amortised over
    /// reads and writes.
    pub fn run_pending_tasks(&self) {
        self.store.run_pending_tasks();
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

    /// Builds the cache.
    pub fn build(self) -> Cache {
        let evictions = Arc::new(AtomicU64::new(0));
        let listener_evictions = Arc::clone(&evictions);
        let ghosts = self
            .ghosts
            .then(|| Arc::new(Ghosts::new(ghost_slots(self.max_bytes))));
        let listener_ghosts = ghosts.clone();
        let store = moka::sync::Cache::builder()
            .name(&self.name)
            .max_capacity(self.max_bytes)
            .weigher(|key: &StoreKey, entry: &Arc<CacheEntry>| moka_weight(entry.weight(&key.text)))
            .expire_after(ClockExpiry {
                clock: Arc::clone(&self.clock),
            })
            .eviction_listener(move |key, entry: Arc<CacheEntry>, cause: RemovalCause| {
                if cause.was_evicted() {
                    listener_evictions.fetch_add(1, Ordering::Relaxed);
                }
                let reason = match cause {
                    RemovalCause::Size => MissReason::Evicted,
                    RemovalCause::Expired => entry.expiry_reason(),
                    RemovalCause::Explicit | RemovalCause::Replaced => return,
                };
                if let Some(ghosts) = &listener_ghosts {
                    ghosts.record(key.hash, reason);
                }
            })
            .build_with_hasher(StoredHash);
        Cache {
            store,
            clock: self.clock,
            max_bytes: self.max_bytes,
            evictions,
            name: self.name.into(),
            ghosts,
        }
    }
}

/// Tells moka how long each entry has left, read from the injected clock, so that moka drops
/// expired entries nobody reads. Correctness does not depend on it: [`Cache::get`] checks expiry
/// itself.
#[derive(Debug)]
struct ClockExpiry {
    /// The cache's clock.
    clock: Arc<dyn Clock>,
}

impl Expiry<StoreKey, Arc<CacheEntry>> for ClockExpiry {
    fn expire_after_create(
        &self,
        _key: &StoreKey,
        entry: &Arc<CacheEntry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        entry.remaining_at(self.clock.now_ms())
    }

    fn expire_after_update(
        &self,
        _key: &StoreKey,
        entry: &Arc<CacheEntry>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        // The new entry carries its own absolute expiry; the old one's is irrelevant.
        entry.remaining_at(self.clock.now_ms())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::compression::HEADER_BYTES;

    /// A raw value as the group would store it (header + bytes).
    fn raw(bytes: &[u8]) -> Cached {
        Cached::Value(Stored::raw(bytes))
    }

    /// 2026-01-01T00:00:00Z: any fixed start works, a realistic one reads better in failures.
    const START_MS: u64 = 1_767_225_600_000;
    /// Long enough that moka's real-time timer never fires during a test, so that what the
    /// tests observe is this module's own expiry check.
    const TTL_MS: u64 = 3_600_000;

    fn value(bytes: &'static [u8], expires_at_ms: Option<u64>) -> CacheEntry {
        CacheEntry {
            cached: raw(bytes),
            expires_at_ms,
            stale_ms: 0,
        }
    }

    fn not_found(expires_at_ms: Option<u64>) -> CacheEntry {
        CacheEntry {
            cached: Cached::NotFound,
            expires_at_ms,
            stale_ms: 0,
        }
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
        assert_eq!(cache.get("k").unwrap().cached, raw(b"v"));
        assert_eq!(cache.get("missing").unwrap().cached, Cached::NotFound);
        assert!(cache.get("other").is_none());
    }

    #[test]
    fn weight_is_key_plus_value_plus_overhead() {
        assert_eq!(
            value(b"12345", None).weight("abc"),
            3 + 5 + HEADER_BYTES as u64 + ENTRY_OVERHEAD_BYTES
        );
        assert_eq!(not_found(None).weight("abc"), 3 + ENTRY_OVERHEAD_BYTES);
        assert_eq!(weight_of(usize::MAX, usize::MAX), u64::MAX);
        assert_eq!(moka_weight(100), 100);
        assert_eq!(moka_weight(u64::from(u32::MAX) + 1), u32::MAX);

        let (cache, _clock) = manual_cache(1 << 20);
        cache.insert("abc", value(b"12345", None));
        cache.run_pending_tasks();
        assert_eq!(
            cache.weighted_size(),
            3 + 5 + HEADER_BYTES as u64 + ENTRY_OVERHEAD_BYTES
        );
    }

    #[test]
    fn capacity_in_bytes_is_respected() {
        const MAX_BYTES: u64 = 10_000;
        const INSERTED: u64 = 500;
        let (cache, _clock) = manual_cache(MAX_BYTES);
        let payload = raw(&[7u8; 100]);
        for i in 0..INSERTED {
            let entry = CacheEntry {
                cached: payload.clone(),
                expires_at_ms: None,
                stale_ms: 0,
            };
            assert!(cache.insert(&format!("key-{i:04}"), entry));
        }
        cache.run_pending_tasks();
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
    fn an_entry_heavier_than_the_whole_budget_is_refused() {
        let (cache, _clock) = manual_cache(1_000);
        let too_big = CacheEntry {
            cached: raw(&[0u8; 1_000]),
            expires_at_ms: None,
            stale_ms: 0,
        };
        assert!(!cache.insert("big", too_big));
        assert!(cache.get("big").is_none());
        cache.run_pending_tasks();
        assert_eq!(cache.weighted_size(), 0);
        assert_eq!(cache.entry_count(), 0);

        // Exactly the budget fits.
        let len =
            usize::try_from(1_000 - ENTRY_OVERHEAD_BYTES).unwrap() - "fits".len() - HEADER_BYTES;
        let fits = CacheEntry {
            cached: raw(&vec![0u8; len]),
            expires_at_ms: None,
            stale_ms: 0,
        };
        assert_eq!(fits.weight("fits"), 1_000);
        assert!(cache.insert("fits", fits));
        assert!(cache.get("fits").is_some());
    }

    #[test]
    fn a_refused_insert_drops_the_older_entry_for_the_key() {
        let (cache, clock) = manual_cache(1_000);
        assert!(cache.insert("k", value(b"old", None)));
        assert!(!cache.insert("k", value(b"new", Some(clock.now_ms()))));
        assert!(cache.get("k").is_none());

        assert!(cache.insert("k", value(b"old", None)));
        let too_big = CacheEntry {
            cached: raw(&[0u8; 2_000]),
            expires_at_ms: None,
            stale_ms: 0,
        };
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
        cache.run_pending_tasks();
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
        assert_eq!(cache.get("missing").unwrap().cached, Cached::NotFound);
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
        cache.run_pending_tasks();
        assert_eq!(cache.entry_count(), 1);
    }

    #[test]
    fn replacing_an_entry_takes_the_new_expiry_and_is_not_an_eviction() {
        let (cache, clock) = manual_cache(1 << 20);
        assert!(cache.insert("k", value(b"v1", Some(START_MS + 10))));
        assert!(cache.insert("k", value(b"v2", Some(START_MS + TTL_MS))));
        clock.set(START_MS + 10);
        let entry = cache.get("k").unwrap();
        assert_eq!(entry.cached, raw(b"v2"));
        cache.run_pending_tasks();
        assert_eq!(cache.evictions(), 0);
    }

    #[test]
    fn remove_is_not_an_eviction() {
        let (cache, _clock) = manual_cache(1 << 20);
        cache.insert("k", value(b"v", None));
        cache.remove("k");
        assert!(cache.get("k").is_none());
        cache.run_pending_tasks();
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
    fn moka_is_told_the_remaining_time_from_the_injected_clock() {
        let clock = Arc::new(ManualClock::new(START_MS));
        let expiry = ClockExpiry {
            clock: clock.clone(),
        };
        let key = StoreKey::new("k");
        let entry = Arc::new(value(b"v", Some(START_MS + 1_500)));
        let now = Instant::now();
        assert_eq!(
            expiry.expire_after_create(&key, &entry, now),
            Some(Duration::from_millis(1_500))
        );
        clock.advance(Duration::from_millis(500));
        assert_eq!(
            expiry.expire_after_update(&key, &entry, now, Some(Duration::ZERO)),
            Some(Duration::from_millis(1_000))
        );
        clock.set(START_MS + 9_999);
        assert_eq!(
            expiry.expire_after_create(&key, &entry, now),
            Some(Duration::ZERO)
        );
        let forever = Arc::new(value(b"v", None));
        assert_eq!(expiry.expire_after_create(&key, &forever, now), None);
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
        let store: Store = moka::sync::Cache::builder()
            .max_capacity(1_000)
            .build_with_hasher(StoredHash);
        store.insert(a.clone(), Arc::new(value(b"for a", None)));
        store.insert(b.clone(), Arc::new(value(b"for b", None)));
        assert_eq!(store.get(&a).unwrap().cached, raw(b"for a"));
        assert_eq!(store.get(&b).unwrap().cached, raw(b"for b"));
        // Looked up by reference (what `Cache::get` does), the text still decides.
        let by_ref = |text| KeyRef { hash: a.hash, text };
        assert_eq!(store.get(&by_ref("a")).unwrap().cached, raw(b"for a"));
        assert_eq!(store.get(&by_ref("b")).unwrap().cached, raw(b"for b"));
        assert!(store.get(&by_ref("c")).is_none());
        store.invalidate(&a);
        assert!(store.get(&a).is_none());
        assert_eq!(store.get(&b).unwrap().cached, raw(b"for b"));
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
