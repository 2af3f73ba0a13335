//! The storage tier's write path: writes run on a few bounded, ordered queues (in the order
//! they were made for each key), reads skip the tier for a key while a write to it is pending,
//! and shutdown drains what is queued.
//!
//! Why ordered: a `set` then a `remove` of one key make a put then a delete. Run as
//! independent tasks, the delete could land first and leave the removed value in storage,
//! where the next memory miss would find it. Here every key maps to one of a few queues (a
//! worker task each), so its writes land in order; and a read that finds a write pending
//! treats the tier as a miss (it may be about to change) and goes to the getter.
//!
//! Why bounded, and what happens when a queue is full (each queue holds [`QUEUE_CAPACITY`]
//! writes, and the tier's queues together hold at most `--storage-queue-bytes` of keys and
//! values, from when a write is queued until the backend has finished it: a count alone let
//! 4 × 1,024 writes of 8 MiB values, some left behind by clients that gave up, hold 32 GiB):
//! - A client's write (`set` and `remove` at the owner) waits for room (a slot and its bytes)
//!   and then for the backend to finish it, both within the request timeout: the node answers
//!   only once storage has it, so an acknowledged write survives a restart. A write that cannot
//!   be queued in time fails the request (503) before anything changed.
//! - A getter load's write-through is best effort: with no room it is dropped (counted as
//!   `storage_writes_dropped`, logged). The load went to the getter because the tier had no
//!   live copy it could trust, so dropping the copy loses a future storage hit, never serves
//!   stale data.
//! - A non-owner's delete (after the owner's invalidation) is coalesced with a delete already
//!   queued for the key, and dropped (counted, logged) when there is no room: its only purpose
//!   is to keep a copy from a time this node owned the key from being read should it own the
//!   key again, so a dropped one is as harmful as an invalidation lost on the network, which
//!   the cluster already tolerates (see `Group::invalidate`).
//!
//! The writer side takes a queue slot ([`StorageTier::reserve`] / [`StorageTier::try_reserve`])
//! *before* taking the key's write lock, and sends into it under the lock: a write never waits
//! while holding the lock, and the queue still sees a key's writes in generation order.
//!
//! A clear (a group flush) is a barrier across the queues: it takes a slot in every queue
//! ([`StorageTier::reserve_clear`]) and is sent into all of them under every write lock of the
//! group, so each queue has the writes made before the flush ahead of it and those made after
//! behind it. Each worker stops at it; the last to arrive asks the backend to clear the group,
//! and then all go on. Until the clear has finished, every read treats the tier as a miss.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use tokio::sync::{Barrier, Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use xxhash_rust::xxh3::xxh3_64;

use super::stats::{GroupStats, bump};
use super::{PeerEntry, Storage};
use crate::error::{Error, Result};

/// Ordered queues per group; a key always uses the same one.
pub(super) const SHARDS: usize = 4;

/// Writes one queue holds before writers wait (client writes) or drop (background writes).
pub(super) const QUEUE_CAPACITY: usize = 1024;

/// Default byte budget of one group's queued storage writes (`--storage-queue-bytes`).
pub(super) const DEFAULT_QUEUE_BYTES: usize = 64 << 20;

/// What a write does to the backend.
#[derive(Debug)]
pub(super) enum Op {
    /// Store the entry under the key.
    Put(PeerEntry),
    /// Remove the key.
    Delete,
}

/// What a queue's worker runs next.
#[derive(Debug)]
enum Job {
    /// A write of one key.
    Write(Write),
    /// A clear of the group: a barrier across the queues (see the module docs).
    Clear(Arc<ClearBarrier>),
}

/// One clear of the group, sent into every queue.
#[derive(Debug)]
struct ClearBarrier {
    /// Every worker waits here; the leader then runs the clear.
    arrived: Barrier,
    /// Every worker waits here until the leader has finished the clear.
    finished: Barrier,
    /// Told the backend's answer.
    done: Mutex<Option<oneshot::Sender<Result<()>>>>,
}

