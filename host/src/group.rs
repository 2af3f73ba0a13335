//! Groups: named cache namespaces, each with its own getter, byte budget and expiry policy.
//!
//! `Group::get` order: main cache → hot cache → singleflight → owner. When a [`PeerPicker`]
//! names another node as the key's owner, the value is fetched from it and mirrored in the small
//! hot cache; when this node owns the key (or the owner is down or slow), the local [`Getter`]
//! loads it into the main cache. "No such key" is cached for the short negative TTL so a missing
//! key cannot hammer the origin. `set` and `remove` go to the owner, which then tells every
//! other node to drop its copies. The group talks only to traits ([`Getter`], [`PeerPicker`],
//! [`RemotePeer`]), never to wasmtime or HTTP, so native and wasm/HTTP parts are interchangeable.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use serde::Serialize;
use tracing::Instrument as _;

use crate::cache::{Cache, CacheEntry, Cached, Clock, SystemClock};
use crate::error::{Error, Result};
use crate::singleflight::Singleflight;

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

/// A value as it travels between nodes: the stored bytes, their codec tag, their absolute expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    /// The stored bytes, exactly as the owner holds them.
    pub value: Bytes,
    /// Codec tag of `value` (`none` until compression lands).
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
    /// Byte budget of the main cache (keys + values + per-entry overhead).
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
    /// Largest value accepted from a getter or a setter, in bytes.
    pub max_value_bytes: usize,
    /// Longest a load may take before the request fails with 504.
    pub load_timeout: Duration,
    /// Longest to wait for the owner before loading locally instead.
    pub peer_timeout: Duration,
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
        }
    }
}

/// Counters of one group, exported by `/api/v1/stats`.
#[derive(Debug, Default)]
pub struct GroupStats {
    /// `get` calls with a valid key.
    pub gets: AtomicU64,
    /// Answers served from the main cache (values and remembered "no such key").
    pub hits: AtomicU64,
    /// Answers served from the hot cache (copies of other nodes' keys).
    pub hot_hits: AtomicU64,
    /// Of the hits (main or hot), those that were a remembered "no such key".
    pub negative_hits: AtomicU64,
    /// Lookups neither cache could answer (the hot tier's misses: every main-cache miss is
    /// looked up in the hot cache).
    pub misses: AtomicU64,
    /// Loads started (one per singleflight leader, client or peer initiated).
    pub loads: AtomicU64,
    /// Callers that shared another caller's load instead of starting their own.
    pub loads_deduplicated: AtomicU64,
    /// Calls made to the local getter.
    pub getter_calls: AtomicU64,
    /// Getter calls that failed.
    pub getter_errors: AtomicU64,
    /// Loads answered by the owning peer.
    pub peer_loads: AtomicU64,
    /// Peer requests that failed (the node then loaded locally, or the request failed).
    pub peer_errors: AtomicU64,
    /// Requests served to peers as the key's owner.
    pub peer_requests_served: AtomicU64,
    /// Values set (at this node as owner).
    pub sets: AtomicU64,
    /// Keys removed (at this node as owner).
    pub removes: AtomicU64,
}

/// A point-in-time copy of a group's counters and cache occupancy.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupSnapshot {
    /// The group's name.
    pub name: String,
    /// The getter's name.
    pub getter: String,
    /// See [`GroupStats::gets`].
    pub gets: u64,
    /// See [`GroupStats::hits`].
    pub hits: u64,
    /// See [`GroupStats::hot_hits`].
    pub hot_hits: u64,
    /// See [`GroupStats::negative_hits`].
    pub negative_hits: u64,
    /// See [`GroupStats::misses`].
    pub misses: u64,
    /// Lookups the main cache could not answer: `hot_hits + misses` (each one went on to the
    /// hot cache), so it needs no counter of its own.
    pub main_misses: u64,
    /// See [`GroupStats::loads`].
    pub loads: u64,
    /// See [`GroupStats::loads_deduplicated`].
    pub loads_deduplicated: u64,
    /// See [`GroupStats::getter_calls`].
    pub getter_calls: u64,
    /// See [`GroupStats::getter_errors`].
    pub getter_errors: u64,
    /// See [`GroupStats::peer_loads`].
    pub peer_loads: u64,
    /// See [`GroupStats::peer_errors`].
    pub peer_errors: u64,
    /// See [`GroupStats::peer_requests_served`].
    pub peer_requests_served: u64,
    /// See [`GroupStats::sets`].
    pub sets: u64,
    /// See [`GroupStats::removes`].
    pub removes: u64,
    /// Entries in the main cache.
    pub cache_items: u64,
    /// Bytes the main cache holds, as weighed against its budget.
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
    /// Entries evicted from the hot cache (size or expiry).
    pub hot_evictions: u64,
}

