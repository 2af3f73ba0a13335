//! Groups: named cache namespaces, each with its own getter, byte budget and expiry policy.
//!
//! `Group::get` order: main cache → singleflight → getter. A value the getter found is cached
//! until its own expiry (or the group's TTL); "no such key" is cached for the short negative TTL
//! so a missing key cannot hammer the origin. The group talks only to the [`Getter`] trait,
//! never to wasmtime or HTTP, so native and wasm getters are interchangeable.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use serde::Serialize;

use crate::cache::{Cache, CacheEntry, Cached, Clock, SystemClock};
use crate::error::{Error, Result};
use crate::singleflight::Singleflight;

/// What a getter found for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// The key exists.
    Found {
        /// The value's bytes.
        value: Bytes,
        /// Absolute expiry (ms since the Unix epoch) chosen by the source, if any.
        expires_at_ms: Option<u64>,
    },
    /// The key does not exist in the source. Not an error.
    NotFound,
}

/// How a group loads a key it does not hold: the extension point for the source of truth.
pub trait Getter: Send + Sync + fmt::Debug + 'static {
    /// The getter's name, for stats and logs.
    fn name(&self) -> &str;

    /// Loads `key` of `group` from the source.
    ///
    /// # Errors
    /// Any failure of the source or of the getter itself; "no such key" is `Ok(Loaded::NotFound)`.
    fn get<'a>(&'a self, group: &'a str, key: &'a str) -> BoxFuture<'a, Result<Loaded>>;
}

/// Per-group settings; see `geecache-host --help` and the README for defaults.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// Byte budget of the main cache (keys + values + per-entry overhead).
    pub cache_bytes: u64,
    /// Time-to-live of values whose getter gave no expiry; `None` keeps them until evicted.
    pub ttl: Option<Duration>,
    /// How long "no such key" is remembered; zero disables negative caching.
    pub negative_ttl: Duration,
    /// Longest key accepted, in bytes.
    pub max_key_bytes: usize,
    /// Largest value accepted from a getter, in bytes.
    pub max_value_bytes: usize,
    /// Longest a load may take before the request fails with 504.
    pub load_timeout: Duration,
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions {
            cache_bytes: 64 << 20,
            ttl: None,
            negative_ttl: Duration::from_secs(5),
            max_key_bytes: 1024,
            max_value_bytes: 8 << 20,
            load_timeout: Duration::from_secs(5),
        }
    }
}

/// Counters of one group, exported by `/api/v1/stats`.
#[derive(Debug, Default)]
pub struct GroupStats {
    /// `get` calls with a valid key.
    pub gets: AtomicU64,
    /// Answers served from the main cache (values and remembered "no such key").
    pub hits: AtomicU64,
    /// Of the hits, those that were a remembered "no such key".
    pub negative_hits: AtomicU64,
    /// Lookups the main cache could not answer.
    pub misses: AtomicU64,
    /// Loads started (one per singleflight leader).
    pub loads: AtomicU64,
    /// Callers that shared another caller's load instead of starting their own.
    pub loads_deduplicated: AtomicU64,
    /// Calls made to the getter.
    pub getter_calls: AtomicU64,
    /// Getter calls that failed.
    pub getter_errors: AtomicU64,
}

/// A point-in-time copy of a group's counters and cache occupancy.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupSnapshot {
    /// The group's name.
    pub name: String,
    /// The getter's name.
    pub getter: String,
    /// See [`GroupStats::gets`].
    pub gets: u64,
    /// See [`GroupStats::hits`].
    pub hits: u64,
    /// See [`GroupStats::negative_hits`].
    pub negative_hits: u64,
    /// See [`GroupStats::misses`].
    pub misses: u64,
    /// See [`GroupStats::loads`].
    pub loads: u64,
    /// See [`GroupStats::loads_deduplicated`].
    pub loads_deduplicated: u64,
    /// See [`GroupStats::getter_calls`].
    pub getter_calls: u64,
    /// See [`GroupStats::getter_errors`].
    pub getter_errors: u64,
    /// Entries in the main cache.
    pub cache_items: u64,
    /// Bytes the main cache holds, as weighed against its budget.
    pub cache_bytes: u64,
    /// The main cache's budget.
    pub cache_max_bytes: u64,
    /// Entries evicted from the main cache (size or expiry).
    pub cache_evictions: u64,
}

