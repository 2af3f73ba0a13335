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
//! | any other | found, value `chaos:<key>`                                         |

use std::hint::black_box;

use geecache_guest_sdk::{Error, Getter, Lookup, export_getter};

struct Chaos;

impl Getter for Chaos {
    const NAME: &'static str = "chaos_getter";

    fn get(_group: &str, key: &str) -> Result<Lookup, Error> {
        match key {
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
