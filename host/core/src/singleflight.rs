//! Coalescing of concurrent loads: N concurrent misses of one key cause exactly one load.
//!
//! The first caller for a key (the leader) starts the load; callers that arrive while it is in
//! flight join it, and every one of them gets the same result, or the same error as one
//! `Arc<E>`. The load is a [`futures::future::Shared`] future, so whichever waiter is polled
//! drives it: a leader that is cancelled does not strand the others, and a loader that panics
//! fails every waiter with [`LoaderPanicked`] instead of hanging them.
//!
//! A load lives exactly as long as someone waits for it. The map of calls holds only a weak
//! handle; when the load completes, or when every waiter has been dropped, a guard owned by the
//! load removes its map entry (only its own, never a newer call for the same key), so the next
//! caller starts a fresh load. Singleflight is not a cache: a call that arrives after a load
//! completed loads again.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};

use futures::FutureExt;
use futures::channel::oneshot;
use futures::future::{BoxFuture, Shared, WeakShared};
use parking_lot::Mutex;

/// The load every waiter of one call polls; its output is cloned to each of them.
type SharedLoad<T, E> = Shared<BoxFuture<'static, Result<T, Arc<E>>>>;

/// What the leader hands to the shared load once it has called the loader: the loader's future,
/// or the panic it raised while creating it.
type Started<T, E> = Result<BoxFuture<'static, Result<T, E>>, LoaderPanicked>;

/// A loader panicked; every waiter of that load gets this (converted into their error type)
/// instead of hanging or panicking themselves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("loader panicked: {0}")]
pub struct LoaderPanicked(
    /// The panic message when the payload was a string (as with `panic!("...")`), otherwise a
    /// placeholder.
    pub String,
);

impl LoaderPanicked {
    /// Keeps the message of a panic payload, which is a `&str` or a `String` for `panic!`.
    fn from_payload(payload: &(dyn Any + Send)) -> Self {
        let message = if let Some(message) = payload.downcast_ref::<&str>() {
            (*message).to_owned()
        } else if let Some(message) = payload.downcast_ref::<String>() {
            message.clone()
        } else {
            "non-string panic payload".to_owned()
        };
        Self(message)
    }
}

/// The outcome of [`Singleflight::run`] for one caller.
#[derive(Debug, Clone)]
pub struct Flight<T, E> {
    /// The load's result, the same for every caller of the call; the error is shared, so
    /// `Arc::ptr_eq` holds between the errors two waiters got.
    pub result: Result<T, Arc<E>>,
    /// `true` when this caller joined a load someone else started (its loader was not called),
    /// for the "deduplicated loads" metric.
    pub shared: bool,
}

/// Coalesces concurrent loads of the same key into one.
///
/// It exists so that a burst of misses for one key reaches the storage tier, a peer or the
/// getter once, not once per request. Cloning is cheap and clones share the calls in flight.
pub struct Singleflight<T, E> {
    /// The calls in flight; shared with clones and, weakly, with each load's cleanup guard.
    state: Arc<Mutex<State<T, E>>>,
}

/// The map of calls in flight, behind the mutex.
struct State<T, E> {
    /// One entry per key with a load in flight.
    calls: HashMap<String, Call<T, E>>,
    /// Identifies calls, so that a finishing load removes its own entry and never a newer call
    /// for the same key.
    next_id: u64,
}

/// A load in flight, as the map sees it.
struct Call<T, E> {
    /// Which call this is; see [`State::next_id`].
    id: u64,
    /// Weak, so that the map alone does not keep a load alive that nobody waits for any more.
    load: WeakShared<BoxFuture<'static, Result<T, Arc<E>>>>,
}

impl<T, E> Clone for Singleflight<T, E> {
    fn clone(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
        }
    }
}

impl<T, E> Default for Singleflight<T, E> {
    fn default() -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                calls: HashMap::new(),
                next_id: 0,
            })),
        }
    }
}

impl<T, E> fmt::Debug for Singleflight<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Singleflight")
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl<T, E> Singleflight<T, E> {
    /// An empty group of calls.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many keys have a load in flight.
    pub fn in_flight(&self) -> usize {
        self.state.lock().calls.len()
    }
}

