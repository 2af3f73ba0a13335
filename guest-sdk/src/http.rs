//! Outbound HTTP (getters only): standard `wasi:http/outgoing-handler`, behind a small
//! blocking client.
//!
//! The host sends a request only to origins the operator allowed for this plugin
//! (`--plugin-http NAME=https://api.example.com`); any other is refused with
//! [`Error::Unavailable`] saying so. Every request shares the call's time limit, and a response
//! body is cut at the plugin's memory cap.
//!
//! ```no_run
//! use geecache_guest_sdk::http;
//!
//! # fn main() -> Result<(), geecache_guest_sdk::Error> {
//! let response = http::get("https://api.example.com/users/Tom")?;
//! if response.status == 200 {
//!     let max_age = response.max_age();
//!     let body: &[u8] = &response.body;
//!     # let _ = (max_age, body);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Redirects (301, 302, 303, 307, 308) are followed, at most [`Request::MAX_REDIRECTS`] by
//! default, each as a request of its own that the host checks against the allowlist: a
//! redirect to an origin outside it fails. Any HTTP client for `wasi:http` works too (e.g.
//! `wstd`); this one needs nothing beyond the SDK.
//!
//! Natively (in a plugin's unit tests) the [`FakeHost`](crate::testing::FakeHost) the test
//! runs under answers, with what [`FakeHost::http`](crate::testing::FakeHost::http) gave it.

use crate::Error;

/// An HTTP method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `DELETE`.
    Delete,
    /// Any other method, by name.
    Other(String),
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Other(m) => m,
        })
    }
}

/// A request to send with [`send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Its method.
    pub method: Method,
    /// An absolute `http://` or `https://` URL.
    pub url: String,
    /// Header fields, in order.
    pub headers: Vec<(String, String)>,
    /// The body; empty for none.
    pub body: Vec<u8>,
    /// How many redirects [`send`] follows before it returns the redirect itself.
    pub max_redirects: u32,
}

impl Request {
    /// Redirects followed unless [`Request::max_redirects`] says otherwise.
    pub const MAX_REDIRECTS: u32 = 3;

    /// A request with `method` to `url`, no headers and no body.
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Request {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            max_redirects: Self::MAX_REDIRECTS,
        }
    }

    /// A `GET` of `url`.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new(Method::Get, url)
    }

    /// A `POST` of `body` to `url`.
    pub fn post(url: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        let mut request = Self::new(Method::Post, url);
        request.body = body.into();
        request
    }

    /// Adds a header field.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets how many redirects [`send`] follows (0: none; the 3xx is returned as it is).
    #[must_use]
    pub fn redirects(mut self, max: u32) -> Self {
        self.max_redirects = max;
        self
    }
}