/// Where an answer came from, so the singleflight leader knows which cache to fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    /// This node owns the key (or loaded it as a fallback): the main cache.
    Main,
    /// A copy of another node's key: the hot cache.
    Hot,
}

/// What a load produced: a value with its expiry, or "no such key".
type Found = Option<(Bytes, Option<u64>)>;

/// Everything a load needs, shared with in-flight loads (which outlive a cancelled caller).
struct Core {
    /// The group's name, part of every API path.
    name: String,
    /// Loads keys this node owns.
    getter: Arc<dyn Getter>,
    /// Values (and remembered "no such key") this node owns.
    main: Cache,
    /// Copies of values other nodes own.
    hot: Cache,
    /// Source of "now" for expiry, injected for tests.
    clock: Arc<dyn Clock>,
    /// Limits and policies.
    options: GroupOptions,
    /// Counters for stats.
    stats: GroupStats,
    /// The cluster, or `None` for a single node.
    peers: Option<Arc<dyn PeerPicker>>,
}

/// A named cache namespace. Cheap to share (`Arc<Group>`).
pub struct Group {
    /// State shared with in-flight loads.
    core: Arc<Core>,
    /// Collapses concurrent client misses of one key into one load.
    flights: Singleflight<Found, Error>,
    /// Collapses concurrent owner loads (requests from peers). Separate from `flights` so that
    /// two nodes whose rings briefly disagree cannot wait on each other.
    owner_flights: Singleflight<Found, Error>,
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("name", &self.core.name)
            .field("getter", &self.core.getter.name())
            .field("options", &self.core.options)
            .finish_non_exhaustive()
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn found_of(entry: &CacheEntry) -> Found {
    match &entry.cached {
        Cached::Value(v) => Some((v.clone(), entry.expires_at_ms)),
        Cached::NotFound => None,
    }
}

impl Core {
    /// Answers from the main then the hot cache, counting the hit (and naming the tier on the
    /// current span).
    fn lookup(&self, key: &str) -> Option<Found> {
        let (entry, counter, tier) = match self.main.get(key) {
            Some(e) => (e, &self.stats.hits, "main"),
            None => (self.hot.get(key)?, &self.stats.hot_hits, "hot"),
        };
        bump(counter);
        tracing::Span::current().record("answered_by", tier);
        if matches!(entry.cached, Cached::NotFound) {
            bump(&self.stats.negative_hits);
        }
        Some(found_of(&entry))
    }

    /// Re-checks both caches without counting (a load may have finished meanwhile).
    fn peek(&self, key: &str) -> Option<Found> {
        self.main
            .get(key)
            .or_else(|| self.hot.get(key))
            .map(|e| found_of(&e))
    }

    /// Caches `found` in `tier`, with the TTL policy of that tier.
    fn remember(&self, tier: Tier, key: String, found: &Found) {
        let now = self.clock.now_ms();
        let o = &self.options;
        let (cached, expires_at_ms) = match found {
            Some((value, expires)) => {
                let expires = expires.or_else(|| o.ttl.map(|ttl| now.saturating_add(ms(ttl))));
                (Cached::Value(value.clone()), expires)
            }
            None if o.negative_ttl.is_zero() => return,
            None => (
                Cached::NotFound,
                Some(now.saturating_add(ms(o.negative_ttl))),
            ),
        };
        let (cache, expires_at_ms) = match tier {
            Tier::Main => (&self.main, expires_at_ms),
            Tier::Hot => {
                let cap = now.saturating_add(ms(o.hot_ttl));
                (&self.hot, Some(expires_at_ms.map_or(cap, |e| e.min(cap))))
            }
        };
        cache.insert(
            key,
            CacheEntry {
                cached,
                expires_at_ms,
            },
        );
    }