impl<T, E> Singleflight<T, E>
where
    T: Clone + Send + Sync + 'static,
    E: From<LoaderPanicked> + Send + Sync + 'static,
{
    /// Starts a load of `key` with `load` unless one is in flight (then `None`): the load is
    /// registered before this returns, so a call or `start` that comes next joins it, even
    /// before the returned future is first polled (for loads run in the background).
    pub fn start<F, Fut>(
        &self,
        key: &str,
        load: F,
    ) -> Option<impl Future<Output = Result<T, Arc<E>>> + Send + 'static>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        match self.join_or_start(key, load) {
            (_, true) => None,
            (call, false) => Some(call),
        }
    }

    /// Returns the result of `load` for `key`, calling `load` only if no load for `key` is in
    /// flight; otherwise waits for that one.
    ///
    /// `load` is called at most once, synchronously, by the caller that starts the load, and
    /// never while an internal lock is held. Its future may be driven by any waiter.
    ///
    /// # Errors
    ///
    /// `result` is `Err` when the load failed: with the loader's own error, or with
    /// `E::from(LoaderPanicked(..))` when the loader (or its future) panicked. Every waiter of
    /// the call gets the same `Arc<E>`.
    ///
    /// # Concurrent calls on the same key
    ///
    /// Calls that arrive while a load is in flight join it (`shared == true`) and get a clone of
    /// its result. If the caller that started it is cancelled, the others keep driving it; if
    /// every waiter is cancelled, the load is dropped and the next call starts a fresh one. A
    /// call that arrives after the load completed starts a new load.
    pub async fn run<F, Fut>(&self, key: &str, load: F) -> Flight<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let (call, shared) = self.join_or_start(key, load);
        Flight {
            result: call.await,
            shared,
        }
    }

    /// Joins the call in flight for `key`, or registers a new one and starts it with `load`.
    /// Returns the call and whether it was joined.
    fn join_or_start<F, Fut>(&self, key: &str, load: F) -> (SharedLoad<T, E>, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let (call, start) = {
            let mut state = self.state.lock();
            if let Some(call) = state.calls.get(key).and_then(|call| call.load.upgrade()) {
                return (call, true);
            }
            // No call, or one that every waiter abandoned and whose guard has not yet removed
            // it: start a new call, which the old guard will then leave alone.
            let id = state.next_id;
            state.next_id = state.next_id.wrapping_add(1);
            let (start, started) = oneshot::channel();
            let cleanup = RemoveOnDrop {
                state: Arc::downgrade(&self.state),
                key: key.to_owned(),
                id,
            };
            let call = drive::<T, E>(started, cleanup).boxed().shared();
            // A fresh `Shared` always downgrades; were it not to, the call would merely not be
            // joinable.
            if let Some(load) = call.downgrade() {
                state.calls.insert(key.to_owned(), Call { id, load });
            }
            (call, start)
        };
        // The loader runs outside the lock, so a slow or re-entrant loader cannot block other
        // keys. No await separates registration from this send, so the call cannot be left
        // without its loader (and `call` is alive, so the receiver is too).
        let started = std::panic::catch_unwind(AssertUnwindSafe(load))
            .map(FutureExt::boxed)
            .map_err(|payload| LoaderPanicked::from_payload(payload.as_ref()));
        let _ = start.send(started);
        (call, false)
    }
}

/// The shared load: waits for the leader to hand over the loader's future, runs it with panics
/// caught, and removes its own map entry (through `cleanup`) when it completes or is dropped.
async fn drive<T, E>(
    started: oneshot::Receiver<Started<T, E>>,
    cleanup: RemoveOnDrop<T, E>,
) -> Result<T, Arc<E>>
where
    E: From<LoaderPanicked>,
{
    let panicked = match started.await {
        Ok(Ok(load)) => match AssertUnwindSafe(load).catch_unwind().await {
            Ok(outcome) => return finish(outcome, cleanup),
            Err(payload) => LoaderPanicked::from_payload(payload.as_ref()),
        },
        Ok(Err(panicked)) => panicked,
        // Unreachable in practice: the leader sends before its first await.
        Err(oneshot::Canceled) => LoaderPanicked("the loader was never started".to_owned()),
    };
    // A panicking loader is a bug worth a log line; its waiters only see an error.
    tracing::error!(key = %cleanup.key, panic = %panicked.0, "loader panicked");
    finish(Err(panicked.into()), cleanup)
}

