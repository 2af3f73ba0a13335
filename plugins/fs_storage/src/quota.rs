//! A put's bucket and the group's quota, config key `quota_bytes`: listing the written bucket
//! (and removing its old temporary files), counting the group's usage from the buckets'
//! `.usage` files, evicting the bucket's oldest entries to make room, refusing what does not
//! fit, and recording the bucket's new total.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use geecache_guest_sdk::{Error, log};

use crate::files::{discard, io_error, write_file};
use crate::instance::INSTANCE;
use crate::layout::{BUCKETS, Location, bucket_name, temp_path};

/// A temporary file older than this is left over from a writer that died before its rename.
pub(crate) const TMP_MAX_AGE: Duration = Duration::from_secs(60);
/// The name of a bucket's usage file: its entries' byte total, in decimal.
const USAGE_FILE: &str = ".usage";
/// How often an instance reads a group's `.usage` files again.
pub(crate) const USAGE_REFRESH: Duration = Duration::from_secs(1);

/// One group's byte totals per bucket, as this instance last read its `.usage` files.
pub(crate) struct GroupUsage {
    /// Bytes of entry files per bucket.
    buckets: [u64; BUCKETS],
    /// When the `.usage` files were read.
    read_at: Instant,
}

/// One entry file of a bucket, as a put's listing saw it.
pub(crate) struct Listed {
    /// The entry file.
    path: PathBuf,
    /// Its size in bytes.
    size: u64,
    /// Its modification time (the epoch when unknown: evicted first).
    modified: SystemTime,
}

/// Lists `bucket_dir`: removes temporary files older than [`TMP_MAX_AGE`], and when `count`
/// returns its entry files (names not starting with `.`) with their sizes and times.
pub(crate) fn scan_bucket(bucket_dir: &Path, count: bool) -> Result<Vec<Listed>, Error> {
    let entries = fs::read_dir(bucket_dir).map_err(|err| io_error("list", bucket_dir, &err))?;
    let now = SystemTime::now();
    let mut listed = Vec::new();
    let mut stale = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            if name.ends_with(".tmp") && is_stale(&entry, now) {
                discard(&entry.path());
                stale += 1;
            }
            continue;
        }
        if !count {
            continue;
        }
        // Removed since the listing, or not a file: not an entry.
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() {
            listed.push(Listed {
                path: entry.path(),
                size: meta.len(),
                modified: meta.modified().unwrap_or(UNIX_EPOCH),
            });
        }
    }
    if stale > 0 {
        log::debug(&format!(
            "removed {stale} temporary files older than {} s in {}",
            TMP_MAX_AGE.as_secs(),
            bucket_dir.display()
        ));
    }
    Ok(listed)
}

/// Whether `entry` was last modified more than [`TMP_MAX_AGE`] before `now`.
fn is_stale(entry: &fs::DirEntry, now: SystemTime) -> bool {
    entry
        .metadata()
        .and_then(|meta| meta.modified())
        .is_ok_and(|at| now.duration_since(at).is_ok_and(|age| age > TMP_MAX_AGE))
}

/// Makes room under `quota` for an entry of `size` bytes at `at`, removing the oldest other
/// entries of its bucket (`listed`, the bucket's entry files) as needed; refuses when even
/// all of them would not make room. Returns the bucket's byte total once the entry is
/// written.
pub(crate) fn make_room(
    group: &str,
    at: &Location,
    mut listed: Vec<Listed>,
    size: u64,
    quota: u64,
) -> Result<u64, Error> {
    let bucket_bytes: u64 = listed.iter().map(|e| e.size).sum();
    let current = listed
        .iter()
        .find(|e| e.path == at.path)
        .map_or(0, |e| e.size);
    let used = other_buckets_usage(&at.group_dir, at.bucket).saturating_add(bucket_bytes);
    let excess = used
        .saturating_sub(current)
        .saturating_add(size)
        .saturating_sub(quota);
    if excess == 0 {
        return Ok(bucket_bytes - current + size);
    }
    if bucket_bytes - current < excess {
        return Err(refuse_full(group, at, bucket_bytes - current, used, quota));
    }
    listed.retain(|e| e.path != at.path);
    listed.sort_by_key(|e| e.modified);
    let (mut freed, mut evicted) = (0, 0);
    for victim in &listed {
        if freed >= excess {
            break;
        }
        match fs::remove_file(&victim.path) {
            Err(err) if err.kind() != ErrorKind::NotFound => {
                log::warn(&io_error("remove", &victim.path, &err).to_string());
            }
            _ => {
                freed += victim.size;
                evicted += 1;
            }
        }
    }
    if freed < excess {
        return Err(refuse_full(
            group,
            at,
            bucket_bytes - current - freed,
            used - freed,
            quota,
        ));
    }
    log::debug(&format!(
        "evicted {evicted} entries ({freed} bytes) of group {group:?} from {} to stay within \
         its quota of {quota} bytes",
        at.bucket_dir.display()
    ));
    Ok(bucket_bytes - freed - current + size)
}

