//! How a value goes out: the raw value as `application/octet-stream`, or a stored gzip/zstd
//! payload with its `Content-Encoding` when the request's `Accept-Encoding` allows it.

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::group::Reply;

pub(super) fn value_response(value: Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        value,
    )
        .into_response()
}

/// Says where a get's answer came from: `main`, `hot`, `stale`, `storage`, `peer` or
/// `getter` ([`crate::group::Source`]). A `HeaderName` made once: every hit sets it.
pub const SOURCE_HEADER: HeaderName = HeaderName::from_static("x-geecache-source");

/// A get's answer: the plain value, or a stored gzip/zstd payload with its `Content-Encoding`.
/// Either way the response varies with `Accept-Encoding`, so caches in between must key on it.
pub(super) fn reply_response(reply: Reply) -> Response {
    let mut response = value_response(reply.body);
    let headers = response.headers_mut();
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    headers.insert(
        SOURCE_HEADER,
        HeaderValue::from_static(reply.source.label()),
    );
    if let Some(coding) = reply.content_encoding {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
    }
    response
}

/// The content codings a stored value may be in that HTTP clients know: what
/// `Accept-Encoding` is read for (core's list).
use crate::compression::CONTENT_CODINGS as STORED_CODINGS;

/// The content codings (of [`STORED_CODINGS`]) a request's `Accept-Encoding` accepts, kept
/// inline: reading them allocates nothing. Also an extractor, which reads the headers where
/// they are rather than taking a copy of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Accepted {
    /// The accepted codings, in the order of [`STORED_CODINGS`]; the first `len` are set.
    codings: [&'static str; 2],
    /// How many are accepted.
    len: usize,
}

impl Accepted {
    pub(super) fn as_slice(&self) -> &[&'static str] {
        &self.codings[..self.len]
    }
}

impl IntoIterator for Accepted {
    type Item = &'static str;
    type IntoIter = std::iter::Take<std::array::IntoIter<&'static str, 2>>;

    fn into_iter(self) -> Self::IntoIter {
        self.codings.into_iter().take(self.len)
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Accepted {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(accepted_codings(&parts.headers))
    }
}

/// Whether an `Accept-Encoding` parameter is `q=0` (or any q ≤ 0), refusing its coding; the
/// name and the value are read case-insensitively.
pub(super) fn refuses(param: &str) -> bool {
    let param = param.trim();
    param.get(..2).is_some_and(|q| q.eq_ignore_ascii_case("q="))
        && param[2..].trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
}

/// The content codings (of those a stored value may be in: `gzip`, `zstd`) that an
/// `Accept-Encoding` header accepts. `q=0` refuses a coding; `*` accepts both unless refused.
pub(super) fn accepted_codings(headers: &HeaderMap) -> Accepted {
    let mut star = false;
    // Per coding of STORED_CODINGS: listed without q=0, listed with q=0.
    let (mut yes, mut no) = ([false; 2], [false; 2]);
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let refused = parts.any(refuses);
            let index =
                if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                    0
                } else if coding.eq_ignore_ascii_case("zstd") {
                    1
                } else {
                    if coding == "*" {
                        star = !refused;
                    }
                    continue;
                };
            if refused {
                no[index] = true;
            } else {
                yes[index] = true;
            }
        }
    }
    let mut accepted = Accepted::default();
    for (i, coding) in STORED_CODINGS.into_iter().enumerate() {
        if !no[i] && (star || yes[i]) {
            accepted.codings[accepted.len] = coding;
            accepted.len += 1;
        }
    }
    accepted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(values: &[&str]) -> Vec<&'static str> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(v).expect("ASCII"),
            );
        }
        accepted_codings(&headers).into_iter().collect()
    }

    #[test]
    fn accept_encoding_is_read_with_q_values_and_wildcards() {
        assert!(accepted(&[]).is_empty());
        assert_eq!(accepted(&["gzip, deflate, br"]), ["gzip"]);
        assert_eq!(accepted(&["br", "ZSTD;q=0.5"]), ["zstd"]);
        assert_eq!(accepted(&["gzip;q=0, zstd"]), ["zstd"]);
        assert_eq!(accepted(&["gzip; q=0.0"]), Vec::<&str>::new());
        assert_eq!(accepted(&["gzip;Q=0, zstd"]), ["zstd"]);
        assert_eq!(accepted(&["*"]), ["gzip", "zstd"]);
        assert_eq!(accepted(&["*, zstd;q=0"]), ["gzip"]);
        assert_eq!(accepted(&["identity"]), Vec::<&str>::new());
        assert_eq!(accepted(&["X-Gzip;Q=0.1", "zstd;q=0, *"]), ["gzip"]);
        assert_eq!(accepted(&["gzip;q=0, x-gzip"]), Vec::<&str>::new());
    }
}
