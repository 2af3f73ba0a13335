//! The cluster's metrics: its part of the node's stats (ring size, registration state, registry
//! counts), the table, and the samples (label `state` on the registration state).

use geecache_core::metrics::{Sample, Table};
use serde::Serialize;

use crate::discovery::{RegistrationState, RegistryCounts};

/// The cluster's part of the node's stats (`/api/v1/stats`).
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStats {
    /// Members of this node's ring, itself included.
    pub ring_members: u64,
    /// This node's ring identity (hex): nodes that agree on the members show the same.
    pub ring_id: String,
    /// Peer requests received from nodes whose ring differed from this node's.
    pub ring_mismatches: u64,
    /// Where this node stands with etcd (`static` without etcd).
    pub registration: RegistrationState,
    /// Registry entries rejected, own entry written back (etcd only).
    pub registry: RegistryCounts,
}

/// Help text of every cluster metric; [`cluster_series`] emits exactly these names.
pub const CLUSTER_METRICS: Table = &[
    (
        "geecache_ring_members",
        "Members of this node's ring, itself included.",
    ),
    (
        "geecache_peer_ring_mismatches_total",
        "Peer requests received from nodes whose ring (member list) differed from this node's: rings that disagree, for a moment during a membership change or for long on a split view.",
    ),
    (
        "geecache_registration_state",
        "1 for the state this node's etcd registration is in, 0 for the others.",
    ),
    (
        "geecache_registry_entries_rejected_total",
        "etcd registry entries not taken as members: not a registration, not under their own id's key, another scheme, or past --etcd-max-members.",
    ),
    (
        "geecache_registration_restored_total",
        "Times this node found its etcd registry entry overwritten and wrote it back.",
    ),
];

/// Maps the cluster's part of the snapshot to series: name, `state` label, value.
pub fn cluster_series(c: &ClusterStats) -> Vec<(&'static str, Option<&'static str>, f64)> {
    let mut series = vec![
        ("geecache_ring_members", None, c.ring_members as f64),
        (
            "geecache_peer_ring_mismatches_total",
            None,
            c.ring_mismatches as f64,
        ),
        (
            "geecache_registry_entries_rejected_total",
            None,
            c.registry.rejected as f64,
        ),
        (
            "geecache_registration_restored_total",
            None,
            c.registry.restored as f64,
        ),
    ];
    for state in RegistrationState::ALL {
        let value = if state == c.registration { 1.0 } else { 0.0 };
        series.push(("geecache_registration_state", Some(state.as_str()), value));
    }
    series
}

/// The cluster's samples.
pub fn cluster_samples(c: &ClusterStats) -> Vec<Sample> {
    cluster_series(c)
        .into_iter()
        .map(|(name, state, value)| Sample::new(name, value).with_opt("state", state))
        .collect()
}
