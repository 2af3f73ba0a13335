//! Groups: named cache namespaces, each with its own getter, byte budget, expiry policy,
//! compression and optional storage tier.
//!
//! `Group::get` order: main cache → hot cache → singleflight → owner. When a [`PeerPicker`]
//! names another node as the key's owner, the value is fetched from it (stored bytes and codec,
//! decoded and checked here) and mirrored in the small hot cache; when this node owns the key,
//! the [`Storage`] tier is asked next, then the local [`Getter`] loads it into the main cache
//! (and the storage tier, in the background, in order with the key's other writes: `tier.rs`).
//! A dead or slow owner is not an error: the node loads the key itself and keeps it as a hot
//! copy. "No such key" is cached for the short negative TTL so a missing key cannot hammer the
//! origin.
//!
//! `set` and `remove` go to the owner, which changes memory and, with a storage tier, answers
//! only once the backend has done the write (bounded by the load timeout; a failure is a 503
//! and a failed set's value is taken out of memory again), then tells every other node to drop
//! its copies. Only a getter load's write-through stays in the background (best effort).
//!
//! Write generations (per key shard, bumped by every set, remove and invalidation) keep reads
//! consistent with writes: a load that overlaps a write answers its callers but caches
//! nothing, so it cannot put an older value back; and a read joins only a load started at the
//! current generation, so a read that begins after a write finished never gets a value loaded
//! before it (read-your-writes on one node).
//!
//! Values are kept encoded ([`crate::compression::Stored`]): the byte budgets count stored
//! (compressed) bytes, peers receive the stored bytes as they are, and every decode is checked,
//! so a corrupt or mis-tagged value is dropped and reloaded, never served.
//!
//! The group talks only to traits ([`Getter`], [`Storage`], [`PeerPicker`], [`RemotePeer`],
//! [`crate::compression::Compressor`]), never to wasmtime or HTTP, so native and wasm/HTTP parts
//! are interchangeable.

mod stats;
mod tier;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tracing::Instrument as _;

use crate::cache::{Cache, CacheEntry, Cached, Clock, Doorkeeper, SystemClock};
use crate::compression::{
    CodecError, CodecSpec, Codecs, DEFAULT_MIN_BYTES, Encoding, Stored, Verify, builtin,
};
use crate::error::{Error, Result};
use crate::singleflight::Singleflight;

pub use stats::{Counters, GroupSnapshot, GroupStats};
use stats::{add, bump};
pub use tier::Drained;
use tier::StorageTier;

/// What a getter found for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// The key exists.
    Found {
        /// The value's bytes.
        value: Bytes,
        /// Absolute expiry (ms since the Unix epoch) chosen by the source, if any.
        expires_at_ms: Option<u64>,
    },
    /// The key does not exist in the source. Not an error.
    NotFound,
}

/// How a group loads a key it does not hold: the extension point for the source of truth.
pub trait Getter: Send + Sync + fmt::Debug + 'static {
    /// The getter's name, for stats and logs.
    fn name(&self) -> &str;

    /// Loads `key` of `group` from the source.
    ///
    /// # Errors
    /// Any failure of the source or of the getter itself; "no such key" is `Ok(Loaded::NotFound)`.
    fn get<'a>(&'a self, group: &'a str, key: &'a str) -> BoxFuture<'a, Result<Loaded>>;
}

/// A value as it travels between nodes and to a storage backend: the stored bytes (envelope
/// header + codec payload, see [`crate::compression`]), their codec tag, their absolute expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    /// The stored bytes, exactly as the owner holds them.
    pub value: Bytes,
    /// Codec tag of `value`.
    pub codec: String,
    /// Absolute expiry in ms since the Unix epoch, if any.
    pub expires_at_ms: Option<u64>,
}

/// Another node of the cluster, as the group needs it.
pub trait RemotePeer: Send + Sync + fmt::Debug + 'static {
    /// The node's ring name (its advertised address).
    fn id(&self) -> &str;
    /// Asks the owner for `key`; `Ok(None)` means it has no such key.
    fn get<'a>(&'a self, group: &'a str, key: &'a str) -> BoxFuture<'a, Result<Option<PeerEntry>>>;
    /// Stores `entry` at the owner.
    fn set<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        entry: PeerEntry,
    ) -> BoxFuture<'a, Result<()>>;
    /// Removes `key` at the owner (which then invalidates every node's copies).
    fn delete<'a>(&'a self, group: &'a str, key: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Tells the node to drop its copies of `keys`.
    fn invalidate<'a>(&'a self, group: &'a str, keys: &'a [String]) -> BoxFuture<'a, Result<()>>;
    /// Asks the owner for several keys in one request: one answer per key, in order. The
    /// default asks for them one by one.
    fn batch_get<'a>(
        &'a self,
        group: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<(String, OwnerItem)>>> {
        Box::pin(async move {
            let mut items = Vec::with_capacity(keys.len());
            for key in keys {
                let item = match self.get(group, key).await {
                    Ok(entry) => OwnerItem::Answered(entry),
                    Err(e) => OwnerItem::Failed(e.to_string()),
                };
                items.push((key.clone(), item));
            }
            Ok(items)
        })
    }
}

/// What an owner's batch answer says about one key.
#[derive(Debug, Clone)]
pub enum OwnerItem {
    /// The owner's entry, or `None`: it has no such key.
    Answered(Option<PeerEntry>),
    /// The owner failed to load it (the key is loaded locally, as after a failed single get).
    Failed(String),
    /// The owner did not get to it (its batch budget was spent): ask again with a single get.
    Skipped,
}

/// A key's answer from its owner, fetched ahead of its get by [`Group::owner_answers`].
#[derive(Debug, Clone)]
pub struct OwnerAnswer {
    /// The owner's ring name.
    peer: String,
    /// What it answered for the key, or why the request failed.
    item: std::result::Result<Option<PeerEntry>, String>,
}

/// A tier below memory where a group keeps the entries it owns (a disk, a remote store): the
/// extension point for storage backends.
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// The backend's name, for stats and logs.
    fn name(&self) -> &str;
    /// The entry stored under `key` of `group`, if any (expired entries may be returned; the
    /// group checks).
    fn get<'a>(&'a self, group: &'a str, key: &'a str) -> BoxFuture<'a, Result<Option<PeerEntry>>>;
    /// Stores `entry` under `key` of `group`, replacing any previous one.
    fn put<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        entry: PeerEntry,
    ) -> BoxFuture<'a, Result<()>>;
    /// Removes `key` of `group`; removing a missing key is not an error.
    fn delete<'a>(&'a self, group: &'a str, key: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Removes every entry of `group` (see [`Group::flush`]).
    fn clear<'a>(&'a self, group: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Why this backend cannot [`clear`](Storage::clear) at all (e.g. a plugin built without
    /// `storage-clear`); `None` when it can.
    fn cannot_clear(&self) -> Option<String> {
        None
    }
}

/// Which node owns a key: the seam between a group and the cluster (ring + peer clients).
pub trait PeerPicker: Send + Sync + fmt::Debug + 'static {
    /// The remote owner of `key`, or `None` when this node owns it (or runs alone).
    fn pick(&self, key: &str) -> Option<Arc<dyn RemotePeer>>;
    /// Every other node, for invalidation after a set or remove.
    fn others(&self) -> Vec<Arc<dyn RemotePeer>>;
}

