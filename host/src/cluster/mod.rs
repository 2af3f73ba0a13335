//! The cluster as a group sees it: membership (static list or etcd) → consistent-hash ring →
//! one peer client per other node, behind the group's [`PeerPicker`].
//!
//! Ring members are the nodes' advertised addresses, so every node computes the same owner for
//! the same member list whatever their ids. A background task rebuilds the view at once on every
//! membership change (etcd watch), keeping the clients (and their pooled connections) of nodes
//! that stay. While etcd is unreachable the membership keeps publishing the last known list, so
//! the ring stays as it was.
//!
//! Every request to a peer is timed into `geecache_peer_request_duration_seconds` (by peer,
//! operation and outcome) and runs in a `geecache.peer.<op>` span.
//!
//! Files: this one holds the cluster, its ring and its handoff window; `peer.rs` one other
//! node ([`RemotePeer`]); `coalesce.rs` coalesces gets to one owner into batches
//! (`--peer-coalesce`); `metrics.rs` the cluster's `/metrics` table.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::discovery::{Member, Membership, RegistrationState};
use crate::error::Result;
use crate::group::{PeerPicker, RemotePeer};
use crate::peer::{ClusterSecret, PeerClient, PeerHttp};
use crate::ring::{DEFAULT_REPLICAS, Ring};
use crate::seam::HANDOFF_CANDIDATES;
use crate::telemetry::Metrics;

mod coalesce;
pub mod metrics;
mod peer;

use coalesce::Coalescer;
pub use coalesce::DEFAULT_MAX_KEYS as DEFAULT_COALESCE_KEYS;
use peer::{Peer, PeerCore};

/// The ring and the clients built from one member list.
#[derive(Debug)]
struct View {
    /// Who owns which key.
    ring: Ring,
    /// Every member but this node, by address.
    peers: HashMap<String, Arc<Peer>>,
    /// The member list the view was built from.
    members: Vec<Member>,
}

/// The ring before the last change, for warm handoff: a key's new owner peeks at the node
/// that owned it under this ring (see [`PeerPicker::previous_owners`]).
#[derive(Debug)]
struct Previous {
    /// Who owned which key.
    ring: Ring,
    /// The clients of that ring's nodes (a node that left may still answer during its
    /// shutdown grace).
    peers: HashMap<String, Arc<Peer>>,
    /// When the window for asking ends.
    until: Instant,
    /// Keys in a row whose peeks found nothing (see [`Cluster::set_handoff_max_misses`]).
    misses_in_a_row: AtomicU64,
}

/// How long after a ring change (or after this node started) a key's new owner peeks at its
/// previous owner before loading it (`--handoff-window`).
pub const DEFAULT_HANDOFF_WINDOW: Duration = Duration::from_secs(60);

/// Keys in a row whose peeks at their previous owners found nothing, after which the handoff
/// window ends early (`--handoff-max-misses`): a cluster that started cold, or whose previous
/// owners lost their memory, has nothing to hand over, and every miss would pay a peer round
/// trip per candidate for the whole window.
pub const DEFAULT_HANDOFF_MAX_MISSES: u64 = 256;

/// Most bytes (keys and stored values) a stopping node hands to their next owners
/// (`--handoff-bytes`).
pub const DEFAULT_HANDOFF_BYTES: u64 = 64 * 1024 * 1024;

/// What `/api/v1/cluster` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterSnapshot {
    /// This node's advertised address.
    #[serde(rename = "self")]
    pub self_addr: String,
    /// `static`, `registering`, `registered` or `unreachable` (etcd down: last ring kept).
    pub registration: String,
    /// Virtual nodes per member.
    pub replicas: usize,
    /// The ring's members (id and address), this node included.
    pub members: Vec<Member>,
}

