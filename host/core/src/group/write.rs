//! The write path: set and remove at the owner (memory, the storage tier awaited, the other
//! nodes' invalidation awaited), forwarded from a non-owner, each run as a task of its own;
//! invalidation of this node's copies; flushes.

use bytes::Bytes;

use parking_lot::MutexGuard;

use super::stats::bump;
use super::tier::StorageTier;
use super::{Group, Inner, peer_entry, tier};
use crate::cache::{CacheEntry, Cached};
use crate::compression::Stored;
use crate::error::{Error, Result};
use crate::seam::PeerEntry;

impl Inner {
    /// A client's write at the owner: changes `key`'s copies in memory (`memory`, under the
    /// key's write lock) and, in the same locked step, queues `op` for the storage tier, so
    /// the tier sees a key's writes in the order memory saw them; then waits for the backend
    /// to finish it. Waiting for queue room and for the backend are both bounded by the load
    /// timeout.
    ///
    /// Returns what `memory` returned and the backend's answer (an error when it failed or
    /// did not answer in time; a write that timed out is called off, or undone if the backend
    /// was already running it: see `tier::GaveUp`).
    ///
    /// # Errors
    /// [`Error::StorageWrite`] when the queue had no room in time: then nothing changed.
    pub(super) async fn write_through<T>(
        &self,
        tier: &StorageTier,
        key: &str,
        op: tier::Op,
        memory: impl FnOnce() -> T,
    ) -> Result<(T, Result<()>)> {
        let timeout = self.options.load_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let slot = tokio::time::timeout_at(deadline, tier.reserve(key, &op))
            .await
            .map_err(|_| Error::StorageWrite(format!("its queue stayed full for {timeout:?}")))??;
        let (kept, mut pending) = self.write(key, || (memory(), slot.send(key, op)));
        let failed = |e: Error| {
            // The client hears what it may (a plugin's own `other` text stays in the log).
            tracing::warn!(group = %self.name, error = %e, "storage write failed");
            Err(Error::StorageWrite(e.public_message()))
        };
        let written = match tokio::time::timeout_at(deadline, &mut pending.ack).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => failed(e),
            Ok(Err(_)) => Err(Error::StorageWrite("the storage tier has stopped".into())),
            // The client is told it failed, so it must not land later (see `GaveUp`).
            Err(_) => match pending.give_up().await {
                tier::GaveUp::Finished(Ok(())) => Ok(()),
                tier::GaveUp::Finished(Err(e)) => failed(e),
                tier::GaveUp::Cancelled | tier::GaveUp::Abandoned => Err(Error::StorageWrite(
                    format!("no answer within {timeout:?}; the write was called off"),
                )),
            },
        };
        Ok((kept, written))
    }

    /// Tells every other node to drop its copies of `key`, all at once, and waits for their
    /// answers, each for up to the peer timeout: part of a write's acknowledgement, so that
    /// after a 2xx no node that answered serves the old value. A node that failed or did not
    /// answer in time is counted and logged; its hot copy expires by itself (`--hot-ttl`).
    pub(super) async fn invalidate_others(&self, key: &str) {
        let Some(peers) = &self.peers else { return };
        let timeout = self.options.peer_timeout;
        let keys = [key.to_owned()];
        let asks = peers.others().into_iter().map(|peer| {
            let keys = &keys;
            async move {
                let error = match tokio::time::timeout(timeout, peer.invalidate(&self.name, keys))
                    .await
                {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {timeout:?}"),
                };
                bump(&self.stats.invalidations_failed);
                tracing::warn!(group = %self.name, peer = peer.id(), %error, "invalidation failed; that node's hot copy expires by itself");
            }
        });
        futures::future::join_all(asks).await;
    }

    /// Runs a client's write as a task of its own, so that a client that goes away mid-write
    /// (its request dropped) cannot stop it halfway: between memory and storage, before a
    /// failed write is taken out of memory again, or before the other nodes were told. Every
    /// step of it is bounded (queue room and storage by the load timeout, each peer by the
    /// peer timeout).
    pub(super) async fn detached(
        &self,
        write: impl Future<Output = Result<()>> + Send + 'static,
    ) -> Result<()> {
        match tokio::spawn(write).await {
            Ok(result) => result,
            Err(e) => {
                tracing::error!(group = %self.name, error = %e, "a write's task failed");
                Err(Error::Internal(
                    "the write failed; see the node's log".into(),
                ))
            }
        }
    }

    /// A write at a non-owner: drops this node's copies, forwards the write to the owner, then
    /// drops them again. The second time (a generation bump) matters: a get on this node
    /// while the write was in flight may have fetched the owner's old value; it cannot cache
    /// it now, and one that did cache it has lost it.
    pub(super) async fn forward(
        &self,
        key: &str,
        forwarded: impl Future<Output = Result<()>>,
        drop_main: bool,
    ) -> Result<()> {
        let drop_copies = || {
            self.hot.remove(key);
            if drop_main {
                self.main.remove(key);
            }
        };
        self.write(key, drop_copies);
        let result = forwarded.await;
        self.write(key, drop_copies);
        result
    }

    /// The owner's part of a set: memory, then (when the group has a storage tier) the
    /// backend, awaited; then the other nodes drop their copies (awaited, see
    /// [`Inner::invalidate_others`]).
    ///
    /// # Errors
    /// [`Error::StorageWrite`] when the storage tier did not take the write: the value this
    /// set put in memory is taken out again (unless a newer write replaced it), so the node
    /// does not serve, as if acknowledged, a value a restart would lose; and the write will
    /// not land later (see `tier::GaveUp`). Until the write's fate is known, readers on this
    /// node may already see the new value.
    pub(super) async fn store_as_owner(
        &self,
        key: &str,
        stored: Stored,
        expires_at_ms: Option<u64>,
    ) -> Result<()> {
        bump(&self.stats.sets);
        let expires_at_ms = self.expiry(expires_at_ms);
        let entry = peer_entry(&stored, expires_at_ms);
        let memory = || {
            self.hot.remove(key);
            self.main.insert(
                key,
                CacheEntry::new(Cached::Value(stored), expires_at_ms, self.stale_ms()),
            );
            // Under the lock, so this is the entry just inserted (or none, if refused).
            self.main.get(key)
        };
        let written = match &self.storage {
            None => {
                self.write(key, memory);
                Ok(())
            }
            Some(tier) => {
                let (ours, written) = self
                    .write_through(tier, key, tier::Op::Put(entry), memory)
                    .await?;
                if let (Err(e), Some(ours)) = (&written, ours) {
                    tracing::warn!(group = %self.name, storage = tier.backend().name(), error = %e, "set failed: the storage tier did not take it");
                    self.write(key, || self.main.remove_if_same(key, &ours));
                }
                written
            }
        };
        self.invalidate_others(key).await;
        written
    }

    /// The owner's part of a remove: memory, the storage tier (awaited), the other nodes
    /// (awaited, see [`Inner::invalidate_others`]).
    ///
    /// # Errors
    /// [`Error::StorageWrite`] when the storage tier did not take the delete in time: when it
    /// could not even be queued nothing changed; otherwise memory has dropped the key, and
    /// the delete was called off if it had not started (a running one may still land: the
    /// key then loads from its source).
    pub(super) async fn remove_as_owner(&self, key: &str) -> Result<()> {
        bump(&self.stats.removes);
        let memory = || {
            self.main.remove(key);
            self.hot.remove(key);
        };
        let written = match &self.storage {
            None => {
                self.write(key, memory);
                Ok(())
            }
            Some(tier) => {
                self.write_through(tier, key, tier::Op::Delete, memory)
                    .await?
                    .1
            }
        };
        self.invalidate_others(key).await;
        written
    }
}

