//! Membership: which nodes make up the cluster, from a fixed list (`--peers`) or from etcd.
//!
//! Whatever the source, a [`Membership`] publishes one thing: the current member list, sorted,
//! deduplicated and always including this node, on a [`tokio::sync::watch`] channel. The ring is
//! rebuilt from it whenever it changes.
//!
//! - [`Membership::fixed`]: the list given at startup; it never changes.
//! - [`Membership::polled`]: a file of addresses or DNS names, read again every few seconds
//!   (see [`polled`]).
//! - [`Membership::etcd`]: each node registers `{prefix}{id}` under a lease kept alive in the
//!   background, watches the prefix and republishes the list on every change (see [`etcd`] for
//!   what happens when etcd goes away or the lease is lost).

pub mod etcd;
pub mod polled;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use etcd::{EtcdOptions, RegistryCounters, RegistryKey};
pub use polled::PeerSource;

/// One cache node as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// Stable name of the node; what the ring hashes, so every node must agree on it.
    pub id: String,
    /// `host:port` of the node's HTTP API, where peers send their requests.
    pub addr: String,
}

impl Member {
    /// A member named `id`, reachable at `addr` (`host:port`).
    pub fn new(id: impl Into<String>, addr: impl Into<String>) -> Member {
        Member {
            id: id.into(),
            addr: addr.into(),
        }
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.addr)
    }
}

/// Where this node stands with the membership source: for logs, `/api/v1/cluster` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegistrationState {
    /// A fixed member list; nothing to register with.
    Static,
    /// Registering with etcd: at startup, or again after the lease or key was lost.
    Registering,
    /// Registered, the lease kept alive and the registry watched.
    Registered,
    /// etcd does not answer: the last known member list is kept while the node retries.
    Unreachable,
}

impl RegistrationState {
    /// Every state, in the order of the lifecycle (the series of `geecache_registration_state`).
    pub const ALL: [RegistrationState; 4] = [
        RegistrationState::Static,
        RegistrationState::Registering,
        RegistrationState::Registered,
        RegistrationState::Unreachable,
    ];

    /// A stable lowercase name (`"static"`, `"registering"`, `"registered"`, `"unreachable"`).
    pub fn as_str(self) -> &'static str {
        match self {
            RegistrationState::Static => "static",
            RegistrationState::Registering => "registering",
            RegistrationState::Registered => "registered",
            RegistrationState::Unreachable => "unreachable",
        }
    }
}

impl serde::Serialize for RegistrationState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl fmt::Display for RegistrationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// [`RegistryCounters`] read at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RegistryCounts {
    /// Registry entries rejected (not a registration, not under its own id's key, another
    /// scheme, past the member cap).
    pub rejected: u64,
    /// Times this node's own entry was found overwritten and written back.
    pub restored: u64,
}

/// Why membership could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// `EtcdOptions::endpoints` is empty.
    #[error(
        "no etcd endpoints given: pass --etcd-endpoints (GEECACHE_ETCD_ENDPOINTS), \
         e.g. http://127.0.0.1:2379, or use --peers for a static cluster"
    )]
    NoEndpoints,

    /// A peers file cannot be read at startup.
    #[error("{0}")]
    Source(String),

    /// The options cannot work (an endpoint that is not a URL, an empty prefix, ...).
    #[error("invalid etcd options: {0}")]
    InvalidOptions(String),

    /// etcd did not answer the first registration within the connect timeout.
    #[error(
        "cannot reach etcd at {endpoints} within {timeout:?} ({reason}); \
         check that etcd is running and that --etcd-endpoints (GEECACHE_ETCD_ENDPOINTS) \
         points at it, or use --peers for a static cluster"
    )]
    Unreachable {
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// How long startup waited (`EtcdOptions::connect_timeout`).
        timeout: Duration,
        /// What the last attempt ran into.
        reason: String,
    },
}

