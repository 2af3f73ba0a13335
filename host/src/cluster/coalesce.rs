//! Coalescing of peer gets: the gets this node sends one owner for one group at the same moment
//! go as one `_batch` request instead of one HTTP exchange each.
//!
//! Each (peer, group) has a lane. The first get to find its lane empty opens a batch, yields to
//! the runtime once (so that every task ready to run gets to run), then closes the batch and
//! sends it; gets arriving meanwhile join it. A get that is alone in its batch is sent as an
//! ordinary single get. So an idle node pays one yield per peer get, and a busy node (many
//! requests ready at once) sends one exchange for several keys: the busier, the fewer exchanges
//! per key. It is the same idea as a DataLoader's "batch what one tick asked for".
//!
//! Under load, batches grow further: while the lane's last request is in flight, a new batch
//! waits for its answer (at most [`WAIT_FOR_ANSWER`] after that request was sent) and keeps
//! taking gets, unless it is full. Nagle's algorithm does the same for small TCP segments. On
//! the 3-node miss benchmark this raised the keys per peer request and the rate (the figures
//! are in the commit that brought it and in docs/performance.md). An idle
//! lane, or one whose last request has been out longer than that (a slow load), sends at once,
//! so a get waits at most that long for the lane (rounded up to tokio's next millisecond tick: at most ~1.5 ms), never for a slow load.
//!
//! Details that keep it from making anything worse:
//!
//! - a batch is answered when its last key is: a get whose batch has not answered within
//!   [`HEDGE_AFTER`] (a slow key in it) is asked for again alone, so the keys the owner holds
//!   wait at most that long for a slow one, never for its whole load (at the owner, the single
//!   get of the slow key joins the batch's load of it);
//! - a batch has at most the lane's key limit (`--peer-coalesce`, default [`DEFAULT_MAX_KEYS`],
//!   the keys an owner loads at once for one batch); longer ones go as several requests at
//!   once;
//! - a batch of several keys is sent by a task of its own, so a get whose caller gave up (a
//!   timeout, a dropped client) does not take the others' request down with it; a get that
//!   opened a batch and is dropped before closing it still has it sent;
//! - a key the owner refused for its batch budget (`too_large`) is asked for again alone;
//! - a batch that fails fails each of its gets with the batch's error, as a single get would
//!   have failed (the caller then loads locally, as for any peer error);
//! - every request keeps the peer client's own time limit.
//!
//! What a lane holds: the keys and answer channels of the batch being formed (at most one per
//! get this node has in flight to that peer and group), a count of its requests in flight and
//! when it last sent one.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::PeerCore;
use crate::group::PeerEntry;
use crate::peer::PeerError;
use crate::spans::in_span;

/// Most keys in one coalesced batch (`--peer-coalesce`): as many as the owner loads at once
/// for one batch, so that every key of a batch starts loading at once (the owner takes a
/// batch's keys in order, 16 at a time).
pub const DEFAULT_MAX_KEYS: usize = 16;

/// How long a get waits for its batch's answer before it goes alone: a batch is answered when
/// its last key is, so without this, keys the owner holds would wait for a slow key's load
/// (and could all run past `--peer-timeout`, then load locally, off the owner).
pub const HEDGE_AFTER: Duration = Duration::from_millis(50);

/// Requests of one lane in flight from which a new batch waits (see [`WAIT_FOR_ANSWER`]): one,
/// so under load a lane has one request in flight and one batch forming. Two did no better
/// (more requests per key).
const IN_FLIGHT: usize = 1;

/// Longest a batch waits for the lane's requests in flight to be answered: until this long
/// after the lane last sent one. A lane whose last request is older than this (a slow load)
/// sends at once. About a loaded exchange's time on loopback: shorter made more, smaller
/// batches, and longer did no better, with a longer tail. Whether it has passed is
/// checked exactly; a batch that sleeps until it passes wakes at tokio's timer tick after it
/// (whole milliseconds, rounded up), unless the answer comes first.
const WAIT_FOR_ANSWER: Duration = Duration::from_micros(500);

/// What one get comes to.
type KeyResult = Result<Option<PeerEntry>, PeerError>;