/// The put of an entry of `size` bytes, more than the group's whole `quota`: removes the
/// key's previous entry (so that it is not served in place of the refused one) and says why.
pub(crate) fn refuse_oversized(
    group: &str,
    key: &str,
    at: &Location,
    size: u64,
    quota: u64,
) -> Error {
    discard(&at.path);
    let message = format!(
        "an entry of {size} bytes is larger than group {group:?}'s whole quota of {quota} \
         bytes; raise fs_storage's quota_bytes"
    );
    log::warn(&format!("refused key {key:?}: {message}"));
    Error::InvalidInput(message)
}

/// The put that does not fit in the group's `quota` with `used` bytes, even after evicting
/// everything else in its bucket: removes the key's previous entry (so that it is not served
/// in place of the refused one; `others` is what the bucket holds besides it) and says why.
fn refuse_full(group: &str, at: &Location, others: u64, used: u64, quota: u64) -> Error {
    if fs::remove_file(&at.path).is_ok() {
        record_usage(at, others);
    }
    let message = format!(
        "group {group:?} is at its quota of {quota} bytes ({used} used); raise fs_storage's \
         quota_bytes or flush the group"
    );
    log::warn(&format!(
        "refused a put to {}: {message}",
        at.path.display()
    ));
    Error::Unavailable(message)
}

/// The bytes used by `group_dir`'s buckets other than `own`, from this instance's cache,
/// which is read again from the `.usage` files when older than [`USAGE_REFRESH`].
fn other_buckets_usage(group_dir: &Path, own: u8) -> u64 {
    let stale = INSTANCE.with_borrow(|instance| {
        instance
            .usage
            .get(group_dir)
            .is_none_or(|usage| usage.read_at.elapsed() >= USAGE_REFRESH)
    });
    if stale {
        let usage = GroupUsage {
            buckets: read_usage(group_dir),
            read_at: Instant::now(),
        };
        INSTANCE.with_borrow_mut(|instance| instance.usage.insert(group_dir.to_owned(), usage));
    }
    INSTANCE.with_borrow(|instance| {
        instance.usage.get(group_dir).map_or(0, |usage| {
            usage
                .buckets
                .iter()
                .enumerate()
                .filter(|&(bucket, _)| bucket != usize::from(own))
                .fold(0u64, |sum, (_, &bytes)| sum.saturating_add(bytes))
        })
    })
}

/// Reads the `.usage` file of each of `group_dir`'s buckets; a missing or unreadable one
/// counts as 0.
fn read_usage(group_dir: &Path) -> [u64; BUCKETS] {
    let mut buckets = [0; BUCKETS];
    for (bucket, bytes) in (0..=u8::MAX).zip(buckets.iter_mut()) {
        let path = group_dir.join(bucket_name(bucket)).join(USAGE_FILE);
        if let Ok(text) = fs::read_to_string(path) {
            *bytes = text.trim().parse().unwrap_or(0);
        }
    }
    buckets
}

/// Records `bytes` as the total of `at`'s bucket: in its `.usage` file (tmp-then-rename, not
/// synced: the next put there recomputes it) and in this instance's cache. Failing to write
/// the file is logged: the entry is stored, only other instances' view of the usage lags.
pub(crate) fn record_usage(at: &Location, bytes: u64) {
    let path = at.bucket_dir.join(USAGE_FILE);
    let tmp = temp_path(&path);
    let written = write_file(&tmp, format!("{bytes}\n").as_bytes(), false)
        .and_then(|()| fs::rename(&tmp, &path).map_err(|err| io_error("rename", &path, &err)));
    if let Err(err) = written {
        let _ = fs::remove_file(&tmp);
        log::warn(&err.to_string());
    }
    INSTANCE.with_borrow_mut(|instance| {
        if let Some(usage) = instance.usage.get_mut(&at.group_dir) {
            usage.buckets[usize::from(at.bucket)] = bytes;
        }
    });
}

#[cfg(test)]
mod tests {
    use geecache_guest_sdk::Storage;
    use geecache_guest_sdk::testing::Level;

    use super::*;
    use crate::format::encode;
    use crate::layout::{bucket_of, file_name};
    use crate::storage::FsStorage;
    use crate::test_support::{
        TempDir, age, entry_files, keys_in_distinct_buckets, keys_in_one_bucket, path_of, value,
    };

