//! What the admin routes that reach every ring member (a cluster rollout, a cluster flush)
//! share: they run [`detached`] from their client, send each member its part with [`ask`],
//! take a member's part with [`verified_admin_request`], and answer with one [`NodeAnswer`]
//! per node. The signed exchange itself is the peer module's ([`crate::peer::admin`]).

use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::ser::SerializeMap as _;

use super::{ApiError, AppState, error_response};
use crate::error::Error;
use crate::peer::admin::Refused;

/// Largest answer read from a node during a fan-out (a small JSON body).
const MAX_NODE_ANSWER: usize = 64 << 10;

/// Sends one admin request (a rollout's phase, a flush) to the member at `addr`, signed;
/// its JSON answer, or the error it gave.
pub(super) async fn ask(
    state: &AppState,
    addr: &str,
    path: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<serde_json::Value, serde_json::Value> {
    let cluster = &state.inner.cluster;
    match cluster
        .admin_post(addr, path, body, timeout, MAX_NODE_ANSWER)
        .await
    {
        Ok((status, answer)) => {
            let json: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_else(
                |_| serde_json::json!({ "error": { "code": "bad_answer", "message": String::from_utf8_lossy(&answer) } }),
            );
            if (200..300).contains(&status) {
                Ok(json)
            } else {
                Err(json.get("error").cloned().unwrap_or(json))
            }
        }
        Err(message) => Err(serde_json::json!({ "code": "node_unreachable", "message": message })),
    }
}

/// An admin request from another node (a rollout's phase, a cluster flush): its parts and
/// body, once its signature with the cluster secret checked out (before the body is read,
/// and then over the body, at most `limit` bytes). Otherwise the error answer: 403 without
/// `--cluster-secret`, 401 for a bad signature (with `Retry-After` when it is from before this
/// node started), 413 for a body past `limit`.
pub(super) async fn verified_admin_request(
    state: &AppState,
    req: Request,
    limit: usize,
    what: &str,
) -> Result<(axum::http::request::Parts, Bytes), Response> {
    let Some(auth) = &state.inner.peer_auth else {
        return Err(ApiError(Error::Forbidden(format!(
            "this node has no --cluster-secret: it takes no {what} from other nodes"
        )))
        .into_response());
    };
    crate::peer::admin::verify_request(auth, req, limit)
        .await
        .map_err(|refused| match refused {
            Refused::Unsigned { error, retry } => {
                tracing::warn!(error = %error, "refused an unsigned or badly signed {what} request");
                let mut response =
                    error_response(StatusCode::UNAUTHORIZED, error.code(), error.to_string());
                if retry {
                    response.headers_mut().insert(
                        axum::http::header::RETRY_AFTER,
                        axum::http::HeaderValue::from_static("1"),
                    );
                }
                response
            }
            Refused::TooLarge { limit } => ApiError(Error::BodyTooLarge { limit }).into_response(),
        })
}

/// Runs an admin fan-out (a cluster rollout or flush) as a task of its own, so that a client
/// that disconnects midway does not leave the cluster half done: the task goes on to the end
/// (each of its steps bounded by its own timeout) and logs its outcome; only the answer is
/// lost.
pub(super) async fn detached(
    what: &'static str,
    work: impl Future<Output = Result<Response, ApiError>> + Send + 'static,
) -> Result<Response, ApiError> {
    match tokio::spawn(work).await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::error!(error = %e, "a {what}'s task failed");
            Err(Error::Internal(format!("the {what} failed; see the node's log")).into())
        }
    }
}

/// One node's part in a fan-out, as the answer lists it: `{"node", "ok", FIELD or "error"}`,
/// FIELD being what that fan-out calls a node's answer (`answer` for a flush, `reload` for a
/// rollout's commit), left out when the node answered nothing to show.
#[derive(Debug)]
pub(super) struct NodeAnswer {
    /// The node's address.
    node: String,
    /// What it answered (`Ok`) or why it could not do its part (`Err`, an error's JSON).
    answer: Result<Option<serde_json::Value>, serde_json::Value>,
    /// The name of the answer's field.
    field: &'static str,
}

impl NodeAnswer {
    /// `self_addr`'s answer `local` then each of `peers`' (in `remote`, in the same order).
    pub(super) fn all(
        field: &'static str,
        (self_addr, local): (&str, Result<Option<serde_json::Value>, serde_json::Value>),
        peers: &[String],
        remote: Vec<Result<Option<serde_json::Value>, serde_json::Value>>,
    ) -> Vec<NodeAnswer> {
        let node = |node: &str, answer| NodeAnswer {
            node: node.to_string(),
            answer,
            field,
        };
        let mut all = vec![node(self_addr, local)];
        all.extend(peers.iter().zip(remote).map(|(p, r)| node(p, r)));
        all
    }

    /// Whether the node did its part.
    pub(super) fn ok(&self) -> bool {
        self.answer.is_ok()
    }
}

impl serde::Serialize for NodeAnswer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("node", &self.node)?;
        map.serialize_entry("ok", &self.ok())?;
        match &self.answer {
            Ok(Some(answer)) => map.serialize_entry(self.field, answer)?,
            Ok(None) => {}
            Err(error) => map.serialize_entry("error", error)?,
        }
        map.end()
    }
}
