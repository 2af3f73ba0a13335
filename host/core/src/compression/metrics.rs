//! The codec lane's metrics (codings of 256 KiB or more): its table and samples.

use super::builtin::LaneSnapshot;
use crate::metrics::{Sample, Table};

/// Help text of every codec lane metric; [`codec_series`] emits exactly these names.
pub const CODEC_METRICS: Table = &[
    (
        "geecache_codec_lane_running",
        "Codings of 256KiB or more running now (at most --codec-concurrency).",
    ),
    (
        "geecache_codec_lane_waiting",
        "Codings of 256KiB or more waiting for the lane now (each at most until its load timeout).",
    ),
];

/// Maps the codec lane's part of the snapshot to series: name, no label, value.
pub fn codec_series(c: &LaneSnapshot) -> Vec<(&'static str, Option<&'static str>, f64)> {
    vec![
        ("geecache_codec_lane_running", None, c.running as f64),
        ("geecache_codec_lane_waiting", None, c.waiting as f64),
    ]
}

/// The lane's samples (no labels).
pub fn codec_samples(c: &LaneSnapshot) -> Vec<Sample> {
    codec_series(c)
        .into_iter()
        .map(|(name, _, value)| Sample::new(name, value))
        .collect()
}
