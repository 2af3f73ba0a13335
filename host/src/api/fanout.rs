//! What the admin routes that reach every ring member (a cluster rollout, a cluster flush)
//! share: they run [`detached`] from their client, and answer with one [`NodeAnswer`] per node.

use axum::response::Response;
use serde::ser::SerializeMap as _;

use super::ApiError;
use crate::error::Error;

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