/// Ends a load: removes its map entry, then shares its error.
fn finish<T, E>(outcome: Result<T, E>, cleanup: RemoveOnDrop<T, E>) -> Result<T, Arc<E>> {
    // Remove the entry before waiters see the result, so that none of them can join a call
    // that has already finished.
    drop(cleanup);
    outcome.map_err(Arc::new)
}

/// Removes its call's map entry when the load completes or is dropped unfinished (every waiter
/// cancelled), so that no entry outlives its load.
struct RemoveOnDrop<T, E> {
    /// Weak, so that a load cannot keep its `Singleflight` alive.
    state: Weak<Mutex<State<T, E>>>,
    /// The key the call is registered under.
    key: String,
    /// The call this guard belongs to; a newer call under the same key is left alone.
    id: u64,
}

impl<T, E> Drop for RemoveOnDrop<T, E> {
    fn drop(&mut self) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let mut state = state.lock();
        if state
            .calls
            .get(&self.key)
            .is_some_and(|call| call.id == self.id)
        {
            state.calls.remove(&self.key);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::future::join_all;
    use futures::poll;
    use tokio::sync::{Barrier, oneshot as tokio_oneshot};

    #[derive(Debug, thiserror::Error)]
    enum TestError {
        #[error("origin failed: {0}")]
        Origin(String),
        #[error(transparent)]
        Panicked(#[from] LoaderPanicked),
    }

    type Flights = Singleflight<String, TestError>;

    /// A loader that counts its calls and returns `value`.
    fn counting(
        calls: &Arc<AtomicUsize>,
        value: &str,
    ) -> impl FnOnce() -> futures::future::Ready<Result<String, TestError>> {
        let calls = Arc::clone(calls);
        let value = value.to_owned();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            futures::future::ready(Ok(value))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_concurrent_calls_load_once() {
        const CALLERS: usize = 1_000;
        let flights = Flights::new();
        let loads = Arc::new(AtomicUsize::new(0));
        // The load cannot finish before every caller has joined it: it waits for `release`,
        // which is sent only after all callers have polled `run` once (and so joined).
        let (release, released) = tokio_oneshot::channel::<()>();
        let released = released.shared();
        let joined = Arc::new(Barrier::new(CALLERS + 1));

        let tasks: Vec<_> = (0..CALLERS)
            .map(|_| {
                let flights = flights.clone();
                let loads = Arc::clone(&loads);
                let released = released.clone();
                let joined = Arc::clone(&joined);
                tokio::spawn(async move {
                    let flight = flights.run("key", move || {
                        loads.fetch_add(1, Ordering::SeqCst);
                        async move {
                            released.await.unwrap();
                            Ok("value".to_owned())
                        }
                    });
                    let mut flight = std::pin::pin!(flight);
                    assert!(poll!(flight.as_mut()).is_pending());
                    joined.wait().await;
                    flight.await
                })
            })
            .collect();

        joined.wait().await;
        assert_eq!(flights.in_flight(), 1);
        release.send(()).unwrap();
        let mut shared = 0;
        for task in tasks {
            let flight = task.await.unwrap();
            assert_eq!(flight.result.unwrap(), "value");
            shared += usize::from(flight.shared);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(shared, CALLERS - 1);
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_load_is_shared_by_everyone_who_joined_it() {
        // Unordered callers from many threads: however they interleave, each load has one
        // leader, and whoever did not lead joined someone's load.
        let flights = Flights::new();
        let loads = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let flights = flights.clone();
                let loads = Arc::clone(&loads);
                tokio::spawn(async move {
                    flights
                        .run("key", move || {
                            loads.fetch_add(1, Ordering::SeqCst);
                            async {
                                tokio::task::yield_now().await;
                                Ok("value".to_owned())
                            }
                        })
                        .await
                })
            })
            .collect();
        let mut leaders = 0;
        for task in tasks {
            let flight = task.await.unwrap();
            assert_eq!(flight.result.unwrap(), "value");
            leaders += usize::from(!flight.shared);
        }
        assert_eq!(loads.load(Ordering::SeqCst), leaders);
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn different_keys_load_independently() {
        let flights = Flights::new();
        let loads = Arc::new(AtomicUsize::new(0));
        let (release_a, released_a) = tokio_oneshot::channel::<()>();
        let (release_b, released_b) = tokio_oneshot::channel::<()>();
        let gated = |value: &'static str, released: tokio_oneshot::Receiver<()>| {
            let loads = Arc::clone(&loads);
            move || {
                loads.fetch_add(1, Ordering::SeqCst);
                async move {
                    released.await.unwrap();
                    Ok(value.to_owned())
                }
            }
        };
        let mut a = std::pin::pin!(flights.run("a", gated("A", released_a)));
        let mut b = std::pin::pin!(flights.run("b", gated("B", released_b)));
        assert!(poll!(a.as_mut()).is_pending());
        assert!(poll!(b.as_mut()).is_pending());
        assert_eq!(loads.load(Ordering::SeqCst), 2);
        assert_eq!(flights.in_flight(), 2);

        // "b" finishes while "a" is still loading.
        release_b.send(()).unwrap();
        let b = b.await;
        assert_eq!(b.result.unwrap(), "B");
        assert!(!b.shared);
        assert_eq!(flights.in_flight(), 1);

        release_a.send(()).unwrap();
        let a = a.await;
        assert_eq!(a.result.unwrap(), "A");
        assert!(!a.shared);
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn every_waiter_gets_the_same_error() {
        let flights = Flights::new();
        let (release, released) = tokio_oneshot::channel::<()>();
        let leader = flights.run("key", move || async move {
            released.await.unwrap();
            Err(TestError::Origin("connection refused".to_owned()))
        });
        let mut leader = std::pin::pin!(leader);
        assert!(poll!(leader.as_mut()).is_pending());
        let mut followers: Vec<_> = (0..10)
            .map(|_| {
                Box::pin(flights.run("key", || async { unreachable!("a follower never loads") }))
            })
            .collect();
        for follower in &mut followers {
            assert!(poll!(follower.as_mut()).is_pending());
        }
        release.send(()).unwrap();

        let (leader, followers) = futures::join!(leader, join_all(followers));
        let first = leader.result.unwrap_err();
        assert!(matches!(&*first, TestError::Origin(m) if m == "connection refused"));
        for follower in followers {
            assert!(follower.shared);
            assert!(Arc::ptr_eq(&first, &follower.result.unwrap_err()));
        }
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_panicking_loader_fails_every_waiter_and_the_next_call_loads_again() {
        let flights = Flights::new();
        let (release, released) = tokio_oneshot::channel::<()>();
        let leader = flights.run("key", move || async move {
            released.await.unwrap();
            panic!("origin exploded: {}", 42)
        });
        let mut leader = std::pin::pin!(leader);
        assert!(poll!(leader.as_mut()).is_pending());
        let mut followers: Vec<_> = (0..10)
            .map(|_| {
                Box::pin(flights.run("key", || async { unreachable!("a follower never loads") }))
            })
            .collect();
        for follower in &mut followers {
            assert!(poll!(follower.as_mut()).is_pending());
        }
        release.send(()).unwrap();

        let (leader, followers) = futures::join!(leader, join_all(followers));
        let first = leader.result.unwrap_err();
        assert!(
            matches!(&*first, TestError::Panicked(LoaderPanicked(m)) if m == "origin exploded: 42"),
            "{first:?}"
        );
        for follower in followers {
            assert!(Arc::ptr_eq(&first, &follower.result.unwrap_err()));
        }
        assert_eq!(flights.in_flight(), 0);

        let loads = Arc::new(AtomicUsize::new(0));
        let next = flights.run("key", counting(&loads, "fresh")).await;
        assert_eq!(next.result.unwrap(), "fresh");
        assert!(!next.shared);
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_loader_that_panics_before_returning_a_future_fails_the_call() {
        let flights = Flights::new();
        let flight = flights
            .run(
                "key",
                || -> futures::future::Ready<Result<String, TestError>> { panic!("bad loader") },
            )
            .await;
        let error = flight.result.unwrap_err();
        assert!(matches!(&*error, TestError::Panicked(LoaderPanicked(m)) if m == "bad loader"));
        assert_eq!(flights.in_flight(), 0);
    }

    #[test]
    fn run_is_send_so_it_can_serve_axum_handlers() {
        fn assert_send<T: Send>(_: &T) {}
        let flights = Flights::new();
        let loads = Arc::new(AtomicUsize::new(0));
        assert_send(&flights.run("key", counting(&loads, "value")));
    }

    #[test]
    fn panic_payloads_keep_their_message() {
        let message = |payload: Box<dyn Any + Send>| LoaderPanicked::from_payload(payload.as_ref());
        assert_eq!(message(Box::new("static")).0, "static");
        assert_eq!(message(Box::new("owned".to_owned())).0, "owned");
        assert_eq!(message(Box::new(7_u32)).0, "non-string panic payload");
        assert_eq!(
            LoaderPanicked("boom".to_owned()).to_string(),
            "loader panicked: boom"
        );
    }

    #[tokio::test]
    async fn a_cancelled_leader_does_not_strand_its_followers() {
        let flights = Flights::new();
        let loads = Arc::new(AtomicUsize::new(0));
        let (loading, loader_started) = tokio_oneshot::channel::<()>();
        let (release, released) = tokio_oneshot::channel::<()>();

        let leader = tokio::spawn({
            let flights = flights.clone();
            let loads = Arc::clone(&loads);
            async move {
                flights
                    .run("key", move || {
                        loads.fetch_add(1, Ordering::SeqCst);
                        async move {
                            loading.send(()).unwrap();
                            released.await.unwrap();
                            Ok("value".to_owned())
                        }
                    })
                    .await
            }
        });
        loader_started.await.unwrap();

        let mut followers: Vec<_> = (0..10)
            .map(|_| Box::pin(flights.run("key", counting(&loads, "not this one"))))
            .collect();
        for follower in &mut followers {
            assert!(poll!(follower.as_mut()).is_pending());
        }

        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        assert_eq!(flights.in_flight(), 1);
        release.send(()).unwrap();

        for follower in join_all(followers).await {
            assert_eq!(follower.result.unwrap(), "value");
            assert!(follower.shared);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_load_every_waiter_abandoned_is_dropped_and_the_next_call_loads_afresh() {
        /// Sets its flag when the abandoned load's future is dropped.
        struct DropFlag(Arc<AtomicUsize>);
        impl Drop for DropFlag {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }

        let flights = Flights::new();
        let loads = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        let flag = DropFlag(Arc::clone(&dropped));
        let stuck_loads = Arc::clone(&loads);
        let stuck = flights.run("key", move || {
            stuck_loads.fetch_add(1, Ordering::SeqCst);
            async move {
                let _flag = flag;
                futures::future::pending::<Result<String, TestError>>().await
            }
        });
        let timed_out = tokio::time::timeout(std::time::Duration::from_secs(1), stuck).await;
        assert!(timed_out.is_err());

        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        assert_eq!(flights.in_flight(), 0);
        let next = flights.run("key", counting(&loads, "fresh")).await;
        assert_eq!(next.result.unwrap(), "fresh");
        assert!(!next.shared);
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn singleflight_is_not_a_cache() {
        let flights = Flights::new();
        let loads = Arc::new(AtomicUsize::new(0));
        let first = flights.run("key", counting(&loads, "one")).await;
        assert_eq!(flights.in_flight(), 0);
        let second = flights.run("key", counting(&loads, "two")).await;
        assert_eq!(first.result.unwrap(), "one");
        assert_eq!(second.result.unwrap(), "two");
        assert!(!first.shared && !second.shared);
        assert_eq!(loads.load(Ordering::SeqCst), 2);
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_stale_cleanup_never_removes_a_newer_call() {
        let flights = Flights::new();
        let (release, released) = tokio_oneshot::channel::<()>();
        let mut call = std::pin::pin!(flights.run("key", move || async move {
            released.await.unwrap();
            Ok("new".to_owned())
        }));
        assert!(poll!(call.as_mut()).is_pending());
        let current_id = flights.state.lock().calls["key"].id;

        // The guard of an older call for the same key, finishing late (as when its last waiter
        // was dropped while this call was being registered).
        drop(RemoveOnDrop {
            state: Arc::downgrade(&flights.state),
            key: "key".to_owned(),
            id: current_id.wrapping_sub(1),
        });
        assert_eq!(flights.in_flight(), 1);

        release.send(()).unwrap();
        assert_eq!(call.await.result.unwrap(), "new");
        assert_eq!(flights.in_flight(), 0);
    }
}
