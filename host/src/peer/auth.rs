//! Peer authentication: an HMAC-SHA256 signature over each request's headers, keyed by the
//! cluster secret, checked before the body is read.
//!
//! The client sends four headers:
//!
//! - `x-geecache-date`: the time of signing, in seconds since the Unix epoch, with three
//!   decimals (`1764197105.703`; whole seconds are accepted too);
//! - `x-geecache-nonce`: 32 lowercase hex digits (128 random bits), new for every request;
//! - `x-geecache-content-sha256`: lowercase hex of the SHA-256 of the body (of the empty string
//!   when there is no body);
//! - `x-geecache-signature`: lowercase hex of HMAC-SHA256(secret, text), where text is
//!   `"{METHOD}\n{authority}\n{path}\n{date}\n{nonce}\n{content-sha256}"`. `authority` is the
//!   `host:port` of the node the request is for, as its peers know it (its advertised address;
//!   the port always written, lowercase host, IPv6 in brackets: see [`authority_of`]), and is
//!   also sent as the `Host` header. `path` is the request target exactly as sent,
//!   percent-encoding included (with `?query` if there is one).
//!
//! The server checks, in this order and before it reads a byte of the body: every header is
//! there and well formed, the `Host` names this node, the signature matches (computed over
//! this node's own advertised address, and compared in constant time), the date is at most
//! [`MAX_CLOCK_SKEW`] behind its own clock and [`MAX_CLOCK_SKEW_AHEAD`] ahead of it, the
//! request was not signed before this node started, and the nonce was not seen before. Only
//! then does it read the body (bounded) and check that its hash is the signed one. An unsigned or forged request therefore costs the node one HMAC, never a
//! body read.
//!
//! Replays are closed three ways. The authority in the signed text makes a request captured on
//! its way to one node useless at any other. The [`ReplayGuard`] remembers every nonce for as
//! long as its date is acceptable (2 × [`MAX_CLOCK_SKEW`] + 2 s), so it cannot be sent again to
//! the same node (the guard is in `replay.rs`). And since the guard lives in memory, a node
//! refuses anything dated before it started: a restart forgets nonces, so it must not accept
//! what was signed before it; and since its previous run took dates at most
//! [`MAX_CLOCK_SKEW_AHEAD`] ahead of its clock, a request dated ahead and captured before the
//! restart is, by then, dated before it too (unless the restart took less than that).
//!
//! Nodes' clocks must agree within [`MAX_CLOCK_SKEW_AHEAD`] (1 s; 30 s the other way): run NTP
//! on every node.
//!
//! **Answers are signed too.** Every answer to a request whose signature matched (the peer
//! protocol, rollouts and flushes, refusals of its date, nonce or body included; never an
//! answer to an unsigned or badly signed request) has `x-geecache-answer-signature`:
//! HMAC-SHA256(secret, `"answer\n{nonce}\n{status}\n"` + body) ([`super::sign_answers`]).
//! The caller checks it before it decodes anything; an answer without a valid one is not used
//! (`peer_answer_unsigned`): a ring member that does not know the secret can receive requests
//! but cannot feed values, refusals or rollout verdicts back. The nonce ties the answer to its
//! request, so a recorded answer cannot be replayed to another request.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub use super::replay::ReplayGuard;

/// Header carrying the signing time (unix seconds, optionally with a `.` and 3 digits of
/// milliseconds).
pub const DATE_HEADER: &str = "x-geecache-date";

/// Header carrying an answer's signature: hex HMAC-SHA256 with the cluster secret over
/// `"answer\n{request nonce}\n{status}\n"` followed by the answer's body, so an answer is
/// bound to the request it answers and to its bytes (see [`ClusterSecret::sign_answer`]).
pub const ANSWER_SIGNATURE_HEADER: &str = "x-geecache-answer-signature";

/// Header carrying the request's nonce (32 lowercase hex digits).
pub const NONCE_HEADER: &str = "x-geecache-nonce";

/// Header carrying the lowercase hex SHA-256 of the body.
pub const CONTENT_SHA256_HEADER: &str = "x-geecache-content-sha256";

/// Header carrying the hex HMAC-SHA256 signature.
pub const SIGNATURE_HEADER: &str = "x-geecache-signature";

/// How far a request's date may be behind the server's clock (and the span the nonce windows
/// are sized for). Short, because every nonce must be remembered for as long: nodes need
/// synchronized clocks (NTP).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);