/// One write to the backend.
#[derive(Debug)]
struct Write {
    /// The key written.
    key: String,
    /// Put or delete.
    op: Op,
    /// Told the backend's answer, when a caller waits for it.
    done: Option<oneshot::Sender<Result<()>>>,
    /// Where the write is (queued, running, done), and whether its caller gave up on it.
    state: Option<Arc<AtomicU8>>,
    /// The write's bytes in the tier's budget, given back when the worker has finished it.
    _bytes: OwnedSemaphorePermit,
}

/// The backend's answer to one write, for the caller that waits for it.
pub(super) type Ack = oneshot::Receiver<Result<()>>;

/// States of a client's write ([`Write::state`]).
const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
/// Its caller gave up before it ran: the worker skips it.
const CANCELLED: u8 = 3;
/// Its caller gave up while it ran: a put that then succeeds is undone by a delete.
const ABANDONED: u8 = 4;

/// A client's write in flight: its answer to come, and the means to give up on it.
pub(super) struct PendingWrite {
    /// The backend's answer.
    pub(super) ack: Ack,
    /// Shared with the worker.
    state: Arc<AtomicU8>,
}

/// What giving up on a write ([`PendingWrite::give_up`]) came to.
#[derive(Debug)]
pub(super) enum GaveUp {
    /// It had not started: it never will.
    Cancelled,
    /// It was running: should it succeed, it is undone (a put is followed by a delete of its
    /// key, ahead of the key's later writes; a delete stays done).
    Abandoned,
    /// It had finished: here is its answer.
    Finished(Result<()>),
}

impl PendingWrite {
    /// Gives up on the write (its caller answers with an error): see [`GaveUp`].
    pub(super) async fn give_up(self) -> GaveUp {
        let cas = |from, to| {
            self.state
                .compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        };
        if cas(QUEUED, CANCELLED) {
            return GaveUp::Cancelled;
        }
        if cas(RUNNING, ABANDONED) {
            return GaveUp::Abandoned;
        }
        // Done: the worker sends its answer right after marking it so, with no await between.
        GaveUp::Finished(
            self.ack.await.unwrap_or_else(|_| {
                Err(Error::StorageWrite("the storage tier has stopped".into()))
            }),
        )
    }
}

/// What is pending for one key.
#[derive(Debug, Default)]
struct KeyPending {
    /// Writes queued or running.
    writes: usize,
    /// Whether the last of them is a delete: another delete would then change nothing.
    last_is_delete: bool,
}

/// Keys with writes queued or running.
#[derive(Debug, Default)]
struct Pending {
    /// Key → writes queued or running for it.
    keys: Mutex<HashMap<String, KeyPending>>,
    /// Writes queued or running, all keys.
    total: AtomicUsize,
    /// Woken when `total` drops to zero, for [`StorageTier::drain`].
    idle: Notify,
    /// Clears queued or running: until they are done no key's stored entry can be trusted.
    clearing: AtomicUsize,
}

impl Pending {
    fn keys(&self) -> parking_lot::MutexGuard<'_, HashMap<String, KeyPending>> {
        self.keys.lock()
    }

    fn add(&self, key: &str, op: &Op) {
        let mut keys = self.keys();
        let pending = keys.entry(key.to_owned()).or_default();
        pending.writes += 1;
        pending.last_is_delete = matches!(op, Op::Delete);
        self.total.fetch_add(1, Ordering::SeqCst);
    }

    fn done(&self, key: &str) {
        let mut keys = self.keys();
        if let Some(pending) = keys.get_mut(key) {
            pending.writes -= 1;
            if pending.writes == 0 {
                keys.remove(key);
            }
        }
        drop(keys);
        self.one_less();
    }

    fn add_clear(&self) {
        self.clearing.fetch_add(1, Ordering::SeqCst);
        self.total.fetch_add(1, Ordering::SeqCst);
    }

    fn clear_done(&self) {
        self.clearing.fetch_sub(1, Ordering::SeqCst);
        self.one_less();
    }

    fn one_less(&self) {
        if self.total.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    fn delete_pending(&self, key: &str) -> bool {
        self.keys().get(key).is_some_and(|p| p.last_is_delete)
    }
}

