//! The load paths: cache lookups and decoding, the owner's load (storage tier, then getter),
//! a non-owner's load from the owner (single or batched) and its fallback when the owner fails.

use std::sync::Arc;

use bytes::Bytes;

use super::reply::{Source, encoded_reply};
use super::stats::{add, bump};
use super::{
    CacheKind, CachedValue, Found, FoundStored, Inner, Looked, OwnerAnswer, OwnerLoad, Sourced,
    Value, decoding_len, len64, ms, peer_entry, tier,
};
use crate::cache::{Cache, CacheEntry, Lookup, MissReason};
use crate::compression::{CodecError, Stored, Verify, builtin};
use crate::error::{Error, Result};
use crate::seam::{Loaded, PeerEntry, RemotePeer};

impl Inner {
    /// Decodes a cached entry. A value that does not decode is dropped from `tier` (unless a
    /// newer entry replaced it meanwhile), counted and logged, and `Ok(None)` is returned so
    /// that the caller reloads it.
    ///
    /// # Errors
    /// A codec failure that is not corruption (a compressor plugin trapped, timed out or had no
    /// slot): the value is fine, so it stays cached and this request fails.
    pub(super) async fn open(
        &self,
        tier: CacheKind,
        key: &str,
        entry: &CacheEntry,
    ) -> Result<Option<Found>> {
        let Some(stored) = entry.stored() else {
            return Ok(Some(None));
        };
        let decoded = self
            .coded(
                decoding_len(&stored),
                stored.decode(self.options.max_value_bytes, Verify::Decoded),
            )
            .await?;
        match decoded {
            Ok(value) => Ok(Some(Some((value, entry.expires_at_ms())))),
            Err(e @ CodecError::Corrupt { .. }) => {
                bump(&self.stats.corrupt_values);
                tracing::error!(group = %self.name, ?tier, error = %e, "cached value does not decode; dropped and reloaded");
                self.cache(tier).remove_if_same(key, entry);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn cache(&self, tier: CacheKind) -> &Cache {
        match tier {
            CacheKind::Main => &self.main,
            CacheKind::Hot => &self.hot,
        }
    }

    /// Counts a hit in `tier`, and what kind of hit it was.
    pub(super) fn count_hit(&self, tier: CacheKind, answer: &CachedValue) {
        bump(match tier {
            CacheKind::Main => &self.stats.hits,
            CacheKind::Hot => &self.stats.hot_hits,
        });
        match answer {
            CachedValue::Encoded(_) => bump(&self.stats.encoded_replies),
            CachedValue::Plain(None) => bump(&self.stats.negative_hits),
            CachedValue::Plain(Some(_)) => {}
        }
    }

    /// Answers from the main then the hot cache, with one cache read per tier; counts nothing
    /// and says which tier answered, whether its entry was stale, or why neither could. A
    /// value stored in a content coding that `accepted` lists is answered with its stored
    /// payload as it is: values in memory were checked when they entered it, so the payload
    /// goes out without a decode. Anything else is decoded.
    ///
    /// # Errors
    /// See [`Inner::open`].
    pub(super) async fn lookup(&self, key: &str, accepted: &[&str]) -> Result<Looked> {
        let mut reason = MissReason::NeverSeen;
        for tier in [CacheKind::Main, CacheKind::Hot] {
            let (entry, stale) = match self.cache(tier).lookup(key) {
                Lookup::Fresh(entry) => (entry, false),
                Lookup::Stale(entry) => (entry, true),
                Lookup::Miss(why) => {
                    if tier == CacheKind::Main {
                        reason = why;
                    }
                    continue;
                }
            };
            let answer = match encoded_reply(&entry, accepted) {
                Some(reply) => CachedValue::Encoded(reply),
                None => match self.open(tier, key, &entry).await? {
                    Some(found) => CachedValue::Plain(found),
                    None => continue,
                },
            };
            return Ok(if stale {
                Looked::Stale { answer }
            } else {
                Looked::Hit {
                    tier,
                    answer,
                    expires_at_ms: entry.expires_at_ms(),
                }
            });
        }
        Ok(Looked::Miss(reason))
    }

    /// Counts a client miss under its reason: a cache miss of a key another node owns is
    /// "not owner", else what the main tier said.
    pub(super) fn count_miss(&self, key: &str, reason: MissReason) {
        bump(&self.stats.misses);
        let reason = if reason != MissReason::StaleRefresh
            && self.peers.as_ref().is_some_and(|p| p.pick(key).is_some())
        {
            MissReason::NotOwner
        } else {
            reason
        };
        let s = &self.stats;
        bump(match reason {
            MissReason::NeverSeen => &s.miss_never_seen,
            MissReason::Expired => &s.miss_expired,
            MissReason::Evicted => &s.miss_evicted,
            MissReason::NegativeExpired => &s.miss_negative_expired,
            MissReason::NotOwner => &s.miss_not_owner,
            MissReason::StaleRefresh => &s.miss_stale_refresh,
            MissReason::Flushed => &s.miss_flushed,
        });
    }

    /// Runs a refresh that [`Singleflight::start`] started (`None`: one was in flight
    /// already, nothing to do) in the background, counting it and its failure.
    pub(super) fn spawn_refresh<T: Send + 'static>(
        self: &Arc<Self>,
        refresh: Option<impl Future<Output = std::result::Result<T, Arc<Error>>> + Send + 'static>,
        ahead: bool,
    ) {
        let Some(refresh) = refresh else { return };
        bump(if ahead {
            &self.stats.early_refreshes
        } else {
            &self.stats.stale_refreshes
        });
        let inner = self.clone();
        tokio::spawn(async move {
            if let Err(e) = refresh.await {
                bump(&inner.stats.refresh_errors);
                tracing::warn!(group = %inner.name, error = %e, "background refresh failed; the entry is answered as it is until its stale window ends");
            }
        });
    }

    /// Whether a hit on an entry expiring at `expires_at_ms` should refresh it ahead of its
    /// expiry (`--refresh-ahead`): never before the window's start, then with a probability
    /// that grows as the expiry nears (XFetch, Vattani et al.: refresh when
    /// `-ln(u) · window/8 ≥ time left`, `u` uniform in (0, 1]), so that a key asked often is
    /// refreshed once, a little ahead, and a key asked rarely mostly is not.
    pub(super) fn refresh_due(&self, expires_at_ms: Option<u64>) -> bool {
        let window = self.options.refresh_ahead;
        let Some(at) = expires_at_ms.filter(|_| !window.is_zero()) else {
            return false;
        };
        let left = at.saturating_sub(self.clock.now_ms());
        let window = ms(window);
        if left >= window {
            return false;
        }
        let u = unit_random();
        -u.ln() * (window as f64 / 8.0) >= left as f64
    }

    /// The expiry of a value kept by this group: the one its source gave, else now + the
    /// group's TTL, else none. Memory and the storage tier both keep this one.
    pub(super) fn expiry(&self, given: Option<u64>) -> Option<u64> {
        given.or_else(|| {
            self.options
                .ttl
                .map(|ttl| self.clock.now_ms().saturating_add(ms(ttl)))
        })
    }

    /// The stale window of a value this group keeps (`stale`), as entries carry it; capped at
    /// `u32::MAX` ms (49 days).
    pub(super) fn stale_ms(&self) -> u32 {
        u32::try_from(ms(self.options.stale)).unwrap_or(u32::MAX)
    }

    /// `work` (coding `len` bytes), under the load timeout when it is large enough to wait
    /// for the codec's heavy lane (`compression::builtin`): a request still waiting when its
    /// time is up fails with [`Error::Timeout`] and never codes. Small work runs as it is.
    pub(super) async fn coded<T>(
        &self,
        len: usize,
        work: impl Future<Output = std::result::Result<T, CodecError>>,
    ) -> Result<std::result::Result<T, CodecError>> {
        if len < builtin::INLINE_LIMIT {
            return Ok(work.await);
        }
        let timeout = self.options.load_timeout;
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| Error::Timeout(timeout))
    }

    /// Encodes `value` with the group's codec, counting sizes for the compression stats.
    pub(super) async fn encode(&self, value: &[u8]) -> Result<Stored> {
        let stored = self
            .coded(value.len(), self.encoding.encode(value))
            .await??;
        let s = &self.stats;
        bump(&s.values_encoded);
        if !stored.codec().is_none() {
            bump(&s.values_compressed);
        }
        add(&s.encoded_raw_bytes, len64(value.len()));
        add(&s.encoded_stored_bytes, len64(stored.len()));
        Ok(stored)
    }

    /// An entry from a peer or the storage tier, decoded and fully checked.
    pub(super) async fn accept(&self, entry: PeerEntry) -> Result<(Bytes, Stored)> {
        let stored = self
            .codecs
            .stored(entry.value, &entry.codec)
            .inspect_err(|_| bump(&self.stats.corrupt_values))?;
        self.check_len(stored.raw_len())?;
        let plain = self
            .coded(
                decoding_len(&stored),
                stored.decode(self.options.max_value_bytes, Verify::All),
            )
            .await?
            .inspect_err(|_| bump(&self.stats.corrupt_values))?;
        Ok((plain, stored))
    }

    pub(super) fn check_len(&self, len: usize) -> Result<()> {
        let limit = self.options.max_value_bytes;
        if len > limit {
            return Err(Error::ValueTooLarge { len, limit });
        }
        Ok(())
    }

    /// Loads `key` with the local getter, under the load timeout, and encodes it.
    pub(super) async fn load_local(&self, key: &str) -> Result<Option<Value>> {
        bump(&self.stats.getter_calls);
        let timeout = self.options.load_timeout;
        let loaded = tokio::time::timeout(timeout, self.getter.get(&self.name, key))
            .await
            .map_err(|_| Error::Timeout(timeout))
            .and_then(|r| r)
            .inspect_err(|_| bump(&self.stats.getter_errors))?;
        match loaded {
            Loaded::Found {
                value,
                expires_at_ms,
                stale_ms,
            } => {
                self.check_len(value.len())?;
                let stored = self.encode(&value).await?;
                Ok(Some(Value {
                    plain: value,
                    stored,
                    expires_at_ms,
                    stale_ms,
                }))
            }
            Loaded::NotFound => Ok(None),
        }
    }

    /// Asks the storage tier for `key`; anything but a live, intact value is a miss. A value
    /// that does not decode is deleted from the tier, unless a write to the key came since the
    /// load started (`generation`): that write (say a set, already acknowledged) may have
    /// replaced it, and a delete queued after it would remove the new value.
    pub(super) async fn load_stored(&self, key: &str, generation: u64) -> Option<Value> {
        let tier = self.storage.as_ref()?;
        let s = &self.stats;
        if tier.is_pending(key) {
            // A write to this key is on its way: what the tier holds may be stale.
            bump(&s.storage_misses);
            return None;
        }
        let storage = tier.backend();
        let timeout = self.options.load_timeout;
        let entry = match tokio::time::timeout(timeout, storage.get(&self.name, key)).await {
            Ok(Ok(Some(entry))) => entry,
            Ok(Ok(None)) => {
                bump(&s.storage_misses);
                return None;
            }
            Ok(Err(e)) => {
                bump(&s.storage_errors);
                tracing::warn!(group = %self.name, storage = storage.name(), error = %e, "storage get failed; loading from the getter");
                return None;
            }
            Err(_) => {
                bump(&s.storage_errors);
                tracing::warn!(group = %self.name, storage = storage.name(), ?timeout, "storage get timed out; loading from the getter");
                return None;
            }
        };
        if entry
            .expires_at_ms
            .is_some_and(|at| at <= self.clock.now_ms())
        {
            bump(&s.storage_misses);
            return None;
        }
        let expires_at_ms = entry.expires_at_ms;
        match self.accept(entry).await {
            Ok((plain, stored)) => {
                bump(&s.storage_hits);
                Some(Value {
                    plain,
                    stored,
                    expires_at_ms,
                    stale_ms: None,
                })
            }
            Err(e) => {
                tracing::error!(group = %self.name, storage = storage.name(), error = %e, "stored value does not decode; deleted, reloading from the getter");
                // Under the key's write lock, as queued writes must be, so the check holds
                // until the delete is queued.
                let current = self.generation_lock(key);
                if *current == generation {
                    self.unstore_in_background(key);
                }
                drop(current);
                None
            }
        }
    }

    /// Warm handoff: asks the nodes that may still hold the key since the ring changed (its
    /// previous owner, then the next node for it: see [`PeerPicker::previous_owners`]) for the
    /// value they hold in memory, all within one handoff timeout. `None` when there is none to
    /// ask, or none holds a live value, fails or is slow (counted once): the key loads as usual.
    pub(super) async fn load_handed_off(&self, key: &str) -> Option<Value> {
        if self.options.handoff_timeout.is_zero() {
            return None;
        }
        let peers = self.peers.as_ref()?;
        let candidates = peers.previous_owners(key);
        if candidates.is_empty() {
            return None;
        }
        let value = self.peek_at(key, &candidates).await;
        peers.handoff_outcome(value.is_some());
        value
    }

    /// Asks `candidates` in order for the value they hold in memory for `key`, all within one
    /// handoff timeout: the first live value, or `None` (none to ask: uncounted; else counted
    /// once as a handoff miss).
    pub(super) async fn peek_at(
        &self,
        key: &str,
        candidates: &[Arc<dyn RemotePeer>],
    ) -> Option<Value> {
        let timeout = self.options.handoff_timeout;
        if timeout.is_zero() || candidates.is_empty() {
            return None;
        }
        let asked = async {
            for peer in candidates {
                match peer.peek(&self.name, key).await {
                    // A value past its expiry is loaded again rather than taken over.
                    Ok(Some(entry))
                        if entry
                            .expires_at_ms
                            .is_none_or(|at| at > self.clock.now_ms()) =>
                    {
                        return Some((peer, entry));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(group = %self.name, peer = peer.id(), error = %e, "peek at a previous owner failed");
                    }
                }
            }
            None
        };
        let Ok(Some((peer, entry))) = tokio::time::timeout(timeout, asked).await else {
            bump(&self.stats.handoff_misses);
            return None;
        };
        let expires_at_ms = entry.expires_at_ms;
        match self.accept(entry).await {
            Ok((plain, stored)) => {
                bump(&self.stats.handoff_hits);
                Some(Value {
                    plain,
                    stored,
                    expires_at_ms,
                    stale_ms: None,
                })
            }
            Err(e) => {
                bump(&self.stats.handoff_misses);
                tracing::warn!(group = %self.name, peer = peer.id(), error = %e, "a previous owner's value does not decode; loading it");
                None
            }
        }
    }

    /// Loads a key this node owns: storage tier, then getter. Fills the main cache, and the
    /// storage tier after a getter load, unless a write raced the load (`generation`).
    pub(super) async fn load_owned(
        &self,
        key: &str,
        generation: u64,
    ) -> Result<(Option<Value>, Source)> {
        let kept = match self.load_stored(key, generation).await {
            Some(value) => Some((value, Source::Storage)),
            None => self
                .load_handed_off(key)
                .await
                .map(|value| (value, Source::Peer)),
        };
        if let Some((value, source)) = kept {
            self.remember(
                CacheKind::Main,
                key,
                Some((&value.stored, value.expires_at_ms)),
                generation,
                source == Source::Peer,
                None,
            );
            return Ok((Some(value), source));
        }
        let value = self.load_local(key).await?;
        self.remember(
            CacheKind::Main,
            key,
            value.as_ref().map(|v| (&v.stored, v.expires_at_ms)),
            generation,
            true,
            value.as_ref().and_then(|v| v.stale_ms),
        );
        Ok((value, Source::Getter))
    }

    /// Writes a loaded entry through to the storage tier in the background (in order with the
    /// key's other writes); best effort: dropped when the tier's queue is full (`tier.rs`).
    /// Call it under the key's write lock.
    pub(super) fn store_in_background(
        &self,
        key: &str,
        stored: &Stored,
        expires_at_ms: Option<u64>,
    ) {
        let Some(tier) = &self.storage else { return };
        let op = tier::Op::Put(peer_entry(stored, expires_at_ms));
        if let Some(slot) = tier.try_reserve(key, &op, "a load's write-through") {
            slot.send_in_background(key, op);
        }
    }

    /// Deletes `key` from the storage tier in the background (in order with its other writes),
    /// unless a delete of it is already queued; dropped when the tier's queue is full
    /// (`tier.rs` says why that is tolerable for the callers: invalidations and corrupt values).
    /// Call it under the key's write lock.
    pub(super) fn unstore_in_background(&self, key: &str) {
        let Some(tier) = &self.storage else { return };
        if tier.delete_pending(key) {
            return;
        }
        if let Some(slot) = tier.try_reserve(key, &tier::Op::Delete, "a delete") {
            slot.send_in_background(key, tier::Op::Delete);
        }
    }

    /// Asks the owner for `key`; `None` when it is down, slow, or answers with a value that
    /// does not decode (counted as a peer error).
    pub(super) async fn load_from_peer(
        &self,
        peer: &dyn RemotePeer,
        key: &str,
        generation: u64,
    ) -> Option<Found> {
        let timeout = self.options.peer_timeout;
        let item = match tokio::time::timeout(timeout, peer.get(&self.name, key)).await {
            Ok(Ok(entry)) => Ok(entry),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("timed out after {timeout:?}")),
        };
        self.take_owner_answer(peer.id(), key, generation, item)
            .await
    }