    /// Loads `key` with the local getter, under the load timeout.
    async fn load_local(&self, key: &str) -> Result<Found> {
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
                if value.len() > self.options.max_value_bytes {
                    return Err(Error::ValueTooLarge {
                        len: value.len(),
                        limit: self.options.max_value_bytes,
                    });
                }
                Ok(Some((value, expires_at_ms)))
            }
            Loaded::NotFound => Ok(None),
        }
    }

    /// The singleflight leader's work for a client get: ask the owner, or load locally.
    async fn load(self: Arc<Self>, key: String) -> Result<Found> {
        if let Some(found) = self.peek(&key) {
            return Ok(found);
        }
        bump(&self.stats.loads);
        if let Some(peer) = self.peers.as_ref().and_then(|p| p.pick(&key)) {
            let timeout = self.options.peer_timeout;
            let answer = tokio::time::timeout(timeout, peer.get(&self.name, &key)).await;
            match answer {
                Ok(Ok(entry)) => {
                    bump(&self.stats.peer_loads);
                    let found = entry.map(|e| (e.value, e.expires_at_ms));
                    self.remember(Tier::Hot, key, &found);
                    return Ok(found);
                }
                Ok(Err(e)) => {
                    bump(&self.stats.peer_errors);
                    tracing::warn!(group = %self.name, peer = peer.id(), error = %e, "peer get failed; loading locally");
                }
                Err(_) => {
                    bump(&self.stats.peer_errors);
                    tracing::warn!(group = %self.name, peer = peer.id(), ?timeout, "peer get timed out; loading locally");
                }
            }
            // The owner is down or slow: answer the client from the source, and keep the value
            // as a hot copy (it is still the owner's key).
            let found = self.load_local(&key).await?;
            self.remember(Tier::Hot, key, &found);
            return Ok(found);
        }
        let found = self.load_local(&key).await?;
        self.remember(Tier::Main, key, &found);
        Ok(found)
    }

    /// The singleflight leader's work for a peer's request: this node is the owner.
    async fn load_as_owner(self: Arc<Self>, key: String) -> Result<Found> {
        if let Some(entry) = self.main.get(&key) {
            return Ok(found_of(&entry));
        }
        bump(&self.stats.loads);
        let found = self.load_local(&key).await?;
        self.remember(Tier::Main, key, &found);
        Ok(found)
    }

    /// Tells every other node to drop its copies of `key`, in the background.
    fn invalidate_others(&self, key: &str) {
        let Some(peers) = &self.peers else { return };
        for peer in peers.others() {
            let group = self.name.clone();
            let keys = vec![key.to_string()];
            tokio::spawn(async move {
                if let Err(e) = peer.invalidate(&group, &keys).await {
                    tracing::warn!(%group, peer = peer.id(), error = %e, "invalidation failed; the hot copy expires by itself");
                }
            });
        }
    }
}

impl Group {
    /// A single-node group with the system clock.
    pub fn new(name: impl Into<String>, getter: Arc<dyn Getter>, options: GroupOptions) -> Self {
        Self::build(name.into(), getter, options, Arc::new(SystemClock), None)
    }

    /// A single-node group whose expiry decisions use `clock` (tests inject a manual one).
    pub fn with_clock(
        name: impl Into<String>,
        getter: Arc<dyn Getter>,
        options: GroupOptions,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self::build(name.into(), getter, options, clock, None)
    }

    /// A group in a cluster: keys `peers` assigns to other nodes are fetched from them.
    pub fn clustered(
        name: impl Into<String>,
        getter: Arc<dyn Getter>,
        options: GroupOptions,
        clock: Arc<dyn Clock>,
        peers: Arc<dyn PeerPicker>,
    ) -> Self {
        Self::build(name.into(), getter, options, clock, Some(peers))
    }