/// A group's storage backend with its ordered background writes.
pub(super) struct StorageTier {
    /// The backend.
    backend: Arc<dyn Storage>,
    /// The group, for the backend's calls and logs.
    group: Arc<str>,
    /// The group's counters (storage errors are counted by the workers).
    stats: Arc<GroupStats>,
    /// The queues, started on the first write (which runs inside the tokio runtime).
    shards: OnceLock<Vec<mpsc::Sender<Job>>>,
    /// Writes not yet done, shared with the workers.
    pending: Arc<Pending>,
    /// Bytes (keys and values) the queued and running writes may hold, all queues together:
    /// each write holds its size from when it is queued until the worker has finished it.
    bytes: Arc<Semaphore>,
    /// The budget `bytes` started with: a write larger than all of it is charged all of it (so
    /// it runs alone rather than never).
    queue_bytes: usize,
}

impl std::fmt::Debug for StorageTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageTier")
            .field("backend", &self.backend.name())
            .field("pending", &self.pending.total.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Room for one write in a key's queue, taken before the key's write lock.
pub(super) struct Slot<'a> {
    /// The reserved place in the queue.
    permit: mpsc::Permit<'a, Job>,
    /// Where the write is recorded as pending.
    pending: &'a Pending,
    /// The write's bytes in the tier's budget.
    bytes: OwnedSemaphorePermit,
}

impl Slot<'_> {
    /// Queues `op` for `key` and returns the backend's answer to come, which the caller may
    /// give up on ([`PendingWrite::give_up`]).
    pub(super) fn send(self, key: &str, op: Op) -> PendingWrite {
        let (done, ack) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        self.send_inner(key, op, Some((done, state.clone())));
        PendingWrite { ack, state }
    }

    /// Queues `op` for `key`; nobody waits for it.
    pub(super) fn send_in_background(self, key: &str, op: Op) {
        self.send_inner(key, op, None);
    }

    fn send_inner(
        self,
        key: &str,
        op: Op,
        waiter: Option<(oneshot::Sender<Result<()>>, Arc<AtomicU8>)>,
    ) {
        self.pending.add(key, &op);
        let (done, state) = waiter.unzip();
        self.permit.send(Job::Write(Write {
            key: key.to_owned(),
            op,
            done,
            state,
            _bytes: self.bytes,
        }));
    }
}

/// Room for a clear in every queue, taken before the group's write locks.
pub(super) struct ClearSlots<'a> {
    /// One reserved place per queue.
    permits: Vec<mpsc::Permit<'a, Job>>,
    /// Where the clear is recorded as pending.
    pending: &'a Pending,
}

impl ClearSlots<'_> {
    /// Queues the clear behind every write queued so far (call it under all of the group's
    /// write locks) and returns the backend's answer to come. From now until it is done, reads
    /// skip the tier.
    pub(super) fn send(self) -> Ack {
        let (done, ack) = oneshot::channel();
        let queues = self.permits.len();
        let barrier = Arc::new(ClearBarrier {
            arrived: Barrier::new(queues),
            finished: Barrier::new(queues),
            done: Mutex::new(Some(done)),
        });
        self.pending.add_clear();
        for permit in self.permits {
            permit.send(Job::Clear(barrier.clone()));
        }
        ack
    }
}

/// What `StorageTier::drain` got done before its deadline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Writes that were pending when the drain began and finished in time.
    pub written: usize,
    /// Writes still pending at the deadline.
    pub abandoned: usize,
}

impl StorageTier {
    /// `queue_bytes`: what the queued writes may hold, all queues together (at least 1).
    pub(super) fn new(
        backend: Arc<dyn Storage>,
        group: &str,
        stats: Arc<GroupStats>,
        queue_bytes: usize,
    ) -> Self {
        let queue_bytes = queue_bytes.clamp(1, u32::MAX as usize);
        StorageTier {
            backend,
            group: group.into(),
            stats,
            shards: OnceLock::new(),
            pending: Arc::default(),
            bytes: Arc::new(Semaphore::new(queue_bytes)),
            queue_bytes,
        }
    }