/// Membership, ring and peer clients of one node. Cheap to share (`Arc<Cluster>`).
#[derive(Debug)]
pub struct Cluster {
    /// This node's advertised address; keys it owns are loaded locally.
    self_addr: String,
    /// Signs peer requests when the cluster has a secret.
    secret: Option<ClusterSecret>,
    /// Per-request time limit of peer clients.
    peer_timeout: Duration,
    /// Shared connection pool of every peer client.
    http: PeerHttp,
    /// The current view; replaced as a whole on membership changes.
    view: RwLock<Arc<View>>,
    /// Where the members come from; `None` until [`Cluster::join`].
    membership: RwLock<Option<Membership>>,
    /// The task applying membership changes.
    watcher: RwLock<Option<JoinHandle<()>>>,
    /// The node's meters, handed to every peer client.
    metrics: Metrics,
    /// Most keys in one coalesced batch of gets (`--peer-coalesce`; 0 or 1: none).
    coalesce_keys: AtomicUsize,
    /// Per-request time limit of a peer PUT or DELETE, in milliseconds (see
    /// [`Cluster::set_write_timeout`]).
    write_timeout_ms: AtomicU64,
    /// Counts the ring's changes, from 1 (see [`Cluster::ring_version`]).
    ring_version: AtomicU64,
    /// This ring's identity, sent with every peer request and checked on those received.
    ring_stamp: Arc<crate::peer::RingStamp>,
    /// The ring before the last change while its handoff window lasts (see [`Previous`]).
    previous: RwLock<Option<Arc<Previous>>>,
    /// Whether the ring has held other nodes since this node started (see [`Cluster::join`]).
    joined: std::sync::atomic::AtomicBool,
    /// How long a previous ring is asked for keys' values, in milliseconds (0: never).
    handoff_window_ms: AtomicU64,
    /// Keys in a row found nowhere that end a handoff window early (0: never).
    handoff_max_misses: AtomicU64,
    /// Handoff windows ended early by [`Cluster::handoff_max_misses`].
    handoff_windows_ended: AtomicU64,
    /// What a peer's answer may hold: the largest value and the batch budget (see
    /// [`Cluster::set_answer_limits`]); 0 until set (no cap but the client's default).
    answer_limits: [AtomicUsize; 2],
}

/// The identity of `ring` as peers compare it: a hash of its members (sorted and deduplicated
/// by [`Ring::new`], so the same on every node that sees the same members), never 0.
fn ring_identity(ring: &Ring) -> u64 {
    xxhash_rust::xxh3::xxh3_64(ring.members().join("\n").as_bytes()).max(1)
}

