//! Who may call the API: an optional client token (`--api-token`), sent as
//! `Authorization: Bearer <token>`.
//!
//! With a token configured, writes (`PUT`, `DELETE`, a group flush, a plugin reload) need it; reads (the GETs, the batch get,
//! `/api/v1/stats`, `/api/v1/cluster`, `/metrics`) need it too when `--api-token-reads` is set.
//! `/healthz` and `/readyz` stay open for probes, and the peer routes have their own
//! authentication (the cluster secret). A request without the right token gets 401, code
//! `unauthorized`, with `WWW-Authenticate: Bearer`.
//!
//! The token is compared in constant time (as SHA-256 digests, so not even its length leaks).

use std::fmt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

/// The client token of a node. Cheap to clone; its `Debug` output never shows the token.
#[derive(Clone)]
pub struct ApiToken {
    /// SHA-256 of the token: what requests are compared against, in constant time.
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

    /// Whether `headers` carry `Authorization: Bearer <this token>`.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
        else {
            return false;
        };
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        given.ct_eq(&*self.digest).into()
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// The token of an `Authorization` value of the `Bearer` scheme (case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Who must show the token.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The token; `None` leaves the API open.
    pub token: Option<ApiToken>,
    /// Whether reads need the token too, not only writes.
    pub reads: bool,
}

impl Access {
    /// Whether `req` may go on: it needs no token, or carries the right one.
    pub(crate) fn admits<B>(&self, req: &axum::http::Request<B>) -> bool {
        !self.requires_token(req.method(), req.uri().path())
            || self.token.as_ref().is_some_and(|t| t.admits(req.headers()))
    }

    /// Whether a request with this method and path must carry the token.
    fn requires_token(&self, method: &Method, path: &str) -> bool {
        if self.token.is_none() || matches!(path, "/healthz" | "/readyz") {
            return false;
        }
        // POST serves the batch get, a read; every other POST (a plugin reload) is a write.
        let read = matches!(*method, Method::GET | Method::HEAD)
            || (*method == Method::POST && path.ends_with("/batch"));
        !read || self.reads
    }
}

/// Refuses requests that need the token and do not carry it (see the module docs).
pub async fn check(State(access): State<Arc<Access>>, req: Request, next: Next) -> Response {
    if access.admits(&req) {
        return next.run(req).await;
    }
    let mut response = super::error_response(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this request needs the node's API token: Authorization: Bearer <token>".into(),
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(authorization).unwrap(),
        );
        h
    }

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let t = ApiToken::new("s3cret").unwrap();
        assert!(t.admits(&headers("Bearer s3cret")));
        assert!(t.admits(&headers("bearer  s3cret ")));
        assert!(!t.admits(&headers("Bearer s3cre")));
        assert!(!t.admits(&headers("Bearer s3cret2")));
        assert!(!t.admits(&headers("Basic s3cret")));
        assert!(!t.admits(&headers("s3cret")));
        assert!(!t.admits(&HeaderMap::new()));
        assert_eq!(ApiToken::new("").unwrap_err(), EmptyToken);
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn writes_need_the_token_reads_only_when_asked_probes_never() {
        let token = Some(ApiToken::new("t").unwrap());
        let writes = Access {
            token: token.clone(),
            reads: false,
        };
        let all = Access { token, reads: true };
        let k = "/api/v1/groups/g/keys/k";
        assert!(writes.requires_token(&Method::PUT, k));
        assert!(writes.requires_token(&Method::DELETE, k));
        assert!(!writes.requires_token(&Method::GET, k));
        assert!(!writes.requires_token(&Method::POST, "/api/v1/groups/g/batch"));
        assert!(writes.requires_token(&Method::POST, "/api/v1/plugins/p/reload"));
        assert!(writes.requires_token(&Method::POST, "/api/v1/groups/g/flush"));
        assert!(writes.requires_token(&Method::POST, "/api/v1/groups/batch/flush"));
        assert!(!writes.requires_token(&Method::GET, "/api/v1/plugins"));
        assert!(all.requires_token(&Method::GET, "/metrics"));
        assert!(all.requires_token(&Method::POST, "/api/v1/groups/g/batch"));
        assert!(!all.requires_token(&Method::GET, "/healthz"));
        assert!(!all.requires_token(&Method::GET, "/readyz"));
        assert!(!Access::default().requires_token(&Method::PUT, k));
    }
}
