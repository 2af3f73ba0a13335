//! The server side of the peer protocol: an axum router that serves a [`PeerService`].
//!
//! Every request first takes a permit of the peer concurrency limit ([`PeerLimits::concurrency`];
//! without one it is refused at once with 503, code `overloaded`, rather than queued). Then one
//! extractor, [`PeerRequest`], checks the signature headers when the cluster has a secret
//! (before reading the body): signed for this node, not before it started, with a nonce not
//! seen before (see [`auth`]). A request signed before the node started is refused with 401
//! `unauthorized` and `Retry-After: 1` (the client signs it again and retries once). Then it
//! reads the body (bounded), checks it
//! against its signed hash, and decodes the group and key from the raw path, so each handler
//! starts from a checked request and only decodes its message.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::Bytes;
use prost::Message;

use super::auth::{self, AuthError, NodeAuth, SignedHeaders};
use super::proto::{self, batch_item, get_response};
use super::{
    BATCH_SEGMENT, CONTENT_TYPE, DEFAULT_MAX_BODY_BYTES, DEFAULT_PEER_CONCURRENCY, HANDOFF_SEGMENT,
    INVALIDATE_SEGMENT, MAX_BATCH_KEYS, PATH_PREFIX, PEEK_SEGMENT, PeerEntry, PeerService,
    decode_segment,
};
use crate::batch::{self, Slot};
use crate::error::Error;
use crate::spans::in_span;

/// How many keys of one batch are loaded at once; the rest wait their turn, in order.
const BATCH_CONCURRENCY: usize = 16;

/// What one node's peer routes accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLimits {
    /// Largest request body read (larger ones get 413).
    pub max_body_bytes: usize,
    /// Byte budget of one `_batch` answer (see [`crate::batch`]).
    pub max_batch_bytes: usize,
    /// Requests served at once; past it, 503 `overloaded` at once.
    pub concurrency: usize,
}

impl Default for PeerLimits {
    fn default() -> Self {
        PeerLimits {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_batch_bytes: batch::DEFAULT_MAX_BATCH_BYTES,
            concurrency: DEFAULT_PEER_CONCURRENCY,
        }
    }
}

/// The peer routes serving `service`, with the default [`PeerLimits`]. With `auth`, every
/// request must be signed with its secret, for its node (see [`NodeAuth`]).
///
/// The router has no state left to provide and no fallback, so it can be `.merge`d into the API
/// router. Merge it rather than nest it: signatures cover the full path.
pub fn router(service: Arc<dyn PeerService>, auth: Option<NodeAuth>) -> Router {
    router_with_limits(service, auth, PeerLimits::default())
}

/// [`router`] with these limits.
pub fn router_with_limits(
    service: Arc<dyn PeerService>,
    auth: Option<NodeAuth>,
    limits: PeerLimits,
) -> Router {
    router_with_ring(service, auth, limits, Arc::default())
}

/// [`router_with_limits`] that counts requests from peers whose ring differs from this node's
/// (`ring`, the cluster's: see [`super::RingStamp`]).
pub fn router_with_ring(
    service: Arc<dyn PeerService>,
    auth: Option<NodeAuth>,
    limits: PeerLimits,
    ring: Arc<super::RingStamp>,
) -> Router {
    let secret = auth.as_ref().map(|a| a.secret().clone());
    let state = PeerState {
        service,
        auth,
        max_batch_bytes: limits.max_batch_bytes,
        ring,
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.concurrency.max(1)));
    // One catch-all route, parsed by `parse_path`: the router's own `{group}/{key}` matching
    // would leave empty or extra segments to the API's 404 instead of a 400 with an ErrorInfo,
    // and `_batch`/`_invalidate` must stay usable as keys for GET, PUT and DELETE.
    let router = Router::new()
        .route("/_geecache/{*path}", any(dispatch))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        // Shared: axum clones a handler's state for every request.
        .with_state(Arc::new(state))
        // A refused request costs no signature check and no body read.
        .layer(axum::middleware::from_fn_with_state(
            permits,
            limit_concurrency,
        ));
    // Outermost: the answer to every request whose signature matched is signed, so the caller
    // knows it came from a node that has the secret (an `overloaded` refused before the check
    // is not: the caller treats it as any unsigned answer and loads the key itself).
    match secret {
        Some(secret) => router.layer(axum::middleware::from_fn_with_state(secret, sign_answers)),
        None => router,
    }
}

