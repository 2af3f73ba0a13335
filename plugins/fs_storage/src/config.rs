//! The operator's config: config keys `dir`, `fsync` and `quota_bytes`, read into [`Settings`]
//! at the start of every call, and the parsers that turn an invalid value into the
//! [`Error::InvalidInput`] every call then fails with.

use std::path::PathBuf;
use std::time::Duration;

use geecache_guest_sdk::{Error, config};

/// The directory used when the operator did not set config key `dir`.
const DEFAULT_DIR: &str = "/data";

/// When writes are synced to the disk: config key `fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fsync {
    /// Each write's file before its rename, and the directory after it.
    Always,
    /// Never: the kernel's writeback only.
    Never,
    /// What was written since the last sync, at the first call at least this long after it.
    Batched(Duration),
}

/// The operator's config, read at the start of every call.
pub(crate) struct Settings {
    /// The preopened directory the groups live in.
    pub(crate) dir: PathBuf,
    /// When writes are synced.
    pub(crate) fsync: Fsync,
    /// The most bytes of entry files per group, if limited.
    pub(crate) quota: Option<u64>,
}

impl Settings {
    /// Reads config keys `dir`, `fsync` and `quota_bytes`.
    pub(crate) fn load() -> Result<Self, Error> {
        let dir = config::get("dir").unwrap_or_else(|| DEFAULT_DIR.to_owned());
        let fsync = config::get("fsync").map_or(Ok(Fsync::Always), |v| parse_fsync(&v))?;
        let quota = config::get("quota_bytes")
            .map(|v| parse_quota(&v))
            .transpose()?;
        Ok(Self {
            dir: PathBuf::from(dir),
            fsync,
            quota,
        })
    }
}

/// Parses config key `fsync`: `always`, `never` or `<N>ms`.
fn parse_fsync(value: &str) -> Result<Fsync, Error> {
    let trimmed = value.trim();
    let parsed = match trimmed {
        "always" => Some(Fsync::Always),
        "never" => Some(Fsync::Never),
        _ => trimmed
            .strip_suffix("ms")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse().ok())
            .map(|ms| Fsync::Batched(Duration::from_millis(ms))),
    };
    parsed.ok_or_else(|| {
        Error::InvalidInput(format!(
            "fs_storage config fsync = {value:?} is invalid: expected \"always\" (the \
             default), \"never\", or a batch interval in milliseconds such as \"50ms\""
        ))
    })
}

/// Parses config key `quota_bytes`: a byte count, or a number with suffix `KiB`, `MiB`,
/// `GiB` (or `K`, `M`, `G`, the same binary units; any case), at least 1 byte.
fn parse_quota(value: &str) -> Result<u64, Error> {
    let trimmed = value.trim();
    let digits = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, suffix) = trimmed.split_at(digits);
    let unit: Option<u64> = match suffix.trim().to_ascii_lowercase().as_str() {
        "" => Some(1),
        "k" | "kib" => Some(1 << 10),
        "m" | "mib" => Some(1 << 20),
        "g" | "gib" => Some(1 << 30),
        _ => None,
    };
    unit.zip(number.parse::<u64>().ok())
        .and_then(|(unit, n)| n.checked_mul(unit))
        .filter(|&bytes| bytes > 0)
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "fs_storage config quota_bytes = {value:?} is invalid: expected a byte count \
                 of at least 1 such as \"1048576\", or a whole number with a binary suffix \
                 such as \"512KiB\", \"64MiB\" or \"2GiB\" (\"K\", \"M\" and \"G\" mean the \
                 same); leave it unset for no quota"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_values_parse_in_binary_units() {
        for (text, bytes) in [
            ("65536", 65536),
            (" 1 ", 1),
            ("64KiB", 64 << 10),
            ("64K", 64 << 10),
            ("64kib", 64 << 10),
            ("3MiB", 3 << 20),
            ("3M", 3 << 20),
            ("2 GiB", 2 << 30),
            ("2G", 2 << 30),
        ] {
            assert_eq!(parse_quota(text), Ok(bytes), "{text:?}");
        }
        for text in [
            "",
            "0",
            "0KiB",
            "-1",
            "1.5MiB",
            "MiB",
            "1TiB",
            "1MB",
            "lots",
            "99999999999G",
        ] {
            let err = parse_quota(text).expect_err(text);
            assert!(
                matches!(&err, Error::InvalidInput(m)
                    if m.contains("quota_bytes") && m.contains(&format!("{text:?}"))
                        && m.contains("64MiB")),
                "{text:?}: {err:?}"
            );
        }
    }

    #[test]
    fn fsync_values_parse() {
        assert_eq!(parse_fsync("always"), Ok(Fsync::Always));
        assert_eq!(parse_fsync("never"), Ok(Fsync::Never));
        assert_eq!(
            parse_fsync(" 50ms"),
            Ok(Fsync::Batched(Duration::from_millis(50)))
        );
        assert_eq!(parse_fsync("0ms"), Ok(Fsync::Batched(Duration::ZERO)));
        for text in ["", "sometimes", "50", "ms", "-5ms", "5s", "1.5ms", "Always"] {
            let err = parse_fsync(text).expect_err(text);
            assert!(
                matches!(&err, Error::InvalidInput(m)
                    if m.contains("fsync") && m.contains(&format!("{text:?}"))
                        && m.contains("\"always\"") && m.contains("50ms")),
                "{text:?}: {err:?}"
            );
        }
    }
}
