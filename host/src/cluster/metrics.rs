//! The cluster's metrics: its part of the node's stats (ring size, registration state, registry
//! counts, refused peer requests), the table, and the samples (label `state` on the
//! registration state, `reason` on the refusals).

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
    /// Handoff windows ended early: the previous owners held none of the last
    /// `--handoff-max-misses` keys asked.
    pub handoff_windows_ended: u64,
    /// Signed peer requests refused, by reason ([`crate::peer::auth::REFUSAL_REASONS`]);
    /// zeros without a cluster secret.
    pub peer_refused: [u64; crate::peer::auth::REFUSAL_REASONS.len()],
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
        "etcd registry entries not taken as members: not a registration, not under their own id's key, another scheme, not signed with the cluster secret, or past --etcd-max-members.",
    ),
    (
        "geecache_peer_requests_refused_total",
        "Peer requests this node refused, by reason: signature (none valid for this node), clock (dated over 30 s behind or 1 s ahead), before_start, replayed, full (the replay guard).",
    ),
    (
        "geecache_registration_restored_total",
        "Times this node found its etcd registry entry overwritten and wrote it back.",
    ),
    (
        "geecache_handoff_windows_ended_total",
        "Warm-handoff windows ended early: the previous owners held none of the last --handoff-max-misses keys asked.",
    ),
];

/// A series' one label, when it has one: its name and value.
pub type Label = Option<(&'static str, &'static str)>;

/// Maps the cluster's part of the snapshot to series: name, label (`state` on the
/// registration state, `reason` on the refused peer requests) and its value, value.
pub fn cluster_series(c: &ClusterStats) -> Vec<(&'static str, Label, f64)> {
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
        (
            "geecache_handoff_windows_ended_total",
            None,
            c.handoff_windows_ended as f64,
        ),
    ];
    for state in RegistrationState::ALL {
        let value = if state == c.registration { 1.0 } else { 0.0 };
        series.push((
            "geecache_registration_state",
            Some(("state", state.as_str())),
            value,
        ));
    }
    for (reason, n) in crate::peer::auth::REFUSAL_REASONS
        .iter()
        .zip(c.peer_refused)
    {
        series.push((
            "geecache_peer_requests_refused_total",
            Some(("reason", *reason)),
            n as f64,
        ));
    }
    series
}

/// The cluster's samples.
pub fn cluster_samples(c: &ClusterStats) -> Vec<Sample> {
    cluster_series(c)
        .into_iter()
        .map(|(name, label, value)| match label {
            Some((label, of)) => Sample::new(name, value).with(label, of),
            None => Sample::new(name, value),
        })
        .collect()
}