/// The lanes of one peer, by group.
#[derive(Debug)]
pub(super) struct Coalescer {
    /// Most keys per batch; 0 or 1: every get is sent alone.
    max_keys: usize,
    /// See [`WAIT_FOR_ANSWER`].
    wait_for_answer: Duration,
    /// See [`HEDGE_AFTER`].
    hedge_after: Duration,
    /// Each lane, by group name (the node's groups: a few).
    lanes: Mutex<HashMap<String, Lane>>,
}

/// One (peer, group): the batch being formed and the requests in flight.
#[derive(Debug, Default)]
struct Lane {
    /// The gets of the batch being formed.
    forming: Vec<Waiter>,
    /// When the lane last sent a request.
    last_sent: Option<Instant>,
    /// What the requests in flight share with the lane.
    flight: Arc<Flight>,
}

/// A lane's requests in flight.
#[derive(Debug, Default)]
struct Flight {
    /// Requests sent and not yet answered.
    count: AtomicUsize,
    /// Told when one is answered, or when the batch being formed is full.
    changed: Notify,
}

/// One request in flight: answered (or dropped), it tells the lane.
struct Sent(Arc<Flight>);

impl Drop for Sent {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

/// A get in a batch being formed.
#[derive(Debug)]
struct Waiter {
    key: String,
    answer: oneshot::Sender<KeyResult>,
}

impl Coalescer {
    /// Lanes whose batches hold at most `max_keys` keys (0 or 1: every get is sent alone).
    pub(super) fn new(max_keys: usize) -> Arc<Coalescer> {
        Coalescer::with_timing(max_keys, WAIT_FOR_ANSWER, HEDGE_AFTER)
    }

    /// [`Coalescer::new`] with these waits instead of [`WAIT_FOR_ANSWER`] and [`HEDGE_AFTER`].
    fn with_timing(max_keys: usize, wait_for_answer: Duration, hedge_after: Duration) -> Arc<Self> {
        Arc::new(Coalescer {
            max_keys,
            wait_for_answer,
            hedge_after,
            lanes: Mutex::new(HashMap::new()),
        })
    }

    /// Gets `key` of `group` from the peer: alone, or in the batch of the gets asked for at the
    /// same moment.
    ///
    /// The future must be polled until it finishes or be dropped (as any caller awaiting it
    /// does): a get that opened a batch closes it when it is polled again after its yield, or
    /// after waiting for the lane (see [`Opened::close_when_ready`]).
    pub(super) async fn get(
        self: &Arc<Self>,
        core: &Arc<PeerCore>,
        group: &str,
        key: &str,
    ) -> KeyResult {
        if self.max_keys <= 1 {
            return core.client.get(group, key).await;
        }
        let (tx, rx) = oneshot::channel();
        let opens = {
            let mut lanes = self.lanes.lock();
            let lane = if let Some(lane) = lanes.get_mut(group) {
                lane
            } else {
                lanes.entry(group.to_string()).or_default()
            };
            lane.forming.push(Waiter {
                key: key.to_string(),
                answer: tx,
            });
            if lane.forming.len() == self.max_keys {
                // Full: its opener, if waiting for an answer, sends it now.
                lane.flight.changed.notify_one();
            }
            lane.forming.len() == 1
        };
        if opens {
            let mut batch = Opened {
                coalescer: Arc::clone(self),
                core: Arc::clone(core),
                group: group.to_string(),
                closed: false,
            };
            tokio::task::yield_now().await;
            let (waiters, flight) = batch.close_when_ready().await;
            // The first get of a batch is the one that opened it.
            if waiters.len() == 1 {
                drop(waiters);
                let _sent = flight.map(Sent);
                return core.client.get(group, key).await;
            }
            batch.send(waiters);
        }
        let answer = match tokio::time::timeout(self.hedge_after, rx).await {
            Ok(answer) => answer,
            // The batch is slower than a get should be: a slow key in it holds the others.
            // This key goes alone; at the owner it joins the batch's load of it if that is
            // still running (owner loads are single-flighted), so nothing is loaded twice.
            Err(_) => return core.client.get(group, key).await,
        };
        match answer {
            Ok(Err(PeerError::ItemFailed { code, .. })) if code == "too_large" => {
                core.client.get(group, key).await
            }
            Ok(answer) => answer,
            Err(_) => Err(PeerError::Unreachable {
                peer: core.client.base_url().to_string(),
                message: "the coalesced request for this key was dropped".into(),
            }),
        }
    }

