//! The storage operations, [`FsStorage`]'s get, put, delete and clear: each reads the config
//! and settles what earlier calls owe (a batched sync, a sweep), then does its work with the
//! layout, the file format, the quota and the sync policy.

use std::fs;
use std::hash::{BuildHasher, RandomState};
use std::io::ErrorKind;

use geecache_guest_sdk::{Entry, Error, Storage, log};

use crate::config::{Fsync, Settings};
use crate::files::{discard, io_error, now_ms};
use crate::format::{decode, encode};
use crate::instance::INSTANCE;
use crate::quota::{make_room, record_usage, refuse_oversized, scan_bucket};
use crate::sweep::{CALL_SWEEP_BUDGET, CLEARED, SWEEP_BUDGET, continue_sweep, sweep};
use crate::sync::sync_pending;

pub(crate) struct FsStorage;

impl Storage for FsStorage {
    const NAME: &'static str = "fs_storage";

    fn get(group: &str, key: &str) -> Result<Option<Entry>, Error> {
        let settings = begin_call()?;
        continue_sweep(&settings, CALL_SWEEP_BUDGET);
        let path = settings.locate(group, key).path;
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io_error("read", &path, &err)),
        };
        let entry = match decode(&bytes) {
            Ok((stored_key, entry)) if stored_key == key => entry,
            Ok(_) => return Ok(None),
            Err(why) => {
                log::warn(&format!("removing unreadable {}: {why}", path.display()));
                discard(&path);
                return Ok(None);
            }
        };
        if entry.expires_at_ms.is_some_and(|at| at <= now_ms()) {
            discard(&path);
            return Ok(None);
        }
        Ok(Some(entry))
    }

    fn put(group: &str, key: &str, entry: Entry) -> Result<(), Error> {
        let settings = begin_call()?;
        continue_sweep(&settings, CALL_SWEEP_BUDGET);
        let bytes = encode(key, &entry)?;
        let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        let at = settings.locate(group, key);
        if let Some(quota) = settings.quota
            && size > quota
        {
            return Err(refuse_oversized(group, key, &at, size, quota));
        }
        settings.ensure_dir(&at.bucket_dir)?;
        let listed = scan_bucket(&at.bucket_dir, settings.quota.is_some())?;
        let bucket_bytes = match settings.quota {
            Some(quota) => Some(make_room(group, &at, listed, size, quota)?),
            None => None,
        };
        settings.write_entry(&at.path, &bytes)?;
        if let Some(bucket_bytes) = bucket_bytes {
            record_usage(&at, bucket_bytes);
        }
        log::trace(&format!(
            "stored {} bytes in {}",
            bytes.len(),
            at.path.display()
        ));
        Ok(())
    }

    fn delete(group: &str, key: &str) -> Result<(), Error> {
        let settings = begin_call()?;
        continue_sweep(&settings, CALL_SWEEP_BUDGET);
        let at = settings.locate(group, key);
        match fs::remove_file(&at.path) {
            Ok(()) => settings.dir_changed(&at.bucket_dir),
            Err(err) if err.kind() == ErrorKind::NotFound => {}
            Err(err) => return Err(io_error("remove", &at.path, &err)),
        }
        Ok(())
    }

    /// Renames the group's directory out of the way, which empties the group at once, then
    /// removes the files of such renamed directories for at most [`SWEEP_BUDGET`] (a large
    /// group may take longer than a plugin call may): what is left is removed by later
    /// calls, and no read ever looks there.
    fn clear(group: &str) -> Result<(), Error> {
        let settings = begin_call()?;
        let dir = settings.group_dir(group);
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        let nonce = RandomState::new().hash_one(now_ms());
        let trash = dir.with_file_name(format!(".{name}.{nonce:016x}{CLEARED}"));
        match fs::rename(&dir, &trash) {
            Ok(()) => {
                settings.dir_changed(&settings.dir);
                log::debug(&format!("cleared {}", dir.display()));
            }
            Err(err) if err.kind() == ErrorKind::NotFound => {}
            Err(err) => return Err(io_error("rename", &dir, &err)),
        }
        INSTANCE.with_borrow_mut(|instance| instance.usage.remove(&dir));
        let finished = sweep(&settings.dir, SWEEP_BUDGET);
        INSTANCE.with_borrow_mut(|instance| instance.sweep_due = !finished);
        Ok(())
    }
}

/// What every call does first: reads the config, and under a batched `fsync` policy syncs
/// what earlier calls wrote once the interval has passed since the last sync.
fn begin_call() -> Result<Settings, Error> {
    let settings = Settings::load()?;
    if let Fsync::Batched(interval) = settings.fsync {
        let due = INSTANCE.with_borrow(|instance| {
            !instance.pending.is_empty() && instance.last_sync.elapsed() >= interval
        });
        if due {
            sync_pending();
        }
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use geecache_guest_sdk::testing::Level;

    use super::*;
    use crate::test_support::{TempDir, path_of, value};

    #[test]
    fn invalid_config_fails_every_call() {
        let dir = TempDir::new("invalid");
        let host = dir.host(&[("fsync", "sometimes")]);
        host.run(|| {
            let get = FsStorage::get("g", "k").expect_err("get");
            assert!(matches!(&get, Error::InvalidInput(m) if m.contains("\"sometimes\"")));
            assert!(FsStorage::put("g", "k", value(1)).is_err());
            assert!(FsStorage::delete("g", "k").is_err());
            assert!(FsStorage::clear("g").is_err());
        });
        let host = dir.host(&[("quota_bytes", "lots")]);
        let put = host
            .run(|| FsStorage::put("g", "k", value(1)))
            .expect_err("put");
        assert!(matches!(&put, Error::InvalidInput(m) if m.contains("quota_bytes")));
        assert_eq!(fs::read_dir(&dir.0).expect("lists").count(), 0);
    }

    #[test]
    fn entries_round_trip_under_each_fsync_policy() {
        for fsync in ["always", "never", "5ms"] {
            let dir = TempDir::new("round-trip");
            let host = dir.host(&[("fsync", fsync)]);
            host.run(|| {
                let odd_key = "a/b c+%?\u{1f980}";
                assert_eq!(FsStorage::get("g", odd_key), Ok(None));
                FsStorage::put("g", odd_key, value(3)).expect("put");
                assert_eq!(FsStorage::get("g", odd_key), Ok(Some(value(3))));
                assert!(path_of(&dir, "g", odd_key).is_file(), "{fsync}");
                FsStorage::delete("g", odd_key).expect("delete");
                assert_eq!(FsStorage::get("g", odd_key), Ok(None));
                FsStorage::delete("g", odd_key).expect("delete again");
            });
            assert!(
                !host.logged(Level::Warn, "cannot sync"),
                "{fsync}: {:?}",
                host.logs()
            );
        }
    }
}
