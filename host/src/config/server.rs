//! What the HTTP front is told: the API's limits and access rules ([`ApiOptions`], [`Access`],
//! [`ApiToken`]) and what all connections and requests together may hold ([`ServerLimits`],
//! [`ConnTimeouts`], [`PerClient`]). Plain data with their defaults, each written once here;
//! `api` enforces them. Also resolves them from flags and the file.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use super::{Cli, FileConfig, given, positive_duration, size_usize};
use crate::units::parse_duration;

/// The API's limits and access rules (from flags; see `geecache-host --help`).
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Largest request body accepted (API and peer routes).
    pub max_body_bytes: usize,
    /// Byte budget of one batch answer (API and peer batch routes).
    pub max_batch_bytes: usize,
    /// Peer requests served at once; more are refused with 503 rather than queued.
    pub peer_concurrency: usize,
    /// Largest plugin component the reload route (and a cluster rollout) accepts.
    pub max_plugin_bytes: usize,
    /// Mutual TLS between peers: peer routes only on connections that showed a verified
    /// client certificate (see [`crate::tls::PeerIdentity`]).
    pub require_peer_cert: bool,
    /// Who must show the API token.
    pub access: Access,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            max_body_bytes: crate::peer::DEFAULT_MAX_BODY_BYTES,
            max_batch_bytes: crate::batch::DEFAULT_MAX_BATCH_BYTES,
            peer_concurrency: crate::peer::DEFAULT_PEER_CONCURRENCY,
            max_plugin_bytes: 64 << 20,
            require_peer_cert: false,
            access: Access::default(),
        }
    }
}

/// Who must show which token (enforced by `api::access`).
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The API token; `None` leaves reads and writes open.
    pub token: Option<ApiToken>,
    /// Whether reads need the token too, not only writes.
    pub reads: bool,
    /// The admin token; `None` closes the admin routes.
    pub admin: Option<ApiToken>,
    /// The directory a reload's `?path=` may name files in (canonical); `None` refuses
    /// `?path=`.
    pub reload_dir: Option<PathBuf>,
    /// The `Host` values the node answers to (DNS rebinding).
    pub hosts: AllowedHosts,
}

/// The `Host` values a node answers to, besides IP literals and `localhost` (which a DNS
/// rebinding attack cannot use: a browser sends the name it resolved): its advertised name and
/// the names of `--allowed-host`, lowercase, without a port; or any (`--allowed-host '*'`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    /// `*` was given: every `Host` is taken.
    pub any: bool,
    /// The names taken.
    pub names: Vec<String>,
}

impl AllowedHosts {
    /// The hosts `given` (`*` for any; ports and a final `.` dropped) and the host of `advertised`
    /// (a node's `[scheme://]host:port`).
    pub fn new<'a>(given: impl IntoIterator<Item = &'a str>, advertised: &'a str) -> AllowedHosts {
        let mut hosts = AllowedHosts::default();
        let advertised = advertised
            .split_once("://")
            .map_or(advertised, |(_, rest)| rest);
        for host in given.into_iter().chain([advertised]) {
            let host = host.trim();
            if host == "*" {
                hosts.any = true;
            } else if let Some(name) = host_name(host) {
                let name = name.to_ascii_lowercase();
                if !name.is_empty() && !hosts.names.contains(&name) {
                    hosts.names.push(name);
                }
            }
        }
        hosts
    }
}

/// The name or address of a `Host` value, without its port and a final `.`; `None` when it is
/// malformed (an unclosed `[`).
pub fn host_name(host: &str) -> Option<&str> {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        &rest[..rest.find(']')?]
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    Some(name.strip_suffix('.').unwrap_or(name))
}

/// A client or admin token as the node keeps it. Cheap to clone; its `Debug` output never
/// shows the token.
#[derive(Clone)]
pub struct ApiToken {
    /// SHA-256 of the token: what requests are compared against, in constant time (so not
    /// even the token's length leaks).
    digest: Arc<[u8; 32]>,
}

/// An API token must not be empty: an empty bearer token would let anyone in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the API token is empty")]
pub struct EmptyToken;

