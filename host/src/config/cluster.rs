//! Resolves how a node takes part in a cluster: its advertised address and id, how it finds
//! the others (static peers, a peers file, DNS, or etcd, with etcd's TLS and user), the
//! cluster secret, peer TLS and the coalescing of peer gets.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::{Cli, given};
use crate::discovery::PeerSource;
use crate::discovery::etcd::{EtcdTls, EtcdUser};
use crate::units::{parse_duration, parse_size};

/// Lease TTL of a node's etcd registration.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// How often a peers file or DNS names are read again.
pub const DEFAULT_PEERS_REFRESH: Duration = Duration::from_secs(5);

/// How a node takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This node's address as the others reach it; its name on the ring.
    pub advertise_addr: String,
    /// This node's id in the registry.
    pub node_id: String,
    /// Other nodes' addresses (static membership).
    pub peers: Vec<String>,
    /// A peers file or DNS names, read again every `peers_refresh`.
    pub peer_source: Option<PeerSource>,
    /// How often `peer_source` is read again.
    pub peers_refresh: Duration,
    /// The CA certificates peers' TLS certificates must chain to (`--peer-ca`).
    pub peer_ca: Option<PathBuf>,
    /// Mutual TLS between peers (`--peer-mtls`).
    pub peer_mtls: bool,
    /// etcd endpoints; when non-empty, membership comes from etcd.
    pub etcd_endpoints: Vec<String>,
    /// Lease TTL of the etcd registration.
    pub lease_ttl: Duration,
    /// Most members taken from the etcd registry.
    pub etcd_max_members: usize,
    /// TLS to etcd (`--etcd-ca`, `--etcd-cert`, `--etcd-key`).
    pub etcd_tls: Option<EtcdTls>,
    /// etcd's authentication (`--etcd-user`, `--etcd-password`).
    pub etcd_user: Option<EtcdUser>,
    /// Signs and checks peer requests when set.
    pub secret: Option<String>,
    /// Most keys in one coalesced batch of peer gets (0 or 1: every get alone).
    pub peer_coalesce: usize,
    /// How long after a ring change a key's new owner peeks at its previous owner (0: never).
    pub handoff_window: Duration,
    /// Most bytes (keys and stored values) a stopping node hands to their next owners (0:
    /// none).
    pub handoff_bytes: u64,
    /// Keys in a row found nowhere after which a handoff window ends early (0: never).
    pub handoff_max_misses: u64,
}

impl ClusterSettings {
    /// Whether this node has peers (static or through etcd).
    pub fn is_clustered(&self) -> bool {
        !self.etcd_endpoints.is_empty()
            || self.peer_source.is_some()
            || self.peers.iter().any(|p| p.as_str() != self.advertise_addr)
    }
}