/// How far a request's date may be ahead of the server's clock, to the millisecond: much
/// less than [`MAX_CLOCK_SKEW`], because a restarted node forgets its nonces and refuses only
/// what is dated before it started; a request its previous run took is dated at most this far
/// past that run's clock, so only one captured within this long before a restart that takes
/// less could be replayed after it (closing that too would need nonces kept across restarts,
/// or refusing every peer for this long after a start, which rolling restarts cannot afford).
pub const MAX_CLOCK_SKEW_AHEAD: Duration = Duration::from_secs(1);

/// How long a nonce is remembered: 2 × [`MAX_CLOCK_SKEW`], plus one second for dates being
/// whole seconds and one for the second the check happens in.
pub const NONCE_WINDOW: Duration = Duration::from_secs(2 * MAX_CLOCK_SKEW.as_secs() + 2);

/// Most nonces a node remembers at once: 4 Mi (4,194,304) of 16 bytes, kept in sorted slices
/// without spare room, so 64 MiB at the cap, plus the latest few thousand of each second in
/// small hash sets (under 9 MiB in all; about 69 MiB measured at the cap). A nonce is kept
/// until its date is [`MAX_CLOCK_SKEW`] + 1 s old: 32 s for a request dated now, at most
/// [`NONCE_WINDOW`] (62 s) for one dated the full skew ahead. So a node takes at least
/// cap / 62 s, about 67,000 signed requests per second, sustained (about 130,000 with
/// synchronized clocks); past it, signed requests get 503 `overloaded` until old nonces age
/// out (never forgotten early, which would reopen the replay window).
pub const MAX_REMEMBERED_NONCES: u64 = 4 * 1024 * 1024;

type HmacSha256 = Hmac<Sha256>;

