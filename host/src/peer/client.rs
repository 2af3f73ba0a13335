//! The client side of the peer protocol: one [`PeerClient`] per remote node.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::http::uri::PathAndQuery;
use hyper::{HeaderMap, Method, StatusCode, header};
use prost::Message;

use super::auth::ClusterSecret;
use super::exchange::{Exchange, Failed, Outgoing, Target};
use super::http::{PeerHttp, http_client};
use super::proto::{self, batch_item, get_response};
use super::{
    BATCH_SEGMENT, CONTENT_TYPE, HANDOFF_SEGMENT, INVALIDATE_SEGMENT, MAX_BATCH_KEYS, PATH_PREFIX,
    PEEK_SEGMENT, PeerEntry, PeerError, encode_segment, key_path,
};

/// Per-request timeout when the builder is given none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest answer body read from a peer when the builder is given no limit: room for a batch
/// of large values, but a broken or hostile peer cannot make the node buffer without bound.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 << 20;

/// What an answer may hold beyond what was asked for: a key, an expiry, a codec tag and the
/// protobuf framing of one entry, or an error's message.
const ANSWER_SLACK: usize = 64 << 10;

/// What a batch answer may hold beyond the owner's batch budget: the `too_large` items of the
/// keys past it (at most [`MAX_BATCH_KEYS`] of them) and the framing.
const BATCH_ANSWER_SLACK: usize = 1 << 20;

/// What a request asks for, which caps its answer (see [`PeerClientBuilder::answer_limits`]).
#[derive(Debug, Clone, Copy)]
enum Asked {
    /// One value (a get).
    Value,
    /// A batch of values.
    Batch,
    /// No value (a write or an invalidation): the answer is empty or an error.
    Nothing,
}

/// Talks to one remote node. Cheap to clone (an `Arc` inside); clones share the connection pool.
///
/// Every call is one HTTP/1.1 request on a pooled keep-alive connection, bounded by the
/// per-request timeout (connect, send and the whole answer), and signed when the client has a
/// [`ClusterSecret`].
#[derive(Debug, Clone)]
pub struct PeerClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Connection pool; may be shared with the clients of other peers.
    http: PeerHttp,
    /// The peer, its address parsed once.
    target: Target,
    /// Signs every request when the cluster has a secret.
    secret: Option<ClusterSecret>,
    /// This node's ring identity, sent with every request (`None`: not sent).
    ring: Option<Arc<super::RingStamp>>,
    /// Bound on each whole request, so a slow peer cannot hold a client request hostage.
    timeout: Duration,
    /// The bound of a PUT or DELETE (see [`PeerClientBuilder::write_timeout`]).
    write_timeout: Duration,
    /// Bound on each answer body, so a peer cannot make this node buffer without limit.
    max_response_bytes: usize,
    /// Largest value asked for (see [`PeerClientBuilder::answer_limits`]).
    max_value_bytes: usize,
    /// The owner's batch budget (see [`PeerClientBuilder::answer_limits`]).
    max_batch_bytes: usize,
}

/// Builds a [`PeerClient`]; see [`PeerClient::builder`].
#[derive(Debug)]
#[must_use]
pub struct PeerClientBuilder {
    /// The peer's address as given.
    addr: String,
    /// See [`PeerClientBuilder::timeout`].
    timeout: Duration,
    /// See [`PeerClientBuilder::write_timeout`].
    write_timeout: Option<Duration>,
    /// See [`PeerClientBuilder::secret`].
    secret: Option<ClusterSecret>,
    /// See [`PeerClientBuilder::http_client`].
    http: Option<PeerHttp>,
    /// See [`PeerClientBuilder::max_response_bytes`].
    max_response_bytes: usize,
    /// See [`PeerClientBuilder::answer_limits`].
    answer_limits: Option<(usize, usize)>,
    /// See [`PeerClientBuilder::ring`].
    ring: Option<Arc<super::RingStamp>>,
}

impl PeerClientBuilder {
    /// Sends this node's ring identity with every request ([`super::RING_HEADER`]), so the
    /// peer can count requests from nodes whose ring differs from its own.
    pub fn ring(mut self, ring: Arc<super::RingStamp>) -> Self {
        self.ring = Some(ring);
        self
    }

