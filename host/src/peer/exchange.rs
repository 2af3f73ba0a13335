//! The one signed exchange between nodes. Every request a node sends another node goes
//! through [`Exchange::send`]: the peer protocol's (by [`super::PeerClient`]) and the admin
//! operations across the cluster (by [`super::admin::post`]). Nothing outside this file signs
//! a request, reads a signed answer, or retries one.
//!
//! One exchange:
//! - the request is signed with the cluster secret when there is one (method, the `host:port`
//!   it is for, the path as it goes on the wire, the body; see [`super::auth`]);
//! - it is sent on the shared pool ([`PeerHttp`]); a request whose pooled connection broke
//!   before an answer is sent once more at once, when the caller says it may be
//!   ([`Outgoing::retry_broken`]: the peer protocol's requests are all idempotent);
//! - the answer is read within [`Outgoing::limit`] bytes, and is not used when the request
//!   was signed and the answer is not (a member without the secret can answer, but not sign);
//! - a refusal with 401 and `Retry-After` (signed just before the peer started) is sent once
//!   more, signed anew, after the wait, with a timeout of its own;
//! - every attempt is bounded by [`Outgoing::timeout`] (connect, send and the whole answer).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{HeaderMap, Method, Request, StatusCode, Uri, header};

use super::auth::{self, ClusterSecret};
use super::http::{HttpError, PeerHttp};

/// The node a request is for, parsed once from its address.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// `http://host:port`, no trailing slash: how the node is named in errors.
    pub(super) base: String,
    /// `base`'s scheme and authority: each request's URI is made of them and its path.
    scheme: Scheme,
    uri_authority: Authority,
    /// `host:port`, port always written: what requests are signed for (see
    /// [`auth::authority_of`]), so they are good at this node only.
    authority: String,
}

impl Target {
    /// The node at `addr`: `host:port`, `http://host:port` or `https://host:port`.
    ///
    /// # Errors
    /// Why `addr` is not such an address (base paths and queries are not supported).
    pub(super) fn parse(addr: &str) -> Result<Target, String> {
        let url = super::node_url(addr).map_err(|e| e.to_string())?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err("peers are http:// or https://".into());
        }
        if url.host().is_none() || url.path() != "/" || url.query().is_some() {
            return Err("expected host:port or http://host:port".into());
        }
        let base = url.origin().ascii_serialization();
        let base_uri: Uri = base
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| e.to_string())?;
        let (Some(scheme), Some(uri_authority)) = (base_uri.scheme(), base_uri.authority()) else {
            return Err("expected host:port or http://host:port".into());
        };
        let (scheme, uri_authority) = (scheme.clone(), uri_authority.clone());
        let authority = auth::authority_of(&base);
        Ok(Target {
            base,
            scheme,
            uri_authority,
            authority,
        })
    }
}

/// Who sends: the pool and the secret (none: requests go unsigned).
#[derive(Debug, Clone, Copy)]
pub(super) struct Exchange<'a> {
    pub(super) http: &'a PeerHttp,
    pub(super) secret: Option<&'a ClusterSecret>,
}

/// Puts a request's headers beyond the signature's on it (content type, trace context, ring
/// identity); run for each attempt, on the request itself, so nothing is built twice.
pub(super) type AddHeaders<'a> = &'a (dyn Fn(&mut HeaderMap) + Send + Sync);

/// One request to send.
pub(super) struct Outgoing<'a> {
    pub(super) method: Method,
    pub(super) path: PathAndQuery,
    /// Shared, not copied, when it is sent again.
    pub(super) body: Bytes,
    /// Headers beyond the signature's.
    pub(super) headers: AddHeaders<'a>,
    /// Largest answer body read.
    pub(super) limit: usize,
    /// Bound on each attempt.
    pub(super) timeout: Duration,
    /// Whether a request whose connection broke before an answer may be sent once more.
    pub(super) retry_broken: bool,
}

/// An answer that may be used: the request was unsigned, or the answer's signature checked.
#[derive(Debug)]
pub(super) struct Received {
    pub(super) status: StatusCode,
    /// The answer's `Retry-After`, capped (see [`retry_after`]).
    pub(super) retry_after: Option<Duration>,
    pub(super) body: Bytes,
}

/// Why an exchange gave no answer that may be used.
#[derive(Debug)]
pub(super) enum Failed {
    /// No answer within this bound (the request's timeout, or the pool's connect timeout).
    Timeout(Duration),
    /// No connection, or it broke: the transport's message.
    Unreachable(String),
    /// The answer was longer than the limit.
    TooLarge(String),
    /// The request's URI could not be made of the target and the path.
    InvalidAddress(String),
    /// The request was signed and the answer is not, or not with the cluster secret.
    Unsigned,
}

