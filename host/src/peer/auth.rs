//! Peer authentication: an HMAC-SHA256 signature over each request's headers, keyed by the
//! cluster secret, checked before the body is read.
//!
//! The client sends four headers:
//!
//! - `x-geecache-date`: the time of signing, in seconds since the Unix epoch;
//! - `x-geecache-nonce`: 32 lowercase hex digits (128 random bits), new for every request;
//! - `x-geecache-content-sha256`: lowercase hex of the SHA-256 of the body (of the empty string
//!   when there is no body);
//! - `x-geecache-signature`: lowercase hex of HMAC-SHA256(secret, text), where text is
//!   `"{METHOD}\n{path}\n{date}\n{nonce}\n{content-sha256}"`. `path` is the request target
//!   exactly as sent, percent-encoding included (with `?query` if there is one).
//!
//! The server checks, in this order and before it reads a byte of the body: every header is
//! there and well formed, the date is within [`MAX_CLOCK_SKEW`] of its own clock, the signature
//! matches (compared in constant time), and the nonce was not seen before ([`ReplayGuard`]:
//! nonces are remembered for twice the skew window, so a captured request cannot be sent
//! again while its date is still acceptable). Only then does it read the body (bounded) and
//! check that its hash is the signed one. An unsigned or forged request therefore costs the
//! node one HMAC, never a body read.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Header carrying the signing time (unix seconds).
pub const DATE_HEADER: &str = "x-geecache-date";

/// Header carrying the request's nonce (32 lowercase hex digits).
pub const NONCE_HEADER: &str = "x-geecache-nonce";

/// Header carrying the lowercase hex SHA-256 of the body.
pub const CONTENT_SHA256_HEADER: &str = "x-geecache-content-sha256";

/// Header carrying the hex HMAC-SHA256 signature.
pub const SIGNATURE_HEADER: &str = "x-geecache-signature";

/// How far a request's date may be from the server's clock, either way.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Most nonces a node remembers at once (one per signed request in the last
/// 2 × [`MAX_CLOCK_SKEW`]); past it, signed requests are refused until old nonces expire.
pub const MAX_REMEMBERED_NONCES: u64 = 1_000_000;

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
    /// The request lacks one of the signing headers.
    #[error("missing {0} header; this cluster requires signed peer requests")]
    MissingHeader(&'static str),
    /// A signing header is not in its documented form.
    #[error("malformed {0} header")]
    Malformed(&'static str),
    /// The date is outside the accepted window around the server's clock.
    #[error("request dated {skew_secs} s away from this node's clock (limit {} s)", MAX_CLOCK_SKEW.as_secs())]
    Stale {
        /// Distance between the request's date and the server's clock, in seconds.
        skew_secs: u64,
    },
    /// The signature does not match (wrong secret, or the request was altered).
    #[error("bad request signature")]
    BadSignature,
    /// The body is not the one whose hash was signed.
    #[error("the body does not match its {CONTENT_SHA256_HEADER} header")]
    BodyMismatch,
    /// The nonce was seen before: the request is a replay.
    #[error("request nonce was already used; every request needs a new one")]
    Replayed,
    /// The node remembers too many nonces to take another one now.
    #[error("too many signed requests in the replay window; retry later")]
    TooManyNonces,
}

impl AuthError {
    /// The stable code the server answers this refusal with.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Replayed => "replayed",
            AuthError::TooManyNonces => "overloaded",
            _ => "unauthorized",
        }
    }
}

/// The signing headers of one request, as received (see [`ClusterSecret::verify`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SignedHeaders<'a> {
    /// `x-geecache-date`.
    pub date: Option<&'a str>,
    /// `x-geecache-nonce`.
    pub nonce: Option<&'a str>,
    /// `x-geecache-content-sha256`.
    pub content_sha256: Option<&'a str>,
    /// `x-geecache-signature`.
    pub signature: Option<&'a str>,
}

/// What a checked signature vouches for: the nonce to remember, the body hash to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The request's nonce, lowercase hex.
    pub nonce: String,
    /// The signed SHA-256 of the body.
    pub content_sha256: [u8; 32],
}

impl Verified {
    /// Checks that `body` is the body that was signed.
    ///
    /// # Errors
    /// [`AuthError::BodyMismatch`] otherwise.
    pub fn check_body(&self, body: &[u8]) -> Result<(), AuthError> {
        if Sha256::digest(body).as_slice() == self.content_sha256 {
            Ok(())
        } else {
            Err(AuthError::BodyMismatch)
        }
    }
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
    pub fn sign(
        &self,
        method: &str,
        path: &str,
        date: u64,
        nonce: &str,
        content_sha256: &str,
    ) -> String {
        hex::encode(
            self.mac(method, path, date, nonce, content_sha256)
                .finalize()
                .into_bytes(),
        )
    }

