//! `http_getter`: loads a cache miss from an HTTP origin.
//!
//! A key is fetched as `GET {base}/{key}` (the key percent-encoded as one path segment), where
//! `base` is config key `base`, e.g. `--plugin-config http_getter.base=https://api.example.com/users`.
//! The operator must also allow the origin: `--plugin-http http_getter=https://api.example.com`.
//!
//! The answer maps to the lookup:
//! - 2xx: found, the body as the value; `Cache-Control: max-age` (or `s-maxage`) sets the
//!   entry's expiry, `no-store`/`no-cache`/`private` make it expire at once; without one the
//!   group's TTL applies. `stale-while-revalidate` / `stale-if-error` (RFC 5861; the larger
//!   of the two) set the entry's own stale window, whatever the group's `--stale`.
//! - 404 and 410: not found.
//! - 429 and 5xx, or no answer at all (refused, timed out, not allowed): unavailable, so
//!   nothing is cached (a 5xx or a failed connection is the node's 502 `source_unavailable`).
//! - anything else: an error naming the status.
//!
//! Redirects are followed (at most 3), each checked against the allowlist by the host.
//! Optional config `header.NAME=VALUE` adds request headers (e.g. `header.accept`,
//! `header.content-type`). With config `body` set, a key is fetched as `POST {base}/{key}`
//! with that body, every `{key}` in it replaced by the key (for origins that take a query
//! document, e.g. `body={"id":"{key}"}`).

use geecache_guest_sdk::http::{self, Request};
use geecache_guest_sdk::{Error, Getter, Lookup, config, export_getter, log};

/// Request headers the operator may set, as config keys `header.<name>`.
const HEADERS: [&str; 4] = ["accept", "authorization", "content-type", "user-agent"];

struct HttpGetter;

impl Getter for HttpGetter {
    const NAME: &'static str = "http_getter";