/// The secret shared by every node of a cluster (`--cluster-secret`). Cheap to clone; its
/// `Debug` output never shows the secret.
#[derive(Clone)]
pub struct ClusterSecret {
    /// The HMAC keyed with the secret, before any text: every signature starts from a copy,
    /// so the key is not hashed into its pads again for each. Shared, never logged.
    keyed: Arc<HmacSha256>,
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
    #[error("request dated {skew_secs} s away from this node's clock (limits: {} s behind, {} s ahead; are the nodes' clocks synchronized?)", MAX_CLOCK_SKEW.as_secs(), MAX_CLOCK_SKEW_AHEAD.as_secs())]
    Stale {
        /// Distance between the request's date and the server's clock, in seconds.
        skew_secs: u64,
    },
    /// The request names another node than this one (`Host`).
    #[error("request signed for another node ({host}); this node is {this}")]
    OtherNode {
        /// The authority the request was sent for.
        host: String,
        /// This node's advertised authority.
        this: String,
    },
    /// The signature does not match (wrong secret, or the request was altered).
    #[error("bad request signature")]
    BadSignature,
    /// The request is dated before this node started, so before its replay guard: its nonce
    /// may have been used with the node's previous run.
    #[error("request signed before this node started; retry")]
    BeforeStart,
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
    /// Whether the request's signature matched before it was refused: only then may its
    /// refusal be signed (an answer signed for a nonce of the sender's choosing would let a
    /// member without the secret make an honest node vouch for refusals).
    pub fn signature_matched(&self) -> bool {
        matches!(
            self,
            AuthError::Stale { .. }
                | AuthError::BeforeStart
                | AuthError::BodyMismatch
                | AuthError::Replayed
                | AuthError::TooManyNonces
        )
    }

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

/// What a checked signature vouches for: the date and nonce to remember, the body hash to
/// compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signed date (unix seconds), which says how long the nonce must be remembered.
    pub date: u64,
    /// The same date in milliseconds, which says whether it was signed before the node
    /// started.
    pub date_ms: u64,
    /// The request's nonce, as the number its 32 hex digits spell.
    pub nonce: u128,
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

/// The authority a request for the node at `addr` (`host:port` or `http://host:port`) is
/// signed for: `host:port`, the host lowercase (IPv6 in brackets), the port always written
/// (80 when `addr` has none). Client and server both derive it with this function, the client
/// from the peer's address and the server from its own advertised address, so they agree
/// however the address was spelled. Text that is no such address is returned as it is.
pub fn authority_of(addr: &str) -> String {
    match super::node_url(addr) {
        Ok(url) => match (url.host_str(), url.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            _ => addr.to_string(),
        },
        Err(_) => addr.to_string(),
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
        // HMAC accepts keys of any length; the check above keeps the secret non-empty.
        let keyed = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
        Ok(ClusterSecret {
            keyed: Arc::new(keyed),
        })
    }

    /// The hex signature of a request: see the module docs for the signed text.
    pub fn sign(
        &self,
        method: &str,
        authority: &str,
        path: &str,
        date: u64,
        nonce: &str,
        content_sha256: &str,
    ) -> String {
        self.sign_dated(
            method,
            authority,
            path,
            &date.to_string(),
            nonce,
            content_sha256,
        )
    }

    /// [`ClusterSecret::sign`] with the date as it goes in its header (`SECS` or `SECS.MMM`).
    fn sign_dated(
        &self,
        method: &str,
        authority: &str,
        path: &str,
        date: &str,
        nonce: &str,
        content_sha256: &str,
    ) -> String {
        hex::encode(
            self.mac(method, authority, path, date, nonce, content_sha256)
                .finalize()
                .into_bytes(),
        )
    }

    /// Every signing header of a request with this method, for the node at `authority` (see
    /// [`authority_of`]), with this path and body, signed now with a fresh nonce: what a client
    /// sends (with `authority` as its `Host`).
    pub fn sign_request(
        &self,
        method: &str,
        authority: &str,
        path: &str,
        body: &[u8],
    ) -> [(&'static str, String); 4] {
        // Milliseconds, so a node that just started (and refuses what was signed before it)
        // takes a request signed a moment after it, in the same second.
        let now_ms = unix_now_ms();
        let date = format!("{}.{:03}", now_ms / 1000, now_ms % 1000);
        let nonce = new_nonce();
        let content_sha256 = hex::encode(Sha256::digest(body));
        let signature = self.sign_dated(method, authority, path, &date, &nonce, &content_sha256);
        [
            (DATE_HEADER, date),
            (NONCE_HEADER, nonce),
            (CONTENT_SHA256_HEADER, content_sha256),
            (SIGNATURE_HEADER, signature),
        ]
    }

    /// Checks a request's signing headers against its method and path at time `now` (unix
    /// seconds), for the node whose authority is `authority` (the server's own, see
    /// [`authority_of`]). The `Host` of the request is checked by [`NodeAuth::verify`]; the body
    /// later, with [`Verified::check_body`]; the nonce with a [`ReplayGuard`].
    ///
    /// # Errors
    /// The [`AuthError`] that makes the request unacceptable.
    pub fn verify(
        &self,
        method: &str,
        authority: &str,
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
        let date_text = date.trim();
        let (date, date_ms) = parse_date(date_text).ok_or(AuthError::Malformed(DATE_HEADER))?;
        let nonce_value = Some(nonce)
            .filter(|n| is_lower_hex(n, 32))
            .and_then(|n| u128::from_str_radix(n, 16).ok())
            .ok_or(AuthError::Malformed(NONCE_HEADER))?;
        let hash: [u8; 32] = hex::decode(content_sha256)
            .ok()
            .filter(|_| is_lower_hex(content_sha256, 64))
            .and_then(|h| h.try_into().ok())
            .ok_or(AuthError::Malformed(CONTENT_SHA256_HEADER))?;
        let signature = hex::decode(signature.trim()).map_err(|_| AuthError::BadSignature)?;
        // `verify_slice` compares in constant time.
        self.mac(method, authority, path, date_text, nonce, content_sha256)
            .verify_slice(&signature)
            .map_err(|_| AuthError::BadSignature)?;
        // After the signature: a refusal for the date is then one a node that knows the secret
        // may sign (see [`AuthError::signature_matched`]), so a peer whose clock is off learns
        // why, and no one else gets a signed answer.
        let skew_secs = date.abs_diff(now);
        let limit = if date > now {
            MAX_CLOCK_SKEW_AHEAD
        } else {
            MAX_CLOCK_SKEW
        };
        if skew_secs > limit.as_secs() {
            return Err(AuthError::Stale { skew_secs });
        }
        Ok(Verified {
            date,
            date_ms,
            nonce: nonce_value,
            content_sha256: hash,
        })
    }

    /// The hex signature of an answer with `status` and `body` to the request whose nonce is
    /// `nonce`: what a node puts in [`ANSWER_SIGNATURE_HEADER`]. The text starts with
    /// `answer`, which no request's signed text does (they start with a method), so neither
    /// signature can stand for the other.
    pub fn sign_answer(&self, nonce: &str, status: u16, body: &[u8]) -> String {
        hex::encode(self.answer_mac(nonce, status, body).finalize().into_bytes())
    }

    /// Whether `signature` (the answer's [`ANSWER_SIGNATURE_HEADER`]) signs this answer to the
    /// request with `nonce`; compared in constant time. A missing signature fails.
    pub fn check_answer(
        &self,
        nonce: &str,
        status: u16,
        body: &[u8],
        signature: Option<&str>,
    ) -> bool {
        let Some(signature) = signature.and_then(|s| hex::decode(s.trim()).ok()) else {
            return false;
        };
        self.answer_mac(nonce, status, body)
            .verify_slice(&signature)
            .is_ok()
    }

    fn answer_mac(&self, nonce: &str, status: u16, body: &[u8]) -> HmacSha256 {
        let mut mac = (*self.keyed).clone();
        // The text `answer\n{nonce}\n{status}\n`, then the body, fed in pieces.
        for piece in [
            b"answer".as_slice(),
            nonce.as_bytes(),
            status.to_string().as_bytes(),
        ] {
            mac.update(piece);
            mac.update(b"\n");
        }
        mac.update(body);
        mac
    }

    fn mac(
        &self,
        method: &str,
        authority: &str,
        path: &str,
        date: &str,
        nonce: &str,
        content_sha256: &str,
    ) -> HmacSha256 {
        // The text `{method}\n{authority}\n{path}\n{date}\n{nonce}\n{content_sha256}`, fed
        // in pieces.
        let mut mac = (*self.keyed).clone();
        for (i, piece) in [method, authority, path, date, nonce, content_sha256]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                mac.update(b"\n");
            }
            mac.update(piece.as_bytes());
        }
        mac
    }
}