    /// Every signing header of a request with this method, path and body, signed now with a
    /// fresh nonce: what a client sends.
    pub fn sign_request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> [(&'static str, String); 4] {
        let date = unix_now();
        let nonce = new_nonce();
        let content_sha256 = hex::encode(Sha256::digest(body));
        let signature = self.sign(method, path, date, &nonce, &content_sha256);
        [
            (DATE_HEADER, date.to_string()),
            (NONCE_HEADER, nonce),
            (CONTENT_SHA256_HEADER, content_sha256),
            (SIGNATURE_HEADER, signature),
        ]
    }

    /// Checks a request's signing headers against its method and path at time `now` (unix
    /// seconds). The body is checked later, with [`Verified::check_body`], and the nonce with a
    /// [`ReplayGuard`].
    ///
    /// # Errors
    /// The [`AuthError`] that makes the request unacceptable.
    pub fn verify(
        &self,
        method: &str,
        path: &str,
        headers: &SignedHeaders<'_>,
        now: u64,
    ) -> Result<Verified, AuthError> {
        let date = headers.date.ok_or(AuthError::MissingHeader(DATE_HEADER))?;
        let nonce = headers
            .nonce
            .ok_or(AuthError::MissingHeader(NONCE_HEADER))?;
        let content_sha256 = headers
            .content_sha256
            .ok_or(AuthError::MissingHeader(CONTENT_SHA256_HEADER))?;
        let signature = headers
            .signature
            .ok_or(AuthError::MissingHeader(SIGNATURE_HEADER))?;
        let date: u64 = date
            .trim()
            .parse()
            .map_err(|_| AuthError::Malformed(DATE_HEADER))?;
        if !is_lower_hex(nonce, 32) {
            return Err(AuthError::Malformed(NONCE_HEADER));
        }
        let hash: [u8; 32] = hex::decode(content_sha256)
            .ok()
            .filter(|_| is_lower_hex(content_sha256, 64))
            .and_then(|h| h.try_into().ok())
            .ok_or(AuthError::Malformed(CONTENT_SHA256_HEADER))?;
        let skew_secs = date.abs_diff(now);
        if skew_secs > MAX_CLOCK_SKEW.as_secs() {
            return Err(AuthError::Stale { skew_secs });
        }
        let signature = hex::decode(signature.trim()).map_err(|_| AuthError::BadSignature)?;
        // `verify_slice` compares in constant time.
        self.mac(method, path, date, nonce, content_sha256)
            .verify_slice(&signature)
            .map_err(|_| AuthError::BadSignature)?;
        Ok(Verified {
            nonce: nonce.to_string(),
            content_sha256: hash,
        })
    }

    fn mac(
        &self,
        method: &str,
        path: &str,
        date: u64,
        nonce: &str,
        content_sha256: &str,
    ) -> HmacSha256 {
        // HMAC accepts keys of any length; `new` keeps the secret non-empty.
        let mut mac = HmacSha256::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(format!("{method}\n{path}\n{date}\n{nonce}\n{content_sha256}").as_bytes());
        mac
    }
}

/// Whether `s` is exactly `len` lowercase hex digits.
fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A fresh nonce: 128 random bits as 32 lowercase hex digits.
pub fn new_nonce() -> String {
    let mut bytes = [0u8; 16];
    // The OS random source does not fail on the systems we run on; if it ever did, a
    // time-and-counter nonce still never repeats within the process.
    if getrandom::fill(&mut bytes).is_err() {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes[..8].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        bytes[8..].copy_from_slice(&(nanos as u64).to_le_bytes());
    }
    hex::encode(bytes)
}

/// The nonces of signed requests seen in the last 2 × [`MAX_CLOCK_SKEW`]: a request whose date
/// is still acceptable cannot be replayed. Bounded: when it holds `capacity` nonces it refuses
/// new requests rather than forget old nonces (forgetting would reopen the replay window).
#[derive(Clone)]
pub struct ReplayGuard {
    /// Nonces by value; each expires 2 × [`MAX_CLOCK_SKEW`] after it was first seen.
    seen: moka::sync::Cache<String, ()>,
    /// Nonces held, exactly (moka's own count lags behind): up on insert, down as they expire.
    held: Arc<AtomicU64>,
    /// Most nonces held at once.
    capacity: u64,
}

impl fmt::Debug for ReplayGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayGuard")
            .field("held", &self.held.load(Ordering::SeqCst))
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Default for ReplayGuard {
    fn default() -> Self {
        ReplayGuard::with_capacity(MAX_REMEMBERED_NONCES)
    }
}

impl ReplayGuard {
    /// A guard remembering at most `capacity` nonces.
    pub fn with_capacity(capacity: u64) -> ReplayGuard {
        let held = Arc::new(AtomicU64::new(0));
        let expired = held.clone();
        ReplayGuard {
            // moka itself would evict past its capacity, silently forgetting nonces: give it
            // room to spare and refuse at `capacity` ourselves.
            seen: moka::sync::Cache::builder()
                .max_capacity(capacity.saturating_mul(2).max(1))
                .time_to_live(2 * MAX_CLOCK_SKEW)
                .eviction_listener(move |_, _, _| {
                    expired.fetch_sub(1, Ordering::SeqCst);
                })
                .build(),
            held,
            capacity,
        }
    }

