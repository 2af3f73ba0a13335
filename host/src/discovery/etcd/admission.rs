//! Which registry entries are members (see the module docs of `etcd`): [`admit`] checks one
//! entry, and the registrar takes in what it lists or watches, writing back this node's own
//! entry when someone else overwrote it.

use std::sync::atomic::Ordering;

use etcd_client::PutOptions;
use tracing::{info, warn};

use super::{Failure, Registrar, Registration, RegistryKey, bounded};
use crate::discovery::Member;

/// The member an entry under `key` (`value`) stands for, or why it is none: see the module
/// docs. `tls`: whether the cluster runs `https://`; `signing`: the cluster secret's key, when
/// entries must be signed.
pub(super) fn admit(
    prefix: &str,
    key: &str,
    value: &[u8],
    tls: bool,
    signing: Option<&RegistryKey>,
) -> Result<Member, String> {
    let registration: Registration =
        serde_json::from_slice(value).map_err(|e| format!("not a registration ({e})"))?;
    if let Some(signing) = signing
        && !signing.verifies(
            &registration.id,
            &registration.addr,
            registration.started_at_ms,
            &registration.sig,
        )
    {
        return Err(
            "it is not signed with this cluster's secret (an entry written by hand, by a node \
             with another or no --cluster-secret, or by one of an older version)"
                .into(),
        );
    }
    let suffix = key.strip_prefix(prefix).unwrap_or(key);
    if registration.id != suffix {
        return Err(format!(
            "its id {:?} is not its key's ({suffix:?}): an entry may name only itself",
            registration.id
        ));
    }
    if registration.id.is_empty()
        || registration.id.len() > 256
        || registration.id.contains(char::is_control)
    {
        return Err("its id is empty, longer than 256 bytes or has control characters".into());
    }
    let addr = registration.addr.as_str();
    let (https, authority) = if let Some(rest) = addr.strip_prefix("https://") {
        (true, rest)
    } else {
        (false, addr.strip_prefix("http://").unwrap_or(addr))
    };
    let url = url::Url::parse(&format!("http://{authority}"))
        .map_err(|e| format!("its addr {addr:?} is not host:port ({e})"))?;
    let plain = url.port().is_some()
        && url.host_str().is_some_and(|h| !h.is_empty())
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none()
        && !authority.contains('/');
    if !plain {
        return Err(format!(
            "its addr {addr:?} is not host:port (a port, and no path, user or query)"
        ));
    }
    if https != tls {
        let (theirs, ours) = if tls {
            ("plain http", "https://")
        } else {
            ("https://", "plain http")
        };
        return Err(format!(
            "its addr {addr:?} is {theirs}, and this cluster runs {ours}"
        ));
    }
    Ok(Member::new(registration.id, registration.addr))
}

impl Registrar {
    /// Takes in the entry `value` seen under `key` (listed, or put since): a member, this
    /// node's own entry (written back if it is not ours), or a rejection.
    pub(super) fn put_seen(&mut self, key: &str, value: &[u8]) {
        if key == self.key {
            if value != self.value.as_bytes() {
                self.overwritten(value);
            }
            return;
        }
        let admitted =
            admit(&self.prefix, key, value, self.tls, self.signing.as_ref()).and_then(|member| {
                let others = self.known.len() + usize::from(!self.known.contains_key(key));
                if others >= self.max_members {
                    Err(format!(
                        "the registry holds {} members already (--etcd-max-members)",
                        self.max_members
                    ))
                } else {
                    Ok(member)
                }
            });
        match admitted {
            Ok(member) => {
                self.rejected.remove(key);
                self.known.insert(key.to_owned(), member);
            }
            Err(reason) => {
                self.known.remove(key);
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                if self.rejected.get(key) != Some(&reason) {
                    warn!(key, %reason, "ignoring a registry entry");
                    self.rejected.insert(key.to_owned(), reason);
                }
            }
        }
    }