impl Group {
    /// Sets `key` to `value` at its owner; every other node drops its copy. The value is
    /// encoded here, so the owner receives it as it will store it. Once encoded, the write
    /// runs to its end even if the caller goes away (it runs as a task of its own).
    ///
    /// Read-your-writes: after `Ok`, no node that answered the owner's invalidation, this
    /// one included, serves the old value from a copy.
    ///
    /// # Errors
    /// Key or value limits; the codec's error; the owner's error when it is another node and
    /// cannot be reached (a write is not silently kept on the wrong node).
    pub async fn set(&self, key: &str, value: Bytes, expires_at_ms: Option<u64>) -> Result<()> {
        self.check_key(key)?;
        let inner = &self.inner;
        inner.check_len(value.len())?;
        let stored = inner.encode(&value).await?;
        let (key, inner) = (key.to_owned(), inner.clone());
        self.inner
            .detached(async move {
                if let Some(peer) = inner.peers.as_ref().and_then(|p| p.pick(&key)) {
                    let entry = peer_entry(&stored, expires_at_ms);
                    return inner
                        .forward(&key, peer.set(&inner.name, &key, entry), false)
                        .await;
                }
                inner.store_as_owner(&key, stored, expires_at_ms).await
            })
            .await
    }

    /// Stores `entry` (sent by a peer) as the owner of `key`, after checking that it decodes,
    /// and tells the other nodes to drop their copies (to the end, even if the sender goes
    /// away).
    ///
    /// # Errors
    /// Key or value limits; [`Error::Codec`] when the entry's codec is unknown here or its
    /// bytes do not decode to what its header claims; [`Error::StorageWrite`] as for
    /// [`Group::set`].
    pub async fn set_as_owner(&self, key: &str, entry: PeerEntry) -> Result<()> {
        self.check_key(key)?;
        let expires_at_ms = entry.expires_at_ms;
        // Cached out of the request's body (a slice of the connection's read buffer) by
        // `CacheEntry::new`, which gives every payload an allocation of its own.
        let (_, stored) = self.inner.accept(entry).await?;
        let (key, inner) = (key.to_owned(), self.inner.clone());
        self.inner
            .detached(async move { inner.store_as_owner(&key, stored, expires_at_ms).await })
            .await
    }

