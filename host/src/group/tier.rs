//! The storage tier's write path: puts and deletes run in the background, in the order they
//! were made for each key, and reads skip the tier for a key while a write to it is pending.
//!
//! Why: a `set` then a `remove` of one key spawn a put then a delete. Run as independent tasks,
//! the delete could land first and leave the removed value in storage, where the next memory
//! miss would find it. Here every key maps to one of a few ordered queues (a worker task each),
//! so its writes land in order; and a read that finds a write pending treats the tier as a miss
//! (it may be about to change) and goes to the getter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio::sync::mpsc;
use xxhash_rust::xxh3::xxh3_64;

use super::stats::{GroupStats, bump};
use super::{PeerEntry, Storage};

/// Ordered queues per group; a key always uses the same one.
const SHARDS: usize = 4;

/// Writes queued or running per group past which puts are turned into deletes: a slow backend
/// then loses entries (they stay in memory) instead of the node growing a backlog without
/// bound. A delete is never dropped, or storage could keep a value that was removed.
const MAX_PENDING: usize = 4096;

/// One write to the backend.
#[derive(Debug)]
enum Write {
    /// Store the entry under the key.
    Put(String, PeerEntry),
    /// Remove the key.
    Delete(String),
}

impl Write {
    fn key(&self) -> &str {
        match self {
            Write::Put(key, _) | Write::Delete(key) => key,
        }
    }
}

/// Keys with writes queued or running.
#[derive(Debug, Default)]
struct Pending {
    /// Key → writes queued or running for it.
    keys: Mutex<HashMap<String, usize>>,
    /// Writes queued or running, all keys.
    total: AtomicUsize,
}

impl Pending {
    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, key: &str) {
        *self.keys().entry(key.to_owned()).or_default() += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    fn done(&self, key: &str) {
        let mut keys = self.keys();
        if let Some(n) = keys.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                keys.remove(key);
            }
        }
        self.total.fetch_sub(1, Ordering::Relaxed);
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
    shards: OnceLock<Vec<mpsc::UnboundedSender<Write>>>,
    /// Writes not yet done, shared with the workers.
    pending: Arc<Pending>,
}

impl std::fmt::Debug for StorageTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageTier")
            .field("backend", &self.backend.name())
            .field("pending", &self.pending.total.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl StorageTier {
    pub(super) fn new(backend: Arc<dyn Storage>, group: &str, stats: Arc<GroupStats>) -> Self {
        StorageTier {
            backend,
            group: group.into(),
            stats,
            shards: OnceLock::new(),
            pending: Arc::default(),
        }
    }

    /// The backend, for reads.
    pub(super) fn backend(&self) -> &dyn Storage {
        &*self.backend
    }

    /// Whether a write to `key` is queued or running: what the backend holds for it may be
    /// about to change, so a read must not trust it.
    pub(super) fn is_pending(&self, key: &str) -> bool {
        self.pending.keys().contains_key(key)
    }

    /// Stores `entry` under `key` in the background, after any earlier write to `key`.
    pub(super) fn put(&self, key: &str, entry: PeerEntry) {
        if self.pending.total.load(Ordering::Relaxed) >= MAX_PENDING {
            bump(&self.stats.storage_errors);
            tracing::warn!(group = %self.group, storage = self.backend.name(), "storage tier backlog full; dropping its copy instead of writing it");
            self.send(Write::Delete(key.to_owned()));
            return;
        }
        self.send(Write::Put(key.to_owned(), entry));
    }

    /// Deletes `key` in the background, after any earlier write to `key`.
    pub(super) fn delete(&self, key: &str) {
        self.send(Write::Delete(key.to_owned()));
    }

    fn send(&self, write: Write) {
        let shards = self.shards.get_or_init(|| {
            (0..SHARDS)
                .map(|_| {
                    let (tx, rx) = mpsc::unbounded_channel();
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
        });
        let shard = (xxh3_64(write.key().as_bytes()) % SHARDS as u64) as usize;
        self.pending.add(write.key());
        if let Err(mpsc::error::SendError(write)) = shards[shard].send(write) {
            // The worker is gone (the runtime is shutting down): nothing will run it.
            self.pending.done(write.key());
        }
    }
}

/// Runs one queue's writes in order until the group (every sender) is dropped.
async fn worker(
    mut writes: mpsc::UnboundedReceiver<Write>,
    backend: Arc<dyn Storage>,
    group: Arc<str>,
    stats: Arc<GroupStats>,
    pending: Arc<Pending>,
) {
    while let Some(write) = writes.recv().await {
        let (result, what) = match &write {
            Write::Put(key, entry) => (backend.put(&group, key, entry.clone()).await, "put"),
            Write::Delete(key) => (backend.delete(&group, key).await, "delete"),
        };
        if let Err(e) = result {
            bump(&stats.storage_errors);
            tracing::warn!(%group, storage = backend.name(), error = %e, "storage {what} failed");
        }
        pending.done(write.key());
    }
}
