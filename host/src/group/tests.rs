use super::*;
use crate::cache::ManualClock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A native getter over a fixed map that counts its calls.
#[derive(Debug, Default)]
struct MapGetter {
    calls: AtomicUsize,
    expires_at_ms: Option<u64>,
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
            match key {
                "big" => Ok(Loaded::Found {
                    value: Bytes::from(vec![0u8; 2048]),
                    expires_at_ms: None,
                }),
                "boom" => Err(Error::Internal("source down".into())),
                k if k.contains("missing") => Ok(Loaded::NotFound),
                k => Ok(Loaded::Found {
                    value: Bytes::from(format!("v:{k}")),
                    expires_at_ms: self.expires_at_ms,
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

impl RemotePeer for InProcessPeer {
    fn id(&self) -> &str {
        "owner"
    }
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
        Box::pin(async move { self.owner.remove_as_owner(key) })
    }
    fn invalidate<'a>(&'a self, _g: &'a str, keys: &'a [String]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.invalidations.fetch_add(1, Ordering::SeqCst);
            self.owner.invalidate(keys);
            Ok(())
        })
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
    let clock = Arc::new(ManualClock::new(1_000_000));
    let owner_getter = Arc::new(MapGetter::default());
    let owner = Arc::new(group(
        owner_getter.clone(),
        GroupOptions::default(),
        clock.clone(),
    ));
    let peer = Arc::new(InProcessPeer {
        owner,
        fail: Default::default(),
        invalidations: AtomicUsize::new(0),
    });
    let local_getter = Arc::new(MapGetter::default());
    let local = Group::builder("g", local_getter.clone())
        .clock(clock)
        .peers(Arc::new(PrefixPicker(peer.clone())))
        .build()
        .unwrap();
    (local, local_getter, owner_getter, peer)
}

#[tokio::test]
async fn a_key_owned_elsewhere_is_fetched_from_its_owner_and_kept_hot() {
    let (local, local_getter, owner_getter, _peer) = pair();
    assert_eq!(
        local.get("remote-1").await.unwrap(),
        Bytes::from("v:remote-1")
    );
    assert_eq!(
        local.get("remote-1").await.unwrap(),
        Bytes::from("v:remote-1")
    );
    assert_eq!(owner_getter.calls.load(Ordering::SeqCst), 1);
    assert_eq!(local_getter.calls.load(Ordering::SeqCst), 0);
    let s = local.snapshot();
    assert_eq!(
        (
            s.counters.peer_loads,
            s.counters.hot_hits,
            s.cache_items,
            s.hot_items
        ),
        (1, 1, 0, 1)
    );
    // Keys this node owns still load locally.
    local.get("mine").await.unwrap();
    assert_eq!(local_getter.calls.load(Ordering::SeqCst), 1);
    // "No such key" from the owner is an answer, remembered briefly.
    assert!(matches!(
        local.get("r-missing").await,
        Err(Error::KeyNotFound)
    ));
    assert!(matches!(
        local.get("r-missing").await,
        Err(Error::KeyNotFound)
    ));
    assert_eq!(owner_getter.calls.load(Ordering::SeqCst), 2);
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
