//! Who may call the API, and by which name: an optional client token (`--api-token`) and an
//! admin token (`--admin-token`), each sent as `Authorization: Bearer <token>`, and the `Host`
//! names the node answers to.
//!
//! - **Admin routes** (a plugin reload or cluster rollout, a group flush: every `POST` under
//!   `/api/v1/plugins/`, and every `POST` under `/api/v1/groups/` but the batch get) are closed
//!   unless `--admin-token` is set: 403 `admin_disabled`, naming the flag. With it, they need
//!   that token (not the API token: the two are kept apart, and must differ).
//! - With an API token configured, writes (`PUT`, `DELETE`) need it; reads (the GETs, the
//!   batch get, `/api/v1/stats`, `/api/v1/cluster`, `/metrics`) need it too when
//!   `--api-token-reads` is set.
//! - A request other than `GET`/`HEAD` whose `Origin` names another host than its `Host` is
//!   refused with 403 `cross_origin`: a web page on another site cannot make a browser write
//!   to the node (tokens aside, a browser sends a cross-site form POST without asking).
//! - A request whose `Host` is not one the node answers to (its advertised name, IP literals,
//!   `localhost`, the names of `--allowed-host`: [`AllowedHosts`]) is refused with 403
//!   `host_not_allowed` before anything else ([`host_refusal`], asked by `shortcut.rs` for
//!   every request): a page whose name was rebound to the node's address (DNS rebinding) is
//!   same-origin for the browser, so neither CORS nor the `Origin` check would stop it.
//!
//! `/healthz` and `/readyz` stay open for probes, and the peer routes have their own
//! authentication (the cluster secret). A request without the right token gets 401, code
//! `unauthorized`, with `WWW-Authenticate: Bearer`.
//!
//! Tokens are compared in constant time (as SHA-256 digests, so not even their length leaks).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::config::{Access, AllowedHosts, ApiToken, host_name};

/// Whether `headers` carry `Authorization: Bearer <token>`.
pub(crate) fn token_admits(token: &ApiToken, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .is_some_and(|given| token.matches(given))
}

/// The token of an `Authorization` value of the `Bearer` scheme (case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// What [`verdict`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It may go on.
    Pass,
    /// It lacks the right token (API or admin): 401.
    Unauthorized { admin: bool },
    /// An admin route on a node without `--admin-token`: 403.
    AdminClosed,
    /// A write from a page of another site: 403.
    CrossOrigin,
}

/// Whether a request with this method and path is an admin route (see the module docs).
/// Generous on purpose: any spelling of a reload or a flush the router might match is caught.
pub(crate) fn is_admin(method: &Method, path: &str) -> bool {
    *method == Method::POST
        && (path.starts_with("/api/v1/plugins/")
            || (path.starts_with("/api/v1/groups/") && !path.ends_with("/batch")))
}

/// Whether `headers` carry an `Origin` of another host than their `Host` (a browser's
/// cross-site request). A request without `Origin` (every non-browser client) is not.
fn cross_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let origin = origin.to_str().unwrap_or("");
    let authority = origin
        .split_once("://")
        .map_or("", |(_, rest)| rest)
        .trim_end_matches('/');
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    authority.is_empty() || !authority.eq_ignore_ascii_case(host)
}