    /// Gets in batches being formed right now, over every lane (for tests).
    #[cfg(test)]
    fn forming(&self) -> usize {
        self.lanes.lock().values().map(|l| l.forming.len()).sum()
    }
}

/// A batch opened by a get, until it is closed and sent. Dropped unclosed (its get was
/// dropped while yielding), it closes and sends the batch for the others.
struct Opened {
    coalescer: Arc<Coalescer>,
    core: Arc<PeerCore>,
    group: String,
    closed: bool,
}

impl Opened {
    /// Takes the lane's batch once it may go: when the lane has fewer than [`IN_FLIGHT`]
    /// requests in flight, when the batch is full, or [`WAIT_FOR_ANSWER`] after the lane's last
    /// request was sent. Meanwhile gets keep joining it, so the busier the lane, the larger
    /// its batches. A batch of one comes with its lane's flight counted for the one request.
    async fn close_when_ready(&mut self) -> (Vec<Waiter>, Option<Arc<Flight>>) {
        loop {
            let (flight, deadline) = {
                let mut lanes = self.coalescer.lanes.lock();
                let Some(lane) = lanes.get_mut(&self.group) else {
                    self.closed = true;
                    return (Vec::new(), None);
                };
                let now = Instant::now();
                let deadline = lane.last_sent.map(|t| t + self.coalescer.wait_for_answer);
                let ready = lane.forming.len() >= self.coalescer.max_keys
                    || lane.flight.count.load(Ordering::Acquire) < IN_FLIGHT
                    || deadline.is_none_or(|d| d <= now);
                if ready {
                    self.closed = true;
                    let waiters = std::mem::take(&mut lane.forming);
                    if waiters.len() == 1 {
                        lane.last_sent = Some(now);
                        lane.flight.count.fetch_add(1, Ordering::AcqRel);
                        return (waiters, Some(Arc::clone(&lane.flight)));
                    }
                    return (waiters, None);
                }
                (Arc::clone(&lane.flight), deadline.unwrap_or(now))
            };
            let _ = tokio::time::timeout_at(deadline, flight.changed.notified()).await;
        }
    }

    /// Takes the lane's batch at once: gets from now on open the next one.
    fn close(&mut self) -> Vec<Waiter> {
        self.closed = true;
        self.coalescer
            .lanes
            .lock()
            .get_mut(&self.group)
            .map(|lane| std::mem::take(&mut lane.forming))
            .unwrap_or_default()
    }

    /// Sends `waiters` in requests of at most the lane's key limit, each in a task of its own,
    /// counted in flight until answered.
    fn send(&self, mut waiters: Vec<Waiter>) {
        // Gets whose callers stopped waiting are not asked for.
        waiters.retain(|w| !w.answer.is_closed());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime (shutting down): the gets see a closed channel, a peer error, and
            // load locally.
            return;
        };
        if waiters.is_empty() {
            return;
        }
        let requests = waiters.len().div_ceil(self.coalescer.max_keys.max(1));
        let flight = {
            let mut lanes = self.coalescer.lanes.lock();
            let lane = if let Some(lane) = lanes.get_mut(&self.group) {
                lane
            } else {
                lanes.entry(self.group.clone()).or_default()
            };
            lane.last_sent = Some(Instant::now());
            lane.flight.count.fetch_add(requests, Ordering::AcqRel);
            Arc::clone(&lane.flight)
        };
        while !waiters.is_empty() {
            let rest = waiters.split_off(waiters.len().min(self.coalescer.max_keys));
            let batch = std::mem::replace(&mut waiters, rest);
            // In the span of the get that closed the batch: the batch's request carries that
            // get's trace on to the owner (the other gets' traces stop at this node).
            let sent = Sent(Arc::clone(&flight));
            let request = send(Arc::clone(&self.core), self.group.clone(), batch);
            let request = async move {
                request.await;
                drop(sent);
            };
            runtime.spawn(in_span(request, tracing::Span::current()));
        }
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        if !self.closed {
            let mut waiters = self.close();
            // The first is the dropped get's own (it opened the batch); its receiver may
            // outlive this guard by a moment, so it is skipped by place, not by a closed check.
            if !waiters.is_empty() {
                waiters.remove(0);
            }
            self.send(waiters);
        }
    }
}

