//! The connections' metrics: the table and how a [`ConnSnapshot`] maps to it (label `reason`
//! on the closes).

use geecache_core::metrics::{Sample, Table};

use super::conn::ConnSnapshot;

/// Help text of every connection metric; [`connection_series`] emits exactly these names.
pub const CONNECTION_METRICS: Table = &[
    (
        "geecache_connections_open",
        "Client and peer connections open now (the probes' reserve included).",
    ),
    (
        "geecache_connections_reserve_total",
        "Connections accepted past --max-connections into the probes' reserve (only /healthz and /readyz answered).",
    ),
    (
        "geecache_connections_refused_total",
        "Connections closed at once: every slot and the probes' reserve were taken.",
    ),
    (
        "geecache_connections_closed_total",
        "Connections the node closed, by reason: header_timeout (a request head too slow), idle_timeout, write_timeout (an answer not read).",
    ),
    (
        "geecache_answers_refused_total",
        "Answers refused with 503 busy: the in-flight budget (--max-inflight-body-bytes) was spent.",
    ),
    (
        "geecache_connections_over_client_cap_total",
        "Connections of a client that held --max-connections-per-client already (answered on /healthz and /readyz only).",
    ),
    (
        "geecache_requests_rate_limited_total",
        "Requests refused with 429 rate_limited: their client was past --rate-limit.",
    ),
    (
        "geecache_requests_wrong_host_total",
        "Requests refused with 403 host_not_allowed: their Host is not a name the node answers to (--allowed-host).",
    ),
];

/// Maps the connections' part of the snapshot to series: name, `reason` label, value.
pub fn connection_series(c: &ConnSnapshot) -> Vec<(&'static str, Option<&'static str>, f64)> {
    let closed = "geecache_connections_closed_total";
    vec![
        ("geecache_connections_open", None, c.open as f64),
        (
            "geecache_connections_reserve_total",
            None,
            c.reserve_accepted as f64,
        ),
        ("geecache_connections_refused_total", None, c.refused as f64),
        (closed, Some("header_timeout"), c.header_timeouts as f64),
        (closed, Some("idle_timeout"), c.idle_timeouts as f64),
        (closed, Some("write_timeout"), c.write_timeouts as f64),
        (
            "geecache_answers_refused_total",
            None,
            c.answers_refused as f64,
        ),
        (
            "geecache_connections_over_client_cap_total",
            None,
            c.over_client_cap as f64,
        ),
        (
            "geecache_requests_rate_limited_total",
            None,
            c.rate_limited as f64,
        ),
        (
            "geecache_requests_wrong_host_total",
            None,
            c.wrong_host as f64,
        ),
    ]
}

/// The connections' samples.
pub fn connection_samples(c: &ConnSnapshot) -> Vec<Sample> {
    connection_series(c)
        .into_iter()
        .map(|(name, reason, value)| Sample::new(name, value).with_opt("reason", reason))
        .collect()
}
