//! `fs_storage`: a storage backend keeping each entry as one file in a directory the operator
//! preopens for the plugin.
//!
//! # Config keys
//!
//! | key           | default  | meaning                                                       |
//! |---------------|----------|---------------------------------------------------------------|
//! | `dir`         | `/data`  | the preopened directory the entries live in                   |
//! | `fsync`       | `always` | when writes reach the disk: `always`, `never` or `<N>ms`      |
//! | `quota_bytes` | unset    | the most bytes of entry files per group; unset is unlimited   |
//!
//! An invalid `fsync` or `quota_bytes` makes every call fail with [`Error::InvalidInput`]
//! naming the key, the value and the accepted forms, so a typo is seen at the first call
//! rather than silently ignored.
//!
//! # Layout (version 2)
//!
//! `<dir>/<group name>/<bb>/<key name>`, where a name is `x` followed by the lower-case hex of
//! the group's or key's bytes, or — for names longer than [`MAX_HEX_BYTES`] bytes — `h`
//! followed by the hex SHA-256 of them, and `bb`, the key's bucket, is the first byte of the
//! SHA-256 of the key's bytes as two lower-case hex digits. Any group and key is therefore a
//! safe, short file name; the full key is kept in the file and checked on read, so even a
//! hash collision cannot return another key's entry.
//!
//! The buckets exist because listing a directory (WASI's `read-directory`) collects the whole
//! listing in the host's memory, outside the plugin's memory cap: with 256 buckets no listing
//! this plugin makes holds more than about 1/256 of a group. A bucket also holds its `.usage`
//! file (see the quota) and, briefly, temporary files; names starting with `.` are never
//! entries.
//!
//! Entries written in the first, flat layout (`<dir>/<group name>/<key name>`) are not read
//! (nor counted against a quota): this is a cache tier, and they load again from the origin.
//! They stay on disk until the group's next clear removes them with everything else (that one
//! sweep lists the old flat directory whole, as the first layout always did).
//!
//! # File format (version 1), all integers little-endian
//!
//! | bytes | field                                               |
//! |-------|-----------------------------------------------------|
//! | 4     | magic `GCFS`                                        |
//! | 1     | format version, `1`                                 |
//! | 1     | flags: bit 0 set when the entry has an expiry       |
//! | 8     | `expires_at_ms` (0 without expiry)                  |
//! | 2     | codec length `c`                                    |
//! | 4     | key length `k`                                      |
//! | c     | codec, UTF-8                                        |
//! | k     | key, UTF-8                                          |
//! | rest  | value                                               |
//!
//! Writes go to a temporary file `.<key name>.<nonce>.tmp` in the bucket, then are renamed
//! over the entry, so a reader sees the old entry or the new one, never a torn one. An expired
//! or unreadable file is removed when read and reported as missing: this is a cache tier, the
//! origin still has the data. A trap between the write and the rename leaves the temporary
//! file behind: every put removes those of its own bucket older than [`TMP_MAX_AGE`] (a live
//! writer's is younger), and a clear removes them with the rest of the group.
//!
//! # Durability (`fsync`)
//!
//! - `always` (the default): a put syncs its temporary file before the rename, then syncs the
//!   bucket's directory so that the rename itself survives a crash (and the group's and
//!   `dir`'s directories when it created a bucket); a delete and a clear sync the directory
//!   they changed. When a put, delete or clear returns, its entry, the entry's removal or the
//!   group's rename is on disk (quota evictions and `.usage` files are not synced). If the
//!   runtime refuses to open or sync a directory, the plugin logs it once per instance and
//!   stops trying in that instance: the entry files are still synced, renames and removals
//!   are then left to the kernel's writeback, and the call does not fail.
//! - `never`: nothing is synced; the kernel writes back when it likes (on Linux typically
//!   within 30 s). A crash may lose recent writes, never tear one (the rename still is atomic).
//! - `<N>ms`, e.g. `50ms` (batched): a write is not synced when it is made; the instance
//!   remembers the files and directories written since its last sync (up to
//!   [`PENDING_CAP`]; a full list is synced at once) and syncs them at its first call (any
//!   get, put, delete or clear) that comes at least N ms after its last sync. The limit,
//!   plainly: a write is synced by the next call *of the same instance* at least N ms later,
//!   so after the last write of a burst it stays unsynced until that instance's next call,
//!   which may never come (the host may retire or discard the instance); only the kernel's
//!   own writeback then applies. Use it to trade a bounded window of loss for fewer syncs.
//!
//! The `.usage` files are never synced: each is recomputed exactly at its bucket's next put.
//!
//! # Quota (`quota_bytes`)
//!
//! A byte count (`1048576`) or a number with a binary suffix: `KiB`, `MiB`, `GiB`, or `K`,
//! `M`, `G` meaning the same (`64MiB` = `64M` = 67108864), at least 1 byte. It bounds the sum
//! of a group's entry file sizes (encoded, header included; temporary and `.usage` files are
//! not counted).
//!
//! Accounting, only while a quota is set: each put lists its bucket and stats the entry files
//! there to get the bucket's exact total, and records it in `<group>/<bb>/.usage`. A group's
//! usage is the sum of its 256 `.usage` files; an instance caches them and reads them again at
//! most once per [`USAGE_REFRESH`] (other instances write them concurrently), its own bucket's
//! total being exact at each put. Before writing an entry of S bytes for key K in bucket bb:
//! if usage − (K's current file size) + S exceeds the quota, the oldest entries of bb (by file
//! modification time), other than K, are removed until it fits. When even removing all of them
//! would not make it fit, nothing is removed and the put fails with [`Error::Unavailable`]
//! ("group … is at its quota …"); an entry larger than the whole quota fails at once with
//! [`Error::InvalidInput`]. A refused put also removes K's previous entry, so that a get
//! cannot serve the value the put was meant to replace. Evictions are logged at debug (a count
//! per put), refusals at warn.
//!
//! The guarantee, with its limits:
//! - Usage can exceed the quota by what other instances wrote within the last second (their
//!   puts are seen when this instance next reads the `.usage` files), and two puts racing in
//!   one bucket may record a total that misses one of them until the bucket's next put.
//!   Likewise, after a clear, other instances count the group's old usage for up to a second.
//! - Eviction is oldest-first within the written bucket only: an approximation of oldest-first
//!   in the group, as keys spread evenly over buckets. It works best when entries are small
//!   next to a 256th of the quota; a put may be refused while other buckets hold old entries.
//! - Deletes, expired entries removed on read, and removals by hand are subtracted from a
//!   bucket's `.usage` at its next put; until then that bucket is over-counted.
//! - Setting a quota on a directory written without one counts each bucket from its next put
//!   (a bucket not put to since counts what its `.usage` said, or nothing): usage is then
//!   under-counted until every bucket was written once.
//! - Reading the 256 `.usage` files costs 256 small reads per instance and group, at most
//!   once a second.
//!
//! # Clearing a group (a flush)
//!
//! The group's directory is renamed to `.<name>.<nonce>.cleared`, so the group is empty at
//! once (and its `.usage` files go with it; under `fsync = always` the rename is synced before
//! the clear returns). Then such directories are removed one bucket
//! directory at a time — each listing bounded by what one bucket held — together with old
//! flat-layout files and any stray file in their root, for up to [`SWEEP_BUDGET`] in the
//! clear. What is left then is removed by the same instance's later calls (any kind, up to
//! [`CALL_SWEEP_BUDGET`] each) until none is left; a new instance checks once, at its first
//! call. No read ever looks there.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::hash::{BuildHasher, RandomState};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use geecache_guest_sdk::{Entry, Error, Storage, config, export_storage, log};
use sha2::{Digest, Sha256};