/// The cluster settings of a node listening on `bind`:`port`.
pub(super) fn cluster(cli: &Cli, bind: IpAddr, port: u16) -> Result<ClusterSettings, String> {
    let advertise_addr = cli.advertise_addr.clone().unwrap_or_else(|| {
        let host = if bind.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            bind
        };
        let addr = SocketAddr::new(host, port).to_string();
        if cli.tls_cert.is_some() {
            format!("https://{addr}")
        } else {
            addr
        }
    });
    if cli.peer_mtls && (cli.tls_cert.is_none() || cli.peer_ca.is_none()) {
        return Err(
            "--peer-mtls needs --tls-cert, --tls-key (this node's certificate, also shown to \
             peers) and --peer-ca (what peers' certificates must chain to)"
                .into(),
        );
    }
    Ok(ClusterSettings {
        node_id: cli
            .node_id
            .clone()
            .unwrap_or_else(|| advertise_addr.clone()),
        advertise_addr,
        peers: cli
            .peers
            .iter()
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect(),
        etcd_endpoints: cli.etcd_endpoints.clone(),
        lease_ttl: given(cli.lease_ttl.as_deref(), parse_duration)?.unwrap_or(DEFAULT_LEASE_TTL),
        etcd_max_members: match cli.etcd_max_members {
            Some(0) => return Err("--etcd-max-members must be at least 1".into()),
            Some(n) => n,
            None => crate::discovery::etcd::DEFAULT_MAX_MEMBERS,
        },
        etcd_tls: etcd_tls(cli)?,
        etcd_user: match (&cli.etcd_user, &cli.etcd_password) {
            (None, None) => None,
            (Some(name), Some(password)) => Some(EtcdUser {
                name: name.clone(),
                password: password.clone(),
            }),
            _ => {
                return Err(
                    "--etcd-user and --etcd-password (GEECACHE_ETCD_PASSWORD) go together".into(),
                );
            }
        },
        secret: cli.cluster_secret.clone().filter(|s| !s.is_empty()),
        peer_source: peer_source(cli)?,
        peer_ca: cli.peer_ca.clone(),
        peer_mtls: cli.peer_mtls,
        peers_refresh: given(cli.peers_refresh.as_deref(), parse_duration)
            .map_err(|e| format!("--peers-refresh: {e}"))?
            .unwrap_or(DEFAULT_PEERS_REFRESH),
        peer_coalesce: match cli.peer_coalesce {
            Some(n) if n > crate::batch::MAX_BATCH_KEYS => {
                return Err(format!(
                    "--peer-coalesce {n}: a batch holds at most {} keys",
                    crate::batch::MAX_BATCH_KEYS
                ));
            }
            Some(n) => n,
            None => crate::cluster::DEFAULT_COALESCE_KEYS,
        },
        handoff_window: given(cli.handoff_window.as_deref(), parse_duration)
            .map_err(|e| format!("--handoff-window: {e}"))?
            .unwrap_or(crate::cluster::DEFAULT_HANDOFF_WINDOW),
        handoff_bytes: given(cli.handoff_bytes.as_deref(), parse_size)
            .map_err(|e| format!("--handoff-bytes: {e}"))?
            .unwrap_or(crate::cluster::DEFAULT_HANDOFF_BYTES),
        handoff_max_misses: cli
            .handoff_max_misses
            .unwrap_or(crate::cluster::DEFAULT_HANDOFF_MAX_MISSES),
    })
}

/// `--etcd-ca`, `--etcd-cert` and `--etcd-key`.
fn etcd_tls(cli: &Cli) -> Result<Option<EtcdTls>, String> {
    let identity = match (&cli.etcd_cert, &cli.etcd_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        _ => return Err("--etcd-cert and --etcd-key go together".into()),
    };
    match (&cli.etcd_ca, identity) {
        (None, None) => Ok(None),
        (None, Some(_)) => {
            Err("--etcd-cert needs --etcd-ca (the CA etcd's certificate chains to)".into())
        }
        (Some(ca), identity) => Ok(Some(EtcdTls {
            ca: ca.clone(),
            identity,
        })),
    }
}

/// `--peers-file` or `--peers-dns`, which exclude each other, `--peers` and etcd.
fn peer_source(cli: &Cli) -> Result<Option<PeerSource>, String> {
    let dns: Vec<String> = cli
        .peers_dns
        .iter()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    let sources = [
        !cli.peers.is_empty(),
        cli.peers_file.is_some(),
        !dns.is_empty(),
        !cli.etcd_endpoints.is_empty(),
    ];
    if cli.peers_file.is_some() || !dns.is_empty() {
        if sources.iter().filter(|s| **s).count() > 1 {
            return Err(
                "pick one way to find the peers: --peers, --peers-file, --peers-dns or \
                 --etcd-endpoints"
                    .into(),
            );
        }
        for name in &dns {
            if name
                .rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                return Err(format!(
                    "--peers-dns {name:?}: expected NAME:PORT, e.g. geecache.default.svc.cluster.local:9999"
                ));
            }
        }
    }
    Ok(match (&cli.peers_file, dns.is_empty()) {
        (Some(path), _) => Some(PeerSource::File(path.clone())),
        (None, false) => Some(PeerSource::Dns(dns)),
        (None, true) => None,
    })
}
