//! A stopping node's handoff: during its shutdown grace it sends the values it owns to their
//! next owners, and its copies of other nodes' keys to their owners ([`Groups::hand_off`]),
//! which keep them ([`Group::take_handoff`]).
//! Where they help: a node whose request to a key's owner failed (the owner is down) asks the
//! key's next owner before it loads ([`Inner::load_from_successor`]), and a node that comes back
//! at the same address takes its keys back from there (warm handoff on joining, `load.rs`).

use std::collections::HashMap;
use std::collections::hash_map::Entry as Slot;
use std::sync::Arc;

use super::registry::Groups;
use super::stats::add;
use super::{CacheKind, Group, Inner, Value, len64, peer_entry};
use crate::error::Result;
use crate::seam::{PeerEntry, RemotePeer};

/// Most entries in one handoff request (the peer protocol takes at most 1000 keys at once).
pub const HANDOFF_BATCH_ENTRIES: usize = 256;

/// Bytes (keys and stored values) past which a handoff request is sent.
pub const HANDOFF_BATCH_BYTES: usize = 1024 * 1024;

/// What a handoff sent, summed over groups.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HandedOff {
    /// Entries their next owner took.
    pub entries: u64,
    /// Their keys' and stored values' bytes.
    pub bytes: u64,
    /// Entries not handed over: past the byte budget or the deadline, or refused or not
    /// answered by their next owner.
    pub skipped: u64,
}

impl std::ops::AddAssign for HandedOff {
    fn add_assign(&mut self, other: Self) {
        self.entries += other.entries;
        self.bytes += other.bytes;
        self.skipped += other.skipped;
    }
}

/// One next owner's batch being filled.
struct Batch {
    peer: Arc<dyn RemotePeer>,
    entries: Vec<(String, PeerEntry)>,
    bytes: usize,
}

impl Groups {
    /// Hands every group's fresh values to the nodes that should hold them when this one is
    /// gone: a key this node owns to its next owner, a copy of another node's key to that
    /// owner; at most `budget` bytes (keys and stored values) in all, main cache first, until
    /// `deadline`. Negative entries stay; so does everything on a node alone.
    pub async fn hand_off(&self, budget: u64, deadline: tokio::time::Instant) -> HandedOff {
        let mut left = budget;
        let mut total = HandedOff::default();
        for group in self.iter() {
            total += group.hand_off(&mut left, deadline).await;
        }
        total
    }
}

impl Group {
    /// [`Groups::hand_off`] for this group, spending `budget`.
    pub async fn hand_off(&self, budget: &mut u64, deadline: tokio::time::Instant) -> HandedOff {
        let inner = &self.inner;
        let mut report = HandedOff::default();
        let Some(peers) = inner.peers.as_ref() else {
            return report;
        };
        if peers.others().is_empty() {
            // A node alone (or the last one): nobody to hand to, so the caches are not walked.
            return report;
        }
        // Chosen first, sent after: the caches' iterators are not held across the sends. The
        // main cache's values first, then the hot copies.
        let mut chosen = Vec::new();
        let now = inner.clock.now_ms();
        for tier in [CacheKind::Main, CacheKind::Hot] {
            for (key, entry) in inner.cache(tier).fresh_entries(now) {
                let Some(stored) = entry.stored() else {
                    continue;
                };
                let size = len64(key.len() + stored.len());
                if size > *budget {
                    report.skipped += 1;
                    continue;
                }
                *budget -= size;
                chosen.push((key, peer_entry(&stored, entry.expires_at_ms())));
            }
        }
        let mut batches: HashMap<String, Batch> = HashMap::new();
        for (key, entry) in chosen {
            // A key another node owns goes back to it (it may not hold it: a copy this node
            // kept while that node was down, or one handed here by a node that stopped before
            // it); this node's own keys go to their next owner.
            let Some(next) = peers.pick(&key).or_else(|| peers.successor(&key)) else {
                continue;
            };
            let size = key.len() + entry.value.len();
            let batch = match batches.entry(next.id().to_owned()) {
                Slot::Occupied(slot) => slot.into_mut(),
                Slot::Vacant(slot) => slot.insert(Batch {
                    peer: next,
                    entries: Vec::new(),
                    bytes: 0,
                }),
            };
            batch.entries.push((key, entry));
            batch.bytes += size;
            if batch.entries.len() >= HANDOFF_BATCH_ENTRIES || batch.bytes >= HANDOFF_BATCH_BYTES {
                let full = Batch {
                    peer: batch.peer.clone(),
                    entries: std::mem::take(&mut batch.entries),
                    bytes: std::mem::take(&mut batch.bytes),
                };
                report += self.send_handoff(full, deadline).await;
            }
        }
        for (_, batch) in batches {
            if !batch.entries.is_empty() {
                report += self.send_handoff(batch, deadline).await;
            }
        }
        add(&inner.stats.handoff_pushed, report.entries);
        add(&inner.stats.handoff_push_skipped, report.skipped);
        report
    }

