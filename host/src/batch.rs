//! How one batch request is answered without letting it grow without bound: the keys are
//! de-duplicated, loaded a few at a time, and their answers are accounted against a byte budget
//! (`--max-batch-bytes`) as they arrive.
//!
//! Both batch routes use [`answer`]: the API's `POST /api/v1/groups/{g}/batch` (JSON items) and
//! the peer protocol's `POST /_geecache/{g}/_batch` (protobuf items). Without it, one 10 KB
//! request naming an 8 MiB key a thousand times made the node build an 8 GB answer.
//!
//! The rules, in the order of the (de-duplicated) keys:
//!
//! - a key named twice is loaded and answered once, at its first position;
//! - an item is counted by its encoded size in the answer (JSON escaping and base64 included);
//! - the first item that does not fit in what is left of the budget spends it: that key and
//!   every key after it is answered with [`Error::BatchBudget`] (code `too_large`), whether or
//!   not its load had started. Which keys are cut does not depend on how the loads race;
//! - no load is started once the budget is spent, and at most `concurrency` items are loaded or
//!   waiting for their turn at any time, so what the node holds for one batch is bounded by the
//!   budget plus `concurrency` values.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt as _;

use crate::error::Error;

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
    let mut out = Vec::with_capacity(keys.len());
    // Read when a load would start (the stream polls a future first when it takes it in).
    let spent_out = Arc::new(AtomicBool::new(false));
    let mut items = futures::stream::iter(keys)
        .map(|key| {
            let spent_out = spent_out.clone();
            let load = &load;
            async move {
                if spent_out.load(Ordering::SeqCst) {
                    return (key, None);
                }
                let item = load(key.clone()).await;
                (key, Some(item))
            }
        })
        .buffered(concurrency.max(1));
    let mut left = budget;
    while let Some((key, item)) = items.next().await {
        let slot = match item {
            Some(item) if !spent_out.load(Ordering::SeqCst) && size(&item) <= left => {
                left -= size(&item);
                Slot::Answered(item)
            }
            // Dropped here: an item that does not fit is not kept.
            _ => {
                spent_out.store(true, Ordering::SeqCst);
                Slot::OverBudget
            }
        };
        out.push((key, slot));
    }
    out
}

/// The error a key past the budget is answered with.
pub fn over_budget(budget: usize) -> Error {
    Error::BatchBudget { limit: budget }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

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
                loads.lock().unwrap().push(k);
                async { 10usize }
            },
            |n| *n,
        )
        .await;
        assert_eq!(out, vec![("big".to_string(), Slot::Answered(10))]);
        assert_eq!(loads.lock().unwrap().len(), 1);
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
                *loads.lock().unwrap() += 1;
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
        assert_eq!(*loads.lock().unwrap(), 3, "no load starts once it is spent");
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
}
