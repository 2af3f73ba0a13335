//! A getter that misbehaves on request, so the host's tests can prove a bad plugin is
//! contained: the call fails with a clear error and the host keeps serving.
//!
//! | key       | behaviour                                                          |
//! |-----------|--------------------------------------------------------------------|
//! | `panic`   | panics (the host sees a trap)                                      |
//! | `loop`    | spins forever (until the host's time limit interrupts it)          |
//! | `oom`     | allocates 1 MiB chunks without bound (until the memory cap stops it) |
//! | `missing` | not found                                                          |
//! | `error`   | fails with `unavailable`                                           |
//! | `other`   | fails with `other` (the host then discards the instance)            |
//! | `count`   | found, value: how many calls this instance has served, this one included |
//! | `grow:N`  | keeps N more MiB of memory for the instance's lifetime, then as `count` |
//! | `leak:N`  | creates N host resources (WASI pollables) it never drops, then as `count` |
//! | `logflood…` | logs 10,000 records, each with a forged log line after a newline, then found `flooded` |
//! | any other | found, value `chaos:<key>`                                         |
//!
//! `count` and `grow:N` show whether the host reused an instance: the counter lives in a
//! global, so it restarts at 1 on a new instance.

use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use geecache_guest_sdk::{Error, Getter, Lookup, export_getter};

struct Chaos;

/// Calls this instance has served.
static CALLS: AtomicU64 = AtomicU64::new(0);
/// Memory kept on purpose by `grow:N`.
static KEPT: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

impl Getter for Chaos {
    const NAME: &'static str = "chaos_getter";

    fn get(_group: &str, key: &str) -> Result<Lookup, Error> {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(mib) = key.strip_prefix("grow:") {
            let mib: usize = mib
                .parse()
                .map_err(|_| Error::InvalidInput(format!("grow:N wants a number, got {mib:?}")))?;
            let mut kept = KEPT.lock().map_err(|_| Error::Other("poisoned".into()))?;
            kept.push(black_box(vec![0x5A; mib << 20]));
            return Ok(Lookup::found(calls.to_string()));
        }
        if let Some(n) = key.strip_prefix("leak:") {
            let n: u32 = n
                .parse()
                .map_err(|_| Error::InvalidInput(format!("leak:N wants a number, got {n:?}")))?;
            for _ in 0..n {
                let pollable = wasip2::clocks::monotonic_clock::subscribe_duration(1_000_000_000);
                std::mem::forget(pollable);
            }
            return Ok(Lookup::found(calls.to_string()));
        }
        if key.starts_with("logflood") {
            for i in 0..10_000 {
                geecache_guest_sdk::log::warn(&format!(
                    "flood {i}\n1999-01-01T00:00:00.000000Z  INFO geecache: forged admin login"
                ));
            }
            return Ok(Lookup::found("flooded".to_string()));
        }
        match key {
            "count" => Ok(Lookup::found(calls.to_string())),
            "other" => Err(Error::Other("chaos_getter: other requested".into())),
            "panic" => panic!("chaos_getter: panic requested"),
            "loop" => spin_forever(),
            "oom" => exhaust_memory(),
            "missing" => Ok(Lookup::NotFound),
            "error" => Err(Error::Unavailable("chaos_getter: error requested".into())),
            _ => Ok(Lookup::found(format!("chaos:{key}"))),
        }
    }
}

/// Never returns; `black_box` keeps the optimiser from proving the loop does nothing.
fn spin_forever() -> ! {
    let mut counter = 0u64;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

/// Never returns: grows the heap by 1 MiB at a time, touching each chunk, until an allocation
/// fails (which aborts, i.e. traps).
fn exhaust_memory() -> ! {
    const CHUNK: usize = 1 << 20;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        chunks.push(black_box(vec![0xA5; CHUNK]));
        black_box(&chunks);
    }
}

export_getter!(Chaos);
