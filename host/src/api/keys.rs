//! The key routes: `GET /api?key=K` (the classic form), `GET`, `PUT` and `DELETE
//! /api/v1/groups/{group}/keys/{key}`, and the TTL a PUT may give.

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;

use super::encoding::{Accepted, reply_response};
use super::guard::HeldBody;
use super::{ApiError, AppState};
use crate::cache::Clock as _;
use crate::error::Error;
use crate::spans::in_span;

/// The W3C trace context (`traceparent`) of a request, read only when traces are exported (see
/// [`crate::telemetry::remote_context`]): the get's spans continue the caller's trace.
pub(super) struct RemoteTrace(pub(super) Option<opentelemetry::Context>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RemoteTrace {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(RemoteTrace(crate::telemetry::remote_context(
            &parts.headers,
        )))
    }
}

/// Query of the classic `GET /api?key=K[&group=G]`.
#[derive(Debug, Deserialize)]
pub(super) struct ClassicQuery {
    key: Option<String>,
    group: Option<String>,
}

pub(super) async fn classic_get(
    State(state): State<AppState>,
    accepted: Accepted,
    trace: RemoteTrace,
    query: Result<Query<ClassicQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| Error::BadRequest(e.body_text()))?;
    let key = q.key.ok_or_else(|| {
        Error::BadRequest("missing query parameter `key`, e.g. /api?key=Tom".into())
    })?;
    let group = q.group.as_deref().unwrap_or(&state.inner.default_group);
    get_value(&state, group, &key, accepted, trace).await
}

pub(super) async fn rest_get(
    State(state): State<AppState>,
    accepted: Accepted,
    trace: RemoteTrace,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((group, key)) = path.map_err(|e| Error::BadRequest(e.body_text()))?;
    get_value(&state, &group, &key, accepted, trace).await
}

/// Both GET forms: the value of `key` in `group`, in the `geecache.api.get` span. A stored
/// gzip/zstd value goes out as it is when the client's `Accept-Encoding` allows it.
pub(super) async fn get_value(
    state: &AppState,
    group: &str,
    key: &str,
    accepted: Accepted,
    trace: RemoteTrace,
) -> Result<Response, ApiError> {
    let span = tracing::info_span!("geecache.api.get", group);
    let get = async {
        let reply = state
            .inner
            .groups
            .get(group)?
            .get_reply(key, accepted.as_slice())
            .await?;
        Ok(reply_response(reply))
    };
    crate::telemetry::adopt(&span, trace.0);
    in_span(get, span).await
}

/// Query of `PUT /api/v1/groups/{group}/keys/{key}`.
#[derive(Debug, Deserialize)]
pub(super) struct PutQuery {
    /// Lifetime of the value, e.g. `10m`; default: the group's TTL.
    ttl: Option<String>,
}

/// Longest `?ttl=` a PUT accepts: ten years (3650 days). Longer ones are refused (400) rather
/// than clamped, since a caller asking for more has made a mistake.
pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(3650 * 24 * 3600);

/// The absolute expiry (ms since the Unix epoch) of a value put at `now_ms` with `?ttl=ttl`.
///
/// # Errors
/// [`Error::BadRequest`] when `ttl` is not a duration, or longer than [`MAX_TTL`].
pub fn expiry_of_ttl(ttl: &str, now_ms: u64) -> Result<u64, Error> {
    let parsed = crate::units::parse_duration(ttl).map_err(Error::BadRequest)?;
    if parsed > MAX_TTL {
        return Err(Error::BadRequest(format!(
            "ttl {ttl:?} is longer than the limit of 3650 days"
        )));
    }
    // Within MAX_TTL the milliseconds fit a u64 and the sum cannot overflow before the year
    // 584 million; checked all the same, since the clock is not ours.
    u64::try_from(parsed.as_millis())
        .ok()
        .and_then(|ms| now_ms.checked_add(ms))
        .ok_or_else(|| Error::BadRequest(format!("ttl {ttl:?} is out of range")))
}

/// A body extractor failure, as a JSON error: 413 past the body limit, 400 otherwise.
pub(super) fn body_error(state: &AppState, e: &BytesRejection) -> Error {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::BodyTooLarge {
            limit: state.inner.options.max_body_bytes,
        }
    } else {
        Error::BadRequest(e.body_text())
    }
}

pub(super) async fn rest_put(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<PutQuery>, QueryRejection>,
    held: Option<Extension<HeldBody>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((group, key)) = path.map_err(|e| Error::BadRequest(e.body_text()))?;
    let Query(q) = query.map_err(|e| Error::BadRequest(e.body_text()))?;
    let body = body.map_err(|e| body_error(&state, &e))?;
    let expires_at_ms = q
        .ttl
        .as_deref()
        .map(|ttl| expiry_of_ttl(ttl, crate::cache::SystemClock.now_ms()))
        .transpose()?;
    let group = state.inner.groups.get(&group)?.clone();
    // The write runs to its end even if the client goes away (see `Group::set`), and holds the
    // body's reservation until then: a client that disconnects mid-write cannot have the node
    // hold its bytes outside `--max-inflight-body-bytes`.
    let reservation = held.and_then(|Extension(held)| held.take());
    let write = tokio::spawn(async move {
        let _reservation = reservation;
        group.set(&key, body, expires_at_ms).await
    });
    match write.await {
        Ok(written) => written?,
        Err(e) => {
            tracing::error!(error = %e, "a PUT's task failed");
            return Err(Error::Internal("the write failed; see the node's log".into()).into());
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn rest_delete(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((group, key)) = path.map_err(|e| Error::BadRequest(e.body_text()))?;
    state.inner.groups.get(&group)?.remove(&key).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