/// How one node checks its peers' requests: the cluster secret, the node's own authority (what
/// requests must be signed for), and the nonces seen since it started. Cheap to clone; clones
/// share the nonces. Make one per node (process), when it starts.
#[derive(Debug, Clone)]
pub struct NodeAuth {
    /// The key every request must be signed with.
    secret: ClusterSecret,
    /// This node's advertised `host:port` (see [`authority_of`]): requests signed for another
    /// node are refused, so a request captured on its way there cannot be replayed here.
    authority: String,
    /// The port a `Host` without one means: 443 when the node is advertised as `https://`
    /// (clients leave a scheme's default port out of `Host`), else 80.
    default_port: u16,
    /// Whether a `Host` spelled exactly as `authority` names this node (it does whenever
    /// `authority` is an address, as it is unless the advertised address was not one): then
    /// the `Host` peers send, which they derive as this node does, is checked without parsing
    /// it again.
    host_as_is: bool,
    /// Nonces seen, and the start time before which requests are refused.
    replays: ReplayGuard,
    /// Requests refused, by reason (shared by clones).
    refused: Arc<[AtomicU64; REFUSAL_REASONS.len()]>,
}

/// Why [`NodeAuth::verify`] refused requests, as the `reason` label of
/// `geecache_peer_requests_refused_total`: no valid signature for this node (unsigned, badly
/// signed, malformed, for another node), a date out of [`MAX_CLOCK_SKEW`] behind or
/// [`MAX_CLOCK_SKEW_AHEAD`] ahead (clocks apart), signed before this node started, a nonce seen
/// before, the replay guard full.
pub const REFUSAL_REASONS: [&str; 5] = ["signature", "clock", "before_start", "replayed", "full"];

impl AuthError {
    /// Its place in [`REFUSAL_REASONS`].
    fn reason_index(&self) -> usize {
        match self {
            AuthError::Stale { .. } => 1,
            AuthError::BeforeStart => 2,
            AuthError::Replayed => 3,
            AuthError::TooManyNonces => 4,
            _ => 0,
        }
    }
}

impl NodeAuth {
    /// Requests refused so far, by [`REFUSAL_REASONS`].
    pub fn refused(&self) -> [u64; REFUSAL_REASONS.len()] {
        std::array::from_fn(|i| self.refused[i].load(Ordering::Relaxed))
    }

    /// The cluster secret it checks with (and answers are signed with).
    pub fn secret(&self) -> &ClusterSecret {
        &self.secret
    }

    /// Checks for the node advertised at `advertise_addr`, starting now.
    pub fn new(secret: ClusterSecret, advertise_addr: &str) -> NodeAuth {
        NodeAuth::with_guard(secret, advertise_addr, ReplayGuard::default())
    }

    /// [`NodeAuth::new`] with this replay guard.
    pub fn with_guard(
        secret: ClusterSecret,
        advertise_addr: &str,
        replays: ReplayGuard,
    ) -> NodeAuth {
        let https = advertise_addr
            .get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"));
        let authority = authority_of(advertise_addr);
        let default_port = if https { 443 } else { 80 };
        NodeAuth {
            secret,
            host_as_is: host_authority(&authority, default_port) == authority,
            authority,
            default_port,
            replays,
            refused: Arc::default(),
        }
    }