    /// Remembers `nonce`.
    ///
    /// # Errors
    /// [`AuthError::Replayed`] when it was seen before; [`AuthError::TooManyNonces`] when the
    /// guard is full.
    pub fn check(&self, nonce: &str) -> Result<(), AuthError> {
        if self.seen.contains_key(nonce) {
            return Err(AuthError::Replayed);
        }
        if self.held.load(Ordering::SeqCst) >= self.capacity {
            // Expired nonces leave when moka gets to them; let it before refusing.
            self.seen.run_pending_tasks();
            if self.held.load(Ordering::SeqCst) >= self.capacity {
                return Err(AuthError::TooManyNonces);
            }
        }
        // Counted before it is inserted, so an expiry never takes the count below zero.
        self.held.fetch_add(1, Ordering::SeqCst);
        let entry = self.seen.entry(nonce.to_string()).or_insert(());
        if entry.is_fresh() {
            Ok(())
        } else {
            self.held.fetch_sub(1, Ordering::SeqCst);
            Err(AuthError::Replayed)
        }
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
    const NONCE: &str = "000102030405060708090a0b0c0d0e0f";
    const HELLO_SHA256: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn secret() -> ClusterSecret {
        ClusterSecret::new("top secret").unwrap()
    }

    /// Golden values computed independently (Python `hashlib` and `hmac`), so other
    /// implementations of the protocol can check themselves against the same text.
    #[test]
    fn signature_matches_the_documented_text() {
        assert_eq!(hex::encode(Sha256::digest(b"hello")), HELLO_SHA256);
        assert_eq!(
            secret().sign("PUT", "/_geecache/scores/Tom", DATE, NONCE, HELLO_SHA256),
            "b6cd4c4d3569e373cde5b0914f45f559d262034861c48a51c95f6d404de0a90d"
        );
        assert_eq!(
            secret().sign("GET", "/_geecache/scores/Tom", DATE, NONCE, EMPTY_SHA256),
            "2a6ce725fd4803c5e84ea99c6e3f51b443a12f3a1f92e9e101951ab6147b3f56"
        );
    }

    /// Headers of a request signed at `DATE` over `body`.
    fn signed(s: &ClusterSecret, method: &str, path: &str, body: &[u8]) -> [String; 4] {
        let hash = hex::encode(Sha256::digest(body));
        let sig = s.sign(method, path, DATE, NONCE, &hash);
        [DATE.to_string(), NONCE.to_string(), hash, sig]
    }

    fn headers(h: &[String; 4]) -> SignedHeaders<'_> {
        SignedHeaders {
            date: Some(&h[0]),
            nonce: Some(&h[1]),
            content_sha256: Some(&h[2]),
            signature: Some(&h[3]),
        }
    }

    #[test]
    fn verify_accepts_its_own_signature_within_the_window_and_checks_the_body() {
        let s = secret();
        let h = signed(&s, "GET", "/p", b"body");
        for now in [DATE, DATE - 300, DATE + 300] {
            let verified = s.verify("GET", "/p", &headers(&h), now).unwrap();
            assert_eq!(verified.nonce, NONCE);
            assert_eq!(verified.check_body(b"body"), Ok(()));
            assert_eq!(verified.check_body(b"bodY"), Err(AuthError::BodyMismatch));
        }
        let [date, nonce, hash, sig] = s.sign_request("PUT", "/q", b"x");
        assert_eq!(date.0, DATE_HEADER);
        assert!(is_lower_hex(&nonce.1, 32));
        let fresh = SignedHeaders {
            date: Some(&date.1),
            nonce: Some(&nonce.1),
            content_sha256: Some(&hash.1),
            signature: Some(&sig.1),
        };
        let verified = s.verify("PUT", "/q", &fresh, unix_now()).unwrap();
        assert_eq!(verified.check_body(b"x"), Ok(()));
    }