/// Per-group settings; see `geecache-host --help` and the README for defaults.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// Byte budget of the main cache (keys + stored values + per-entry overhead).
    pub cache_bytes: u64,
    /// Byte budget of the hot cache, which mirrors values owned by other nodes.
    pub hot_cache_bytes: u64,
    /// Longest a hot copy is kept, whatever the value's own expiry: bounds staleness should an
    /// invalidation be lost.
    pub hot_ttl: Duration,
    /// Time-to-live of values whose getter gave no expiry; `None` keeps them until evicted.
    pub ttl: Option<Duration>,
    /// How long "no such key" is remembered; zero disables negative caching.
    pub negative_ttl: Duration,
    /// Longest key accepted, in bytes.
    pub max_key_bytes: usize,
    /// Largest value accepted from a getter or a setter, in bytes (before compression).
    pub max_value_bytes: usize,
    /// Longest a load may take before the request fails with 504.
    pub load_timeout: Duration,
    /// Longest to wait for the owner before loading locally instead.
    pub peer_timeout: Duration,
    /// The codec (and level) values are stored with.
    pub compression: CodecSpec,
    /// Values shorter than this are stored raw: they rarely shrink enough to pay for decoding
    /// them on every hit.
    pub compress_min_bytes: usize,
    /// Bytes (keys and values) the storage tier's queued writes may hold: bounds what writes
    /// waiting for a slow backend keep in memory. Past it, background writes are dropped and
    /// clients' writes wait (within the request timeout).
    pub storage_queue_bytes: usize,
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions {
            cache_bytes: 64 << 20,
            hot_cache_bytes: 8 << 20,
            hot_ttl: Duration::from_secs(60),
            ttl: None,
            negative_ttl: Duration::from_secs(5),
            max_key_bytes: 1024,
            max_value_bytes: 8 << 20,
            load_timeout: Duration::from_secs(5),
            peer_timeout: Duration::from_secs(1),
            compression: CodecSpec::default(),
            compress_min_bytes: DEFAULT_MIN_BYTES,
            storage_queue_bytes: tier::DEFAULT_QUEUE_BYTES,
        }
    }
}

/// Where an answer came from, so the singleflight leader knows which cache to fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    /// This node owns the key: the main cache.
    Main,
    /// A copy of another node's key: the hot cache.
    Hot,
}

impl Tier {
    /// The tier's name in spans and metric labels.
    fn label(self) -> &'static str {
        match self {
            Tier::Main => "main",
            Tier::Hot => "hot",
        }
    }
}

/// A value as the HTTP API sends it: the plain value, or a stored payload sent as it is because
/// the client accepts its encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The response body.
    pub body: Bytes,
    /// The body's `Content-Encoding` (`gzip` or `zstd`), or `None` for the plain value.
    pub content_encoding: Option<&'static str>,
}

/// The codecs whose payload is a standard HTTP content coding, so a client that accepts it can
/// take the stored payload as it is.
const CONTENT_CODINGS: [&str; 2] = ["gzip", "zstd"];

/// The stored payload of `entry` as it is, when it is a value stored in a content coding that
/// the client accepts (`accepted`).
fn encoded_reply(entry: &CacheEntry, accepted: &[&str]) -> Option<Reply> {
    if accepted.is_empty() {
        return None;
    }
    let Cached::Value(stored) = &entry.cached else {
        return None;
    };
    let coding = CONTENT_CODINGS
        .into_iter()
        .find(|c| *c == stored.codec().name() && accepted.contains(c))?;
    Some(Reply {
        body: stored.payload(),
        content_encoding: Some(coding),
    })
}

/// What a cache hit answers.
enum Answer {
    /// The stored payload as it is, in a content coding the client accepts.
    Encoded(Reply),
    /// The plain value with its expiry, or a remembered "no such key".
    Plain(Found),
}

/// What a client load produced: the plain value with its expiry, or "no such key".
type Found = Option<(Bytes, Option<u64>)>;

/// What an owner load produced: the stored value with its expiry, or "no such key".
type FoundStored = Option<(Stored, Option<u64>)>;

/// A value loaded at this node: plain for the caller, stored for the caches and peers.
struct Value {
    /// The value as the getter returned it.
    plain: Bytes,
    /// The value as this group stores it.
    stored: Stored,
    /// Absolute expiry, if any.
    expires_at_ms: Option<u64>,
}

/// Everything a load needs, shared with in-flight loads (which outlive a cancelled caller).
struct Core {
    /// The group's name, part of every API path.
    name: String,
    /// Loads keys this node owns.
    getter: Arc<dyn Getter>,
    /// Keeps the entries this node owns beyond memory, if configured.
    storage: Option<StorageTier>,
    /// Values (and remembered "no such key") this node owns.
    main: Cache,
    /// Copies of values other nodes own.
    hot: Cache,
    /// Admits a copy to `hot` the second time its key is fetched from the owner.
    hot_door: Doorkeeper,
    /// Source of "now" for expiry, injected for tests.
    clock: Arc<dyn Clock>,
    /// Limits and policies.
    options: GroupOptions,
    /// Every codec the node knows, to decode values from peers and storage.
    codecs: Codecs,
    /// How this group encodes the values it stores.
    encoding: Encoding,
    /// Counters for stats (shared with the storage tier's writers).
    stats: Arc<GroupStats>,
    /// Write generations by key shard: bumped by every set, remove and invalidation (under the
    /// shard's lock, for the whole write), read by a load before it starts and again, under
    /// the same lock, when it caches; so a load that raced a write does not put the older value
    /// back, in memory or in storage.
    generations: Box<[Mutex<u64>]>,
    /// The cluster, or `None` for a single node.
    peers: Option<Arc<dyn PeerPicker>>,
}