    /// This node's authority, as requests must be signed for it.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Checks a request's headers at time `now` (unix seconds): `host` (its `Host`), the
    /// signature (see [`ClusterSecret::verify`]), then the start time and the nonce (see
    /// [`ReplayGuard::check`]). The body is left to [`Verified::check_body`]. A refusal is
    /// counted by its reason ([`NodeAuth::refused`]).
    ///
    /// # Errors
    /// The [`AuthError`] that makes the request unacceptable.
    pub fn verify(
        &self,
        method: &str,
        host: Option<&str>,
        path: &str,
        headers: &SignedHeaders<'_>,
        now: u64,
    ) -> Result<Verified, AuthError> {
        let checked = (|| {
            self.check_host(host.ok_or(AuthError::MissingHeader("host"))?)?;
            let verified = self
                .secret
                .verify(method, &self.authority, path, headers, now)?;
            // To the millisecond, against the clock itself (`now` is whole seconds): what a run
            // takes is dated at most this far past its clock, which bounds what a restart leaves
            // open.
            let ahead_ms = u64::try_from(MAX_CLOCK_SKEW_AHEAD.as_millis()).unwrap_or(u64::MAX);
            let clock_ms = unix_now_ms();
            if verified.date_ms > clock_ms.saturating_add(ahead_ms) {
                return Err(AuthError::Stale {
                    skew_secs: (verified.date_ms - clock_ms).div_ceil(1000),
                });
            }
            self.replays
                .check_ms(verified.nonce, verified.date_ms, now)?;
            Ok(verified)
        })();
        if let Err(e) = &checked {
            self.refused[e.reason_index()].fetch_add(1, Ordering::Relaxed);
        }
        checked
    }
}

impl NodeAuth {
    /// Checks that a request's `Host` names this node: as [`authority_of`] spells it (peers
    /// send it so: compared as it is), or spelled otherwise (parsed, see [`host_authority`]).
    ///
    /// # Errors
    /// [`AuthError::OtherNode`] when it names another node.
    fn check_host(&self, host: &str) -> Result<(), AuthError> {
        if self.host_as_is && host == self.authority {
            return Ok(());
        }
        let host = host_authority(host, self.default_port);
        if host != self.authority {
            return Err(AuthError::OtherNode {
                host,
                this: self.authority.clone(),
            });
        }
        Ok(())
    }
}

/// The authority a `Host` header names (see [`authority_of`]), the port `default_port` when
/// it has none.
fn host_authority(host: &str, default_port: u16) -> String {
    // `host:port`, or `[v6]:port`; a bare IPv6 address is always in brackets in a `Host`.
    let has_port = host.rsplit_once(':').is_some_and(|(name, port)| {
        !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && (!name.contains(':') || name.ends_with(']'))
    });
    if has_port {
        authority_of(host)
    } else {
        // An empty port (`node:`) is the default one too (RFC 3986, 3.2.3).
        let host = host.strip_suffix(':').unwrap_or(host);
        authority_of(&format!("{host}:{default_port}"))
    }
}

/// A date header's value: `SECS` or `SECS.MMM` (unix time), as seconds and milliseconds.
fn parse_date(text: &str) -> Option<(u64, u64)> {
    let (secs, ms) = match text.split_once('.') {
        Some((secs, ms)) if ms.len() == 3 && ms.bytes().all(|b| b.is_ascii_digit()) => {
            (secs, ms.parse::<u64>().ok()?)
        }
        Some(_) => return None,
        None => (text, 0),
    };
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = secs.parse().ok()?;
    Some((secs, secs.checked_mul(1000)?.checked_add(ms)?))
}