/// A named cache namespace. Cheap to share (`Arc<Group>`).
pub struct Group {
    /// The group's name, part of every API path.
    name: String,
    /// Loads keys this group does not hold.
    getter: Arc<dyn Getter>,
    /// Values (and remembered "no such key") this node loaded.
    main: Cache,
    /// Collapses concurrent misses of one key into one load.
    flights: Singleflight<Option<Bytes>, Error>,
    /// Source of "now" for expiry, injected for tests.
    clock: Arc<dyn Clock>,
    /// Limits and policies.
    options: GroupOptions,
    /// Counters for stats, shared with in-flight loads (which outlive a cancelled caller).
    stats: Arc<GroupStats>,
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("name", &self.name)
            .field("getter", &self.getter.name())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Group {
    /// A group with the system clock.
    pub fn new(name: impl Into<String>, getter: Arc<dyn Getter>, options: GroupOptions) -> Self {
        Self::with_clock(name, getter, options, Arc::new(SystemClock))
    }

    /// A group whose expiry decisions use `clock` (tests inject a manual one).
    pub fn with_clock(
        name: impl Into<String>,
        getter: Arc<dyn Getter>,
        options: GroupOptions,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let name = name.into();
        let main = Cache::builder(options.cache_bytes)
            .clock(clock.clone())
            .name("main")
            .build();
        Group {
            name,
            getter,
            main,
            flights: Singleflight::new(),
            clock,
            options,
            stats: Arc::default(),
        }
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The group's options.
    pub fn options(&self) -> &GroupOptions {
        &self.options
    }

    /// Checks a key against the group's limits.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for an empty key, [`Error::KeyTooLarge`] past the limit.
    pub fn check_key(&self, key: &str) -> Result<()> {
        if key.is_empty() {
            return Err(Error::BadRequest("the key must not be empty".into()));
        }
        if key.len() > self.options.max_key_bytes {
            return Err(Error::KeyTooLarge {
                len: key.len(),
                limit: self.options.max_key_bytes,
            });
        }
        Ok(())
    }

    /// Returns the value of `key`, loading it through the getter on a miss.
    ///
    /// # Concurrent calls on the same key
    /// Concurrent misses of one key cause exactly one getter call; every caller gets its result
    /// or the same error. A caller that is cancelled does not cancel the others' load.
    ///
    /// # Errors
    /// [`Error::KeyNotFound`] when the source has no such key (remembered for the negative TTL);
    /// key-limit errors; the getter's error ([`Error::Plugin`] for wasm getters);
    /// [`Error::ValueTooLarge`]; [`Error::Timeout`] past the load timeout.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        self.check_key(key)?;
        bump(&self.stats.gets);
        if let Some(found) = self.lookup(key) {
            return found;
        }
        bump(&self.stats.misses);
        let flight = self.flights.run(key, || self.load(key.to_owned())).await;
        if flight.shared {
            bump(&self.stats.loads_deduplicated);
        }
        match flight.result {
            Ok(Some(value)) => Ok(value),
            Ok(None) => Err(Error::KeyNotFound),
            Err(e) => Err((*e).clone()),
        }
    }

    /// Answers from the main cache, counting a hit, or `None` on a miss.
    fn lookup(&self, key: &str) -> Option<Result<Bytes>> {
        let entry = self.main.get(key)?;
        bump(&self.stats.hits);
        Some(match &entry.cached {
            Cached::Value(v) => Ok(v.clone()),
            Cached::NotFound => {
                bump(&self.stats.negative_hits);
                Err(Error::KeyNotFound)
            }
        })
    }

    /// The singleflight leader's work: re-check the cache (a load may have finished between our
    /// miss and our flight), call the getter, cache what it said.
    fn load(&self, key: String) -> impl Future<Output = Result<Option<Bytes>>> + Send + 'static {
        let main = self.main.clone();
        let getter = self.getter.clone();
        let group = self.name.clone();
        let clock = self.clock.clone();
        let options = self.options.clone();
        let stats = self.stats.clone();
        async move {
            if let Some(entry) = main.get(&key) {
                return Ok(match &entry.cached {
                    Cached::Value(v) => Some(v.clone()),
                    Cached::NotFound => None,
                });
            }
            bump(&stats.loads);
            bump(&stats.getter_calls);
            let loaded = tokio::time::timeout(options.load_timeout, getter.get(&group, &key))
                .await
                .map_err(|_| Error::Timeout(options.load_timeout))
                .and_then(|r| r);
            let loaded = match loaded {
                Ok(l) => l,
                Err(e) => {
                    bump(&stats.getter_errors);
                    return Err(e);
                }
            };
            let now = clock.now_ms();
            match loaded {
                Loaded::Found {
                    value,
                    expires_at_ms,
                } => {
                    if value.len() > options.max_value_bytes {
                        return Err(Error::ValueTooLarge {
                            len: value.len(),
                            limit: options.max_value_bytes,
                        });
                    }
                    let expires_at_ms = expires_at_ms
                        .or_else(|| options.ttl.map(|ttl| now.saturating_add(ms(ttl))));
                    main.insert(
                        key,
                        CacheEntry {
                            cached: Cached::Value(value.clone()),
                            expires_at_ms,
                        },
                    );
                    Ok(Some(value))
                }
                Loaded::NotFound => {
                    if !options.negative_ttl.is_zero() {
                        let expires_at_ms = Some(now.saturating_add(ms(options.negative_ttl)));
                        main.insert(
                            key,
                            CacheEntry {
                                cached: Cached::NotFound,
                                expires_at_ms,
                            },
                        );
                    }
                    Ok(None)
                }
            }
        }
    }