/// A named cache namespace. Cheap to share (`Arc<Group>`); built by [`Group::builder`].
pub struct Group {
    /// State shared with in-flight loads.
    core: Arc<Core>,
    /// Collapses concurrent client misses of one key into one load.
    flights: Singleflight<Found, Error>,
    /// Collapses concurrent owner loads (requests from peers). Separate from `flights` so that
    /// two nodes whose rings briefly disagree cannot wait on each other.
    owner_flights: Singleflight<FoundStored, Error>,
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("name", &self.core.name)
            .field("getter", &self.core.getter.name())
            .field("storage", &self.core.storage)
            .field("options", &self.core.options)
            .finish_non_exhaustive()
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The singleflight key of a load of `key` started at write `generation`: a caller joins only
/// a load started since the last write to the key's shard, so a read that begins after a set
/// or remove finished never receives what a load started before it found (read-your-writes).
fn flight_key(generation: u64, key: &str) -> String {
    format!("{generation}:{key}")
}

/// `stored` with its expiry, as the storage tier and peers take it.
fn peer_entry(stored: &Stored, expires_at_ms: Option<u64>) -> PeerEntry {
    PeerEntry {
        value: stored.bytes().clone(),
        codec: stored.codec().name().to_owned(),
        expires_at_ms,
    }
}

/// Shards of [`Core::generations`]: enough that unrelated writes rarely stop a load from caching.
const GENERATION_SHARDS: usize = 256;

fn len64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// What the built-in codecs count a decode of `stored` as when they pick its lane: its
/// payload times four, the output they plan for (never less than the work).
fn decoding_len(stored: &Stored) -> usize {
    stored.len().saturating_mul(4)
}

impl Core {
    /// Decodes a cached entry. A value that does not decode is dropped from `tier` (unless a
    /// newer entry replaced it meanwhile), counted and logged, and `Ok(None)` is returned so
    /// that the caller reloads it.
    ///
    /// # Errors
    /// A codec failure that is not corruption (a compressor plugin trapped, timed out or had no
    /// slot): the value is fine, so it stays cached and this request fails.
    async fn open(&self, tier: Tier, key: &str, entry: &Arc<CacheEntry>) -> Result<Option<Found>> {
        let stored = match &entry.cached {
            Cached::NotFound => return Ok(Some(None)),
            Cached::Value(stored) => stored,
        };
        let decoded = self
            .coded(
                decoding_len(stored),
                stored.decode(self.options.max_value_bytes, Verify::Decoded),
            )
            .await?;
        match decoded {
            Ok(value) => Ok(Some(Some((value, entry.expires_at_ms)))),
            Err(e @ CodecError::Corrupt { .. }) => {
                bump(&self.stats.corrupt_values);
                tracing::error!(group = %self.name, ?tier, error = %e, "cached value does not decode; dropped and reloaded");
                self.cache(tier).remove_if_same(key, entry);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn cache(&self, tier: Tier) -> &Cache {
        match tier {
            Tier::Main => &self.main,
            Tier::Hot => &self.hot,
        }
    }

    /// Counts a hit in `tier`, and what kind of hit it was.
    fn count_hit(&self, tier: Tier, answer: &Answer) {
        bump(match tier {
            Tier::Main => &self.stats.hits,
            Tier::Hot => &self.stats.hot_hits,
        });
        match answer {
            Answer::Encoded(_) => bump(&self.stats.encoded_replies),
            Answer::Plain(None) => bump(&self.stats.negative_hits),
            Answer::Plain(Some(_)) => {}
        }
    }

    /// Answers from the main then the hot cache, with one cache read per tier; counts nothing
    /// and says which tier answered. A value stored in a content coding that `accepted` lists
    /// is answered with its stored payload as it is: values in memory were checked when they
    /// entered it, so the payload goes out without a decode. Anything else is decoded.
    ///
    /// # Errors
    /// See [`Core::open`].
    async fn lookup(&self, key: &str, accepted: &[&str]) -> Result<Option<(Tier, Answer)>> {
        for tier in [Tier::Main, Tier::Hot] {
            let Some(entry) = self.cache(tier).get(key) else {
                continue;
            };
            if let Some(reply) = encoded_reply(&entry, accepted) {
                return Ok(Some((tier, Answer::Encoded(reply))));
            }
            let Some(found) = self.open(tier, key, &entry).await? else {
                continue;
            };
            return Ok(Some((tier, Answer::Plain(found))));
        }
        Ok(None)
    }

    /// The expiry of a value kept by this group: the one its source gave, else now + the
    /// group's TTL, else none. Memory and the storage tier both keep this one.
    fn expiry(&self, given: Option<u64>) -> Option<u64> {
        given.or_else(|| {
            self.options
                .ttl
                .map(|ttl| self.clock.now_ms().saturating_add(ms(ttl)))
        })
    }

    /// The write generation of `key`'s shard; see [`Core::generations`].
    fn generation(&self, key: &str) -> u64 {
        *self.generation_lock(key)
    }

    /// Runs `write` (a change to `key`'s copies) under its shard's lock, after bumping the
    /// generation: a load that read the generation before cannot cache any more, and one that
    /// caches waits for the write to finish. Keep `write` short and non-blocking.
    fn write<T>(&self, key: &str, write: impl FnOnce() -> T) -> T {
        let mut generation = self.generation_lock(key);
        *generation += 1;
        write()
    }

    fn generation_lock(&self, key: &str) -> MutexGuard<'_, u64> {
        let shard = xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % len64(self.generations.len());
        self.generations[usize::try_from(shard).unwrap_or(0)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Caches `found` in `tier`, with the TTL policy of that tier, and writes a value through
    /// to the storage tier when `write_through` is set; unless a write to the key happened
    /// since the load started (`generation`): then the load's value may be older than what the
    /// write left, and it only goes to the callers. The check and the caching happen under the
    /// key's shard lock, so no write can slip in between.
    fn remember(
        &self,
        tier: Tier,
        key: &str,
        found: Option<(&Stored, Option<u64>)>,
        generation: u64,
        write_through: bool,
    ) {
        let current = self.generation_lock(key);
        if *current != generation {
            tracing::debug!(group = %self.name, "a write raced this load; its value is not cached");
            return;
        }
        let now = self.clock.now_ms();
        let o = &self.options;
        let (cached, expires_at_ms) = match found {
            Some((stored, expires)) => (Cached::Value(stored.clone()), self.expiry(expires)),
            None if o.negative_ttl.is_zero() => return,
            None => (
                Cached::NotFound,
                Some(now.saturating_add(ms(o.negative_ttl))),
            ),
        };
        if let (true, Some((stored, _))) = (write_through, found) {
            // The value's own expiry, before any hot cap: storage keeps what the owner keeps.
            self.store_in_background(key, stored, expires_at_ms);
        }
        let expires_at_ms = match tier {
            Tier::Main => expires_at_ms,
            Tier::Hot => {
                let cap = now.saturating_add(ms(o.hot_ttl));
                Some(expires_at_ms.map_or(cap, |e| e.min(cap)))
            }
        };
        self.cache(tier).insert(
            key,
            CacheEntry {
                cached,
                expires_at_ms,
            },
        );
        drop(current);
    }

    /// `work` (coding `len` bytes), under the load timeout when it is large enough to wait
    /// for the codec's heavy lane (`compression::builtin`): a request still waiting when its
    /// time is up fails with [`Error::Timeout`] and never codes. Small work runs as it is.
    async fn coded<T>(
        &self,
        len: usize,
        work: impl Future<Output = std::result::Result<T, CodecError>>,
    ) -> Result<std::result::Result<T, CodecError>> {
        if len < builtin::INLINE_LIMIT {
            return Ok(work.await);
        }
        let timeout = self.options.load_timeout;
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| Error::Timeout(timeout))
    }

    /// Encodes `value` with the group's codec, counting sizes for the compression stats.
    async fn encode(&self, value: &[u8]) -> Result<Stored> {
        let stored = self
            .coded(value.len(), self.encoding.encode(value))
            .await??;
        let s = &self.stats;
        bump(&s.values_encoded);
        if !stored.codec().is_none() {
            bump(&s.values_compressed);
        }
        add(&s.encoded_raw_bytes, len64(value.len()));
        add(&s.encoded_stored_bytes, len64(stored.len()));
        Ok(stored)
    }

    /// An entry from a peer or the storage tier, decoded and fully checked.
    async fn accept(&self, entry: PeerEntry) -> Result<(Bytes, Stored)> {
        let stored = self
            .codecs
            .stored(entry.value, &entry.codec)
            .inspect_err(|_| bump(&self.stats.corrupt_values))?;
        if let Some(len) = stored.raw_len() {
            self.check_len(len)?;
        }
        let plain = self
            .coded(
                decoding_len(&stored),
                stored.decode(self.options.max_value_bytes, Verify::All),
            )
            .await?
            .inspect_err(|_| bump(&self.stats.corrupt_values))?;
        Ok((plain, stored))
    }

    fn check_len(&self, len: usize) -> Result<()> {
        let limit = self.options.max_value_bytes;
        if len > limit {
            return Err(Error::ValueTooLarge { len, limit });
        }
        Ok(())
    }

    /// Loads `key` with the local getter, under the load timeout, and encodes it.
    async fn load_local(&self, key: &str) -> Result<Option<Value>> {
        bump(&self.stats.getter_calls);
        let timeout = self.options.load_timeout;
        let loaded = tokio::time::timeout(timeout, self.getter.get(&self.name, key))
            .await
            .map_err(|_| Error::Timeout(timeout))
            .and_then(|r| r)
            .inspect_err(|_| bump(&self.stats.getter_errors))?;
        match loaded {
            Loaded::Found {
                value,
                expires_at_ms,
            } => {
                self.check_len(value.len())?;
                let stored = self.encode(&value).await?;
                Ok(Some(Value {
                    plain: value,
                    stored,
                    expires_at_ms,
                }))
            }
            Loaded::NotFound => Ok(None),
        }
    }

    /// Asks the storage tier for `key`; anything but a live, intact value is a miss. A value
    /// that does not decode is deleted from the tier, unless a write to the key came since the
    /// load started (`generation`): that write (say a set, already acknowledged) may have
    /// replaced it, and a delete queued after it would remove the new value.
    async fn load_stored(&self, key: &str, generation: u64) -> Option<Value> {
        let tier = self.storage.as_ref()?;
        let s = &self.stats;
        if tier.is_pending(key) {
            // A write to this key is on its way: what the tier holds may be stale.
            bump(&s.storage_misses);
            return None;
        }
        let storage = tier.backend();
        let timeout = self.options.load_timeout;
        let entry = match tokio::time::timeout(timeout, storage.get(&self.name, key)).await {
            Ok(Ok(Some(entry))) => entry,
            Ok(Ok(None)) => {
                bump(&s.storage_misses);
                return None;
            }
            Ok(Err(e)) => {
                bump(&s.storage_errors);
                tracing::warn!(group = %self.name, storage = storage.name(), error = %e, "storage get failed; loading from the getter");
                return None;
            }
            Err(_) => {
                bump(&s.storage_errors);
                tracing::warn!(group = %self.name, storage = storage.name(), ?timeout, "storage get timed out; loading from the getter");
                return None;
            }
        };
        if entry
            .expires_at_ms
            .is_some_and(|at| at <= self.clock.now_ms())
        {
            bump(&s.storage_misses);
            return None;
        }
        let expires_at_ms = entry.expires_at_ms;
        match self.accept(entry).await {
            Ok((plain, stored)) => {
                bump(&s.storage_hits);
                Some(Value {
                    plain,
                    stored,
                    expires_at_ms,
                })
            }
            Err(e) => {
                tracing::error!(group = %self.name, storage = storage.name(), error = %e, "stored value does not decode; deleted, reloading from the getter");
                // Under the key's write lock, as queued writes must be, so the check holds
                // until the delete is queued.
                let current = self.generation_lock(key);
                if *current == generation {
                    self.unstore_in_background(key);
                }
                drop(current);
                None
            }
        }
    }

    /// Loads a key this node owns: storage tier, then getter. Fills the main cache, and the
    /// storage tier after a getter load, unless a write raced the load (`generation`).
    async fn load_owned(&self, key: &str, generation: u64) -> Result<Option<Value>> {
        if let Some(value) = self.load_stored(key, generation).await {
            self.remember(
                Tier::Main,
                key,
                Some((&value.stored, value.expires_at_ms)),
                generation,
                false,
            );
            return Ok(Some(value));
        }
        let value = self.load_local(key).await?;
        self.remember(
            Tier::Main,
            key,
            value.as_ref().map(|v| (&v.stored, v.expires_at_ms)),
            generation,
            true,
        );
        Ok(value)
    }

    /// Writes a loaded entry through to the storage tier in the background (in order with the
    /// key's other writes); best effort: dropped when the tier's queue is full (`tier.rs`).
    /// Call it under the key's write lock.
    fn store_in_background(&self, key: &str, stored: &Stored, expires_at_ms: Option<u64>) {
        let Some(tier) = &self.storage else { return };
        let op = tier::Op::Put(peer_entry(stored, expires_at_ms));
        if let Some(slot) = tier.try_reserve(key, &op, "a load's write-through") {
            slot.send_in_background(key, op);
        }
    }

    /// Deletes `key` from the storage tier in the background (in order with its other writes),
    /// unless a delete of it is already queued; dropped when the tier's queue is full
    /// (`tier.rs` says why that is tolerable for the callers: invalidations and corrupt values).
    /// Call it under the key's write lock.
    fn unstore_in_background(&self, key: &str) {
        let Some(tier) = &self.storage else { return };
        if tier.delete_pending(key) {
            return;
        }
        if let Some(slot) = tier.try_reserve(key, &tier::Op::Delete, "a delete") {
            slot.send_in_background(key, tier::Op::Delete);
        }
    }

    /// A client's write at the owner: changes `key`'s copies in memory (`memory`, under the
    /// key's write lock) and, in the same locked step, queues `op` for the storage tier, so
    /// the tier sees a key's writes in the order memory saw them; then waits for the backend
    /// to finish it. Waiting for queue room and for the backend are both bounded by the load
    /// timeout.
    ///
    /// Returns what `memory` returned and the backend's answer (an error when it failed or
    /// did not answer in time; a write that timed out may still land later, in order).
    ///
    /// # Errors
    /// [`Error::StorageWrite`] when the queue had no room in time: then nothing changed.
    async fn write_through<T>(
        &self,
        tier: &StorageTier,
        key: &str,
        op: tier::Op,
        memory: impl FnOnce() -> T,
    ) -> Result<(T, Result<()>)> {
        let timeout = self.options.load_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let slot = tokio::time::timeout_at(deadline, tier.reserve(key, &op))
            .await
            .map_err(|_| Error::StorageWrite(format!("its queue stayed full for {timeout:?}")))??;
        let (kept, mut pending) = self.write(key, || (memory(), slot.send(key, op)));
        let failed = |e: Error| {
            // The client hears what it may (a plugin's own `other` text stays in the log).
            tracing::warn!(group = %self.name, error = %e, "storage write failed");
            Err(Error::StorageWrite(e.public_message()))
        };
        let written = match tokio::time::timeout_at(deadline, &mut pending.ack).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => failed(e),
            Ok(Err(_)) => Err(Error::StorageWrite("the storage tier has stopped".into())),
            // The client is told it failed, so it must not land later (see `GaveUp`).
            Err(_) => match pending.give_up().await {
                tier::GaveUp::Finished(Ok(())) => Ok(()),
                tier::GaveUp::Finished(Err(e)) => failed(e),
                tier::GaveUp::Cancelled | tier::GaveUp::Abandoned => Err(Error::StorageWrite(
                    format!("no answer within {timeout:?}; the write was called off"),
                )),
            },
        };
        Ok((kept, written))
    }

    /// Asks the owner for `key`; `None` when it is down, slow, or answers with a value that
    /// does not decode (counted as a peer error).
    async fn load_from_peer(
        &self,
        peer: &dyn RemotePeer,
        key: &str,
        generation: u64,
    ) -> Option<Found> {
        let timeout = self.options.peer_timeout;
        let item = match tokio::time::timeout(timeout, peer.get(&self.name, key)).await {
            Ok(Ok(entry)) => Ok(entry),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("timed out after {timeout:?}")),
        };
        self.take_owner_answer(peer.id(), key, generation, item)
            .await
    }

    /// Takes the owner's answer for `key` (a single get's or a batch's): decodes and keeps a
    /// value as a hot copy, remembers "no such key". `None` when the owner failed (counted and
    /// logged): the caller loads locally.
    async fn take_owner_answer(
        &self,
        peer: &str,
        key: &str,
        generation: u64,
        item: std::result::Result<Option<PeerEntry>, String>,
    ) -> Option<Found> {
        let failed = |error: String| {
            bump(&self.stats.peer_errors);
            tracing::warn!(group = %self.name, peer, %error, "peer get failed; loading locally");
            None
        };
        let entry = match item {
            Ok(entry) => entry,
            Err(e) => return failed(e),
        };
        let Some(entry) = entry else {
            bump(&self.stats.peer_loads);
            if self.hot_door.admit(key) {
                self.remember(Tier::Hot, key, None, generation, false);
            }
            return Some(None);
        };
        let expires_at_ms = entry.expires_at_ms;
        match self.accept(entry).await {
            Ok((plain, stored)) => {
                bump(&self.stats.peer_loads);
                // A copy is kept from the key's second fetch on (see `Doorkeeper`), as
                // received: no decompress/recompress between peers (but out of the answer's
                // buffer, see `Stored::compacted`).
                if self.hot_door.admit(key) {
                    self.remember(
                        Tier::Hot,
                        key,
                        Some((&stored.compacted(), expires_at_ms)),
                        generation,
                        false,
                    );
                }
                Some(Some((plain, expires_at_ms)))
            }
            Err(e) => failed(e.to_string()),
        }
    }

    /// The singleflight leader's work for a client get: ask the owner, or load locally.
    /// `generation` was read before the flight started: a write from then on stops this load
    /// from caching.
    async fn load(self: Arc<Self>, key: String, generation: u64) -> Result<Found> {
        if let Some((_, Answer::Plain(found))) = self.lookup(&key, &[]).await? {
            return Ok(found);
        }
        bump(&self.stats.loads);
        if let Some(peer) = self.peers.as_ref().and_then(|p| p.pick(&key)) {
            if let Some(found) = self.load_from_peer(&*peer, &key, generation).await {
                return Ok(found);
            }
            return self.load_for_failed_owner(&key, generation).await;
        }
        let value = self.load_owned(&key, generation).await?;
        Ok(value.map(|v| (v.plain, v.expires_at_ms)))
    }

    /// The owner is down or slow: answers the client from the source, and keeps the value as
    /// a hot copy (it is still the owner's key).
    async fn load_for_failed_owner(&self, key: &str, generation: u64) -> Result<Found> {
        let value = self.load_local(key).await?;
        self.remember(
            Tier::Hot,
            key,
            value.as_ref().map(|v| (&v.stored, v.expires_at_ms)),
            generation,
            false,
        );
        Ok(value.map(|v| (v.plain, v.expires_at_ms)))
    }

    /// The singleflight leader's work for a batch's key whose owner answered ahead
    /// ([`Group::owner_answers`]): take that answer, or load locally if the owner failed.
    async fn load_with_owner_answer(
        self: Arc<Self>,
        key: String,
        generation: u64,
        answer: OwnerAnswer,
    ) -> Result<Found> {
        if let Some((_, Answer::Plain(found))) = self.lookup(&key, &[]).await? {
            return Ok(found);
        }
        bump(&self.stats.loads);
        if let Some(found) = self
            .take_owner_answer(&answer.peer, &key, generation, answer.item)
            .await
        {
            return Ok(found);
        }
        self.load_for_failed_owner(&key, generation).await
    }

    /// The singleflight leader's work for a peer's request: this node is the owner. Answers
    /// with stored bytes, never decoding what it already holds.
    async fn load_as_owner(self: Arc<Self>, key: String, generation: u64) -> Result<FoundStored> {
        if let Some(entry) = self.main.get(&key) {
            return Ok(match &entry.cached {
                Cached::Value(stored) => Some((stored.clone(), entry.expires_at_ms)),
                Cached::NotFound => None,
            });
        }
        bump(&self.stats.loads);
        let value = self.load_owned(&key, generation).await?;
        Ok(value.map(|v| (v.stored, v.expires_at_ms)))
    }

    /// Tells every other node to drop its copies of `key`, all at once, and waits for their
    /// answers, each for up to the peer timeout: part of a write's acknowledgement, so that
    /// after a 2xx no node that answered serves the old value. A node that failed or did not
    /// answer in time is counted and logged; its hot copy expires by itself (`--hot-ttl`).
    async fn invalidate_others(&self, key: &str) {
        let Some(peers) = &self.peers else { return };
        let timeout = self.options.peer_timeout;
        let keys = [key.to_owned()];
        let asks = peers.others().into_iter().map(|peer| {
            let keys = &keys;
            async move {
                let error = match tokio::time::timeout(timeout, peer.invalidate(&self.name, keys))
                    .await
                {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {timeout:?}"),
                };
                bump(&self.stats.invalidations_failed);
                tracing::warn!(group = %self.name, peer = peer.id(), %error, "invalidation failed; that node's hot copy expires by itself");
            }
        });
        futures::future::join_all(asks).await;
    }

    /// Runs a client's write as a task of its own, so that a client that goes away mid-write
    /// (its request dropped) cannot stop it halfway: between memory and storage, before a
    /// failed write is taken out of memory again, or before the other nodes were told. Every
    /// step of it is bounded (queue room and storage by the load timeout, each peer by the
    /// peer timeout).
    async fn detached(
        &self,
        write: impl Future<Output = Result<()>> + Send + 'static,
    ) -> Result<()> {
        match tokio::spawn(write).await {
            Ok(result) => result,
            Err(e) => {
                tracing::error!(group = %self.name, error = %e, "a write's task failed");
                Err(Error::Internal(
                    "the write failed; see the node's log".into(),
                ))
            }
        }
    }

    /// A write at a non-owner: drops this node's copies, forwards the write to the owner, then
    /// drops them again. The second time (a generation bump) matters: a get on this node
    /// while the write was in flight may have fetched the owner's old value; it cannot cache
    /// it now, and one that did cache it has lost it.
    async fn forward(
        &self,
        key: &str,
        forwarded: impl Future<Output = Result<()>>,
        drop_main: bool,
    ) -> Result<()> {
        let drop_copies = || {
            self.hot.remove(key);
            if drop_main {
                self.main.remove(key);
            }
        };
        self.write(key, drop_copies);
        let result = forwarded.await;
        self.write(key, drop_copies);
        result
    }

    /// The owner's part of a set: memory, then (when the group has a storage tier) the
    /// backend, awaited; then the other nodes drop their copies (awaited, see
    /// [`Core::invalidate_others`]).
    ///
    /// # Errors
    /// [`Error::StorageWrite`] when the storage tier did not take the write: the value this
    /// set put in memory is taken out again (unless a newer write replaced it), so the node
    /// does not serve, as if acknowledged, a value a restart would lose; and the write will
    /// not land later (see `tier::GaveUp`). Until the write's fate is known, readers on this
    /// node may already see the new value.
    async fn store_as_owner(
        &self,
        key: &str,
        stored: Stored,
        expires_at_ms: Option<u64>,
    ) -> Result<()> {
        bump(&self.stats.sets);
        let expires_at_ms = self.expiry(expires_at_ms);
        let entry = peer_entry(&stored, expires_at_ms);
        let memory = || {
            self.hot.remove(key);
            self.main.insert(
                key,
                CacheEntry {
                    cached: Cached::Value(stored),
                    expires_at_ms,
                },
            );
            // Under the lock, so this is the entry just inserted (or none, if refused).
            self.main.get(key)
        };
        let written = match &self.storage {
            None => {
                self.write(key, memory);
                Ok(())
            }
            Some(tier) => {
                let (ours, written) = self
                    .write_through(tier, key, tier::Op::Put(entry), memory)
                    .await?;
                if let (Err(e), Some(ours)) = (&written, ours) {
                    tracing::warn!(group = %self.name, storage = tier.backend().name(), error = %e, "set failed: the storage tier did not take it");
                    self.write(key, || self.main.remove_if_same(key, &ours));
                }
                written
            }
        };
        self.invalidate_others(key).await;
        written
    }

    /// The owner's part of a remove: memory, the storage tier (awaited), the other nodes
    /// (awaited, see [`Core::invalidate_others`]).
    ///
    /// # Errors
    /// [`Error::StorageWrite`] when the storage tier did not take the delete in time: when it
    /// could not even be queued nothing changed; otherwise memory has dropped the key, and
    /// the delete was called off if it had not started (a running one may still land: the
    /// key then loads from its source).
    async fn remove_as_owner(&self, key: &str) -> Result<()> {
        bump(&self.stats.removes);
        let memory = || {
            self.main.remove(key);
            self.hot.remove(key);
        };
        let written = match &self.storage {
            None => {
                self.write(key, memory);
                Ok(())
            }
            Some(tier) => {
                self.write_through(tier, key, tier::Op::Delete, memory)
                    .await?
                    .1
            }
        };
        self.invalidate_others(key).await;
        written
    }
}

/// Builds a [`Group`]: a name and a getter, then what differs from the defaults.
#[derive(Debug)]
pub struct GroupBuilder {
    /// The group's name.
    name: String,
    /// Loads the keys this node owns.
    getter: Arc<dyn Getter>,
    /// Limits and policies.
    options: GroupOptions,
    /// Source of "now".
    clock: Arc<dyn Clock>,
    /// The cluster, if any.
    peers: Option<Arc<dyn PeerPicker>>,
    /// Codecs known to the node (built-ins plus compressor plugins).
    codecs: Codecs,
    /// The storage tier, if any.
    storage: Option<Arc<dyn Storage>>,
}

impl GroupBuilder {
    /// Limits and policies (default: [`GroupOptions::default`]).
    pub fn options(mut self, options: GroupOptions) -> Self {
        self.options = options;
        self
    }

