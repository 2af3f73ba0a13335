//! The group's metrics: the table of every group series and how a [`GroupSnapshot`] maps to
//! them (labels `group`, and `tier` where a metric has one). The exporter is the host's.

use super::GroupSnapshot;
use crate::cache::MissReason;
use crate::metrics::{Sample, Table};

/// The `tier` label of the main cache (keys this node owns).
pub const TIER_MAIN: &str = "main";
/// The `tier` label of the hot cache (copies of other nodes' keys).
pub const TIER_HOT: &str = "hot";
/// The `tier` label of the storage tier (a storage plugin below memory).
pub const TIER_STORAGE: &str = "storage";

/// One series of a group: metric name, its one label besides `group` (`tier` or `reason`, for
/// the metrics that have one) as (name, value), value.
pub type GroupSeries = (&'static str, Option<(&'static str, &'static str)>, u64);

/// Help text of every group metric; [`group_series`] emits exactly these names.
pub const GROUP_METRICS: Table = &[
    ("geecache_gets_total", "Gets with a valid key."),
    (
        "geecache_cache_hits_total",
        "Gets answered by a cache tier (values and remembered \"no such key\").",
    ),
    (
        "geecache_cache_misses_total",
        "Lookups a cache tier could not answer; a main-tier miss is looked up in the hot tier.",
    ),
    (
        "geecache_misses_total",
        "Gets no cache tier answered fresh (a load, or a stale answer while it is refreshed), by reason: never_seen, expired, evicted, negative_expired, not_owner, stale_refresh, flushed. The reasons add up to the misses.",
    ),
    (
        "geecache_stale_refreshes_total",
        "Background refreshes started for stale entries, one per key at a time.",
    ),
    (
        "geecache_early_refreshes_total",
        "Refreshes started ahead of expiry (--refresh-ahead).",
    ),
    (
        "geecache_refresh_errors_total",
        "Background refreshes that failed; the stale entry is answered until its window ends (stale-if-error).",
    ),
    (
        "geecache_cache_negative_hits_total",
        "Hits that were a remembered \"no such key\".",
    ),
    (
        "geecache_loads_total",
        "Loads started (one per singleflight leader, for clients or peers).",
    ),
    (
        "geecache_loads_deduplicated_total",
        "Callers that shared a load already in flight instead of starting one (singleflight).",
    ),
    (
        "geecache_local_loads_total",
        "Loads through this node's getter.",
    ),
    (
        "geecache_local_load_errors_total",
        "Getter loads that failed (errors, timeouts, values too large).",
    ),
    (
        "geecache_peer_loads_total",
        "Loads answered by the key's owner, another node.",
    ),
    (
        "geecache_peer_load_errors_total",
        "Loads the owner did not answer in time or failed; the node then loaded locally.",
    ),
    (
        "geecache_peer_requests_served_total",
        "Gets served to other nodes as the key's owner.",
    ),
    (
        "geecache_handoff_hits_total",
        "Keys this node newly owns taken from their previous owner's memory (warm handoff after a ring change) instead of loaded.",
    ),
    (
        "geecache_handoff_misses_total",
        "Peeks at a key's previous owner that found nothing, failed or timed out (the key then loaded as usual).",
    ),
    (
        "geecache_peeks_served_total",
        "Peeks served to keys' new owners.",
    ),
    (
        "geecache_handoff_pushed_total",
        "Entries handed to their next owners while this node stopped.",
    ),
    (
        "geecache_handoff_push_skipped_total",
        "Entries not handed over while this node stopped: past --handoff-bytes or the shutdown grace, or refused by their next owner.",
    ),
    (
        "geecache_handoff_received_total",
        "Entries taken over from a stopping node whose next owner this node is.",
    ),
    ("geecache_sets_total", "Values set at this node as owner."),
    (
        "geecache_removes_total",
        "Keys removed at this node as owner.",
    ),
    (
        "geecache_cache_evictions_total",
        "Entries a cache tier dropped for size or expiry.",
    ),
    ("geecache_cache_items", "Entries a cache tier holds."),
    (
        "geecache_cache_bytes",
        "Bytes a cache tier holds (keys, values and 64 bytes per entry).",
    ),
    (
        "geecache_cache_capacity_bytes",
        "A cache tier's byte budget.",
    ),
    (
        "geecache_storage_errors_total",
        "Storage tier calls (get, put, delete) that failed.",
    ),
    (
        "geecache_storage_writes_dropped_total",
        "Background storage writes dropped because the tier's queue was full.",
    ),
    (
        "geecache_storage_writes_abandoned_total",
        "Client writes answered with an error because storage did not finish them in time, then called off (or undone) so they never land.",
    ),
    (
        "geecache_invalidations_failed_total",
        "Invalidations of other nodes' copies, after a write, that failed or timed out (that node's hot copy expires by itself).",
    ),
    (
        "geecache_corrupt_values_total",
        "Stored values (memory, storage tier, peer) that did not decode: dropped and reloaded, never served.",
    ),
    (
        "geecache_values_encoded_total",
        "Values encoded for storage (loaded or set at this node).",
    ),
    (
        "geecache_values_compressed_total",
        "Encoded values stored compressed (the rest were small or did not shrink).",
    ),
    (
        "geecache_compression_input_bytes_total",
        "Bytes of the values encoded, before encoding.",
    ),
    (
        "geecache_compression_output_bytes_total",
        "Bytes those values take as stored (header and payload); output / input is the compression ratio.",
    ),
    (
        "geecache_encoded_replies_total",
        "Hits answered with the stored gzip/zstd payload as it is (Content-Encoding), without a decode.",
    ),
];

/// Maps a group's snapshot to its series. The one place where [`GroupSnapshot`] fields become
/// metrics: a new field (say a storage tier's hits) becomes a metric with one line here, and, for
/// a new name, one line in `GROUP_METRICS`.
pub fn group_series(g: &GroupSnapshot) -> Vec<GroupSeries> {
    let tier = |t: &'static str| Some(("tier", t));
    let (main, hot, storage) = (tier(TIER_MAIN), tier(TIER_HOT), tier(TIER_STORAGE));
    let c = &g.counters;
    let mut series: Vec<GroupSeries> = MissReason::ALL
        .iter()
        .map(|r| {
            (
                "geecache_misses_total",
                Some(("reason", r.label())),
                c.misses_by(*r),
            )
        })
        .collect();
    series.extend([
        ("geecache_stale_refreshes_total", None, c.stale_refreshes),
        ("geecache_early_refreshes_total", None, c.early_refreshes),
        ("geecache_refresh_errors_total", None, c.refresh_errors),
        ("geecache_gets_total", None, c.gets),
        ("geecache_cache_hits_total", main, c.hits),
        ("geecache_cache_hits_total", hot, c.hot_hits),
        ("geecache_cache_hits_total", storage, c.storage_hits),
        ("geecache_cache_misses_total", main, g.main_misses),
        ("geecache_cache_misses_total", hot, c.misses),
        ("geecache_cache_misses_total", storage, c.storage_misses),
        ("geecache_cache_negative_hits_total", None, c.negative_hits),
        ("geecache_loads_total", None, c.loads),
        (
            "geecache_loads_deduplicated_total",
            None,
            c.loads_deduplicated,
        ),
        ("geecache_local_loads_total", None, c.getter_calls),
        ("geecache_local_load_errors_total", None, c.getter_errors),
        ("geecache_peer_loads_total", None, c.peer_loads),
        ("geecache_peer_load_errors_total", None, c.peer_errors),
        (
            "geecache_peer_requests_served_total",
            None,
            c.peer_requests_served,
        ),
        ("geecache_handoff_hits_total", None, c.handoff_hits),
        ("geecache_handoff_misses_total", None, c.handoff_misses),
        ("geecache_peeks_served_total", None, c.peeks_served),
        ("geecache_handoff_pushed_total", None, c.handoff_pushed),
        (
            "geecache_handoff_push_skipped_total",
            None,
            c.handoff_push_skipped,
        ),
        ("geecache_handoff_received_total", None, c.handoff_received),
        ("geecache_sets_total", None, c.sets),
        ("geecache_removes_total", None, c.removes),
        ("geecache_cache_evictions_total", main, g.cache_evictions),
        ("geecache_cache_evictions_total", hot, g.hot_evictions),
        ("geecache_cache_items", main, g.cache_items),
        ("geecache_cache_items", hot, g.hot_items),
        ("geecache_cache_bytes", main, g.cache_bytes),
        ("geecache_cache_bytes", hot, g.hot_bytes),
        ("geecache_cache_capacity_bytes", main, g.cache_max_bytes),
        ("geecache_cache_capacity_bytes", hot, g.hot_max_bytes),
        ("geecache_storage_errors_total", None, c.storage_errors),
        (
            "geecache_storage_writes_dropped_total",
            None,
            c.storage_writes_dropped,
        ),
        (
            "geecache_storage_writes_abandoned_total",
            None,
            c.storage_writes_abandoned,
        ),
        (
            "geecache_invalidations_failed_total",
            None,
            c.invalidations_failed,
        ),
        ("geecache_corrupt_values_total", None, c.corrupt_values),
        ("geecache_values_encoded_total", None, c.values_encoded),
        (
            "geecache_values_compressed_total",
            None,
            c.values_compressed,
        ),
        (
            "geecache_compression_input_bytes_total",
            None,
            c.encoded_raw_bytes,
        ),
        (
            "geecache_compression_output_bytes_total",
            None,
            c.encoded_stored_bytes,
        ),
        ("geecache_encoded_replies_total", None, c.encoded_replies),
    ]);
    series
}

/// Every series of `g`, labelled with its group (and tier).
pub fn group_samples(g: &GroupSnapshot) -> Vec<Sample> {
    group_series(g)
        .into_iter()
        .map(|(name, label, value)| {
            let sample = Sample::new(name, value as f64).with("group", g.name.clone());
            match label {
                Some((label, v)) => sample.with(label, v),
                None => sample,
            }
        })
        .collect()
}