/// Serves the request if a permit is free; answers 503 `overloaded` at once otherwise.
async fn limit_concurrency(
    State(permits): State<Arc<tokio::sync::Semaphore>>,
    req: Request,
    next: Next,
) -> Response {
    match permits.try_acquire() {
        Ok(_permit) => next.run(req).await,
        Err(_) => Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "this node is serving as many peer requests as it allows (--peer-concurrency); retry later",
        )
        .into_response(),
    }
}

/// What every handler shares.
#[derive(Debug)]
struct PeerState {
    /// The node's groups, as seen by peers.
    service: Arc<dyn PeerService>,
    /// Signature, node and nonce checks; `None` accepts every request.
    auth: Option<NodeAuth>,
    /// Byte budget of one `_batch` answer.
    max_batch_bytes: usize,
    /// This node's ring identity, against which requests' are counted.
    ring: Arc<super::RingStamp>,
}

/// An error answer: a status and an `ErrorInfo` body.
#[derive(Debug)]
struct Failure {
    /// The HTTP status.
    status: StatusCode,
    /// Code and message for the caller.
    info: proto::ErrorInfo,
    /// Whether to send `Retry-After: 1`: the same request, signed again, will pass shortly.
    retry_after: bool,
}

impl Failure {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            info: proto::ErrorInfo {
                code: code.to_string(),
                message: message.into(),
            },
            retry_after: false,
        }
    }

    fn bad_request(message: impl Into<String>) -> Failure {
        Failure::from(Error::BadRequest(message.into()))
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if let Error::Internal(detail) = &e {
            tracing::error!(%detail, "internal error serving a peer");
        } else if status.is_server_error() {
            tracing::warn!(error = %e, "peer request failed");
        }
        Failure {
            status,
            info: error_info(&e),
            retry_after: false,
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut response = (self.status, protobuf(&self.info)).into_response();
        if self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The `ErrorInfo` of an error, for a response or a batch item.
fn error_info(e: &Error) -> proto::ErrorInfo {
    proto::ErrorInfo {
        code: e.code().to_string(),
        message: e.public_message(),
    }
}

/// A protobuf body with its content type.
fn protobuf(message: &impl Message) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        message.encode_to_vec(),
    )
        .into_response()
}

/// A peer request, authenticated, its path decoded and its body read.
#[derive(Debug)]
struct PeerRequest {
    /// The decoded group segment.
    group: String,
    /// The decoded last segment: a key, or `_batch`/`_invalidate` for POST.
    key: String,
    /// The request method, which picks the operation.
    method: Method,
    /// The `content-type` header, checked by [`PeerRequest::decode`].
    content_type: Option<HeaderValue>,
    /// The whole body, within the body limit.
    body: Bytes,
    /// The caller's trace context, when traces are exported.
    trace: Option<opentelemetry::Context>,
}

impl FromRequest<Arc<PeerState>> for PeerRequest {
    type Rejection = Failure;

    async fn from_request(req: Request, state: &Arc<PeerState>) -> Result<Self, Failure> {
        let method = req.method().clone();
        let uri = req.uri().clone();
        let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
        let trace = crate::telemetry::remote_context(req.headers());
        let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        let refuse = |e: AuthError| {
            tracing::warn!(error = %e, %method, path, "refused an unsigned, badly signed or replayed peer request");
            let status = match e {
                AuthError::TooManyNonces => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::UNAUTHORIZED,
            };
            let mut failure = Failure::new(status, e.code(), e.to_string());
            // Signed just before this node (re)started: a request signed now will pass.
            failure.retry_after = matches!(e, AuthError::BeforeStart);
            failure
        };
        // The headers are checked before the body is read: a forged request costs one HMAC.
        let verified = match &state.auth {
            Some(checks) => Some(
                verify_signed(checks, &method, &uri, req.headers(), req.extensions())
                    .map_err(refuse)?,
            ),
            None => None,
        };
        state.ring.check(req.headers().get(super::RING_HEADER));
        let body = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Failure::new(e.status(), "body_too_large", e.body_text())
            } else {
                Failure::bad_request(e.body_text())
            }
        })?;
        if let Some(verified) = verified {
            verified.check_body(&body).map_err(refuse)?;
        }
        let (group, key) = parse_path(uri.path())?;
        Ok(PeerRequest {
            method,
            group,
            key,
            content_type,
            body,
            trace,
        })
    }
}