/// Whole milliseconds of `d`, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Cluster {
    /// A cluster of this node alone, until [`Cluster::join`] brings the members in.
    pub fn new(
        self_id: &str,
        self_addr: &str,
        secret: Option<ClusterSecret>,
        peer_timeout: Duration,
        metrics: Metrics,
    ) -> Arc<Cluster> {
        Cluster::with_tls(self_id, self_addr, secret, peer_timeout, metrics, None)
    }

    /// [`Cluster::new`] whose `https://` peers must have certificates `peer_tls` trusts.
    pub fn with_tls(
        self_id: &str,
        self_addr: &str,
        secret: Option<ClusterSecret>,
        peer_timeout: Duration,
        metrics: Metrics,
        peer_tls: Option<rustls::ClientConfig>,
    ) -> Arc<Cluster> {
        let http = crate::peer::http_client_with_tls(peer_timeout, peer_tls);
        let cluster = Cluster {
            self_addr: self_addr.to_string(),
            secret,
            peer_timeout,
            http,
            view: RwLock::new(Arc::new(View {
                ring: Ring::new(DEFAULT_REPLICAS, [self_addr.to_string()]),
                peers: HashMap::new(),
                members: vec![Member {
                    id: self_id.to_string(),
                    addr: self_addr.to_string(),
                }],
            })),
            membership: RwLock::new(None),
            watcher: RwLock::new(None),
            metrics,
            coalesce_keys: AtomicUsize::new(coalesce::DEFAULT_MAX_KEYS),
            write_timeout_ms: AtomicU64::new(millis(peer_timeout)),
            ring_version: AtomicU64::new(1),
            ring_stamp: Arc::new(crate::peer::RingStamp::default()),
            previous: RwLock::new(None),
            joined: std::sync::atomic::AtomicBool::new(false),
            handoff_window_ms: AtomicU64::new(millis(DEFAULT_HANDOFF_WINDOW)),
            handoff_max_misses: AtomicU64::new(DEFAULT_HANDOFF_MAX_MISSES),
            handoff_windows_ended: AtomicU64::new(0),
            answer_limits: [AtomicUsize::new(0), AtomicUsize::new(0)],
        };
        cluster
            .ring_stamp
            .set(ring_identity(&cluster.view.read().ring));
        Arc::new(cluster)
    }

    /// Most keys in one batch of the gets to a peer that are coalesced (`--peer-coalesce`; 0
    /// or 1: every get goes alone). Applies to the peers met from now on: set it before
    /// [`Cluster::join`].
    pub fn set_coalesce_keys(&self, keys: usize) {
        self.coalesce_keys.store(keys, Ordering::Relaxed);
    }

    /// Per-request time limit of the PUTs and DELETEs sent to owners (the peer timeout until
    /// set): an owner answers a write once its storage tier has taken it, within its
    /// `--request-timeout`, so a forwarded write should wait that long and a little more.
    /// Applies to the peers met from now on: set it before [`Cluster::join`].
    pub fn set_write_timeout(&self, timeout: Duration) {
        self.write_timeout_ms
            .store(millis(timeout), Ordering::Relaxed);
    }

    /// Caps peers' answers by what was asked (see
    /// [`crate::peer::PeerClientBuilder::answer_limits`]). Applies to the peers met from now
    /// on: set it before [`Cluster::join`].
    pub fn set_answer_limits(&self, max_value_bytes: usize, max_batch_bytes: usize) {
        self.answer_limits[0].store(max_value_bytes, Ordering::Relaxed);
        self.answer_limits[1].store(max_batch_bytes, Ordering::Relaxed);
    }

    /// How long after a ring change a key's new owner asks its previous owner for the value
    /// before loading it (`--handoff-window`; zero: never). Set it before [`Cluster::join`].
    pub fn set_handoff_window(&self, window: Duration) {
        self.handoff_window_ms
            .store(millis(window), Ordering::Relaxed);
    }

    /// After how many keys in a row whose peeks found nothing a handoff window ends early
    /// (`--handoff-max-misses`; 0: it lasts its whole length).
    pub fn set_handoff_max_misses(&self, keys: u64) {
        self.handoff_max_misses.store(keys, Ordering::Relaxed);
    }

    /// Handoff windows ended early because peeks found nothing (see
    /// [`Cluster::set_handoff_max_misses`]).
    pub fn handoff_windows_ended(&self) -> u64 {
        self.handoff_windows_ended.load(Ordering::Relaxed)
    }

    /// Remembers `ring` (and the clients of its nodes) as the previous one for the handoff
    /// window, from now.
    fn remember_previous(&self, ring: Ring, peers: HashMap<String, Arc<Peer>>) {
        let window = Duration::from_millis(self.handoff_window_ms.load(Ordering::Relaxed));
        let previous = (!window.is_zero()).then(|| {
            Arc::new(Previous {
                ring,
                peers,
                until: Instant::now() + window,
                misses_in_a_row: AtomicU64::new(0),
            })
        });
        *self.previous.write() = previous;
    }

    /// Follows `membership` from now on: every change rebuilds the ring at once. A node that
    /// joins warms up from the others: when its ring first holds other nodes (at once, or when
    /// the membership source first lists them), the "previous" ring is the members without
    /// this node, so each key it now owns is first asked of the node that held it while it was
    /// away (a restart at the same address, or a new node).
    pub fn join(self: &Arc<Self>, membership: Membership) {
        let mut members = membership.members();
        self.apply(&members.borrow_and_update().clone());
        let this = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            while members.changed().await.is_ok() {
                let list = members.borrow_and_update().clone();
                let Some(cluster) = this.upgrade() else { break };
                cluster.apply(&list);
            }
        });
        *self.membership.write() = Some(membership);
        if let Some(old) = self.watcher.write().replace(task) {
            old.abort();
        }
    }

    /// Rebuilds the view from `members`, reusing the clients of nodes that stay.
    pub(crate) fn apply(&self, members: &[Member]) {
        let old = self.view.read().clone();
        let mut addrs: Vec<String> = members.iter().map(|m| m.addr.clone()).collect();
        if !addrs.contains(&self.self_addr) {
            addrs.push(self.self_addr.clone());
        }
        let mut peers = HashMap::new();
        for addr in addrs.iter().filter(|a| **a != self.self_addr) {
            let peer = match old.peers.get(addr) {
                Some(p) => p.clone(),
                None => match self.client(addr) {
                    Ok(p) => Arc::new(p),
                    Err(e) => {
                        tracing::error!(peer = %addr, error = %e, "cannot create a client for peer; leaving it off the ring");
                        continue;
                    }
                },
            };
            peers.insert(addr.clone(), peer);
        }
        let ring_members: Vec<String> = addrs
            .into_iter()
            .filter(|a| *a == self.self_addr || peers.contains_key(a))
            .collect();
        let ring = Ring::new(DEFAULT_REPLICAS, ring_members);
        if ring == old.ring {
            return;
        }
        tracing::info!(members = ?ring.members(), "ring updated");
        *self.view.write() = Arc::new(View {
            ring,
            peers,
            members: members.to_vec(),
        });
        let view = self.view.read().clone();
        self.ring_stamp.set(ring_identity(&view.ring));
        if self.joined.swap(true, Ordering::AcqRel) {
            self.remember_previous(old.ring.clone(), old.peers.clone());
        } else {
            // The first ring with others: they held this node's keys while it was away.
            let others = view.ring.members().iter().filter(|a| **a != self.self_addr);
            self.remember_previous(Ring::new(DEFAULT_REPLICAS, others), view.peers.clone());
        }
        // After the new view is in: whoever reads the new version sees the new ring.
        self.ring_version.fetch_add(1, Ordering::AcqRel);
    }

    fn client(&self, addr: &str) -> Result<Peer> {
        let client = PeerClient::builder(addr)
            .timeout(self.peer_timeout)
            .write_timeout(Duration::from_millis(
                self.write_timeout_ms.load(Ordering::Relaxed),
            ))
            .secret(self.secret.clone())
            .ring(self.ring_stamp.clone())
            .http_client(self.http.clone());
        let (value, batch) = (
            self.answer_limits[0].load(Ordering::Relaxed),
            self.answer_limits[1].load(Ordering::Relaxed),
        );
        let client = if value > 0 && batch > 0 {
            client.answer_limits(value, batch)
        } else {
            client
        }
        .build()?;
        Ok(Peer {
            core: Arc::new(PeerCore {
                addr: addr.into(),
                client,
                metrics: self.metrics.clone(),
            }),
            coalescer: Coalescer::new(self.coalesce_keys.load(Ordering::Relaxed)),
        })
    }

    /// What `/api/v1/cluster` shows.
    pub fn snapshot(&self) -> ClusterSnapshot {
        let view = self.view.read().clone();
        ClusterSnapshot {
            self_addr: self.self_addr.clone(),
            registration: self.registration().to_string(),
            replicas: view.ring.replicas(),
            members: view.members.clone(),
        }
    }

    /// Where this node stands with the membership source (`Static` without etcd).
    pub fn registration(&self) -> RegistrationState {
        self.membership
            .read()
            .as_ref()
            .map_or(RegistrationState::Static, Membership::state)
    }

    /// What the etcd registry task counted: entries rejected, own entry written back.
    pub fn registry_counts(&self) -> crate::discovery::RegistryCounts {
        self.membership
            .read()
            .as_ref()
            .map(Membership::registry_counts)
            .unwrap_or_default()
    }

    /// This node's advertised address.
    pub fn self_addr(&self) -> &str {
        &self.self_addr
    }

    /// Whether peer requests are signed (the cluster has a secret).
    pub fn is_signed(&self) -> bool {
        self.secret.is_some()
    }

    /// Sends a signed `POST` of `body` to `path_and_query` on the member at `addr` (an admin
    /// operation across the cluster, such as a plugin rollout), on this node's peer pool and
    /// with its secret: see [`crate::peer::admin::post`].
    ///
    /// # Errors
    /// A transport failure, a timeout or an unsigned answer, as text for an operator.
    pub async fn admin_post(
        &self,
        addr: &str,
        path_and_query: &str,
        body: bytes::Bytes,
        timeout: Duration,
        max_answer: usize,
    ) -> std::result::Result<(u16, bytes::Bytes), String> {
        crate::peer::admin::post(
            &self.http,
            self.secret.as_ref(),
            addr,
            path_and_query,
            body,
            timeout,
            max_answer,
        )
        .await
    }

    /// The ring's members (addresses), this node included.
    pub fn ring_members(&self) -> Vec<String> {
        self.view.read().ring.members().to_vec()
    }

    /// The ring members other than this node: whom a cluster-wide admin operation asks.
    pub fn other_members(&self) -> Vec<String> {
        self.view
            .read()
            .ring
            .members()
            .iter()
            .filter(|a| **a != self.self_addr)
            .cloned()
            .collect()
    }

    /// A number that changes whenever the ring's members do (never 0): what is computed from
    /// the members can be kept until it changes.
    pub fn ring_version(&self) -> u64 {
        self.ring_version.load(Ordering::Acquire)
    }

    /// This node's ring identity and the count of peer requests whose sender's ring differed
    /// (see [`crate::peer::RingStamp`]); the peer routes share it.
    pub fn ring_stamp(&self) -> &Arc<crate::peer::RingStamp> {
        &self.ring_stamp
    }

    /// Whether `f` holds for the address of some member of the ring (this node included).
    pub fn any_member(&self, mut f: impl FnMut(&str) -> bool) -> bool {
        self.view.read().ring.members().iter().any(|addr| f(addr))
    }

    /// Leaves the cluster: stops following changes and deregisters from etcd (bounded).
    pub async fn leave(&self) {
        if let Some(task) = self.watcher.write().take() {
            task.abort();
        }
        let membership = self.membership.write().take();
        if let Some(m) = membership {
            m.shutdown().await;
        }
    }
}

