use super::*;
use crate::cache::{CacheEntry, Cached, ManualClock};
use crate::compression::{Encoding, Verify};
use crate::error::Result;
use futures::future::BoxFuture;
use futures::poll;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A native getter over a fixed map that counts its calls.
#[derive(Debug, Default)]
struct MapGetter {
    calls: AtomicUsize,
    /// When set, every load fails (the source is down).
    fail: AtomicBool,
    expires_at_ms: Option<u64>,
    /// The stale window every found value carries (`None`: the group's).
    stale_ms: Option<u32>,
    delay: Option<Duration>,
}

impl Getter for MapGetter {
    fn name(&self) -> &str {
        "map"
    }
    fn get<'a>(&'a self, _group: &'a str, key: &'a str) -> BoxFuture<'a, Result<Loaded>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if let Some(d) = self.delay {
                tokio::time::sleep(d).await;
            }
            if self.fail.load(Ordering::SeqCst) {
                return Err(Error::Internal("source down".into()));
            }
            match key {
                "big" => Ok(Loaded::Found {
                    value: Bytes::from(vec![0u8; 2048]),
                    expires_at_ms: None,
                    stale_ms: None,
                }),
                "boom" => Err(Error::Internal("source down".into())),
                k if k.contains("missing") => Ok(Loaded::NotFound),
                k => Ok(Loaded::Found {
                    value: Bytes::from(format!("v:{k}")),
                    expires_at_ms: self.expires_at_ms,
                    stale_ms: self.stale_ms,
                }),
            }
        })
    }
}

fn group(getter: Arc<MapGetter>, options: GroupOptions, clock: Arc<ManualClock>) -> Group {
    Group::builder("g", getter)
        .options(options)
        .clock(clock)
        .build()
        .unwrap()
}

#[tokio::test]
async fn caches_values_until_the_ttl_and_then_reloads() {
    let getter = Arc::new(MapGetter::default());
    let clock = Arc::new(ManualClock::new(1_000_000));
    let options = GroupOptions {
        ttl: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let g = group(getter.clone(), options, clock.clone());
    assert_eq!(g.get("a").await.unwrap(), Bytes::from("v:a"));
    assert_eq!(g.get("a").await.unwrap(), Bytes::from("v:a"));
    assert_eq!(getter.calls.load(Ordering::SeqCst), 1);
    clock.advance(Duration::from_millis(59_999));
    g.get("a").await.unwrap();
    assert_eq!(
        getter.calls.load(Ordering::SeqCst),
        1,
        "still fresh 1 ms before expiry"
    );
    clock.advance(Duration::from_millis(1));
    g.get("a").await.unwrap();
    assert_eq!(
        getter.calls.load(Ordering::SeqCst),
        2,
        "expired exactly at the TTL"
    );
}

#[tokio::test]
async fn the_getters_own_expiry_wins_over_the_ttl() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let getter = Arc::new(MapGetter {
        expires_at_ms: Some(1_000_500),
        ..Default::default()
    });
    let options = GroupOptions {
        ttl: Some(Duration::from_secs(3600)),
        ..Default::default()
    };
    let g = group(getter.clone(), options, clock.clone());
    g.get("a").await.unwrap();
    clock.advance(Duration::from_millis(500));
    g.get("a").await.unwrap();
    assert_eq!(getter.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn no_such_key_is_remembered_for_the_negative_ttl_only() {
    let getter = Arc::new(MapGetter::default());
    let clock = Arc::new(ManualClock::new(1_000_000));
    let options = GroupOptions {
        negative_ttl: Duration::from_secs(5),
        ..Default::default()
    };
    let g = group(getter.clone(), options, clock.clone());
    for _ in 0..3 {
        assert!(matches!(g.get("missing").await, Err(Error::KeyNotFound)));
    }
    assert_eq!(getter.calls.load(Ordering::SeqCst), 1);
    assert_eq!(g.snapshot().counters.negative_hits, 2);
    clock.advance(Duration::from_secs(5));
    assert!(matches!(g.get("missing").await, Err(Error::KeyNotFound)));
    assert_eq!(getter.calls.load(Ordering::SeqCst), 2);

    let no_negative = GroupOptions {
        negative_ttl: Duration::ZERO,
        ..Default::default()
    };
    let getter = Arc::new(MapGetter::default());
    let g = group(getter.clone(), no_negative, clock);
    let _ = g.get("missing").await;
    let _ = g.get("missing").await;
    assert_eq!(
        getter.calls.load(Ordering::SeqCst),
        2,
        "negative TTL 0 disables it"
    );
}

#[tokio::test]
async fn errors_are_not_cached_and_limits_are_enforced() {
    let getter = Arc::new(MapGetter::default());
    let clock = Arc::new(ManualClock::new(0));
    let options = GroupOptions {
        max_key_bytes: 8,
        max_value_bytes: 1024,
        ..Default::default()
    };
    let g = group(getter.clone(), options, clock);
    assert!(matches!(g.get("boom").await, Err(Error::Internal(_))));
    assert!(matches!(g.get("boom").await, Err(Error::Internal(_))));
    assert_eq!(
        getter.calls.load(Ordering::SeqCst),
        2,
        "failures are retried, not cached"
    );
    assert!(matches!(g.get("").await, Err(Error::BadRequest(_))));
    assert!(matches!(
        g.get("123456789").await,
        Err(Error::KeyTooLarge { len: 9, limit: 8 })
    ));
    assert!(matches!(
        g.get("big").await,
        Err(Error::ValueTooLarge {
            len: 2048,
            limit: 1024
        })
    ));
    let s = g.snapshot();
    assert_eq!((s.counters.getter_errors, s.cache_items), (2, 0));
}

#[tokio::test(start_paused = true)]
async fn a_slow_getter_times_out_with_504() {
    let getter = Arc::new(MapGetter {
        delay: Some(Duration::from_secs(30)),
        ..Default::default()
    });
    let options = GroupOptions {
        load_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let g = group(getter, options, Arc::new(ManualClock::new(0)));
    let err = g.get("slow").await.unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert_eq!(err.status(), 504);
}

#[tokio::test]
async fn the_byte_budget_bounds_the_main_cache() {
    let getter = Arc::new(MapGetter::default());
    let options = GroupOptions {
        cache_bytes: 4096,
        ..Default::default()
    };
    let g = group(getter, options, Arc::new(ManualClock::new(0)));
    for i in 0..200 {
        g.get(&format!("key{i:04}")).await.unwrap();
    }
    let s = g.snapshot();
    assert!(s.cache_bytes <= 4096, "{s:?}");
    assert!(s.cache_items < 200, "{s:?}");
    assert!(s.cache_evictions > 0, "{s:?}");
}

/// The other node, in process: a real `Group` answering as the owner.
#[derive(Debug)]
struct InProcessPeer {
    owner: Arc<Group>,
    fail: std::sync::atomic::AtomicBool,
    invalidations: AtomicUsize,
}

impl Entries for InProcessPeer {
    fn get<'a>(&'a self, _g: &'a str, key: &'a str) -> BoxFuture<'a, Result<Option<PeerEntry>>> {
        Box::pin(async move {
            if self.fail.load(Ordering::SeqCst) {
                return Err(Error::Internal("peer down".into()));
            }
            self.owner.get_as_owner(key).await
        })
    }

    fn set<'a>(&'a self, _g: &'a str, key: &'a str, e: PeerEntry) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.owner.set_as_owner(key, e).await })
    }

    fn delete<'a>(&'a self, _g: &'a str, key: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.owner.remove_as_owner(key).await })
    }
}

impl PeerService for InProcessPeer {
    fn invalidate<'a>(&'a self, _g: &'a str, keys: &'a [String]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.invalidations.fetch_add(1, Ordering::SeqCst);
            self.owner.invalidate(keys);
            Ok(())
        })
    }

    fn peek<'a>(&'a self, _g: &'a str, key: &'a str) -> BoxFuture<'a, Result<Option<PeerEntry>>> {
        Box::pin(async move {
            if self.fail.load(Ordering::SeqCst) {
                return Err(Error::Internal("peer down".into()));
            }
            self.owner.peek_as_owner(key)
        })
    }
}

impl RemotePeer for InProcessPeer {
    fn id(&self) -> &str {
        "owner"
    }
}

/// Sends keys starting with "r" to the remote peer; this node owns the rest.
#[derive(Debug)]
struct PrefixPicker(Arc<InProcessPeer>);

impl PeerPicker for PrefixPicker {
    fn pick(&self, key: &str) -> Option<Arc<dyn RemotePeer>> {
        key.starts_with('r')
            .then(|| self.0.clone() as Arc<dyn RemotePeer>)
    }
    fn others(&self) -> Vec<Arc<dyn RemotePeer>> {
        vec![self.0.clone()]
    }
}

fn pair() -> (Group, Arc<MapGetter>, Arc<MapGetter>, Arc<InProcessPeer>) {
    let owner_getter = Arc::new(MapGetter::default());
    let (local, local_getter, peer) = pair_over(owner_getter.clone());
    (local, local_getter, owner_getter, peer)
}

/// A node and, in process, the owner of keys starting with "r", whose misses `owner_getter`
/// loads.
fn pair_over(owner_getter: Arc<dyn Getter>) -> (Group, Arc<MapGetter>, Arc<InProcessPeer>) {
    let clock = Arc::new(ManualClock::new(1_000_000));
    pair_with(owner_getter, GroupOptions::default(), clock)
}

