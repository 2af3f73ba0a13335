//! The hit path's way past the router: a plain `GET /api/v1/groups/{group}/keys/{key}` or
//! `GET /api?key=K[&group=G]` is answered by the same [`get_value`] the routes' handlers call,
//! without axum's routing, extractors and per-route layers (a third of what a cache hit cost on
//! top of a fixed response, in `perf`). Everything else goes to the [`Router`] untouched.
//!
//! Only requests whose answer cannot differ from the router's are taken: method `GET`, no
//! body declared (no `Content-Length`, no `Transfer-Encoding`: the body guard has nothing to
//! reserve), a group and a key with no `/` and no `%` (nothing to percent-decode; in the
//! classic query, no `+` either, and only `key=` and `group=`, once each), and that
//! the API token's check admits (the same [`super::access::admits`] the router's layer asks; a
//! request it refuses goes to the router, which answers the 401). The answer, its errors
//! included, is [`get_value`]'s; its duration is recorded under the route's label, as the
//! router's timing layer records it.
//!
//! `geecache-perf http`, node CPU per hit with and without it, three alternating pairs:
//! 12.4/12.1/14.8 µs against 14.5/14.7/18.6 µs (2026-11-27).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;

use super::conn::{ConnHandle, Crowded};
use super::guard::RequestGuard;
use super::{Access, AppState, RemoteTrace, accepted_codings, get_value};
use crate::telemetry::Metrics;
use crate::tls::PeerIdentity;

/// The routes a shortcut request stands for, as the timing layer labels them.
const KEY_ROUTE: &str = "/api/v1/groups/{group}/keys/{key}";
const CLASSIC_ROUTE: &str = "/api";

/// A GET the shortcut answers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PlainGet<'r> {
    /// The group, or `None` for the node's default group (the classic form without `group=`).
    pub group: Option<&'r str>,
    /// The key.
    pub key: &'r str,
    /// Its route's label.
    pub route: &'static str,
}

/// The router behind a shortcut for plain GETs of a key: the service [`super::serve`] answers
/// a connection's requests with. Cheap to clone (one per connection); a TLS connection's,
/// from [`Shortcut::with_identity`], hands the router its [`PeerIdentity`], as axum's
/// `into_make_service_with_connect_info` would.
#[derive(Clone)]
pub struct Shortcut {
    /// Every request the shortcut does not take.
    router: Router,
    /// What the GETs are answered from.
    state: AppState,
    /// Where the shortcut's request durations go.
    metrics: Metrics,
    /// The TLS connection's client identity, put in every routed request's extensions.
    identity: Option<ConnectInfo<PeerIdentity>>,
    /// The in-flight budget the shortcut's answers are charged against.
    guard: RequestGuard,
    /// The connection this service answers, told of every request (its read timers stop)
    /// and put in every routed request's extensions (where the guard finds it).
    conn: ConnHandle,
}

impl std::fmt::Debug for Shortcut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shortcut")
            .field("identity", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl Shortcut {
    /// `router` (the node's whole app, `guard` applied) with the shortcut in front, answering
    /// from `state`, its answers charged against `guard`.
    pub fn new(router: Router, state: AppState, guard: RequestGuard) -> Shortcut {
        let metrics = state.inner.metrics.clone();
        Shortcut {
            router,
            state,
            metrics,
            identity: None,
            guard,
            conn: ConnHandle::detached(),
        }
    }

    /// This shortcut for the connection `conn` (one per connection, from [`super::serve`]).
    pub fn for_connection(&self, conn: &ConnHandle) -> Shortcut {
        Shortcut {
            conn: conn.clone(),
            ..self.clone()
        }
    }

    /// This shortcut for a TLS connection whose client is `identity`: every routed request
    /// carries it (as `ConnectInfo`), for the peer routes' `--peer-mtls` check.
    pub fn with_identity(&self, identity: PeerIdentity) -> Shortcut {
        Shortcut {
            identity: Some(ConnectInfo(identity)),
            ..self.clone()
        }
    }

    /// The answer of a connection in the probes' reserve: the probes answered as usual, the
    /// rest refused; either way the connection closes after it.
    fn reserve_answer<B>(&self, req: axum::http::Request<B>, why: Crowded) -> ShortcutFuture
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let probe =
            req.method() == Method::GET && matches!(req.uri().path(), "/healthz" | "/readyz");
        let routed =
            probe.then(|| tower::Service::call(&mut self.router.clone(), req.map(Body::new)));
        ShortcutFuture::Direct(Box::pin(async move {
            let mut response = match routed {
                Some(routed) => match routed.await {
                    Ok(response) => response,
                    Err(never) => match never {},
                },
                None => super::conn::too_many_connections(why),
            };
            response.headers_mut().insert(
                header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            response
        }))
    }
}

/// The GET of a request the shortcut may answer, or `None` for the router.
pub(crate) fn plain_get<'r, B>(
    req: &'r axum::http::Request<B>,
    access: &Access,
) -> Option<PlainGet<'r>> {
    if req.method() != Method::GET {
        return None;
    }
    let plain = |s: &str| !s.is_empty() && !s.contains(['/', '%']);
    let uri = req.uri();
    let get = if let Some(rest) = uri.path().strip_prefix("/api/v1/groups/") {
        // The group has no `/`, so its end is the first one (a byte search: a `&str` pattern
        // builds a substring searcher per request).
        let (group, tail) = rest.split_at(rest.find('/')?);
        let key = tail.strip_prefix("/keys/")?;
        (plain(group) && plain(key)).then_some(PlainGet {
            group: Some(group),
            key,
            route: KEY_ROUTE,
        })?
    } else if uri.path() == "/api" {
        let (group, key) = classic_query(uri.query()?)?;
        PlainGet {
            group,
            key,
            route: CLASSIC_ROUTE,
        }
    } else {
        return None;
    };
    let headers = req.headers();
    let bodiless = !headers.contains_key(header::CONTENT_LENGTH)
        && !headers.contains_key(header::TRANSFER_ENCODING);
    (bodiless && super::access::admits(access, req)).then_some(get)
}