    /// The clock expiry decisions use (default: the system clock; tests inject a manual one).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The cluster: keys `peers` assigns to other nodes are fetched from them.
    pub fn peers(mut self, peers: Arc<dyn PeerPicker>) -> Self {
        self.peers = Some(peers);
        self
    }

    /// The codecs the node knows (default: the built-ins); needed for a plugin codec.
    pub fn codecs(mut self, codecs: Codecs) -> Self {
        self.codecs = codecs;
        self
    }

    /// A storage tier below memory for the keys this node owns.
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// The group.
    ///
    /// # Errors
    /// When `options.compression` names an unknown codec or a level it does not take.
    pub fn build(self) -> Result<Group> {
        let stats = Arc::new(GroupStats::default());
        let o = &self.options;
        let storage = self.storage.map(|backend| {
            StorageTier::new(backend, &self.name, stats.clone(), o.storage_queue_bytes)
        });
        let encoding = self.codecs.encoding(&o.compression, o.compress_min_bytes)?;
        let cache = |bytes: u64, name: &str| {
            Cache::builder(bytes)
                .clock(self.clock.clone())
                .name(name)
                .build()
        };
        let main = cache(o.cache_bytes, "main");
        let hot = cache(o.hot_cache_bytes, "hot");
        Ok(Group {
            core: Arc::new(Core {
                name: self.name,
                getter: self.getter,
                storage,
                main,
                hot,
                hot_door: Doorkeeper::default(),
                clock: self.clock,
                options: self.options,
                codecs: self.codecs,
                encoding,
                stats,
                generations: (0..GENERATION_SHARDS).map(|_| Mutex::new(0)).collect(),
                peers: self.peers,
            }),
            flights: Singleflight::new(),
            owner_flights: Singleflight::new(),
        })
    }
}

impl Group {
    /// Starts building a group called `name` whose misses `getter` loads.
    pub fn builder(name: impl Into<String>, getter: Arc<dyn Getter>) -> GroupBuilder {
        GroupBuilder {
            name: name.into(),
            getter,
            options: GroupOptions::default(),
            clock: Arc::new(SystemClock),
            peers: None,
            codecs: Codecs::builtin(),
            storage: None,
        }
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// The group's options.
    pub fn options(&self) -> &GroupOptions {
        &self.core.options
    }

    /// Checks a key against the group's limits.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for an empty key, [`Error::KeyTooLarge`] past the limit.
    pub fn check_key(&self, key: &str) -> Result<()> {
        let limit = self.core.options.max_key_bytes;
        if key.is_empty() {
            return Err(Error::BadRequest("the key must not be empty".into()));
        }
        if key.len() > limit {
            return Err(Error::KeyTooLarge {
                len: key.len(),
                limit,
            });
        }
        Ok(())
    }

    /// Returns the value of `key`: from a cache, from its owner, or through the storage tier
    /// or the getter.
    ///
    /// # Concurrent calls on the same key
    /// Concurrent misses of one key cause exactly one load on this node (and, through the
    /// owner's own singleflight, one getter call cluster-wide); every caller gets its result or
    /// the same error. A caller that is cancelled does not cancel the others' load.
    ///
    /// # Errors
    /// [`Error::KeyNotFound`] when the source has no such key (remembered for the negative TTL);
    /// key-limit errors; the getter's error ([`Error::Plugin`] for wasm getters);
    /// [`Error::ValueTooLarge`]; [`Error::Codec`] when the group's codec fails on the loaded
    /// value; [`Error::Timeout`] past the load timeout. A failing owner is not an error: the
    /// node loads the key itself. A stored value that does not decode is not an error either:
    /// it is dropped and reloaded.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        Ok(self.get_reply(key, &[]).await?.body)
    }