/// The directory used when the operator did not set config key `dir`.
const DEFAULT_DIR: &str = "/data";
/// Names of up to this many bytes are hex-encoded whole (201 characters with the prefix, under
/// the usual 255-byte file name limit); longer ones are hashed.
const MAX_HEX_BYTES: usize = 100;
const MAGIC: &[u8; 4] = b"GCFS";
const FORMAT_VERSION: u8 = 1;
const FLAG_EXPIRES: u8 = 1;
/// Magic, version, flags, expiry, codec length, key length.
const HEADER_LEN: usize = 4 + 1 + 1 + 8 + 2 + 4;

/// How long one clear spends removing the files of groups cleared before.
const SWEEP_BUDGET: Duration = Duration::from_millis(200);
/// How long any other call spends on what a clear's sweep left, while this instance knows of
/// some.
const CALL_SWEEP_BUDGET: Duration = Duration::from_millis(20);
/// The suffix of a cleared group's directory, renamed away to be removed.
const CLEARED: &str = ".cleared";
/// A temporary file older than this is left over from a writer that died before its rename.
const TMP_MAX_AGE: Duration = Duration::from_secs(60);
/// The name of a bucket's usage file: its entries' byte total, in decimal.
const USAGE_FILE: &str = ".usage";
/// How often an instance reads a group's `.usage` files again.
const USAGE_REFRESH: Duration = Duration::from_secs(1);
/// The most files and directories a batched `fsync` policy remembers before syncing them all.
const PENDING_CAP: usize = 1024;
/// Buckets per group: one per value of the first byte of a key's SHA-256.
const BUCKETS: usize = 256;