impl ApiToken {
    /// A token from its text.
    ///
    /// # Errors
    /// [`EmptyToken`] when `token` is empty.
    pub fn new(token: &str) -> Result<ApiToken, EmptyToken> {
        if token.is_empty() {
            return Err(EmptyToken);
        }
        Ok(ApiToken {
            digest: Arc::new(Sha256::digest(token.as_bytes()).into()),
        })
    }

    /// Whether `given` is this token (compared in constant time).
    pub fn matches(&self, given: &str) -> bool {
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        given.ct_eq(&*self.digest).into()
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// Aggregate limits of one node's HTTP server; see `api::guard`.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Connections open at once (`--max-connections`).
    pub max_connections: usize,
    /// The header, idle and write timers of every connection.
    pub timeouts: ConnTimeouts,
    /// Bytes of request bodies and answers being received, held or sent at once
    /// (`--max-inflight-body-bytes`).
    pub max_inflight_body_bytes: usize,
    /// Longest time one request body may take to arrive (`--body-timeout`).
    pub body_timeout: Duration,
    /// Largest body of one request (`--max-body-bytes`): what a body of unknown length reserves.
    pub max_body_bytes: usize,
    /// Byte budget of one batch answer (`--max-batch-bytes`): a batch request reserves twice it.
    pub max_batch_bytes: usize,
    /// Largest component a plugin upload may carry (`--max-plugin-bytes`): the body limit of
    /// the plugin routes instead of `max_body_bytes`.
    pub max_plugin_bytes: usize,
    /// What one client may hold and ask (`--max-connections-per-client`, `--rate-limit`).
    pub per_client: PerClient,
}

impl Default for ServerLimits {
    fn default() -> Self {
        let api = ApiOptions::default();
        ServerLimits {
            max_connections: 4096,
            timeouts: ConnTimeouts::default(),
            max_inflight_body_bytes: 256 << 20,
            body_timeout: Duration::from_secs(30),
            max_body_bytes: api.max_body_bytes,
            max_batch_bytes: api.max_batch_bytes,
            max_plugin_bytes: api.max_plugin_bytes,
            per_client: PerClient::default(),
        }
    }
}

/// The timers of every connection; see `api::conn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnTimeouts {
    /// Longest a request head may take to arrive (`--header-timeout`).
    pub header: Duration,
    /// Longest a keep-alive connection may wait for its next request (`--idle-timeout`).
    pub idle: Duration,
    /// Longest a write may make no progress (`--write-timeout`).
    pub write: Duration,
}

impl Default for ConnTimeouts {
    fn default() -> Self {
        ConnTimeouts {
            header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            write: Duration::from_secs(30),
        }
    }
}

/// What one client (one address) may do; all off by default. See `api::conn`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerClient {
    /// Connections one client may hold open at once; 0: no cap.
    pub max_connections: usize,
    /// Requests a second one client may make; 0: no limit.
    pub rate: u32,
    /// Requests one client may make at once before `rate` holds it back.
    pub burst: u32,
}

/// The API's options and the server's limits, flags winning over the file.
pub(super) fn api_and_limits(
    cli: &Cli,
    file: &FileConfig,
) -> Result<(ApiOptions, ServerLimits), String> {
    let mut api = api_options(cli, file)?;
    let d = ServerLimits::default();
    let mut limits = ServerLimits {
        max_connections: cli.max_connections.unwrap_or(d.max_connections).max(1),
        timeouts: ConnTimeouts {
            header: positive_duration("--header-timeout", &cli.header_timeout, d.timeouts.header)?,
            idle: positive_duration("--idle-timeout", &cli.idle_timeout, d.timeouts.idle)?,
            write: positive_duration("--write-timeout", &cli.write_timeout, d.timeouts.write)?,
        },
        max_inflight_body_bytes: given(cli.max_inflight_body_bytes.as_deref(), size_usize)?
            .unwrap_or(d.max_inflight_body_bytes),
        body_timeout: given(cli.body_timeout.as_deref(), parse_duration)?.unwrap_or(d.body_timeout),
        max_body_bytes: api.max_body_bytes,
        max_batch_bytes: api.max_batch_bytes,
        max_plugin_bytes: api.max_plugin_bytes,
        per_client: per_client(cli)?,
    };
    // An upload larger than all bodies in flight together could never be received.
    limits.max_plugin_bytes = limits.max_plugin_bytes.min(limits.max_inflight_body_bytes);
    api.max_plugin_bytes = limits.max_plugin_bytes;
    let largest = api
        .max_body_bytes
        .saturating_add(api.max_batch_bytes.saturating_mul(2));
    if limits.max_inflight_body_bytes < largest {
        return Err(format!(
            "--max-inflight-body-bytes ({}) is less than --max-body-bytes + 2 x \
             --max-batch-bytes ({largest}): the largest request could never be served",
            limits.max_inflight_body_bytes
        ));
    }
    Ok((api, limits))
}