/// `(group, key)` of a classic query made of `key=K` and at most one `group=G`, both plain (no
/// `%`, no `+`: nothing to decode, no `/`), in either order; `None` for anything else.
fn classic_query(query: &str) -> Option<(Option<&str>, &str)> {
    let (mut group, mut key) = (None, None);
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=')?;
        if value.is_empty() || value.contains(['/', '%', '+', '=']) {
            return None;
        }
        let slot = match name {
            "key" => &mut key,
            "group" => &mut group,
            _ => return None,
        };
        if slot.replace(value).is_some() {
            return None;
        }
    }
    Some((group, key?))
}

impl Shortcut {
    /// The answer to `req`: [`get_value`]'s for a plain GET, the router's for the rest.
    fn answer<B>(&self, req: axum::http::Request<B>) -> ShortcutFuture
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        self.conn.dispatched();
        if let Some(why) = self.conn.in_reserve() {
            return self.reserve_answer(req, why);
        }
        if let Some(limited) = self.guard.rate_check(&self.conn, req.uri().path()) {
            return ShortcutFuture::Direct(Box::pin(std::future::ready(limited)));
        }
        let state = &self.state;
        if let Some(refused) = super::access::host_refusal(&state.inner.options.access, &req) {
            self.guard.counters().wrong_host();
            return ShortcutFuture::Direct(Box::pin(std::future::ready(refused)));
        }
        let Some(get) = plain_get(&req, &state.inner.options.access) else {
            let mut req = req.map(Body::new);
            if let Some(identity) = &self.identity {
                req.extensions_mut().insert(identity.clone());
            }
            req.extensions_mut().insert(self.conn.clone());
            return ShortcutFuture::Routed(tower::Service::call(&mut self.router.clone(), req));
        };
        let group = get.group.unwrap_or(&state.inner.default_group).to_owned();
        let (key, route) = (get.key.to_owned(), get.route);
        let accepted = accepted_codings(req.headers());
        let trace = RemoteTrace(crate::telemetry::remote_context(req.headers()));
        let state = state.clone();
        let metrics = self.metrics.clone();
        let (guard, conn) = (self.guard.clone(), self.conn.clone());
        let started = Instant::now();
        ShortcutFuture::Direct(Box::pin(async move {
            let response = get_value(&state, &group, &key, accepted, trace)
                .await
                .into_response();
            let response = guard.charge_answer(response, Some(&conn));
            metrics.record_request(route, "GET", response.status().as_u16(), started.elapsed());
            response
        }))
    }
}

/// How [`super::serve`] calls it: once per request of the connection it was made for.
impl hyper::service::Service<Request<Incoming>> for Shortcut {
    type Response = Response;
    type Error = Infallible;
    type Future = ShortcutFuture;

    fn call(&self, req: Request<Incoming>) -> ShortcutFuture {
        self.answer(req)
    }
}

/// The same as a tower service (the tests call it so).
impl tower::Service<Request> for Shortcut {
    type Response = Response;
    type Error = Infallible;
    type Future = ShortcutFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The router is always ready; `answer` calls a clone of it.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> ShortcutFuture {
        self.answer(req)
    }
}

/// What [`Shortcut`] answers: the router's answer, or its own.
#[allow(missing_debug_implementations)] // a future, polled and dropped, never printed
#[allow(clippy::large_enum_variant)] // one per request, in place: boxing the router's would allocate
pub enum ShortcutFuture {
    /// Through the router.
    Routed(axum::routing::future::RouteFuture<Infallible>),
    /// A plain GET answered here.
    Direct(Pin<Box<dyn Future<Output = Response> + Send>>),
}

impl Future for ShortcutFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            ShortcutFuture::Routed(f) => Pin::new(f).poll(cx),
            ShortcutFuture::Direct(f) => Poll::Ready(Ok(ready!(f.as_mut().poll(cx)))),
        }
    }
}