    fn build(
        name: String,
        getter: Arc<dyn Getter>,
        options: GroupOptions,
        clock: Arc<dyn Clock>,
        peers: Option<Arc<dyn PeerPicker>>,
    ) -> Self {
        let main = Cache::builder(options.cache_bytes)
            .clock(clock.clone())
            .name("main")
            .build();
        let hot = Cache::builder(options.hot_cache_bytes)
            .clock(clock.clone())
            .name("hot")
            .build();
        Group {
            core: Arc::new(Core {
                name,
                getter,
                main,
                hot,
                clock,
                options,
                stats: GroupStats::default(),
                peers,
            }),
            flights: Singleflight::new(),
            owner_flights: Singleflight::new(),
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

    /// Returns the value of `key`: from a cache, from its owner, or through the getter.
    ///
    /// # Concurrent calls on the same key
    /// Concurrent misses of one key cause exactly one load on this node (and, through the
    /// owner's own singleflight, one getter call cluster-wide); every caller gets its result or
    /// the same error. A caller that is cancelled does not cancel the others' load.
    ///
    /// # Errors
    /// [`Error::KeyNotFound`] when the source has no such key (remembered for the negative TTL);
    /// key-limit errors; the getter's error ([`Error::Plugin`] for wasm getters);
    /// [`Error::ValueTooLarge`]; [`Error::Timeout`] past the load timeout. A failing owner is not
    /// an error: the node loads the key itself.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        // The key goes on the span only at debug level: traces at info carry no keys.
        let span = tracing::info_span!(
            "geecache.group.get",
            group = %self.core.name,
            answered_by = tracing::field::Empty,
            shared = tracing::field::Empty,
            key = tracing::field::Empty,
        );
        if tracing::enabled!(tracing::Level::DEBUG) {
            span.record("key", key);
        }
        self.get_in_span(key).instrument(span).await
    }

    /// [`Group::get`] inside its span.
    async fn get_in_span(&self, key: &str) -> Result<Bytes> {
        self.check_key(key)?;
        let core = &self.core;
        bump(&core.stats.gets);
        let found = match core.lookup(key) {
            Some(found) => found,
            None => {
                bump(&core.stats.misses);
                let span = tracing::Span::current();
                span.record("answered_by", "load");
                // Only the leader calls the closure, so only a real load gets a load span.
                let flight = self
                    .flights
                    .run(key, || {
                        let load = tracing::info_span!("geecache.group.load", group = %core.name);
                        core.clone().load(key.to_owned()).instrument(load)
                    })
                    .await;
                span.record("shared", flight.shared);
                if flight.shared {
                    bump(&core.stats.loads_deduplicated);
                }
                flight.result.map_err(|e| (*e).clone())?
            }
        };
        found.map(|(value, _)| value).ok_or(Error::KeyNotFound)
    }

    /// Answers a peer that asks this node, as the key's owner, for `key`: never forwards to
    /// another node, so rings that briefly disagree cannot loop.
    ///
    /// # Errors
    /// As [`Group::get`], except that "no such key" is `Ok(None)`.
    pub async fn get_as_owner(&self, key: &str) -> Result<Option<PeerEntry>> {
        self.check_key(key)?;
        let core = &self.core;
        bump(&core.stats.peer_requests_served);
        let span = tracing::info_span!("geecache.group.get_as_owner", group = %core.name);
        let load = || {
            let load = tracing::info_span!("geecache.group.load", group = %core.name);
            core.clone().load_as_owner(key.to_owned()).instrument(load)
        };
        let flight = self.owner_flights.run(key, load).instrument(span).await;
        if flight.shared {
            bump(&core.stats.loads_deduplicated);
        }
        let found = flight.result.map_err(|e| (*e).clone())?;
        Ok(found.map(|(value, expires_at_ms)| PeerEntry {
            value,
            codec: "none".into(),
            expires_at_ms,
        }))
    }

    fn check_value(&self, value: &Bytes) -> Result<()> {
        let limit = self.core.options.max_value_bytes;
        if value.len() > limit {
            return Err(Error::ValueTooLarge {
                len: value.len(),
                limit,
            });
        }
        Ok(())
    }

    /// Sets `key` to `value` at its owner; every other node drops its copy.
    ///
    /// # Errors
    /// Key or value limits; the owner's error when it is another node and cannot be reached
    /// (a write is not silently kept on the wrong node).
    pub async fn set(&self, key: &str, value: Bytes, expires_at_ms: Option<u64>) -> Result<()> {
        self.check_key(key)?;
        self.check_value(&value)?;
        let core = &self.core;
        if let Some(peer) = core.peers.as_ref().and_then(|p| p.pick(key)) {
            core.hot.remove(key);
            let entry = PeerEntry {
                value,
                codec: "none".into(),
                expires_at_ms,
            };
            return peer.set(&core.name, key, entry).await;
        }
        self.set_as_owner(
            key,
            PeerEntry {
                value,
                codec: "none".into(),
                expires_at_ms,
            },
        )
    }

    /// Stores `entry` as the owner of `key` and tells the other nodes to drop their copies.
    ///
    /// # Errors
    /// Key or value limits.
    pub fn set_as_owner(&self, key: &str, entry: PeerEntry) -> Result<()> {
        self.check_key(key)?;
        self.check_value(&entry.value)?;
        let core = &self.core;
        bump(&core.stats.sets);
        core.hot.remove(key);
        let expires_at_ms = entry.expires_at_ms.or_else(|| {
            core.options
                .ttl
                .map(|t| core.clock.now_ms().saturating_add(ms(t)))
        });
        core.main.insert(
            key,
            CacheEntry {
                cached: Cached::Value(entry.value),
                expires_at_ms,
            },
        );
        core.invalidate_others(key);
        Ok(())
    }

    /// Removes `key` at its owner (the next get reloads it from the source); every other node
    /// drops its copy.
    ///
    /// # Errors
    /// Key limits; the owner's error when it is another node and cannot be reached.
    pub async fn remove(&self, key: &str) -> Result<()> {
        self.check_key(key)?;
        let core = &self.core;
        if let Some(peer) = core.peers.as_ref().and_then(|p| p.pick(key)) {
            // Drop our copies now, so our next read misses at once rather than after the
            // owner's background invalidation reaches us.
            core.hot.remove(key);
            core.main.remove(key);
            return peer.delete(&core.name, key).await;
        }
        self.remove_as_owner(key)
    }

    /// Removes `key` as its owner and tells the other nodes to drop their copies.
    ///
    /// # Errors
    /// Key limits.
    pub fn remove_as_owner(&self, key: &str) -> Result<()> {
        self.check_key(key)?;
        let core = &self.core;
        bump(&core.stats.removes);
        core.main.remove(key);
        core.hot.remove(key);
        core.invalidate_others(key);
        Ok(())
    }

    /// Drops this node's copies of `keys` (asked by their owner after a set or remove).
    pub fn invalidate(&self, keys: &[String]) {
        for key in keys {
            self.core.hot.remove(key);
            self.core.main.remove(key);
        }
    }

    /// A snapshot of counters and cache occupancy.
    pub fn snapshot(&self) -> GroupSnapshot {
        let core = &self.core;
        let s = &core.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        core.main.run_pending_tasks();
        core.hot.run_pending_tasks();
        let (hot_hits, misses) = (get(&s.hot_hits), get(&s.misses));
        GroupSnapshot {
            name: core.name.clone(),
            getter: core.getter.name().to_string(),
            gets: get(&s.gets),
            hits: get(&s.hits),
            hot_hits,
            negative_hits: get(&s.negative_hits),
            misses,
            main_misses: hot_hits + misses,
            loads: get(&s.loads),
            loads_deduplicated: get(&s.loads_deduplicated),
            getter_calls: get(&s.getter_calls),
            getter_errors: get(&s.getter_errors),
            peer_loads: get(&s.peer_loads),
            peer_errors: get(&s.peer_errors),
            peer_requests_served: get(&s.peer_requests_served),
            sets: get(&s.sets),
            removes: get(&s.removes),
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
        Box::pin(async move { self.get(group)?.set_as_owner(key, entry) })
    }

    fn delete<'a>(&'a self, group: &'a str, key: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.get(group)?.remove_as_owner(key) })
    }

    fn invalidate(&self, group: &str, keys: &[String]) -> Result<()> {
        self.get(group)?.invalidate(keys);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cache::ManualClock;
    use std::sync::atomic::AtomicUsize;

    /// A native getter over a fixed map that counts its calls.
    #[derive(Debug, Default)]
    struct MapGetter {
        calls: AtomicUsize,
        expires_at_ms: Option<u64>,
        delay: Option<Duration>,
    }

    impl Getter for MapGetter {
        fn name(&self) -> &str {
            "map"
        }
        fn get<'a>(&'a self, _group: &'a str, key: &'a str) -> BoxFuture<'a, Result<Loaded>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                if let Some(d) = self.delay {
                    tokio::time::sleep(d).await;
                }
                match key {
                    "big" => Ok(Loaded::Found {
                        value: Bytes::from(vec![0u8; 2048]),
                        expires_at_ms: None,
                    }),
                    "boom" => Err(Error::Internal("source down".into())),
                    k if k.contains("missing") => Ok(Loaded::NotFound),
                    k => Ok(Loaded::Found {
                        value: Bytes::from(format!("v:{k}")),
                        expires_at_ms: self.expires_at_ms,
                    }),
                }
            })
        }
    }

    fn group(getter: Arc<MapGetter>, options: GroupOptions, clock: Arc<ManualClock>) -> Group {
        Group::with_clock("g", getter, options, clock)
    }

    #[tokio::test]
    async fn caches_values_until_the_ttl_and_then_reloads() {
        let getter = Arc::new(MapGetter::default());
        let clock = Arc::new(ManualClock::new(1_000_000));
        let options = GroupOptions {
            ttl: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        let g = group(getter.clone(), options, clock.clone());
        assert_eq!(g.get("a").await.unwrap(), Bytes::from("v:a"));
        assert_eq!(g.get("a").await.unwrap(), Bytes::from("v:a"));
        assert_eq!(getter.calls.load(Ordering::SeqCst), 1);
        clock.advance(Duration::from_millis(59_999));
        g.get("a").await.unwrap();
        assert_eq!(
            getter.calls.load(Ordering::SeqCst),
            1,
            "still fresh 1 ms before expiry"
        );
        clock.advance(Duration::from_millis(1));
        g.get("a").await.unwrap();
        assert_eq!(
            getter.calls.load(Ordering::SeqCst),
            2,
            "expired exactly at the TTL"
        );
    }

    #[tokio::test]
    async fn the_getters_own_expiry_wins_over_the_ttl() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let getter = Arc::new(MapGetter {
            expires_at_ms: Some(1_000_500),
            ..Default::default()
        });
        let options = GroupOptions {
            ttl: Some(Duration::from_secs(3600)),
            ..Default::default()
        };
        let g = group(getter.clone(), options, clock.clone());
        g.get("a").await.unwrap();
        clock.advance(Duration::from_millis(500));
        g.get("a").await.unwrap();
        assert_eq!(getter.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn no_such_key_is_remembered_for_the_negative_ttl_only() {
        let getter = Arc::new(MapGetter::default());
        let clock = Arc::new(ManualClock::new(1_000_000));
        let options = GroupOptions {
            negative_ttl: Duration::from_secs(5),
            ..Default::default()
        };
        let g = group(getter.clone(), options, clock.clone());
        for _ in 0..3 {
            assert!(matches!(g.get("missing").await, Err(Error::KeyNotFound)));
        }
        assert_eq!(getter.calls.load(Ordering::SeqCst), 1);
        assert_eq!(g.snapshot().negative_hits, 2);
        clock.advance(Duration::from_secs(5));
        assert!(matches!(g.get("missing").await, Err(Error::KeyNotFound)));
        assert_eq!(getter.calls.load(Ordering::SeqCst), 2);

        let no_negative = GroupOptions {
            negative_ttl: Duration::ZERO,
            ..Default::default()
        };
        let getter = Arc::new(MapGetter::default());
        let g = group(getter.clone(), no_negative, clock);
        let _ = g.get("missing").await;
        let _ = g.get("missing").await;
        assert_eq!(
            getter.calls.load(Ordering::SeqCst),
            2,
            "negative TTL 0 disables it"
        );
    }

    #[tokio::test]
    async fn errors_are_not_cached_and_limits_are_enforced() {
        let getter = Arc::new(MapGetter::default());
        let clock = Arc::new(ManualClock::new(0));
        let options = GroupOptions {
            max_key_bytes: 8,
            max_value_bytes: 1024,
            ..Default::default()
        };
        let g = group(getter.clone(), options, clock);
        assert!(matches!(g.get("boom").await, Err(Error::Internal(_))));
        assert!(matches!(g.get("boom").await, Err(Error::Internal(_))));
        assert_eq!(
            getter.calls.load(Ordering::SeqCst),
            2,
            "failures are retried, not cached"
        );
        assert!(matches!(g.get("").await, Err(Error::BadRequest(_))));
        assert!(matches!(
            g.get("123456789").await,
            Err(Error::KeyTooLarge { len: 9, limit: 8 })
        ));
        assert!(matches!(
            g.get("big").await,
            Err(Error::ValueTooLarge {
                len: 2048,
                limit: 1024
            })
        ));
        let s = g.snapshot();
        assert_eq!((s.getter_errors, s.cache_items), (2, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_getter_times_out_with_504() {
        let getter = Arc::new(MapGetter {
            delay: Some(Duration::from_secs(30)),
            ..Default::default()
        });
        let options = GroupOptions {
            load_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let g = group(getter, options, Arc::new(ManualClock::new(0)));
        let err = g.get("slow").await.unwrap_err();
        assert!(matches!(err, Error::Timeout(_)), "{err:?}");
        assert_eq!(err.status(), 504);
    }

    #[tokio::test]
    async fn the_byte_budget_bounds_the_main_cache() {
        let getter = Arc::new(MapGetter::default());
        let options = GroupOptions {
            cache_bytes: 4096,
            ..Default::default()
        };
        let g = group(getter, options, Arc::new(ManualClock::new(0)));
        for i in 0..200 {
            g.get(&format!("key{i:04}")).await.unwrap();
        }
        let s = g.snapshot();
        assert!(s.cache_bytes <= 4096, "{s:?}");
        assert!(s.cache_items < 200, "{s:?}");
        assert!(s.cache_evictions > 0, "{s:?}");
    }

    /// The other node, in process: a real `Group` answering as the owner.
    #[derive(Debug)]
    struct InProcessPeer {
        owner: Arc<Group>,
        fail: std::sync::atomic::AtomicBool,
        invalidations: AtomicUsize,
    }

    impl RemotePeer for InProcessPeer {
        fn id(&self) -> &str {
            "owner"
        }
        fn get<'a>(
            &'a self,
            _g: &'a str,
            key: &'a str,
        ) -> BoxFuture<'a, Result<Option<PeerEntry>>> {
            Box::pin(async move {
                if self.fail.load(Ordering::SeqCst) {
                    return Err(Error::Internal("peer down".into()));
                }
                self.owner.get_as_owner(key).await
            })
        }
        fn set<'a>(&'a self, _g: &'a str, key: &'a str, e: PeerEntry) -> BoxFuture<'a, Result<()>> {
            Box::pin(async move { self.owner.set_as_owner(key, e) })
        }
        fn delete<'a>(&'a self, _g: &'a str, key: &'a str) -> BoxFuture<'a, Result<()>> {
            Box::pin(async move { self.owner.remove_as_owner(key) })
        }
        fn invalidate<'a>(&'a self, _g: &'a str, keys: &'a [String]) -> BoxFuture<'a, Result<()>> {
            Box::pin(async move {
                self.invalidations.fetch_add(1, Ordering::SeqCst);
                self.owner.invalidate(keys);
                Ok(())
            })
        }
    }

    /// Sends keys starting with "r" to the remote peer; this node owns the rest.
    #[derive(Debug)]
    struct PrefixPicker(Arc<InProcessPeer>);

    impl PeerPicker for PrefixPicker {
        fn pick(&self, key: &str) -> Option<Arc<dyn RemotePeer>> {
            key.starts_with('r')
                .then(|| self.0.clone() as Arc<dyn RemotePeer>)
        }
        fn others(&self) -> Vec<Arc<dyn RemotePeer>> {
            vec![self.0.clone()]
        }
    }

    fn pair() -> (Group, Arc<MapGetter>, Arc<MapGetter>, Arc<InProcessPeer>) {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let owner_getter = Arc::new(MapGetter::default());
        let owner = Arc::new(group(
            owner_getter.clone(),
            GroupOptions::default(),
            clock.clone(),
        ));
        let peer = Arc::new(InProcessPeer {
            owner,
            fail: Default::default(),
            invalidations: AtomicUsize::new(0),
        });
        let local_getter = Arc::new(MapGetter::default());
        let local = Group::clustered(
            "g",
            local_getter.clone(),
            GroupOptions::default(),
            clock,
            Arc::new(PrefixPicker(peer.clone())),
        );
        (local, local_getter, owner_getter, peer)
    }

    #[tokio::test]
    async fn a_key_owned_elsewhere_is_fetched_from_its_owner_and_kept_hot() {
        let (local, local_getter, owner_getter, _peer) = pair();
        assert_eq!(
            local.get("remote-1").await.unwrap(),
            Bytes::from("v:remote-1")
        );
        assert_eq!(
            local.get("remote-1").await.unwrap(),
            Bytes::from("v:remote-1")
        );
        assert_eq!(owner_getter.calls.load(Ordering::SeqCst), 1);
        assert_eq!(local_getter.calls.load(Ordering::SeqCst), 0);
        let s = local.snapshot();
        assert_eq!(
            (s.peer_loads, s.hot_hits, s.cache_items, s.hot_items),
            (1, 1, 0, 1)
        );
        // Keys this node owns still load locally.
        local.get("mine").await.unwrap();
        assert_eq!(local_getter.calls.load(Ordering::SeqCst), 1);
        // "No such key" from the owner is an answer, remembered briefly.
        assert!(matches!(
            local.get("r-missing").await,
            Err(Error::KeyNotFound)
        ));
        assert!(matches!(
            local.get("r-missing").await,
            Err(Error::KeyNotFound)
        ));
        assert_eq!(owner_getter.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failing_owner_does_not_fail_the_request() {
        let (local, local_getter, owner_getter, peer) = pair();
        peer.fail.store(true, Ordering::SeqCst);
        assert_eq!(
            local.get("remote-2").await.unwrap(),
            Bytes::from("v:remote-2")
        );
        assert_eq!(
            local_getter.calls.load(Ordering::SeqCst),
            1,
            "loaded locally instead"
        );
        assert_eq!(owner_getter.calls.load(Ordering::SeqCst), 0);
        assert_eq!(local.snapshot().peer_errors, 1);
    }

    #[tokio::test]
    async fn set_and_remove_go_to_the_owner_which_invalidates_the_others() {
        let (local, _local_getter, owner_getter, peer) = pair();
        local.get("remote-3").await.unwrap();
        local
            .set("remote-3", Bytes::from_static(b"new"), None)
            .await
            .unwrap();
        assert_eq!(
            peer.owner.get("remote-3").await.unwrap(),
            Bytes::from_static(b"new")
        );
        assert_eq!(
            local.get("remote-3").await.unwrap(),
            Bytes::from_static(b"new"),
            "no stale hot copy"
        );
        local.remove("remote-3").await.unwrap();
        assert_eq!(
            local.get("remote-3").await.unwrap(),
            Bytes::from("v:remote-3"),
            "reloaded from the getter"
        );
        assert_eq!(owner_getter.calls.load(Ordering::SeqCst), 2);

        // A set this node owns invalidates the other node's copies.
        local
            .set("mine", Bytes::from_static(b"x"), None)
            .await
            .unwrap();
        tokio::task::yield_now().await;
        for _ in 0..100 {
            if peer.invalidations.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(peer.invalidations.load(Ordering::SeqCst), 1);
        assert_eq!(local.get("mine").await.unwrap(), Bytes::from_static(b"x"));
    }
}