impl PeerPicker for Cluster {
    fn pick(&self, key: &str) -> Option<Arc<dyn RemotePeer>> {
        let view = self.view.read().clone();
        let owner = view.ring.owner(key)?;
        if owner == self.self_addr {
            return None;
        }
        view.peers
            .get(owner)
            .map(|p| p.clone() as Arc<dyn RemotePeer>)
    }

    fn others(&self) -> Vec<Arc<dyn RemotePeer>> {
        let view = self.view.read().clone();
        view.peers
            .values()
            .map(|p| p.clone() as Arc<dyn RemotePeer>)
            .collect()
    }

    fn previous_owners(&self, key: &str) -> Vec<Arc<dyn RemotePeer>> {
        let Some(previous) = self.previous.read().clone() else {
            return Vec::new();
        };
        if Instant::now() >= previous.until {
            return Vec::new();
        }
        let owners = previous.ring.owners(key, HANDOFF_CANDIDATES + 1);
        // Only when this node did not own the key before (it would hold it, or nobody does).
        if owners.first().is_none_or(|o| *o == self.self_addr) {
            return Vec::new();
        }
        let view = self.view.read().clone();
        owners
            .into_iter()
            .filter(|o| *o != self.self_addr)
            .take(HANDOFF_CANDIDATES)
            .filter_map(|o| view.peers.get(o).or_else(|| previous.peers.get(o)).cloned())
            .map(|p| p as Arc<dyn RemotePeer>)
            .collect()
    }