/// Checks the signing headers of a request (method, raw path and query, `Host`) with `checks`,
/// before its body is read; the body is left to [`auth::Verified::check_body`]. Marks the
/// request's [`SignatureMatched`] (in `extensions`) when its signature matched, even if
/// it is refused after that, so that its answer is signed.
///
/// # Errors
/// The [`AuthError`] that makes the request unacceptable.
pub(crate) fn verify_signed(
    checks: &NodeAuth,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &axum::http::HeaderMap,
    extensions: &axum::http::Extensions,
) -> Result<auth::Verified, AuthError> {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let signed = SignedHeaders {
        date: header(auth::DATE_HEADER),
        nonce: header(auth::NONCE_HEADER),
        content_sha256: header(auth::CONTENT_SHA256_HEADER),
        signature: header(auth::SIGNATURE_HEADER),
    };
    // HTTP/1.1 sends the authority as `Host`; HTTP/2 in the URI.
    let host = header("host").or_else(|| uri.authority().map(|a| a.as_str()));
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let verified = checks.verify(method.as_str(), host, path, &signed, auth::unix_now());
    if verified
        .as_ref()
        .map_or_else(AuthError::signature_matched, |_| true)
        && let Some(mark) = extensions.get::<SignatureMatched>()
    {
        mark.set();
    }
    verified
}

impl PeerRequest {
    /// Decodes the body as `M`, which it must be labelled as.
    fn decode<M: Message + Default>(&self, what: &str) -> Result<M, Failure> {
        let content_type = self
            .content_type
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case(CONTENT_TYPE) {
            return Err(Failure::bad_request(format!(
                "content type must be {CONTENT_TYPE}, not {content_type:?}"
            )));
        }
        M::decode(self.body.clone())
            .map_err(|e| Failure::bad_request(format!("malformed {what}: {e}")))
    }
}

/// Splits `/_geecache/{group}/{key}` (raw, as sent) into its decoded group and key.
fn parse_path(path: &str) -> Result<(String, String), Failure> {
    let malformed = || {
        Failure::bad_request(format!(
            "malformed peer path {path:?}; expected {PATH_PREFIX}/{{group}}/{{key}}, each one percent-encoded segment"
        ))
    };
    let rest = path
        .strip_prefix(PATH_PREFIX)
        .and_then(|p| p.strip_prefix('/'))
        .ok_or_else(malformed)?;
    let (group, key) = rest.split_once('/').ok_or_else(malformed)?;
    if key.contains('/') {
        return Err(malformed());
    }
    Ok((decode_segment(group, "group")?, decode_segment(key, "key")?))
}

/// Serves a checked request in the `geecache.peer.serve` span, which continues the calling
/// node's trace when traces are exported.
async fn dispatch(
    State(state): State<Arc<PeerState>>,
    mut req: PeerRequest,
) -> Result<Response, Failure> {
    let span = tracing::info_span!("geecache.peer.serve", group = %req.group);
    crate::telemetry::adopt(&span, req.trace.take());
    in_span(route(&state, &req), span).await
}

/// Routes a checked request by method (and, for POST, by its last segment).
async fn route(state: &PeerState, req: &PeerRequest) -> Result<Response, Failure> {
    match req.method {
        Method::GET => get_key(state, req).await,
        Method::PUT => set_key(state, req).await,
        Method::DELETE => delete_key(state, req).await,
        Method::POST if req.key == BATCH_SEGMENT => batch_get(state, req).await,
        Method::POST if req.key == INVALIDATE_SEGMENT => invalidate(state, req).await,
        Method::POST if req.key == PEEK_SEGMENT => peek(state, req).await,
        Method::POST if req.key == HANDOFF_SEGMENT => take_handoff(state, req).await,
        _ => Err(Failure::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "peer keys accept GET, PUT and DELETE; POST only to _batch, _invalidate, _peek and _handoff",
        )),
    }
}