/// Whether `s` is exactly `len` lowercase hex digits.
pub(super) fn is_lower_hex(s: &str, len: usize) -> bool {
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
/// Milliseconds since the Unix epoch.
pub(crate) fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn unix_now() -> u64 {
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
    const NODE: &str = "node-a.example:9000";

    fn secret() -> ClusterSecret {
        ClusterSecret::new("top secret").unwrap()
    }

    /// Golden values computed independently (Python `hashlib` and `hmac`), so other
    /// implementations of the protocol can check themselves against the same text.
    #[test]
    fn signature_matches_the_documented_text() {
        assert_eq!(hex::encode(Sha256::digest(b"hello")), HELLO_SHA256);
        assert_eq!(
            secret().sign(
                "PUT",
                NODE,
                "/_geecache/scores/Tom",
                DATE,
                NONCE,
                HELLO_SHA256
            ),
            "64d3b65950c86680bab933a06a5874b14d6b03eaf8ef29970112d61660bc4f47"
        );
        assert_eq!(
            secret().sign(
                "GET",
                NODE,
                "/_geecache/scores/Tom",
                DATE,
                NONCE,
                EMPTY_SHA256
            ),
            "4160bc4b9e1d181db8f9672c2ad77e94f241dce2e1541e0cd278fac47a4de025"
        );
        // An answer: HMAC-SHA256(secret, "answer\n{nonce}\n{status}\n" + body).
        let answer = "06de0cc7f104066c3ccc8b29d5349af4cf24d4b2031e4a2a8bf1d1e564e52b2e";
        let nonce = "0123456789abcdef0123456789abcdef";
        assert_eq!(secret().sign_answer(nonce, 200, b"body"), answer);
        assert!(secret().check_answer(nonce, 200, b"body", Some(answer)));
        assert!(!secret().check_answer(nonce, 201, b"body", Some(answer)));
    }

    /// Headers of a request signed at `DATE` over `body`.
    fn signed(s: &ClusterSecret, method: &str, path: &str, body: &[u8]) -> [String; 4] {
        let hash = hex::encode(Sha256::digest(body));
        let sig = s.sign(method, NODE, path, DATE, NONCE, &hash);
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
        for now in [DATE, DATE - 1, DATE + 30] {
            let verified = s.verify("GET", NODE, "/p", &headers(&h), now).unwrap();
            assert_eq!(verified.nonce, 0x000102030405060708090a0b0c0d0e0f);
            assert_eq!(verified.date, DATE);
            assert_eq!(verified.check_body(b"body"), Ok(()));
            assert_eq!(verified.check_body(b"bodY"), Err(AuthError::BodyMismatch));
        }
        let [date, nonce, hash, sig] = s.sign_request("PUT", NODE, "/q", b"x");
        assert_eq!(date.0, DATE_HEADER);
        assert!(is_lower_hex(&nonce.1, 32));
        let fresh = SignedHeaders {
            date: Some(&date.1),
            nonce: Some(&nonce.1),
            content_sha256: Some(&hash.1),
            signature: Some(&sig.1),
        };
        let verified = s.verify("PUT", NODE, "/q", &fresh, unix_now()).unwrap();
        assert_eq!(verified.check_body(b"x"), Ok(()));
    }

    #[test]
    fn verify_refuses_what_it_should() {
        let s = secret();
        let h = signed(&s, "GET", "/p", b"body");
        let ok = headers(&h);
        let bad = Err(AuthError::BadSignature);
        assert_eq!(s.verify("PUT", NODE, "/p", &ok, DATE), bad);
        assert_eq!(s.verify("GET", NODE, "/q", &ok, DATE), bad);
        // Signed for another node (the old text named none).
        assert_eq!(s.verify("GET", "node-b.example:9000", "/p", &ok, DATE), bad);
        let other = ClusterSecret::new("other").unwrap();
        assert_eq!(other.verify("GET", NODE, "/p", &ok, DATE), bad);
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
            assert_eq!(s.verify("GET", NODE, "/p", &altered, DATE), bad);
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
                s.verify("GET", NODE, "/p", &missing, DATE),
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
                s.verify("GET", NODE, "/p", &malformed, DATE),
                Err(AuthError::Malformed(name))
            );
        }
        assert_eq!(
            s.verify("GET", NODE, "/p", &ok, DATE + 31),
            Err(AuthError::Stale { skew_secs: 31 })
        );
        // Dated ahead of the server's clock: 1 s at most.
        assert_eq!(
            s.verify("GET", NODE, "/p", &ok, DATE - 2),
            Err(AuthError::Stale { skew_secs: 2 })
        );
    }

    #[test]
    fn a_nonce_is_accepted_once_and_a_full_guard_refuses_rather_than_forgets() {
        let guard = ReplayGuard::started_at(DATE, 2);
        assert_eq!(guard.check(1, DATE, DATE), Ok(()));
        assert_eq!(guard.check(1, DATE, DATE), Err(AuthError::Replayed));
        assert_eq!(guard.check(2, DATE, DATE), Ok(()));
        assert_eq!(guard.check(3, DATE, DATE), Err(AuthError::TooManyNonces));
        assert_eq!(
            guard.check(1, DATE, DATE),
            Err(AuthError::Replayed),
            "not forgotten"
        );
        assert_eq!(AuthError::Replayed.code(), "replayed");
        assert_eq!(AuthError::TooManyNonces.code(), "overloaded");
        // Once the first two age out, there is room again.
        let later = DATE + MAX_CLOCK_SKEW.as_secs() + 2;
        assert_eq!(guard.check(3, later, later), Ok(()));
    }

    /// A nonce is remembered for as long as a request with its date can be accepted: from the
    /// earliest moment (date + skew, seen at date - skew) to the last second of the window.
    /// The old guard kept nonces 2 × skew from when they were first seen, against a clock
    /// truncated to seconds, so a request first seen at `date - skew + 0.9 s` was forgotten at
    /// `date + skew + 0.9 s`, still inside the window, and could be replayed then.
    #[test]
    fn a_nonce_is_remembered_to_the_last_second_its_date_is_acceptable() {
        let skew = MAX_CLOCK_SKEW.as_secs();
        let guard = ReplayGuard::started_at(DATE - skew, 1000);
        assert_eq!(guard.check(7, DATE, DATE - skew), Ok(()));
        for now in DATE - skew..=DATE + skew + 1 {
            assert_eq!(
                guard.check(7, DATE, now),
                Err(AuthError::Replayed),
                "at {now}"
            );
            // Other dates come and go meanwhile without disturbing it.
            assert_eq!(guard.check(u128::from(now), now, now), Ok(()), "at {now}");
        }
        // The same nonce under another date is another signed text, not a replay.
        assert_eq!(guard.check(7, DATE + 1, DATE + 1), Ok(()));
        assert_eq!(NONCE_WINDOW, Duration::from_secs(62));
        assert_eq!(MAX_CLOCK_SKEW, Duration::from_secs(30));
    }

    /// The guard is in memory: a node that restarted does not know the nonces it accepted
    /// before, so it refuses anything dated before it started, to the millisecond.
    #[test]
    fn requests_dated_before_the_guard_started_are_refused() {
        let guard = ReplayGuard::started_at(DATE, 10);
        assert_eq!(guard.check(1, DATE - 1, DATE), Err(AuthError::BeforeStart));
        assert_eq!(guard.check(1, DATE, DATE), Ok(()));
        let guard = ReplayGuard::started_at_ms(DATE * 1000 + 400, 10);
        assert_eq!(
            guard.check_ms(2, DATE * 1000 + 399, DATE),
            Err(AuthError::BeforeStart)
        );
        assert_eq!(guard.check_ms(2, DATE * 1000 + 400, DATE), Ok(()));
        // A whole-second date of the start's second was perhaps signed before it.
        assert_eq!(guard.check(3, DATE, DATE), Err(AuthError::BeforeStart));
        assert_eq!(
            parse_date("1764197105.703"),
            Some((1_764_197_105, 1_764_197_105_703))
        );
        assert_eq!(
            parse_date("1764197105"),
            Some((1_764_197_105, 1_764_197_105_000))
        );
        for bad in ["", ".5", "1.5", "1.5000", "-1", "1.-50", "1e3", " 1"] {
            assert_eq!(parse_date(bad), None, "{bad:?}");
        }
        assert_eq!(AuthError::BeforeStart.code(), "unauthorized");
        assert!(
            AuthError::BeforeStart
                .to_string()
                .contains("signed before this node started; retry")
        );
        let fresh = ReplayGuard::default();
        assert!(fresh.started() > unix_now() || fresh.started() == unix_now());
        assert_eq!(
            fresh.check(1, unix_now() - 1, unix_now()),
            Err(AuthError::BeforeStart)
        );
    }

    /// A request signed for one node is refused by another sharing the secret, even with its
    /// `Host` rewritten; and requests for this node pass however its address is spelled.
    #[test]
    fn a_request_signed_for_another_node_is_refused() {
        let s = secret();
        let h = signed(&s, "PUT", "/p", b"body");
        let a = NodeAuth::with_guard(s.clone(), NODE, ReplayGuard::started_at(DATE, 10));
        let b = NodeAuth::with_guard(
            s.clone(),
            "node-b.example:9000",
            ReplayGuard::started_at(DATE, 10),
        );
        // Verbatim to B: its Host names A.
        let err = b
            .verify("PUT", Some(NODE), "/p", &headers(&h), DATE)
            .unwrap_err();
        assert!(matches!(err, AuthError::OtherNode { .. }), "{err:?}");
        assert!(err.to_string().contains("signed for another node"), "{err}");
        assert_eq!(err.code(), "unauthorized");
        // With the Host rewritten: the signature does not cover B.
        assert_eq!(
            b.verify("PUT", Some("node-b.example:9000"), "/p", &headers(&h), DATE),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            b.verify("PUT", None, "/p", &headers(&h), DATE),
            Err(AuthError::MissingHeader("host"))
        );
        // A accepts it once.
        let verified = a.verify("PUT", Some("NODE-A.example:9000"), "/p", &headers(&h), DATE);
        assert_eq!(verified.unwrap().check_body(b"body"), Ok(()));
        assert_eq!(
            a.verify("PUT", Some(NODE), "/p", &headers(&h), DATE),
            Err(AuthError::Replayed)
        );
    }

    proptest::proptest! {
        /// A `Host` compared as it is (the spelling peers send) is accepted exactly when its
        /// parsed authority is the node's, whatever the node was advertised as.
        #[test]
        fn the_host_check_agrees_with_the_parsed_authority(
            advertised in "(https?://)?([a-zA-Z.-]{1,12}|\\[::1\\])(:[0-9]{1,5})?|\\PC{0,16}",
            host in "([a-zA-Z.-]{1,12}|\\[::1\\])(:[0-9]{0,5})?|\\PC{0,16}",
        ) {
            let auth = NodeAuth::new(secret(), &advertised);
            for host in [host.as_str(), auth.authority()] {
                let parsed = host_authority(host, auth.default_port) == auth.authority;
                proptest::prop_assert_eq!(
                    auth.check_host(host).is_ok(),
                    parsed,
                    "advertised {:?}, host {:?}",
                    &advertised,
                    host
                );
            }
        }
    }

    /// Clients leave a scheme's default port out of `Host`: a node advertised as `https://`
    /// on 443 takes `Host: node` as `node:443`, one on plain HTTP as `node:80`.
    #[test]
    fn a_host_without_a_port_has_the_default_port_of_the_node_s_scheme() {
        let s = secret();
        let hash = hex::encode(Sha256::digest(b""));
        for (advertised, signed_for, host) in [
            ("https://node.example", "node.example:443", "node.example"),
            (
                "HTTPS://node.example:443",
                "node.example:443",
                "Node.Example",
            ),
            (
                "https://node.example",
                "node.example:443",
                "node.example:443",
            ),
            ("node.example", "node.example:80", "node.example"),
            ("http://node.example", "node.example:80", "node.example:80"),
            ("https://[::1]", "[::1]:443", "[::1]"),
            ("https://node.example", "node.example:443", "node.example:"),
            ("node.example", "node.example:80", "node.example:"),
        ] {
            let sig = s.sign("GET", signed_for, "/p", DATE, NONCE, &hash);
            let h = [DATE.to_string(), NONCE.to_string(), hash.clone(), sig];
            let auth =
                NodeAuth::with_guard(s.clone(), advertised, ReplayGuard::started_at(DATE, 10));
            assert_eq!(auth.authority(), signed_for);
            let verified = auth.verify("GET", Some(host), "/p", &headers(&h), DATE);
            assert!(verified.is_ok(), "{advertised} {host}: {verified:?}");
        }
        // A plain-HTTP node does not take a bare `Host` as 443, nor an https one as 80.
        for (advertised, host) in [
            ("node.example:443", "node.example"),
            ("https://node.example", "node.example:80"),
        ] {
            let auth =
                NodeAuth::with_guard(s.clone(), advertised, ReplayGuard::started_at(DATE, 10));
            let sig = s.sign("GET", auth.authority(), "/p", DATE, NONCE, &hash);
            let h = [DATE.to_string(), NONCE.to_string(), hash.clone(), sig];
            let err = auth
                .verify("GET", Some(host), "/p", &headers(&h), DATE)
                .unwrap_err();
            assert!(
                matches!(err, AuthError::OtherNode { .. }),
                "{advertised} {host}: {err:?}"
            );
        }
    }

    #[test]
    fn authorities_are_normalized() {
        assert_eq!(authority_of("Node-A.example:9000"), "node-a.example:9000");
        assert_eq!(authority_of("http://node:80"), "node:80");
        assert_eq!(authority_of("node"), "node:80");
        assert_eq!(authority_of("127.0.0.1:7000"), "127.0.0.1:7000");
        assert_eq!(authority_of("[::1]:7000"), "[::1]:7000");
        assert_eq!(authority_of("http://[::1]:7000"), "[::1]:7000");
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