    fn handoff_outcome(&self, found: bool) {
        let Some(previous) = self.previous.read().clone() else {
            return;
        };
        if found {
            previous.misses_in_a_row.store(0, Ordering::Relaxed);
            return;
        }
        let limit = self.handoff_max_misses.load(Ordering::Relaxed);
        let misses = previous.misses_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if limit == 0 || misses != limit {
            return;
        }
        // Only this window: a ring change since may have started another.
        let mut current = self.previous.write();
        if current.as_ref().is_some_and(|p| Arc::ptr_eq(p, &previous)) {
            *current = None;
            drop(current);
            self.handoff_windows_ended.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                keys = misses,
                "warm handoff: the previous owners held none of the last {misses} keys asked; \
                 no more peeks until the ring changes (--handoff-max-misses)"
            );
        }
    }

    fn successor(&self, key: &str) -> Option<Arc<dyn RemotePeer>> {
        let view = self.view.read().clone();
        let next = view.ring.owners(key, 2).into_iter().nth(1)?;
        if next == self.self_addr {
            return None;
        }
        view.peers
            .get(next)
            .map(|p| p.clone() as Arc<dyn RemotePeer>)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_ring_version_changes_with_the_members_only() {
        let me = "127.0.0.1:9001";
        let cluster = Cluster::new(me, me, None, Duration::from_secs(1), Metrics::new(me, &[]));
        let alone = cluster.ring_version();
        assert_ne!(alone, 0);
        cluster.join(Membership::fixed(
            Member::new(me, me),
            vec![Member::new("b", "127.0.0.1:9002")],
        ));
        let two = cluster.ring_version();
        assert_ne!(two, alone, "a member joined");
        cluster.apply(&[Member::new(me, me), Member::new("b", "127.0.0.1:9002")]);
        assert_eq!(cluster.ring_version(), two, "the same members");
        cluster.apply(&[Member::new(me, me)]);
        assert_ne!(cluster.ring_version(), two, "a member left");
        cluster.leave().await;
    }

    #[tokio::test]
    async fn a_key_that_moved_names_its_previous_owner_within_the_window_only() {
        let (me, b, c) = ("127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003");
        let cluster = Cluster::new(me, me, None, Duration::from_secs(1), Metrics::new(me, &[]));
        cluster.set_handoff_window(Duration::from_millis(300));
        let all = [
            Member::new(me, me),
            Member::new("b", b),
            Member::new("c", c),
        ];
        cluster.join(Membership::fixed(Member::new(me, me), all[1..].to_vec()));
        // Just joined: each key this node owns was held by its owner among the others.
        let without_me = Ring::new(DEFAULT_REPLICAS, [b, c]);
        let mine: Vec<String> = (0..200)
            .map(|i| format!("k{i}"))
            .filter(|k| cluster.pick(k).is_none())
            .collect();
        assert!(mine.len() > 30, "{}", mine.len());
        for k in &mine {
            let named: Vec<String> = cluster
                .previous_owners(k)
                .iter()
                .map(|p| p.id().to_owned())
                .collect();
            assert_eq!(
                named,
                without_me.owners(k, 2),
                "{k}: its owner, then the next node"
            );
        }
        // c leaves: c's keys that this node now owns name c, which may still answer during
        // its grace; keys that did not move name nobody.
        let before = Ring::new(DEFAULT_REPLICAS, [me, b, c]);
        cluster.apply(&all[..2]);
        for i in 0..200 {
            let k = format!("k{i}");
            if cluster.pick(&k).is_some() {
                continue;
            }
            let named = cluster
                .previous_owners(&k)
                .first()
                .map(|p| p.id().to_owned());
            let was = before.owner(&k).unwrap();
            assert_eq!(named.as_deref(), (was != me).then_some(was), "{k}");
        }
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(
            mine.iter().all(|k| cluster.previous_owners(k).is_empty()),
            "window over"
        );
        cluster.leave().await;
    }

    #[tokio::test]
    async fn a_window_whose_peeks_find_nothing_ends_early_and_a_hit_resets_the_count() {
        let (me, b, c) = ("127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003");
        let cluster = Cluster::new(me, me, None, Duration::from_secs(1), Metrics::new(me, &[]));
        cluster.set_handoff_max_misses(4);
        cluster.join(Membership::fixed(
            Member::new(me, me),
            vec![Member::new("b", b), Member::new("c", c)],
        ));
        let mine = (0..200)
            .map(|i| format!("k{i}"))
            .find(|k| cluster.pick(k).is_none())
            .unwrap();
        assert!(!cluster.previous_owners(&mine).is_empty(), "just joined");
        // Three misses, a hit, three misses: never four in a row.
        for found in [false, false, false, true, false, false, false] {
            cluster.handoff_outcome(found);
        }
        assert!(!cluster.previous_owners(&mine).is_empty(), "still open");
        assert_eq!(cluster.handoff_windows_ended(), 0);
        cluster.handoff_outcome(false);
        assert!(cluster.previous_owners(&mine).is_empty(), "ended early");
        assert_eq!(cluster.handoff_windows_ended(), 1);
        // A ring change opens a new window.
        cluster.apply(&[Member::new(me, me), Member::new("b", b)]);
        cluster.handoff_outcome(false);
        assert_eq!(cluster.handoff_windows_ended(), 1);
        cluster.leave().await;
    }
}
