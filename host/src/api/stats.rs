//! The node's stats at one instant: the body of `/api/v1/stats`, and, through each
//! subsystem's own metrics module, the samples `/metrics` renders from the very same snapshot
//! (so the two cannot disagree).

use geecache_core::metrics::{Sample, Table};
use serde::Serialize;

use super::conn::ConnSnapshot;
use crate::cluster::metrics::{CLUSTER_METRICS, ClusterStats, cluster_samples};
use crate::compression::builtin::LaneSnapshot;
use crate::compression::metrics::{CODEC_METRICS, codec_samples};
use crate::group::GroupSnapshot;
use crate::group::metrics::{GROUP_METRICS, group_samples};
use crate::plugin::PluginSnapshot;
use crate::plugin::metrics::{PLUGIN_INFO_METRICS, PLUGIN_TABLES, plugin_samples};

/// Every metric table the stats are exported with: what `Metrics::new` registers.
pub const TABLES: &[Table] = &[
    GROUP_METRICS,
    PLUGIN_TABLES[0],
    PLUGIN_TABLES[1],
    PLUGIN_TABLES[2],
    PLUGIN_INFO_METRICS,
    CLUSTER_METRICS,
    super::metrics::CONNECTION_METRICS,
    CODEC_METRICS,
];

/// Everything a node counts, read at one instant: the body of `/api/v1/stats`, and what the
/// observable instruments of `/metrics` report.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// One entry per group.
    pub groups: Vec<GroupSnapshot>,
    /// One entry per loaded plugin.
    pub plugins: Vec<PluginSnapshot>,
    /// Ring size and registration state.
    pub cluster: ClusterStats,
    /// What the node's connections did: open now, refused, closed by a timer.
    pub connections: ConnSnapshot,
    /// The codecs' heavy lane (codings of 256 KiB or more): its size, running, waiting.
    pub codec_lane: LaneSnapshot,
}