/// [`pair_over`] with both nodes' `options` and `clock`.
fn pair_with(
    owner_getter: Arc<dyn Getter>,
    options: GroupOptions,
    clock: Arc<ManualClock>,
) -> (Group, Arc<MapGetter>, Arc<InProcessPeer>) {
    let owner = Arc::new(
        Group::builder("g", owner_getter)
            .options(options.clone())
            .clock(clock.clone())
            .build()
            .unwrap(),
    );
    let peer = Arc::new(InProcessPeer {
        owner,
        fail: Default::default(),
        invalidations: AtomicUsize::new(0),
    });
    let local_getter = Arc::new(MapGetter::default());
    let local = Group::builder("g", local_getter.clone())
        .options(options)
        .clock(clock)
        .peers(Arc::new(PrefixPicker(peer.clone())))
        .build()
        .unwrap();
    (local, local_getter, peer)
}

#[tokio::test]
async fn a_key_owned_elsewhere_is_fetched_from_its_owner_and_kept_hot_from_its_second_fetch() {
    let (local, local_getter, owner_getter, _peer) = pair();
    let counts = |g: &Group| {
        let s = g.snapshot();
        (
            s.counters.peer_loads,
            s.counters.hot_hits,
            s.cache_items,
            s.hot_items,
        )
    };
    assert_eq!(
        local.get("remote-1").await.unwrap(),
        Bytes::from("v:remote-1")
    );
    // A key fetched once is not kept (see `Doorkeeper`); the second fetch keeps a copy.
    assert_eq!(counts(&local), (1, 0, 0, 0));
    for _ in 0..2 {
        assert_eq!(
            local.get("remote-1").await.unwrap(),
            Bytes::from("v:remote-1")
        );
    }
    assert_eq!(owner_getter.calls.load(Ordering::SeqCst), 1);
    assert_eq!(local_getter.calls.load(Ordering::SeqCst), 0);
    assert_eq!(counts(&local), (2, 1, 0, 1));
    // Keys this node owns still load locally.
    local.get("mine").await.unwrap();
    assert_eq!(local_getter.calls.load(Ordering::SeqCst), 1);
    // "No such key" from the owner is an answer, remembered briefly.
    for _ in 0..3 {
        assert!(matches!(
            local.get("r-missing").await,
            Err(Error::KeyNotFound)
        ));
    }
    assert_eq!(owner_getter.calls.load(Ordering::SeqCst), 2);
    assert_eq!(local.snapshot().counters.negative_hits, 1);
}

#[tokio::test]
async fn a_failing_owner_does_not_fail_the_request() {
    let (local, local_getter, owner_getter, peer) = pair();
    peer.fail.store(true, Ordering::SeqCst);
    assert_eq!(
        local.get("remote-2").await.unwrap(),
        Bytes::from("v:remote-2")
    );
    assert_eq!(
        local_getter.calls.load(Ordering::SeqCst),
        1,
        "loaded locally instead"
    );
    assert_eq!(owner_getter.calls.load(Ordering::SeqCst), 0);
    assert_eq!(local.snapshot().counters.peer_errors, 1);
}

#[tokio::test]
async fn set_and_remove_go_to_the_owner_which_invalidates_the_others() {
    let (local, _local_getter, owner_getter, peer) = pair();
    local.get("remote-3").await.unwrap();
    local
        .set("remote-3", Bytes::from_static(b"new"), None)
        .await
        .unwrap();
    assert_eq!(
        peer.owner.get("remote-3").await.unwrap(),
        Bytes::from_static(b"new")
    );
    assert_eq!(
        local.get("remote-3").await.unwrap(),
        Bytes::from_static(b"new"),
        "no stale hot copy"
    );
    local.remove("remote-3").await.unwrap();
    assert_eq!(
        local.get("remote-3").await.unwrap(),
        Bytes::from("v:remote-3"),
        "reloaded from the getter"
    );
    assert_eq!(owner_getter.calls.load(Ordering::SeqCst), 2);

    // A set this node owns invalidates the other node's copies.
    local
        .set("mine", Bytes::from_static(b"x"), None)
        .await
        .unwrap();
    tokio::task::yield_now().await;
    for _ in 0..100 {
        if peer.invalidations.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(peer.invalidations.load(Ordering::SeqCst), 1);
    assert_eq!(local.get("mine").await.unwrap(), Bytes::from_static(b"x"));
}

/// A compressible value of about `n` records (JSON-like), as the compression tests load.
fn records(key: &str, n: usize) -> Bytes {
    let mut s = String::from("[");
    for i in 0..n {
        s.push_str(&format!(
            r#"{{"key":"{key}","id":{i},"name":"user-{}","active":true}},"#,
            i % 17
        ));
    }
    s.push(']');
    Bytes::from(s)
}

/// Returns [`records`] for keys starting with "json", and misbehaves for a few others.
#[derive(Debug, Default)]
struct RecordGetter {
    calls: AtomicUsize,
}

impl Getter for RecordGetter {
    fn name(&self) -> &str {
        "records"
    }
    fn get<'a>(&'a self, _group: &'a str, key: &'a str) -> BoxFuture<'a, Result<Loaded>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(Loaded::Found {
                value: records(key, 40),
                expires_at_ms: None,
                stale_ms: None,
            })
        })
    }
}

fn zstd_options() -> GroupOptions {
    GroupOptions {
        compression: "zstd".parse().unwrap(),
        ..Default::default()
    }
}

fn record_group(options: GroupOptions) -> (Group, Arc<RecordGetter>) {
    let getter = Arc::new(RecordGetter::default());
    let g = Group::builder("g", getter.clone())
        .options(options)
        .build()
        .unwrap();
    (g, getter)
}

#[tokio::test]
async fn a_compressible_data_set_holds_more_entries_in_the_same_budget() {
    let budget = 64 << 10;
    let mut held = Vec::new();
    for compression in ["none", "zstd"] {
        let (g, _) = record_group(GroupOptions {
            cache_bytes: budget,
            compression: compression.parse().unwrap(),
            ..Default::default()
        });
        for i in 0..200 {
            let key = format!("json-{i:03}");
            assert_eq!(g.get(&key).await.unwrap(), records(&key, 40));
        }
        let s = g.snapshot();
        assert!(s.cache_bytes <= budget, "{s:?}");
        assert_eq!(s.compression, compression);
        held.push(s.cache_items);
        if compression == "zstd" {
            assert_eq!(s.counters.values_compressed, 200);
            assert!(
                s.counters.encoded_stored_bytes * 4 < s.counters.encoded_raw_bytes,
                "{s:?}"
            );
        }
    }
    assert!(
        held[1] > 2 * held[0],
        "zstd held {} entries, none {}",
        held[1],
        held[0]
    );
}

#[tokio::test]
async fn a_corrupt_cached_value_is_dropped_and_reloaded_not_served() {
    let (g, getter) = record_group(zstd_options());
    let key = "json-a";
    g.get(key).await.unwrap();
    // Flip one payload bit of the stored value, behind the group's back.
    let entry = g.inner.main.get(key).unwrap();
    let Cached::Value(stored) = entry.cached() else {
        panic!("a value")
    };
    assert_eq!(stored.codec().name(), "zstd");
    let mut bytes = stored.framed().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    let bad = g.inner.codecs.stored(Bytes::from(bytes), "zstd").unwrap();
    g.inner
        .main
        .insert(key, CacheEntry::new(Cached::Value(bad), None, 0));
    assert_eq!(g.get(key).await.unwrap(), records(key, 40));
    let s = g.snapshot();
    assert_eq!(s.counters.corrupt_values, 1);
    assert_eq!(getter.calls.load(Ordering::SeqCst), 2, "reloaded");
    // Mis-tagged: zstd bytes claimed to be lz4.
    let entry = g.inner.main.get(key).unwrap();
    let Cached::Value(stored) = entry.cached() else {
        panic!("a value")
    };
    let wrong = g.inner.codecs.stored(stored.framed(), "lz4").unwrap();
    g.inner
        .main
        .insert(key, CacheEntry::new(Cached::Value(wrong), None, 0));
    assert_eq!(g.get(key).await.unwrap(), records(key, 40));
    assert_eq!(g.snapshot().counters.corrupt_values, 2);
    assert_eq!(getter.calls.load(Ordering::SeqCst), 3);
}

/// An owner that answers with whatever entry the test put in it.
#[derive(Debug)]
struct FixedPeer(PeerEntry);

impl Entries for FixedPeer {
    fn get<'a>(&'a self, _g: &'a str, _k: &'a str) -> BoxFuture<'a, Result<Option<PeerEntry>>> {
        Box::pin(async move { Ok(Some(self.0.clone())) })
    }

    fn set<'a>(&'a self, _g: &'a str, _k: &'a str, _e: PeerEntry) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn delete<'a>(&'a self, _g: &'a str, _k: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

