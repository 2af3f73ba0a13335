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
//!
//! # Modules
//!
//! Files: `config.rs` (the config keys, read into `Settings` at every call), `layout.rs` (where
//! an entry lives: names, buckets, temporary names), `format.rs` (the file format's encode and
//! decode), `storage.rs` (the operations: get, put, delete, clear), `sync.rs` (writing an entry
//! and the `fsync` policy), `quota.rs` (a put's bucket listing, the usage accounting,
//! eviction and refusals), `sweep.rs` (removing cleared groups), `instance.rs` (what an
//! instance keeps between calls) and `files.rs` (file helpers, errors and the clock), with
//! `test_support.rs` for what their tests share; this one holds the documentation and the WIT
//! export.
//!
//! [`MAX_HEX_BYTES`]: layout::MAX_HEX_BYTES
//! [`TMP_MAX_AGE`]: quota::TMP_MAX_AGE
//! [`PENDING_CAP`]: sync::PENDING_CAP
//! [`USAGE_REFRESH`]: quota::USAGE_REFRESH
//! [`SWEEP_BUDGET`]: sweep::SWEEP_BUDGET
//! [`CALL_SWEEP_BUDGET`]: sweep::CALL_SWEEP_BUDGET

// For the links above to `Error::InvalidInput` and `Error::Unavailable`.
#[cfg(doc)]
use geecache_guest_sdk::Error;

mod config;
mod files;
mod format;
mod instance;
mod layout;
mod quota;
mod storage;
mod sweep;
mod sync;
#[cfg(test)]
mod test_support;

geecache_guest_sdk::export_storage!(storage::FsStorage);
