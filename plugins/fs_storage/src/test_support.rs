//! What the modules' tests share: a temporary `dir` with a fake host configured for it, keys
//! chosen by bucket, where an entry lives, and the entry files a group holds.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use geecache_guest_sdk::Entry;
use geecache_guest_sdk::testing::FakeHost;

use crate::files::now_ms;
use crate::layout::{bucket_name, bucket_of, file_name};

/// A directory of its own under the system's temp dir, removed when dropped.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> Self {
        let nonce = RandomState::new().hash_one(now_ms());
        let path = std::env::temp_dir().join(format!(
            "fs_storage-{name}-{}-{nonce:016x}",
            std::process::id()
        ));
        fs::create_dir_all(&path).expect("creates the temp dir");
        Self(path)
    }

    /// A fake host whose `dir` is this directory, with `config` besides.
    pub(crate) fn host(&self, config: &[(&str, &str)]) -> FakeHost {
        let mut host = FakeHost::new().config("dir", self.0.to_string_lossy());
        for &(k, v) in config {
            host = host.config(k, v);
        }
        host
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `n` keys of the same bucket as `key0000`, that one first.
pub(crate) fn keys_in_one_bucket(n: usize) -> Vec<String> {
    let bucket = bucket_of("key0000");
    (0..)
        .map(|i| format!("key{i:04}"))
        .filter(|key| bucket_of(key) == bucket)
        .take(n)
        .collect()
}

/// Keys of `n` different buckets.
pub(crate) fn keys_in_distinct_buckets(n: usize) -> Vec<String> {
    let mut seen = BTreeSet::new();
    (0..)
        .map(|i| format!("key{i:04}"))
        .filter(|key| seen.insert(bucket_of(key)))
        .take(n)
        .collect()
}

/// Where `key` of `group` lives under `dir`.
pub(crate) fn path_of(dir: &TempDir, group: &str, key: &str) -> PathBuf {
    dir.0
        .join(file_name(group.as_bytes()))
        .join(bucket_name(bucket_of(key)))
        .join(file_name(key.as_bytes()))
}

/// Sets the modification time of `path` to `age` ago.
pub(crate) fn age(path: &Path, age: Duration) {
    let file = File::options()
        .write(true)
        .open(path)
        .expect("opens the file");
    file.set_modified(SystemTime::now() - age)
        .expect("sets its mtime");
}

/// The entry files (not `.`-files) of every bucket of `group` under `dir`, and their
/// byte total.
pub(crate) fn entry_files(dir: &TempDir, group: &str) -> (usize, u64) {
    let Ok(buckets) = fs::read_dir(dir.0.join(file_name(group.as_bytes()))) else {
        return (0, 0);
    };
    let mut found = (0, 0);
    for bucket in buckets.flatten() {
        for file in fs::read_dir(bucket.path())
            .expect("lists a bucket")
            .flatten()
        {
            if !file.file_name().to_string_lossy().starts_with('.') {
                found.0 += 1;
                found.1 += file.metadata().expect("stats an entry").len();
            }
        }
    }
    found
}

pub(crate) fn value(n: usize) -> Entry {
    Entry::new(vec![7; n], "none")
}
