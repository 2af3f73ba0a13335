//! Warm plugin instances: a small pool of instantiated stores per plugin, reused across calls.
//!
//! A fresh store and instance cost ~10–20 µs (and a TLB shootdown when the pooling allocator
//! resets the memory afterwards); a call on a live instance costs well under a microsecond. So by
//! default ([`InstanceMode::Reuse`]) an instance that finished a call cleanly goes back to its
//! plugin's pool, with its WASI context built once. An instance is dropped instead when:
//! - the call failed in any way (trap, timeout, memory-limit hit, a host error): a trap poisons
//!   the store, and the others leave it in an unknown state;
//! - the guest reported an `other` error (it says something is wrong with it);
//! - a memory or table growth was refused during the call, even if the guest coped;
//! - it has served [`InstancePolicy::max_calls`] calls;
//! - its memories and tables together grew past [`InstancePolicy::max_memory`];
//! - it holds more than [`MAX_IDLE_RESOURCES`] host resources (WASI handles) after a call: a
//!   guest that leaks them (never drops a stream or pollable) would otherwise grow its host-side
//!   table call after call;
//! - the pool of its plugin, or the runtime's idle budget, is full.
//!
//! Limits hold per call in both modes: before each call the deadline (epoch and wall clock) is
//! re-armed and the memory-limit flag cleared; the memory budget itself covers everything the
//! instance holds, since linear memory never shrinks.
//!
//! Idle instances across all plugins are capped ([`IdleBudget`]), so that the pooling allocator,
//! sized for calls in flight plus idle instances, never runs out of slots.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use wasmtime::Store;

use super::host::HostState;

/// Whether plugin instances serve one call each or many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InstanceMode {
    /// Keep instances that finished a call cleanly for later calls (the default).
    #[default]
    Reuse,
    /// A new instance for every call, dropped after it: nothing survives between calls.
    Fresh,
}

impl std::str::FromStr for InstanceMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reuse" => Ok(InstanceMode::Reuse),
            "fresh" => Ok(InstanceMode::Fresh),
            other => Err(format!(
                "--plugin-instances {other:?}: expected \"reuse\" or \"fresh\""
            )),
        }
    }
}

impl std::fmt::Display for InstanceMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InstanceMode::Reuse => "reuse",
            InstanceMode::Fresh => "fresh",
        })
    }
}

/// Most host resources (WASI handles in the instance's `ResourceTable`) an instance may still
/// hold when a call ends and be reused: a well-behaved guest drops what a call opened, and holds
/// a handful at most (none, for the plugins in `plugins/`).
pub const MAX_IDLE_RESOURCES: usize = 64;

/// Most host resources an instance may hold at once, whatever it does: past this, creating one
/// more fails (and with it the call, which retires the instance). It bounds what one call of a
/// leaking guest can make the host keep.
pub const MAX_RESOURCES: usize = 4096;

/// When an instance is reused and when it is retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstancePolicy {
    /// Reuse instances or not.
    pub mode: InstanceMode,
    /// Calls one instance serves before it is retired (`--plugin-instance-calls`).
    pub max_calls: u64,
    /// An instance whose memories and tables hold more than this many bytes after a call is
    /// retired (`--plugin-instance-memory`), so one large call does not pin its memory for good.
    pub max_memory: usize,
}

impl InstancePolicy {
    /// The defaults for a per-call memory cap of `memory_limit` bytes: reuse, 10,000 calls,
    /// retire past half the cap.
    pub fn defaults(memory_limit: usize) -> Self {
        InstancePolicy {
            mode: InstanceMode::Reuse,
            max_calls: 10_000,
            max_memory: memory_limit / 2,
        }
    }
}

/// The runtime-wide count of idle instances and its cap.
#[derive(Debug)]
pub(crate) struct IdleBudget {
    /// Idle instances across every plugin of the runtime.
    count: AtomicUsize,
    /// At most this many.
    cap: usize,
}

impl IdleBudget {
    pub fn new(cap: usize) -> Self {
        IdleBudget {
            count: AtomicUsize::new(0),
            cap,
        }
    }

    /// Idle instances right now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn try_reserve(&self) -> bool {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.cap).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self, n: usize) {
        self.count.fetch_sub(n, Ordering::AcqRel);
    }
}

/// One instantiated store of a plugin.
pub(crate) struct Warm<I> {
    /// The store, with the WASI context and host state built for it.
    pub store: Store<HostState>,
    /// The instance's exports.
    pub instance: I,
    /// Calls it has served.
    pub calls: u64,
}

/// The idle instances of one plugin.
pub(crate) struct Pool<I> {
    idle: Mutex<Vec<Warm<I>>>,
    budget: Arc<IdleBudget>,
    policy: InstancePolicy,
    /// Set when the plugin's version was replaced (hot reload): the idle instances were
    /// dropped, and instances of calls still in flight are dropped when they finish.
    retired: AtomicBool,
    /// Instances created for this plugin (probes excluded): how often a call paid for a new one.
    pub created: AtomicU64,
}

impl<I> Pool<I> {
    pub fn new(policy: InstancePolicy, budget: Arc<IdleBudget>) -> Self {
        Pool {
            idle: Mutex::new(Vec::new()),
            budget,
            policy,
            retired: AtomicBool::new(false),
            created: AtomicU64::new(0),
        }
    }

    /// An idle instance, the most recently used first (its memory is likeliest in cache).
    pub fn take(&self) -> Option<Warm<I>> {
        if self.policy.mode == InstanceMode::Fresh {
            return None;
        }
        let warm = self.idle.lock().pop();
        if warm.is_some() {
            self.budget.release(1);
        }
        warm
    }

    /// Returns an instance that finished a call cleanly (`healthy`: no error, no refused
    /// growth, no `other` error from the guest); drops it when the policy says to retire it.
    pub fn give_back(&self, mut warm: Warm<I>, healthy: bool) {
        let keep = healthy
            && self.policy.mode == InstanceMode::Reuse
            && !self.retired.load(Ordering::Acquire)
            && warm.calls < self.policy.max_calls
            && warm.store.data().limiter.used() <= self.policy.max_memory
            // Counted by walking the table: a few entries for a well-behaved guest.
            && warm.store.data_mut().table.iter_mut().count() <= MAX_IDLE_RESOURCES
            && self.budget.try_reserve();
        if keep {
            // Drop outside the lock if the pool turned out to be full: dropping a store
            // returns its memory to the allocator, which is not free.
            let mut idle = self.idle.lock();
            if idle.len() < self.budget.cap {
                idle.push(warm);
                return;
            }
            drop(idle);
            self.budget.release(1);
        }
    }

    /// Drains the pool for good (its plugin version was replaced): drops the idle instances now
    /// and every instance given back from now on, so no instance of an old version outlives
    /// the calls that were running on it.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        let idle = std::mem::take(&mut *self.idle.lock());
        self.budget.release(idle.len());
        drop(idle);
    }

    /// Idle instances of this plugin right now.
    pub fn idle(&self) -> usize {
        self.idle.lock().len()
    }
}

impl<I> Drop for Pool<I> {
    fn drop(&mut self) {
        let idle = self.idle.get_mut();
        self.budget.release(idle.len());
    }
}
