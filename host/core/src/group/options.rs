//! A group's options and its builder.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::stats::GroupStats;
use super::tier::StorageTier;
use super::{GENERATION_SHARDS, Group, Inner, tier};
use crate::cache::{Cache, Clock, Doorkeeper, SystemClock};
use crate::compression::{CodecSpec, Codecs, DEFAULT_MIN_BYTES};
use crate::error::Result;
use crate::seam::{Getter, PeerPicker, Storage};
use crate::singleflight::Singleflight;

/// Per-group settings; see `geecache-host --help` and docs/operations.md for defaults.
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
    /// How long past its expiry a value may still be answered (marked stale) while one
    /// background refresh per key reloads it; also how long a failing source is covered
    /// (stale-if-error). Zero: expired values are misses.
    pub stale: Duration,
    /// Window before expiry in which hits may refresh a value early, with a probability that
    /// grows as the expiry nears (XFetch); zero: never.
    pub refresh_ahead: Duration,
    /// Longest key accepted, in bytes.
    pub max_key_bytes: usize,
    /// Largest value accepted from a getter or a setter, in bytes (before compression).
    pub max_value_bytes: usize,
    /// Longest a load may take before the request fails with 504.
    pub load_timeout: Duration,
    /// Longest to wait for the owner before loading locally instead.
    pub peer_timeout: Duration,
    /// Longest a key's new owner waits for its previous owner's memory (warm handoff) before
    /// it loads the key itself; zero: never asks.
    pub handoff_timeout: Duration,
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
            stale: Duration::ZERO,
            refresh_ahead: Duration::ZERO,
            max_key_bytes: 1024,
            max_value_bytes: 8 << 20,
            load_timeout: Duration::from_secs(5),
            peer_timeout: Duration::from_secs(1),
            handoff_timeout: Duration::from_millis(50),
            compression: CodecSpec::default(),
            compress_min_bytes: DEFAULT_MIN_BYTES,
            storage_queue_bytes: tier::DEFAULT_QUEUE_BYTES,
        }
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
        // The heaviest entry the group stores: the longest key and value (a codec keeps a
        // value raw unless it shrinks).
        let largest = crate::cache::weight_of(o.max_key_bytes, o.max_value_bytes);
        let cache = |bytes: u64, name: &str| {
            Cache::builder(bytes)
                .clock(self.clock.clone())
                .name(name)
                .largest_entry(largest)
        };
        // Only the main tier's misses have reasons of their own (a hot miss is "not owner").
        let main = cache(o.cache_bytes, "main").miss_reasons().build();
        let hot = cache(o.hot_cache_bytes, "hot").build();
        Ok(Group {
            inner: Arc::new(Inner {
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
}
