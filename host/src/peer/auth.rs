//! Peer authentication: an HMAC-SHA256 signature over each request, keyed by the cluster secret.
//!
//! The client sends two headers:
//!
//! - `x-geecache-date`: the time of signing, in seconds since the Unix epoch;
//! - `x-geecache-signature`: lowercase hex of HMAC-SHA256(secret, text), where text is
//!   `"{METHOD}\n{path}\n{date}\n{hex sha256 of body}"`. `path` is the request target exactly as
//!   sent, percent-encoding included (with `?query` if there is one); the body hash is that of
//!   the empty string when there is no body.
//!
//! The server recomputes the signature, compares it in constant time, and refuses the request
//! when a header is missing, the signature differs, or the date is more than
//! [`MAX_CLOCK_SKEW`] away from its own clock. Within that window a captured request could be
//! replayed verbatim; the protocol's operations are idempotent, and the secret keeps outsiders
//! from forging new ones. Peers should still talk over a private network.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Header carrying the signing time (unix seconds).
pub const DATE_HEADER: &str = "x-geecache-date";

/// Header carrying the hex HMAC-SHA256 signature.
pub const SIGNATURE_HEADER: &str = "x-geecache-signature";

/// How far a request's date may be from the server's clock, either way.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

type HmacSha256 = Hmac<Sha256>;

/// The secret shared by every node of a cluster (`--cluster-secret`). Cheap to clone; its
/// `Debug` output never shows the secret.
#[derive(Clone)]
pub struct ClusterSecret {
    /// The key of every signature; shared, never logged.
    key: Arc<[u8]>,
}

/// A cluster secret must not be empty: an empty key would make signatures forgeable by anyone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the cluster secret is empty")]
pub struct EmptySecret;

/// Why the server refused a request's signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The request carries no date or no signature.
    #[error("missing {0} header; this cluster requires signed peer requests")]
    MissingHeader(&'static str),
    /// The date header is not a number of seconds.
    #[error("malformed {DATE_HEADER} header")]
    BadDate,
    /// The date is outside the accepted window around the server's clock.
    #[error("request dated {skew_secs} s away from this node's clock (limit {} s)", MAX_CLOCK_SKEW.as_secs())]
    Stale {
        /// Distance between the request's date and the server's clock, in seconds.
        skew_secs: u64,
    },
    /// The signature does not match (wrong secret, or the request was altered).
    #[error("bad request signature")]
    BadSignature,
}

impl ClusterSecret {
    /// A secret from its bytes (typically the UTF-8 of the flag's value).
    ///
    /// # Errors
    /// [`EmptySecret`] when `secret` is empty.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<ClusterSecret, EmptySecret> {
        let secret = secret.as_ref();
        if secret.is_empty() {
            return Err(EmptySecret);
        }
        Ok(ClusterSecret { key: secret.into() })
    }

    /// The hex signature of a request: see the module docs for the signed text.
    pub fn sign(&self, method: &str, path: &str, date: u64, body: &[u8]) -> String {
        hex::encode(self.mac(method, path, date, body).finalize().into_bytes())
    }

    /// Checks a request's `date` and `signature` headers against its method, path and body, at
    /// time `now` (unix seconds).
    ///
    /// # Errors
    /// The [`AuthError`] that makes the request unacceptable.
    pub fn verify(
        &self,
        method: &str,
        path: &str,
        date: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: u64,
    ) -> Result<(), AuthError> {
        let date = date.ok_or(AuthError::MissingHeader(DATE_HEADER))?;
        let signature = signature.ok_or(AuthError::MissingHeader(SIGNATURE_HEADER))?;
        let date: u64 = date.trim().parse().map_err(|_| AuthError::BadDate)?;
        let skew_secs = date.abs_diff(now);
        if skew_secs > MAX_CLOCK_SKEW.as_secs() {
            return Err(AuthError::Stale { skew_secs });
        }
        let signature = hex::decode(signature.trim()).map_err(|_| AuthError::BadSignature)?;
        // `verify_slice` compares in constant time.
        self.mac(method, path, date, body)
            .verify_slice(&signature)
            .map_err(|_| AuthError::BadSignature)
    }

    fn mac(&self, method: &str, path: &str, date: u64, body: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length; `new` keeps the secret non-empty.
        let mut mac = HmacSha256::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        let body_hash = hex::encode(Sha256::digest(body));
        mac.update(format!("{method}\n{path}\n{date}\n{body_hash}").as_bytes());
        mac
    }
}