impl PeerService for FixedPeer {
    fn invalidate<'a>(&'a self, _g: &'a str, _k: &'a [String]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

impl RemotePeer for FixedPeer {
    fn id(&self) -> &str {
        "fixed"
    }
}

#[derive(Debug)]
struct AlwaysRemote(Arc<FixedPeer>);

impl PeerPicker for AlwaysRemote {
    fn pick(&self, _key: &str) -> Option<Arc<dyn RemotePeer>> {
        Some(self.0.clone())
    }
    fn others(&self) -> Vec<Arc<dyn RemotePeer>> {
        vec![self.0.clone()]
    }
}

#[tokio::test]
async fn a_peer_answer_that_does_not_decode_is_not_served() {
    let value = records("json-p", 40);
    let stored = Encoding::default().encode(&value).await.unwrap();
    for (bytes, codec) in [
        (stored.framed(), "gzip"),                           // mis-tagged
        (stored.framed().slice(..stored.len() - 1), "none"), // truncated
        (stored.framed(), "no-such-codec"),                  // unknown here
        (Bytes::from_static(b"short"), "none"),              // no header
    ] {
        let peer = Arc::new(FixedPeer(PeerEntry {
            value: bytes,
            codec: codec.into(),
            expires_at_ms: None,
        }));
        let getter = Arc::new(RecordGetter::default());
        let g = Group::builder("g", getter.clone())
            .peers(Arc::new(AlwaysRemote(peer)))
            .build()
            .unwrap();
        assert_eq!(g.get("json-p").await.unwrap(), value, "{codec}");
        let s = g.snapshot();
        assert_eq!(
            (s.counters.peer_errors, s.counters.peer_loads),
            (1, 0),
            "{codec}"
        );
        assert_eq!(getter.calls.load(Ordering::SeqCst), 1, "loaded locally");
    }
}

/// Whether `inner` points into `outer`'s bytes (shares its allocation).
fn within(inner: &Bytes, outer: &Bytes) -> bool {
    let range = outer.as_ptr_range();
    range.contains(&inner.as_ptr())
}

#[tokio::test]
async fn values_from_the_network_are_cached_out_of_their_body() {
    // A value as it arrives: a slice of a much larger body (a batch, or a read buffer).
    let stored = Stored::raw(&records("k", 4));
    let mut body = stored.framed().to_vec();
    body.resize(64 << 10, 0);
    let body = Bytes::from(body);
    let entry = PeerEntry {
        value: body.slice(..stored.len()),
        codec: "none".into(),
        expires_at_ms: None,
    };
    // The cached payload itself (a `Bytes` that points into the entry's allocation).
    let held =
        |g: &Group, tier: CacheKind, key: &str| g.inner.cache(tier).get(key).unwrap().payload();

    // A hot copy of an owner's answer.
    let local = Group::builder("g", Arc::new(RecordGetter::default()))
        .peers(Arc::new(AlwaysRemote(Arc::new(FixedPeer(entry.clone())))))
        .build()
        .unwrap();
    for _ in 0..3 {
        assert_eq!(local.get("k").await.unwrap(), records("k", 4));
    }
    let hot = held(&local, CacheKind::Hot, "k");
    assert_eq!(hot, stored.payload());
    assert!(
        !within(&hot, &body),
        "the hot copy keeps the whole body alive"
    );

    // A value a peer sets at its owner.
    let owner = Group::builder("g", Arc::new(RecordGetter::default()))
        .build()
        .unwrap();
    owner.set_as_owner("k", entry).await.unwrap();
    let owned = held(&owner, CacheKind::Main, "k");
    assert_eq!(owned, stored.payload());
    assert!(
        !within(&owned, &body),
        "the owner's value keeps the whole body alive"
    );
}

#[tokio::test]
async fn a_hot_flush_drops_the_hot_copies_and_keeps_the_owned_values() {
    let owner = Arc::new(
        Group::builder("g", Arc::new(RecordGetter::default()))
            .build()
            .unwrap(),
    );
    let peer = Arc::new(InProcessPeer {
        owner: owner.clone(),
        fail: Default::default(),
        invalidations: AtomicUsize::new(0),
    });
    let local = Group::builder("g", Arc::new(RecordGetter::default()))
        .peers(Arc::new(PrefixPicker(peer)))
        .build()
        .unwrap();
    let (remote, own) = ("r-json", "json-own");
    for _ in 0..2 {
        local.get(remote).await.unwrap();
    }
    local.get(own).await.unwrap();
    assert!(
        local.inner.hot.get(remote).is_some(),
        "a hot copy from the second fetch"
    );
    local.flush_hot();
    assert!(
        local.inner.hot.get(remote).is_none(),
        "the hot copy is gone"
    );
    assert!(
        local.inner.main.get(own).is_some(),
        "what this node owns stays"
    );
}

#[tokio::test]
async fn peers_receive_the_stored_bytes_and_keep_them_as_they_are() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let owner = Arc::new(
        Group::builder("g", Arc::new(RecordGetter::default()))
            .options(zstd_options())
            .clock(clock.clone())
            .build()
            .unwrap(),
    );
    let peer = Arc::new(InProcessPeer {
        owner: owner.clone(),
        fail: Default::default(),
        invalidations: AtomicUsize::new(0),
    });
    // The requester does not even compress itself: it keeps what the owner sent.
    let local = Group::builder("g", Arc::new(RecordGetter::default()))
        .clock(clock)
        .peers(Arc::new(PrefixPicker(peer)))
        .build()
        .unwrap();
    let key = "r-json";
    // Fetched twice (a copy is kept from the second fetch on), then read from the copy.
    for _ in 0..3 {
        assert_eq!(local.get(key).await.unwrap(), records(key, 40));
    }
    let held = |g: &Group, tier: CacheKind| match &g.inner.cache(tier).get(key).unwrap().cached() {
        Cached::Value(stored) => stored.clone(),
        Cached::NotFound => panic!("a value"),
    };
    let (at_owner, hot_copy) = (held(&owner, CacheKind::Main), held(&local, CacheKind::Hot));
    assert_eq!(hot_copy.codec().name(), "zstd");
    assert_eq!(hot_copy.framed(), at_owner.framed(), "byte for byte");
    let s = local.snapshot();
    assert_eq!((s.counters.peer_loads, s.counters.hot_hits), (2, 1));
    assert!(s.hot_bytes < len64(records(key, 40).len()), "{s:?}");

    // A set through the requester arrives at the owner encoded by the requester (raw here),
    // is checked there, and reads back intact from both.
    let new = records("other", 30);
    local.set(key, new.clone(), None).await.unwrap();
    assert_eq!(owner.get(key).await.unwrap(), new);
    assert_eq!(local.get(key).await.unwrap(), new);
}

#[tokio::test]
async fn a_set_from_a_peer_that_does_not_decode_is_refused() {
    let (owner, _) = record_group(zstd_options());
    let err = owner
        .set_as_owner(
            "k",
            PeerEntry {
                // A well-formed header, but the payload is not zstd.
                value: Stored::raw(b"hello").framed(),
                codec: "zstd".into(),
                expires_at_ms: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!((err.code(), err.status()), ("corrupt_value", 400), "{err}");
    let err = owner
        .set_as_owner(
            "k",
            PeerEntry {
                value: Stored::raw(b"x").framed(),
                codec: "brotli".into(),
                expires_at_ms: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unknown_codec", "{err}");
    assert_eq!(owner.snapshot().counters.sets, 0);
}

/// A codec whose output is garbage, standing in for a broken compressor plugin (the host
/// checks plugin output because `verify_output` is true).
#[derive(Debug)]
struct GarbageCodec;

impl crate::compression::Compressor for GarbageCodec {
    fn name(&self) -> &str {
        "garbage"
    }
    fn check_level(
        &self,
        _: Option<i32>,
    ) -> std::result::Result<(), crate::compression::CodecError> {
        Ok(())
    }
    fn verify_output(&self) -> bool {
        true
    }
    fn compress<'a>(
        &'a self,
        _data: &'a [u8],
        _level: Option<i32>,
    ) -> BoxFuture<'a, std::result::Result<Vec<u8>, crate::compression::CodecError>> {
        Box::pin(async { Ok(b"garbage".to_vec()) })
    }
    fn decompress<'a>(
        &'a self,
        _data: &'a [u8],
        _max_len: usize,
    ) -> BoxFuture<'a, std::result::Result<Vec<u8>, crate::compression::CodecError>> {
        Box::pin(async { Ok(b"not what went in".to_vec()) })
    }
}

#[tokio::test]
async fn a_codec_that_returns_garbage_fails_the_load_and_caches_nothing() {
    let mut codecs = Codecs::builtin();
    codecs.add(Arc::new(GarbageCodec)).unwrap();
    let g = Group::builder("g", Arc::new(RecordGetter::default()))
        .options(GroupOptions {
            compression: "garbage".parse().unwrap(),
            ..Default::default()
        })
        .codecs(codecs)
        .build()
        .unwrap();
    let err = g.get("json-g").await.unwrap_err();
    assert_eq!(
        (err.code(), err.status()),
        ("plugin_bad_output", 503),
        "{err}"
    );
    assert_eq!(g.snapshot().cache_items, 0);
    // Small values are kept raw and never reach the codec.
    let err = g.set("small", Bytes::from_static(b"tiny"), None).await;
    assert!(err.is_ok(), "{err:?}");
    assert_eq!(g.get("small").await.unwrap(), Bytes::from_static(b"tiny"));
}

#[test]
fn an_unknown_codec_fails_the_build_with_the_known_names() {
    let err = Group::builder("g", Arc::new(RecordGetter::default()))
        .options(GroupOptions {
            compression: "brotli:5".parse().unwrap(),
            ..Default::default()
        })
        .build()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("known codecs: gzip, lz4, none, snappy, zstd"),
        "{err}"
    );
}

/// A backend's failure whose details are for operators only, as a plugin's `other` error is.
#[derive(Debug, thiserror::Error)]
#[error("plugin memory reported other: disk full at /srv/secret-volume")]
struct DiskFull;

