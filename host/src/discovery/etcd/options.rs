//! How a node reaches etcd ([`EtcdOptions`]: endpoints, timeouts, TLS, user) and registers
//! there (prefix, id, address, lease TTL, most members), checked before the first request.

use std::time::Duration;

use etcd_client::ConnectOptions;

use crate::discovery::DiscoveryError;

/// How to reach etcd and how to register there.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// etcd client URLs, e.g. `http://127.0.0.1:2379`; requests are balanced across them.
    pub endpoints: Vec<String>,
    /// Lifetime of this node's registration if it stops renewing it (a crash): how long
    /// the others may keep sending it requests after it died. Whole seconds (rounded up); etcd
    /// raises very short TTLs to its own minimum (2 s by default).
    pub lease_ttl: Duration,
    /// Key prefix under which every node registers; all nodes of one cluster must share it.
    pub prefix: String,
    /// How long startup waits for etcd to answer the first registration; also the bound on
    /// every later request, so a hung etcd is noticed rather than waited on.
    pub connect_timeout: Duration,
    /// Most members (this node included) taken from the registry; entries past it are
    /// rejected (`--etcd-max-members`).
    pub max_members: usize,
    /// TLS to etcd (`https://` endpoints): `--etcd-ca`, `--etcd-cert`, `--etcd-key`.
    pub tls: Option<EtcdTls>,
    /// etcd's own authentication (`--etcd-user`, `--etcd-password`).
    pub user: Option<EtcdUser>,
    /// The cluster secret (`--cluster-secret`), as registrations are signed with it: with one,
    /// a node signs its own entry and takes only entries signed with the same secret.
    pub signing: Option<RegistryKey>,
}

/// The key registry entries are signed with: HMAC-SHA256 with the cluster secret over
/// `"registration\n{id}\n{addr}\n{started_at_ms}"` (the text begins with a word no peer
/// request or answer begins with, so no signature stands for another). Never printed.
#[derive(Clone)]
pub struct RegistryKey(std::sync::Arc<[u8]>);

impl std::fmt::Debug for RegistryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryKey(..)")
    }
}

impl PartialEq for RegistryKey {
    fn eq(&self, other: &RegistryKey) -> bool {
        self.0 == other.0
    }
}

impl Eq for RegistryKey {}

impl RegistryKey {
    /// The key of the cluster secret `secret`.
    pub fn new(secret: &str) -> RegistryKey {
        RegistryKey(secret.as_bytes().into())
    }

    fn mac(&self, id: &str, addr: &str, started_at_ms: u64) -> hmac::Hmac<sha2::Sha256> {
        use hmac::Mac as _;
        // Any key length is valid for HMAC.
        let mut mac =
            <hmac::Hmac<sha2::Sha256>>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        mac.update(format!("registration\n{id}\n{addr}\n{started_at_ms}").as_bytes());
        mac
    }

    /// The hex signature of a registration.
    pub(super) fn sign(&self, id: &str, addr: &str, started_at_ms: u64) -> String {
        use hmac::Mac as _;
        hex::encode(self.mac(id, addr, started_at_ms).finalize().into_bytes())
    }

    /// Whether `signature` signs this registration (compared in constant time).
    pub(super) fn verifies(
        &self,
        id: &str,
        addr: &str,
        started_at_ms: u64,
        signature: &str,
    ) -> bool {
        use hmac::Mac as _;
        hex::decode(signature)
            .is_ok_and(|s| self.mac(id, addr, started_at_ms).verify_slice(&s).is_ok())
    }
}

/// How to speak TLS to etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// PEM CA certificates etcd's server certificate must chain to.
    pub ca: std::path::PathBuf,
    /// This node's client certificate chain and key (PEM), for an etcd that asks for one
    /// (`--client-cert-auth`).
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// An etcd user (etcd's `auth enable`): its name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdUser {
    /// The user's name.
    pub name: String,
    /// Its password; never printed.
    pub password: String,
}

impl std::fmt::Debug for EtcdUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdUser")
            .field("name", &self.name)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Default of [`EtcdOptions::max_members`].
pub const DEFAULT_MAX_MEMBERS: usize = 1024;

impl Default for EtcdOptions {
    fn default() -> EtcdOptions {
        EtcdOptions {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            lease_ttl: Duration::from_secs(10),
            prefix: "/geecache/registry/".to_owned(),
            connect_timeout: Duration::from_secs(5),
            max_members: DEFAULT_MAX_MEMBERS,
            tls: None,
            user: None,
            signing: None,
        }
    }
}

impl EtcdOptions {
    /// The defaults (TTL 10 s, prefix `/geecache/registry/`, connect timeout 5 s) with these
    /// endpoints.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> EtcdOptions {
        EtcdOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..EtcdOptions::default()
        }
    }

    pub(super) fn validate(&self) -> Result<(), DiscoveryError> {
        if self.endpoints.is_empty() {
            return Err(DiscoveryError::NoEndpoints);
        }
        if self.prefix.is_empty() {
            return Err(DiscoveryError::InvalidOptions(
                "the registry prefix is empty; it would watch every key in etcd".to_owned(),
            ));
        }
        let https = self
            .endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        match (&self.tls, https) {
            (None, 0) => {}
            (None, _) => {
                return Err(DiscoveryError::InvalidOptions(
                    "https:// etcd endpoints need --etcd-ca (the CA etcd's certificate chains to)"
                        .to_owned(),
                ));
            }
            (Some(_), n) if n < self.endpoints.len() => {
                return Err(DiscoveryError::InvalidOptions(
                    "with --etcd-ca every etcd endpoint must be https://".to_owned(),
                ));
            }
            (Some(_), _) => {}
        }
        if self.max_members == 0 {
            return Err(DiscoveryError::InvalidOptions(
                "max_members must be at least 1 (this node)".to_owned(),
            ));
        }
        if self.lease_ttl.is_zero() || self.connect_timeout.is_zero() {
            return Err(DiscoveryError::InvalidOptions(
                "lease_ttl and connect_timeout must be greater than zero".to_owned(),
            ));
        }
        Ok(())
    }
}

/// The client's options: timeouts, TLS (files read here) and the user.
pub(super) fn connect_options(options: &EtcdOptions) -> Result<ConnectOptions, DiscoveryError> {
    let mut connect = ConnectOptions::new()
        .with_connect_timeout(options.connect_timeout)
        .with_auto_token_refresh(true);
    if let Some(tls) = &options.tls {
        let read = |path: &std::path::Path, what: &str| {
            std::fs::read(path).map_err(|e| {
                DiscoveryError::InvalidOptions(format!(
                    "cannot read the etcd {what} {}: {e}",
                    path.display()
                ))
            })
        };
        let mut config = etcd_client::TlsOptions::new().ca_certificate(
            etcd_client::Certificate::from_pem(read(&tls.ca, "CA (--etcd-ca)")?),
        );
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(etcd_client::Identity::from_pem(
                read(cert, "client certificate (--etcd-cert)")?,
                read(key, "client key (--etcd-key)")?,
            ));
        }
        connect = connect.with_tls(config);
    }
    if let Some(user) = &options.user {
        connect = connect.with_user(user.name.clone(), user.password.clone());
    }
    Ok(connect)
}