/// A live view of the cluster's membership. Always includes this node.
///
/// A cheap handle (an `Arc` inside): clone it freely. With etcd, a background task owns the
/// client; the handle only reads what it publishes. Dropping the last handle without
/// [`Membership::shutdown`] asks the task to deregister in the background.
#[derive(Debug, Clone)]
pub struct Membership {
    /// Shared by all clones, so any of them can shut the task down.
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The published member list; cloned out to every caller of [`Membership::members`].
    members: watch::Receiver<Vec<Member>>,
    /// The published registration state.
    state: watch::Receiver<RegistrationState>,
    /// For a fixed list: the sender, kept alive so `changed()` waits forever instead of
    /// reporting a closed channel (which would make a `select!` loop spin).
    _fixed: Option<watch::Sender<Vec<Member>>>,
    /// For etcd: the background task that registers, keeps alive and watches.
    task: Option<etcd::Task>,
    /// For a polled source: the task that reads it again; aborted when the last handle goes.
    poller: Option<tokio::task::JoinHandle<()>>,
    /// For etcd: what the task counted.
    counters: Option<Arc<RegistryCounters>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(poller) = &self.poller {
            poller.abort();
        }
    }
}

impl Membership {
    /// A membership that never changes: `self_member` plus `peers` (as from `--peers`).
    ///
    /// `peers` may include this node; duplicates are dropped (see [`Membership::members`]).
    pub fn fixed(self_member: Member, peers: Vec<Member>) -> Membership {
        let (tx, rx) = watch::channel(normalize(&self_member, peers));
        let (_, state) = watch::channel(RegistrationState::Static);
        Membership {
            inner: Arc::new(Inner {
                members: rx,
                state,
                _fixed: Some(tx),
                task: None,
                poller: None,
                counters: None,
            }),
        }
    }

    /// A membership read from `source` (a peers file, or DNS names) now and every `every`;
    /// see [`polled`].
    ///
    /// # Errors
    /// [`DiscoveryError::Source`] when the file cannot be read at startup. DNS that does not
    /// answer yet is not an error: the node starts alone and picks the others up later.
    pub async fn polled(
        self_member: Member,
        source: PeerSource,
        every: Duration,
    ) -> Result<Membership, DiscoveryError> {
        let first = match polled::read(&source).await {
            Ok(addrs) => addrs,
            Err(e) if matches!(source, PeerSource::Dns(_)) => {
                tracing::warn!(%source, error = %e, "cannot resolve the peers yet; starting alone");
                Vec::new()
            }
            Err(e) => return Err(DiscoveryError::Source(format!("{source}: {e}"))),
        };
        let (members, poller) = polled::start(self_member, source, every, first);
        let (_, state) = watch::channel(RegistrationState::Static);
        Ok(Membership {
            inner: Arc::new(Inner {
                members,
                state,
                _fixed: None,
                task: None,
                poller: Some(poller),
                counters: None,
            }),
        })
    }

    /// Registers this node in etcd and follows the registry; see the [`etcd`] module docs.
    ///
    /// Returns once the node is registered, the lease is kept alive and the registry is
    /// watched, so [`Membership::members`] already holds every registered node.
    ///
    /// # Errors
    /// [`DiscoveryError::Unreachable`] if etcd does not answer within
    /// `options.connect_timeout`; [`DiscoveryError::NoEndpoints`] or
    /// [`DiscoveryError::InvalidOptions`] for options that cannot work.
    pub async fn etcd(
        self_member: Member,
        options: EtcdOptions,
    ) -> Result<Membership, DiscoveryError> {
        let started = etcd::start(self_member, options).await?;
        Ok(Membership {
            inner: Arc::new(Inner {
                members: started.members,
                state: started.state,
                _fixed: None,
                task: Some(started.task),
                poller: None,
                counters: Some(started.counters),
            }),
        })
    }

