//! The API's hardening, driven through [`router`] with `oneshot` (no socket): batch answers
//! are bounded, query numbers cannot overflow, the token guards what it should, item errors
//! do not leak internals.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use tower::ServiceExt as _;

use axum::http::{HeaderMap, HeaderValue, header};
use bytes::Bytes;

use super::batches::batch_item_json;
use super::*;
use crate::error::Error;
use crate::group::{Getter, Group, Loaded};

/// Answers every key with `size` bytes of `x`; `boom` fails with an internal error whose
/// detail must not reach a client.
#[derive(Debug)]
struct SizedGetter {
    /// Length of every value.
    size: usize,
    /// Calls so far.
    calls: AtomicUsize,
}

impl Getter for SizedGetter {
    fn name(&self) -> &str {
        "sized"
    }

    fn get<'a>(
        &'a self,
        _group: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, crate::error::Result<Loaded>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let size = self.size;
        async move {
            if key == "boom" {
                return Err(Error::Internal("the database password is hunter2".into()));
            }
            Ok(Loaded::Found {
                value: Bytes::from(vec![b'x'; size]),
                expires_at_ms: None,
                stale_ms: None,
            })
        }
        .boxed()
    }
}

/// A single node serving group `g` from a [`SizedGetter`] of `size`-byte values.
fn app(size: usize, options: ApiOptions) -> (Router, Arc<SizedGetter>) {
    let (state, getter) = app_state(size, options);
    (router(state), getter)
}

/// The state of [`app`]'s node.
fn app_state(size: usize, options: ApiOptions) -> (AppState, Arc<SizedGetter>) {
    let getter = Arc::new(SizedGetter {
        size,
        calls: AtomicUsize::new(0),
    });
    let group = Group::builder("g", getter.clone())
        .options(crate::group::GroupOptions {
            cache_bytes: 256 << 20,
            max_value_bytes: 16 << 20,
            ..crate::group::GroupOptions::default()
        })
        .build()
        .unwrap();
    let mut groups = Groups::default();
    groups.insert(group).unwrap();
    let metrics = Metrics::new("n", super::stats::TABLES);
    let cluster = Cluster::new(
        "n",
        "127.0.0.1:1",
        None,
        Duration::from_secs(1),
        metrics.clone(),
    );
    let state = AppState::new(
        groups,
        "g".into(),
        Default::default(),
        options,
        cluster,
        None,
        metrics,
    );
    (state, getter)
}

async fn call<S>(app: &S, request: axum::http::Request<Body>) -> (StatusCode, HeaderMap, Bytes)
where
    S: tower::Service<
            axum::http::Request<Body>,
            Response = Response,
            Error = std::convert::Infallible,
        > + Clone,
{
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, headers, body)
}

fn batch_request(keys: &[&str]) -> axum::http::Request<Body> {
    axum::http::Request::post("/api/v1/groups/g/batch")
        .header("content-type", "application/json")
        .body(Body::from(serde_json::json!({ "keys": keys }).to_string()))
        .unwrap()
}

fn json(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}

