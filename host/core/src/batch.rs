//! How one batch request is answered without letting it grow without bound: the keys are
//! de-duplicated, loaded a few at a time, and each answer is charged against a byte budget
//! (`--max-batch-bytes`) as soon as it is encoded.
//!
//! Both batch routes use [`answer`]: the API's `POST /api/v1/groups/{g}/batch` (JSON items) and
//! the peer protocol's `POST /_geecache/{g}/_batch` (protobuf items). Without it, one 10 KB
//! request naming an 8 MiB key a thousand times made the node build an 8 GB answer.
//!
//! The rules:
//!
//! - a key named twice is loaded and answered once, at its first position;
//! - an item is counted by its encoded size in the answer (JSON escaping and base64 included);
//! - an item is charged when its load finishes, not when its turn in the answer comes: items
//!   finished early wait for a slow key before them, and they must not wait uncounted (a slow
//!   first key followed by 63 cached 8 MiB values would otherwise hold gigabytes);
//! - keys are answered while the budget lasts: the first item that does not fit in what is
//!   left spends it. That item, every item whose load finishes after it, and every key whose
//!   load had not started are answered with [`Error::BatchBudget`] (code `too_large`); items
//!   refused are dropped at once. When loads finish in key order (one at a time, or all of
//!   them cached) the answered keys are a prefix of the keys; when several loads race, which
//!   keys are cut may depend on the order in which they finish;
//! - no load is started once the budget is spent, and at most `concurrency` items are loaded or
//!   waiting for their turn at any time, so what the node holds for one batch is bounded by the
//!   budget plus the values being loaded and encoded right now (at most `concurrency`).

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt as _;

use crate::error::Error;

/// Most keys one batch may ask for: a client's batch request, and a peer's `_batch` or
/// `_invalidate` request (the peer client splits longer lists).
pub const MAX_BATCH_KEYS: usize = 1000;

/// Default byte budget of one batch answer (`--max-batch-bytes`).
pub const DEFAULT_MAX_BATCH_BYTES: usize = 4 << 20;

/// The keys in order of first occurrence, each once.
pub fn dedup_keys(keys: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::with_capacity(keys.len());
    keys.into_iter()
        .filter(|k| seen.insert(k.clone()))
        .collect()
}

/// What became of one key of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot<T> {
    /// The key's answer item (a value, a "missing", or the key's own error), within budget.
    Answered(T),
    /// The budget was spent before this key's turn: answer it with [`Error::BatchBudget`].
    OverBudget,
}

/// Answers `keys` (de-duplicated first) with `load`, at most `concurrency` at once, keeping the
/// items' total `size` within `budget` bytes: see the module docs for the rules.
///
/// `load` turns a key into its answer item, already encoded as far as its size goes (so a value
/// is not held twice: as bytes and as its JSON text).
pub async fn answer<T, F, Fut>(
    keys: Vec<String>,
    budget: usize,
    concurrency: usize,
    load: F,
    size: impl Fn(&T) -> usize,
) -> Vec<(String, Slot<T>)>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = T>,
{
    let keys = dedup_keys(keys);
    let left = Budget::new(budget);
    let (load, size, left) = (&load, &size, &left);
    futures::stream::iter(keys)
        .map(|key| async move {
            // Read when a load would start (the stream polls a future first when it takes it in).
            if left.is_spent() {
                return (key, Slot::OverBudget);
            }
            let item = load(key.clone()).await;
            // Charged now, before the item waits for its turn: what does not fit is dropped.
            let slot = if left.charge(size(&item)) {
                Slot::Answered(item)
            } else {
                Slot::OverBudget
            };
            (key, slot)
        })
        .buffered(concurrency.max(1))
        .collect()
        .await
}

/// What is left of one batch's byte budget, shared by its loads.
#[derive(Debug)]
struct Budget {
    /// Bytes left plus one; zero once an item did not fit (spent: nothing is charged any more).
    /// One number, so "charge" and "spend" are a single atomic step each.
    left_plus_one: AtomicUsize,
}

impl Budget {
    fn new(budget: usize) -> Self {
        Budget {
            left_plus_one: AtomicUsize::new(budget.saturating_add(1)),
        }
    }

    /// Whether an item did not fit: no load should start any more.
    fn is_spent(&self) -> bool {
        self.left_plus_one.load(Ordering::SeqCst) == 0
    }

    /// Takes `bytes` from what is left and returns true; or, when they do not fit (or the
    /// budget is already spent), spends the budget and returns false.
    fn charge(&self, bytes: usize) -> bool {
        let before =
            self.left_plus_one
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| match v {
                    0 => None,
                    v if bytes < v => Some(v - bytes),
                    _ => Some(0),
                });
        matches!(before, Ok(v) if bytes < v)
    }
}