    /// What `op` on `key` holds of the byte budget while it is queued: the key and the
    /// value, capped at the whole budget.
    fn cost(&self, key: &str, op: &Op) -> u32 {
        let value = match op {
            Op::Put(entry) => entry.value.len() + entry.codec.len(),
            Op::Delete => 0,
        };
        let bytes = key.len().saturating_add(value).min(self.queue_bytes);
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }

    /// The backend, for reads.
    pub(super) fn backend(&self) -> &dyn Storage {
        &*self.backend
    }

    /// Whether a clear is queued or running.
    #[cfg(test)]
    pub(super) fn clearing(&self) -> bool {
        self.pending.clearing.load(Ordering::SeqCst) > 0
    }

    /// Whether a write to `key`, or a clear, is queued or running: what the backend holds for
    /// it may be about to change, so a read must not trust it.
    pub(super) fn is_pending(&self, key: &str) -> bool {
        self.pending.clearing.load(Ordering::SeqCst) > 0 || self.pending.keys().contains_key(key)
    }

    /// Waits for room for `op` in `key`'s queue: its bytes, then a slot (bound it with a
    /// timeout).
    ///
    /// # Errors
    /// [`Error::StorageWrite`] when the queue's worker is gone (the runtime is shutting down).
    pub(super) async fn reserve(&self, key: &str, op: &Op) -> Result<Slot<'_>> {
        let stopped = || Error::StorageWrite("the storage tier has stopped".into());
        let bytes = self
            .bytes
            .clone()
            .acquire_many_owned(self.cost(key, op))
            .await
            .map_err(|_| stopped())?;
        let permit = self.queue(key).reserve().await.map_err(|_| stopped())?;
        Ok(Slot {
            permit,
            pending: &self.pending,
            bytes,
        })
    }

    /// Waits for a slot in every queue, for a clear (bound it with a timeout).
    ///
    /// # Errors
    /// [`Error::StorageWrite`] when a queue's worker is gone (the runtime is shutting down).
    pub(super) async fn reserve_clear(&self) -> Result<ClearSlots<'_>> {
        let mut permits = Vec::with_capacity(SHARDS);
        for queue in self.queues() {
            let permit = queue
                .reserve()
                .await
                .map_err(|_| Error::StorageWrite("the storage tier has stopped".into()))?;
            permits.push(permit);
        }
        Ok(ClearSlots {
            permits,
            pending: &self.pending,
        })
    }

    /// Room for `op` in `key`'s queue (its bytes and a slot) if there is some now; otherwise
    /// the write is dropped, counted and logged as `what`.
    pub(super) fn try_reserve(&self, key: &str, op: &Op, what: &str) -> Option<Slot<'_>> {
        let dropped = |full: &str| {
            bump(&self.stats.storage_writes_dropped);
            tracing::warn!(group = %self.group, storage = self.backend.name(), "storage tier queue {full}; dropping {what}");
        };
        let Ok(bytes) = self
            .bytes
            .clone()
            .try_acquire_many_owned(self.cost(key, op))
        else {
            dropped("bytes full");
            return None;
        };
        match self.queue(key).try_reserve() {
            Ok(permit) => Some(Slot {
                permit,
                pending: &self.pending,
                bytes,
            }),
            Err(mpsc::error::TrySendError::Full(())) => {
                dropped("full");
                None
            }
            // The worker is gone (the runtime is shutting down): nothing would run it.
            Err(mpsc::error::TrySendError::Closed(())) => None,
        }
    }

    /// Whether the last write queued for `key` is a delete that has not finished: a new
    /// delete would change nothing.
    pub(super) fn delete_pending(&self, key: &str) -> bool {
        self.pending.delete_pending(key)
    }

    /// Waits until every write queued so far (and any queued meanwhile) is done, or until
    /// `deadline`.
    pub(super) async fn drain(&self, deadline: tokio::time::Instant) -> Drained {
        let at_start = self.pending.total.load(Ordering::SeqCst);
        let idle = async {
            loop {
                let notified = self.pending.idle.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                if self.pending.total.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout_at(deadline, idle).await;
        let abandoned = self.pending.total.load(Ordering::SeqCst);
        Drained {
            written: at_start.saturating_sub(abandoned),
            abandoned,
        }
    }

    /// The queue of `key`, starting the workers on first use.
    fn queue(&self, key: &str) -> &mpsc::Sender<Job> {
        let shards = self.queues();
        let shard = (xxh3_64(key.as_bytes()) % SHARDS as u64) as usize;
        &shards[shard]
    }

    /// Every queue, starting the workers on first use.
    fn queues(&self) -> &[mpsc::Sender<Job>] {
        self.shards.get_or_init(|| {
            (0..SHARDS)
                .map(|_| {
                    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
                    tokio::spawn(worker(
                        rx,
                        self.backend.clone(),
                        self.group.clone(),
                        self.stats.clone(),
                        self.pending.clone(),
                    ));
                    tx
                })
                .collect()
        })
    }
}

/// A backend call whose panic is an error: a worker must outlive its calls, or the writes
/// queued behind it, and a clear waiting for it at the barrier, would wait forever.
async fn unwound(call: futures::future::BoxFuture<'_, Result<()>>) -> Result<()> {
    use futures::FutureExt as _;
    std::panic::AssertUnwindSafe(call)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err(Error::StorageWrite("the storage backend panicked".into())))
}