    /// Removes `key` at its owner (the next get reloads it from the source); every other node
    /// drops its copy. Runs to its end even if the caller goes away; read-your-writes as for
    /// [`Group::set`].
    ///
    /// # Errors
    /// Key limits; the owner's error when it is another node and cannot be reached.
    pub async fn remove(&self, key: &str) -> Result<()> {
        self.check_key(key)?;
        let (key, inner) = (key.to_owned(), self.inner.clone());
        self.inner
            .detached(async move {
                if let Some(peer) = inner.peers.as_ref().and_then(|p| p.pick(&key)) {
                    // Our main cache too: this node may have owned the key before.
                    return inner
                        .forward(&key, peer.delete(&inner.name, &key), true)
                        .await;
                }
                inner.remove_as_owner(&key).await
            })
            .await
    }

    /// Removes `key` as its owner (memory, and the storage tier, awaited) and tells the other
    /// nodes to drop their copies (to the end, even if the sender goes away).
    ///
    /// # Errors
    /// Key limits; [`Error::StorageWrite`] as for [`Group::remove`].
    pub async fn remove_as_owner(&self, key: &str) -> Result<()> {
        self.check_key(key)?;
        let (key, inner) = (key.to_owned(), self.inner.clone());
        self.inner
            .detached(async move { inner.remove_as_owner(&key).await })
            .await
    }