    /// A snapshot of counters and cache occupancy.
    pub fn snapshot(&self) -> GroupSnapshot {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        self.main.run_pending_tasks();
        GroupSnapshot {
            name: self.name.clone(),
            getter: self.getter.name().to_string(),
            gets: get(&s.gets),
            hits: get(&s.hits),
            negative_hits: get(&s.negative_hits),
            misses: get(&s.misses),
            loads: get(&s.loads),
            loads_deduplicated: get(&s.loads_deduplicated),
            getter_calls: get(&s.getter_calls),
            getter_errors: get(&s.getter_errors),
            cache_items: self.main.entry_count(),
            cache_bytes: self.main.weighted_size(),
            cache_max_bytes: self.main.max_bytes(),
            cache_evictions: self.main.evictions(),
        }
    }
}

/// The groups a node serves, by name.
#[derive(Debug, Default, Clone)]
pub struct Groups {
    /// Name → group.
    by_name: BTreeMap<String, Arc<Group>>,
}

impl Groups {
    /// Adds a group.
    ///
    /// # Errors
    /// When a group of that name already exists.
    pub fn insert(&mut self, group: Group) -> std::result::Result<(), String> {
        let name = group.name().to_string();
        if self.by_name.contains_key(&name) {
            return Err(format!("group {name:?} is defined twice"));
        }
        self.by_name.insert(name, Arc::new(group));
        Ok(())
    }

    /// The group called `name`.
    ///
    /// # Errors
    /// [`Error::GroupNotFound`].
    pub fn get(&self, name: &str) -> Result<&Arc<Group>> {
        self.by_name
            .get(name)
            .ok_or_else(|| Error::GroupNotFound(name.to_string()))
    }

    /// All groups, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Group>> {
        self.by_name.values()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cache::ManualClock;
    use std::sync::atomic::AtomicUsize;

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
                    k if k.starts_with("missing") => Ok(Loaded::NotFound),
                    k => Ok(Loaded::Found {
                        value: Bytes::from(format!("v:{k}")),
                        expires_at_ms: self.expires_at_ms,
                    }),
                }
            })
        }
    }

    fn group(getter: Arc<MapGetter>, options: GroupOptions, clock: Arc<ManualClock>) -> Group {
        Group::with_clock("g", getter, options, clock)
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
        assert_eq!(g.snapshot().negative_hits, 2);
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
        assert_eq!((s.getter_errors, s.cache_items), (2, 0));
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
}