/// Whether `hosts` take the `Host` value `host` (see [`AllowedHosts`]); a request without one
/// (HTTP/1.0; never a browser's) is taken.
pub(crate) fn host_allowed(hosts: &AllowedHosts, host: Option<&HeaderValue>) -> bool {
    let Some(host) = host else {
        return true;
    };
    let Some(name) = host.to_str().ok().and_then(host_name) else {
        return false;
    };
    hosts.any
        || name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || name
            .get(name.len().saturating_sub(".localhost".len())..)
            .is_some_and(|end| end.eq_ignore_ascii_case(".localhost"))
        || hosts.names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// The 403 `host_not_allowed` answer to `req` when its `Host` is not one the node answers to;
/// the probes are always answered.
pub(crate) fn host_refusal<B>(access: &Access, req: &axum::http::Request<B>) -> Option<Response> {
    if host_allowed(&access.hosts, req.headers().get(header::HOST))
        || matches!(req.uri().path(), "/healthz" | "/readyz")
    {
        return None;
    }
    Some(super::error_response(
        StatusCode::FORBIDDEN,
        "host_not_allowed",
        "this node does not answer to that Host name: reach it by its advertised name, an IP \
         address or localhost, or start it with --allowed-host NAME"
            .into(),
    ))
}

/// Whether `req` may go on as a read or a write (the shortcut's question, for GETs): it
/// needs no token, or carries the right one. Admin routes and origins are [`verdict`]'s.
pub(crate) fn admits<B>(access: &Access, req: &axum::http::Request<B>) -> bool {
    !requires_token(access, req.method(), req.uri().path())
        || access
            .token
            .as_ref()
            .is_some_and(|t| token_admits(t, req.headers()))
}

/// What becomes of `req` (see the module docs).
pub(crate) fn verdict<B>(access: &Access, req: &axum::http::Request<B>) -> Verdict {
    let (method, path) = (req.method(), req.uri().path());
    if !matches!(*method, Method::GET | Method::HEAD) && cross_origin(req.headers()) {
        return Verdict::CrossOrigin;
    }
    if is_admin(method, path) {
        return match &access.admin {
            None => Verdict::AdminClosed,
            Some(admin) if token_admits(admin, req.headers()) => Verdict::Pass,
            Some(_) => Verdict::Unauthorized { admin: true },
        };
    }
    if admits(access, req) {
        Verdict::Pass
    } else {
        Verdict::Unauthorized { admin: false }
    }
}

/// Whether a request (not an admin route) with this method and path must carry the API
/// token.
fn requires_token(access: &Access, method: &Method, path: &str) -> bool {
    if access.token.is_none() || matches!(path, "/healthz" | "/readyz") {
        return false;
    }
    // POST serves the batch get, a read; the other POSTs are admin routes.
    let read = matches!(*method, Method::GET | Method::HEAD)
        || (*method == Method::POST && path.ends_with("/batch"));
    !read || access.reads
}

/// Refuses requests [`verdict`] does not pass (see the module docs).
pub async fn check(State(access): State<Arc<Access>>, req: Request, next: Next) -> Response {
    match verdict(&access, &req) {
        Verdict::Pass => next.run(req).await,
        Verdict::AdminClosed => super::error_response(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "plugin reload, cluster rollout and flush are closed on this node: start it with \
             --admin-token (or GEECACHE_ADMIN_TOKEN) and send Authorization: Bearer <admin token>"
                .into(),
        ),
        Verdict::CrossOrigin => super::error_response(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "a request from a page of another site (its Origin is not this node's Host) may not \
             change the node"
                .into(),
        ),
        Verdict::Unauthorized { admin } => {
            let which = if admin {
                "admin token (--admin-token)"
            } else {
                "API token"
            };
            let mut response = super::error_response(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("this request needs the node's {which}: Authorization: Bearer <token>"),
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::EmptyToken;

    fn headers(authorization: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(authorization).unwrap(),
        );
        h
    }

    #[test]
    fn only_the_nodes_own_names_addresses_and_localhost_are_taken_as_host() {
        let hosts = AllowedHosts::new(
            ["cache.internal", "Other.Example:8080"],
            "https://node-a:9443",
        );
        let taken = |h: &str| host_allowed(&hosts, Some(&HeaderValue::from_str(h).unwrap()));
        for ok in [
            "node-a:9443",
            "NODE-A",
            "cache.internal:80",
            "cache.internal.",
            "other.example",
            "127.0.0.1:9999",
            "10.1.2.3",
            "[::1]:9999",
            "localhost:9999",
            "app.localhost",
        ] {
            assert!(taken(ok), "{ok}");
        }
        for refused in [
            "rebind.test",
            "rebind.test:9999",
            "node-b:9443",
            "[::1",
            "evil-localhost",
        ] {
            assert!(!taken(refused), "{refused}");
        }
        assert!(host_allowed(&hosts, None));
        let any = AllowedHosts::new(["*"], "n:1");
        assert!(host_allowed(
            &any,
            Some(&HeaderValue::from_static("rebind.test"))
        ));
    }

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let t = ApiToken::new("s3cret").unwrap();
        assert!(token_admits(&t, &headers("Bearer s3cret")));
        assert!(token_admits(&t, &headers("bearer  s3cret ")));
        assert!(!token_admits(&t, &headers("Bearer s3cre")));
        assert!(!token_admits(&t, &headers("Bearer s3cret2")));
        assert!(!token_admits(&t, &headers("Basic s3cret")));
        assert!(!token_admits(&t, &headers("s3cret")));
        assert!(!token_admits(&t, &HeaderMap::new()));
        assert_eq!(ApiToken::new("").unwrap_err(), EmptyToken);
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn writes_need_the_token_reads_only_when_asked_probes_never() {
        let token = Some(ApiToken::new("t").unwrap());
        let writes = Access {
            token: token.clone(),
            reads: false,
            ..Access::default()
        };
        let all = Access {
            token,
            reads: true,
            ..Access::default()
        };
        let k = "/api/v1/groups/g/keys/k";
        assert!(requires_token(&writes, &Method::PUT, k));
        assert!(requires_token(&writes, &Method::DELETE, k));
        assert!(!requires_token(&writes, &Method::GET, k));
        assert!(!requires_token(
            &writes,
            &Method::POST,
            "/api/v1/groups/g/batch"
        ));
        assert!(!requires_token(&writes, &Method::GET, "/api/v1/plugins"));
        assert!(requires_token(&all, &Method::GET, "/metrics"));
        assert!(requires_token(
            &all,
            &Method::POST,
            "/api/v1/groups/g/batch"
        ));
        assert!(!requires_token(&all, &Method::GET, "/healthz"));
        assert!(!requires_token(&all, &Method::GET, "/readyz"));
        assert!(!requires_token(&Access::default(), &Method::PUT, k));
    }

    fn request(method: Method, path: &str, headers: &[(&str, &str)]) -> axum::http::Request<()> {
        let mut req = axum::http::Request::builder().method(method).uri(path);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(()).unwrap()
    }

    #[test]
    fn admin_routes_are_closed_without_the_admin_token_and_need_it_with_it() {
        let reload = "/api/v1/plugins/p/reload";
        let flush = "/api/v1/groups/g/flus%68";
        let open = Access::default();
        for path in [reload, flush, "/api/v1/groups/batch/flush"] {
            assert_eq!(
                verdict(&open, &request(Method::POST, path, &[])),
                Verdict::AdminClosed
            );
        }
        assert_eq!(
            verdict(&open, &request(Method::POST, "/api/v1/groups/g/batch", &[])),
            Verdict::Pass
        );
        let api = Access {
            token: Some(ApiToken::new("api").unwrap()),
            admin: Some(ApiToken::new("adm").unwrap()),
            ..Access::default()
        };
        let with = |token: &str| request(Method::POST, reload, &[("authorization", token)]);
        assert_eq!(verdict(&api, &with("Bearer adm")), Verdict::Pass);
        assert_eq!(
            verdict(&api, &with("Bearer api")),
            Verdict::Unauthorized { admin: true },
            "the API token is not an admin token"
        );
        let put = request(
            Method::PUT,
            "/api/v1/groups/g/keys/k",
            &[("authorization", "Bearer adm")],
        );
        assert_eq!(verdict(&api, &put), Verdict::Unauthorized { admin: false });
    }

    #[test]
    fn a_write_from_another_site_is_refused_and_reads_are_not() {
        let admin = Access {
            admin: Some(ApiToken::new("adm").unwrap()),
            ..Access::default()
        };
        let evil = [
            ("origin", "http://evil.example"),
            ("host", "127.0.0.1:9999"),
            ("authorization", "Bearer adm"),
        ];
        let reload = "/api/v1/plugins/p/reload";
        assert_eq!(
            verdict(&admin, &request(Method::POST, reload, &evil)),
            Verdict::CrossOrigin
        );
        assert_eq!(
            verdict(
                &admin,
                &request(Method::PUT, "/api/v1/groups/g/keys/k", &evil)
            ),
            Verdict::CrossOrigin
        );
        assert_eq!(
            verdict(&admin, &request(Method::GET, "/api?key=k", &evil)),
            Verdict::Pass
        );
        let same = [
            ("origin", "http://127.0.0.1:9999"),
            ("host", "127.0.0.1:9999"),
            ("authorization", "Bearer adm"),
        ];
        assert_eq!(
            verdict(&admin, &request(Method::POST, reload, &same)),
            Verdict::Pass
        );
        let null = [("origin", "null"), ("host", "127.0.0.1:9999")];
        assert_eq!(
            verdict(
                &admin,
                &request(Method::PUT, "/api/v1/groups/g/keys/k", &null)
            ),
            Verdict::CrossOrigin
        );
    }
}
