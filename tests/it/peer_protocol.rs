//! End-to-end tests of the peer protocol: the real [`router`] served over HTTP on 127.0.0.1,
//! called by the real [`PeerClient`] (or by raw HTTP for what a well-behaved client never sends),
//! in front of an in-memory [`PeerService`].

#![allow(clippy::unwrap_used)]

// Moved out of host/src/peer (issue 28): it drives the crate through its public API only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use proptest::prelude::*;
use prost::Message;

use geecache_host::error::Error;
use geecache_host::peer::auth::{
    ANSWER_SIGNATURE_HEADER, CONTENT_SHA256_HEADER, DATE_HEADER, MAX_CLOCK_SKEW,
    MAX_REMEMBERED_NONCES, NONCE_HEADER, ReplayGuard, SIGNATURE_HEADER, new_nonce, unix_now,
};
use geecache_host::peer::*;
use geecache_host::plugin::PluginError;

/// Group for which the service answers `GroupNotFound`.
const NO_SUCH_GROUP: &str = "nope";
/// Key whose load fails with an internal error (whose detail must not leak).
const BOOM: &str = "boom";
/// Key whose load fails like a plugin that cannot run.
const PLUGIN_DOWN: &str = "plugin-down";
/// Key whose load, set and delete take `MemoryService::slow`.
const SLOW: &str = "slow";

/// The seam's simplest implementation: a map behind a mutex, with call counters and a few keys
/// that fail on purpose.
#[derive(Debug, Default)]
struct MemoryService {
    /// Entries by (group, key), exactly as the server handed them over.
    entries: Mutex<HashMap<(String, String), PeerEntry>>,
    /// Every `invalidate` call, in order.
    invalidated: Mutex<Vec<(String, Vec<String>)>>,
    /// Calls of `get`.
    gets: AtomicUsize,
    /// Calls of `set`.
    sets: AtomicUsize,
    /// Calls of `delete`.
    deletes: AtomicUsize,
    /// How long a get, set or delete of [`SLOW`] takes.
    slow: Duration,
}

impl MemoryService {
    fn check_group(group: &str) -> Result<(), Error> {
        if group == NO_SUCH_GROUP {
            return Err(Error::GroupNotFound(group.to_string()));
        }
        Ok(())
    }

    fn insert(&self, group: &str, key: &str, entry: PeerEntry) {
        self.entries
            .lock()
            .unwrap()
            .insert((group.to_string(), key.to_string()), entry);
    }
}

impl Entries for MemoryService {
    fn get<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<PeerEntry>, Error>> {
        async move {
            self.gets.fetch_add(1, Ordering::SeqCst);
            Self::check_group(group)?;
            match key {
                BOOM => Err(Error::Internal("the database password is hunter2".into())),
                PLUGIN_DOWN => Err(PluginError::Unavailable {
                    plugin: "db_getter".into(),
                    message: "shutting down".into(),
                }
                .into()),
                SLOW => {
                    tokio::time::sleep(self.slow).await;
                    Ok(None)
                }
                _ => Ok(self
                    .entries
                    .lock()
                    .unwrap()
                    .get(&(group.to_string(), key.to_string()))
                    .cloned()),
            }
        }
        .boxed()
    }

    fn set<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        entry: PeerEntry,
    ) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            self.sets.fetch_add(1, Ordering::SeqCst);
            Self::check_group(group)?;
            if key == SLOW {
                tokio::time::sleep(self.slow).await;
            }
            self.insert(group, key, entry);
            Ok(())
        }
        .boxed()
    }

    fn delete<'a>(&'a self, group: &'a str, key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            self.deletes.fetch_add(1, Ordering::SeqCst);
            Self::check_group(group)?;
            if key == SLOW {
                tokio::time::sleep(self.slow).await;
            }
            self.entries
                .lock()
                .unwrap()
                .remove(&(group.to_string(), key.to_string()));
            Ok(())
        }
        .boxed()
    }
}

impl PeerService for MemoryService {
    fn invalidate<'a>(
        &'a self,
        group: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            Self::check_group(group)?;
            self.invalidated
                .lock()
                .unwrap()
                .push((group.to_string(), keys.to_vec()));
            Ok(())
        })
    }
}

/// Serves `service` on a fresh 127.0.0.1 port until the test's runtime ends.
async fn serve(
    service: Arc<MemoryService>,
    auth: Option<ClusterSecret>,
    max_body_bytes: usize,
) -> SocketAddr {
    serve_with_limits(
        service,
        auth,
        PeerLimits {
            max_body_bytes,
            ..PeerLimits::default()
        },
    )
    .await
}

/// Serves `service` with these limits on a fresh 127.0.0.1 port until the test's runtime ends.
async fn serve_with_limits(
    service: Arc<MemoryService>,
    auth: Option<ClusterSecret>,
    limits: PeerLimits,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Started a while ago, so requests signed this very second pass at once (see
    // `a_restarted_node_refuses_what_was_signed_before_it_started` for a node just started).
    let auth = auth.map(|s| NodeAuth::with_guard(s, &addr.to_string(), old_guard()));
    let app = router_with_limits(service, auth, limits);
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A replay guard of a node that started `MAX_CLOCK_SKEW` ago.
fn old_guard() -> ReplayGuard {
    ReplayGuard::started_at(unix_now() - MAX_CLOCK_SKEW.as_secs(), MAX_REMEMBERED_NONCES)
}

/// Serves `service` on `listener` with `auth` until `stop` fires; the handle ends when the
/// listener is closed.
fn serve_until(
    listener: tokio::net::TcpListener,
    service: Arc<MemoryService>,
    auth: NodeAuth,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<()> {
    let app = router(service, Some(auth));
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.await;
            })
            .await
            .unwrap();
    })
}

/// A service with a few entries, served without a secret, and a client for it.
async fn setup() -> (Arc<MemoryService>, SocketAddr, PeerClient) {
    let service = Arc::new(MemoryService::default());
    service.insert("g", "Tom", entry(b"630", Some(42)));
    let addr = serve(service.clone(), None, DEFAULT_MAX_BODY_BYTES).await;
    (service, addr, client(addr, None))
}

/// A client with a timeout long enough never to fire in these tests unless meant to.
fn client(addr: SocketAddr, secret: Option<ClusterSecret>) -> PeerClient {
    PeerClient::builder(addr.to_string())
        .timeout(Duration::from_secs(30))
        .secret(secret)
        .build()
        .unwrap()
}