    /// Bound on each request, from connecting to reading the whole answer
    /// ([`DEFAULT_TIMEOUT`] by default). Past it, calls fail with [`PeerError::Timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Bound on each PUT and DELETE instead of [`PeerClientBuilder::timeout`] (which it is by
    /// default): the owner of a key answers a write once its storage tier has taken it, which
    /// may take longer than a get should wait.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = Some(timeout);
        self
    }

    /// Largest answer body to read (64 MiB by default); a longer one fails the call with
    /// [`PeerError::Decode`] without being read further.
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }

    /// Caps each answer by what was asked (within [`PeerClientBuilder::max_response_bytes`]):
    /// a get's by `max_value_bytes` (the largest value this node's groups take), a batch's by
    /// `max_batch_bytes` (the budget an owner answers within, nodes being configured alike),
    /// each with room for its framing; a write's, which carries no value, by 64 KiB. Without
    /// it every answer is capped by `max_response_bytes` alone.
    pub fn answer_limits(mut self, max_value_bytes: usize, max_batch_bytes: usize) -> Self {
        self.answer_limits = Some((max_value_bytes, max_batch_bytes));
        self
    }

    /// Sign every request with `secret` (none by default).
    pub fn secret(mut self, secret: Option<ClusterSecret>) -> Self {
        self.secret = secret;
        self
    }

    /// Use this HTTP client (and its connection pool) instead of a new one, e.g. one client for
    /// every peer of a node. Its own timeouts still apply; the builder's is set per request.
    pub fn http_client(mut self, http: PeerHttp) -> Self {
        self.http = Some(http);
        self
    }

    /// The client.
    ///
    /// # Errors
    /// [`PeerError::InvalidAddress`] when the address is not `host:port` or `http://host:port`
    /// (`https://host:port` too; base paths are not supported), or the HTTP client cannot be created.
    pub fn build(self) -> Result<PeerClient, PeerError> {
        let invalid = |message: String| PeerError::InvalidAddress {
            addr: self.addr.clone(),
            message,
        };
        let target = Target::parse(&self.addr).map_err(invalid)?;
        let http = match self.http {
            Some(http) => http,
            None => http_client(self.timeout),
        };
        Ok(PeerClient {
            inner: Arc::new(Inner {
                http,
                target,
                secret: self.secret,
                timeout: self.timeout,
                write_timeout: self.write_timeout.unwrap_or(self.timeout),
                max_response_bytes: self.max_response_bytes,
                max_value_bytes: self.answer_limits.map_or(usize::MAX, |l| l.0),
                max_batch_bytes: self.answer_limits.map_or(usize::MAX, |l| l.1),
                ring: self.ring,
            }),
        })
    }
}

impl Inner {
    /// The bound of a request with `method`.
    fn timeout_of(&self, method: &Method) -> Duration {
        if *method == Method::PUT || *method == Method::DELETE {
            self.write_timeout
        } else {
            self.timeout
        }
    }
}

/// What one key of a [`PeerClient::batch_get`] came back as.
pub type BatchResult = Vec<(String, Result<Option<PeerEntry>, PeerError>)>;

impl PeerClient {
    /// A builder for a client of the node at `addr` (`host:port` or `http://host:port`).
    pub fn builder(addr: impl Into<String>) -> PeerClientBuilder {
        PeerClientBuilder {
            addr: addr.into(),
            timeout: DEFAULT_TIMEOUT,
            write_timeout: None,
            secret: None,
            http: None,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            ring: None,
            answer_limits: None,
        }
    }

    /// The peer's base URL, `http://host:port`.
    pub fn base_url(&self) -> &str {
        &self.inner.target.base
    }

    /// Asks the owner for `key` of `group`: `Ok(None)` when the key does not exist.
    ///
    /// # Errors
    /// Any [`PeerError`]: transport, timeout, authentication, or an error answer.
    pub async fn get(&self, group: &str, key: &str) -> Result<Option<PeerEntry>, PeerError> {
        let body = self
            .send(Method::GET, key_path(group, key), Vec::new(), Asked::Value)
            .await?;
        self.get_answer(body)
    }

    /// What the node holds in memory for `key`, never loaded (`_peek`): how a key's new owner
    /// warms up from its previous one.
    ///
    /// # Errors
    /// Any [`PeerError`].
    pub async fn peek(&self, group: &str, key: &str) -> Result<Option<PeerEntry>, PeerError> {
        let request = proto::PeekRequest {
            key: key.to_owned(),
        };
        let body = self
            .send(
                Method::POST,
                action_path(group, PEEK_SEGMENT),
                request.encode_to_vec(),
                Asked::Value,
            )
            .await?;
        self.get_answer(body)
    }

