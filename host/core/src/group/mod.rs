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
//! Files: `read.rs` (the read API), `load.rs` (the load paths), `handoff.rs` (a stopping
//! node's entries handed to their next owners), `write.rs` (the write path and flushes), `generations.rs` (write generations), `options.rs` (options and builder),
//! `registry.rs` (the node's groups), `reply.rs` (answers in an HTTP content coding),
//! `tier.rs` (the storage tier's write queues), `stats.rs` (counters), `metrics.rs` (their
//! `/metrics` table).
//!
//! The group talks only to traits ([`Getter`], [`Storage`], [`PeerPicker`], [`RemotePeer`],
//! [`crate::compression::Compressor`]), never to wasmtime or HTTP, so native and wasm/HTTP parts
//! are interchangeable.

mod generations;
mod handoff;
mod load;
pub mod metrics;
mod options;
mod read;
mod registry;
mod reply;
mod stats;
mod tier;
mod write;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::cache::{Cache, Clock, Doorkeeper, MissReason};
use crate::compression::{Codecs, Encoding, Stored};
use crate::error::Error;
use crate::singleflight::Singleflight;

pub use crate::seam::{
    Entries, Getter, Loaded, OwnerItem, PeerEntry, PeerPicker, PeerService, RemotePeer, Storage,
};
pub use handoff::{HANDOFF_BATCH_BYTES, HANDOFF_BATCH_ENTRIES, HandedOff};
pub use options::{GroupBuilder, GroupOptions};
pub use registry::Groups;
pub use reply::{Reply, Source};
pub use stats::{Counters, GroupSnapshot, GroupStats};
pub use tier::Drained;
use tier::StorageTier;

/// A key's answer from its owner, fetched ahead of its get by [`Group::owner_answers`].
#[derive(Debug, Clone)]
pub struct OwnerAnswer {
    /// The owner's ring name.
    peer: String,
    /// What it answered for the key, or why the request failed.
    item: std::result::Result<Option<PeerEntry>, String>,
}

/// Where an answer came from, so the singleflight leader knows which cache to fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CacheKind {
    /// This node owns the key: the main cache.
    Main,
    /// A copy of another node's key: the hot cache.
    Hot,
}

impl CacheKind {
    /// What an answer from this tier's cache reports as its source.
    fn source(self) -> Source {
        match self {
            CacheKind::Main => Source::Main,
            CacheKind::Hot => Source::Hot,
        }
    }

    /// The tier's name in spans and metric labels.
    fn label(self) -> &'static str {
        match self {
            CacheKind::Main => "main",
            CacheKind::Hot => "hot",
        }
    }
}

/// What a cache hit answers.
pub(super) enum CachedValue {
    /// The stored payload as it is, in a content coding the client accepts.
    Encoded(Reply),
    /// The plain value with its expiry, or a remembered "no such key".
    Plain(Found),
}

/// What a client load produced: the plain value with its expiry, or "no such key".
type Found = Option<(Bytes, Option<u64>)>;

/// A client load's result and where it came from.
type Sourced = (Found, Source);

/// What [`Inner::lookup`] found in the caches.
pub(super) enum Looked {
    /// A live entry of `tier`.
    Hit {
        tier: CacheKind,
        answer: CachedValue,
        /// The entry's expiry, for refresh-ahead.
        expires_at_ms: Option<u64>,
    },
    /// An entry past its expiry, within its stale window.
    Stale { answer: CachedValue },
    /// Neither tier can answer; the main tier's reason.
    Miss(MissReason),
}

/// What an owner load produced: the stored value with its expiry, or "no such key".
type FoundStored = Option<(Stored, Option<u64>)>;

/// What an owner's flight shares with everyone waiting on it (its peers' requests and its
/// own clients' misses): the stored value with its expiry, which peers are answered; the
/// plain value when the flight loaded it (`None` when it found the key already cached); and
/// where it came from.
#[derive(Clone)]
struct OwnerLoad {
    /// The stored value with its expiry, or "no such key".
    stored: FoundStored,
    /// The plain value, when this flight loaded it.
    plain: Option<Bytes>,
    /// Where the value came from.
    source: Source,
}

/// A value loaded at this node: plain for the caller, stored for the caches and peers.
struct Value {
    /// The value as the getter returned it.
    plain: Bytes,
    /// The value as this group stores it.
    stored: Stored,
    /// Absolute expiry, if any.
    expires_at_ms: Option<u64>,
    /// The stale window its getter chose (`None`: the group's).
    stale_ms: Option<u32>,
}

/// Everything a load needs, shared with in-flight loads (which outlive a cancelled caller).
struct Inner {
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
    inner: Arc<Inner>,
    /// Collapses concurrent client misses of one key into one load (and background refreshes
    /// with them).
    flights: Singleflight<Sourced, Error>,
    /// Collapses concurrent loads of keys this node owns: its peers' requests and its own
    /// clients' misses, so the owner calls the getter once for both. Separate from `flights`
    /// (which forward to another node) and never forwarding itself, so two nodes whose rings
    /// briefly disagree cannot wait on each other.
    owner_flights: Singleflight<OwnerLoad, Error>,
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("name", &self.inner.name)
            .field("getter", &self.inner.getter.name())
            .field("storage", &self.inner.storage)
            .field("options", &self.inner.options)
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
        value: stored.framed(),
        codec: stored.codec().name().to_owned(),
        expires_at_ms,
    }
}

/// Shards of [`Inner::generations`]: enough that unrelated writes rarely stop a load from caching.
const GENERATION_SHARDS: usize = 256;

fn len64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// What the built-in codecs count a decode of `stored` as when they pick its lane: its
/// payload times four, the output they plan for (never less than the work).
fn decoding_len(stored: &Stored) -> usize {
    stored.len().saturating_mul(4)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