    /// [`Group::get`] for an HTTP client that accepts the content codings `accepted` (`gzip`,
    /// `zstd`): a cached value stored in one of them is answered with its stored payload as it
    /// is, saving the decode; anything else is the plain value.
    ///
    /// # Errors
    /// As [`Group::get`].
    pub async fn get_reply(&self, key: &str, accepted: &[&str]) -> Result<Reply> {
        // The key goes on the span only at debug level: traces at info carry no keys.
        let span = tracing::info_span!(
            "geecache.group.get",
            group = self.core.name.as_str(),
            answered_by = tracing::field::Empty,
            shared = tracing::field::Empty,
            key = tracing::field::Empty,
        );
        if span.is_disabled() {
            // No layer wants it (traces are not exported): no span to enter on every poll.
            return self.get_in_span(key, accepted, &span).await;
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            span.record("key", key);
        }
        self.get_in_span(key, accepted, &span)
            .instrument(span.clone())
            .await
    }

    /// [`Group::get_reply`] inside `span`, which it tells where the answer came from.
    async fn get_in_span(
        &self,
        key: &str,
        accepted: &[&str],
        span: &tracing::Span,
    ) -> Result<Reply> {
        self.check_key(key)?;
        let core = &self.core;
        bump(&core.stats.gets);
        // Recording on a disabled span still looks the field up (and, with `tracing`'s `log`
        // feature, may consult `log`): skip it when no layer wants the span.
        let traced = !span.is_disabled();
        let found = match core.lookup(key, accepted).await? {
            Some((tier, answer)) => {
                core.count_hit(tier, &answer);
                if traced {
                    span.record("answered_by", tier.label());
                }
                match answer {
                    Answer::Encoded(reply) => return Ok(reply),
                    Answer::Plain(found) => found,
                }
            }
            None => {
                bump(&core.stats.misses);
                if traced {
                    span.record("answered_by", "load");
                }
                // Only the leader calls the closure, so only a real load gets a load span.
                let generation = core.generation(key);
                let flight = self
                    .flights
                    .run(&flight_key(generation, key), || {
                        let load =
                            tracing::info_span!("geecache.group.load", group = core.name.as_str());
                        core.clone()
                            .load(key.to_owned(), generation)
                            .instrument(load)
                    })
                    .await;
                if traced {
                    span.record("shared", flight.shared);
                }
                if flight.shared {
                    bump(&core.stats.loads_deduplicated);
                }
                flight.result.map_err(|e| (*e).clone())?
            }
        };
        let (body, _) = found.ok_or(Error::KeyNotFound)?;
        Ok(Reply {
            body,
            content_encoding: None,
        })
    }

