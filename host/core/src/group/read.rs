//! The read API of a group: `get` for clients and for peers (as the key's owner), batches
//! through owners, and what a group reports about itself.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::load::stored_of;
use super::options::GroupOptions;
use super::reply::{Reply, Source};
use super::stats::{GroupSnapshot, bump};
use super::tier::Drained;
use super::{CacheKind, CachedValue, Group, Looked, OwnerAnswer, Sourced, flight_key, peer_entry};
use crate::cache::{Lookup, MissReason};
use crate::error::{Error, Result};
use crate::seam::{OwnerItem, PeerEntry, RemotePeer};
use crate::spans::in_span;

impl Group {
    /// The group's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The group's options.
    pub fn options(&self) -> &GroupOptions {
        &self.inner.options
    }

    /// Checks a key against the group's limits.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for an empty key, [`Error::KeyTooLarge`] past the limit.
    pub fn check_key(&self, key: &str) -> Result<()> {
        let limit = self.inner.options.max_key_bytes;
        if key.is_empty() {
            return Err(Error::BadRequest("the key must not be empty".into()));
        }
        if key.len() > limit {
            return Err(Error::KeyTooLarge {
                len: key.len(),
                limit,
            });
        }
        Ok(())
    }

    /// Returns the value of `key`: from a cache, from its owner, or through the storage tier
    /// or the getter.
    ///
    /// # Concurrent calls on the same key
    /// Concurrent misses of one key cause exactly one load on this node (and, through the
    /// owner's own singleflight, one getter call cluster-wide); every caller gets its result or
    /// the same error. A caller that is cancelled does not cancel the others' load.
    ///
    /// # Errors
    /// [`Error::KeyNotFound`] when the source has no such key (remembered for the negative TTL);
    /// key-limit errors; the getter's error ([`Error::Plugin`] for wasm getters);
    /// [`Error::ValueTooLarge`]; [`Error::Codec`] when the group's codec fails on the loaded
    /// value; [`Error::Timeout`] past the load timeout. A failing owner is not an error: the
    /// node loads the key itself. A stored value that does not decode is not an error either:
    /// it is dropped and reloaded.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        Ok(self.get_reply(key, &[]).await?.body)
    }

    /// [`Group::get`] for an HTTP client that accepts the content codings `accepted` (`gzip`,
    /// `zstd`): a cached value stored in one of them is answered with its stored payload as it
    /// is, saving the decode; anything else is the plain value.
    ///
    /// # Errors
    /// As [`Group::get`].
    pub async fn get_reply(&self, key: &str, accepted: &[&str]) -> Result<Reply> {
        // The key goes on the span only at debug level: traces at info carry no keys.
        let span = tracing::info_span!(
            "geecache.group.get",
            group = self.inner.name.as_str(),
            answered_by = tracing::field::Empty,
            shared = tracing::field::Empty,
            key = tracing::field::Empty,
        );
        if !span.is_disabled() && tracing::enabled!(tracing::Level::DEBUG) {
            span.record("key", key);
        }
        in_span(self.get_in_span(key, accepted, &span), span.clone()).await
    }

    /// [`Group::get_reply`] inside `span`, which it tells where the answer came from.
    pub(super) async fn get_in_span(
        &self,
        key: &str,
        accepted: &[&str],
        span: &tracing::Span,
    ) -> Result<Reply> {
        self.check_key(key)?;
        let inner = &self.inner;
        bump(&inner.stats.gets);
        // Recording on a disabled span still looks the field up (and, with `tracing`'s `log`
        // feature, may consult `log`): skip it when no layer wants the span.
        let traced = !span.is_disabled();
        let (found, source) = match inner.lookup(key, accepted).await? {
            Looked::Hit {
                tier,
                answer,
                expires_at_ms,
            } => {
                inner.count_hit(tier, &answer);
                if traced {
                    span.record("answered_by", tier.label());
                }
                if inner.refresh_due(expires_at_ms) {
                    self.refresh_in_background(key, true);
                }
                match answer {
                    CachedValue::Encoded(reply) => {
                        return Ok(Reply {
                            source: tier.source(),
                            ..reply
                        });
                    }
                    CachedValue::Plain(found) => (found, tier.source()),
                }
            }
            Looked::Stale { answer, .. } => {
                // Answered at once; one refresh per key (here, or at the owner through it).
                inner.count_miss(key, MissReason::StaleRefresh);
                if traced {
                    span.record("answered_by", "stale");
                }
                self.refresh_in_background(key, false);
                match answer {
                    CachedValue::Encoded(reply) => {
                        return Ok(Reply {
                            source: Source::Stale,
                            ..reply
                        });
                    }
                    CachedValue::Plain(found) => (found, Source::Stale),
                }
            }
            Looked::Miss(reason) => {
                inner.count_miss(key, reason);
                if traced {
                    span.record("answered_by", "load");
                }
                let generation = inner.generation(key);
                let owner = self.owner(key);
                let owned = if owner.is_none() {
                    self.load_owned_for_client(key, generation, traced.then_some(span))
                        .await?
                } else {
                    None
                };
                match owned {
                    Some(sourced) => sourced,
                    None => {
                        // Only the leader calls the closure, so only a real load gets a load
                        // span.
                        let flight = self
                            .flights
                            .run(&flight_key(generation, key), || {
                                let load = tracing::info_span!(
                                    "geecache.group.load",
                                    group = inner.name.as_str()
                                );
                                in_span(
                                    inner.clone().load(key.to_owned(), generation, false, owner),
                                    load,
                                )
                            })
                            .await;
                        if traced {
                            span.record("shared", flight.shared);
                        }
                        if flight.shared {
                            bump(&inner.stats.loads_deduplicated);
                        }
                        flight.result.map_err(|e| (*e).clone())?
                    }
                }
            }
        };
        let (body, _) = found.ok_or(Error::KeyNotFound)?;
        Ok(Reply {
            body,
            content_encoding: None,
            source,
        })
    }

    /// The other node that owns `key`; `None` when this node does (no cluster, or its ring
    /// picks no other node). Picked once per miss or refresh and handed to the load.
    fn owner(&self, key: &str) -> Option<Arc<dyn RemotePeer>> {
        self.inner.peers.as_ref().and_then(|peers| peers.pick(key))
    }

    /// A client's miss of a key this node owns, in the owner's singleflight, so that it and
    /// the peers asking for the key meanwhile make one load. `None` when the flight found the
    /// key already cached (it shares stored bytes only): the caller reads it through the
    /// client path, which decodes it.
    async fn load_owned_for_client(
        &self,
        key: &str,
        generation: u64,
        span: Option<&tracing::Span>,
    ) -> Result<Option<Sourced>> {
        let inner = &self.inner;
        let flight = self
            .owner_flights
            .run(&flight_key(generation, key), || {
                let load = tracing::info_span!("geecache.group.load", group = inner.name.as_str());
                in_span(
                    inner
                        .clone()
                        .load_as_owner(key.to_owned(), generation, false),
                    load,
                )
            })
            .await;
        if let Some(span) = span {
            span.record("shared", flight.shared);
        }
        if flight.shared {
            bump(&inner.stats.loads_deduplicated);
        }
        let load = flight.result.map_err(|e| (*e).clone())?;
        Ok(match (load.stored, load.plain) {
            (None, _) => Some((None, load.source)),
            (Some((_, expires_at_ms)), Some(plain)) => {
                Some((Some((plain, expires_at_ms)), load.source))
            }
            (Some(_), None) => None,
        })
    }

    /// Refreshes `key` in the background: a stale entry, or (`ahead`) a live one near its
    /// expiry. In the key's singleflight, so a refresh already in flight (or a client's load)
    /// is not started again, and at most one runs per key on this node; a key another node
    /// owns is refreshed through its owner, which runs its own one refresh. A failed refresh
    /// is counted and leaves the entry as it is: a stale one is answered until its window ends
    /// (stale-if-error).
    fn refresh_in_background(&self, key: &str, ahead: bool) {
        let Some(owner) = self.owner(key) else {
            // This node owns the key: its clients' refresh and its peers' are one, in the
            // owner's singleflight (which never forwards, so it cannot wait on another node).
            self.refresh_as_owner_in_background(key, ahead);
            return;
        };
        let (inner, generation) = (self.inner.clone(), self.inner.generation(key));
        let refresh = self.flights.start(&flight_key(generation, key), || {
            inner.load(key.to_owned(), generation, true, Some(owner))
        });
        self.inner.spawn_refresh(refresh, ahead);
    }

    /// [`Group::refresh_in_background`] at the owner, for a peer's request: in the owner's
    /// singleflight.
    fn refresh_as_owner_in_background(&self, key: &str, ahead: bool) {
        let (inner, generation) = (self.inner.clone(), self.inner.generation(key));
        let refresh = self.owner_flights.start(&flight_key(generation, key), || {
            inner.load_as_owner(key.to_owned(), generation, true)
        });
        self.inner.spawn_refresh(refresh, ahead);
    }

    /// For a batch: asks the owners of `keys` for the keys they own that this node does not
    /// hold in memory, with one batch request per owner (all at once, each within the peer
    /// timeout). The answers, by key, go to [`Group::get_with_owner_answer`]. Keys this node
    /// owns or holds, invalid keys, and keys an owner skipped are left out (they take the
    /// normal get path). A request that fails fails each of its keys: they are loaded locally,
    /// as a single get's would be.
    pub async fn owner_answers(&self, keys: &[String]) -> HashMap<String, OwnerAnswer> {
        let inner = &self.inner;
        let Some(peers) = &inner.peers else {
            return HashMap::new();
        };
        let mut by_owner: HashMap<String, (Arc<dyn RemotePeer>, Vec<String>)> = HashMap::new();
        for key in keys {
            if self.check_key(key).is_err()
                || inner.main.get(key).is_some()
                || inner.hot.get(key).is_some()
            {
                continue;
            }
            if let Some(peer) = peers.pick(key) {
                by_owner
                    .entry(peer.id().to_string())
                    .or_insert_with(|| (peer, Vec::new()))
                    .1
                    .push(key.clone());
            }
        }
        let timeout = inner.options.peer_timeout;
        let asked = by_owner.into_iter().map(|(id, (peer, keys))| async move {
            let answer = tokio::time::timeout(timeout, peer.batch_get(&inner.name, &keys)).await;
            let items: Vec<(String, OwnerItem)> = match answer {
                Ok(Ok(items)) => items,
                Ok(Err(e)) => keys
                    .into_iter()
                    .map(|k| (k, OwnerItem::Failed(e.to_string())))
                    .collect(),
                Err(_) => keys
                    .into_iter()
                    .map(|k| (k, OwnerItem::Failed(format!("timed out after {timeout:?}"))))
                    .collect(),
            };
            (id, items)
        });
        let mut answers = HashMap::new();
        for (peer, items) in futures::future::join_all(asked).await {
            for (key, item) in items {
                let item = match item {
                    OwnerItem::Answered(entry) => Ok(entry),
                    OwnerItem::Failed(e) => Err(e),
                    OwnerItem::Skipped => continue,
                };
                let peer = peer.clone();
                answers.insert(key, OwnerAnswer { peer, item });
            }
        }
        answers
    }

    /// [`Group::get`] of a batch's key, with its owner's answer when [`Group::owner_answers`]
    /// fetched one: the caches first, then that answer (or a local load if the owner failed),
    /// in the key's singleflight like any load.
    ///
    /// # Errors
    /// As [`Group::get`].
    pub async fn get_with_owner_answer(
        &self,
        key: &str,
        answer: Option<OwnerAnswer>,
    ) -> Result<Bytes> {
        let Some(answer) = answer else {
            return self.get(key).await;
        };
        self.check_key(key)?;
        let inner = &self.inner;
        bump(&inner.stats.gets);
        match inner.lookup(key, &[]).await? {
            Looked::Hit { tier, answer, .. } => {
                inner.count_hit(tier, &answer);
                if let CachedValue::Plain(found) = answer {
                    return found.map(|(v, _)| v).ok_or(Error::KeyNotFound);
                }
                // Unreachable with no accepted codings; counted as a miss too, as before.
                inner.count_miss(key, MissReason::NeverSeen);
            }
            Looked::Stale { answer, .. } => {
                inner.count_miss(key, MissReason::StaleRefresh);
                self.refresh_in_background(key, false);
                if let CachedValue::Plain(found) = answer {
                    return found.map(|(v, _)| v).ok_or(Error::KeyNotFound);
                }
            }
            Looked::Miss(reason) => inner.count_miss(key, reason),
        }
        let generation = inner.generation(key);
        let flight = self
            .flights
            .run(&flight_key(generation, key), || {
                inner
                    .clone()
                    .load_with_owner_answer(key.to_owned(), generation, answer)
            })
            .await;
        if flight.shared {
            bump(&inner.stats.loads_deduplicated);
        }
        let (found, _) = flight.result.map_err(|e| (*e).clone())?;
        found.map(|(v, _)| v).ok_or(Error::KeyNotFound)
    }

    /// Answers a peer that asks this node, as the key's owner, for `key`: never forwards to
    /// another node, so rings that briefly disagree cannot loop. The answer is the stored
    /// bytes and their codec, as this node keeps them.
    ///
    /// # Errors
    /// As [`Group::get`], except that "no such key" is `Ok(None)`.
    pub async fn get_as_owner(&self, key: &str) -> Result<Option<PeerEntry>> {
        self.check_key(key)?;
        let inner = &self.inner;
        bump(&inner.stats.peer_requests_served);
        // What memory holds is answered without a flight: a live entry (refreshed ahead when
        // near its expiry), or a stale one at once while it is refreshed here, once.
        let held = match inner.main.lookup(key) {
            Lookup::Fresh(entry) => {
                if inner.refresh_due(entry.expires_at_ms()) {
                    self.refresh_as_owner_in_background(key, true);
                }
                Some(entry)
            }
            Lookup::Stale(entry) => {
                self.refresh_as_owner_in_background(key, false);
                Some(entry)
            }
            Lookup::Miss(_) => None,
        };
        let found = match held {
            Some(entry) => stored_of(&entry),
            None => {
                let span =
                    tracing::info_span!("geecache.group.get_as_owner", group = inner.name.as_str());
                let generation = inner.generation(key);
                let load = || {
                    let load =
                        tracing::info_span!("geecache.group.load", group = inner.name.as_str());
                    in_span(
                        inner
                            .clone()
                            .load_as_owner(key.to_owned(), generation, false),
                        load,
                    )
                };
                let flight = in_span(
                    self.owner_flights.run(&flight_key(generation, key), load),
                    span,
                )
                .await;
                if flight.shared {
                    bump(&inner.stats.loads_deduplicated);
                }
                flight.result.map_err(|e| (*e).clone())?.stored
            }
        };
        Ok(found.map(|(stored, expires_at_ms)| peer_entry(&stored, expires_at_ms)))
    }

    /// What this node holds for `key` in memory (main or hot, fresh or stale), for a peer that
    /// now owns the key ([`crate::seam::PeerService::peek`]); never loads.
    ///
    /// # Errors
    /// Key-limit errors.
    pub fn peek_as_owner(&self, key: &str) -> Result<Option<PeerEntry>> {
        self.check_key(key)?;
        let inner = &self.inner;
        bump(&inner.stats.peeks_served);
        for tier in [CacheKind::Main, CacheKind::Hot] {
            if let Lookup::Fresh(entry) | Lookup::Stale(entry) = inner.cache(tier).lookup(key)
                && let Some((stored, expires_at_ms)) = stored_of(&entry)
            {
                return Ok(Some(peer_entry(&stored, expires_at_ms)));
            }
        }
        Ok(None)
    }

    /// The name of the storage backend of this group's storage tier, if it has one.
    pub fn storage_name(&self) -> Option<&str> {
        self.inner
            .storage
            .as_ref()
            .map(|tier| tier.backend().name())
    }

    /// The name of the getter that loads this group's misses.
    pub fn getter_name(&self) -> &str {
        self.inner.getter.name()
    }

    /// Waits until the storage tier's queued writes are done, or until `deadline`; for
    /// shutdown, once no request is being served any more.
    pub async fn drain_storage(&self, deadline: tokio::time::Instant) -> Drained {
        match &self.inner.storage {
            Some(tier) => tier.drain(deadline).await,
            None => Drained::default(),
        }
    }

    /// A snapshot of counters and cache occupancy.
    pub fn snapshot(&self) -> GroupSnapshot {
        let inner = &self.inner;
        let counters = inner.stats.counters();
        GroupSnapshot {
            name: inner.name.clone(),
            getter: inner.getter.name().to_string(),
            compression: inner.encoding.codec().name().to_owned(),
            storage: inner
                .storage
                .as_ref()
                .map(|s| s.backend().name().to_owned()),
            // Every main-cache miss goes on to the hot cache.
            main_misses: counters.hot_hits + counters.misses,
            counters,
            cache_items: inner.main.entry_count(),
            cache_bytes: inner.main.weighted_size(),
            cache_max_bytes: inner.main.max_bytes(),
            cache_evictions: inner.main.evictions(),
            hot_items: inner.hot.entry_count(),
            hot_bytes: inner.hot.weighted_size(),
            hot_max_bytes: inner.hot.max_bytes(),
            hot_evictions: inner.hot.evictions(),
        }
    }
}