/// Runs one queue's jobs in order until the group (every sender) is dropped.
async fn worker(
    mut jobs: mpsc::Receiver<Job>,
    backend: Arc<dyn Storage>,
    group: Arc<str>,
    stats: Arc<GroupStats>,
    pending: Arc<Pending>,
) {
    while let Some(job) = jobs.recv().await {
        let write = match job {
            Job::Write(write) => write,
            Job::Clear(clear) => {
                if clear.arrived.wait().await.is_leader() {
                    let result = unwound(backend.clear(&group)).await;
                    match &result {
                        Ok(()) => {
                            tracing::info!(%group, storage = backend.name(), "storage tier cleared")
                        }
                        Err(e) => {
                            bump(&stats.storage_errors);
                            tracing::warn!(%group, storage = backend.name(), error = %e, "storage clear failed; the tier keeps its entries");
                        }
                    }
                    pending.clear_done();
                    let done = clear.done.lock().take();
                    if let Some(done) = done {
                        let _ = done.send(result);
                    }
                }
                clear.finished.wait().await;
                continue;
            }
        };
        let state = write.state.as_deref();
        let swap = |from, to| {
            state.is_none_or(|s| {
                s.compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            })
        };
        if !swap(QUEUED, RUNNING) {
            // Its caller gave up before it ran and answered with an error: it must not land.
            bump(&stats.storage_writes_abandoned);
            pending.done(&write.key);
            continue;
        }
        let is_put = matches!(write.op, Op::Put(_));
        let (result, what) = match write.op {
            Op::Put(entry) => (unwound(backend.set(&group, &write.key, entry)).await, "put"),
            Op::Delete => (unwound(backend.delete(&group, &write.key)).await, "delete"),
        };
        if let Err(e) = &result {
            bump(&stats.storage_errors);
            tracing::warn!(%group, storage = backend.name(), error = %e, "storage {what} failed");
        }
        if !swap(RUNNING, DONE) {
            // Its caller gave up while it ran (and answered with an error): a put that landed
            // is taken out again, before the key's next write, so it never comes back.
            bump(&stats.storage_writes_abandoned);
            if is_put && result.is_ok() {
                if let Err(e) = unwound(backend.delete(&group, &write.key)).await {
                    bump(&stats.storage_errors);
                    tracing::warn!(%group, storage = backend.name(), error = %e, "storage delete of an abandoned put failed; it may be served after the key leaves memory");
                } else {
                    tracing::info!(%group, storage = backend.name(), "storage put finished after its client was told it failed; deleted again");
                }
            }
        }
        pending.done(&write.key);
        if let Some(done) = write.done {
            // The caller may have given up waiting (timeout); the write is done all the same.
            let _ = done.send(result);
        }
    }
}