impl Stats {
    /// Every sample of the snapshot, for `/metrics`.
    pub fn samples(&self) -> Vec<Sample> {
        let mut samples: Vec<Sample> = self.groups.iter().flat_map(group_samples).collect();
        samples.extend(self.plugins.iter().flat_map(plugin_samples));
        samples.extend(cluster_samples(&self.cluster));
        samples.extend(super::metrics::connection_samples(&self.connections));
        samples.extend(codec_samples(&self.codec_lane));
        samples
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeSet;

    use super::super::metrics::{CONNECTION_METRICS, connection_series};
    use super::*;
    use crate::cluster::metrics::cluster_series;
    use crate::compression::metrics::codec_series;
    use crate::discovery::{RegistrationState, RegistryCounts};
    use crate::group::Counters;
    use crate::group::metrics::group_series;
    use crate::plugin::metrics::{PLUGIN_INFO, plugin_series};
    use crate::telemetry::Metrics;
    use crate::telemetry::metrics::exposition::value;

    fn group(name: &str, base: u64) -> GroupSnapshot {
        // Every field a different value, so a series reading the wrong field is caught.
        let mut n = base;
        let mut next = || {
            n += 1;
            n
        };
        let counters = Counters {
            gets: next(),
            hits: next(),
            hot_hits: next(),
            negative_hits: next(),
            misses: next(),
            miss_never_seen: next(),
            miss_expired: next(),
            miss_evicted: next(),
            miss_negative_expired: next(),
            miss_not_owner: next(),
            miss_stale_refresh: next(),
            miss_flushed: next(),
            stale_refreshes: next(),
            early_refreshes: next(),
            refresh_errors: next(),
            loads: next(),
            loads_deduplicated: next(),
            getter_calls: next(),
            getter_errors: next(),
            peer_loads: next(),
            peer_errors: next(),
            peer_requests_served: next(),
            handoff_hits: next(),
            handoff_misses: next(),
            peeks_served: next(),
            handoff_pushed: next(),
            handoff_push_skipped: next(),
            handoff_received: next(),
            storage_hits: next(),
            storage_misses: next(),
            storage_errors: next(),
            storage_writes_dropped: next(),
            storage_writes_abandoned: next(),
            invalidations_failed: next(),
            corrupt_values: next(),
            values_encoded: next(),
            values_compressed: next(),
            encoded_raw_bytes: next(),
            encoded_stored_bytes: next(),
            encoded_replies: next(),
            sets: next(),
            removes: next(),
        };
        GroupSnapshot {
            name: name.into(),
            getter: "g".into(),
            compression: "zstd".into(),
            storage: Some("fs_storage".into()),
            counters,
            main_misses: next(),
            cache_items: next(),
            cache_bytes: next(),
            cache_max_bytes: next(),
            cache_evictions: next(),
            hot_items: next(),
            hot_bytes: next(),
            hot_max_bytes: next(),
            hot_evictions: next(),
        }
    }

    fn stats() -> Stats {
        Stats {
            groups: vec![group("a", 0), group("b", 100)],
            plugins: vec![PluginSnapshot {
                name: "db_getter".into(),
                version: "1".into(),
                kind: "getter".into(),
                calls: 5,
                traps: 1,
                timeouts: 2,
                memory_limits: 3,
                reported_errors: 4,
                busy_seconds: 0.5,
                logs_dropped: 8,
                sql_too_large: 10,
                sha256: "ab12".into(),
                reloads: 6,
                reload_failures: 7,
            }],
            cluster: ClusterStats {
                ring_members: 3,
                ring_id: "00000000000000ab".into(),
                ring_mismatches: 9,
                registration: RegistrationState::Registered,
                registry: RegistryCounts {
                    rejected: 4,
                    restored: 5,
                },
                handoff_windows_ended: 17,
                peer_refused: [12, 13, 14, 15, 16],
            },
            connections: ConnSnapshot {
                open: 1,
                reserve_accepted: 2,
                refused: 3,
                header_timeouts: 4,
                idle_timeouts: 5,
                write_timeouts: 6,
                answers_refused: 7,
                over_client_cap: 8,
                rate_limited: 9,
                wrong_host: 11,
            },
            codec_lane: LaneSnapshot {
                concurrency: 2,
                running: 1,
                waiting: 3,
            },
        }
    }

    #[test]
    fn every_snapshot_field_is_exported_with_its_value() {
        let text = Metrics::new("n1", TABLES)
            .render(stats().samples())
            .unwrap();
        for g in &stats().groups {
            for (name, label, expected) in group_series(g) {
                let group = format!("group=\"{}\"", g.name);
                let label = label
                    .map(|(k, v)| format!("{k}=\"{v}\""))
                    .unwrap_or_default();
                let got = value(&text, name, &[&group, &label]);
                assert_eq!(got, Some(expected as f64), "{name} {group} {label}\n{text}");
            }
        }
        let p = &stats().plugins[0];
        for (name, expected) in plugin_series(p) {
            let got = value(&text, name, &["plugin=\"db_getter\"", "kind=\"getter\""]);
            assert_eq!(got, Some(expected), "{name}\n{text}");
        }
        assert_eq!(
            value(
                &text,
                "geecache_plugin_info",
                &["plugin=\"db_getter\"", "version=\"1\"", "sha256=\"ab12\""]
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(value(&text, "geecache_ring_members", &[]), Some(3.0));
        assert_eq!(
            value(&text, "geecache_peer_ring_mismatches_total", &[]),
            Some(9.0)
        );
        assert_eq!(
            value(
                &text,
                "geecache_peer_requests_refused_total",
                &["reason=\"clock\""]
            ),
            Some(13.0)
        );
        assert_eq!(
            value(
                &text,
                "geecache_registration_state",
                &["state=\"registered\""]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                "geecache_registration_state",
                &["state=\"unreachable\""]
            ),
            Some(0.0)
        );
    }

    fn text_has_type(name: &str) -> bool {
        let text = Metrics::new("n1", TABLES)
            .render(stats().samples())
            .unwrap();
        text.contains(&format!("# TYPE {name} gauge"))
    }

    #[test]
    fn every_table_name_is_emitted_and_named_by_its_type() {
        let emitted: BTreeSet<&str> = group_series(&group("a", 0))
            .into_iter()
            .map(|(n, _, _)| n)
            .chain(
                plugin_series(&stats().plugins[0])
                    .into_iter()
                    .map(|(n, _)| n),
            )
            .chain(
                cluster_series(&stats().cluster)
                    .into_iter()
                    .map(|(n, _, _)| n),
            )
            .chain(
                connection_series(&stats().connections)
                    .into_iter()
                    .map(|(n, _, _)| n),
            )
            .chain(
                codec_series(&stats().codec_lane)
                    .into_iter()
                    .map(|(n, _, _)| n),
            )
            .collect();
        let declared: BTreeSet<&str> = GROUP_METRICS
            .iter()
            .chain(PLUGIN_TABLES.iter().copied().flatten())
            .chain(CLUSTER_METRICS)
            .chain(CONNECTION_METRICS)
            .chain(CODEC_METRICS)
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(emitted, declared);
        assert!(text_has_type(PLUGIN_INFO.0), "the info metric is exported");
        let text = Metrics::new("n1", TABLES)
            .render(stats().samples())
            .unwrap();
        for line in text.lines().filter(|l| l.starts_with("# TYPE geecache_")) {
            let mut words = line.split(' ').skip(2);
            let (name, kind) = (words.next().unwrap(), words.next().unwrap());
            assert_eq!(
                name.ends_with("_total"),
                kind == "counter",
                "{line}: counters and only counters end in _total"
            );
        }
    }
}