async fn get_key(state: &PeerState, req: &PeerRequest) -> Result<Response, Failure> {
    let entry = state.service.get(&req.group, &req.key).await?;
    Ok(get_response(entry))
}

/// `_peek`: what this node holds for the key, never loaded.
async fn peek(state: &PeerState, req: &PeerRequest) -> Result<Response, Failure> {
    let message: proto::PeekRequest = req.decode("PeekRequest")?;
    check_keys(std::slice::from_ref(&message.key))?;
    let entry = state.service.peek(&req.group, &message.key).await?;
    Ok(get_response(entry))
}

/// `_handoff`: entries a stopping node hands to their keys' next owner.
async fn take_handoff(state: &PeerState, req: &PeerRequest) -> Result<Response, Failure> {
    check_key_count(&req.body)?;
    let message: proto::HandoffRequest = req.decode("HandoffRequest")?;
    let mut entries = Vec::with_capacity(message.items.len());
    for item in message.items {
        let entry = item
            .entry
            .ok_or_else(|| Failure::bad_request("HandoffItem has no entry"))?;
        let entry = PeerEntry::try_from(entry).map_err(Failure::bad_request)?;
        entries.push((item.key, entry));
    }
    let keys: Vec<String> = entries.iter().map(|(k, _)| k.clone()).collect();
    check_keys(&keys)?;
    let kept = state.service.take_handoff(&req.group, entries).await?;
    Ok(protobuf(&proto::HandoffResponse {
        kept: u32::try_from(kept).unwrap_or(u32::MAX),
    }))
}

/// A `GetResponse` carrying `entry`, or `Missing`.
fn get_response(entry: Option<PeerEntry>) -> Response {
    let result = match entry {
        Some(entry) => get_response::Result::Entry(entry.into()),
        None => get_response::Result::Missing(proto::Missing {}),
    };
    protobuf(&proto::GetResponse {
        result: Some(result),
    })
}

