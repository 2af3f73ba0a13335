//! Membership re-read from a source on a timer, for deployments without etcd: a file of peer
//! addresses (`--peers-file`, e.g. a mounted Kubernetes ConfigMap) or DNS names whose A/AAAA
//! records are the peers (`--peers-dns`, e.g. a Kubernetes headless service).
//!
//! Every `--peers-refresh` the source is read again; a changed list is published at once. A
//! source that cannot be read (a file being replaced, DNS down) keeps the last list, with a
//! warning each time the error changes. Reading by polling rather than file events also works
//! for ConfigMaps, which are updated by swapping a symlink.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

use super::{Member, normalize};

/// Where the member addresses come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSource {
    /// A file of `host:port` addresses: one per line or comma-separated; `#` starts a comment.
    File(PathBuf),
    /// `NAME:PORT` entries; each name's A records are members at that port (its AAAA records
    /// when it has no A record, so a dual-stack pod is one member, not two).
    Dns(Vec<String>),
}

impl std::fmt::Display for PeerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerSource::File(path) => write!(f, "--peers-file {}", path.display()),
            PeerSource::Dns(names) => write!(f, "--peers-dns {}", names.join(",")),
        }
    }
}

/// The addresses a peers file lists.
pub fn parse_peers_file(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

async fn read_file(path: &Path) -> Result<Vec<String>, String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::read_to_string(&path)
            .map(|text| parse_peers_file(&text))
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
    })
    .await
    .map_err(|e| format!("reading the peers file failed: {e}"))?
}

/// Resolves `NAME:PORT` entries: A records (or AAAA when a name has none), as `ip:port`.
async fn resolve(names: &[String]) -> Result<Vec<String>, String> {
    let mut addrs = Vec::new();
    for name in names {
        let found: Vec<std::net::SocketAddr> = tokio::net::lookup_host(name.as_str())
            .await
            .map_err(|e| format!("cannot resolve {name}: {e}"))?
            .collect();
        let v4: Vec<_> = found.iter().filter(|a| a.is_ipv4()).collect();
        let chosen = if v4.is_empty() {
            found.iter().collect()
        } else {
            v4
        };
        addrs.extend(chosen.into_iter().map(ToString::to_string));
    }
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// Reads `source` once.
///
/// # Errors
/// The file cannot be read, or a name cannot be resolved: a message for the operator.
pub async fn read(source: &PeerSource) -> Result<Vec<String>, String> {
    match source {
        PeerSource::File(path) => read_file(path).await,
        PeerSource::Dns(names) => resolve(names).await,
    }
}

fn members(me: &Member, addrs: Vec<String>) -> Vec<Member> {
    normalize(me, addrs.into_iter().map(|a| Member::new(a.clone(), a)))
}

/// Publishes `me` plus what `source` lists, read now and every `every`; the task runs until it
/// is aborted. `first` is the list read at startup.
pub(super) fn start(
    me: Member,
    source: PeerSource,
    every: Duration,
    first: Vec<String>,
) -> (watch::Receiver<Vec<Member>>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(members(&me, first));
    let task = tokio::spawn(async move {
        let mut last_error: Option<String> = None;
        loop {
            tokio::time::sleep(every).await;
            match read(&source).await {
                Ok(addrs) => {
                    last_error = None;
                    let list = members(&me, addrs);
                    tx.send_if_modified(|current| {
                        if *current == list {
                            false
                        } else {
                            tracing::info!(%source, members = list.len(), "peer list changed");
                            *current = list;
                            true
                        }
                    });
                }
                Err(e) => {
                    if last_error.as_ref() != Some(&e) {
                        tracing::warn!(%source, error = %e, "cannot read the peer list; keeping the last one");
                    }
                    last_error = Some(e);
                }
            }
        }
    });
    (rx, task)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_file_lists_addresses_by_line_or_comma_with_comments() {
        let text =
            "# the cache nodes\n10.0.0.1:9999\n10.0.0.2:9999, 10.0.0.3:9999 # rack b\n\n  \n";
        assert_eq!(
            parse_peers_file(text),
            ["10.0.0.1:9999", "10.0.0.2:9999", "10.0.0.3:9999"]
        );
        assert!(parse_peers_file("# nobody yet\n").is_empty());
    }

    #[tokio::test]
    async fn localhost_resolves_to_one_member_per_port() {
        let names = vec!["localhost:7001".to_string(), "localhost:7002".to_string()];
        let addrs = resolve(&names).await.unwrap();
        // One family only, so a name with both A and AAAA records is one member.
        assert_eq!(addrs.len(), 2, "{addrs:?}");
        assert!(
            addrs
                .iter()
                .all(|a| a.ends_with(":7001") || a.ends_with(":7002"))
        );
        assert!(
            resolve(&["no-such-host.invalid:1".to_string()])
                .await
                .is_err()
        );
    }
}