/// A batch of more keys than the limit is refused with the limit named, and its decoding stops
/// at the first key past it (a million here: decoding them all is what the bound prevents).
#[tokio::test]
async fn a_batch_of_too_many_keys_is_refused_while_it_is_decoded() {
    let (app, getter) = app(10, ApiOptions::default());
    let (status, _, body) = call(&app, batch_request(&["k"; 1000])).await;
    assert_eq!(status, StatusCode::OK);
    let keys = vec![""; 1_000_000];
    let (status, _, body2) = call(&app, batch_request(&keys)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let text = String::from_utf8_lossy(&body2);
    assert!(text.contains("more than 1000 keys"), "{text}");
    // Where it stopped: at the 1,001st key (column ~3,010 of a 3,000,010-byte body).
    let column: usize = text
        .rsplit("column ")
        .next()
        .and_then(|c| {
            c.trim_end_matches(|ch: char| !ch.is_ascii_digit())
                .parse()
                .ok()
        })
        .unwrap();
    assert!(column < 4_000, "{text}");
    assert!(!body.is_empty());
    assert_eq!(getter.calls.load(Ordering::SeqCst), 1);
}

/// The issue's case, scaled down: one small request naming a large key a thousand times.
#[tokio::test]
async fn a_key_repeated_in_a_batch_is_loaded_and_answered_once() {
    let (app, getter) = app(1 << 20, ApiOptions::default());
    let (status, _, body) = call(&app, batch_request(&["big"; 1000])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.len() < (1 << 20) + 1024, "{} bytes", body.len());
    let results = json(&body)["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["key"], "big");
    assert_eq!(results[0]["value"].as_str().unwrap().len(), 1 << 20);
    assert_eq!(getter.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_batch_answer_stays_within_its_byte_budget() {
    let options = ApiOptions {
        max_batch_bytes: 100_000,
        ..ApiOptions::default()
    };
    let (app, getter) = app(30_000, options);
    let keys: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let (status, _, body) = call(&app, batch_request(&keys)).await;
    assert_eq!(status, StatusCode::OK);
    let results = json(&body)["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 1000, "every key is answered");
    let with_value = results.iter().filter(|r| r.get("value").is_some()).count();
    assert_eq!(with_value, 3, "three 30 KB values fit in 100 KB");
    for r in &results[3..] {
        assert_eq!(r["error"]["code"], "too_large", "{r}");
    }
    // The refusals are small, the values within the budget.
    assert!(body.len() < 100_000 + 1000 * 300, "{} bytes", body.len());
    let calls = getter.calls.load(Ordering::SeqCst);
    assert!(calls < 200, "{calls} of 1000 keys were loaded");
}

/// Values that are not UTF-8 go out as base64, a third larger: the budget counts that.
#[tokio::test]
async fn the_budget_counts_base64_and_json_escaping() {
    let item = batch_item_json("k", Ok(Bytes::from(vec![0xff; 300])));
    assert!(item.len() >= 400, "base64 of 300 bytes is 400 bytes");
    let item = batch_item_json("k", Ok(Bytes::from(vec![0x01; 100])));
    assert!(item.len() >= 600, "each control byte is escaped as \\u0001");
}

/// A batch not labelled as JSON (a form, `text/plain`, nothing) gets our JSON 415 naming the
/// header, not axum's plain text, and loads nothing.
#[tokio::test]
async fn a_batch_not_sent_as_json_is_a_json_415_naming_the_header() {
    let (app, getter) = app(10, ApiOptions::default());
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut request = axum::http::Request::post("/api/v1/groups/g/batch");
        if let Some(t) = content_type {
            request = request.header("content-type", t);
        }
        let request = request.body(Body::from(r#"{"keys":["k"]}"#)).unwrap();
        let (status, _, body) = call(&app, request).await;
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
        let error = &json(&body)["error"];
        assert_eq!(error["code"], "unsupported_media_type");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("Content-Type: application/json"),
            "{error}"
        );
    }
    assert_eq!(getter.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn batch_item_errors_do_not_leak_internals() {
    let (app, _) = app(10, ApiOptions::default());
    let (_, _, body) = call(&app, batch_request(&["boom", "ok"])).await;
    let results = json(&body)["results"].as_array().unwrap().clone();
    assert_eq!(results[0]["error"]["code"], "internal");
    let message = results[0]["error"]["message"].as_str().unwrap();
    assert!(!message.contains("hunter2"), "{message}");
    assert_eq!(results[1]["value"], "x".repeat(10));
}

fn put(path: &str) -> axum::http::Request<Body> {
    axum::http::Request::put(path)
        .body(Body::from("v"))
        .unwrap()
}

#[tokio::test]
async fn a_huge_ttl_is_a_400_not_a_panic() {
    let (app, _) = app(10, ApiOptions::default());
    for ttl in ["18446744073709551615s", "584942417356y", "3651days", "soon"] {
        let (status, _, body) =
            call(&app, put(&format!("/api/v1/groups/g/keys/k?ttl={ttl}"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{ttl}");
        assert_eq!(json(&body)["error"]["code"], "bad_request", "{ttl}");
    }
    let (status, _, _) = call(&app, put("/api/v1/groups/g/keys/k?ttl=3650days")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[test]
fn ttl_expiry_is_checked_arithmetic() {
    assert_eq!(expiry_of_ttl("1s", 1_000).unwrap(), 2_000);
    assert!(
        expiry_of_ttl("10m", u64::MAX).is_err(),
        "overflow is an error"
    );
    assert!(expiry_of_ttl("3651days", 0).is_err());
}

fn with_token(
    request: axum::http::request::Builder,
    token: Option<&str>,
) -> axum::http::request::Builder {
    match token {
        Some(t) => request.header("authorization", format!("Bearer {t}")),
        None => request,
    }
}

#[tokio::test]
async fn the_token_guards_writes_and_reads_only_when_asked() {
    let access = |reads| ApiOptions {
        access: Access {
            token: Some(ApiToken::new("s3cret").unwrap()),
            reads,
            ..Access::default()
        },
        ..ApiOptions::default()
    };
    let (writes_only, _) = app(10, access(false));
    let key = "/api/v1/groups/g/keys/k";
    for (token, want) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("guess"), StatusCode::UNAUTHORIZED),
        (Some("s3cret"), StatusCode::NO_CONTENT),
    ] {
        for method in ["PUT", "DELETE"] {
            let request = with_token(
                axum::http::Request::builder().method(method).uri(key),
                token,
            )
            .body(Body::from("v"))
            .unwrap();
            let (status, headers, body) = call(&writes_only, request).await;
            assert_eq!(status, want, "{method} {token:?}");
            if want == StatusCode::UNAUTHORIZED {
                assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
                assert_eq!(json(&body)["error"]["code"], "unauthorized");
            }
        }
    }
    let get = |path: &str, token| {
        with_token(axum::http::Request::get(path), token)
            .body(Body::empty())
            .unwrap()
    };
    for path in [key, "/api/v1/stats", "/metrics", "/healthz", "/readyz"] {
        let (status, _, _) = call(&writes_only, get(path, None)).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "reads are open without --api-token-reads: {path}"
        );
    }

    let (guarded, _) = app(10, access(true));
    for path in [
        key,
        "/api/v1/stats",
        "/metrics",
        "/api/v1/cluster",
        "/api?key=k",
    ] {
        let (status, _, _) = call(&guarded, get(path, None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        let (status, _, _) = call(&guarded, get(path, Some("s3cret"))).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let (status, _, _) = call(&guarded, batch_request(&["k"])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the batch get is a read");

    // Without a cluster secret the peer routes are no way around the token. (Before, a
    // protobuf PUT to /_geecache/... stored a value with no token at all.)
    for app in [&writes_only, &guarded] {
        for method in ["GET", "PUT", "DELETE", "POST"] {
            let request = axum::http::Request::builder()
                .method(method)
                .uri("/_geecache/g/k")
                .body(Body::empty())
                .unwrap();
            let (status, _, _) = call(app, request).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} on a peer route");
        }
    }
    let (status, _, _) = call(&writes_only, get("/_geecache/g/k", Some("s3cret"))).await;
    assert_ne!(status, StatusCode::UNAUTHORIZED, "the token opens them");
    for path in ["/healthz", "/readyz"] {
        let (status, _, _) = call(&guarded, get(path, None)).await;
        assert_eq!(status, StatusCode::OK, "probes stay open: {path}");
    }
}

proptest::proptest! {
    /// Any `?ttl=` text: an expiry within ten years of now, or a 400; never a panic.
    #[test]
    fn arbitrary_ttls_give_a_bounded_expiry_or_a_bad_request(
        ttl in "[0-9]{0,25}[a-z ]{0,8}|\\PC{0,20}",
        now_ms in proptest::prelude::any::<u64>(),
    ) {
        match expiry_of_ttl(&ttl, now_ms) {
            Ok(at) => proptest::prop_assert!(at - now_ms <= u64::try_from(MAX_TTL.as_millis()).unwrap()),
            Err(e) => proptest::prop_assert_eq!(e.status(), 400),
        }
    }

    /// Any `Accept-Encoding` value: a subset of the codings a value may be stored in.
    #[test]
    fn arbitrary_accept_encodings_are_read_without_panic(value in "[ -~]{0,60}") {
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(header::ACCEPT_ENCODING, v);
        }
        for coding in accepted_codings(&headers) {
            proptest::prop_assert!(["gzip", "zstd"].contains(&coding));
        }
    }
}

/// The classic query and the PUT query, parsed from any query string: a value or a 400 JSON
/// error, never a panic.
#[tokio::test]
async fn arbitrary_query_strings_are_a_value_or_a_json_error() {
    use proptest::strategy::{Strategy as _, ValueTree as _};
    let (app, _) = app(10, ApiOptions::default());
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = "[a-z=&%0-9+;]{0,30}";
    for _ in 0..200 {
        let query = strategy.new_tree(&mut runner).unwrap().current();
        for path in ["/api", "/api/v1/groups/g/keys/k"] {
            let uri = format!("{path}?{query}");
            // `/api` is the classic GET; the key route's query is the PUT's `ttl`.
            let request = if path == "/api" {
                axum::http::Request::get(&uri).body(Body::empty())
            } else {
                axum::http::Request::put(&uri).body(Body::from("v"))
            };
            let Ok(request) = request else {
                continue;
            };
            let (status, _, body) = call(&app, request).await;
            if !status.is_success() {
                assert!(
                    json(&body)["error"]["code"].is_string(),
                    "{uri}: {status} {body:?}"
                );
            }
        }
    }
}

#[test]
fn the_shortcut_takes_plain_bodiless_gets_of_a_key_only() {
    let open = Access::default();
    let get = |uri: &str| axum::http::Request::get(uri).body(Body::empty()).unwrap();
    let taken = |req: &axum::http::Request<Body>| {
        shortcut::plain_get(req, &open).map(|g| (g.group.map(str::to_owned), g.key.to_owned()))
    };
    let pair = |g: Option<&str>, k: &str| Some((g.map(str::to_owned), k.to_owned()));
    assert_eq!(
        taken(&get("/api/v1/groups/g/keys/Tom")),
        pair(Some("g"), "Tom")
    );
    assert_eq!(
        taken(&get("/api/v1/groups/g/keys/Tom?ttl=1")),
        pair(Some("g"), "Tom")
    );
    assert_eq!(taken(&get("/api?key=Tom")), pair(None, "Tom"));
    assert_eq!(taken(&get("/api?group=g&key=Tom")), pair(Some("g"), "Tom"));
    assert_eq!(taken(&get("/api?key=Tom&group=g")), pair(Some("g"), "Tom"));
    for uri in [
        "/api",
        "/api?",
        "/api?key=",
        "/api?key",
        "/api?key=T%6Fm",
        "/api?key=T+m",
        "/api?key=a&key=b",
        "/api?key=a&group=g&group=h",
        "/api?key=a&ttl=1",
        "/api?group=g",
        "/api?key=a&",
        "/api?key=a=b",
        "/api/?key=a",
        "/api/v1/groups/g/keys/T%6Fm",
        "/api/v1/groups/g/keys/a/b",
        "/api/v1/groups/g/keys/",
        "/api/v1/groups//keys/k",
        "/api/v1/groups/g%2F/keys/k",
        "/api/v1/groups/g/batch",
        "/api/v1/groups/g/keys",
    ] {
        assert_eq!(taken(&get(uri)), None, "{uri}");
    }
    for method in ["HEAD", "PUT", "DELETE", "POST"] {
        let req = axum::http::Request::builder()
            .method(method)
            .uri("/api/v1/groups/g/keys/k")
            .body(Body::empty())
            .unwrap();
        assert_eq!(taken(&req), None, "{method}");
    }
    for (name, value) in [("content-length", "1"), ("transfer-encoding", "chunked")] {
        let req = axum::http::Request::get("/api/v1/groups/g/keys/k")
            .header(name, value)
            .body(Body::empty())
            .unwrap();
        assert_eq!(taken(&req), None, "{name}");
    }
    // With a token on reads, only a request carrying it is taken.
    let guarded = Access {
        token: Some(ApiToken::new("s3cret").unwrap()),
        reads: true,
        ..Access::default()
    };
    let bare = get("/api/v1/groups/g/keys/k");
    assert_eq!(shortcut::plain_get(&bare, &guarded), None);
    let carrying = with_token(
        axum::http::Request::get("/api/v1/groups/g/keys/k"),
        Some("s3cret"),
    )
    .body(Body::empty())
    .unwrap();
    assert!(shortcut::plain_get(&carrying, &guarded).is_some());
}

/// The shortcut and the router answer every GET of a key alike: values, codings, errors (an
/// unknown group, a key over the limit, a failing getter that must not leak), the token.
#[tokio::test]
async fn the_shortcut_answers_as_the_router_does() {
    for reads in [false, true] {
        let options = ApiOptions {
            access: Access {
                token: Some(ApiToken::new("s3cret").unwrap()),
                reads,
                ..Access::default()
            },
            ..ApiOptions::default()
        };
        let (state, _) = app_state(10, options);
        let routed = router(state.clone());
        let shortcut = Shortcut::new(
            router(state.clone()),
            state,
            crate::api::guard::RequestGuard::new(crate::api::guard::ServerLimits::default()),
        );
        let long = format!("/api/v1/groups/g/keys/{}", "k".repeat(2_000));
        let long_classic = format!("/api?key={}", "k".repeat(2_000));
        for (uri, token, encoding) in [
            ("/api?key=Tom", Some("s3cret"), None),
            ("/api?key=Tom&group=g", None, Some("gzip")),
            ("/api?group=nope&key=Tom", Some("s3cret"), None),
            ("/api?key=boom", Some("s3cret"), None),
            ("/api?key=T+m", Some("s3cret"), None),
            (long_classic.as_str(), Some("s3cret"), None),
            ("/api/v1/groups/g/keys/Tom", Some("s3cret"), None),
            ("/api/v1/groups/g/keys/Tom", None, None),
            ("/api/v1/groups/g/keys/Tom", Some("guess"), None),
            (
                "/api/v1/groups/g/keys/Tom",
                Some("s3cret"),
                Some("gzip, zstd"),
            ),
            ("/api/v1/groups/nope/keys/Tom", Some("s3cret"), None),
            ("/api/v1/groups/g/keys/boom", Some("s3cret"), None),
            (long.as_str(), Some("s3cret"), None),
        ] {
            let request = || {
                let mut r = with_token(axum::http::Request::get(uri), token);
                if let Some(e) = encoding {
                    r = r.header("accept-encoding", e);
                }
                r.body(Body::empty()).unwrap()
            };
            let (want_status, want_headers, want_body) = call(&routed, request()).await;
            let (status, headers, body) = call(&shortcut, request()).await;
            let what = format!(
                "reads={reads} {} {token:?} {encoding:?}",
                &uri[..uri.len().min(40)]
            );
            assert_eq!(status, want_status, "{what}");
            assert_eq!(body, want_body, "{what}");
            for name in [
                header::CONTENT_TYPE,
                header::CONTENT_ENCODING,
                header::VARY,
                header::WWW_AUTHENTICATE,
            ] {
                assert_eq!(
                    headers.get(&name),
                    want_headers.get(&name),
                    "{what}: {name}"
                );
            }
        }
    }
}

/// A GET the shortcut answered is timed under its route, as the router's timing layer would;
/// the router still answers everything else (here, `/metrics`).
#[tokio::test]
async fn the_shortcut_times_its_requests_under_the_route() {
    let (state, getter) = app_state(10, ApiOptions::default());
    let shortcut = Shortcut::new(
        router(state.clone()),
        state,
        crate::api::guard::RequestGuard::new(crate::api::guard::ServerLimits::default()),
    );
    for uri in [
        "/api/v1/groups/g/keys/k",
        "/api?key=k",
        "/api/v1/groups/g/keys/k",
    ] {
        let request = axum::http::Request::get(uri).body(Body::empty()).unwrap();
        assert_eq!(call(&shortcut, request).await.0, StatusCode::OK);
    }
    assert_eq!(getter.calls.load(Ordering::SeqCst), 1);
    let metrics = axum::http::Request::get("/metrics")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = call(&shortcut, metrics).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body.to_vec()).unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("geecache_http_request_duration_seconds_count{")
                && l.contains(r#"route="/api/v1/groups/{group}/keys/{key}""#)
                && l.contains(r#"method="GET""#)
                && l.contains(r#"status="200""#)
        })
        .unwrap_or_else(|| panic!("no count for the key route:\n{text}"));
    assert!(line.ends_with(" 2"), "{line}");
    let classic = text
        .lines()
        .find(|l| {
            l.starts_with("geecache_http_request_duration_seconds_count{")
                && l.contains(r#"route="/api""#)
        })
        .unwrap_or_else(|| panic!("no count for the classic route:\n{text}"));
    assert!(classic.ends_with(" 1"), "{classic}");
}

/// With `--peer-mtls`, a connection's certificate is checked once per ring: the next request
/// on the same connection after its node left the ring is refused.
#[tokio::test]
async fn a_peer_connection_is_refused_once_its_node_left_the_ring() {
    use crate::discovery::Member;
    let options = ApiOptions {
        require_peer_cert: true,
        ..ApiOptions::default()
    };
    let (state, _) = app_state(10, options);
    let cluster = state.inner.cluster.clone();
    let app = router(state);
    let me = Member::new("n", "127.0.0.1:1");
    let b = Member::new("b", "node-b.example:9000");
    cluster.apply(&[me.clone(), b]);
    let cert = rcgen::generate_simple_self_signed(vec!["node-b.example".to_string()])
        .unwrap()
        .cert;
    // One connection: one identity, its clones in every request's extensions.
    let identity = crate::tls::PeerIdentity::showing(cert.der().clone().into_owned());
    let request = || {
        let mut request = axum::http::Request::get("/_geecache/g/k")
            .body(Body::empty())
            .unwrap();
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(identity.clone()));
        request
    };
    let (status, _, _) = call(&app, request()).await;
    assert_ne!(status, StatusCode::UNAUTHORIZED, "node-b is a member");
    cluster.apply(&[me]);
    let (status, headers, body) = call(&app, request()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body:?}");
    assert_eq!(headers.get(header::RETRY_AFTER).unwrap(), "1");
}
