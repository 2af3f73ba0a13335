//! `POST /api/v1/groups/{group}/batch`: many keys in one request, each distinct key loaded
//! once (at most [`BATCH_CONCURRENCY`] at a time), the answer within `--max-batch-bytes`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, log_error};
use crate::batch::{self, MAX_BATCH_KEYS, Slot};
use crate::error::Error;

/// How many keys of one batch are loaded at once.
pub(super) const BATCH_CONCURRENCY: usize = 64;

/// Body of `POST /api/v1/groups/{group}/batch`.
#[derive(Debug, Deserialize)]
pub(super) struct BatchRequest {
    /// At most [`MAX_BATCH_KEYS`]: decoding stops at the next one (see [`bounded_keys`]).
    #[serde(deserialize_with = "bounded_keys")]
    keys: Vec<String>,
}

/// Decodes a list of at most [`MAX_BATCH_KEYS`] keys, failing at the first key past it: a body
/// of millions of keys is refused after 1,001 of them, not once all are in memory.
pub(super) fn bounded_keys<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<String>, D::Error> {
    struct Keys;
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a list of at most {MAX_BATCH_KEYS} keys")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut keys = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_BATCH_KEYS));
            while let Some(key) = seq.next_element::<String>()? {
                if keys.len() == MAX_BATCH_KEYS {
                    return Err(serde::de::Error::custom(format!(
                        "more than {MAX_BATCH_KEYS} keys in one batch; the limit is {MAX_BATCH_KEYS}"
                    )));
                }
                keys.push(key);
            }
            Ok(keys)
        }
    }
    d.deserialize_seq(Keys)
}

/// One key's answer in a batch.
#[derive(Debug, Serialize)]
pub(super) struct BatchResult<'a> {
    key: &'a str,
    /// The value, when it is valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    /// The value in standard base64, when it is not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<BatchError<'a>>,
}

#[derive(Debug, Serialize)]
pub(super) struct BatchError<'a> {
    code: &'a str,
    message: String,
}

/// One batch item as the JSON text that goes into the answer, so that its size is known and
/// the value is not held twice (as bytes and as text).
pub(super) fn batch_item_json(key: &str, answer: Result<Bytes, Error>) -> Vec<u8> {
    let mut r = BatchResult {
        key,
        value: None,
        value_base64: None,
        error: None,
    };
    match &answer {
        Ok(v) => match std::str::from_utf8(v) {
            Ok(text) => r.value = Some(text),
            Err(_) => {
                r.value_base64 = Some(base64::engine::general_purpose::STANDARD.encode(v));
            }
        },
        Err(e) => {
            log_error(e);
            r.error = Some(BatchError {
                code: e.code(),
                message: e.public_message(),
            });
        }
    }
    // Serializing strings and options into a Vec cannot fail.
    serde_json::to_vec(&r).unwrap_or_default()
}

/// `POST /api/v1/groups/{group}/batch`: each distinct key once, in order of first occurrence,
/// within the byte budget of [`ApiOptions::max_batch_bytes`] (see [`crate::batch`]).
pub(super) async fn batch_get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<BatchRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Path(group) = path.map_err(|e| Error::BadRequest(e.body_text()))?;
    // Only JSON sent as JSON: a cross-site form or `text/plain` POST (which browsers send
    // without asking first, see docs/security.md) never reaches the keys.
    if let Err(JsonRejection::MissingJsonContentType(_)) = &body {
        return Ok(super::errors::error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the keys as JSON with Content-Type: application/json, e.g. curl --json '{\"keys\":[\"Tom\"]}'".into(),
        ));
    }
    let Json(req) = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::BodyTooLarge {
                limit: state.inner.options.max_body_bytes,
            }
        } else {
            Error::BadRequest(e.body_text())
        }
    })?;
    let group = state.inner.groups.get(&group)?.clone();
    let budget = state.inner.options.max_batch_bytes;
    // Keys other nodes own are asked from them first, one `_batch` request per owner, all at
    // once; then each key takes the get path (caches, singleflight) with its owner's answer,
    // or the normal one (a key this node owns, holds, or whose owner skipped it).
    let keys = batch::dedup_keys(req.keys);
    let answers = group.owner_answers(&keys).await;
    let items = batch::answer(
        keys,
        budget,
        BATCH_CONCURRENCY,
        |key| {
            let group = group.clone();
            let answer = answers.get(&key).cloned();
            async move { batch_item_json(&key, group.get_with_owner_answer(&key, answer).await) }
        },
        Vec::len,
    )
    .await;
    let mut body = b"{\"results\":[".to_vec();
    for (i, (key, slot)) in items.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        match slot {
            Slot::Answered(json) => body.extend_from_slice(&json),
            Slot::OverBudget => {
                body.extend_from_slice(&batch_item_json(&key, Err(batch::over_budget(budget))));
            }
        }
    }
    body.extend_from_slice(b"]}");
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}