    /// Takes the owner's answer for `key` (a single get's or a batch's): decodes and keeps a
    /// value as a hot copy, remembers "no such key". `None` when the owner failed (counted and
    /// logged): the caller loads locally.
    pub(super) async fn take_owner_answer(
        &self,
        peer: &str,
        key: &str,
        generation: u64,
        item: std::result::Result<Option<PeerEntry>, String>,
    ) -> Option<Found> {
        let failed = |error: String| {
            bump(&self.stats.peer_errors);
            tracing::warn!(group = %self.name, peer, %error, "peer get failed; loading locally");
            None
        };
        let entry = match item {
            Ok(entry) => entry,
            Err(e) => return failed(e),
        };
        let Some(entry) = entry else {
            bump(&self.stats.peer_loads);
            if self.hot_door.admit(key) {
                self.remember(CacheKind::Hot, key, None, generation, false, None);
            }
            return Some(None);
        };
        let expires_at_ms = entry.expires_at_ms;
        match self.accept(entry).await {
            Ok((plain, stored)) => {
                bump(&self.stats.peer_loads);
                // A copy is kept from the key's second fetch on (see `Doorkeeper`), as
                // received: no decompress/recompress between peers (but out of the answer's
                // buffer: `CacheEntry::new` copies it).
                if self.hot_door.admit(key) {
                    self.remember(
                        CacheKind::Hot,
                        key,
                        Some((&stored, expires_at_ms)),
                        generation,
                        false,
                        None,
                    );
                }
                Some(Some((plain, expires_at_ms)))
            }
            Err(e) => failed(e.to_string()),
        }
    }

