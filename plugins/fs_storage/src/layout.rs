//! The on-disk layout: where a group's and a key's entry live (`<dir>/<group name>/<bb>/<key
//! name>`), the safe file names made of any bytes, the key's bucket, and the temporary names
//! beside an entry.

use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::Settings;
use crate::files::now_ms;

/// Names of up to this many bytes are hex-encoded whole (201 characters with the prefix, under
/// the usual 255-byte file name limit); longer ones are hashed.
pub(crate) const MAX_HEX_BYTES: usize = 100;
/// Buckets per group: one per value of the first byte of a key's SHA-256.
pub(crate) const BUCKETS: usize = 256;

/// Where one key's entry lives.
pub(crate) struct Location {
    /// The group's directory.
    pub(crate) group_dir: PathBuf,
    /// The key's bucket: the first byte of its SHA-256.
    pub(crate) bucket: u8,
    /// `group_dir/<bb>`.
    pub(crate) bucket_dir: PathBuf,
    /// The entry file.
    pub(crate) path: PathBuf,
}

impl Settings {
    /// The directory of `group`'s entries.
    pub(crate) fn group_dir(&self, group: &str) -> PathBuf {
        self.dir.join(file_name(group.as_bytes()))
    }

    /// Where the entry for `key` of `group` lives.
    pub(crate) fn locate(&self, group: &str, key: &str) -> Location {
        let group_dir = self.group_dir(group);
        let bucket = bucket_of(key);
        let bucket_dir = group_dir.join(bucket_name(bucket));
        let path = bucket_dir.join(file_name(key.as_bytes()));
        Location {
            group_dir,
            bucket,
            bucket_dir,
            path,
        }
    }
}

/// The bucket of `key`: the first byte of the SHA-256 of its bytes.
pub(crate) fn bucket_of(key: &str) -> u8 {
    Sha256::digest(key.as_bytes())[0]
}

/// The directory name of `bucket`: two lower-case hex digits.
pub(crate) fn bucket_name(bucket: u8) -> String {
    hex(&[bucket])
}

/// A safe file name for any byte string: `x<hex>` when short, `h<sha256 hex>` otherwise. The
/// prefixes keep the two forms apart (and give the empty string a name).
pub(crate) fn file_name(bytes: &[u8]) -> String {
    if bytes.len() <= MAX_HEX_BYTES {
        format!("x{}", hex(bytes))
    } else {
        format!("h{}", hex(&Sha256::digest(bytes)))
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// A temporary name beside `path`, unique enough that concurrent writers (separate plugin
/// instances) never share one. `RandomState` is seeded from WASI's random source.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let nonce = RandomState::new().hash_one(now_ms());
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.{nonce:016x}.tmp"))
}

#[cfg(test)]
mod tests {
    use crate::config::Fsync;

    use super::*;

    #[test]
    fn names_are_safe_and_distinct() {
        assert_eq!(file_name(b""), "x");
        assert_eq!(file_name(b"../a/b"), "x2e2e2f612f62");
        let long = vec![b'a'; MAX_HEX_BYTES + 1];
        let hashed = file_name(&long);
        assert!(hashed.starts_with('h') && hashed.len() == 65);
        assert!(file_name(&long[..MAX_HEX_BYTES]).len() <= 255);
    }

    #[test]
    fn an_entry_lives_in_its_keys_bucket() {
        let settings = Settings {
            dir: PathBuf::from("/data"),
            fsync: Fsync::Always,
            quota: None,
        };
        // SHA-256("abc") = ba7816bf...
        let at = settings.locate("g", "abc");
        assert_eq!(at.bucket, 0xba);
        assert_eq!(at.group_dir, Path::new("/data/x67"));
        assert_eq!(at.bucket_dir, Path::new("/data/x67/ba"));
        assert_eq!(at.path, Path::new("/data/x67/ba/x616263"));
        // SHA-256("") = e3b0c442...
        assert_eq!(settings.locate("g", "").path, Path::new("/data/x67/e3/x"));
        assert_eq!(bucket_name(0x05), "05");
    }
}