/// Sends `batch` to the peer (a single get for one key) and answers each of its gets.
async fn send(core: Arc<PeerCore>, group: String, batch: Vec<Waiter>) {
    if let [one] = batch.as_slice() {
        let answer = core.client.get(&group, &one.key).await;
        for w in batch {
            let _ = w.answer.send(answer.clone());
        }
        return;
    }
    let keys: Vec<String> = batch.iter().map(|w| w.key.clone()).collect();
    match core.coalesced_batch(&group, &keys).await {
        // One item per key asked, in order (as `PeerClient::batch_get` answers): each goes to
        // its get as it is.
        Ok(items)
            if items.len() == batch.len()
                && items.iter().zip(&batch).all(|((key, _), w)| *key == w.key) =>
        {
            for ((_, answer), w) in items.into_iter().zip(batch) {
                let _ = w.answer.send(answer);
            }
        }
        Ok(items) => {
            let items: HashMap<String, KeyResult> = items.into_iter().collect();
            for w in batch {
                let answer = items.get(&w.key).cloned().unwrap_or_else(|| {
                    Err(PeerError::Decode {
                        peer: core.client.base_url().to_string(),
                        message: "the batch answer has no item for this key".into(),
                    })
                });
                let _ = w.answer.send(answer);
            }
        }
        Err(e) => {
            for w in batch {
                let _ = w.answer.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against the real peer routes served over HTTP on 127.0.0.1 and the real peer client, in
    //! front of a small in-memory owner.

    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use futures::FutureExt as _;
    use futures::future::BoxFuture;

    use super::*;
    use crate::error::Error;
    use crate::group::Entries;
    use crate::peer::{PeerClient, PeerLimits, PeerService};
    use crate::telemetry::Metrics;

    /// Answers every key with its own name; keys starting `slow` after `SLOW`.
    #[derive(Debug, Default)]
    struct Owner {
        /// Keys asked, in order.
        asked: Mutex<Vec<String>>,
        /// A `slow` key's load has started.
        slow_started: AtomicBool,
        /// A `slow` key's load has ended.
        slow_done: AtomicBool,
        /// Bytes of every value (0: the key itself).
        value_bytes: usize,
        /// Keys starting `held` are answered once no one holds this for writing.
        gate: Arc<tokio::sync::RwLock<()>>,
    }

    const SLOW: Duration = Duration::from_millis(300);

    impl Entries for Owner {
        fn get<'a>(
            &'a self,
            _group: &'a str,
            key: &'a str,
        ) -> BoxFuture<'a, Result<Option<PeerEntry>, Error>> {
            async move {
                self.asked.lock().push(key.to_string());
                if key.starts_with("slow") {
                    self.slow_started.store(true, Ordering::SeqCst);
                    tokio::time::sleep(SLOW).await;
                    self.slow_done.store(true, Ordering::SeqCst);
                }
                if key.starts_with("held") {
                    drop(self.gate.read().await);
                }
                let value = if self.value_bytes == 0 {
                    Bytes::copy_from_slice(key.as_bytes())
                } else {
                    Bytes::from(vec![b'v'; self.value_bytes])
                };
                Ok(Some(PeerEntry {
                    value,
                    codec: "identity".into(),
                    expires_at_ms: None,
                }))
            }
            .boxed()
        }

        fn set<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: PeerEntry,
        ) -> BoxFuture<'a, Result<(), Error>> {
            async { Ok(()) }.boxed()
        }

        fn delete<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<(), Error>> {
            async { Ok(()) }.boxed()
        }
    }

    impl PeerService for Owner {
        fn invalidate<'a>(
            &'a self,
            _: &'a str,
            _: &'a [String],
        ) -> BoxFuture<'a, Result<(), Error>> {
            Box::pin(async { Ok(()) })
        }
    }

    /// HTTP requests the owner's server received: single gets and batches.
    #[derive(Debug, Default)]
    struct Requests {
        gets: AtomicUsize,
        batches: AtomicUsize,
    }

    impl Requests {
        fn seen(&self) -> (usize, usize) {
            (
                self.gets.load(Ordering::SeqCst),
                self.batches.load(Ordering::SeqCst),
            )
        }
    }

    /// Serves `owner` on 127.0.0.1 and returns what sends to it, and its request counts.
    async fn serve(owner: Arc<Owner>, limits: PeerLimits) -> (Arc<PeerCore>, Arc<Requests>) {
        let requests = Arc::new(Requests::default());
        let counted = Arc::clone(&requests);
        let app =
            crate::peer::router_with_limits(owner, None, limits).layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let counter = if req.method() == axum::http::Method::POST {
                        &counted.batches
                    } else {
                        &counted.gets
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    next.run(req)
                },
            ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (core(&format!("http://{addr}")), requests)
    }

    fn core(base: &str) -> Arc<PeerCore> {
        Arc::new(PeerCore {
            addr: base.into(),
            client: PeerClient::builder(base)
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            metrics: Metrics::new("test", &[]),
        })
    }

    fn value(answer: &KeyResult) -> String {
        let entry = answer.as_ref().unwrap().as_ref().unwrap();
        String::from_utf8(entry.value.to_vec()).unwrap()
    }

    /// Gets polled in one pass (as the requests a busy node has ready at one moment) go as
    /// batches of at most the key limit, and each get gets its own key's value.
    #[tokio::test]
    async fn gets_asked_at_one_moment_go_as_batches_of_at_most_the_key_limit() {
        let owner = Arc::new(Owner::default());
        let (core, requests) = serve(Arc::clone(&owner), PeerLimits::default()).await;
        for (max_keys, expected) in [(32, (0, 1)), (8, (0, 4)), (1, (20, 4)), (0, (40, 4))] {
            let c = Coalescer::new(max_keys);
            let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
            let answers =
                futures::future::join_all(keys.iter().map(|k| c.get(&core, "g", k))).await;
            for (k, a) in keys.iter().zip(&answers) {
                assert_eq!(&value(a), k, "max_keys {max_keys}");
            }
            // Cumulative: 1 batch of 20; then 8 + 8 + 4; then 20 singles; then 20 more.
            assert_eq!(requests.seen(), expected, "max_keys {max_keys}");
            assert_eq!(c.forming(), 0);
        }
        assert_eq!(owner.asked.lock().len(), 80);
    }

    /// A get alone goes as an ordinary single get, not as a batch of one.
    #[tokio::test]
    async fn a_get_alone_goes_as_a_single_get() {
        let (core, requests) = serve(Arc::new(Owner::default()), PeerLimits::default()).await;
        let c = Coalescer::new(DEFAULT_MAX_KEYS);
        assert_eq!(value(&c.get(&core, "g", "Tom").await), "Tom");
        assert_eq!(value(&c.get(&core, "g", "Sam").await), "Sam");
        assert_eq!(requests.seen(), (2, 0));
    }

    /// Waits until the owner has been asked for `n` keys.
    async fn asked(owner: &Owner, n: usize) {
        while owner.asked.lock().len() < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Gets asked one at a time while the lane's request is in flight wait for its answer in
    /// one batch, which goes as soon as that request is answered.
    #[tokio::test]
    async fn gets_asked_while_a_request_is_in_flight_go_as_one_batch_when_it_is_answered() {
        let owner = Arc::new(Owner::default());
        let (core, requests) = serve(Arc::clone(&owner), PeerLimits::default()).await;
        let c = Coalescer::with_timing(DEFAULT_MAX_KEYS, Duration::from_secs(60), SLOW * 100);
        let held = Arc::clone(&owner.gate).write_owned().await;
        let get = |key: &str| {
            let (c, core, key) = (Arc::clone(&c), Arc::clone(&core), key.to_string());
            tokio::spawn(async move { value(&c.get(&core, "g", &key).await) })
        };
        let first = get("held");
        asked(&owner, 1).await;
        let mut later = Vec::new();
        for i in 0..5 {
            later.push(get(&format!("k{i}")));
            // Each alone in its moment: without a request in flight, each would go alone.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(c.forming(), 5);
        assert_eq!(requests.seen(), (1, 0));
        drop(held);
        assert_eq!(first.await.unwrap(), "held");
        for (i, g) in later.into_iter().enumerate() {
            assert_eq!(g.await.unwrap(), format!("k{i}"));
        }
        assert_eq!(requests.seen(), (1, 1));
        assert_eq!(c.forming(), 0);
    }

    /// A full batch goes at once, request in flight or not; the gets after it wait.
    #[tokio::test]
    async fn a_full_batch_goes_at_once_while_a_request_is_in_flight() {
        let owner = Arc::new(Owner::default());
        let (core, requests) = serve(Arc::clone(&owner), PeerLimits::default()).await;
        let c = Coalescer::with_timing(4, Duration::from_secs(60), SLOW * 100);
        let held = Arc::clone(&owner.gate).write_owned().await;
        let get = |key: String| {
            let (c, core) = (Arc::clone(&c), Arc::clone(&core));
            tokio::spawn(async move { (value(&c.get(&core, "g", &key).await), key) })
        };
        let first = get("held".into());
        asked(&owner, 1).await;
        let mut later = Vec::new();
        for i in 0..6 {
            later.push(get(format!("k{i}")));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // k0..k3 went as a full batch and were answered; k4 and k5 wait for `held`.
        asked(&owner, 5).await;
        for g in later.drain(..4) {
            let (value, key) = g.await.unwrap();
            assert_eq!(value, key);
        }
        assert_eq!(c.forming(), 2);
        assert_eq!(requests.seen(), (1, 1));
        drop(held);
        assert_eq!(first.await.unwrap().0, "held");
        for g in later {
            let (value, key) = g.await.unwrap();
            assert_eq!(value, key);
        }
        assert_eq!(requests.seen(), (1, 2));
    }

    /// A get waits for the lane's request in flight (a slow load) until the wait has passed
    /// since that request was sent, then goes; a lane whose last request is older than the
    /// wait sends at once. The bounds asserted are half the wait either way: far from what a
    /// request on loopback takes.
    #[tokio::test]
    async fn a_get_waits_for_a_slow_request_in_flight_at_most_the_wait() {
        let owner = Arc::new(Owner::default());
        let (core, requests) = serve(Arc::clone(&owner), PeerLimits::default()).await;
        let wait = Duration::from_secs(1);
        let c = Coalescer::with_timing(DEFAULT_MAX_KEYS, wait, SLOW * 100);
        let held = Arc::clone(&owner.gate).write_owned().await;
        let first = {
            let (c, core) = (Arc::clone(&c), Arc::clone(&core));
            tokio::spawn(async move { value(&c.get(&core, "g", "held").await) })
        };
        asked(&owner, 1).await;
        // `held` is answered only at the end: a get waiting for its answer would never end.
        let started = tokio::time::Instant::now();
        let a = tokio::time::timeout(Duration::from_secs(10), c.get(&core, "g", "a")).await;
        assert_eq!(value(&a.unwrap()), "a");
        let waited = started.elapsed();
        assert!(waited >= wait / 2, "went after {waited:?}, without waiting");
        // Asked once the wait has passed since the last request: at once, `held` still held.
        tokio::time::sleep(wait).await;
        let started = tokio::time::Instant::now();
        assert_eq!(value(&c.get(&core, "g", "b").await), "b");
        let took = started.elapsed();
        assert!(
            took < wait / 2,
            "waited {took:?} for a lane idle for the wait"
        );
        assert_eq!(requests.seen(), (3, 0));
        drop(held);
        assert_eq!(first.await.unwrap(), "held");
    }

    /// A batch is only as slow as its own keys: a get asked while a batch with a slow key is in
    /// flight goes in a request of its own and is answered before that batch.
    #[tokio::test]
    async fn a_batch_with_a_slow_key_does_not_hold_gets_asked_after_it() {
        let owner = Arc::new(Owner::default());
        let (core, requests) = serve(Arc::clone(&owner), PeerLimits::default()).await;
        let c = Coalescer::new(DEFAULT_MAX_KEYS);
        let slow = {
            let (c, core) = (Arc::clone(&c), Arc::clone(&core));
            tokio::spawn(async move {
                let (a, b) = tokio::join!(c.get(&core, "g", "slow"), c.get(&core, "g", "a"));
                (value(&a), value(&b))
            })
        };
        while !owner.slow_started.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(value(&c.get(&core, "g", "b").await), "b");
        assert!(
            !owner.slow_done.load(Ordering::SeqCst),
            "b waited for the slow batch"
        );
        assert_eq!(slow.await.unwrap(), ("slow".into(), "a".into()));
        // The batch of `slow` and `a`, each of them again alone after `HEDGE_AFTER`, and `b`.
        assert_eq!(requests.seen(), (3, 1));
    }

    /// A key in the same batch as a slow key does not wait for the slow load: after
    /// `HEDGE_AFTER` it is asked for again alone, and answered before the slow key.
    #[tokio::test]
    async fn a_key_batched_with_a_slow_key_is_asked_again_alone_and_answered_first() {
        let owner = Arc::new(Owner::default());
        let (core, requests) = serve(Arc::clone(&owner), PeerLimits::default()).await;
        let c = Coalescer::new(DEFAULT_MAX_KEYS);
        let fast_answered_while_slow_loads = AtomicBool::new(false);
        let (slow, fast) = tokio::join!(c.get(&core, "g", "slow"), async {
            let a = c.get(&core, "g", "fast").await;
            fast_answered_while_slow_loads
                .store(!owner.slow_done.load(Ordering::SeqCst), Ordering::SeqCst);
            a
        });
        assert_eq!((value(&slow), value(&fast)), ("slow".into(), "fast".into()));
        assert!(fast_answered_while_slow_loads.load(Ordering::SeqCst));
        // One batch of both, then each alone (the slow key's own hedge too).
        assert_eq!(requests.seen(), (2, 1));
        assert!(SLOW > HEDGE_AFTER * 4);
    }

    /// Keys past the owner's batch budget (`too_large`) are asked for again, alone.
    #[tokio::test]
    async fn keys_past_the_owners_batch_budget_are_asked_for_alone() {
        let owner = Arc::new(Owner {
            value_bytes: 1000,
            ..Owner::default()
        });
        let limits = PeerLimits {
            max_batch_bytes: 2500,
            ..PeerLimits::default()
        };
        let (core, requests) = serve(Arc::clone(&owner), limits).await;
        let c = Coalescer::new(DEFAULT_MAX_KEYS);
        let keys: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
        let answers = futures::future::join_all(keys.iter().map(|k| c.get(&core, "g", k))).await;
        for a in &answers {
            assert_eq!(a.as_ref().unwrap().as_ref().unwrap().value.len(), 1000);
        }
        let (gets, batches) = requests.seen();
        assert_eq!(batches, 1);
        assert!((3..=5).contains(&gets), "{gets} keys asked again alone");
    }

    /// A get that opened a batch and is dropped before closing it (its client gave up) still
    /// has the batch sent for the others, without its own key.
    #[tokio::test]
    async fn a_batch_whose_opener_was_dropped_is_still_sent_for_the_others() {
        let owner = Arc::new(Owner::default());
        let (core, requests) = serve(Arc::clone(&owner), PeerLimits::default()).await;
        let c = Coalescer::new(DEFAULT_MAX_KEYS);
        let mut opener = Box::pin(c.get(&core, "g", "gone"));
        assert!(futures::poll!(&mut opener).is_pending());
        let mut joined = [
            Box::pin(c.get(&core, "g", "x")),
            Box::pin(c.get(&core, "g", "y")),
        ];
        for j in &mut joined {
            assert!(futures::poll!(j).is_pending());
        }
        assert_eq!(c.forming(), 3);
        drop(opener);
        assert_eq!(c.forming(), 0);
        let [x, y] = joined;
        assert_eq!((value(&x.await), value(&y.await)), ("x".into(), "y".into()));
        assert_eq!(requests.seen(), (0, 1));
        assert_eq!(*owner.asked.lock(), ["x", "y"]);
    }

    /// When the batch's request fails, each of its gets fails with that error (the caller then
    /// loads locally), and nothing stays queued.
    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_gets() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let core = core(&base);
        let c = Coalescer::new(DEFAULT_MAX_KEYS);
        let answers =
            futures::future::join_all(["a", "b", "c"].map(|k| c.get(&core, "g", k))).await;
        for a in answers {
            assert!(matches!(a, Err(PeerError::Unreachable { .. })), "{a:?}");
        }
        assert_eq!(c.forming(), 0);
    }
}
