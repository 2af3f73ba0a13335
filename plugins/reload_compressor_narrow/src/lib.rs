//! A test plugin for compressor reloads: a new version of `chaos_compressor` (it reports that
//! name) that takes levels 0 to 3 only. Like `chaos_compressor` with an ordinary value, it
//! keeps every value as it is, so it reads whatever `chaos_compressor` wrote. The host must
//! refuse to reload `chaos_compressor` with it while a group compresses at a level above 3.

use geecache_guest_sdk::{Compressor, Error, export_compressor};

/// The highest level this version takes.
const MAX_LEVEL: i32 = 3;

struct Narrow;

impl Compressor for Narrow {
    const NAME: &'static str = "chaos_compressor";
    const VERSION: &'static str = "2-narrow";

    fn compress(data: &[u8], level: Option<i32>) -> Result<Vec<u8>, Error> {
        if let Some(level) = level
            && !(0..=MAX_LEVEL).contains(&level)
        {
            return Err(Error::InvalidInput(format!(
                "level {level} is not supported (0 to {MAX_LEVEL})"
            )));
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

export_compressor!(Narrow);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_levels_0_to_3_and_keeps_values_as_they_are() {
        for level in [None, Some(0), Some(3)] {
            assert_eq!(Narrow::compress(b"abc", level).expect("taken"), b"abc");
        }
        for level in [-1, 4, 9] {
            assert!(Narrow::compress(b"abc", Some(level)).is_err(), "{level}");
        }
        assert_eq!(Narrow::decompress(b"abc", 3).expect("fits"), b"abc");
        assert!(Narrow::decompress(b"abc", 2).is_err());
    }
}