    /// The singleflight leader's work for a client get: ask `owner`, the node the caller's
    /// ring picked, or load locally when it picked none. `generation` was read before the
    /// flight started: a write from then on stops this load from caching. A `refresh` (stale
    /// or ahead of expiry) loads even when the caches hold the key.
    pub(super) async fn load(
        self: Arc<Self>,
        key: String,
        generation: u64,
        refresh: bool,
        owner: Option<Arc<dyn RemotePeer>>,
    ) -> Result<Sourced> {
        if !refresh
            && let Looked::Hit {
                tier,
                answer: CachedValue::Plain(found),
                ..
            } = self.lookup(&key, &[]).await?
        {
            return Ok((found, tier.source()));
        }
        bump(&self.stats.loads);
        if let Some(peer) = owner {
            if let Some(found) = self.load_from_peer(&*peer, &key, generation).await {
                let source = self.peer_source(&found);
                return Ok((found, source));
            }
            return self.load_for_failed_owner(&key, generation).await;
        }
        let (value, source) = self.load_owned(&key, generation).await?;
        Ok((value.map(|v| (v.plain, v.expires_at_ms)), source))
    }

    /// What an owner's answer reports as its source: stale when the owner answered a value
    /// past its expiry (it refreshes it), else the peer.
    fn peer_source(&self, found: &Found) -> Source {
        match found {
            Some((_, Some(at))) if *at <= self.clock.now_ms() => Source::Stale,
            _ => Source::Peer,
        }
    }

