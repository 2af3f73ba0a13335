//! Removing cleared groups: a clear renames the group's directory to a `.cleared` one, and
//! the sweep removes such directories one bucket at a time, within a time budget per call.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;
use std::time::{Duration, Instant};

use geecache_guest_sdk::log;

use crate::config::Settings;
use crate::files::discard;
use crate::instance::INSTANCE;

/// How long one clear spends removing the files of groups cleared before.
pub(crate) const SWEEP_BUDGET: Duration = Duration::from_millis(200);
/// How long any other call spends on what a clear's sweep left, while this instance knows of
/// some.
pub(crate) const CALL_SWEEP_BUDGET: Duration = Duration::from_millis(20);
/// The suffix of a cleared group's directory, renamed away to be removed.
pub(crate) const CLEARED: &str = ".cleared";

/// Continues removing cleared groups' directories under `settings.dir` for up to `budget`,
/// when this instance knows some may be left.
pub(crate) fn continue_sweep(settings: &Settings, budget: Duration) {
    if INSTANCE.with_borrow(|instance| instance.sweep_due) {
        let finished = sweep(&settings.dir, budget);
        INSTANCE.with_borrow_mut(|instance| instance.sweep_due = !finished);
    }
}

/// Removes each cleared group's directory under `base`, until `budget` is spent. Returns
/// whether it went through them all (failures are logged and left for a later clear).
pub(crate) fn sweep(base: &Path, budget: Duration) -> bool {
    let deadline = Instant::now() + budget;
    let Ok(dirs) = fs::read_dir(base) else {
        return true;
    };
    for dir in dirs.flatten() {
        if dir.file_name().to_string_lossy().ends_with(CLEARED)
            && !sweep_trash(&dir.path(), deadline)
        {
            return false;
        }
    }
    true
}

/// Removes one cleared group's directory `trash`: each bucket directory's files (one listing
/// per bucket) then the bucket, each file of its root (old flat-layout entries, temporary or
/// stray files), then `trash` itself. Returns false when `deadline` came first.
fn sweep_trash(trash: &Path, deadline: Instant) -> bool {
    let Ok(children) = fs::read_dir(trash) else {
        return true;
    };
    for child in children.flatten() {
        if Instant::now() >= deadline {
            return false;
        }
        let path = child.path();
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            if !empty_dir(&path, deadline) {
                return false;
            }
            remove_dir(&path);
        } else {
            discard(&path);
        }
    }
    remove_dir(trash);
    true
}

/// Removes what directory `dir` (a bucket) holds, until `deadline`. Returns false when the
/// deadline came first.
fn empty_dir(dir: &Path, deadline: Instant) -> bool {
    let Ok(files) = fs::read_dir(dir) else {
        return true;
    };
    for file in files.flatten() {
        if Instant::now() >= deadline {
            return false;
        }
        let path = file.path();
        if file.file_type().is_ok_and(|t| t.is_dir()) {
            // Not something this plugin makes: small, if anything.
            if let Err(err) = fs::remove_dir_all(&path) {
                log::warn(&format!("cannot remove {} yet: {err}", path.display()));
            }
        } else {
            discard(&path);
        }
    }
    true
}

/// Removes the emptied directory `dir`; a missing one is fine, a failure is logged and left
/// for a later sweep.
fn remove_dir(dir: &Path) {
    match fs::remove_dir(dir) {
        Err(err) if err.kind() == ErrorKind::DirectoryNotEmpty => {
            // Another instance's sweep may still be at it.
            log::debug(&format!("cannot remove {} yet: {err}", dir.display()));
        }
        Err(err) if err.kind() != ErrorKind::NotFound => {
            log::warn(&format!("cannot remove {} yet: {err}", dir.display()));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use geecache_guest_sdk::Storage;
    use geecache_guest_sdk::testing::FakeHost;

    use super::*;
    use crate::layout::file_name;
    use crate::storage::FsStorage;
    use crate::test_support::{TempDir, keys_in_distinct_buckets, value};

    #[test]
    fn a_clear_empties_the_group_at_once_and_sweeps_its_buckets() {
        let dir = TempDir::new("clear");
        let keys = keys_in_distinct_buckets(20);
        let host = dir.host(&[("quota_bytes", "1MiB")]);
        host.run(|| {
            for key in &keys {
                FsStorage::put("g", key, value(10)).expect("put");
            }
            FsStorage::put("other", "kept", value(10)).expect("put");
        });
        let group_dir = dir.0.join(file_name(b"g"));
        // A flat-layout entry and a stray temporary file in the group's root.
        fs::write(group_dir.join(file_name(b"legacy")), b"v1 entry").expect("writes");
        fs::write(group_dir.join(".xlegacy.0000000000000001.tmp"), b"").expect("writes");
        let names = || -> Vec<String> {
            fs::read_dir(&dir.0)
                .expect("lists")
                .map(|e| e.expect("lists").file_name().to_string_lossy().into_owned())
                .collect()
        };
        host.run(|| {
            FsStorage::clear("g").expect("clear");
            assert!(!group_dir.exists(), "empty at once");
            assert_eq!(FsStorage::get("g", &keys[0]), Ok(None));
            assert_eq!(FsStorage::get("other", "kept"), Ok(Some(value(10))));
        });
        // A loaded machine may need more than the clear's budget: later calls go on.
        sweep_with_gets(&host);
        assert_eq!(names(), [file_name(b"other")], "the trash was swept");

        // A sweep out of time leaves the rest to later calls, of any kind.
        host.run(|| {
            for key in &keys {
                FsStorage::put("g", key, value(10)).expect("put");
            }
        });
        let trash = dir.0.join(format!(".x67.0000000000000002{CLEARED}"));
        fs::rename(&group_dir, &trash).expect("renames");
        host.run(|| assert!(!sweep(&dir.0, Duration::ZERO), "no time at all"));
        assert!(trash.is_dir());
        INSTANCE.with_borrow_mut(|instance| instance.sweep_due = true);
        sweep_with_gets(&host);
        assert_eq!(
            names(),
            [file_name(b"other")],
            "the gets' sweeps removed it"
        );
    }

    /// Calls get (under `host`) until this instance's sweep is done; at most 1000 times.
    fn sweep_with_gets(host: &FakeHost) {
        for _ in 0..1000 {
            if !INSTANCE.with_borrow(|instance| instance.sweep_due) {
                return;
            }
            host.run(|| FsStorage::get("other", "kept").expect("get"));
        }
        panic!("the sweep never finished");
    }
}
