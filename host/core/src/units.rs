//! Units the operator writes: sizes (`64MiB`) and durations (`500ms`), parsed one way for
//! flags, the TOML file and query strings alike.

use std::time::Duration;

/// Parses a size such as `64MiB`, `512KiB`, `1GB` or `4096`.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("invalid size {s:?}: use e.g. 4096, 512KiB, 64MiB, 1GiB"))
}

/// Parses a duration such as `500ms`, `5s`, `10m`, `1h`.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 500ms, 5s, 10m, 1h"))
}