    /// Hands `entries` (at most [`MAX_BATCH_KEYS`]) to the node, their keys' next owner, as a
    /// stopping node does (`_handoff`); returns how many it kept.
    ///
    /// # Errors
    /// Any [`PeerError`].
    pub async fn hand_off(
        &self,
        group: &str,
        entries: Vec<(String, PeerEntry)>,
    ) -> Result<usize, PeerError> {
        let request = proto::HandoffRequest {
            items: entries
                .into_iter()
                .map(|(key, entry)| proto::HandoffItem {
                    key,
                    entry: Some(entry.into()),
                })
                .collect(),
        };
        let body = self
            .send(
                Method::POST,
                action_path(group, HANDOFF_SEGMENT),
                request.encode_to_vec(),
                Asked::Value,
            )
            .await?;
        let answer: proto::HandoffResponse = self.decode(body)?;
        Ok(answer.kept as usize)
    }

    /// A `GetResponse`: the entry, or `None` for `Missing`.
    fn get_answer(&self, body: Bytes) -> Result<Option<PeerEntry>, PeerError> {
        let answer: proto::GetResponse = self.decode(body)?;
        match answer.result {
            Some(get_response::Result::Entry(entry)) => self.entry(entry).map(Some),
            Some(get_response::Result::Missing(_)) => Ok(None),
            None => Err(self.bad_answer("GetResponse has no result")),
        }
    }

    /// Stores `entry` at the owner of `key`.
    ///
    /// # Errors
    /// Any [`PeerError`].
    pub async fn set(&self, group: &str, key: &str, entry: PeerEntry) -> Result<(), PeerError> {
        let body = proto::SetRequest {
            entry: Some(entry.into()),
        }
        .encode_to_vec();
        self.send(Method::PUT, key_path(group, key), body, Asked::Nothing)
            .await?;
        Ok(())
    }

    /// Removes `key` at its owner (which then invalidates other nodes' copies).
    ///
    /// # Errors
    /// Any [`PeerError`].
    pub async fn delete(&self, group: &str, key: &str) -> Result<(), PeerError> {
        self.send(
            Method::DELETE,
            key_path(group, key),
            Vec::new(),
            Asked::Nothing,
        )
        .await?;
        Ok(())
    }

    /// Gets several keys of `group` from their owner: one `(key, result)` per key, in order
    /// (a key asked twice is sent once and its result repeated). Lists of more than
    /// [`MAX_BATCH_KEYS`] distinct keys go as several requests, one after another.
    ///
    /// # Errors
    /// A [`PeerError`] when a whole request fails; a key that failed alone has its own error
    /// ([`PeerError::ItemFailed`]) in its item; code `too_large` when the owner's batch budget
    /// was spent before it (ask for it again in a smaller batch).
    pub async fn batch_get(&self, group: &str, keys: &[String]) -> Result<BatchResult, PeerError> {
        let path = action_path(group, BATCH_SEGMENT);
        let distinct = crate::batch::dedup_keys(keys.to_vec());
        let mut results = std::collections::HashMap::with_capacity(distinct.len());
        for chunk in distinct.chunks(MAX_BATCH_KEYS) {
            let request = proto::BatchGetRequest {
                keys: chunk.to_vec(),
            };
            let body = self
                .send(
                    Method::POST,
                    path.clone(),
                    request.encode_to_vec(),
                    Asked::Batch,
                )
                .await?;
            let answer: proto::BatchGetResponse = self.decode(body)?;
            if answer.items.len() != chunk.len()
                || answer.items.iter().zip(chunk).any(|(i, k)| &i.key != k)
            {
                return Err(self.bad_answer("BatchGetResponse items do not match the keys asked"));
            }
            for item in answer.items {
                let result = match item.result {
                    Some(batch_item::Result::Entry(entry)) => self.entry(entry).map(Some),
                    Some(batch_item::Result::Missing(_)) => Ok(None),
                    Some(batch_item::Result::Error(info)) => Err(PeerError::ItemFailed {
                        peer: self.inner.target.base.clone(),
                        code: info.code,
                        message: info.message,
                    }),
                    None => Err(self.bad_answer("BatchItem has no result")),
                };
                results.insert(item.key, result);
            }
        }
        // Every key has its result: the items matched the distinct keys one for one.
        Ok(keys
            .iter()
            .filter_map(|k| results.get(k).map(|r| (k.clone(), r.clone())))
            .collect())
    }

