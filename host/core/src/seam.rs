//! The seams: every trait a plugin runtime or a peer protocol implements for core, and the
//! values that cross them. Core calls these and knows nothing of what is behind them (wasm,
//! HTTP, protobuf); the host crate implements them.
//!
//! - [`Getter`]: how a group loads a key it does not hold (the source of truth).
//! - [`Entries`]: entries by group and key (get / set / delete of a [`PeerEntry`]), the one
//!   shape the next three share:
//!   - [`Storage`]: a tier below memory where a group keeps the entries it owns;
//!   - [`PeerService`]: what a node offers its peers, as the keys' owner (implemented by
//!     [`crate::group::Groups`], served by the host's peer protocol);
//!   - [`RemotePeer`]: that service on another node, asked over the network (the host's peer
//!     client); [`PeerPicker`] says which node owns a key.
//! - [`Compressor`]: a codec (built-in or a plugin).

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;

pub use crate::compression::Compressor;
use crate::error::Result;

/// What a getter found for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// The key exists.
    Found {
        /// The value's bytes.
        value: Bytes,
        /// Absolute expiry (ms since the Unix epoch) chosen by the source, if any.
        expires_at_ms: Option<u64>,
        /// How long past its expiry the value may be answered stale, chosen by the source
        /// (`None`: the group's `stale`).
        stale_ms: Option<u32>,
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

/// Entries by group and key, as stored bytes: the shape a storage backend, the service a node
/// offers its peers and a remote owner share.
pub trait Entries: Send + Sync + fmt::Debug + 'static {
    /// The entry under `key` of `group`; `Ok(None)`: there is none.
    fn get<'a>(&'a self, group: &'a str, key: &'a str) -> BoxFuture<'a, Result<Option<PeerEntry>>>;
    /// Stores `entry` under `key` of `group`, replacing any previous one.
    fn set<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        entry: PeerEntry,
    ) -> BoxFuture<'a, Result<()>>;
    /// Removes `key` of `group`; removing a missing key is not an error.
    fn delete<'a>(&'a self, group: &'a str, key: &'a str) -> BoxFuture<'a, Result<()>>;
}

/// What a node offers its peers: its [`Entries`] as the keys' owner (a get loads a miss from
/// cache, storage or getter; a set or delete then invalidates the other nodes' copies), and
/// the dropping of its own copies. Implemented by the node's groups ([`crate::group::Groups`]);
/// the host's peer router serves it, after it has authenticated the request and decoded the
/// path and body (so `group` and `key` are never empty).
pub trait PeerService: Entries {
    /// Drops any local copy of `keys` (hot cache) without telling anyone.
    fn invalidate<'a>(&'a self, group: &'a str, keys: &'a [String]) -> BoxFuture<'a, Result<()>>;

    /// What this node holds in memory for `key` (its own value or a copy, fresh or within its
    /// stale window), never loading it: how a key's new owner warms up from its previous one
    /// after the ring changed. `Ok(None)`: nothing held. The default holds nothing.
    fn peek<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<PeerEntry>>> {
        let _ = (group, key);
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Takes entries a stopping node hands over (`entries` of `group`: values of its keys whose
    /// next owner this node is, and its copies of keys this node owns), keeping each it can
    /// check; returns how many it kept. Never loads, never writes through, never invalidates: a handed-over entry is a
    /// copy, as a hot one is. The default keeps none.
    fn take_handoff<'a>(
        &'a self,
        group: &'a str,
        entries: Vec<(String, PeerEntry)>,
    ) -> BoxFuture<'a, Result<usize>> {
        let _ = (group, entries);
        Box::pin(std::future::ready(Ok(0)))
    }
}

/// Another node of the cluster: the [`PeerService`] it offers, asked over the network.
pub trait RemotePeer: PeerService {
    /// The node's ring name (its advertised address).
    fn id(&self) -> &str;
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

/// A tier below memory where a group keeps the entries it owns (a disk, a remote store): the
/// extension point for storage backends. Its [`Entries`] may return expired entries (the group
/// checks).
pub trait Storage: Entries {
    /// The backend's name, for stats and logs.
    fn name(&self) -> &str;
    /// Removes every entry of `group` (see [`crate::group::Group::flush`]).
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

    /// For a key this node owns: where its value may still be held after the ring last
    /// changed (or, on a node that just joined, in the ring of the others), while the change
    /// is recent (`--handoff-window`): the key's owner under that ring first, then the next
    /// node for it there (which may hold a hot copy), at most [`HANDOFF_CANDIDATES`] nodes,
    /// never this one. The new owner peeks at them, in order, before it loads. The default:
    /// none.
    fn previous_owners(&self, key: &str) -> Vec<Arc<dyn RemotePeer>> {
        let _ = key;
        Vec::new()
    }

    /// The node that owns `key` when its owner is gone (the next node for it on the ring),
    /// unless that is this node: where a stopping owner hands the key's value over, and so
    /// where a node whose request to the owner failed looks for it before loading. The
    /// default: none.
    fn successor(&self, key: &str) -> Option<Arc<dyn RemotePeer>> {
        let _ = key;
        None
    }

    /// What a new owner's peeks at [`PeerPicker::previous_owners`] found for one key: a value
    /// (`found`) or nothing. A picker may end its window early once peeks stop paying (a
    /// cluster that started cold holds nothing to hand over). The default: nothing.
    fn handoff_outcome(&self, found: bool) {
        let _ = found;
    }
}

/// Most nodes a key's new owner peeks at before it loads the key ([`PeerPicker::previous_owners`]).
pub const HANDOFF_CANDIDATES: usize = 2;
