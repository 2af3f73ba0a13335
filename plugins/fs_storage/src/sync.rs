//! Durability, config key `fsync`: writing an entry by temporary file and rename, creating a
//! bucket, and making what changed durable per the policy (synced at once under `always`,
//! remembered in [`Pending`] and synced by a later call under `<N>ms`).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Instant;

use geecache_guest_sdk::{Error, log};

use crate::config::{Fsync, Settings};
use crate::files::{io_error, write_file};
use crate::instance::INSTANCE;
use crate::layout::temp_path;

/// The most files and directories a batched `fsync` policy remembers before syncing them all.
pub(crate) const PENDING_CAP: usize = 1024;

/// Files and directories a batched `fsync` policy has yet to sync.
#[derive(Default)]
pub(crate) struct Pending {
    /// Entry files renamed into place.
    pub(crate) files: BTreeSet<PathBuf>,
    /// Directories whose entries changed (renames, creations, removals).
    dirs: BTreeSet<PathBuf>,
}

impl Pending {
    /// How many paths are remembered.
    pub(crate) fn len(&self) -> usize {
        self.files.len() + self.dirs.len()
    }

    /// Whether nothing is remembered.
    pub(crate) fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dirs.is_empty()
    }
}

impl Settings {
    /// Creates `bucket_dir` (and its group's directory) unless it exists, making the new
    /// directory entries durable per the policy.
    pub(crate) fn ensure_dir(&self, bucket_dir: &Path) -> Result<(), Error> {
        if bucket_dir.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(bucket_dir).map_err(|err| io_error("create", bucket_dir, &err))?;
        if let Some(group_dir) = bucket_dir.parent() {
            self.dir_changed(group_dir);
            if let Some(base) = group_dir.parent() {
                self.dir_changed(base);
            }
        }
        Ok(())
    }

    /// Writes `bytes` to a temporary file beside `path` and renames it over `path`, syncing
    /// per the policy.
    pub(crate) fn write_entry(&self, path: &Path, bytes: &[u8]) -> Result<(), Error> {
        let tmp = temp_path(path);
        let written = write_file(&tmp, bytes, self.fsync == Fsync::Always)
            .and_then(|()| fs::rename(&tmp, path).map_err(|err| io_error("rename", path, &err)));
        if let Err(err) = written {
            // Best effort: the error being returned is the interesting one.
            let _ = fs::remove_file(&tmp);
            return Err(err);
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        match self.fsync {
            Fsync::Always => sync_dir(dir),
            Fsync::Never => {}
            Fsync::Batched(_) => remember(Some(path), dir),
        }
        Ok(())
    }

    /// Makes a rename, creation or removal in `dir` durable per the policy.
    pub(crate) fn dir_changed(&self, dir: &Path) {
        match self.fsync {
            Fsync::Always => sync_dir(dir),
            Fsync::Never => {}
            Fsync::Batched(_) => remember(None, dir),
        }
    }
}

/// Remembers `file` (if any) and `dir` for the next batched sync; syncs everything at once
/// when [`PENDING_CAP`] paths are remembered.
fn remember(file: Option<&Path>, dir: &Path) {
    let full = INSTANCE.with_borrow_mut(|instance| {
        if let Some(file) = file {
            instance.pending.files.insert(file.to_owned());
        }
        instance.pending.dirs.insert(dir.to_owned());
        instance.pending.len() >= PENDING_CAP
    });
    if full {
        sync_pending();
    }
}

/// Syncs the files and directories written since the last batched sync. Failures are logged
/// (one line for all files): the calls that wrote them have returned already.
pub(crate) fn sync_pending() {
    let pending = INSTANCE.with_borrow_mut(|instance| std::mem::take(&mut instance.pending));
    let mut failed = 0;
    let mut first_failure = None;
    for file in &pending.files {
        match File::open(file).and_then(|f| f.sync_all()) {
            // Gone since (replaced, deleted, or its group cleared): nothing to sync.
            Err(err) if err.kind() != ErrorKind::NotFound => {
                failed += 1;
                first_failure.get_or_insert_with(|| format!("{}: {err}", file.display()));
            }
            _ => {}
        }
    }
    if let Some(first) = first_failure {
        log::warn(&format!(
            "cannot sync {failed} of {} files written since the last sync (first: {first})",
            pending.files.len()
        ));
    }
    for dir in &pending.dirs {
        sync_dir(dir);
    }
    INSTANCE.with_borrow_mut(|instance| instance.last_sync = Instant::now());
    log::trace(&format!(
        "synced {} files and {} directories",
        pending.files.len(),
        pending.dirs.len()
    ));
}

/// Syncs directory `dir`, so that renames, creations and removals in it survive a crash. A
/// runtime that cannot open or sync a directory is logged once, and this instance no longer
/// tries: the write itself has succeeded, only its durability is the kernel's then.
fn sync_dir(dir: &Path) {
    if INSTANCE.with_borrow(|instance| instance.dir_sync_failed) {
        return;
    }
    match File::open(dir).and_then(|d| d.sync_all()) {
        // Gone since (its group was cleared): nothing to sync.
        Err(err) if err.kind() != ErrorKind::NotFound => {
            INSTANCE.with_borrow_mut(|instance| instance.dir_sync_failed = true);
            log::warn(&format!(
                "cannot sync directory {}: {err}; this instance no longer syncs directories, \
                 so renames and removals are durable only by the kernel's writeback (entry \
                 files are still synced)",
                dir.display()
            ));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use geecache_guest_sdk::Storage;
    use geecache_guest_sdk::testing::Level;

    use super::*;
    use crate::storage::FsStorage;
    use crate::test_support::{TempDir, value};

    #[test]
    fn batched_writes_are_synced_by_a_later_call() {
        let dir = TempDir::new("batched");
        let pending = || INSTANCE.with_borrow(|instance| instance.pending.files.len());
        dir.host(&[("fsync", "3600000ms")]).run(|| {
            FsStorage::put("g", "a", value(1)).expect("put");
            FsStorage::put("g", "b", value(1)).expect("put");
            assert_eq!(FsStorage::get("g", "a"), Ok(Some(value(1))));
            assert_eq!(pending(), 2, "not an hour yet");
        });
        dir.host(&[("fsync", "0ms")]).run(|| {
            assert_eq!(FsStorage::get("g", "b"), Ok(Some(value(1))));
            assert_eq!(pending(), 0, "the next call synced them");
        });
        // A full list is synced at once, whatever the interval; paths gone since are fine.
        let host = dir.host(&[]);
        host.run(|| {
            // With their directory, PENDING_CAP paths.
            for i in 0..PENDING_CAP - 1 {
                remember(Some(&dir.0.join(format!("gone{i}"))), &dir.0);
            }
        });
        assert_eq!(INSTANCE.with_borrow(|instance| instance.pending.len()), 0);
        assert!(
            !host.logged(Level::Warn, "cannot sync"),
            "{:?}",
            host.logs()
        );
    }
}