/// How one attempt failed.
enum Attempt {
    /// For good.
    No(Failed),
    /// The connection broke before an answer: worth one more attempt at once.
    Broken(Failed),
}

impl Exchange<'_> {
    /// Sends `request` to `target`: see the module's documentation.
    ///
    /// # Errors
    /// Why no answer may be used ([`Failed`]). An error answer (4xx, 5xx) is an answer.
    pub(super) async fn send(
        &self,
        target: &Target,
        request: &Outgoing<'_>,
    ) -> Result<Received, Failed> {
        let mut deadline = tokio::time::Instant::now() + request.timeout;
        let mut broken_retried = false;
        let mut refusal_retried = false;
        loop {
            let outcome = match tokio::time::timeout_at(deadline, self.once(target, request)).await
            {
                Ok(outcome) => outcome,
                Err(_) => return Err(Failed::Timeout(request.timeout)),
            };
            match outcome {
                Ok(answer) => match answer.retry_after {
                    Some(wait) if answer.status == StatusCode::UNAUTHORIZED && !refusal_retried => {
                        refusal_retried = true;
                        tokio::time::sleep(wait).await;
                        deadline = tokio::time::Instant::now() + request.timeout;
                    }
                    _ => return Ok(answer),
                },
                Err(Attempt::Broken(_)) if request.retry_broken && !broken_retried => {
                    broken_retried = true;
                }
                Err(Attempt::Broken(e) | Attempt::No(e)) => return Err(e),
            }
        }
    }

    /// One attempt of [`Exchange::send`], unbounded in time (the caller bounds it).
    async fn once(&self, target: &Target, outgoing: &Outgoing<'_>) -> Result<Received, Attempt> {
        let uri = Uri::builder()
            .scheme(target.scheme.clone())
            .authority(target.uri_authority.clone())
            .path_and_query(outgoing.path.clone())
            .build()
            .map_err(|e| Attempt::No(Failed::InvalidAddress(e.to_string())))?;
        let mut request = Request::new(Full::new(outgoing.body.clone()));
        *request.method_mut() = outgoing.method.clone();
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        (outgoing.headers)(headers);
        let nonce = self.secret.and_then(|secret| {
            // Signed for the path exactly as it goes on the wire.
            let signed = secret.sign_request(
                outgoing.method.as_str(),
                &target.authority,
                outgoing.path.as_str(),
                &outgoing.body,
            );
            insert_signed(headers, signed)
        });
        let response = self.http.send(request).await.map_err(|e| match e {
            HttpError::ConnectTimeout(timeout) => Attempt::No(Failed::Timeout(timeout)),
            _ => Attempt::Broken(Failed::Unreachable(e.to_string())),
        })?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let signature = answer_signature(response.headers());
        let body = PeerHttp::read_body(response, outgoing.limit)
            .await
            .map_err(|e| {
                Attempt::No(match e {
                    HttpError::TooLarge(_) => Failed::TooLarge(e.to_string()),
                    HttpError::Send(_) | HttpError::ConnectTimeout(_) | HttpError::Body(_) => {
                        Failed::Unreachable(e.to_string())
                    }
                })
            })?;
        if let (Some(secret), Some(nonce)) = (self.secret, &nonce)
            && !secret.check_answer(nonce, status.as_u16(), &body, signature.as_deref())
        {
            tracing::warn!(peer = %target.base, status = status.as_u16(), "an answer without a valid signature; not used");
            return Err(Attempt::No(Failed::Unsigned));
        }
        Ok(Received {
            status,
            retry_after,
            body,
        })
    }
}

/// Puts the headers of [`ClusterSecret::sign_request`] on a request; returns its nonce, which
/// the answer's signature covers (see [`answer_signature`]).
fn insert_signed(headers: &mut HeaderMap, signed: [(&'static str, String); 4]) -> Option<String> {
    let mut nonce = None;
    for (name, value) in signed {
        if name == auth::NONCE_HEADER {
            nonce = Some(value.clone());
        }
        // The values are digits, dots and hex: always valid header values.
        if let Ok(value) = header::HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    }
    nonce
}

/// The answer's [`auth::ANSWER_SIGNATURE_HEADER`], for [`ClusterSecret::check_answer`].
fn answer_signature(headers: &HeaderMap) -> Option<String> {
    headers
        .get(auth::ANSWER_SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The wait a `Retry-After` header asks for, capped: dates are whole seconds, so one second
/// (and a little) is always enough.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs.min(1)) + Duration::from_millis(50))
}