    /// The owner is down or slow: answers the client from the key's next owner's memory (where
    /// a stopping owner handed it over) or else from the source, and keeps the value as a hot
    /// copy (it is still the owner's key).
    pub(super) async fn load_for_failed_owner(
        &self,
        key: &str,
        generation: u64,
    ) -> Result<Sourced> {
        let (value, source) = match self.load_from_successor(key).await {
            Some(value) => (Some(value), Source::Peer),
            None => (self.load_local(key).await?, Source::Getter),
        };
        self.remember(
            CacheKind::Hot,
            key,
            value.as_ref().map(|v| (&v.stored, v.expires_at_ms)),
            generation,
            false,
            value.as_ref().and_then(|v| v.stale_ms),
        );
        Ok((value.map(|v| (v.plain, v.expires_at_ms)), source))
    }

    /// The singleflight leader's work for a batch's key whose owner answered ahead
    /// ([`Group::owner_answers`]): take that answer, or load locally if the owner failed.
    pub(super) async fn load_with_owner_answer(
        self: Arc<Self>,
        key: String,
        generation: u64,
        answer: OwnerAnswer,
    ) -> Result<Sourced> {
        if let Looked::Hit {
            tier,
            answer: CachedValue::Plain(found),
            ..
        } = self.lookup(&key, &[]).await?
        {
            return Ok((found, tier.source()));
        }
        bump(&self.stats.loads);
        if let Some(found) = self
            .take_owner_answer(&answer.peer, &key, generation, answer.item)
            .await
        {
            let source = self.peer_source(&found);
            return Ok((found, source));
        }
        self.load_for_failed_owner(&key, generation).await
    }