    fn get(group: &str, key: &str) -> Result<Lookup, Error> {
        let base = config::get("base").ok_or_else(|| {
            Error::Unavailable(
                "config key `base` is not set: --plugin-config http_getter.base=https://HOST/PATH"
                    .to_owned(),
            )
        })?;
        let url = format!("{}/{}", base.trim_end_matches('/'), encode_segment(key));
        let mut request = match config::get("body") {
            Some(body) => Request::post(&url, body.replace("{key}", key)),
            None => Request::get(&url),
        };
        for name in HEADERS {
            if let Some(value) = config::get(&format!("header.{name}")) {
                request = request.header(name, value);
            }
        }
        let response = http::send(&request)?;
        let stale_window = response.stale_window();
        let lookup = match response.status {
            200..=299 => {
                let found = match response.max_age() {
                    Some(seconds) => Lookup::found_until(
                        response.body,
                        now_ms().saturating_add(seconds.saturating_mul(1000)),
                    ),
                    None => Lookup::found(response.body),
                };
                match stale_window {
                    Some(seconds) => found.stale_for_ms(
                        u32::try_from(seconds.saturating_mul(1000)).unwrap_or(u32::MAX),
                    ),
                    None => found,
                }
            }
            404 | 410 => Lookup::NotFound,
            429 | 500..=599 => {
                return Err(Error::Unavailable(format!(
                    "{url}: the origin answered {}",
                    response.status
                )));
            }
            status => {
                return Err(Error::Other(format!("{url}: unexpected status {status}")));
            }
        };
        match &lookup {
            Lookup::Found { value, .. } => {
                log::debug(&format!("{group}/{key}: found, {} bytes", value.len()));
            }
            Lookup::NotFound => log::debug(&format!("{group}/{key}: not found")),
        }
        Ok(lookup)
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `key` as one URL path segment: unreserved bytes as they are, the rest as `%XX`.
fn encode_segment(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

export_getter!(HttpGetter);

#[cfg(test)]
mod tests {
    //! Natively, under the SDK's fake host. `tests/it/http_sources.rs` runs the same plugin in a
    //! real node against a real origin.

    use geecache_guest_sdk::http::{Method, Response};
    use geecache_guest_sdk::testing::FakeHost;

    use super::*;

    fn host() -> FakeHost {
        FakeHost::new().config("base", "http://origin/users/")
    }

    #[test]
    fn statuses_map_to_lookups() {
        let host = host()
            .http("http://origin/users/Tom", Response::new(200, "630"))
            .http("http://origin/users/Gone", Response::new(410, ""))
            .http("http://origin/users/Busy", Response::new(503, "busy"))
            .http("http://origin/users/Odd", Response::new(418, ""));
        assert_eq!(host.get::<HttpGetter>("g", "Tom"), Ok(Lookup::found("630")));
        assert_eq!(host.get::<HttpGetter>("g", "Gone"), Ok(Lookup::NotFound));
        assert_eq!(
            host.get::<HttpGetter>("g", "Nobody"),
            Err(Error::Unavailable(
                "FakeHost has no answer for GET http://origin/users/Nobody; give one with \
                 FakeHost::http, FakeHost::http_answer or FakeHost::http_origin"
                    .into()
            ))
        );
        assert!(
            matches!(host.get::<HttpGetter>("g", "Busy"), Err(Error::Unavailable(m)) if m.contains("503"))
        );
        assert!(
            matches!(host.get::<HttpGetter>("g", "Odd"), Err(Error::Other(m)) if m.contains("418"))
        );
    }

    #[test]
    fn max_age_sets_the_expiry_and_keys_are_one_segment() {
        let host = host().http_origin(|request| {
            Ok(Response::new(200, request.url.clone()).with_header("cache-control", "max-age=60"))
        });
        let before = now_ms();
        let Ok(Lookup::Found {
            value,
            expires_at_ms: Some(at),
            stale_ms: None,
        }) = host.get::<HttpGetter>("g", "a b/c?d")
        else {
            panic!("expected a found value with an expiry");
        };
        assert_eq!(value, b"http://origin/users/a%20b%2Fc%3Fd");
        assert!(at >= before + 60_000 && at <= now_ms() + 60_000);
        assert_eq!(host.requests()[0].method, Method::Get);
    }

    #[test]
    fn stale_while_revalidate_and_stale_if_error_set_the_stale_window() {
        let host = host().http_origin(|request| {
            Ok(Response::new(200, request.url.clone()).with_header(
                "cache-control",
                "max-age=60, stale-while-revalidate=5, stale-if-error=300",
            ))
        });
        let Ok(Lookup::Found { stale_ms, .. }) = host.get::<HttpGetter>("g", "a") else {
            panic!("expected a found value");
        };
        assert_eq!(stale_ms, Some(300_000), "the larger of the two");
    }

    #[test]
    fn headers_from_config_and_no_base_is_a_clear_error() {
        let host = host()
            .config("header.accept", "application/json")
            .http_origin(|_| Ok(Response::new(404, "")));
        assert_eq!(host.get::<HttpGetter>("g", "x"), Ok(Lookup::NotFound));
        assert_eq!(
            host.requests()[0].headers,
            vec![("accept".to_owned(), "application/json".to_owned())]
        );
        let bare = FakeHost::new();
        assert!(
            matches!(bare.get::<HttpGetter>("g", "x"), Err(Error::Unavailable(m)) if m.contains("base"))
        );
    }

    #[test]
    fn with_a_body_configured_a_key_is_posted_with_it() {
        let host = host()
            .config("body", r#"{"id":"{key}","again":"{key}"}"#)
            .config("header.content-type", "application/json")
            .http_answer(
                Method::Post,
                "http://origin/users/Tom",
                Ok(Response::new(200, "630")),
            );
        assert_eq!(host.get::<HttpGetter>("g", "Tom"), Ok(Lookup::found("630")));
        let sent = host.requests();
        assert_eq!(sent[0].body, br#"{"id":"Tom","again":"Tom"}"#.to_vec());
        assert!(
            sent[0]
                .headers
                .contains(&("content-type".to_owned(), "application/json".to_owned()))
        );
    }
}