    /// This node's key holds `value`, not its registration: logged, and written back at the
    /// next keepalive tick.
    pub(super) fn overwritten(&mut self, value: &[u8]) {
        if !self.restore_due {
            warn!(
                key = %self.key,
                found = %String::from_utf8_lossy(&value[..value.len().min(256)]),
                "this node's registry entry was overwritten (another node with this id, or a \
                 write by hand); writing it back"
            );
        }
        self.restore_due = true;
    }

    /// Puts this node's registration back under its lease.
    pub(super) async fn restore(&mut self) -> Result<(), Failure> {
        let Some(lease) = self.lease else {
            return Ok(());
        };
        bounded(
            self.request_timeout,
            "writing the registration back",
            self.client.put(
                self.key.as_str(),
                self.value.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            ),
        )
        .await?;
        self.restore_due = false;
        self.counters.restored.fetch_add(1, Ordering::Relaxed);
        info!(key = %self.key, "wrote this node's registry entry back");
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const P: &str = "/geecache/registry/";

    fn entry(id: &str, addr: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"id": id, "addr": addr})).unwrap()
    }

    #[test]
    fn an_entry_is_a_member_only_under_its_own_key_with_the_clusters_scheme() {
        let key = format!("{P}a");
        let ok = admit(P, &key, &entry("a", "127.0.0.1:7001"), false, None);
        assert_eq!(ok, Ok(Member::new("a", "127.0.0.1:7001")));
        assert!(admit(P, &key, &entry("a", "http://127.0.0.1:7001"), false, None).is_ok());
        assert!(admit(P, &key, &entry("a", "https://n1.internal:7001"), true, None).is_ok());
        for (value, tls, why) in [
            (entry("b", "127.0.0.1:7001"), false, "is not its key's"),
            (b"not json".to_vec(), false, "not a registration"),
            (entry("a", "127.0.0.1"), false, "not host:port"),
            (entry("a", "127.0.0.1:7001/x"), false, "not host:port"),
            (entry("a", "user@127.0.0.1:7001"), false, "not host:port"),
            (
                entry("a", "http://127.0.0.1:7001"),
                true,
                "this cluster runs https://",
            ),
            (
                entry("a", "https://127.0.0.1:7001"),
                false,
                "this cluster runs plain http",
            ),
        ] {
            let err = admit(P, &key, &value, tls, None).unwrap_err();
            assert!(err.contains(why), "{err} (wanted: {why})");
        }
        let long = "x".repeat(257);
        let err = admit(P, &format!("{P}{long}"), &entry(&long, "h:1"), false, None).unwrap_err();
        assert!(err.contains("longer than 256"), "{err}");
    }

    #[test]
    fn with_a_secret_only_entries_signed_with_it_are_members() {
        let (key, signing) = (format!("{P}a"), RegistryKey::new("s3cret"));
        let signed = |k: &RegistryKey, addr: &str| {
            serde_json::to_vec(&serde_json::json!({
                "id": "a", "addr": "127.0.0.1:7001", "started_at_ms": 5,
                "sig": k.sign("a", addr, 5),
            }))
            .unwrap()
        };
        let ok = admit(
            P,
            &key,
            &signed(&signing, "127.0.0.1:7001"),
            false,
            Some(&signing),
        );
        assert_eq!(ok, Ok(Member::new("a", "127.0.0.1:7001")));
        for (value, why) in [
            (entry("a", "127.0.0.1:7001"), "unsigned"),
            (
                signed(&RegistryKey::new("guess"), "127.0.0.1:7001"),
                "another secret",
            ),
            (
                signed(&signing, "127.0.0.1:6666"),
                "signed for another address",
            ),
        ] {
            let err = admit(P, &key, &value, false, Some(&signing)).unwrap_err();
            assert!(
                err.contains("not signed with this cluster's secret"),
                "{why}: {err}"
            );
        }
        // Without a secret, the signature is not looked at.
        assert!(admit(P, &key, &signed(&signing, "x:1"), false, None).is_ok());
    }
}