/// `--max-connections-per-client`, `--rate-limit` and `--rate-burst`.
fn per_client(cli: &Cli) -> Result<PerClient, String> {
    let rate = cli.rate_limit.unwrap_or(0);
    let burst = match (rate, cli.rate_burst) {
        (0, Some(_)) => return Err("--rate-burst needs --rate-limit".into()),
        (_, Some(0)) => return Err("--rate-burst must be at least 1".into()),
        (_, Some(b)) => b,
        (rate, None) => rate,
    };
    Ok(PerClient {
        max_connections: cli.max_connections_per_client.unwrap_or(0),
        rate,
        burst,
    })
}

/// The API's limits and access rules, flags winning over the file.
fn api_options(cli: &Cli, file: &FileConfig) -> Result<ApiOptions, String> {
    let d = ApiOptions::default();
    let peer_concurrency = cli
        .peer_concurrency
        .or(file.peer_concurrency)
        .unwrap_or(d.peer_concurrency);
    if peer_concurrency == 0 {
        return Err("--peer-concurrency must be at least 1".into());
    }
    let token = match &cli.api_token {
        Some(t) => Some(ApiToken::new(t).map_err(|e| format!("--api-token: {e}"))?),
        None => None,
    };
    if cli.api_token_reads && token.is_none() {
        return Err("--api-token-reads needs --api-token".into());
    }
    let admin = match &cli.admin_token {
        Some(t) if Some(t) == cli.api_token.as_ref() => {
            return Err(
                "--admin-token must differ from --api-token: whoever may read and write \
                 must not also be able to replace the node's code"
                    .into(),
            );
        }
        Some(t) => Some(ApiToken::new(t).map_err(|e| format!("--admin-token: {e}"))?),
        None => None,
    };
    let reload_dir = match &cli.reload_dir {
        Some(dir) => {
            let canonical = std::fs::canonicalize(dir)
                .map_err(|e| format!("--reload-dir {}: {e}", dir.display()))?;
            if !canonical.is_dir() {
                return Err(format!("--reload-dir {}: not a directory", dir.display()));
            }
            Some(canonical)
        }
        None => None,
    };
    let clustered = !cli.etcd_endpoints.is_empty()
        || !cli.peers.is_empty()
        || cli.peers_file.is_some()
        || !cli.peers_dns.is_empty();
    if token.is_some() && clustered && cli.cluster_secret.as_deref().is_none_or(str::is_empty) {
        return Err(
            "--api-token in a cluster needs --cluster-secret: without it the peer routes \
             (/_geecache/...) accept writes from anyone, around the token"
                .into(),
        );
    }
    let size = |cli: &Option<String>, file: &Option<String>| {
        given(cli.as_deref().or(file.as_deref()), size_usize)
    };
    Ok(ApiOptions {
        max_body_bytes: size(&cli.max_body_bytes, &file.max_body_bytes)?
            .unwrap_or(d.max_body_bytes),
        max_batch_bytes: size(&cli.max_batch_bytes, &file.max_batch_bytes)?
            .unwrap_or(d.max_batch_bytes),
        max_plugin_bytes: given(cli.max_plugin_bytes.as_deref(), size_usize)
            .map_err(|e| format!("--max-plugin-bytes: {e}"))?
            .unwrap_or(d.max_plugin_bytes),
        require_peer_cert: cli.peer_mtls,
        peer_concurrency,
        access: Access {
            token,
            reads: cli.api_token_reads,
            admin,
            reload_dir,
            // Set with the advertised name, once the cluster settings are resolved.
            hosts: AllowedHosts::default(),
        },
    })
}