async fn set_key(state: &PeerState, req: &PeerRequest) -> Result<Response, Failure> {
    let message: proto::SetRequest = req.decode("SetRequest")?;
    let entry = message
        .entry
        .ok_or_else(|| Failure::bad_request("SetRequest has no entry"))?;
    let entry = PeerEntry::try_from(entry).map_err(Failure::bad_request)?;
    state.service.set(&req.group, &req.key, entry).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_key(state: &PeerState, req: &PeerRequest) -> Result<Response, Failure> {
    state.service.delete(&req.group, &req.key).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn invalidate(state: &PeerState, req: &PeerRequest) -> Result<Response, Failure> {
    check_key_count(&req.body)?;
    let message: proto::InvalidateRequest = req.decode("InvalidateRequest")?;
    check_keys(&message.keys)?;
    state.service.invalidate(&req.group, &message.keys).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `_batch`: each distinct key once, in order of first occurrence, within the byte budget
/// (see [`crate::batch`]); a key past the budget gets an `ErrorInfo` with code `too_large`.
async fn batch_get(state: &PeerState, req: &PeerRequest) -> Result<Response, Failure> {
    check_key_count(&req.body)?;
    let message: proto::BatchGetRequest = req.decode("BatchGetRequest")?;
    check_keys(&message.keys)?;
    let group = req.group.as_str();
    let service = &state.service;
    let budget = state.max_batch_bytes;
    let answered = batch::answer(
        message.keys,
        budget,
        BATCH_CONCURRENCY,
        |key| async move {
            let result = match service.get(group, &key).await {
                Ok(Some(entry)) => batch_item::Result::Entry(entry.into()),
                Ok(None) => batch_item::Result::Missing(proto::Missing {}),
                Err(e) => batch_item::Result::Error(error_info(&e)),
            };
            proto::BatchItem {
                key,
                result: Some(result),
            }
        },
        Message::encoded_len,
    )
    .await;
    let items = answered
        .into_iter()
        .map(|(key, slot)| match slot {
            Slot::Answered(item) => item,
            Slot::OverBudget => proto::BatchItem {
                key,
                result: Some(batch_item::Result::Error(error_info(&batch::over_budget(
                    budget,
                )))),
            },
        })
        .collect();
    Ok(protobuf(&proto::BatchGetResponse { items }))
}

/// The keys of a batch or invalidate request: at most [`MAX_BATCH_KEYS`], none empty.
/// Refuses a `BatchGetRequest`, `InvalidateRequest` or `HandoffRequest` body (whose keys or
/// items are field 1) with more
/// than [`MAX_BATCH_KEYS`] keys before it is decoded: a scan of the wire format that stops at
/// the first key past the limit, so a body of millions of keys never becomes millions of
/// strings. A malformed body is left to the decoder, which says what is wrong.
fn check_key_count(body: &[u8]) -> Result<(), Failure> {
    if super::count_field(body, 1, MAX_BATCH_KEYS).is_some_and(|n| n > MAX_BATCH_KEYS) {
        return Err(Failure::bad_request(format!(
            "more than {MAX_BATCH_KEYS} keys in one request; the limit is {MAX_BATCH_KEYS}"
        )));
    }
    Ok(())
}

fn check_keys(keys: &[String]) -> Result<(), Failure> {
    if keys.len() > MAX_BATCH_KEYS {
        return Err(Failure::bad_request(format!(
            "{} keys in one request; the limit is {MAX_BATCH_KEYS}",
            keys.len()
        )));
    }
    if keys.iter().any(String::is_empty) {
        return Err(Failure::bad_request("a key is empty"));
    }
    Ok(())
}

/// A request's mark, set once its signature matched (whatever is refused after that: its date,
/// its nonce, its body): [`sign_answers`] puts one in every request's extensions and signs the
/// answer only when it was set.
#[derive(Debug, Clone, Default)]
pub struct SignatureMatched(Arc<std::sync::atomic::AtomicBool>);

impl SignatureMatched {
    /// Marks the request: its answer will be signed.
    pub fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Middleware of the routes peers call (the peer protocol, rollouts, flushes): signs the
/// answer to a request whose signature matched ([`SignatureMatched`]) with
/// [`auth::ClusterSecret::sign_answer`] over its nonce, refusals included, so the caller can tell it
/// came from a node that knows the secret. The answer to any other request (unsigned, badly
/// signed, refused before its signature was checked) is not signed: its nonce is the sender's
/// choice, and an honest node must not vouch for it. The answer is built in memory already (a
/// protobuf or JSON body), so taking its bytes copies nothing.
pub async fn sign_answers(
    axum::extract::State(secret): axum::extract::State<auth::ClusterSecret>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let nonce = req
        .headers()
        .get(auth::NONCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|n| auth::is_lower_hex(n, 32))
        .map(str::to_owned);
    let matched = SignatureMatched::default();
    req.extensions_mut().insert(matched.clone());
    let response = next.run(req).await;
    let Some(nonce) = nonce.filter(|_| matched.is_set()) else {
        return response;
    };
    let (mut parts, body) = response.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(error = %e, "a peer answer's body failed; answering 500");
            return axum::response::IntoResponse::into_response(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            );
        }
    };
    let signature = secret.sign_answer(&nonce, parts.status.as_u16(), &body);
    if let Ok(value) = axum::http::HeaderValue::try_from(signature) {
        parts.headers.insert(auth::ANSWER_SIGNATURE_HEADER, value);
    }
    axum::response::Response::from_parts(parts, axum::body::Body::from(body))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any request path: split into a group and a key, or refused with a 400.
        #[test]
        fn arbitrary_paths_parse_or_are_a_bad_request(
            path in "(/_geecache)?(/[^/]{0,12}){0,4}|\\PC{0,40}",
        ) {
            if let Err(failure) = parse_path(&path) {
                prop_assert_eq!(failure.status, StatusCode::BAD_REQUEST);
            }
        }
    }
}