    /// For a batch: asks the owners of `keys` for the keys they own that this node does not
    /// hold in memory, with one batch request per owner (all at once, each within the peer
    /// timeout). The answers, by key, go to [`Group::get_with_owner_answer`]. Keys this node
    /// owns or holds, invalid keys, and keys an owner skipped are left out (they take the
    /// normal get path). A request that fails fails each of its keys: they are loaded locally,
    /// as a single get's would be.
    pub async fn owner_answers(&self, keys: &[String]) -> HashMap<String, OwnerAnswer> {
        let core = &self.core;
        let Some(peers) = &core.peers else {
            return HashMap::new();
        };
        let mut by_owner: HashMap<String, (Arc<dyn RemotePeer>, Vec<String>)> = HashMap::new();
        for key in keys {
            if self.check_key(key).is_err()
                || core.main.get(key).is_some()
                || core.hot.get(key).is_some()
            {
                continue;
            }
            if let Some(peer) = peers.pick(key) {
                by_owner
                    .entry(peer.id().to_string())
                    .or_insert_with(|| (peer, Vec::new()))
                    .1
                    .push(key.clone());
            }
        }
        let timeout = core.options.peer_timeout;
        let asked = by_owner.into_iter().map(|(id, (peer, keys))| async move {
            let answer = tokio::time::timeout(timeout, peer.batch_get(&core.name, &keys)).await;
            let items: Vec<(String, OwnerItem)> = match answer {
                Ok(Ok(items)) => items,
                Ok(Err(e)) => keys
                    .into_iter()
                    .map(|k| (k, OwnerItem::Failed(e.to_string())))
                    .collect(),
                Err(_) => keys
                    .into_iter()
                    .map(|k| (k, OwnerItem::Failed(format!("timed out after {timeout:?}"))))
                    .collect(),
            };
            (id, items)
        });
        let mut answers = HashMap::new();
        for (peer, items) in futures::future::join_all(asked).await {
            for (key, item) in items {
                let item = match item {
                    OwnerItem::Answered(entry) => Ok(entry),
                    OwnerItem::Failed(e) => Err(e),
                    OwnerItem::Skipped => continue,
                };
                let peer = peer.clone();
                answers.insert(key, OwnerAnswer { peer, item });
            }
        }
        answers
    }