    /// The singleflight leader's work for a key this node owns, asked by a peer or by its own
    /// client: answers with stored bytes (and the plain value when it loaded it), never
    /// decoding what it already holds. A `refresh` loads even when the main cache holds the
    /// key (stale, or near its expiry).
    pub(super) async fn load_as_owner(
        self: Arc<Self>,
        key: String,
        generation: u64,
        refresh: bool,
    ) -> Result<OwnerLoad> {
        if !refresh && let Some(entry) = self.main.get(&key) {
            return Ok(OwnerLoad {
                stored: stored_of(&entry),
                plain: None,
                source: Source::Main,
            });
        }
        bump(&self.stats.loads);
        let (value, source) = self.load_owned(&key, generation).await?;
        let plain = value.as_ref().map(|v| v.plain.clone());
        Ok(OwnerLoad {
            stored: value.map(|v| (v.stored, v.expires_at_ms)),
            plain,
            source,
        })
    }
}

/// A main-cache entry as an owner answers it: the stored bytes with their expiry, or "no such
/// key".
pub(super) fn stored_of(entry: &CacheEntry) -> FoundStored {
    entry.stored().map(|stored| (stored, entry.expires_at_ms()))
}

/// A uniform random number in (0, 1], for refresh-ahead's draw: a per-thread xorshift64*
/// seeded from the process's random hasher keys (not for anything secret).
fn unit_random() -> f64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher as _, RandomState};
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(0u64) | 1);
    }
    let x = STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    });
    // The top 53 bits, shifted into (0, 1].
    ((x >> 11) as f64 + 1.0) / (1u64 << 53) as f64
}