impl FromStr for ClusterSecret {
    type Err = EmptySecret;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ClusterSecret::new(s)
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

/// The current time in unix seconds (0 if the clock is before 1970).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const DATE: u64 = 1_700_000_000;

    fn secret() -> ClusterSecret {
        ClusterSecret::new("top secret").unwrap()
    }

    /// Golden values computed independently (Python `hmac`), so other implementations of the
    /// protocol can check themselves against the same text.
    #[test]
    fn signature_matches_the_documented_text() {
        assert_eq!(
            secret().sign("PUT", "/_geecache/scores/Tom", DATE, b"hello"),
            "b081a0f570868c836d8de317e843e96f630849c8d6ba842252526691c80765a5"
        );
        assert_eq!(
            secret().sign("GET", "/_geecache/scores/Tom", DATE, b""),
            "415ce4d83a40b0523c3f79f834af74cf16ddd5b59e44249a364f312a271c67db"
        );
    }

    #[test]
    fn verify_accepts_its_own_signature_within_the_window() {
        let s = secret();
        let sig = s.sign("GET", "/p", DATE, b"body");
        let date = DATE.to_string();
        for now in [DATE, DATE - 300, DATE + 300] {
            assert_eq!(
                s.verify("GET", "/p", Some(&date), Some(&sig), b"body", now),
                Ok(())
            );
        }
    }

    #[test]
    fn verify_refuses_what_it_should() {
        let s = secret();
        let sig = s.sign("GET", "/p", DATE, b"body");
        let date = DATE.to_string();
        let check = |method, path, date: Option<&str>, sig: Option<&str>, body: &[u8], now| {
            s.verify(method, path, date, sig, body, now)
        };
        let bad = Err(AuthError::BadSignature);
        assert_eq!(
            check("PUT", "/p", Some(&date), Some(&sig), b"body", DATE),
            bad
        );
        assert_eq!(
            check("GET", "/q", Some(&date), Some(&sig), b"body", DATE),
            bad
        );
        assert_eq!(
            check("GET", "/p", Some(&date), Some(&sig), b"bodY", DATE),
            bad
        );
        assert_eq!(
            check("GET", "/p", Some(&date), Some("zz"), b"body", DATE),
            bad
        );
        let other = ClusterSecret::new("other").unwrap();
        assert_eq!(
            other.verify("GET", "/p", Some(&date), Some(&sig), b"body", DATE),
            bad
        );
        assert_eq!(
            check("GET", "/p", None, Some(&sig), b"body", DATE),
            Err(AuthError::MissingHeader(DATE_HEADER))
        );
        assert_eq!(
            check("GET", "/p", Some(&date), None, b"body", DATE),
            Err(AuthError::MissingHeader(SIGNATURE_HEADER))
        );
        assert_eq!(
            check("GET", "/p", Some("soon"), Some(&sig), b"body", DATE),
            Err(AuthError::BadDate)
        );
        assert_eq!(
            check("GET", "/p", Some(&date), Some(&sig), b"body", DATE + 301),
            Err(AuthError::Stale { skew_secs: 301 })
        );
        assert_eq!(
            check("GET", "/p", Some(&date), Some(&sig), b"body", DATE - 301),
            Err(AuthError::Stale { skew_secs: 301 })
        );
    }

    #[test]
    fn empty_secret_is_refused_and_debug_hides_the_secret() {
        assert_eq!(ClusterSecret::new("").unwrap_err(), EmptySecret);
        assert_eq!("".parse::<ClusterSecret>().unwrap_err(), EmptySecret);
        assert!(!format!("{:?}", secret()).contains("top"));
    }
}