    /// [`Group::get`] of a batch's key, with its owner's answer when [`Group::owner_answers`]
    /// fetched one: the caches first, then that answer (or a local load if the owner failed),
    /// in the key's singleflight like any load.
    ///
    /// # Errors
    /// As [`Group::get`].
    pub async fn get_with_owner_answer(
        &self,
        key: &str,
        answer: Option<OwnerAnswer>,
    ) -> Result<Bytes> {
        let Some(answer) = answer else {
            return self.get(key).await;
        };
        self.check_key(key)?;
        let core = &self.core;
        bump(&core.stats.gets);
        if let Some((tier, answer)) = core.lookup(key, &[]).await? {
            core.count_hit(tier, &answer);
            if let Answer::Plain(found) = answer {
                return found.map(|(v, _)| v).ok_or(Error::KeyNotFound);
            }
        }
        bump(&core.stats.misses);
        let generation = core.generation(key);
        let flight = self
            .flights
            .run(&flight_key(generation, key), || {
                core.clone()
                    .load_with_owner_answer(key.to_owned(), generation, answer)
            })
            .await;
        if flight.shared {
            bump(&core.stats.loads_deduplicated);
        }
        let found = flight.result.map_err(|e| (*e).clone())?;
        found.map(|(v, _)| v).ok_or(Error::KeyNotFound)
    }

    /// Answers a peer that asks this node, as the key's owner, for `key`: never forwards to
    /// another node, so rings that briefly disagree cannot loop. The answer is the stored
    /// bytes and their codec, as this node keeps them.
    ///
    /// # Errors
    /// As [`Group::get`], except that "no such key" is `Ok(None)`.
    pub async fn get_as_owner(&self, key: &str) -> Result<Option<PeerEntry>> {
        self.check_key(key)?;
        let core = &self.core;
        bump(&core.stats.peer_requests_served);
        let span = tracing::info_span!("geecache.group.get_as_owner", group = core.name.as_str());
        let generation = core.generation(key);
        let load = || {
            let load = tracing::info_span!("geecache.group.load", group = core.name.as_str());
            core.clone()
                .load_as_owner(key.to_owned(), generation)
                .instrument(load)
        };
        let flight = self
            .owner_flights
            .run(&flight_key(generation, key), load)
            .instrument(span)
            .await;
        if flight.shared {
            bump(&core.stats.loads_deduplicated);
        }
        let found = flight.result.map_err(|e| (*e).clone())?;
        Ok(found.map(|(stored, expires_at_ms)| PeerEntry {
            value: stored.bytes().clone(),
            codec: stored.codec().name().to_owned(),
            expires_at_ms,
        }))
    }

    /// Sets `key` to `value` at its owner; every other node drops its copy. The value is
    /// encoded here, so the owner receives it as it will store it. Once encoded, the write
    /// runs to its end even if the caller goes away (see [`Core::detached`]).
    ///
    /// Read-your-writes: after `Ok`, no node that answered the owner's invalidation, this
    /// one included, serves the old value from a copy.
    ///
    /// # Errors
    /// Key or value limits; the codec's error; the owner's error when it is another node and
    /// cannot be reached (a write is not silently kept on the wrong node).
    pub async fn set(&self, key: &str, value: Bytes, expires_at_ms: Option<u64>) -> Result<()> {
        self.check_key(key)?;
        let core = &self.core;
        core.check_len(value.len())?;
        let stored = core.encode(&value).await?;
        let (key, core) = (key.to_owned(), core.clone());
        self.core
            .detached(async move {
                if let Some(peer) = core.peers.as_ref().and_then(|p| p.pick(&key)) {
                    let entry = peer_entry(&stored, expires_at_ms);
                    return core
                        .forward(&key, peer.set(&core.name, &key, entry), false)
                        .await;
                }
                core.store_as_owner(&key, stored, expires_at_ms).await
            })
            .await
    }

    /// Stores `entry` (sent by a peer) as the owner of `key`, after checking that it decodes,
    /// and tells the other nodes to drop their copies (to the end, even if the sender goes
    /// away).
    ///
    /// # Errors
    /// Key or value limits; [`Error::Codec`] when the entry's codec is unknown here or its
    /// bytes do not decode to what its header claims; [`Core::store_as_owner`]'s.
    pub async fn set_as_owner(&self, key: &str, entry: PeerEntry) -> Result<()> {
        self.check_key(key)?;
        let expires_at_ms = entry.expires_at_ms;
        let (_, stored) = self.core.accept(entry).await?;
        // Out of the request's body, which may be a slice of the connection's read buffer.
        let stored = stored.compacted();
        let (key, core) = (key.to_owned(), self.core.clone());
        self.core
            .detached(async move { core.store_as_owner(&key, stored, expires_at_ms).await })
            .await
    }

    /// Removes `key` at its owner (the next get reloads it from the source); every other node
    /// drops its copy. Runs to its end even if the caller goes away; read-your-writes as for
    /// [`Group::set`].
    ///
    /// # Errors
    /// Key limits; the owner's error when it is another node and cannot be reached.
    pub async fn remove(&self, key: &str) -> Result<()> {
        self.check_key(key)?;
        let (key, core) = (key.to_owned(), self.core.clone());
        self.core
            .detached(async move {
                if let Some(peer) = core.peers.as_ref().and_then(|p| p.pick(&key)) {
                    // Our main cache too: this node may have owned the key before.
                    return core
                        .forward(&key, peer.delete(&core.name, &key), true)
                        .await;
                }
                core.remove_as_owner(&key).await
            })
            .await
    }

    /// Removes `key` as its owner (memory, and the storage tier, awaited) and tells the other
    /// nodes to drop their copies (to the end, even if the sender goes away).
    ///
    /// # Errors
    /// Key limits; [`Core::remove_as_owner`]'s.
    pub async fn remove_as_owner(&self, key: &str) -> Result<()> {
        self.check_key(key)?;
        let (key, core) = (key.to_owned(), self.core.clone());
        self.core
            .detached(async move { core.remove_as_owner(&key).await })
            .await
    }