struct FsStorage;

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

/// When writes are synced to the disk: config key `fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fsync {
    /// Each write's file before its rename, and the directory after it.
    Always,
    /// Never: the kernel's writeback only.
    Never,
    /// What was written since the last sync, at the first call at least this long after it.
    Batched(Duration),
}

/// The operator's config, read at the start of every call.
struct Settings {
    /// The preopened directory the groups live in.
    dir: PathBuf,
    /// When writes are synced.
    fsync: Fsync,
    /// The most bytes of entry files per group, if limited.
    quota: Option<u64>,
}

/// Where one key's entry lives.
struct Location {
    /// The group's directory.
    group_dir: PathBuf,
    /// The key's bucket: the first byte of its SHA-256.
    bucket: u8,
    /// `group_dir/<bb>`.
    bucket_dir: PathBuf,
    /// The entry file.
    path: PathBuf,
}

impl Settings {
    /// Reads config keys `dir`, `fsync` and `quota_bytes`.
    fn load() -> Result<Self, Error> {
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

    /// The directory of `group`'s entries.
    fn group_dir(&self, group: &str) -> PathBuf {
        self.dir.join(file_name(group.as_bytes()))
    }

    /// Where the entry for `key` of `group` lives.
    fn locate(&self, group: &str, key: &str) -> Location {
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

    /// Creates `bucket_dir` (and its group's directory) unless it exists, making the new
    /// directory entries durable per the policy.
    fn ensure_dir(&self, bucket_dir: &Path) -> Result<(), Error> {
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
    fn write_entry(&self, path: &Path, bytes: &[u8]) -> Result<(), Error> {
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
    fn dir_changed(&self, dir: &Path) {
        match self.fsync {
            Fsync::Always => sync_dir(dir),
            Fsync::Never => {}
            Fsync::Batched(_) => remember(None, dir),
        }
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

/// What one instance keeps between its calls. None of it must survive the instance: it is
/// what a batched sync still owes, caches, and flags.
struct Instance {
    /// Written since the last batched sync and not synced yet.
    pending: Pending,
    /// When this instance last synced its pending writes (or started).
    last_sync: Instant,
    /// Whether syncing a directory failed once, after which this instance no longer tries.
    dir_sync_failed: bool,
    /// Whether cleared groups' directories may be left to remove.
    sweep_due: bool,
    /// Each group's bucket totals as last read, by group directory.
    usage: HashMap<PathBuf, GroupUsage>,
}

/// Files and directories a batched `fsync` policy has yet to sync.
#[derive(Default)]
struct Pending {
    /// Entry files renamed into place.
    files: BTreeSet<PathBuf>,
    /// Directories whose entries changed (renames, creations, removals).
    dirs: BTreeSet<PathBuf>,
}

impl Pending {
    /// How many paths are remembered.
    fn len(&self) -> usize {
        self.files.len() + self.dirs.len()
    }

    /// Whether nothing is remembered.
    fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dirs.is_empty()
    }
}

/// One group's byte totals per bucket, as this instance last read its `.usage` files.
struct GroupUsage {
    /// Bytes of entry files per bucket.
    buckets: [u64; BUCKETS],
    /// When the `.usage` files were read.
    read_at: Instant,
}

impl Instance {
    /// A new instance: nothing pending, and a sweep due (a previous instance may have left
    /// cleared groups' directories).
    fn new() -> Self {
        Self {
            pending: Pending::default(),
            last_sync: Instant::now(),
            dir_sync_failed: false,
            sweep_due: true,
            usage: HashMap::new(),
        }
    }
}

thread_local! {
    /// This instance's state (a component instance is single-threaded; natively, each test
    /// thread is an instance of its own).
    static INSTANCE: RefCell<Instance> = RefCell::new(Instance::new());
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
fn sync_pending() {
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

/// Writes `bytes` to a new file at `path`, synced to the disk when `sync`.
fn write_file(path: &Path, bytes: &[u8], sync: bool) -> Result<(), Error> {
    let mut file = File::create(path).map_err(|err| io_error("create", path, &err))?;
    file.write_all(bytes)
        .map_err(|err| io_error("write", path, &err))?;
    if sync {
        file.sync_all()
            .map_err(|err| io_error("sync", path, &err))?;
    }
    Ok(())
}

/// One entry file of a bucket, as a put's listing saw it.
struct Listed {
    /// The entry file.
    path: PathBuf,
    /// Its size in bytes.
    size: u64,
    /// Its modification time (the epoch when unknown: evicted first).
    modified: SystemTime,
}

/// Lists `bucket_dir`: removes temporary files older than [`TMP_MAX_AGE`], and when `count`
/// returns its entry files (names not starting with `.`) with their sizes and times.
fn scan_bucket(bucket_dir: &Path, count: bool) -> Result<Vec<Listed>, Error> {
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
fn make_room(
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
fn refuse_oversized(group: &str, key: &str, at: &Location, size: u64, quota: u64) -> Error {
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
fn record_usage(at: &Location, bytes: u64) {
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

/// Continues removing cleared groups' directories under `settings.dir` for up to `budget`,
/// when this instance knows some may be left.
fn continue_sweep(settings: &Settings, budget: Duration) {
    if INSTANCE.with_borrow(|instance| instance.sweep_due) {
        let finished = sweep(&settings.dir, budget);
        INSTANCE.with_borrow_mut(|instance| instance.sweep_due = !finished);
    }
}

/// Removes each cleared group's directory under `base`, until `budget` is spent. Returns
/// whether it went through them all (failures are logged and left for a later clear).
fn sweep(base: &Path, budget: Duration) -> bool {
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

/// The bucket of `key`: the first byte of the SHA-256 of its bytes.
fn bucket_of(key: &str) -> u8 {
    Sha256::digest(key.as_bytes())[0]
}

/// The directory name of `bucket`: two lower-case hex digits.
fn bucket_name(bucket: u8) -> String {
    hex(&[bucket])
}

/// A safe file name for any byte string: `x<hex>` when short, `h<sha256 hex>` otherwise. The
/// prefixes keep the two forms apart (and give the empty string a name).
fn file_name(bytes: &[u8]) -> String {
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
fn temp_path(path: &Path) -> PathBuf {
    let nonce = RandomState::new().hash_one(now_ms());
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.{nonce:016x}.tmp"))
}

/// Removes `path`; a missing file is fine.
fn remove(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != ErrorKind::NotFound => Err(io_error("remove", path, &err)),
        _ => Ok(()),
    }
}

/// Removes a file that is no longer worth serving. Failing to is logged, not returned: the
/// caller's answer ("not found") stands either way.
fn discard(path: &Path) {
    if let Err(err) = remove(path) {
        log::warn(&err.to_string());
    }
}

fn io_error(op: &str, path: &Path, err: &std::io::Error) -> Error {
    // What the operator can fix: a directory granted read-only refuses writes; one not
    // granted at all is not there.
    let hint = match err.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            "is the directory granted read-write? end its grant with :rw, e.g. --plugin-dir fs_storage=/var/cache/geecache:/data:rw"
        }
        _ => "is the directory granted to fs_storage? --plugin-dir fs_storage=HOST_DIR:/data:rw",
    };
    Error::Unavailable(format!("cannot {op} {}: {err} ({hint})", path.display()))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn encode(key: &str, entry: &Entry) -> Result<Vec<u8>, Error> {
    let codec_len = u16::try_from(entry.codec.len())
        .map_err(|_| Error::InvalidInput("codec name longer than 65535 bytes".into()))?;
    let key_len = u32::try_from(key.len())
        .map_err(|_| Error::InvalidInput("key longer than 4 GiB".into()))?;
    let mut out =
        Vec::with_capacity(HEADER_LEN + entry.codec.len() + key.len() + entry.value.len());
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.push(if entry.expires_at_ms.is_some() {
        FLAG_EXPIRES
    } else {
        0
    });
    out.extend_from_slice(&entry.expires_at_ms.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&codec_len.to_le_bytes());
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(entry.codec.as_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&entry.value);
    Ok(out)
}

/// Parses a file written by [`encode`] into its key and entry.
fn decode(bytes: &[u8]) -> Result<(&str, Entry), &'static str> {
    let mut rest = bytes;
    if take(&mut rest, 4)? != MAGIC {
        return Err("not an fs_storage file");
    }
    if take(&mut rest, 1)? != [FORMAT_VERSION] {
        return Err("unknown format version");
    }
    let flags = take(&mut rest, 1)?[0];
    let expires_at_ms = u64::from_le_bytes(array(take(&mut rest, 8)?)?);
    let codec_len = u16::from_le_bytes(array(take(&mut rest, 2)?)?);
    let key_len = u32::from_le_bytes(array(take(&mut rest, 4)?)?);
    let codec = take(&mut rest, usize::from(codec_len))?;
    let key = take(
        &mut rest,
        usize::try_from(key_len).map_err(|_| "key too long")?,
    )?;
    let codec = std::str::from_utf8(codec).map_err(|_| "codec is not UTF-8")?;
    let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8")?;
    let entry = Entry {
        value: rest.to_vec(),
        codec: codec.to_owned(),
        expires_at_ms: (flags & FLAG_EXPIRES != 0).then_some(expires_at_ms),
    };
    Ok((key, entry))
}

/// Splits `n` bytes off the front of `rest`.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], &'static str> {
    if rest.len() < n {
        return Err("truncated file");
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn array<const N: usize>(bytes: &[u8]) -> Result<[u8; N], &'static str> {
    bytes.try_into().map_err(|_| "truncated file")
}

export_storage!(FsStorage);

#[cfg(test)]
mod tests {
    use geecache_guest_sdk::testing::{FakeHost, Level};

    use super::*;

    /// A directory of its own under the system's temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let nonce = RandomState::new().hash_one(now_ms());
            let path = std::env::temp_dir().join(format!(
                "fs_storage-{name}-{}-{nonce:016x}",
                std::process::id()
            ));
            fs::create_dir_all(&path).expect("creates the temp dir");
            Self(path)
        }

        /// A fake host whose `dir` is this directory, with `config` besides.
        fn host(&self, config: &[(&str, &str)]) -> FakeHost {
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
    fn keys_in_one_bucket(n: usize) -> Vec<String> {
        let bucket = bucket_of("key0000");
        (0..)
            .map(|i| format!("key{i:04}"))
            .filter(|key| bucket_of(key) == bucket)
            .take(n)
            .collect()
    }

    /// Keys of `n` different buckets.
    fn keys_in_distinct_buckets(n: usize) -> Vec<String> {
        let mut seen = BTreeSet::new();
        (0..)
            .map(|i| format!("key{i:04}"))
            .filter(|key| seen.insert(bucket_of(key)))
            .take(n)
            .collect()
    }

    /// Where `key` of `group` lives under `dir`.
    fn path_of(dir: &TempDir, group: &str, key: &str) -> PathBuf {
        dir.0
            .join(file_name(group.as_bytes()))
            .join(bucket_name(bucket_of(key)))
            .join(file_name(key.as_bytes()))
    }

    /// Sets the modification time of `path` to `age` ago.
    fn age(path: &Path, age: Duration) {
        let file = File::options()
            .write(true)
            .open(path)
            .expect("opens the file");
        file.set_modified(SystemTime::now() - age)
            .expect("sets its mtime");
    }

    /// The entry files (not `.`-files) of every bucket of `group` under `dir`, and their
    /// byte total.
    fn entry_files(dir: &TempDir, group: &str) -> (usize, u64) {
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

    fn value(n: usize) -> Entry {
        Entry::new(vec![7; n], "none")
    }

    #[test]
    fn encode_decode_round_trip() {
        let entry = Entry {
            value: vec![0, 1, 2, 255],
            codec: "zstd".into(),
            expires_at_ms: Some(1_700_000_000_000),
        };
        let bytes = encode("k\u{e9}y", &entry).expect("encodes");
        assert_eq!(decode(&bytes), Ok(("k\u{e9}y", entry)));

        let bare = Entry::new(Vec::new(), "");
        let bytes = encode("", &bare).expect("encodes");
        assert_eq!(decode(&bytes), Ok(("", bare)));
    }

    #[test]
    fn decode_rejects_damage() {
        let bytes = encode("key", &Entry::new(*b"value", "none")).expect("encodes");
        for len in 0..HEADER_LEN + 4 + 3 {
            assert!(
                decode(&bytes[..len]).is_err(),
                "prefix of {len} bytes accepted"
            );
        }
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(decode(&bad).is_err());
    }

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
