//! What a cached entry costs in memory, allocation by allocation.
//!
//! Loads `ENTRY_BYTES_KEYS` (default 100,000) unique keys through `Group::get` with a native
//! getter answering 1 KiB values (printable ASCII, as `synth_getter`'s), under mimalloc wrapped
//! in a counting allocator, and prints the bytes held per entry beyond key and stored value
//! (mimalloc's usable size of every live allocation, so its rounding counts) with the live
//! allocations each entry added, by size. `geecache-perf memory` measures the same from outside
//! (a node's resident memory); this says where it goes.
//!
//! `cargo bench -p geecache-tests --bench entry_bytes`

#![allow(clippy::unwrap_used, missing_docs)]
// A counting global allocator over mimalloc, and mimalloc's `mi_usable_size`: both unsafe by
// nature; every call is passed on unchanged.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use futures::future::BoxFuture;
use geecache_host::error::Result;
use geecache_host::group::{Getter, Group, GroupOptions, Loaded};

/// Live allocations are counted by usable size in steps of 8 bytes up to this; larger ones
/// share the last slot.
const CLASSES: usize = 1024;
const STEP: usize = 8;

/// mimalloc, counting what is live: bytes (usable size) and allocations per size class.
struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];

fn class(usable: usize) -> usize {
    (usable / STEP).min(CLASSES - 1)
}

unsafe extern "C" {
    // mimalloc's own (libmimalloc-sys links it; the binding is behind a feature we do not need).
    fn mi_usable_size(p: *const std::ffi::c_void) -> usize;
}

fn usable(ptr: *mut u8) -> usize {
    // SAFETY: `ptr` was returned by mimalloc and is still allocated.
    unsafe { mi_usable_size(ptr.cast()) }
}

fn count(ptr: *mut u8, sign: i64) {
    if ptr.is_null() {
        return;
    }
    let n = usable(ptr);
    LIVE_BYTES.fetch_add(sign * n as i64, Ordering::Relaxed);
    LIVE[class(n)].fetch_add(sign, Ordering::Relaxed);
}

// SAFETY: every call is passed on to mimalloc unchanged; the counting reads only the pointers.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for GlobalAlloc::alloc.
        let ptr = unsafe { mimalloc::MiMalloc.alloc(layout) };
        count(ptr, 1);
        ptr
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for GlobalAlloc::alloc_zeroed.
        let ptr = unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) };
        count(ptr, 1);
        ptr
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(ptr, -1);
        // SAFETY: as for GlobalAlloc::dealloc.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(ptr, -1);
        // SAFETY: as for GlobalAlloc::realloc.
        let new = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        if new.is_null() {
            count(ptr, 1);
        } else {
            count(new, 1);
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Answers every key with `VALUE_BYTES` printable bytes in a `Vec` of their exact length, as a
/// wasm getter's lifted `list<u8>` is.
#[derive(Debug)]
struct Synth;

const VALUE_BYTES: usize = 1024;

impl Getter for Synth {
    fn name(&self) -> &str {
        "synth"
    }
    fn get<'a>(&'a self, _group: &'a str, key: &'a str) -> BoxFuture<'a, Result<Loaded>> {
        Box::pin(async move {
            let seed = key
                .bytes()
                .fold(0u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
            let value: Vec<u8> = (0..VALUE_BYTES)
                .map(|i| b'!' + (seed.wrapping_add(i as u8) % 94))
                .collect();
            Ok(Loaded::Found {
                value: Bytes::from(value),
                expires_at_ms: None,
                stale_ms: None,
            })
        })
    }
}

fn snapshot() -> (i64, Vec<i64>) {
    (
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
    )
}

fn main() {
    let keys: usize = std::env::var("ENTRY_BYTES_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let group = Group::builder("bench", Arc::new(Synth))
        .options(GroupOptions {
            cache_bytes: 4 << 30,
            ..GroupOptions::default()
        })
        .build()
        .unwrap();
    let names: Vec<String> = (0..keys).map(|i| format!("m{i}")).collect();
    let key_bytes: usize = names.iter().map(String::len).sum();
    // Warm up: the store's first slab and table allocations and the runtime's.
    tokio.block_on(async {
        for i in 0..1000 {
            group.get(&format!("warm{i}")).await.unwrap();
        }
    });
    group.snapshot();
    let (bytes_before, classes_before) = snapshot();
    tokio.block_on(async {
        for name in &names {
            drop(group.get(name).await.unwrap());
        }
    });
    let stats = group.snapshot();
    let (bytes_after, classes_after) = snapshot();
    assert_eq!(stats.cache_items, keys as u64 + 1000, "every key is cached");
    let stored = VALUE_BYTES + geecache_host::compression::HEADER_BYTES;
    let per_entry = (bytes_after - bytes_before) as f64 / keys as f64;
    let payload = (key_bytes as f64 / keys as f64) + stored as f64;
    println!(
        "entry_bytes: {keys} entries of {VALUE_BYTES}-byte values: {per_entry:.0} bytes live per \
         entry, {:.0} beyond key ({:.1} bytes) and stored value ({stored} bytes); \
         ENTRY_OVERHEAD_BYTES charges {}",
        per_entry - payload,
        key_bytes as f64 / keys as f64,
        geecache_host::cache::ENTRY_OVERHEAD_BYTES,
    );
    println!(
        "size_of: CacheEntry {} B, Stored {} B, Bytes {} B",
        std::mem::size_of::<geecache_host::cache::CacheEntry>(),
        std::mem::size_of::<geecache_host::compression::Stored>(),
        std::mem::size_of::<Bytes>(),
    );
    println!("live allocations added per entry, by usable size:");
    for (i, (after, before)) in classes_after.iter().zip(&classes_before).enumerate() {
        let per = (after - before) as f64 / keys as f64;
        if per.abs() >= 0.05 {
            let size = if i == CLASSES - 1 {
                format!("≥{}", i * STEP)
            } else {
                (i * STEP).to_string()
            };
            println!(
                "  {size:>6} B × {per:.2} = {:.0} B",
                per * (i * STEP) as f64
            );
        }
    }
    drop(group);
}