    /// The member list, now and as it changes: sorted by id, one entry per id, always
    /// including this node (with its own address, whatever others claim for its id).
    pub fn members(&self) -> watch::Receiver<Vec<Member>> {
        self.inner.members.clone()
    }

    /// Where this node stands with the membership source.
    pub fn state(&self) -> RegistrationState {
        *self.inner.state.borrow()
    }

    /// Registry entries rejected, and times this node's own entry was written back (both 0
    /// without etcd); see the [`etcd`] module docs.
    pub fn registry_counts(&self) -> RegistryCounts {
        self.inner
            .counters
            .as_ref()
            .map_or_else(RegistryCounts::default, |c| RegistryCounts {
                rejected: c.rejected.load(std::sync::atomic::Ordering::Relaxed),
                restored: c.restored.load(std::sync::atomic::Ordering::Relaxed),
            })
    }

    /// Leaves the cluster: with etcd, stops the keepalive, deletes this node's key and revokes
    /// its lease, so the other nodes drop it at once rather than after the lease TTL.
    ///
    /// Takes at most a few seconds (about 3 s), even when etcd is down; the lease then expires
    /// on its own. Shuts the task down for every clone of this handle. A no-op for a fixed
    /// list.
    pub async fn shutdown(self) {
        if let Some(task) = &self.inner.task {
            task.shutdown().await;
        }
        if let Some(poller) = &self.inner.poller {
            poller.abort();
        }
    }

    /// Test support: stops the background task as a crash would, without deregistering, so
    /// the key stays until its lease expires.
    #[doc(hidden)]
    pub fn abort_without_deregistering(self) {
        if let Some(task) = &self.inner.task {
            task.abort();
        }
    }
}

/// The published form of a member list: `me` plus `others`, sorted by id, one entry per id.
///
/// Entries claiming this node's id are dropped in favour of `me` (this node knows its own
/// address best); among other entries sharing an id, the smallest address wins, so every node
/// settles on the same list whatever order it learnt them in.
fn normalize(me: &Member, others: impl IntoIterator<Item = Member>) -> Vec<Member> {
    let mut by_id: BTreeMap<String, Member> = BTreeMap::new();
    for member in others {
        if member.id == me.id {
            continue;
        }
        match by_id.get(&member.id) {
            Some(kept) if kept.addr <= member.addr => {}
            _ => {
                by_id.insert(member.id.clone(), member);
            }
        }
    }
    by_id.insert(me.id.clone(), me.clone());
    by_id.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, addr: &str) -> Member {
        Member::new(id, addr)
    }

    #[test]
    fn fixed_includes_self_sorted_and_deduplicated() {
        let me = m("b", "127.0.0.1:2");
        let peers = vec![
            m("c", "127.0.0.1:3"),
            m("a", "127.0.0.1:1"),
            m("c", "127.0.0.1:3"),
            m("b", "10.0.0.9:9"),
        ];
        let membership = Membership::fixed(me, peers);
        assert_eq!(
            *membership.members().borrow(),
            vec![
                m("a", "127.0.0.1:1"),
                m("b", "127.0.0.1:2"),
                m("c", "127.0.0.1:3")
            ]
        );
        assert_eq!(membership.state(), RegistrationState::Static);
    }

    #[test]
    fn conflicting_ids_settle_on_the_same_entry_in_any_order() {
        let me = m("me", "127.0.0.1:1");
        let one = normalize(&me, vec![m("x", "127.0.0.1:9"), m("x", "127.0.0.1:8")]);
        let two = normalize(&me, vec![m("x", "127.0.0.1:8"), m("x", "127.0.0.1:9")]);
        assert_eq!(one, two);
        assert_eq!(one, vec![m("me", "127.0.0.1:1"), m("x", "127.0.0.1:8")]);
    }

    #[test]
    fn registration_state_names_are_stable() {
        assert_eq!(RegistrationState::Unreachable.to_string(), "unreachable");
        assert_eq!(RegistrationState::Static.as_str(), "static");
    }
}