fn entry(value: &[u8], expires_at_ms: Option<u64>) -> PeerEntry {
    PeerEntry {
        value: Bytes::copy_from_slice(value),
        codec: "none".into(),
        expires_at_ms,
    }
}

fn secret(s: &str) -> ClusterSecret {
    ClusterSecret::new(s).unwrap()
}

/// One request as written by hand: status, content type and body of the answer.
async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &Headers,
    body: Vec<u8>,
) -> (u16, String, Bytes) {
    let mut request = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .request(
            method.parse().unwrap(),
            format!("http://{addr}{path}").as_str(),
        )
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, content_type, response.bytes().await.unwrap())
}

/// Request headers as `raw` takes them.
type Headers = [(&'static str, String)];

fn protobuf_header() -> (&'static str, String) {
    ("content-type", CONTENT_TYPE.to_string())
}

/// Asserts an error answer: its status, a protobuf `ErrorInfo` body, and its code.
fn assert_error_info(answer: &(u16, String, Bytes), status: u16, code: &str) -> proto::ErrorInfo {
    assert_eq!(answer.0, status, "{answer:?}");
    assert_eq!(answer.1, CONTENT_TYPE, "{answer:?}");
    let info = proto::ErrorInfo::decode(answer.2.clone()).unwrap();
    assert_eq!(info.code, code, "{info:?}");
    assert!(!info.message.is_empty());
    info
}

fn status_of(e: &PeerError) -> (u16, &str) {
    match e {
        PeerError::Status { status, code, .. } => (*status, code),
        other => panic!("expected an error status, got {other:?}"),
    }
}

#[tokio::test]
async fn get_answers_found_missing_and_service_errors() {
    let (service, _, client) = setup().await;

    assert_eq!(
        client.get("g", "Tom").await.unwrap(),
        Some(entry(b"630", Some(42)))
    );
    assert_eq!(client.get("g", "Nobody").await.unwrap(), None);

    let err = client.get("g", BOOM).await.unwrap_err();
    assert_eq!(status_of(&err), (500, "internal"));
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let err = client.get("g", PLUGIN_DOWN).await.unwrap_err();
    assert_eq!(status_of(&err), (503, "plugin_unavailable"));
    let err = client.get(NO_SUCH_GROUP, "Tom").await.unwrap_err();
    assert_eq!(status_of(&err), (404, "group_not_found"));

    assert_eq!(service.gets.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn set_then_get_then_delete() {
    let (service, _, client) = setup().await;
    let value = PeerEntry {
        value: Bytes::from_static(b"\x00\xffcompressed"),
        codec: "zstd".into(),
        expires_at_ms: Some(1_800_000_000_000),
    };

    client.set("g", "Jack", value.clone()).await.unwrap();
    assert_eq!(service.sets.load(Ordering::SeqCst), 1);
    assert_eq!(client.get("g", "Jack").await.unwrap(), Some(value));

    client.delete("g", "Jack").await.unwrap();
    assert_eq!(service.deletes.load(Ordering::SeqCst), 1);
    assert_eq!(client.get("g", "Jack").await.unwrap(), None);

    let err = client.set(NO_SUCH_GROUP, "k", entry(b"v", None)).await;
    assert_eq!(status_of(&err.unwrap_err()), (404, "group_not_found"));
    let err = client.delete(NO_SUCH_GROUP, "k").await;
    assert_eq!(status_of(&err.unwrap_err()), (404, "group_not_found"));
}

/// A PUT or DELETE is bounded by the write timeout, a GET by the timeout: an owner that takes
/// longer than a get may wait to store a write (its storage tier) still has the write answered.
#[tokio::test]
async fn writes_have_the_write_timeout_and_gets_the_timeout() {
    let service = Arc::new(MemoryService {
        slow: Duration::from_millis(400),
        ..MemoryService::default()
    });
    let addr = serve(service.clone(), None, DEFAULT_MAX_BODY_BYTES).await;
    let timeout = Duration::from_millis(100);
    let writes = PeerClient::builder(addr.to_string())
        .timeout(timeout)
        .write_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    writes.set("g", SLOW, entry(b"v", None)).await.unwrap();
    writes.delete("g", SLOW).await.unwrap();
    let e = writes.get("g", SLOW).await.unwrap_err();
    assert!(
        matches!(e, PeerError::Timeout { timeout: t, .. } if t == timeout),
        "{e:?}"
    );
    // Without a write timeout, a write has the get's.
    let plain = PeerClient::builder(addr.to_string())
        .timeout(timeout)
        .build()
        .unwrap();
    let e = plain.set("g", SLOW, entry(b"v", None)).await.unwrap_err();
    assert!(
        matches!(e, PeerError::Timeout { timeout: t, .. } if t == timeout),
        "{e:?}"
    );
}

#[tokio::test]
async fn answers_over_the_response_limit_are_refused_unread() {
    let (service, addr, _) = setup().await;
    service.insert("g", "big", entry(&[7u8; 64 << 10], None));
    let small = PeerClient::builder(addr.to_string())
        .max_response_bytes(16 << 10)
        .build()
        .unwrap();
    let err = small.get("g", "big").await.unwrap_err();
    assert!(err.to_string().contains("larger than 16384 bytes"), "{err}");
    // Small answers still pass through the same client.
    assert!(small.get("g", "Tom").await.unwrap().is_some());
}

/// An answer is capped by what was asked: a get's by the value limit (plus framing), not by
/// the client's overall ceiling.
#[tokio::test]
async fn answers_are_capped_by_what_was_asked() {
    let (service, addr, _) = setup().await;
    service.insert("g", "big", entry(&[7u8; 200 << 10], None));
    let limited = PeerClient::builder(addr.to_string())
        .answer_limits(1 << 10, 8 << 10)
        .build()
        .unwrap();
    let err = limited.get("g", "big").await.unwrap_err();
    let cap = (1 << 10) + (64 << 10);
    assert!(
        err.to_string()
            .contains(&format!("larger than {cap} bytes")),
        "{err}"
    );
    // Within what was asked, the same client reads the answer.
    assert!(limited.get("g", "Tom").await.unwrap().is_some());
    let unlimited = PeerClient::builder(addr.to_string()).build().unwrap();
    assert!(unlimited.get("g", "big").await.unwrap().is_some());
}

#[tokio::test]
async fn invalidate_reaches_the_service() {
    let (service, _, client) = setup().await;
    let keys = vec!["a".to_string(), "b/c".to_string(), "😀".to_string()];

    client.invalidate("g", &keys).await.unwrap();

    assert_eq!(
        *service.invalidated.lock().unwrap(),
        vec![("g".to_string(), keys)]
    );
    // Invalidation drops copies; it never loads or deletes anything.
    assert_eq!(service.gets.load(Ordering::SeqCst), 0);
    assert_eq!(service.deletes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn batch_get_answers_each_key_on_its_own() {
    let (service, _, client) = setup().await;
    service.insert("g", "a b", entry(b"spaces", None));
    let keys: Vec<String> = ["Tom", "Nobody", BOOM, "a b", "Tom"]
        .map(String::from)
        .to_vec();

    let items = client.batch_get("g", &keys).await.unwrap();

    let got_keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(got_keys, ["Tom", "Nobody", BOOM, "a b", "Tom"]);
    assert_eq!(items[0].1, Ok(Some(entry(b"630", Some(42)))));
    assert_eq!(items[1].1, Ok(None));
    match &items[2].1 {
        Err(PeerError::ItemFailed { code, message, .. }) => {
            assert_eq!(code, "internal");
            assert!(!message.contains("hunter2"));
        }
        other => panic!("expected a failed item, got {other:?}"),
    }
    assert_eq!(items[3].1, Ok(Some(entry(b"spaces", None))));
    assert_eq!(items[4].1, items[0].1);
    assert_eq!(
        service.gets.load(Ordering::SeqCst),
        4,
        "Tom, asked twice, is loaded once"
    );
}

#[tokio::test]
async fn long_batches_are_split_by_the_client() {
    let (service, _, client) = setup().await;
    let keys: Vec<String> = (0..MAX_BATCH_KEYS + 500).map(|i| format!("k{i}")).collect();

    let items = client.batch_get("g", &keys).await.unwrap();

    assert_eq!(items.len(), keys.len());
    assert!(
        items
            .iter()
            .zip(&keys)
            .all(|((k, r), asked)| k == asked && *r == Ok(None))
    );
    assert_eq!(service.gets.load(Ordering::SeqCst), keys.len());
}

#[tokio::test]
async fn too_many_or_empty_keys_in_one_request_are_400() {
    let (_, addr, _) = setup().await;
    let too_many = proto::BatchGetRequest {
        keys: (0..=MAX_BATCH_KEYS).map(|i| i.to_string()).collect(),
    };
    let empty_key = proto::InvalidateRequest {
        keys: vec!["a".into(), String::new()],
    };
    let headers = [protobuf_header()];

    let answer = raw(
        addr,
        "POST",
        "/_geecache/g/_batch",
        &headers,
        too_many.encode_to_vec(),
    )
    .await;
    assert_error_info(&answer, 400, "bad_request");
    let answer = raw(
        addr,
        "POST",
        "/_geecache/g/_invalidate",
        &headers,
        empty_key.encode_to_vec(),
    )
    .await;
    assert_error_info(&answer, 400, "bad_request");
    // A stopping node's handoff: the same bound on its items, counted before decoding, and
    // an item must carry an entry.
    // A well-formed entry: only the count can make the first body a 400.
    let entry = proto::Entry {
        value: geecache_host::compression::Stored::raw(b"v").framed(),
        codec: "none".into(),
        ..Default::default()
    };
    let handoff = |n: usize, with_entry: bool| proto::HandoffRequest {
        items: (0..n)
            .map(|i| proto::HandoffItem {
                key: i.to_string(),
                entry: with_entry.then(|| entry.clone()),
            })
            .collect(),
    };
    for body in [handoff(MAX_BATCH_KEYS + 1, true), handoff(1, false)] {
        let answer = raw(
            addr,
            "POST",
            "/_geecache/g/_handoff",
            &headers,
            body.encode_to_vec(),
        )
        .await;
        assert_error_info(&answer, 400, "bad_request");
    }
    // The control: a handoff within the bound is taken.
    let answer = raw(
        addr,
        "POST",
        "/_geecache/g/_handoff",
        &headers,
        handoff(MAX_BATCH_KEYS, true).encode_to_vec(),
    )
    .await;
    assert_eq!(answer.0, 200, "{answer:?}");
}

#[tokio::test]
async fn keys_that_look_like_routes_or_dot_segments_round_trip() {
    let (service, _, client) = setup().await;
    let keys = [
        BATCH_SEGMENT,
        INVALIDATE_SEGMENT,
        ".",
        "..",
        "...",
        "~.",
        "~..",
        "%2E",
        "%2e%2E",
        "a/../b",
        "/",
        "?x=1#y",
    ];
    for (i, key) in keys.iter().enumerate() {
        let value = entry(i.to_string().as_bytes(), None);
        client.set(".", key, value.clone()).await.unwrap();
        assert_eq!(client.get(".", key).await.unwrap(), Some(value), "{key:?}");
    }
    let stored = service.entries.lock().unwrap().len();
    assert_eq!(stored, 1 + keys.len());
}

fn key_strategy() -> impl Strategy<Value = String> {
    let special = prop::sample::select(vec![
        '/', '%', '+', ' ', '?', '#', '~', '.', '&', '=', '\\', '😀', 'é', '\0', '\n',
    ]);
    let chars = prop::collection::vec(prop_oneof![2 => any::<char>(), 1 => special], 1..=250);
    prop_oneof![
        9 => chars.prop_map(String::from_iter),
        1 => prop::sample::select(vec![".", "..", "~.", "%2E", "_batch"]).prop_map(String::from),
    ]
}

/// Any UTF-8 key and group reach the service unchanged, and any bytes come back byte for byte.
#[test]
fn any_key_and_value_round_trip() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let service = Arc::new(MemoryService::default());
    let addr = rt.block_on(serve(service.clone(), None, DEFAULT_MAX_BODY_BYTES));
    let client = client(addr, None);

    proptest!(ProptestConfig::with_cases(128), |(
        group in key_strategy(),
        key in key_strategy(),
        value in prop::collection::vec(any::<u8>(), 0..4096),
        expires_at_ms in prop::option::of(any::<u64>()),
    )| {
        let sent = PeerEntry { value: Bytes::from(value), codec: "none".into(), expires_at_ms };
        let (got, batch) = rt.block_on(async {
            client.set(&group, &key, sent.clone()).await.unwrap();
            let got = client.get(&group, &key).await.unwrap();
            let batch = client.batch_get(&group, std::slice::from_ref(&key)).await.unwrap();
            (got, batch)
        });
        let stored = service.entries.lock().unwrap().get(&(group.clone(), key.clone())).cloned();
        prop_assert_eq!(stored.as_ref(), Some(&sent));
        prop_assert_eq!(got.as_ref(), Some(&sent));
        prop_assert_eq!(&batch, &vec![(key.clone(), Ok(Some(sent)))]);
    });
}

/// Random bytes as request bodies: a 400 with an `ErrorInfo` (or, when they happen to be a valid
/// message, an answer), never a panic or a 5xx.
#[test]
fn random_bodies_never_break_the_server() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let service = Arc::new(MemoryService::default());
    let addr = rt.block_on(serve(service, None, DEFAULT_MAX_BODY_BYTES));

    proptest!(ProptestConfig::with_cases(96), |(
        body in prop::collection::vec(any::<u8>(), 0..256),
        route in prop::sample::select(vec![
            ("PUT", "/_geecache/g/k"),
            ("POST", "/_geecache/g/_batch"),
            ("POST", "/_geecache/g/_invalidate"),
        ]),
    )| {
        let (method, path) = route;
        let answer = rt.block_on(raw(addr, method, path, &[protobuf_header()], body));
        prop_assert!([200, 204, 400].contains(&answer.0), "{:?}", answer);
        if answer.0 == 400 {
            assert_error_info(&answer, 400, "bad_request");
        }
    });
}

#[tokio::test]
async fn malformed_messages_and_paths_are_400() {
    let (_, addr, _) = setup().await;
    let pb = [protobuf_header()];
    let json = [("content-type", "application/json".to_string())];
    let not_protobuf = vec![0xff, 0xff, 0xff];
    let no_entry = proto::SetRequest { entry: None }.encode_to_vec();
    let no_codec = proto::SetRequest {
        entry: Some(proto::Entry {
            value: Bytes::from_static(b"v"),
            codec: String::new(),
            expires_at_ms: None,
        }),
    }
    .encode_to_vec();
    let valid_set = proto::SetRequest {
        entry: Some(entry(b"v", None).into()),
    }
    .encode_to_vec();

    let cases: Vec<(&str, &str, &Headers, Vec<u8>)> = vec![
        ("PUT", "/_geecache/g/k", &pb, not_protobuf.clone()),
        ("POST", "/_geecache/g/_batch", &pb, not_protobuf.clone()),
        ("POST", "/_geecache/g/_invalidate", &pb, not_protobuf),
        ("PUT", "/_geecache/g/k", &pb, no_entry),
        ("PUT", "/_geecache/g/k", &pb, no_codec),
        // Wrong or missing content type.
        ("PUT", "/_geecache/g/k", &[], valid_set.clone()),
        ("PUT", "/_geecache/g/k", &json, valid_set),
        // Bad percent-encoding, not UTF-8, empty segments, too many segments.
        ("GET", "/_geecache/g/%zz", &[], vec![]),
        ("GET", "/_geecache/g/a%2", &[], vec![]),
        ("GET", "/_geecache/g/%", &[], vec![]),
        ("GET", "/_geecache/g/%FF%FE", &[], vec![]),
        ("GET", "/_geecache/%C3%28/k", &[], vec![]),
        ("GET", "/_geecache/g/", &[], vec![]),
        ("GET", "/_geecache//k", &[], vec![]),
        ("GET", "/_geecache/g/a/b", &[], vec![]),
        ("DELETE", "/_geecache/g", &[], vec![]),
    ];
    for (method, path, headers, body) in cases {
        let answer = raw(addr, method, path, headers, body).await;
        assert_eq!(answer.0, 400, "{method} {path}: {answer:?}");
        assert_error_info(&answer, 400, "bad_request");
    }
}

#[tokio::test]
async fn other_methods_are_405_with_error_info() {
    let (_, addr, _) = setup().await;
    for (method, path) in [("PATCH", "/_geecache/g/k"), ("POST", "/_geecache/g/k")] {
        let answer = raw(addr, method, path, &[protobuf_header()], vec![]).await;
        assert_error_info(&answer, 405, "method_not_allowed");
    }
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let service = Arc::new(MemoryService::default());
    let addr = serve(service.clone(), None, 1024).await;
    let client = client(addr, None);

    let err = client
        .set("g", "big", entry(&[7; 2048], None))
        .await
        .unwrap_err();
    assert_eq!(status_of(&err), (413, "body_too_large"));

    let answer = raw(
        addr,
        "POST",
        "/_geecache/g/_batch",
        &[protobuf_header()],
        vec![0; 4096],
    )
    .await;
    assert_error_info(&answer, 413, "body_too_large");
    assert_eq!(service.sets.load(Ordering::SeqCst), 0);

    // Just under the limit still works.
    client
        .set("g", "small", entry(&[7; 900], None))
        .await
        .unwrap();
}

#[tokio::test]
async fn signed_requests_pass() {
    let service = Arc::new(MemoryService::default());
    let addr = serve(
        service.clone(),
        Some(secret("s3cret")),
        DEFAULT_MAX_BODY_BYTES,
    )
    .await;
    let client = client(addr, Some(secret("s3cret")));
    let key = "a key/with ~ odd ☃ bits";

    client.set("g", key, entry(b"v", None)).await.unwrap();
    assert_eq!(client.get("g", key).await.unwrap(), Some(entry(b"v", None)));
    let batch = client.batch_get("g", &[key.to_string()]).await.unwrap();
    assert_eq!(batch[0].1, Ok(Some(entry(b"v", None))));
    client.invalidate("g", &[key.to_string()]).await.unwrap();
    client.delete("g", ".").await.unwrap();
    assert_eq!(service.deletes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unsigned_or_wrongly_signed_requests_are_401() {
    let service = Arc::new(MemoryService::default());
    let addr = serve(
        service.clone(),
        Some(secret("s3cret")),
        DEFAULT_MAX_BODY_BYTES,
    )
    .await;

    let unsigned = client(addr, None);
    let err = unsigned.get("g", "k").await.unwrap_err();
    assert!(matches!(err, PeerError::Unauthorized { .. }), "{err:?}");
    let err = unsigned.set("g", "k", entry(b"v", None)).await.unwrap_err();
    assert!(matches!(err, PeerError::Unauthorized { .. }), "{err:?}");
    // A caller with another secret is refused too, and cannot even trust the refusal: its
    // signature is made with a secret the caller does not have.
    let wrong = client(addr, Some(secret("guess")));
    let err = wrong.get("g", "k").await.unwrap_err();
    assert!(matches!(err, PeerError::Unsigned { .. }), "{err:?}");
    let err = wrong.set("g", "k", entry(b"v", None)).await.unwrap_err();
    assert!(matches!(err, PeerError::Unsigned { .. }), "{err:?}");
    let answer = raw(addr, "GET", "/_geecache/g/k", &[], vec![]).await;
    assert_error_info(&answer, 401, "unauthorized");
    assert_eq!(service.gets.load(Ordering::SeqCst), 0);
    assert_eq!(service.sets.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn stale_or_tampered_requests_are_401() {
    let s = secret("s3cret");
    let service = Arc::new(MemoryService::default());
    let addr = serve(service.clone(), Some(s.clone()), DEFAULT_MAX_BODY_BYTES).await;
    let path = "/_geecache/g/k";
    let body = proto::SetRequest {
        entry: Some(entry(b"honest", None).into()),
    }
    .encode_to_vec();
    let authority = addr.to_string();
    let signed = |date: u64, body: &[u8]| {
        let nonce = new_nonce();
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body));
        let signature = s.sign("PUT", &authority, path, date, &nonce, &hash);
        vec![
            protobuf_header(),
            (DATE_HEADER, date.to_string()),
            (NONCE_HEADER, nonce.clone()),
            (CONTENT_SHA256_HEADER, hash.clone()),
            (SIGNATURE_HEADER, signature),
        ]
    };
    let now = unix_now();

    // The hand-signed request is accepted as it is...
    let answer = raw(addr, "PUT", path, &signed(now, &body), body.clone()).await;
    assert_eq!(answer.0, 204, "{answer:?}");

    // ...but not too old, not from too far in the future, and not with another body.
    for date in [now - 31, now + 31] {
        let answer = raw(addr, "PUT", path, &signed(date, &body), body.clone()).await;
        let info = assert_error_info(&answer, 401, "unauthorized");
        assert!(info.message.contains("clock"), "{info:?}");
    }
    let tampered = proto::SetRequest {
        entry: Some(entry(b"forged", None).into()),
    }
    .encode_to_vec();
    let answer = raw(addr, "PUT", path, &signed(now, &body), tampered).await;
    let info = assert_error_info(&answer, 401, "unauthorized");
    assert!(info.message.contains("body"), "{info:?}");
    // Nor for another path or method.
    let answer = raw(
        addr,
        "PUT",
        "/_geecache/g/other",
        &signed(now, &body),
        body.clone(),
    )
    .await;
    assert_error_info(&answer, 401, "unauthorized");

    assert_eq!(service.sets.load(Ordering::SeqCst), 1);
    let stored = service.entries.lock().unwrap().clone();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored.get(&("g".into(), "k".into())),
        Some(&entry(b"honest", None))
    );
}

/// A refusal is signed only when the request's signature matched: an unsigned or badly signed
/// request carrying a nonce of its sender's choosing gets an unsigned 401 (an honest node must
/// not vouch for it), while a peer that knows the secret but whose clock is off gets its
/// refusal signed, with the reason.
#[tokio::test]
async fn a_refusal_is_signed_only_when_the_requests_signature_matched() {
    let s = secret("s3cret");
    let service = Arc::new(MemoryService::default());
    let addr = serve(service.clone(), Some(s.clone()), DEFAULT_MAX_BODY_BYTES).await;
    let path = "/_geecache/g/k";
    let authority = addr.to_string();
    let send = |headers: Vec<(&'static str, String)>| async move {
        let mut request = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://{addr}{path}"));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let signature = response
            .headers()
            .get(ANSWER_SIGNATURE_HEADER)
            .map(|v| v.to_str().unwrap().to_owned());
        (status, signature, response.bytes().await.unwrap())
    };
    let empty = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b""));
    let signed_by = |key: &ClusterSecret, date: u64, nonce: &str| {
        vec![
            (DATE_HEADER, date.to_string()),
            (NONCE_HEADER, nonce.to_owned()),
            (CONTENT_SHA256_HEADER, empty.clone()),
            (
                SIGNATURE_HEADER,
                key.sign("GET", &authority, path, date, nonce, &empty),
            ),
        ]
    };
    let chosen = "0123456789abcdef0123456789abcdef";

    // Unsigned, with the sender's nonce: refused, and the refusal is not signed.
    let (status, signature, _) = send(vec![(NONCE_HEADER, chosen.to_owned())]).await;
    assert_eq!((status, signature), (401, None));
    // Signed with another secret, dated now or out of the window: the same (the date is
    // checked only once the signature matched).
    for date in [unix_now(), unix_now() - 40] {
        let (status, signature, _) = send(signed_by(&secret("guess"), date, chosen)).await;
        assert_eq!((status, signature), (401, None));
    }

    // A member whose clock is 40 s behind: refused for its date, and told so in a signed
    // answer (its date is checked after its signature).
    let nonce = new_nonce();
    let (status, signature, body) = send(signed_by(&s, unix_now() - 40, &nonce)).await;
    assert_eq!(status, 401);
    assert!(
        s.check_answer(&nonce, 401, &body, signature.as_deref()),
        "the skew refusal is signed"
    );
    let info = proto::ErrorInfo::decode(body).unwrap();
    assert!(info.message.contains("clock"), "{info:?}");
    assert_eq!(service.gets.load(Ordering::SeqCst), 0);
}

/// A captured request sent again, verbatim, is refused: its nonce was seen.
#[tokio::test]
async fn a_replayed_request_is_401_replayed() {
    let s = secret("s3cret");
    let service = Arc::new(MemoryService::default());
    let addr = serve(service.clone(), Some(s.clone()), DEFAULT_MAX_BODY_BYTES).await;
    let path = "/_geecache/g/k";
    let headers: Vec<(&'static str, String)> = s
        .sign_request("DELETE", &addr.to_string(), path, b"")
        .into_iter()
        .collect();

    let answer = raw(addr, "DELETE", path, &headers, vec![]).await;
    assert_eq!(answer.0, 204, "{answer:?}");
    let answer = raw(addr, "DELETE", path, &headers, vec![]).await;
    assert_error_info(&answer, 401, "replayed");
    assert_eq!(service.deletes.load(Ordering::SeqCst), 1);
}

/// A request captured on its way to node A and sent verbatim to node B (same secret) is
/// refused: it names A. With the old signed text, which named no node, B stored it (204).
#[tokio::test]
async fn a_request_signed_for_one_node_is_refused_by_another() {
    let s = secret("s3cret");
    let a_service = Arc::new(MemoryService::default());
    let b_service = Arc::new(MemoryService::default());
    let a = serve(a_service.clone(), Some(s.clone()), DEFAULT_MAX_BODY_BYTES).await;
    let b = serve(b_service.clone(), Some(s.clone()), DEFAULT_MAX_BODY_BYTES).await;
    let path = "/_geecache/g/k";
    let body = proto::SetRequest {
        entry: Some(entry(b"stale", None).into()),
    }
    .encode_to_vec();
    let mut captured: Vec<(&'static str, String)> = s
        .sign_request("PUT", &a.to_string(), path, &body)
        .into_iter()
        .collect();
    captured.push(protobuf_header());
    let answer = raw(a, "PUT", path, &captured, body.clone()).await;
    assert_eq!(answer.0, 204, "{answer:?}");

    // Verbatim, `Host` included.
    captured.push(("host", a.to_string()));
    let answer = raw(b, "PUT", path, &captured, body.clone()).await;
    let info = assert_error_info(&answer, 401, "unauthorized");
    assert!(info.message.contains("signed for another node"), "{info:?}");
    // With B's own `Host`: the signature does not cover it.
    captured.pop();
    let answer = raw(b, "PUT", path, &captured, body).await;
    let info = assert_error_info(&answer, 401, "unauthorized");
    assert!(info.message.contains("signature"), "{info:?}");
    assert_eq!(b_service.sets.load(Ordering::SeqCst), 0);
    assert_eq!(a_service.sets.load(Ordering::SeqCst), 1);
}

/// A node serving `service` on `addr` that a test can restart on the same address: its first
/// run started long ago ([`old_guard`]), every later one now.
struct Restartable {
    service: Arc<MemoryService>,
    addr: SocketAddr,
    secret: ClusterSecret,
    stop: tokio::sync::oneshot::Sender<()>,
    running: tokio::task::JoinHandle<()>,
}

impl Restartable {
    async fn start(secret: &ClusterSecret) -> Restartable {
        let service = Arc::new(MemoryService::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let auth = NodeAuth::with_guard(secret.clone(), &addr.to_string(), old_guard());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let running = serve_until(listener, service.clone(), auth, stopped);
        Restartable {
            service,
            addr,
            secret: secret.clone(),
            stop,
            running,
        }
    }

    /// Stops it and starts a fresh node (a new replay guard) on the same address.
    async fn restart(self) -> Restartable {
        self.stop.send(()).unwrap();
        self.running.await.unwrap();
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        let auth = NodeAuth::new(self.secret.clone(), &self.addr.to_string());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let running = serve_until(listener, self.service.clone(), auth, stopped);
        Restartable {
            stop,
            running,
            ..self
        }
    }
}

/// A node forgets its nonces when it restarts, so it refuses whatever was signed before it
/// started (401 `unauthorized`, `Retry-After: 1`), and the client, told to, signs again and
/// gets through. The old node accepted the replay after its restart (204).
#[tokio::test]
async fn a_restarted_node_refuses_what_was_signed_before_it_started() {
    let s = secret("s3cret");
    let node = Restartable::start(&s).await;
    let (service, addr) = (node.service.clone(), node.addr);
    let authority = addr.to_string();

    let path = "/_geecache/g/k";
    let mut captured: Vec<(&'static str, String)> = s
        .sign_request("DELETE", &authority, path, b"")
        .into_iter()
        .collect();
    let answer = raw(addr, "DELETE", path, &captured, vec![]).await;
    assert_eq!(answer.0, 204, "{answer:?}");

    // Restart: the same address, a fresh node.
    let _node = node.restart().await;

    captured.push(("host", authority.clone()));
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .delete(format!("http://{addr}{path}"))
        .headers(
            captured
                .iter()
                .map(|(n, v)| (n.parse().unwrap(), v.parse().unwrap()))
                .collect(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["retry-after"], "1");
    let info = proto::ErrorInfo::decode(response.bytes().await.unwrap()).unwrap();
    assert_eq!(info.code, "unauthorized");
    assert!(
        info.message
            .contains("signed before this node started; retry"),
        "{info:?}"
    );
    assert_eq!(service.deletes.load(Ordering::SeqCst), 1);

    // The client copes: refused once at most, it signs again a second later.
    client(addr, Some(s)).delete("g", "k").await.unwrap();
    assert_eq!(service.deletes.load(Ordering::SeqCst), 2);
}

/// A request dated ahead of the node's clock is taken only 1 s ahead at most, so one captured
/// before a restart that takes longer than its lead is dated before the new run started, and
/// refused. The old node took a PUT dated 25 s ahead, and its replay after a restart (204: the
/// value rolled back).
#[tokio::test]
async fn a_request_dated_ahead_cannot_be_replayed_after_a_restart() {
    let s = secret("s3cret");
    let node = Restartable::start(&s).await;
    let (service, addr) = (node.service.clone(), node.addr);
    let authority = addr.to_string();
    let path = "/_geecache/g/k";
    let body = proto::SetRequest {
        entry: Some(entry(b"old", None).into()),
    }
    .encode_to_vec();
    let signed = |date: u64| {
        let nonce = new_nonce();
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body));
        let signature = s.sign("PUT", &authority, path, date, &nonce, &hash);
        vec![
            protobuf_header(),
            (DATE_HEADER, date.to_string()),
            (NONCE_HEADER, nonce),
            (CONTENT_SHA256_HEADER, hash),
            (SIGNATURE_HEADER, signature),
        ]
    };
    let far_ahead = raw(addr, "PUT", path, &signed(unix_now() + 25), body.clone()).await;
    let info = assert_error_info(&far_ahead, 401, "unauthorized");
    assert!(info.message.contains("clock"), "{info:?}");
    let captured = signed(unix_now() + 1);
    let answer = raw(addr, "PUT", path, &captured, body.clone()).await;
    assert_eq!(answer.0, 204, "{answer:?}");
    assert_eq!(service.sets.load(Ordering::SeqCst), 1);

    // Restart once the captured date has passed (a node serves again no sooner; see
    // `MAX_CLOCK_SKEW_AHEAD` for a restart quicker than a request's lead): the same address, a
    // fresh node; the captured PUT sent again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let _node = node.restart().await;
    let replayed = raw(addr, "PUT", path, &captured, body.clone()).await;
    let info = assert_error_info(&replayed, 401, "unauthorized");
    assert!(
        info.message.contains("before this node started"),
        "{info:?}"
    );
    assert_eq!(service.sets.load(Ordering::SeqCst), 1);
}

/// The signature is checked before the body is read: an unsigned request with a body over the
/// limit is refused as unauthorized, not read up to the limit and refused as too large.
#[tokio::test]
async fn an_unsigned_request_is_refused_before_its_body_is_read() {
    let service = Arc::new(MemoryService::default());
    let addr = serve(service.clone(), Some(secret("s3cret")), 1024).await;
    let answer = raw(
        addr,
        "PUT",
        "/_geecache/g/k",
        &[protobuf_header()],
        vec![0; 64 * 1024],
    )
    .await;
    assert_error_info(&answer, 401, "unauthorized");
    // Signed with the wrong secret: the same.
    let headers: Vec<(&'static str, String)> = secret("guess")
        .sign_request("PUT", &addr.to_string(), "/_geecache/g/k", &[0; 64 * 1024])
        .into_iter()
        .collect();
    let answer = raw(addr, "PUT", "/_geecache/g/k", &headers, vec![0; 64 * 1024]).await;
    assert_error_info(&answer, 401, "unauthorized");
    assert_eq!(service.sets.load(Ordering::SeqCst), 0);
}

/// Past `--peer-concurrency` requests in flight, the next one is refused at once with 503.
#[tokio::test]
async fn past_the_concurrency_limit_peer_requests_get_503_at_once() {
    let service = Arc::new(MemoryService {
        slow: Duration::from_secs(600),
        ..MemoryService::default()
    });
    let limits = PeerLimits {
        concurrency: 1,
        ..PeerLimits::default()
    };
    let addr = serve_with_limits(service.clone(), None, limits).await;
    let busy = tokio::spawn({
        let client = client(addr, None);
        async move { client.get("g", SLOW).await }
    });
    // Bounded wait until the slow request holds the only permit.
    for _ in 0..500 {
        if service.gets.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(service.gets.load(Ordering::SeqCst), 1);
    let answer = raw(addr, "GET", "/_geecache/g/Tom", &[], vec![]).await;
    assert_error_info(&answer, 503, "overloaded");
    assert_eq!(
        service.gets.load(Ordering::SeqCst),
        1,
        "refused before the service"
    );
    busy.abort();
}

/// One small batch naming a large key many times: loaded and answered once; past the byte
/// budget, keys are refused with `too_large` and not loaded.
#[tokio::test]
async fn a_batch_answers_each_key_once_within_the_byte_budget() {
    let service = Arc::new(MemoryService::default());
    let big = vec![b'x'; 100_000];
    for k in ["a", "b", "c"] {
        service.insert("g", k, entry(&big, None));
    }
    let limits = PeerLimits {
        max_batch_bytes: 250_000,
        ..PeerLimits::default()
    };
    let addr = serve_with_limits(service.clone(), None, limits).await;

    let body = proto::BatchGetRequest {
        keys: vec!["a".to_string(); 1000],
    }
    .encode_to_vec();
    let answer = raw(
        addr,
        "POST",
        "/_geecache/g/_batch",
        &[protobuf_header()],
        body,
    )
    .await;
    assert_eq!(answer.0, 200, "{answer:?}");
    let response = proto::BatchGetResponse::decode(answer.2.clone()).unwrap();
    assert_eq!(response.items.len(), 1);
    assert!(answer.2.len() < 101_000, "{} bytes", answer.2.len());
    assert_eq!(service.gets.load(Ordering::SeqCst), 1);

    // Through the client, duplicates come back at every position they were asked at.
    let keys: Vec<String> = ["a", "b", "a", "c", "Tom"].map(String::from).to_vec();
    let results = client(addr, None).batch_get("g", &keys).await.unwrap();
    let seen: Vec<&str> = results.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(seen, ["a", "b", "a", "c", "Tom"]);
    assert_eq!(results[0].1, Ok(Some(entry(&big, None))));
    assert_eq!(results[2].1, results[0].1);
    assert_eq!(results[1].1, Ok(Some(entry(&big, None))));
    for (key, result) in &results[3..] {
        match result {
            Err(PeerError::ItemFailed { code, .. }) => assert_eq!(code, "too_large", "{key}"),
            other => panic!("{key}: {other:?}"),
        }
    }

    // Many distinct keys: loading stops soon after the budget is spent (what is in flight
    // then, at most the batch concurrency, finishes), the rest are refused unloaded.
    let keys: Vec<String> = (0..500).map(|i| format!("k{i}")).collect();
    for k in &keys {
        service.insert("g", k, entry(&[b'y'; 10_000], None));
    }
    let before = service.gets.load(Ordering::SeqCst);
    let results = client(addr, None).batch_get("g", &keys).await.unwrap();
    let answered = results.iter().filter(|(_, r)| r.is_ok()).count();
    assert!((20..=25).contains(&answered), "{answered}");
    let loads = service.gets.load(Ordering::SeqCst) - before;
    assert!(loads < 100, "{loads} of 500 keys loaded");
}

#[tokio::test]
async fn a_dead_peer_is_unreachable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);

    // The 30 s timeout does not fire: a closed port refuses at once.
    let err = client(addr, None).get("g", "k").await.unwrap_err();
    assert!(matches!(err, PeerError::Unreachable { .. }), "{err:?}");
    assert_eq!(Error::from(err).status(), 502);
}

#[tokio::test]
async fn a_slow_peer_times_out() {
    let service = Arc::new(MemoryService {
        slow: Duration::from_secs(60),
        ..MemoryService::default()
    });
    let addr = serve(service, None, DEFAULT_MAX_BODY_BYTES).await;
    let client = PeerClient::builder(format!("http://{addr}"))
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();

    let err = client.get("g", SLOW).await.unwrap_err();
    assert!(matches!(err, PeerError::Timeout { .. }), "{err:?}");
    let err = Error::from(err);
    assert_eq!((err.status(), err.code()), (504, "peer_timeout"));
}

/// A listener that takes connections, reads each one's request head, and then closes it
/// (`close: true`; the first connection after `first_close_after`) or holds it open without
/// an answer; counts the connections.
async fn unanswering_peer(
    close: bool,
    first_close_after: Duration,
) -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::AsyncReadExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        // Every connection is counted as it is accepted, and served on a task of its own.
        while let Ok((mut conn, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                let _ = conn.read(&mut buf).await;
                // The first connection is always closed: that is the reset the client retries.
                if n == 0 {
                    tokio::time::sleep(first_close_after).await;
                } else if !close {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                drop(conn);
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_connection_closed_before_the_answer_is_tried_once_more() {
    let (addr, accepted) = unanswering_peer(true, Duration::ZERO).await;
    let err = client(addr, None).get("g", "k").await.unwrap_err();
    assert!(matches!(err, PeerError::Unreachable { .. }), "{err:?}");
    // One new connection for the second attempt, and no third.
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_second_attempt_has_what_is_left_of_the_timeout() {
    // The first attempt is reset after 700 ms of the 1 s: a retry with a timeout of its own
    // would end at 1.7 s, one within the first's at 1 s.
    let (addr, accepted) = unanswering_peer(false, Duration::from_millis(700)).await;
    let timeout = Duration::from_secs(1);
    let client = PeerClient::builder(format!("http://{addr}"))
        .timeout(timeout)
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let err = client.get("g", "k").await.unwrap_err();
    assert!(matches!(err, PeerError::Timeout { .. }), "{err:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "the retry had a timeout of its own: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_connect_that_stalls_times_out_at_the_connect_timeout_and_is_not_retried() {
    // A peer that takes the TCP connection and then says nothing: the TLS handshake of an
    // https:// peer never ends.
    let (addr, accepted) = unanswering_peer(false, Duration::from_secs(60)).await;
    let connect_timeout = Duration::from_millis(300);
    let client = PeerClient::builder(format!("https://{addr}"))
        .timeout(Duration::from_secs(10))
        .http_client(http_client(connect_timeout))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let err = client.get("g", "k").await.unwrap_err();
    assert!(
        matches!(err, PeerError::Timeout { timeout, .. } if timeout == connect_timeout),
        "{err:?}"
    );
    assert_eq!(Error::from(err).status(), 504);
    // Neither the request's 10 s nor a second connect.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// A TLS server on 127.0.0.1 with a certificate from a throwaway CA, answering every request
/// with 404; its address and the CA's certificate.
async fn tls_peer() -> (SocketAddr, rustls::pki_types::CertificateDer<'static>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key.into())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0; 4096];
                let _ = tls.read(&mut buf).await;
                let answer = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
                let _ = tls.write_all(answer).await;
                let _ = tls.flush().await;
            });
        }
    });
    (addr, issuer.der().clone())
}

#[tokio::test]
async fn https_peers_are_checked_against_the_platform_roots_or_the_given_ca() {
    let (addr, ca) = tls_peer().await;
    let timeout = Duration::from_secs(5);
    // Without --peer-ca: the system's roots, which do not know the throwaway CA.
    let platform = PeerClient::builder(format!("https://{addr}"))
        .http_client(http_client(timeout))
        .build()
        .unwrap();
    let err = platform.get("g", "k").await.unwrap_err();
    assert!(matches!(err, PeerError::Unreachable { .. }), "{err:?}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    // With the CA (--peer-ca): the handshake passes and the peer's answer comes back.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let trusting = PeerClient::builder(format!("https://{addr}"))
        .http_client(http_client_with_tls(timeout, Some(config)))
        .build()
        .unwrap();
    let err = trusting.get("g", "k").await.unwrap_err();
    assert!(
        matches!(err, PeerError::Status { status: 404, .. }),
        "{err:?}"
    );
}

#[test]
fn peer_addresses_are_checked() {
    for good in [
        "127.0.0.1:9001",
        "http://node-1:9001",
        "http://[::1]:9001/",
        "https://node:9001",
    ] {
        let client = PeerClient::builder(good).build().unwrap();
        assert!(client.base_url().starts_with("http"), "{good}");
        assert!(!client.base_url().ends_with('/'), "{good}");
    }
    for bad in [
        "ftp://node:9001",
        "http://node:9001/prefix",
        "node:notaport",
        "",
    ] {
        let err = PeerClient::builder(bad).build().unwrap_err();
        assert!(
            matches!(err, PeerError::InvalidAddress { .. }),
            "{bad}: {err:?}"
        );
    }
}

/// The node's router serves the peer routes beside the API, each with its own fallbacks: a
/// peer request for an unknown group gets an `ErrorInfo`, an unknown API route gets JSON.
#[tokio::test]
async fn the_api_router_serves_the_peer_routes() {
    let metrics = geecache_host::telemetry::Metrics::new("n", geecache_host::api::stats::TABLES);
    let cluster = geecache_host::cluster::Cluster::new(
        "n",
        "127.0.0.1:1",
        None,
        Duration::from_secs(1),
        metrics.clone(),
    );
    let api = geecache_host::api::AppState::new(
        geecache_host::group::Groups::default(),
        "g".into(),
        Default::default(),
        geecache_host::api::ApiOptions {
            max_body_bytes: 1024,
            ..geecache_host::api::ApiOptions::default()
        },
        cluster,
        None,
        metrics,
    );
    let app = geecache_host::api::router(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let err = client(addr, None).get("nope", "k").await.unwrap_err();
    assert!(
        matches!(err, PeerError::Status { status: 404, .. }),
        "{err:?}"
    );
    let (status, _, _) = raw(addr, "GET", "/healthz", &[], vec![]).await;
    assert_eq!(status, 200);
    let (status, content_type, _) = raw(addr, "GET", "/nowhere", &[], vec![]).await;
    assert_eq!((status, content_type.as_str()), (404, "application/json"));
}
