//! The `groupcache` baseline of `geecache-perf http`: a cluster of Go groupcache nodes
//! (`tests/groupcache/main.go`, built by `geecache_tests::groupcache::binary`) on 127.0.0.1,
//! peers of each other through groupcache's `HTTPPool` over pooled keep-alive connections,
//! each answering the client's `GET /api/v1/groups/{group}/keys/{key}` as a node does, with
//! `synth_getter`'s value of the key. [`GroupcacheCluster`] starts and stops them;
//! [`GroupcacheCluster::counters`] reads their getter calls and peer requests from `/stats`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

use crate::servers::{Death, Process, free_ports, loopback};

/// Nodes of every groupcache row: the cluster size the targets are set for.
pub const NODES: usize = 3;

/// Each node's cache budget: a node's default main cache (64 MiB) and hot cache (an eighth of
/// it), which groupcache's one budget covers together.
const CACHE_BYTES: u64 = 72 << 20;

/// Go groupcache nodes started for one row, stopped when dropped.
#[derive(Debug)]
pub struct GroupcacheCluster {
    /// Where they listen.
    pub addrs: Vec<SocketAddr>,
    /// The processes (dropped before the directory holding their logs).
    pub nodes: Vec<Process>,
    _dir: TempDir,
}

impl GroupcacheCluster {
    /// Starts `n` nodes of `bin` serving `group` with `value_bytes`-byte values, each listing
    /// all of them as its peers; ready when this returns.
    ///
    /// # Errors
    /// A node does not start or does not answer `/readyz` in time.
    pub fn start(
        bin: &Path,
        n: usize,
        group: &str,
        value_bytes: usize,
    ) -> anyhow::Result<GroupcacheCluster> {
        let dir = tempfile::Builder::new()
            .prefix("geecache-perf-groupcache-")
            .tempdir()?;
        let addrs: Vec<SocketAddr> = free_ports(n)?.into_iter().map(loopback).collect();
        let peers: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
        let mut nodes = Vec::new();
        for addr in &addrs {
            let mut cmd = Command::new(bin);
            cmd.args(["--port", &addr.port().to_string()])
                .args(["--peers", &peers.join(",")])
                .args(["--group", group])
                .args(["--value-bytes", &value_bytes.to_string()])
                .args(["--cache-bytes", &CACHE_BYTES.to_string()]);
            let log = dir.path().join(format!("groupcache-{}.log", addr.port()));
            nodes.push(Process::spawn(
                &format!("groupcache node {addr}"),
                cmd,
                log,
                Death::Kill,
            )?);
        }
        for (node, addr) in nodes.iter_mut().zip(&addrs) {
            node.wait_ready(*addr, "/readyz")?;
        }
        Ok(GroupcacheCluster {
            addrs,
            nodes,
            _dir: dir,
        })
    }

    /// The process ids, for their CPU time.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(Process::pid).collect()
    }

    /// The largest peak resident memory among the nodes.
    pub fn peak_rss(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter_map(|n| n.memory().map(|m| m.hwm))
            .max()
    }

    /// Getter calls (groupcache's `LocalLoads`) and peer requests served (`ServerRequests`),
    /// each summed over the nodes; None if a node does not answer.
    pub fn counters(&self) -> Option<Counters> {
        self.addrs
            .iter()
            .map(|addr| {
                let stats: serde_json::Value =
                    serde_json::from_str(&crate::http::get_body(*addr, "/stats", None)?).ok()?;
                Some(Counters {
                    getter_calls: stats["local_loads"].as_u64()?,
                    peer_requests: stats["server_requests"].as_u64()?,
                })
            })
            .try_fold(Counters::default(), |sum, c| {
                let c = c?;
                Some(Counters {
                    getter_calls: sum.getter_calls + c.getter_calls,
                    peer_requests: sum.peer_requests + c.peer_requests,
                })
            })
    }
}

/// A cluster's counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Values the getter made.
    pub getter_calls: u64,
    /// Requests served to peers.
    pub peer_requests: u64,
}

impl Counters {
    /// What was counted from `before` to this reading.
    pub fn since(self, before: Counters) -> Counters {
        Counters {
            getter_calls: self.getter_calls.saturating_sub(before.getter_calls),
            peer_requests: self.peer_requests.saturating_sub(before.peer_requests),
        }
    }
}