impl crate::error::SeamError for DiskFull {
    fn code(&self) -> &str {
        "plugin_error"
    }
    fn status(&self) -> u16 {
        503
    }
    fn public_message(&self) -> String {
        "plugin memory failed; the details are in the node's log".into()
    }
}

/// A storage tier in memory whose writes can be slowed, held or failed.
#[derive(Debug, Default)]
struct MemoryStorage {
    entries: std::sync::Mutex<BTreeMap<String, PeerEntry>>,
    /// How long each delete takes, to widen the window a racing read could use.
    delete_delay: Option<Duration>,
    /// When set, each put waits for a permit: the test decides when writes land.
    put_gate: Option<tokio::sync::Semaphore>,
    /// Puts that have started (and may be waiting at the gate).
    puts_started: AtomicUsize,
    /// Makes every put fail, as a full disk does.
    fail_puts: AtomicBool,
    /// When set, each get reads the entry at once but answers only once it takes a permit:
    /// the test decides what happens between a read and what the reader does with it.
    get_gate: Option<tokio::sync::Semaphore>,
    /// Gets that have read their entry (and may be waiting at the gate).
    gets_started: AtomicUsize,
    /// Clears asked for.
    clears: AtomicUsize,
    /// Makes every clear fail, as a plugin built without `storage-clear` does.
    cannot_clear: bool,
}

impl MemoryStorage {
    /// A storage whose puts wait until the test adds permits to `put_gate`.
    fn gated() -> Self {
        MemoryStorage {
            put_gate: Some(tokio::sync::Semaphore::new(0)),
            ..Default::default()
        }
    }

    fn release_puts(&self, n: usize) {
        self.put_gate.as_ref().unwrap().add_permits(n);
    }

    fn holds(&self, key: &str) -> bool {
        self.entries.lock().unwrap().contains_key(key)
    }
}

impl Entries for MemoryStorage {
    fn get<'a>(&'a self, _g: &'a str, key: &'a str) -> BoxFuture<'a, Result<Option<PeerEntry>>> {
        Box::pin(async move {
            let entry = self.entries.lock().unwrap().get(key).cloned();
            self.gets_started.fetch_add(1, Ordering::SeqCst);
            if let Some(gate) = &self.get_gate {
                gate.acquire().await.unwrap().forget();
            }
            Ok(entry)
        })
    }

    fn set<'a>(&'a self, _g: &'a str, key: &'a str, e: PeerEntry) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.puts_started.fetch_add(1, Ordering::SeqCst);
            if let Some(gate) = &self.put_gate {
                gate.acquire().await.unwrap().forget();
            }
            assert_ne!(key, "json-panic", "a backend that panics");
            if self.fail_puts.load(Ordering::SeqCst) {
                // As a storage plugin reports it: `other` text is for operators only.
                return Err(Error::Plugin(crate::error::Foreign::new(DiskFull)));
            }
            self.entries.lock().unwrap().insert(key.to_owned(), e);
            Ok(())
        })
    }

    fn delete<'a>(&'a self, _g: &'a str, key: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if let Some(d) = self.delete_delay {
                tokio::time::sleep(d).await;
            }
            self.entries.lock().unwrap().remove(key);
            Ok(())
        })
    }
}

impl Storage for MemoryStorage {
    fn name(&self) -> &str {
        "memory"
    }

    fn clear<'a>(&'a self, _g: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.clears.fetch_add(1, Ordering::SeqCst);
            self.entries.lock().unwrap().clear();
            Ok(())
        })
    }

    fn cannot_clear(&self) -> Option<String> {
        self.cannot_clear
            .then(|| "memory was built without storage-clear".to_owned())
    }
}

