//! The request timer: every request (peer protocol included) is timed into
//! `geecache_http_request_duration_seconds`, labelled with the route template (never the raw
//! path, which carries keys), the method and the status.
//!
//! A hand-written tower layer rather than `axum::middleware::from_fn`: a `from_fn` middleware
//! boxes its future and the rest of the stack on every request, and this one runs on every
//! request, hits included. The labels are `&'static str`s, so recording allocates nothing.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use opentelemetry::StringValue;

use crate::telemetry::Metrics;
use crate::telemetry::metrics::{UNMATCHED_ROUTE, method_label};

/// Every route template of [`super::router`] (the peer routes' included): the matched template
/// of a request is found here, so its `route` label is a `&'static str` rather than a copy made
/// per request. A template missing from the list still gets its label, as a copy.
const ROUTES: [&str; 9] = [
    "/api",
    "/api/v1/groups/{group}/keys/{key}",
    "/api/v1/groups/{group}/batch",
    "/api/v1/stats",
    "/metrics",
    "/api/v1/cluster",
    "/healthz",
    "/readyz",
    "/_geecache/{*path}",
];

/// The `route` label of a request that matched `template` (or none).
fn route_label(template: Option<&str>) -> StringValue {
    let Some(template) = template else {
        return UNMATCHED_ROUTE.into();
    };
    match ROUTES.iter().find(|r| **r == template) {
        Some(route) => (*route).into(),
        None => template.to_owned().into(),
    }
}

/// Times the requests of the routes it wraps into `metrics`. Apply it with `Router::layer`
/// after the routes are added, so the matched route template is known.
#[derive(Debug, Clone)]
pub struct TimingLayer {
    /// Where the durations go.
    pub metrics: Metrics,
}

impl<S> tower::Layer<S> for TimingLayer {
    type Service = Timing<S>;

    fn layer(&self, inner: S) -> Timing<S> {
        Timing {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A service timed by [`TimingLayer`].
#[derive(Debug, Clone)]
pub struct Timing<S> {
    /// The route (or fallback) being timed.
    inner: S,
    /// Where the durations go.
    metrics: Metrics,
}

impl<S> tower::Service<Request> for Timing<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Timed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let route = route_label(
            req.extensions()
                .get::<MatchedPath>()
                .map(MatchedPath::as_str),
        );
        let method = method_label(req.method());
        Timed {
            answer: self.inner.call(req),
            metrics: Some(self.metrics.clone()),
            route,
            method,
            started: Instant::now(),
        }
    }
}

/// A request being answered and timed.
#[derive(Debug)]
pub struct Timed<F> {
    /// The answer.
    answer: F,
    /// Where the duration goes; taken when it is recorded.
    metrics: Option<Metrics>,
    /// The `route` label.
    route: StringValue,
    /// The `method` label.
    method: &'static str,
    /// When the request arrived here.
    started: Instant,
}

impl<F> Future for Timed<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let answer = ready!(Pin::new(&mut this.answer).poll(cx));
        if let (Some(metrics), Ok(response)) = (this.metrics.take(), &answer) {
            metrics.record_request(
                this.route.clone(),
                this.method,
                response.status().as_u16(),
                this.started.elapsed(),
            );
        }
        Poll::Ready(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_templates_are_static_labels_and_others_keep_their_text() {
        assert_eq!(route_label(None).as_str(), UNMATCHED_ROUTE);
        for route in ROUTES {
            assert_eq!(route_label(Some(route)).as_str(), route);
        }
        let other = String::from("/new/{x}");
        assert_eq!(route_label(Some(&other)).as_str(), "/new/{x}");
    }
}