    /// Sends one batch, unless `deadline` passed; a failure or a timeout skips its entries.
    async fn send_handoff(&self, batch: Batch, deadline: tokio::time::Instant) -> HandedOff {
        let count = len64(batch.entries.len());
        let failed = HandedOff {
            skipped: count,
            ..HandedOff::default()
        };
        if tokio::time::Instant::now() >= deadline {
            return failed;
        }
        let sent = batch.peer.take_handoff(&self.inner.name, batch.entries);
        match tokio::time::timeout_at(deadline, sent).await {
            Ok(Ok(_kept)) => HandedOff {
                entries: count,
                bytes: len64(batch.bytes),
                skipped: 0,
            },
            Ok(Err(e)) => {
                tracing::warn!(group = %self.inner.name, peer = batch.peer.id(), error = %e, "handing entries to their next owner failed; they load again");
                failed
            }
            Err(_) => {
                tracing::warn!(group = %self.inner.name, peer = batch.peer.id(), "handing entries to their next owner ran past the shutdown grace; they load again");
                failed
            }
        }
    }

    /// Keeps entries a stopping node handed over: in the main cache for keys this node owns
    /// now, else as hot copies (the stopped node's keys, still its own on a static ring).
    /// A value expired, past the value limit or not intact is left out, and so is a key this
    /// node holds already (its value may be newer). Returns how many it kept.
    ///
    /// # Errors
    /// None yet: a bad entry is skipped, never fails the others.
    pub async fn take_handoff(&self, entries: Vec<(String, PeerEntry)>) -> Result<usize> {
        let inner = &self.inner;
        let mut kept = 0;
        for (key, entry) in entries {
            if self.check_key(&key).is_err()
                || entry
                    .expires_at_ms
                    .is_some_and(|at| at <= inner.clock.now_ms())
            {
                continue;
            }
            let tier = if inner.peers.as_ref().is_some_and(|p| p.pick(&key).is_some()) {
                CacheKind::Hot
            } else {
                CacheKind::Main
            };
            if inner.cache(tier).get(&key).is_some() {
                continue;
            }
            let generation = inner.generation(&key);
            let expires_at_ms = entry.expires_at_ms;
            match inner.accept(entry).await {
                Ok((_, stored)) => {
                    inner.remember(
                        tier,
                        &key,
                        Some((&stored, expires_at_ms)),
                        generation,
                        false,
                        None,
                    );
                    kept += 1;
                }
                Err(e) => {
                    tracing::warn!(group = %inner.name, error = %e, "a handed-over value does not decode; left out");
                }
            }
        }
        add(&inner.stats.handoff_received, len64(kept));
        Ok(kept)
    }
}

impl Inner {
    /// The owner failed: asks the key's next owner (where a stopping owner handed it over),
    /// within the handoff timeout, before the caller loads it. `None` when this node is the
    /// next owner (its caches missed already) or that node holds nothing.
    pub(super) async fn load_from_successor(&self, key: &str) -> Option<Value> {
        let next = self.peers.as_ref()?.successor(key)?;
        self.peek_at(key, &[next]).await
    }
}