    /// Drops this node's copies of `keys` (asked by their owner after a set or remove),
    /// including any the storage tier kept from a time this node owned them.
    ///
    /// Why storage too: only a key's owner writes it to storage, but ownership moves (ring
    /// changes, restarts), and a node reads its storage tier for every key it owns; a copy
    /// left from when this node owned the key would be served should it own the key again.
    /// The storage trait cannot tell whether it holds a key (and storage outlives the
    /// process), so this node cannot prove it never stored one: the delete is sent, but
    /// coalesced with one already queued, and dropped (counted) when the queue is full.
    pub fn invalidate(&self, keys: &[String]) {
        let core = &self.core;
        for key in keys {
            core.write(key, || {
                core.hot.remove(key);
                core.main.remove(key);
                core.unstore_in_background(key);
            });
        }
    }

    /// Drops every value (and remembered miss) this node holds for the group: main and hot
    /// cache, and the entries of its storage tier, e.g. after its getter was replaced
    /// (`reload?flush=true`). Every key's write generation is bumped first, all under their
    /// locks, so a load still running (on the old getter) cannot cache or store what it finds;
    /// callers waiting on it still get its answer.
    ///
    /// The storage tier's clear is queued behind the writes made before the flush and ahead of
    /// those made after (see `tier.rs`); reads skip the tier until it is done. This waits for
    /// it, all together up to the load timeout (`--request-timeout`).
    ///
    /// # Errors
    /// Memory is emptied whatever happens. [`Error::StorageNotCleared`]: the backend cannot
    /// clear (a plugin built without `storage-clear`; nothing is queued then), failed, or its
    /// queues stayed full; [`Error::StorageClearPending`]: the clear had not finished in time
    /// (it goes on).
    pub async fn flush(&self) -> Result<()> {
        let core = &self.core;
        let timeout = core.options.load_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let Some(tier) = &core.storage else {
            self.flush_memory(|| ());
            return Ok(());
        };
        if let Some(why) = tier.backend().cannot_clear() {
            return Err(self.flush_memory_only(Error::StorageNotCleared(why)));
        }
        let slots = match tokio::time::timeout_at(deadline, tier.reserve_clear()).await {
            Ok(Ok(slots)) => slots,
            Ok(Err(_)) => {
                let e = Error::StorageNotCleared("the storage tier has stopped".into());
                return Err(self.flush_memory_only(e));
            }
            Err(_) => {
                let e = Error::StorageNotCleared(format!(
                    "its write queues stayed full for {timeout:?} (--request-timeout)"
                ));
                return Err(self.flush_memory_only(e));
            }
        };
        let ack = self.flush_memory(|| slots.send());
        match tokio::time::timeout_at(deadline, ack).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(Error::StorageNotCleared(e.public_message())),
            Ok(Err(_)) => Err(Error::StorageNotCleared(
                "the storage tier has stopped".into(),
            )),
            Err(_) => Err(Error::StorageClearPending(timeout)),
        }
    }

    /// Drops the hot copies and bumps every write generation (so a load in flight caches
    /// nothing): the second pass of a cluster flush, once every node has flushed, for copies
    /// fetched from an owner that had not flushed yet.
    pub fn flush_hot(&self) {
        self.flush_memory_with(|| (), false);
    }

    /// Empties memory when the storage tier could not take the clear; returns `e`.
    fn flush_memory_only(&self, e: Error) -> Error {
        self.flush_memory(|| ());
        e
    }

    /// Bumps every write generation and empties main and hot cache, all under every write
    /// lock; `under_locks` runs there too (it queues the storage tier's clear).
    fn flush_memory<T>(&self, under_locks: impl FnOnce() -> T) -> T {
        self.flush_memory_with(under_locks, true)
    }

    /// [`Group::flush_memory`], of the hot cache only unless `main` is set.
    fn flush_memory_with<T>(&self, under_locks: impl FnOnce() -> T, main: bool) -> T {
        let core = &self.core;
        let mut shards: Vec<MutexGuard<'_, u64>> = core
            .generations
            .iter()
            .map(|g| g.lock().unwrap_or_else(PoisonError::into_inner))
            .collect();
        for generation in &mut shards {
            **generation += 1;
        }
        let answer = under_locks();
        if main {
            core.main.clear();
        }
        core.hot.clear();
        drop(shards);
        answer
    }

    /// The name of the storage backend of this group's storage tier, if it has one.
    pub fn storage_name(&self) -> Option<&str> {
        self.core.storage.as_ref().map(|tier| tier.backend().name())
    }

    /// The name of the getter that loads this group's misses.
    pub fn getter_name(&self) -> &str {
        self.core.getter.name()
    }

    /// Waits until the storage tier's queued writes are done, or until `deadline`; for
    /// shutdown, once no request is being served any more.
    pub async fn drain_storage(&self, deadline: tokio::time::Instant) -> Drained {
        match &self.core.storage {
            Some(tier) => tier.drain(deadline).await,
            None => Drained::default(),
        }
    }

    /// A snapshot of counters and cache occupancy.
    pub fn snapshot(&self) -> GroupSnapshot {
        let core = &self.core;
        core.main.run_pending_tasks();
        core.hot.run_pending_tasks();
        let counters = core.stats.counters();
        GroupSnapshot {
            name: core.name.clone(),
            getter: core.getter.name().to_string(),
            compression: core.encoding.codec().name().to_owned(),
            storage: core.storage.as_ref().map(|s| s.backend().name().to_owned()),
            // Every main-cache miss goes on to the hot cache.
            main_misses: counters.hot_hits + counters.misses,
            counters,
            cache_items: core.main.entry_count(),
            cache_bytes: core.main.weighted_size(),
            cache_max_bytes: core.main.max_bytes(),
            cache_evictions: core.main.evictions(),
            hot_items: core.hot.entry_count(),
            hot_bytes: core.hot.weighted_size(),
            hot_max_bytes: core.hot.max_bytes(),
            hot_evictions: core.hot.evictions(),
        }
    }
}

/// The groups a node serves, by name.
#[derive(Debug, Default, Clone)]
pub struct Groups {
    /// Name → group.
    by_name: BTreeMap<String, Arc<Group>>,
}

impl Groups {
    /// Adds a group.
    ///
    /// # Errors
    /// When a group of that name already exists.
    pub fn insert(&mut self, group: Group) -> std::result::Result<(), String> {
        let name = group.name().to_string();
        if self.by_name.contains_key(&name) {
            return Err(format!("group {name:?} is defined twice"));
        }
        self.by_name.insert(name, Arc::new(group));
        Ok(())
    }

    /// The group called `name`.
    ///
    /// # Errors
    /// [`Error::GroupNotFound`].
    pub fn get(&self, name: &str) -> Result<&Arc<Group>> {
        self.by_name
            .get(name)
            .ok_or_else(|| Error::GroupNotFound(name.to_string()))
    }

    /// All groups, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Group>> {
        self.by_name.values()
    }

    /// [`Group::drain_storage`] for every group, all before one `deadline`; the totals.
    pub async fn drain_storage(&self, deadline: tokio::time::Instant) -> Drained {
        let drained =
            futures::future::join_all(self.iter().map(|g| g.drain_storage(deadline))).await;
        drained
            .into_iter()
            .fold(Drained::default(), |sum, d| Drained {
                written: sum.written + d.written,
                abandoned: sum.abandoned + d.abandoned,
            })
    }
}

/// What this node's groups offer to peers: answers as the keys' owner.
impl crate::peer::PeerService for Groups {
    fn get<'a>(&'a self, group: &'a str, key: &'a str) -> BoxFuture<'a, Result<Option<PeerEntry>>> {
        Box::pin(async move { self.get(group)?.get_as_owner(key).await })
    }

    fn set<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        entry: PeerEntry,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.get(group)?.set_as_owner(key, entry).await })
    }

    fn delete<'a>(&'a self, group: &'a str, key: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.get(group)?.remove_as_owner(key).await })
    }

    fn invalidate(&self, group: &str, keys: &[String]) -> Result<()> {
        self.get(group)?.invalidate(keys);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
