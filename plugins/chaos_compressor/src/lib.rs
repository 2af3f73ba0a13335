//! A compressor that misbehaves on request, so the host's tests can prove that a bad codec
//! plugin fails the value's operation with a clear error and never gets anything corrupt
//! stored or served. The behaviour is chosen by how the value starts:
//!
//! | value starts with | `compress`                                         |
//! |-------------------|----------------------------------------------------|
//! | `panic`           | panics (the host sees a trap)                      |
//! | `loop`            | spins forever (until the host's time limit)        |
//! | `garbage`         | returns the first half of the value: it "shrinks", but `decompress` cannot give the value back |
//! | anything else     | returns the value unchanged (so the host keeps it raw) |
//!
//! `decompress` returns its input unchanged.

use std::hint::black_box;

use geecache_guest_sdk::{Compressor, Error, export_compressor};

struct Chaos;

impl Compressor for Chaos {
    const NAME: &'static str = "chaos_compressor";

    fn compress(data: &[u8], _level: Option<i32>) -> Result<Vec<u8>, Error> {
        if data.starts_with(b"panic") {
            panic!("chaos_compressor: panic requested");
        }
        if data.starts_with(b"loop") {
            spin_forever();
        }
        if data.starts_with(b"garbage") {
            return Ok(data[..data.len() / 2].to_vec());
        }
        Ok(data.to_vec())
    }

    fn decompress(data: &[u8], max_len: u64) -> Result<Vec<u8>, Error> {
        if data.len() as u64 > max_len {
            return Err(Error::InvalidInput("output over max_len".into()));
        }
        Ok(data.to_vec())
    }
}

/// Never returns; `black_box` keeps the optimiser from proving the loop does nothing.
fn spin_forever() -> ! {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

export_compressor!(Chaos);
