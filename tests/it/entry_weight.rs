//! The cache's weight of an entry counts its allocations as the host's allocator rounds them
//! (`cache::allocation_bytes`); this checks that rule against mimalloc itself, which the host
//! binary runs on.

// mimalloc's allocation calls and its `mi_usable_size` are unsafe by nature; every pointer
// here is allocated and freed by mimalloc in the same loop turn.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};

use geecache_host::cache::allocation_bytes;
use mimalloc::MiMalloc;

unsafe extern "C" {
    // mimalloc's own (libmimalloc-sys links it; the binding is behind a feature we do not need).
    fn mi_usable_size(p: *const std::ffi::c_void) -> usize;
}

/// What mimalloc sets aside for `n` bytes with byte alignment: the usable size it reports.
fn mimalloc_usable(n: usize) -> u64 {
    let layout = Layout::from_size_align(n, 1).expect("a valid layout");
    // SAFETY: `layout` has a non-zero size (callers pass n ≥ 1); the pointer is checked, read
    // by mimalloc and freed with the same layout.
    unsafe {
        let ptr = MiMalloc.alloc(layout);
        assert!(!ptr.is_null(), "mimalloc failed to allocate {n} bytes");
        let usable = mi_usable_size(ptr.cast());
        MiMalloc.dealloc(ptr, layout);
        usable as u64
    }
}

#[test]
fn allocation_bytes_is_mimallocs_usable_size_up_to_512_kib() {
    // Every length up to 64 KiB, then the first length of every 1 KiB step.
    for n in (1..=(64 << 10)).chain(((64 << 10)..(512 << 10)).step_by(1 << 10).map(|n| n + 1)) {
        assert_eq!(allocation_bytes(n), mimalloc_usable(n), "{n} bytes");
    }
    assert_eq!(allocation_bytes(512 << 10), mimalloc_usable(512 << 10));
}

#[test]
fn allocation_bytes_counts_the_pages_of_a_huge_allocation() {
    // Above 512 KiB mimalloc maps an allocation on its own, in pages (rounded further up to
    // 64 KiB or more); only what is written becomes resident, so the weight counts the pages
    // the value fills.
    for n in [
        (512 << 10) + 1,
        600_000,
        1 << 20,
        (1 << 20) + 1,
        8 << 20,
        (8 << 20) + 3,
    ] {
        let usable = mimalloc_usable(n);
        let weight = allocation_bytes(n);
        assert!(weight >= n as u64, "{n}: weight {weight}");
        assert!(weight <= usable, "{n}: weight {weight} > usable {usable}");
        assert!(weight - (n as u64) < 4096, "{n}: weight {weight}");
    }
}