impl MemoryStorage {
    /// Waits (bounded) until the background write of `key` has landed, or it is gone.
    async fn wait_for(&self, key: &str, present: bool) {
        for _ in 0..200 {
            if self.entries.lock().unwrap().contains_key(key) == present {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("storage never saw {key:?} present={present}");
    }
}

fn stored_group(storage: Arc<MemoryStorage>) -> (Group, Arc<RecordGetter>) {
    let getter = Arc::new(RecordGetter::default());
    let g = Group::builder("g", getter.clone())
        .options(zstd_options())
        .storage(storage)
        .build()
        .unwrap();
    (g, getter)
}

#[tokio::test]
async fn the_storage_tier_keeps_owned_values_beyond_memory() {
    let storage = Arc::new(MemoryStorage::default());
    let (first, _) = stored_group(storage.clone());
    let key = "json-s";
    first.get(key).await.unwrap();
    storage.wait_for(key, true).await;
    let kept = storage.entries.lock().unwrap()[key].clone();
    assert_eq!(kept.codec, "zstd", "stored with its codec tag");

    // A fresh node (empty memory) over the same storage: served from storage, not the getter.
    let (second, getter) = stored_group(storage.clone());
    assert_eq!(second.get(key).await.unwrap(), records(key, 40));
    assert_eq!(second.get(key).await.unwrap(), records(key, 40));
    let s = second.snapshot();
    assert_eq!((s.counters.storage_hits, s.counters.hits), (1, 1));
    assert_eq!(getter.calls.load(Ordering::SeqCst), 0);

    // A corrupt stored entry is a miss: reloaded from the getter and overwritten.
    let mut bad = kept.clone();
    let mut bytes = bad.value.to_vec();
    bytes[20] ^= 0xff;
    bad.value = Bytes::from(bytes);
    storage.entries.lock().unwrap().insert(key.into(), bad);
    let (third, getter) = stored_group(storage.clone());
    assert_eq!(third.get(key).await.unwrap(), records(key, 40));
    let s = third.snapshot();
    assert_eq!((s.counters.corrupt_values, s.counters.storage_hits), (1, 0));
    assert_eq!(getter.calls.load(Ordering::SeqCst), 1);

    // Remove deletes it from storage too; a miss of a missing entry is counted.
    third.remove(key).await.unwrap();
    storage.wait_for(key, false).await;
    let (fourth, getter) = stored_group(storage);
    fourth.get(key).await.unwrap();
    assert_eq!(fourth.snapshot().counters.storage_misses, 1);
    assert_eq!(getter.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn storage_entries_carry_the_group_ttl_and_expire_there_too() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let storage = Arc::new(MemoryStorage::default());
    let build = |getter: Arc<RecordGetter>| {
        Group::builder("g", getter)
            .options(GroupOptions {
                ttl: Some(Duration::from_secs(60)),
                ..zstd_options()
            })
            .clock(clock.clone())
            .storage(storage.clone())
            .build()
            .unwrap()
    };
    let first = build(Arc::new(RecordGetter::default()));
    first.get("json-t").await.unwrap();
    storage.wait_for("json-t", true).await;
    let kept = storage.entries.lock().unwrap()["json-t"].clone();
    assert_eq!(
        kept.expires_at_ms,
        Some(1_060_000),
        "now + ttl, as in memory"
    );

    clock.advance(Duration::from_secs(60));
    let getter = Arc::new(RecordGetter::default());
    let later = build(getter.clone());
    later.get("json-t").await.unwrap();
    assert_eq!(
        getter.calls.load(Ordering::SeqCst),
        1,
        "the expired copy is not used"
    );
    assert_eq!(later.snapshot().counters.storage_misses, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_right_after_a_remove_never_finds_the_removed_value_in_storage() {
    let storage = Arc::new(MemoryStorage {
        delete_delay: Some(Duration::from_millis(200)),
        ..Default::default()
    });
    let (g, getter) = stored_group(storage.clone());
    let key = "json-r";
    let custom = Bytes::from_static(b"set by a client");
    g.set(key, custom.clone(), None).await.unwrap();
    assert!(storage.holds(key), "a set answers once storage has it");
    // The owner's invalidation deletes in the background (a client's remove would wait).
    g.invalidate(&[key.to_owned()]);
    // The delete is still running: the tier must not be trusted for this key.
    assert_eq!(g.get(key).await.unwrap(), records(key, 40));
    assert_eq!(getter.calls.load(Ordering::SeqCst), 1);
    assert_eq!(g.snapshot().counters.storage_hits, 0);
    // Once the writes settle (the delete, then the reload's put), storage holds the reload.
    assert_eq!(settled_value(&g, &storage, key).await, records(key, 40));
}

/// The value storage holds for `key` once no write to it is pending.
async fn settled_value(g: &Group, storage: &MemoryStorage, key: &str) -> Bytes {
    for _ in 0..400 {
        if !g.inner.storage.as_ref().unwrap().is_pending(key) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let kept = storage.entries.lock().unwrap().get(key).cloned().unwrap();
    let stored = g.inner.codecs.stored(kept.value, &kept.codec).unwrap();
    stored.decode(1 << 20, Verify::All).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_one_key_reach_storage_in_the_order_they_were_made() {
    let storage = Arc::new(MemoryStorage {
        delete_delay: Some(Duration::from_millis(20)),
        ..Default::default()
    });
    let (g, _) = stored_group(storage.clone());
    for round in 0..20 {
        let key = format!("json-o{round}");
        g.set(&key, Bytes::from(format!("v{round}")), None)
            .await
            .unwrap();
        g.remove(&key).await.unwrap();
        g.set(&key, Bytes::from_static(b"last"), None)
            .await
            .unwrap();
    }
    // The slow deletes never overtake the puts around them: every key ends at "last".
    for round in 0..20 {
        let key = format!("json-o{round}");
        let value = settled_value(&g, &storage, &key).await;
        assert_eq!(&value[..], b"last", "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_races_a_set_does_not_overwrite_it() {
    let getter = Arc::new(MapGetter {
        delay: Some(Duration::from_millis(300)),
        ..Default::default()
    });
    let g = Arc::new(Group::builder("g", getter.clone()).build().unwrap());
    let loading = tokio::spawn({
        let g = g.clone();
        async move { g.get("k").await }
    });
    while getter.calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    g.set("k", Bytes::from_static(b"new"), None).await.unwrap();
    // The load started before the set answers its own caller with what it loaded...
    assert_eq!(loading.await.unwrap().unwrap(), Bytes::from("v:k"));
    // ...but does not put that older value back over the set.
    assert_eq!(g.get("k").await.unwrap(), Bytes::from_static(b"new"));
    assert_eq!(getter.calls.load(Ordering::SeqCst), 1);
}

/// lz4 that can be told to fail decoding, as a compressor plugin does when it times out or
/// has no slot: a failure of the codec, not of the value.
#[derive(Debug, Default)]
struct FlakyCodec {
    fail: std::sync::atomic::AtomicBool,
}

impl crate::compression::Compressor for FlakyCodec {
    fn name(&self) -> &str {
        "flaky"
    }
    fn check_level(
        &self,
        _: Option<i32>,
    ) -> std::result::Result<(), crate::compression::CodecError> {
        Ok(())
    }
    fn compress<'a>(
        &'a self,
        data: &'a [u8],
        level: Option<i32>,
    ) -> BoxFuture<'a, std::result::Result<Vec<u8>, crate::compression::CodecError>> {
        crate::compression::builtin::Lz4.compress(data, level)
    }
    fn decompress<'a>(
        &'a self,
        data: &'a [u8],
        max_len: usize,
    ) -> BoxFuture<'a, std::result::Result<Vec<u8>, crate::compression::CodecError>> {
        if self.fail.load(Ordering::SeqCst) {
            return Box::pin(async {
                Err(crate::compression::CodecError::Failed {
                    codec: "flaky".into(),
                    reason: "no slot".into(),
                })
            });
        }
        crate::compression::builtin::Lz4.decompress(data, max_len)
    }
}

#[tokio::test]
async fn a_codec_failure_on_a_hit_fails_the_request_but_keeps_the_value() {
    let codec = Arc::new(FlakyCodec::default());
    let mut codecs = Codecs::builtin();
    codecs.add(codec.clone()).unwrap();
    let getter = Arc::new(RecordGetter::default());
    let g = Group::builder("g", getter.clone())
        .options(GroupOptions {
            compression: "flaky".parse().unwrap(),
            ..Default::default()
        })
        .codecs(codecs)
        .build()
        .unwrap();
    g.get("json-f").await.unwrap();
    codec.fail.store(true, Ordering::SeqCst);
    let err = g.get("json-f").await.unwrap_err();
    assert_eq!(err.code(), "codec_failed", "{err}");
    codec.fail.store(false, Ordering::SeqCst);
    assert_eq!(g.get("json-f").await.unwrap(), records("json-f", 40));
    let s = g.snapshot();
    assert_eq!((s.counters.corrupt_values, s.cache_items), (0, 1));
    assert_eq!(getter.calls.load(Ordering::SeqCst), 1, "never reloaded");
}

#[tokio::test]
async fn a_set_answers_only_once_storage_has_the_value() {
    let storage = Arc::new(MemoryStorage::gated());
    let (g, _) = stored_group(storage.clone());
    let mut set = std::pin::pin!(g.set("json-d", Bytes::from_static(b"durable"), None));
    assert!(
        poll!(set.as_mut()).is_pending(),
        "acknowledged before the storage write landed"
    );
    storage.release_puts(1);
    set.await.unwrap();
    assert!(storage.holds("json-d"));
    assert_eq!(
        g.get("json-d").await.unwrap(),
        Bytes::from_static(b"durable")
    );
}

#[tokio::test]
async fn a_flush_empties_memory_and_the_storage_tier_and_later_writes_stay() {
    let storage = Arc::new(MemoryStorage::default());
    let (g, getter) = stored_group(storage.clone());
    g.get("json-a").await.unwrap();
    storage.wait_for("json-a", true).await;

    g.flush().await.unwrap();
    assert_eq!(storage.clears.load(Ordering::SeqCst), 1);
    assert!(!storage.holds("json-a"), "the tier was cleared");
    // Neither memory nor storage has it: the getter loads it again.
    g.get("json-a").await.unwrap();
    assert_eq!(getter.calls.load(Ordering::SeqCst), 2);
    assert_eq!(g.snapshot().counters.storage_hits, 0);

    // A write after the flush lands after the clear and stays.
    g.set("json-b", Bytes::from_static(b"after"), None)
        .await
        .unwrap();
    assert!(storage.holds("json-b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_queued_before_a_flush_does_not_come_back_after_it() {
    let storage = Arc::new(MemoryStorage::gated());
    let (g, getter) = stored_group(storage.clone());
    let g = Arc::new(g);
    let puts_started = |n: usize| {
        let storage = storage.clone();
        async move {
            for _ in 0..200 {
                if storage.puts_started.load(Ordering::SeqCst) == n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("{n} puts never started");
        }
    };
    // json-x is stored; json-w's write-through is held at the backend.
    storage.release_puts(1);
    g.get("json-x").await.unwrap();
    storage.wait_for("json-x", true).await;
    g.get("json-w").await.unwrap();
    puts_started(2).await;

    let flush = tokio::spawn({
        let g = g.clone();
        async move { g.flush().await }
    });
    // The clear waits behind the held put; meanwhile reads skip the tier for every key.
    let tier = g.inner.storage.as_ref().unwrap();
    for _ in 0..400 {
        if tier.clearing() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(tier.clearing(), "the flush never queued its clear");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !flush.is_finished(),
        "the clear ran before the write queued ahead of it"
    );
    g.get("json-x").await.unwrap();
    assert_eq!(
        g.snapshot().counters.storage_hits,
        0,
        "read a tier being cleared"
    );
    assert_eq!(getter.calls.load(Ordering::SeqCst), 3);

    storage.release_puts(100);
    flush.await.unwrap().unwrap();
    assert_eq!(storage.clears.load(Ordering::SeqCst), 1);
    // json-w's put landed before the clear, so the clear removed it. (json-x's reload wrote
    // through after the flush, behind the clear: it may be back.)
    assert!(
        !storage.holds("json-w"),
        "a write from before the flush survived it"
    );
}

#[tokio::test]
async fn a_backend_that_panics_fails_that_write_and_the_queues_go_on() {
    let storage = Arc::new(MemoryStorage::default());
    let (g, _) = stored_group(storage.clone());
    let err = g
        .set("json-panic", Bytes::from_static(b"boom"), None)
        .await
        .unwrap_err();
    assert_eq!(err.status(), 503, "{err}");
    // Every queue's worker is still there: a clear (which needs all of them) and a write run.
    g.flush().await.unwrap();
    g.set("json-after", Bytes::from_static(b"fine"), None)
        .await
        .unwrap();
    assert!(storage.holds("json-after"));
}

#[tokio::test]
async fn a_flush_says_when_the_storage_tier_cannot_clear_and_still_empties_memory() {
    let storage = Arc::new(MemoryStorage {
        cannot_clear: true,
        ..Default::default()
    });
    let (g, getter) = stored_group(storage.clone());
    g.get("json-c").await.unwrap();
    storage.wait_for("json-c", true).await;
    let err = g.flush().await.unwrap_err();
    assert_eq!((err.code(), err.status()), ("storage_not_cleared", 503));
    assert!(err.to_string().contains("storage-clear"), "{err}");
    assert_eq!(storage.clears.load(Ordering::SeqCst), 0, "not even asked");
    // Memory is gone; the kept entry is what the tier serves.
    g.get("json-c").await.unwrap();
    assert_eq!(g.snapshot().counters.storage_hits, 1);
    assert_eq!(getter.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_set_the_storage_tier_refuses_fails_with_503_and_is_not_served() {
    let storage = Arc::new(MemoryStorage::default());
    storage.fail_puts.store(true, Ordering::SeqCst);
    let (g, getter) = stored_group(storage.clone());
    let err = g
        .set("json-f", Bytes::from_static(b"lost"), None)
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (503, "storage_unavailable"),
        "{err}"
    );
    assert!(
        !err.public_message().contains("secret-volume"),
        "the backend's own words stay in the log: {}",
        err.public_message()
    );
    // Memory does not claim the value storage refused: the key loads from the getter.
    assert_eq!(g.get("json-f").await.unwrap(), records("json-f", 40));
    assert_eq!(getter.calls.load(Ordering::SeqCst), 1);

    // A backend that never answers: the set fails at the load timeout, also with 503.
    let storage = Arc::new(MemoryStorage::gated());
    let (g, _) = stored_group(storage.clone());
    let err = g
        .set("json-h", Bytes::from_static(b"hung"), None)
        .await
        .unwrap_err();
    assert_eq!(err.status(), 503, "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_set_answered_503_for_a_slow_backend_never_lands_later() {
    // The backend is running the put when the set's time runs out: the client hears 503, and
    // when the put then lands it is deleted again, ahead of the key's next write.
    let storage = Arc::new(MemoryStorage::gated());
    let (g, getter) = stored_group(storage.clone());
    let err = g
        .set("json-late", Bytes::from_static(b"late"), None)
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (503, "storage_unavailable"));
    assert!(err.public_message().contains("called off"), "{err}");
    storage.release_puts(1);
    storage.wait_for("json-late", false).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !storage.holds("json-late"),
        "the failed value is in storage"
    );
    assert_eq!(g.snapshot().counters.storage_writes_abandoned, 1);
    // Out of memory too (as before): the key loads from its source, never the failed value.
    g.flush_hot();
    assert_eq!(g.get("json-late").await.unwrap(), records("json-late", 40));
    assert_eq!(getter.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_set_answered_503_while_still_queued_never_runs() {
    // Two keys of one queue: the first put holds the backend, the second waits behind it and
    // times out while queued. It is called off: the backend never sees it.
    let storage = Arc::new(MemoryStorage::gated());
    let (g, _) = stored_group(storage.clone());
    let keys = keys_in_one_queue(2);
    let (first, second) = (keys[0].clone(), keys[1].clone());
    let g = Arc::new(g);
    let held = tokio::spawn({
        let g = g.clone();
        async move { g.set(&first, Bytes::from_static(b"one"), None).await }
    });
    while storage.puts_started.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let err = g
        .set(&second, Bytes::from_static(b"two"), None)
        .await
        .unwrap_err();
    assert_eq!(err.status(), 503, "{err}");
    storage.release_puts(10);
    let _ = held.await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        storage.puts_started.load(Ordering::SeqCst),
        1,
        "the called-off put reached the backend"
    );
    assert!(!storage.holds(&second));
    assert!(g.snapshot().counters.storage_writes_abandoned >= 1);
}

#[tokio::test]
async fn a_set_goes_on_when_its_caller_goes_away() {
    // The caller drops the set while storage holds it: the write still finishes, and a failed
    // one is still taken out of memory.
    let storage = Arc::new(MemoryStorage::gated());
    storage.fail_puts.store(true, Ordering::SeqCst);
    let (g, getter) = stored_group(storage.clone());
    {
        let set = g.set("json-gone", Bytes::from_static(b"gone"), None);
        let _ = tokio::time::timeout(Duration::from_millis(20), set).await;
    }
    for _ in 0..200 {
        if storage.puts_started.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(storage.puts_started.load(Ordering::SeqCst), 1);
    storage.release_puts(1);
    // The write's own task hears the failure and takes the value out of memory again.
    for _ in 0..200 {
        if g.snapshot().counters.storage_errors == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(g.get("json-gone").await.unwrap(), records("json-gone", 40));
    assert_eq!(getter.calls.load(Ordering::SeqCst), 1);
}

/// `n` keys that share one storage queue.
fn keys_in_one_queue(n: usize) -> Vec<String> {
    let queue = |k: &str| xxhash_rust::xxh3::xxh3_64(k.as_bytes()) % tier::SHARDS as u64;
    let first = queue("json-q0");
    (0..)
        .map(|i| format!("json-q{i}"))
        .filter(|k| queue(k) == first)
        .take(n)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn storage_queues_are_bounded_deletes_are_not_dropped_and_shutdown_drains_them() {
    let storage = Arc::new(MemoryStorage::gated());
    let (g, getter) = stored_group(storage.clone());
    let keys = keys_in_one_queue(tier::QUEUE_CAPACITY + 2);
    // The first write-through reaches the backend and is held there...
    g.get(&keys[0]).await.unwrap();
    for _ in 0..100 {
        if storage.puts_started.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(storage.puts_started.load(Ordering::SeqCst), 1);
    // ...so the queue fills, and a load's write-through past its capacity is dropped.
    for key in &keys[1..] {
        g.get(key).await.unwrap();
    }
    assert_eq!(g.snapshot().counters.storage_writes_dropped, 1);

    // A remove cannot be dropped: with no room it fails (503) and changes nothing.
    let err = g.remove(&keys[1]).await.unwrap_err();
    assert_eq!(err.status(), 503, "{err}");
    g.get(&keys[1]).await.unwrap();
    assert_eq!(
        getter.calls.load(Ordering::SeqCst),
        keys.len(),
        "still cached"
    );

    // Shutdown waits for the queue, bounded: first the backend is stuck, then it is not.
    let pending = 1 + tier::QUEUE_CAPACITY;
    let soon = tokio::time::Instant::now() + Duration::from_secs(1);
    let stuck = g.drain_storage(soon).await;
    assert_eq!((stuck.written, stuck.abandoned), (0, pending));
    storage.release_puts(pending);
    let later = tokio::time::Instant::now() + Duration::from_secs(60);
    let drained = g.drain_storage(later).await;
    assert_eq!((drained.written, drained.abandoned), (pending, 0));
    assert_eq!(storage.entries.lock().unwrap().len(), pending);
}

#[tokio::test(start_paused = true)]
async fn storage_queues_are_bounded_by_bytes_background_writes_drop_client_writes_wait() {
    let storage = Arc::new(MemoryStorage::gated());
    let getter = Arc::new(RecordGetter::default());
    let g = Group::builder("g", getter)
        .options(GroupOptions {
            storage_queue_bytes: 3000,
            ..Default::default()
        })
        .storage(storage.clone())
        .build()
        .unwrap();
    // One load's write-through (about 2.2 KB, stored raw) is held at the backend...
    g.get("json-a").await.unwrap();
    // ...so the next one does not fit in the bytes left, though the queues have slots to spare.
    g.get("json-b").await.unwrap();
    assert_eq!(g.snapshot().counters.storage_writes_dropped, 1);
    // A client's write waits for room, and fails with 503 when none comes in time.
    let big = Bytes::from(vec![b'x'; 1000]);
    let err = g.set("json-c", big.clone(), None).await.unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (503, "storage_unavailable"),
        "{err}"
    );
    // Once the backend has finished the first write, its bytes are free again.
    storage.release_puts(2);
    g.set("json-c", big, None).await.unwrap();
    assert!(storage.holds("json-a") && storage.holds("json-c"));
    assert!(!storage.holds("json-b"), "dropped, not queued");
}

#[tokio::test]
async fn a_corrupt_stored_value_is_not_deleted_after_a_set_that_replaced_it() {
    let storage = Arc::new(MemoryStorage {
        get_gate: Some(tokio::sync::Semaphore::new(0)),
        ..Default::default()
    });
    let corrupt = PeerEntry {
        value: Bytes::from_static(b"not zstd at all"),
        codec: "zstd".into(),
        expires_at_ms: None,
    };
    storage
        .entries
        .lock()
        .unwrap()
        .insert("json-k".into(), corrupt);
    let (g, _) = stored_group(storage.clone());
    let g = Arc::new(g);
    // A get reads the corrupt entry from storage...
    let get = tokio::spawn({
        let g = g.clone();
        async move { g.get("json-k").await }
    });
    for _ in 0..1000 {
        if storage.gets_started.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(storage.gets_started.load(Ordering::SeqCst), 1);
    // ...a set replaces it, and is acknowledged once storage has the new value...
    g.set("json-k", Bytes::from_static(b"v2"), None)
        .await
        .unwrap();
    // ...then the get finds the entry it read does not decode: it must not delete v2.
    storage.get_gate.as_ref().unwrap().add_permits(1);
    assert_eq!(get.await.unwrap().unwrap(), records("json-k", 40));
    let soon = tokio::time::Instant::now() + Duration::from_secs(5);
    assert_eq!(g.drain_storage(soon).await.abandoned, 0);
    let kept = storage.entries.lock().unwrap().get("json-k").cloned();
    assert!(
        kept.is_some(),
        "the acknowledged set was deleted from storage"
    );
}

/// A getter that answers `v{version}`, with the version it read when called, only once the
/// test lets it: loads that overlap writes, step by step.
#[derive(Debug)]
struct GatedGetter {
    /// The source's current version; the test bumps it as it changes the source.
    version: AtomicUsize,
    calls: AtomicUsize,
    /// One permit lets one call answer.
    gate: tokio::sync::Semaphore,
}

impl Default for GatedGetter {
    fn default() -> Self {
        GatedGetter {
            version: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
            gate: tokio::sync::Semaphore::new(0),
        }
    }
}

impl GatedGetter {
    /// Waits (bounded) until `n` calls have started.
    async fn wait_for_calls(&self, n: usize) {
        for _ in 0..1000 {
            if self.calls.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the getter was not called {n} times");
    }
}

impl Getter for GatedGetter {
    fn name(&self) -> &str {
        "gated"
    }
    fn get<'a>(&'a self, _group: &'a str, _key: &'a str) -> BoxFuture<'a, Result<Loaded>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let version = self.version.load(Ordering::SeqCst);
            self.gate.acquire().await.unwrap().forget();
            Ok(Loaded::Found {
                value: Bytes::from(format!("v{version}")),
                expires_at_ms: None,
                stale_ms: None,
            })
        })
    }
}

#[tokio::test]
async fn a_read_after_a_remove_does_not_join_a_load_started_before_it() {
    let getter = Arc::new(GatedGetter::default());
    let g = Arc::new(Group::builder("g", getter.clone()).build().unwrap());
    let first = tokio::spawn({
        let g = g.clone();
        async move { g.get("k").await }
    });
    getter.wait_for_calls(1).await;
    // The source changes, then the cache is told: the usual update-then-invalidate.
    getter.version.store(1, Ordering::SeqCst);
    g.remove("k").await.unwrap();
    let mut second = std::pin::pin!(g.get("k"));
    assert!(poll!(second.as_mut()).is_pending());
    getter.gate.add_permits(2);
    assert_eq!(second.await.unwrap(), Bytes::from_static(b"v1"));
    // The older load answers its own caller, and caches nothing.
    assert_eq!(first.await.unwrap().unwrap(), Bytes::from_static(b"v0"));
    assert_eq!(g.get("k").await.unwrap(), Bytes::from_static(b"v1"));
    assert_eq!(getter.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_read_after_a_set_does_not_join_a_load_started_before_it() {
    // The key is owned by the other node; both this node's load and the owner's are in
    // flight when the set happens.
    let owner_getter = Arc::new(GatedGetter::default());
    let (local, _, _peer) = pair_over(owner_getter.clone());
    let local = Arc::new(local);
    let first = tokio::spawn({
        let local = local.clone();
        async move { local.get("rk").await }
    });
    owner_getter.wait_for_calls(1).await;
    local
        .set("rk", Bytes::from_static(b"new"), None)
        .await
        .unwrap();
    let second = local.get("rk");
    owner_getter.gate.add_permits(1);
    assert_eq!(second.await.unwrap(), Bytes::from_static(b"new"));
    assert_eq!(first.await.unwrap().unwrap(), Bytes::from_static(b"v0"));
    assert_eq!(owner_getter.calls.load(Ordering::SeqCst), 1);
}

/// A hit reads each tier once and answers the stored payload or the decoded value, whichever
/// the client's codings allow: each get counts one hit, and only payload answers count as
/// encoded replies.
#[tokio::test]
async fn a_hit_answers_the_payload_or_the_value_and_counts_once() {
    let getter = Arc::new(MapGetter::default());
    let clock = Arc::new(ManualClock::new(1_000_000));
    let g = group(getter.clone(), zstd_options(), clock);
    let value = g.get("big").await.unwrap();
    assert_eq!(value, Bytes::from(vec![0u8; 2048]));
    let reply = g.get_reply("big", &["zstd"]).await.unwrap();
    assert_eq!(reply.content_encoding, Some("zstd"));
    assert!(reply.body.len() < value.len() / 2, "{}", reply.body.len());
    for accepted in [&["gzip"][..], &[]] {
        let reply = g.get_reply("big", accepted).await.unwrap();
        assert_eq!((reply.content_encoding, reply.body), (None, value.clone()));
    }
    // A remembered "no such key" is a negative hit whatever the codings.
    assert!(matches!(g.get("missing").await, Err(Error::KeyNotFound)));
    let again = g.get_reply("missing", &["gzip", "zstd"]).await;
    assert!(matches!(again, Err(Error::KeyNotFound)), "{again:?}");
    let c = g.snapshot().counters;
    assert_eq!(
        (c.gets, c.hits, c.encoded_replies, c.negative_hits, c.misses),
        (6, 4, 1, 1, 2)
    );
    assert_eq!(getter.calls.load(Ordering::SeqCst), 2);
}

/// Waits (bounded) until `getter` was called `n` times, for background refreshes.
async fn calls_reach(getter: &MapGetter, n: usize) {
    for _ in 0..500 {
        if getter.calls.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!(
        "the getter was called {} times, not {n}",
        getter.calls.load(Ordering::SeqCst)
    );
}

/// Waits (bounded) until no refresh of the group is in flight.
async fn refreshes_settle(g: &Group) {
    for _ in 0..500 {
        if g.flights.in_flight() == 0 && g.owner_flights.in_flight() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("a refresh is still in flight");
}

fn stale_options() -> GroupOptions {
    GroupOptions {
        ttl: Some(Duration::from_secs(10)),
        stale: Duration::from_secs(60),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_stale_value_is_answered_at_once_and_refreshed_once_in_the_background() {
    let getter = Arc::new(MapGetter {
        delay: Some(Duration::from_millis(50)),
        ..Default::default()
    });
    let clock = Arc::new(ManualClock::new(1_000_000));
    let g = group(getter.clone(), stale_options(), clock.clone());
    assert_eq!(g.get_reply("a", &[]).await.unwrap().source, Source::Getter);
    assert_eq!(g.get_reply("a", &[]).await.unwrap().source, Source::Main);
    clock.advance(Duration::from_secs(11));
    // Twenty requests while the one refresh runs (the getter takes 50 ms): all answered at
    // once with the stale value, one getter call.
    for _ in 0..20 {
        let reply = g.get_reply("a", &[]).await.unwrap();
        assert_eq!(
            (reply.body, reply.source),
            (Bytes::from("v:a"), Source::Stale)
        );
    }
    calls_reach(&getter, 2).await;
    refreshes_settle(&g).await;
    assert_eq!(getter.calls.load(Ordering::SeqCst), 2);
    let reply = g.get_reply("a", &[]).await.unwrap();
    assert_eq!(reply.source, Source::Main, "the refreshed value is fresh");
    let c = g.snapshot().counters;
    assert_eq!((c.stale_refreshes, c.miss_stale_refresh), (1, 20));
}

/// The owner's own clients and its peers find the key stale at the same moment: one refresh.
#[tokio::test]
async fn an_owner_refreshes_once_for_its_clients_and_its_peers_together() {
    let getter = Arc::new(MapGetter {
        delay: Some(Duration::from_millis(50)),
        ..Default::default()
    });
    let clock = Arc::new(ManualClock::new(1_000_000));
    let g = group(getter.clone(), stale_options(), clock.clone());
    g.get("a").await.unwrap();
    clock.advance(Duration::from_secs(11));
    assert_eq!(g.get_reply("a", &[]).await.unwrap().source, Source::Stale);
    assert!(g.get_as_owner("a").await.unwrap().is_some());
    assert_eq!(g.get_reply("a", &[]).await.unwrap().source, Source::Stale);
    calls_reach(&getter, 2).await;
    refreshes_settle(&g).await;
    assert_eq!(
        getter.calls.load(Ordering::SeqCst),
        2,
        "one load, one refresh"
    );
}

/// An owner's client missing a key and a peer asking it for the same key meanwhile make one
/// load, whichever comes first, found or not.
#[tokio::test]
async fn an_owner_loads_once_for_its_clients_and_its_peers_together() {
    let getter = Arc::new(MapGetter {
        delay: Some(Duration::from_millis(50)),
        ..Default::default()
    });
    let clock = Arc::new(ManualClock::new(1_000_000));
    let g = group(getter.clone(), GroupOptions::default(), clock);
    let (client, peer) = tokio::join!(g.get_reply("a", &[]), g.get_as_owner("a"));
    let client = client.unwrap();
    assert_eq!(client.source, Source::Getter);
    assert_eq!(client.body, g.get("a").await.unwrap());
    assert!(peer.unwrap().is_some());
    assert_eq!(getter.calls.load(Ordering::SeqCst), 1);

    let (peer, client) = tokio::join!(g.get_as_owner("b"), g.get_reply("b", &[]));
    assert!(peer.unwrap().is_some());
    assert_eq!(client.unwrap().source, Source::Getter);
    assert_eq!(getter.calls.load(Ordering::SeqCst), 2);

    let (client, peer) = tokio::join!(g.get("missing"), g.get_as_owner("missing"));
    assert!(matches!(client, Err(Error::KeyNotFound)), "{client:?}");
    assert!(peer.unwrap().is_none());
    assert_eq!(getter.calls.load(Ordering::SeqCst), 3);
}

/// A getter's own stale window wins over the group's, both ways.
#[tokio::test]
async fn a_getter_sets_its_values_stale_window() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let own = Arc::new(MapGetter {
        stale_ms: Some(60_000),
        ..Default::default()
    });
    let no_group_window = GroupOptions {
        stale: Duration::ZERO,
        ..stale_options()
    };
    let g = group(own, no_group_window, clock.clone());
    g.get("a").await.unwrap();
    clock.advance(Duration::from_secs(11));
    assert_eq!(g.get_reply("a", &[]).await.unwrap().source, Source::Stale);
    refreshes_settle(&g).await;

    let none = Arc::new(MapGetter {
        stale_ms: Some(0),
        ..Default::default()
    });
    let g = group(none, stale_options(), clock.clone());
    g.get("a").await.unwrap();
    clock.advance(Duration::from_secs(11));
    assert_eq!(g.get_reply("a", &[]).await.unwrap().source, Source::Getter);
}

#[tokio::test]
async fn without_a_stale_window_an_expired_value_waits_for_its_load() {
    let getter = Arc::new(MapGetter::default());
    let clock = Arc::new(ManualClock::new(1_000_000));
    let options = GroupOptions {
        stale: Duration::ZERO,
        ..stale_options()
    };
    let g = group(getter.clone(), options, clock.clone());
    g.get("a").await.unwrap();
    clock.advance(Duration::from_secs(11));
    assert_eq!(g.get_reply("a", &[]).await.unwrap().source, Source::Getter);
    assert_eq!(g.snapshot().counters.miss_expired, 1);
}

#[tokio::test]
async fn a_failing_source_is_covered_by_the_stale_value_until_its_window_ends() {
    let getter = Arc::new(MapGetter::default());
    let clock = Arc::new(ManualClock::new(1_000_000));
    let g = group(getter.clone(), stale_options(), clock.clone());
    g.get("a").await.unwrap();
    getter.fail.store(true, Ordering::SeqCst);
    for step in 1..=6 {
        clock.advance(Duration::from_secs(11));
        let reply = g.get_reply("a", &[]).await.unwrap();
        assert_eq!(reply.source, Source::Stale, "step {step}");
        refreshes_settle(&g).await;
    }
    // 66 s past the load: expired at 10 s, the stale window ended at 70 s.
    clock.advance(Duration::from_secs(5));
    assert!(
        g.get("a").await.is_err(),
        "past the window the source's error shows"
    );
    let c = g.snapshot().counters;
    assert_eq!(c.refresh_errors, 6, "{c:?}");
    getter.fail.store(false, Ordering::SeqCst);
    assert_eq!(g.get_reply("a", &[]).await.unwrap().source, Source::Getter);
}

#[tokio::test]
async fn a_stale_owner_answers_its_peers_at_once_and_refreshes_once() {
    let owner_getter = Arc::new(MapGetter {
        delay: Some(Duration::from_millis(50)),
        ..Default::default()
    });
    let clock = Arc::new(ManualClock::new(1_000_000));
    let (local, local_getter, peer) =
        pair_with(owner_getter.clone(), stale_options(), clock.clone());
    let owner = peer.owner.clone();
    // Fetched twice, so the non-owner keeps a hot copy.
    for _ in 0..2 {
        assert_eq!(
            local.get_reply("r1", &[]).await.unwrap().source,
            Source::Peer
        );
    }
    assert_eq!(
        local.get_reply("r1", &[]).await.unwrap().source,
        Source::Hot
    );
    clock.advance(Duration::from_secs(11));
    for _ in 0..10 {
        assert_eq!(
            local.get_reply("r1", &[]).await.unwrap().source,
            Source::Stale
        );
    }
    calls_reach(&owner_getter, 2).await;
    refreshes_settle(&owner).await;
    refreshes_settle(&local).await;
    assert_eq!(
        owner_getter.calls.load(Ordering::SeqCst),
        2,
        "one refresh, at the owner"
    );
    assert_eq!(
        local_getter.calls.load(Ordering::SeqCst),
        0,
        "none at the non-owner"
    );
    assert_eq!(local.snapshot().counters.miss_stale_refresh, 10);
}

#[tokio::test]
async fn each_miss_is_counted_once_by_its_reason_and_the_reasons_add_up() {
    let (local, _, _, _) = pair();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let getter = Arc::new(MapGetter::default());
    let options = GroupOptions {
        ttl: Some(Duration::from_secs(10)),
        negative_ttl: Duration::from_secs(5),
        cache_bytes: 64 << 10,
        ..Default::default()
    };
    let g = group(getter, options, clock.clone());
    g.get("a").await.unwrap();
    assert!(g.get("missing").await.is_err());
    clock.advance(Duration::from_secs(11));
    g.get("a").await.unwrap();
    assert!(g.get("missing").await.is_err());
    g.flush().await.unwrap();
    g.get("a").await.unwrap();
    // Room for ~300 entries (64 KiB, ~216 bytes each): 800 keys evict most of the first ones.
    for i in 0..800 {
        g.get(&format!("k{i}")).await.unwrap();
    }
    let before = g.snapshot().counters.miss_evicted;
    for i in 0..800 {
        g.get(&format!("k{i}")).await.unwrap();
    }
    let c = g.snapshot().counters;
    assert_eq!(c.miss_expired, 1, "{c:?}");
    assert_eq!(c.miss_negative_expired, 1, "{c:?}");
    assert_eq!(c.miss_flushed, 1, "{c:?}");
    assert!(c.miss_evicted > before + 100, "{c:?}");
    local.get("r1").await.unwrap();
    local.get("own").await.unwrap();
    let l = local.snapshot().counters;
    assert_eq!((l.miss_not_owner, l.miss_never_seen), (1, 1), "{l:?}");
    for c in [c, l] {
        let reasons: u64 = MissReason::ALL.iter().map(|r| c.misses_by(*r)).sum();
        assert_eq!(reasons, c.misses, "{c:?}");
    }
}

#[tokio::test]
async fn refresh_ahead_fires_only_inside_its_window_and_surely_at_its_end() {
    let getter = Arc::new(MapGetter::default());
    let clock = Arc::new(ManualClock::new(1_000_000));
    let options = GroupOptions {
        refresh_ahead: Duration::from_secs(4),
        ..stale_options()
    };
    let g = group(getter.clone(), options, clock.clone());
    g.get("a").await.unwrap();
    let expiry = Some(1_010_000);
    assert!(!g.inner.refresh_due(expiry), "6 s before the window");
    clock.advance(Duration::from_secs(6));
    assert!(!g.inner.refresh_due(expiry), "at the window's start");
    clock.advance(Duration::from_millis(3_999));
    // 1 ms left of a 4 s window: refreshed unless -ln(u) < 1/500 (p ≈ 0.2%) twenty times.
    assert!((0..20).any(|_| g.inner.refresh_due(expiry)));
    for _ in 0..20 {
        g.get("a").await.unwrap();
    }
    calls_reach(&getter, 2).await;
    refreshes_settle(&g).await;
    assert!(g.snapshot().counters.early_refreshes >= 1);
    clock.advance(Duration::from_millis(2));
    assert_eq!(
        g.get_reply("a", &[]).await.unwrap().source,
        Source::Main,
        "refreshed ahead"
    );
}

/// This node owns every key now; before the ring changed, `previous` owned them.
#[derive(Debug)]
struct NewOwner {
    previous: Arc<InProcessPeer>,
}

impl PeerPicker for NewOwner {
    fn pick(&self, _key: &str) -> Option<Arc<dyn RemotePeer>> {
        None
    }
    fn others(&self) -> Vec<Arc<dyn RemotePeer>> {
        vec![self.previous.clone()]
    }
    fn previous_owners(&self, _key: &str) -> Vec<Arc<dyn RemotePeer>> {
        vec![self.previous.clone()]
    }
}

#[tokio::test]
async fn a_new_owner_takes_a_key_from_its_previous_owners_memory_before_loading_it() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let old_getter = Arc::new(MapGetter::default());
    let (_, _, previous) = pair_with(old_getter.clone(), stale_options(), clock.clone());
    previous.owner.get("held").await.unwrap();
    let getter = Arc::new(MapGetter::default());
    let g = Group::builder("g", getter.clone())
        .options(stale_options())
        .clock(clock.clone())
        .peers(Arc::new(NewOwner {
            previous: previous.clone(),
        }))
        .build()
        .unwrap();
    let reply = g.get_reply("held", &[]).await.unwrap();
    assert_eq!(
        (reply.body, reply.source),
        (Bytes::from("v:held"), Source::Peer)
    );
    assert_eq!(
        g.get_reply("held", &[]).await.unwrap().source,
        Source::Main,
        "kept as owner"
    );
    assert_eq!(
        getter.calls.load(Ordering::SeqCst),
        0,
        "no load at the new owner"
    );
    // Not held there, held but expired, or the previous owner down: loaded as usual.
    assert_eq!(
        g.get_reply("other", &[]).await.unwrap().source,
        Source::Getter
    );
    previous.owner.get("old").await.unwrap();
    clock.advance(Duration::from_secs(11));
    assert_eq!(
        g.get_reply("old", &[]).await.unwrap().source,
        Source::Getter
    );
    previous.fail.store(true, Ordering::SeqCst);
    assert_eq!(
        g.get_reply("gone", &[]).await.unwrap().source,
        Source::Getter
    );
    let c = g.snapshot().counters;
    assert_eq!(
        (c.handoff_hits, c.handoff_misses, c.getter_calls),
        (1, 3, 3),
        "{c:?}"
    );
    assert_eq!(previous.owner.snapshot().counters.peeks_served, 3);
}

/// What a stopping node hands over is kept only when it can be served as it is: not expired,
/// not for a key held already, a key within the limits, a value that decodes. A hostile or
/// broken sender can make the receiver keep nothing else, and never load.
#[tokio::test]
async fn a_handoff_keeps_only_entries_it_can_serve_as_they_are() {
    let getter = Arc::new(MapGetter::default());
    let clock = Arc::new(ManualClock::new(1_000_000));
    let g = group(getter.clone(), GroupOptions::default(), clock.clone());
    g.get("held").await.unwrap();
    let entry = |value: &[u8], expires_at_ms| PeerEntry {
        value: Stored::raw(value).framed(),
        codec: "none".into(),
        expires_at_ms,
    };
    let mut corrupt = Stored::raw(b"bits").framed().to_vec();
    *corrupt.last_mut().unwrap() ^= 1;
    let entries = vec![
        ("fresh".to_string(), entry(b"f", Some(2_000_000))),
        ("expired".to_string(), entry(b"e", Some(1_000_000))),
        ("held".to_string(), entry(b"other", None)),
        ("x".repeat(2000), entry(b"long key", None)),
        (String::new(), entry(b"empty key", None)),
        (
            "corrupt".to_string(),
            PeerEntry {
                value: Bytes::from(corrupt),
                codec: "none".into(),
                expires_at_ms: None,
            },
        ),
        (
            "unknown codec".to_string(),
            PeerEntry {
                value: Stored::raw(b"u").framed(),
                codec: "no-such-codec".into(),
                expires_at_ms: None,
            },
        ),
    ];
    assert_eq!(g.take_handoff(entries).await.unwrap(), 1);
    assert_eq!(g.get("fresh").await.unwrap(), Bytes::from("f"));
    assert_eq!(g.get("held").await.unwrap(), Bytes::from("v:held"));
    assert_eq!(
        getter.calls.load(Ordering::SeqCst),
        1,
        "only the first get of held loaded"
    );
    assert_eq!(g.get("corrupt").await.unwrap(), Bytes::from("v:corrupt"));
    assert_eq!(g.snapshot().counters.handoff_received, 1);
}