/// A response: its status, header fields and whole body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    /// The status code, e.g. 200.
    pub status: u16,
    /// Header fields, in order, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with `status` and `body` and no headers (for tests under the fake host).
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Adds a header field (for tests under the fake host).
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers
            .push((name.into().to_ascii_lowercase(), value.into()));
        self
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How long the answer may be cached, from `Cache-Control`: `max-age` in seconds (`s-maxage`
    /// first, as a shared cache reads it), or 0 for `no-store`, `no-cache` and `private`.
    /// `None` when it says nothing.
    pub fn max_age(&self) -> Option<u64> {
        let control = self.header("cache-control")?.to_ascii_lowercase();
        let mut max_age = None;
        let mut shared = None;
        for directive in control.split(',').map(str::trim) {
            match directive.split_once('=') {
                Some(("s-maxage", v)) => shared = v.trim_matches('"').parse().ok(),
                Some(("max-age", v)) => max_age = v.trim_matches('"').parse().ok(),
                None if matches!(directive, "no-store" | "no-cache" | "private") => {
                    return Some(0);
                }
                _ => {}
            }
        }
        shared.or(max_age)
    }

    /// How long past its expiry the answer may still be used, in seconds, from `Cache-Control`
    /// (RFC 5861): the larger of `stale-while-revalidate` and `stale-if-error`, which a cache
    /// entry's one stale window covers both of; `None` without either.
    pub fn stale_window(&self) -> Option<u64> {
        let control = self.header("cache-control")?.to_ascii_lowercase();
        control
            .split(',')
            .filter_map(|directive| match directive.trim().split_once('=') {
                Some(("stale-while-revalidate" | "stale-if-error", v)) => {
                    v.trim_matches('"').parse::<u64>().ok()
                }
                _ => None,
            })
            .max()
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// `GET`s `url` (following redirects).
///
/// # Errors
/// As [`send`].
pub fn get(url: &str) -> Result<Response, Error> {
    send(&Request::get(url))
}

/// Sends `request` and reads its whole response, following redirects as
/// [`Request::max_redirects`] allows (a 303, or a 301/302 of a `POST`, goes on as a `GET`
/// without a body).
///
/// # Errors
/// [`Error::InvalidInput`] for a URL that is not absolute `http(s)://`; [`Error::Unavailable`]
/// when the host refused it (not in the plugin's allowlist), it failed on the way (refused,
/// reset, timed out, TLS) or the body was larger than the plugin may hold.
pub fn send(request: &Request) -> Result<Response, Error> {
    let mut request = request.clone();
    let mut redirects = 0;
    loop {
        let response = send_once(&request)?;
        let redirect = matches!(response.status, 301 | 302 | 303 | 307 | 308);
        let location = response.header("location");
        match location {
            Some(location) if redirect && redirects < request.max_redirects => {
                redirects += 1;
                request.url = resolve(&request.url, location)?;
                let as_get = response.status == 303
                    || (matches!(response.status, 301 | 302) && request.method == Method::Post);
                if as_get {
                    request.method = Method::Get;
                    request.body.clear();
                }
            }
            _ => return Ok(response),
        }
    }
}

/// One request, no redirects: to the host, or natively to the fake.
fn send_once(request: &Request) -> Result<Response, Error> {
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::http_send(request);
    #[cfg(target_arch = "wasm32")]
    return host::send(request);
}

/// A URL's parts: scheme, authority and path with query.
fn split_url(url: &str) -> Result<(&str, &str, &str), Error> {
    let bad = || {
        Error::InvalidInput(format!(
            "{url:?} is not an absolute http:// or https:// URL"
        ))
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(bad());
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return Err(bad());
    }
    let path = path.split('#').next().unwrap_or_default();
    Ok((scheme, authority, path))
}

/// `location` (absolute, or a path) against `base`.
fn resolve(base: &str, location: &str) -> Result<String, Error> {
    if location.contains("://") {
        return Ok(location.to_owned());
    }
    let (scheme, authority, path) = split_url(base)?;
    if let Some(rest) = location.strip_prefix("//") {
        return Ok(format!("{scheme}://{rest}"));
    }
    if location.starts_with('/') {
        return Ok(format!("{scheme}://{authority}{location}"));
    }
    let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir);
    Ok(format!("{scheme}://{authority}{dir}/{location}"))
}

#[cfg(target_arch = "wasm32")]
mod host {
    //! `wasi:http/outgoing-handler`, through the `wasip2` bindings.

    use super::{Method, Request, Response, split_url};
    use crate::Error;
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{
        ErrorCode, Fields, IncomingBody, Method as WasiMethod, OutgoingBody, OutgoingRequest,
        Scheme,
    };
    use wasip2::io::streams::StreamError;

    /// Bytes asked for per read of a response body.
    const CHUNK: u64 = 64 << 10;

    /// Bytes written per write of a request's body: `blocking-write-and-flush` takes at most
    /// 4096 bytes at once (wasi:io/streams), and traps past it.
    const WRITE_CHUNK: usize = 4096;

    fn failed(url: &str, code: &ErrorCode) -> Error {
        let why = match code {
            ErrorCode::HttpRequestDenied => {
                "refused by the host: not in this plugin's --plugin-http allowlist".to_owned()
            }
            ErrorCode::DestinationIpProhibited => {
                "refused by the host: the name resolves to an address plugins may not reach"
                    .to_owned()
            }
            ErrorCode::HttpResponseBodySize(_) => {
                "the response body is larger than the plugin may hold".to_owned()
            }
            other => format!("{other:?}"),
        };
        Error::Unavailable(format!("{url}: {why}"))
    }

    pub(super) fn send(request: &Request) -> Result<Response, Error> {
        let url = request.url.as_str();
        let (scheme, authority, path) = split_url(url)?;
        let headers = Fields::new();
        for (name, value) in &request.headers {
            headers
                .append(name, value.as_bytes())
                .map_err(|e| Error::InvalidInput(format!("header {name:?}: {e:?}")))?;
        }
        let outgoing = OutgoingRequest::new(headers);
        let method = match &request.method {
            Method::Get => WasiMethod::Get,
            Method::Head => WasiMethod::Head,
            Method::Post => WasiMethod::Post,
            Method::Put => WasiMethod::Put,
            Method::Delete => WasiMethod::Delete,
            Method::Other(m) => WasiMethod::Other(m.clone()),
        };
        let invalid = |what: &str| Error::InvalidInput(format!("{url}: invalid {what}"));
        outgoing
            .set_method(&method)
            .map_err(|()| invalid("method"))?;
        let scheme = if scheme.eq_ignore_ascii_case("https") {
            Scheme::Https
        } else {
            Scheme::Http
        };
        outgoing
            .set_scheme(Some(&scheme))
            .map_err(|()| invalid("scheme"))?;
        outgoing
            .set_authority(Some(authority))
            .map_err(|()| invalid("host"))?;
        let path = if path.is_empty() { "/" } else { path };
        outgoing
            .set_path_with_query(Some(path))
            .map_err(|()| invalid("path"))?;
        let body = if request.body.is_empty() {
            None
        } else {
            Some(outgoing.body().map_err(|()| invalid("body"))?)
        };
        let pending = outgoing_handler::handle(outgoing, None).map_err(|e| failed(url, &e))?;
        // The body is written once the request is under way: its stream is drained as it goes.
        if let Some(body) = body {
            let stream = body.write().map_err(|()| invalid("body"))?;
            for chunk in request.body.chunks(WRITE_CHUNK) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| Error::Unavailable(format!("{url}: sending the body: {e:?}")))?;
            }
            drop(stream);
            OutgoingBody::finish(body, None).map_err(|e| failed(url, &e))?;
        }
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(failed(url, &code)),
            Some(Err(())) | None => {
                return Err(Error::Unavailable(format!("{url}: no response")));
            }
        };
        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(name, value)| {
                (
                    name.to_ascii_lowercase(),
                    String::from_utf8_lossy(&value).into_owned(),
                )
            })
            .collect();
        let incoming = response
            .consume()
            .map_err(|()| Error::Unavailable(format!("{url}: no body")))?;
        let stream = incoming
            .stream()
            .map_err(|()| Error::Unavailable(format!("{url}: no body")))?;
        let mut body = Vec::new();
        loop {
            match stream.blocking_read(CHUNK) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(match wasip2::http::types::http_error_code(&e) {
                        Some(code) => failed(url, &code),
                        None => Error::Unavailable(format!(
                            "{url}: reading the body: {}",
                            e.to_debug_string()
                        )),
                    });
                }
            }
        }
        drop(stream);
        drop(IncomingBody::finish(incoming));
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_and_redirects_resolve() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/a/b?c=d#e").ok(),
            Some(("http", "127.0.0.1:8080", "/a/b?c=d"))
        );
        assert_eq!(
            split_url("https://x.com").ok(),
            Some(("https", "x.com", ""))
        );
        assert!(split_url("ftp://x.com/").is_err());
        assert!(split_url("/relative").is_err());
        assert!(split_url("http:///path").is_err());
        let base = "http://a.com:81/dir/page?q=1";
        assert_eq!(
            resolve(base, "https://b.com/x").ok().as_deref(),
            Some("https://b.com/x")
        );
        assert_eq!(
            resolve(base, "//c.com/y").ok().as_deref(),
            Some("http://c.com/y")
        );
        assert_eq!(
            resolve(base, "/z").ok().as_deref(),
            Some("http://a.com:81/z")
        );
        assert_eq!(
            resolve(base, "w").ok().as_deref(),
            Some("http://a.com:81/dir/w")
        );
    }

    #[test]
    fn cache_control_gives_the_max_age() {
        let with = |v: &str| Response::new(200, "").with_header("Cache-Control", v);
        assert_eq!(with("public, max-age=60").max_age(), Some(60));
        assert_eq!(with("max-age=60, s-maxage=30").max_age(), Some(30));
        assert_eq!(with("no-store").max_age(), Some(0));
        assert_eq!(with("private, max-age=60").max_age(), Some(0));
        assert_eq!(with("public").max_age(), None);
        assert_eq!(Response::new(200, "").max_age(), None);
    }
}