/// The error a key past the budget is answered with.
pub fn over_budget(budget: usize) -> Error {
    Error::BatchBudget { limit: budget }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use parking_lot::Mutex;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|k| (*k).to_string()).collect()
    }

    #[test]
    fn duplicates_are_dropped_keeping_the_first_position() {
        assert_eq!(
            dedup_keys(keys(&["b", "a", "b", "c", "a"])),
            keys(&["b", "a", "c"])
        );
    }

    #[tokio::test]
    async fn a_key_named_a_thousand_times_is_loaded_once() {
        let loads = Mutex::new(Vec::new());
        let out = answer(
            vec!["big".to_string(); 1000],
            100,
            16,
            |k| {
                loads.lock().push(k);
                async { 10usize }
            },
            |n| *n,
        )
        .await;
        assert_eq!(out, vec![("big".to_string(), Slot::Answered(10))]);
        assert_eq!(loads.lock().len(), 1);
    }

    #[tokio::test]
    async fn past_the_budget_keys_are_refused_and_not_loaded() {
        let loads = Mutex::new(0usize);
        let names: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        let out = answer(
            names,
            25,
            1,
            |_| {
                *loads.lock() += 1;
                async { 10usize }
            },
            |n| *n,
        )
        .await;
        let answered = out
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Answered(_)))
            .count();
        assert_eq!(answered, 2, "10 + 10 fit in 25, the third does not");
        assert!(
            out[2..].iter().all(|(_, s)| *s == Slot::OverBudget),
            "every key after the first that does not fit is refused"
        );
        assert_eq!(*loads.lock(), 3, "no load starts once it is spent");
    }

    #[tokio::test]
    async fn the_cut_is_the_same_whatever_the_concurrency() {
        let sizes = [5usize, 30, 1, 1, 1];
        let names: Vec<String> = (0..sizes.len()).map(|i| i.to_string()).collect();
        for concurrency in [1, 2, 16] {
            let out = answer(
                names.clone(),
                20,
                concurrency,
                |k| {
                    let i: usize = k.parse().unwrap();
                    async move { sizes[i] }
                },
                |n| *n,
            )
            .await;
            let slots: Vec<_> = out.into_iter().map(|(_, s)| s).collect();
            assert_eq!(
                slots,
                [
                    Slot::Answered(5),
                    Slot::OverBudget,
                    Slot::OverBudget,
                    Slot::OverBudget,
                    Slot::OverBudget
                ],
                "concurrency {concurrency}"
            );
        }
    }

    /// A loaded item that counts the bytes alive, to see what one batch holds at its peak.
    #[derive(Debug)]
    struct Held {
        len: usize,
        alive: Arc<(AtomicUsize, AtomicUsize)>,
    }

    impl Held {
        fn new(len: usize, alive: &Arc<(AtomicUsize, AtomicUsize)>) -> Self {
            let now = alive.0.fetch_add(len, Ordering::SeqCst) + len;
            alive.1.fetch_max(now, Ordering::SeqCst);
            Held {
                len,
                alive: alive.clone(),
            }
        }
    }

    impl Drop for Held {
        fn drop(&mut self) {
            self.alive.0.fetch_sub(self.len, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn items_waiting_for_a_slow_first_key_are_charged_and_dropped_past_the_budget() {
        // Key 0 is slow: it finishes only once 11 keys after it have loaded (each 10 bytes,
        // the budget 100, so the 11th spends it). The items finished before key 0 must not
        // be held, uncounted, while they wait for their turn behind it.
        let alive = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let others_loaded = Arc::new(tokio::sync::Semaphore::new(0));
        let names: Vec<String> = (0..64).map(|i| i.to_string()).collect();
        let out = answer(
            names,
            100,
            64,
            |k| {
                let alive = alive.clone();
                let others_loaded = others_loaded.clone();
                async move {
                    if k == "0" {
                        let _eleven = others_loaded.acquire_many(11).await.unwrap();
                        Held::new(1, &alive)
                    } else {
                        let held = Held::new(10, &alive);
                        others_loaded.add_permits(1);
                        held
                    }
                }
            },
            |h| h.len,
        )
        .await;
        let peak = alive.1.load(Ordering::SeqCst);
        assert!(
            peak <= 100 + 10,
            "held {peak} bytes at once: the budget plus the item being charged at most"
        );
        let answered: Vec<&str> = out
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Answered(_)))
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(
            answered,
            ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"],
            "the first ten to finish fit; the slow key, finishing after the cut, does not"
        );
        assert_eq!(out.len(), 64);
    }
}