    #[test]
    fn verify_refuses_what_it_should() {
        let s = secret();
        let h = signed(&s, "GET", "/p", b"body");
        let ok = headers(&h);
        let bad = Err(AuthError::BadSignature);
        assert_eq!(s.verify("PUT", "/p", &ok, DATE), bad);
        assert_eq!(s.verify("GET", "/q", &ok, DATE), bad);
        let other = ClusterSecret::new("other").unwrap();
        assert_eq!(other.verify("GET", "/p", &ok, DATE), bad);
        // Another nonce or body hash than the signed one.
        let nonce = "f".repeat(32);
        let hash = "0".repeat(64);
        for altered in [
            SignedHeaders {
                nonce: Some(&nonce),
                ..ok
            },
            SignedHeaders {
                content_sha256: Some(&hash),
                ..ok
            },
            SignedHeaders {
                signature: Some("zz"),
                ..ok
            },
        ] {
            assert_eq!(s.verify("GET", "/p", &altered, DATE), bad);
        }
        for (missing, name) in [
            (SignedHeaders { date: None, ..ok }, DATE_HEADER),
            (SignedHeaders { nonce: None, ..ok }, NONCE_HEADER),
            (
                SignedHeaders {
                    content_sha256: None,
                    ..ok
                },
                CONTENT_SHA256_HEADER,
            ),
            (
                SignedHeaders {
                    signature: None,
                    ..ok
                },
                SIGNATURE_HEADER,
            ),
        ] {
            assert_eq!(
                s.verify("GET", "/p", &missing, DATE),
                Err(AuthError::MissingHeader(name))
            );
        }
        let upper = NONCE.to_uppercase();
        let short_hash = "ab".repeat(31);
        for (malformed, name) in [
            (
                SignedHeaders {
                    date: Some("soon"),
                    ..ok
                },
                DATE_HEADER,
            ),
            (
                SignedHeaders {
                    nonce: Some("abc"),
                    ..ok
                },
                NONCE_HEADER,
            ),
            (
                SignedHeaders {
                    nonce: Some(&upper),
                    ..ok
                },
                NONCE_HEADER,
            ),
            (
                SignedHeaders {
                    content_sha256: Some(&short_hash),
                    ..ok
                },
                CONTENT_SHA256_HEADER,
            ),
        ] {
            assert_eq!(
                s.verify("GET", "/p", &malformed, DATE),
                Err(AuthError::Malformed(name))
            );
        }
        assert_eq!(
            s.verify("GET", "/p", &ok, DATE + 301),
            Err(AuthError::Stale { skew_secs: 301 })
        );
        assert_eq!(
            s.verify("GET", "/p", &ok, DATE - 301),
            Err(AuthError::Stale { skew_secs: 301 })
        );
    }

    #[test]
    fn a_nonce_is_accepted_once_and_a_full_guard_refuses_rather_than_forgets() {
        let guard = ReplayGuard::with_capacity(2);
        assert_eq!(guard.check("a"), Ok(()));
        assert_eq!(guard.check("a"), Err(AuthError::Replayed));
        assert_eq!(guard.check("b"), Ok(()));
        assert_eq!(guard.check("c"), Err(AuthError::TooManyNonces));
        assert_eq!(guard.check("a"), Err(AuthError::Replayed), "not forgotten");
        assert_eq!(AuthError::Replayed.code(), "replayed");
    }

    #[test]
    fn nonces_do_not_repeat() {
        let nonces: std::collections::HashSet<String> = (0..1000).map(|_| new_nonce()).collect();
        assert_eq!(nonces.len(), 1000);
    }

    #[test]
    fn empty_secret_is_refused_and_debug_hides_the_secret() {
        assert_eq!(ClusterSecret::new("").unwrap_err(), EmptySecret);
        assert_eq!("".parse::<ClusterSecret>().unwrap_err(), EmptySecret);
        assert!(!format!("{:?}", secret()).contains("top"));
    }
}
