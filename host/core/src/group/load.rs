//! The load paths: cache lookups and decoding, the owner's load (storage tier, then getter),
//! a non-owner's load from the owner (single or batched) and its fallback when the owner fails.

use super::*;

impl Core {
    /// Decodes a cached entry. A value that does not decode is dropped from `tier` (unless a
    /// newer entry replaced it meanwhile), counted and logged, and `Ok(None)` is returned so
    /// that the caller reloads it.
    ///
    /// # Errors
    /// A codec failure that is not corruption (a compressor plugin trapped, timed out or had no
    /// slot): the value is fine, so it stays cached and this request fails.
    pub(super) async fn open(
        &self,
        tier: Tier,
        key: &str,
        entry: &Arc<CacheEntry>,
    ) -> Result<Option<Found>> {
        let stored = match &entry.cached {
            Cached::NotFound => return Ok(Some(None)),
            Cached::Value(stored) => stored,
        };
        let decoded = self
            .coded(
                decoding_len(stored),
                stored.decode(self.options.max_value_bytes, Verify::Decoded),
            )
            .await?;
        match decoded {
            Ok(value) => Ok(Some(Some((value, entry.expires_at_ms)))),
            Err(e @ CodecError::Corrupt { .. }) => {
                bump(&self.stats.corrupt_values);
                tracing::error!(group = %self.name, ?tier, error = %e, "cached value does not decode; dropped and reloaded");
                self.cache(tier).remove_if_same(key, entry);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn cache(&self, tier: Tier) -> &Cache {
        match tier {
            Tier::Main => &self.main,
            Tier::Hot => &self.hot,
        }
    }

    /// Counts a hit in `tier`, and what kind of hit it was.
    pub(super) fn count_hit(&self, tier: Tier, answer: &Answer) {
        bump(match tier {
            Tier::Main => &self.stats.hits,
            Tier::Hot => &self.stats.hot_hits,
        });
        match answer {
            Answer::Encoded(_) => bump(&self.stats.encoded_replies),
            Answer::Plain(None) => bump(&self.stats.negative_hits),
            Answer::Plain(Some(_)) => {}
        }
    }

    /// Answers from the main then the hot cache, with one cache read per tier; counts nothing
    /// and says which tier answered. A value stored in a content coding that `accepted` lists
    /// is answered with its stored payload as it is: values in memory were checked when they
    /// entered it, so the payload goes out without a decode. Anything else is decoded.
    ///
    /// # Errors
    /// See [`Core::open`].
    pub(super) async fn lookup(
        &self,
        key: &str,
        accepted: &[&str],
    ) -> Result<Option<(Tier, Answer)>> {
        for tier in [Tier::Main, Tier::Hot] {
            let Some(entry) = self.cache(tier).get(key) else {
                continue;
            };
            if let Some(reply) = encoded_reply(&entry, accepted) {
                return Ok(Some((tier, Answer::Encoded(reply))));
            }
            let Some(found) = self.open(tier, key, &entry).await? else {
                continue;
            };
            return Ok(Some((tier, Answer::Plain(found))));
        }
        Ok(None)
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
        if let Some(len) = stored.raw_len() {
            self.check_len(len)?;
        }
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
            } => {
                self.check_len(value.len())?;
                let stored = self.encode(&value).await?;
                Ok(Some(Value {
                    plain: value,
                    stored,
                    expires_at_ms,
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

    /// Loads a key this node owns: storage tier, then getter. Fills the main cache, and the
    /// storage tier after a getter load, unless a write raced the load (`generation`).
    pub(super) async fn load_owned(&self, key: &str, generation: u64) -> Result<Option<Value>> {
        if let Some(value) = self.load_stored(key, generation).await {
            self.remember(
                Tier::Main,
                key,
                Some((&value.stored, value.expires_at_ms)),
                generation,
                false,
            );
            return Ok(Some(value));
        }
        let value = self.load_local(key).await?;
        self.remember(
            Tier::Main,
            key,
            value.as_ref().map(|v| (&v.stored, v.expires_at_ms)),
            generation,
            true,
        );
        Ok(value)
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
                self.remember(Tier::Hot, key, None, generation, false);
            }
            return Some(None);
        };
        let expires_at_ms = entry.expires_at_ms;
        match self.accept(entry).await {
            Ok((plain, stored)) => {
                bump(&self.stats.peer_loads);
                // A copy is kept from the key's second fetch on (see `Doorkeeper`), as
                // received: no decompress/recompress between peers (but out of the answer's
                // buffer, see `Stored::compacted`).
                if self.hot_door.admit(key) {
                    self.remember(
                        Tier::Hot,
                        key,
                        Some((&stored.compacted(), expires_at_ms)),
                        generation,
                        false,
                    );
                }
                Some(Some((plain, expires_at_ms)))
            }
            Err(e) => failed(e.to_string()),
        }
    }

    /// The singleflight leader's work for a client get: ask the owner, or load locally.
    /// `generation` was read before the flight started: a write from then on stops this load
    /// from caching.
    pub(super) async fn load(self: Arc<Self>, key: String, generation: u64) -> Result<Found> {
        if let Some((_, Answer::Plain(found))) = self.lookup(&key, &[]).await? {
            return Ok(found);
        }
        bump(&self.stats.loads);
        if let Some(peer) = self.peers.as_ref().and_then(|p| p.pick(&key)) {
            if let Some(found) = self.load_from_peer(&*peer, &key, generation).await {
                return Ok(found);
            }
            return self.load_for_failed_owner(&key, generation).await;
        }
        let value = self.load_owned(&key, generation).await?;
        Ok(value.map(|v| (v.plain, v.expires_at_ms)))
    }

    /// The owner is down or slow: answers the client from the source, and keeps the value as
    /// a hot copy (it is still the owner's key).
    pub(super) async fn load_for_failed_owner(&self, key: &str, generation: u64) -> Result<Found> {
        let value = self.load_local(key).await?;
        self.remember(
            Tier::Hot,
            key,
            value.as_ref().map(|v| (&v.stored, v.expires_at_ms)),
            generation,
            false,
        );
        Ok(value.map(|v| (v.plain, v.expires_at_ms)))
    }

    /// The singleflight leader's work for a batch's key whose owner answered ahead
    /// ([`Group::owner_answers`]): take that answer, or load locally if the owner failed.
    pub(super) async fn load_with_owner_answer(
        self: Arc<Self>,
        key: String,
        generation: u64,
        answer: OwnerAnswer,
    ) -> Result<Found> {
        if let Some((_, Answer::Plain(found))) = self.lookup(&key, &[]).await? {
            return Ok(found);
        }
        bump(&self.stats.loads);
        if let Some(found) = self
            .take_owner_answer(&answer.peer, &key, generation, answer.item)
            .await
        {
            return Ok(found);
        }
        self.load_for_failed_owner(&key, generation).await
    }

    /// The singleflight leader's work for a peer's request: this node is the owner. Answers
    /// with stored bytes, never decoding what it already holds.
    pub(super) async fn load_as_owner(
        self: Arc<Self>,
        key: String,
        generation: u64,
    ) -> Result<FoundStored> {
        if let Some(entry) = self.main.get(&key) {
            return Ok(match &entry.cached {
                Cached::Value(stored) => Some((stored.clone(), entry.expires_at_ms)),
                Cached::NotFound => None,
            });
        }
        bump(&self.stats.loads);
        let value = self.load_owned(&key, generation).await?;
        Ok(value.map(|v| (v.stored, v.expires_at_ms)))
    }
}