    /// Tells the node to drop its local (hot) copies of `keys`. It tells no one else.
    /// Lists longer than [`MAX_BATCH_KEYS`] go as several requests.
    ///
    /// # Errors
    /// Any [`PeerError`].
    pub async fn invalidate(&self, group: &str, keys: &[String]) -> Result<(), PeerError> {
        let path = action_path(group, INVALIDATE_SEGMENT);
        for chunk in keys.chunks(MAX_BATCH_KEYS) {
            let request = proto::InvalidateRequest {
                keys: chunk.to_vec(),
            };
            self.send(
                Method::POST,
                path.clone(),
                request.encode_to_vec(),
                Asked::Nothing,
            )
            .await?;
        }
        Ok(())
    }

    /// Sends one request through the [`Exchange`] (signed when there is a secret, sent again
    /// once on a broken connection: every peer request is idempotent) and returns the body of
    /// a 2xx answer, all within the method's timeout.
    async fn send(
        &self,
        method: Method,
        path: String,
        body: Vec<u8>,
        asked: Asked,
    ) -> Result<Bytes, PeerError> {
        let inner = &*self.inner;
        let peer = || inner.target.base.clone();
        let limit = match asked {
            Asked::Value => inner.max_value_bytes.saturating_add(ANSWER_SLACK),
            Asked::Batch => inner.max_batch_bytes.saturating_add(BATCH_ANSWER_SLACK),
            Asked::Nothing => ANSWER_SLACK,
        }
        .min(inner.max_response_bytes);
        let path = PathAndQuery::try_from(path).map_err(|e| PeerError::InvalidAddress {
            addr: peer(),
            message: e.to_string(),
        })?;
        let labelled = !body.is_empty() || method == Method::PUT || method == Method::POST;
        let headers = |headers: &mut HeaderMap| {
            // The current span's trace context, so the owner's spans join the caller's trace.
            crate::telemetry::inject_current(headers);
            if let Some(ring) = &inner.ring {
                headers.insert(super::RING_HEADER, header::HeaderValue::from(ring.id()));
            }
            if labelled {
                headers.insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(CONTENT_TYPE),
                );
            }
        };
        let timeout = inner.timeout_of(&method);
        let outgoing = Outgoing {
            method,
            path,
            body: Bytes::from(body),
            headers: &headers,
            limit,
            timeout,
            retry_broken: true,
        };
        let exchange = Exchange {
            http: &inner.http,
            secret: inner.secret.as_ref(),
        };
        let answer =
            exchange
                .send(&inner.target, &outgoing)
                .await
                .map_err(|failed| match failed {
                    Failed::Timeout(timeout) => PeerError::Timeout {
                        peer: peer(),
                        timeout,
                    },
                    Failed::Unreachable(message) => PeerError::Unreachable {
                        peer: peer(),
                        message,
                    },
                    Failed::TooLarge(message) => self.bad_answer(message),
                    Failed::InvalidAddress(message) => PeerError::InvalidAddress {
                        addr: peer(),
                        message,
                    },
                    Failed::Unsigned => PeerError::Unsigned { peer: peer() },
                })?;
        let (status, body) = (answer.status, answer.body);
        if status.is_success() {
            return Ok(body);
        }
        let (code, message) = match proto::ErrorInfo::decode(body.clone()) {
            Ok(info) if !info.code.is_empty() => (info.code, info.message),
            _ => (
                "unknown".to_string(),
                String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            ),
        };
        Err(if status == StatusCode::UNAUTHORIZED {
            PeerError::Unauthorized {
                peer: peer(),
                message,
            }
        } else {
            PeerError::Status {
                peer: peer(),
                status: status.as_u16(),
                code,
                message,
            }
        })
    }

    fn decode<M: Message + Default>(&self, body: Bytes) -> Result<M, PeerError> {
        M::decode(body).map_err(|e| self.bad_answer(e.to_string()))
    }

    fn entry(&self, entry: proto::Entry) -> Result<PeerEntry, PeerError> {
        PeerEntry::try_from(entry).map_err(|e| self.bad_answer(e))
    }

    fn bad_answer(&self, message: impl Into<String>) -> PeerError {
        PeerError::Decode {
            peer: self.inner.target.base.clone(),
            message: message.into(),
        }
    }
}

/// `/_geecache/{group}/_batch` or `/_invalidate`.
fn action_path(group: &str, action: &str) -> String {
    format!("{PATH_PREFIX}/{}/{action}", encode_segment(group))
}