    /// Drops this node's copies of `keys` (asked by their owner after a set or remove),
    /// including any the storage tier kept from a time this node owned them.
    ///
    /// Why storage too: only a key's owner writes it to storage, but ownership moves (ring
    /// changes, restarts), and a node reads its storage tier for every key it owns; a copy
    /// left from when this node owned the key would be served should it own the key again.
    /// The storage trait cannot tell whether it holds a key (and storage outlives the
    /// process), so this node cannot prove it never stored one: the delete is sent, but
    /// coalesced with one already queued, and dropped (counted) when the queue is full.
    pub fn invalidate(&self, keys: &[String]) {
        let inner = &self.inner;
        for key in keys {
            inner.write(key, || {
                inner.hot.remove(key);
                inner.main.remove(key);
                inner.unstore_in_background(key);
            });
        }
    }

    /// Drops every value (and remembered miss) this node holds for the group: main and hot
    /// cache, and the entries of its storage tier, e.g. after its getter was replaced
    /// (`reload?flush=true`). Every key's write generation is bumped first, all under their
    /// locks, so a load still running (on the old getter) cannot cache or store what it finds;
    /// callers waiting on it still get its answer.
    ///
    /// The storage tier's clear is queued behind the writes made before the flush and ahead of
    /// those made after (see `tier.rs`); reads skip the tier until it is done. This waits for
    /// it, all together up to the load timeout (`--request-timeout`).
    ///
    /// # Errors
    /// Memory is emptied whatever happens. [`Error::StorageNotCleared`]: the backend cannot
    /// clear (a plugin built without `storage-clear`; nothing is queued then), failed, or its
    /// queues stayed full; [`Error::StorageClearPending`]: the clear had not finished in time
    /// (it goes on).
    pub async fn flush(&self) -> Result<()> {
        let inner = &self.inner;
        let timeout = inner.options.load_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let Some(tier) = &inner.storage else {
            self.flush_memory(|| ());
            return Ok(());
        };
        if let Some(why) = tier.backend().cannot_clear() {
            return Err(self.flush_memory_only(Error::StorageNotCleared(why)));
        }
        let slots = match tokio::time::timeout_at(deadline, tier.reserve_clear()).await {
            Ok(Ok(slots)) => slots,
            Ok(Err(_)) => {
                let e = Error::StorageNotCleared("the storage tier has stopped".into());
                return Err(self.flush_memory_only(e));
            }
            Err(_) => {
                let e = Error::StorageNotCleared(format!(
                    "its write queues stayed full for {timeout:?} (--request-timeout)"
                ));
                return Err(self.flush_memory_only(e));
            }
        };
        let ack = self.flush_memory(|| slots.send());
        match tokio::time::timeout_at(deadline, ack).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(Error::StorageNotCleared(e.public_message())),
            Ok(Err(_)) => Err(Error::StorageNotCleared(
                "the storage tier has stopped".into(),
            )),
            Err(_) => Err(Error::StorageClearPending(timeout)),
        }
    }

    /// Drops the hot copies and bumps every write generation (so a load in flight caches
    /// nothing): the second pass of a cluster flush, once every node has flushed, for copies
    /// fetched from an owner that had not flushed yet.
    pub fn flush_hot(&self) {
        self.flush_memory_with(|| (), false);
    }

    /// Empties memory when the storage tier could not take the clear; returns `e`.
    pub(super) fn flush_memory_only(&self, e: Error) -> Error {
        self.flush_memory(|| ());
        e
    }

    /// Bumps every write generation and empties main and hot cache, all under every write
    /// lock; `under_locks` runs there too (it queues the storage tier's clear).
    pub(super) fn flush_memory<T>(&self, under_locks: impl FnOnce() -> T) -> T {
        self.flush_memory_with(under_locks, true)
    }

    /// [`Group::flush_memory`], of the hot cache only unless `main` is set.
    pub(super) fn flush_memory_with<T>(&self, under_locks: impl FnOnce() -> T, main: bool) -> T {
        let inner = &self.inner;
        let mut shards: Vec<MutexGuard<'_, u64>> =
            inner.generations.iter().map(|g| g.lock()).collect();
        for generation in &mut shards {
            **generation += 1;
        }
        let answer = under_locks();
        if main {
            inner.main.clear();
        }
        inner.hot.clear();
        drop(shards);
        answer
    }
}