    #[test]
    fn over_quota_the_oldest_entries_of_the_bucket_are_evicted() {
        let dir = TempDir::new("evict");
        let keys = keys_in_one_bucket(4);
        let size = encode(&keys[0], &value(100)).expect("encodes").len() as u64;
        let quota = 3 * size + size / 2;
        let host = dir.host(&[("quota_bytes", &quota.to_string())]);
        host.run(|| {
            for key in &keys[..3] {
                FsStorage::put("g", key, value(100)).expect("fits");
            }
        });
        // keys[1] is the oldest, then keys[0], then keys[2].
        for (key, secs) in [(&keys[0], 200), (&keys[1], 300), (&keys[2], 100)] {
            age(&path_of(&dir, "g", key), Duration::from_secs(secs));
        }
        host.run(|| {
            // Replacing an entry by one of the same size needs no room.
            FsStorage::put("g", &keys[2], value(100)).expect("replaces");
            FsStorage::put("g", &keys[3], value(100)).expect("fits after an eviction");
            assert_eq!(FsStorage::get("g", &keys[1]), Ok(None), "the oldest went");
            for key in [&keys[0], &keys[2], &keys[3]] {
                assert_eq!(FsStorage::get("g", key), Ok(Some(value(100))), "{key}");
            }
        });
        assert!(
            host.logged(Level::Debug, "evicted 1 entries"),
            "{:?}",
            host.logs()
        );
        let (files, bytes) = entry_files(&dir, "g");
        assert_eq!((files, bytes), (3, 3 * size));
        assert!(bytes <= quota);
        let usage = dir
            .0
            .join(file_name(b"g"))
            .join(bucket_name(bucket_of(&keys[0])))
            .join(USAGE_FILE);
        assert_eq!(
            fs::read_to_string(usage).expect("reads .usage"),
            format!("{}\n", 3 * size)
        );
    }

    #[test]
    fn an_entry_larger_than_the_quota_is_refused_at_once() {
        let dir = TempDir::new("oversized");
        dir.host(&[])
            .run(|| FsStorage::put("g", "k", value(10)).expect("no quota"));
        let host = dir.host(&[("quota_bytes", "1K")]);
        let err = host
            .run(|| FsStorage::put("g", "k", value(2000)))
            .expect_err("larger than the quota");
        assert!(
            matches!(&err, Error::InvalidInput(m)
                if m.contains("larger than group \"g\"'s whole quota of 1024 bytes")),
            "{err:?}"
        );
        assert!(host.logged(Level::Warn, "refused key \"k\""));
        assert_eq!(
            host.run(|| FsStorage::get("g", "k")),
            Ok(None),
            "the value the put was to replace is not served"
        );
    }

    #[test]
    fn a_put_is_refused_when_its_bucket_cannot_make_room() {
        let dir = TempDir::new("full");
        let keys = keys_in_distinct_buckets(3);
        let size = encode(&keys[0], &value(100)).expect("encodes").len() as u64;
        let quota = (2 * size + size / 2).to_string();
        // Another instance fills two buckets...
        std::thread::scope(|scope| {
            scope.spawn(|| {
                dir.host(&[("quota_bytes", &quota)]).run(|| {
                    FsStorage::put("users", &keys[0], value(100)).expect("fits");
                    FsStorage::put("users", &keys[1], value(100)).expect("fits");
                });
            });
        });
        // ...and this one, reading their `.usage`, has nothing to evict in the third.
        let host = dir.host(&[("quota_bytes", &quota)]);
        let err = host
            .run(|| FsStorage::put("users", &keys[2], value(100)))
            .expect_err("over the quota");
        let expected = format!(
            "group \"users\" is at its quota of {quota} bytes ({} used); raise fs_storage's \
             quota_bytes or flush the group",
            2 * size
        );
        assert_eq!(err, Error::Unavailable(expected));
        assert!(host.logged(Level::Warn, "is at its quota"));
        assert_eq!(entry_files(&dir, "users").0, 2, "nothing was evicted");
    }

    #[test]
    fn a_put_removes_old_temporary_files_of_its_bucket() {
        let dir = TempDir::new("tmp");
        let keys = keys_in_one_bucket(2);
        let host = dir.host(&[]);
        host.run(|| FsStorage::put("g", &keys[0], value(1)).expect("put"));
        let bucket = path_of(&dir, "g", &keys[0]).with_file_name("");
        let old = bucket.join(".xdead.0123456789abcdef.tmp");
        let fresh = bucket.join(".xlive.fedcba9876543210.tmp");
        fs::write(&old, b"torn").expect("writes");
        fs::write(&fresh, b"in flight").expect("writes");
        age(&old, Duration::from_secs(120));
        host.run(|| FsStorage::put("g", &keys[1], value(1)).expect("put"));
        assert!(!old.exists(), "a temporary file a minute old was removed");
        assert!(fresh.exists(), "a live writer's was kept");
        assert!(host.logged(Level::Debug, "removed 1 temporary files"));
    }
}
