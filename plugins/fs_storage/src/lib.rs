//! `fs_storage`: a storage backend keeping each entry as one file in a directory the operator
//! preopens for the plugin (config key `dir`, default `/data`).
//!
//! # Layout
//!
//! `<dir>/<group name>/<key name>`, where a name is `x` followed by the lower-case hex of the
//! group's or key's bytes, or — for names longer than [`MAX_HEX_BYTES`] bytes — `h` followed by
//! the hex SHA-256 of them. Any group and key is therefore a safe, short file name; the full key
//! is kept in the file and checked on read, so even a hash collision cannot return another
//! key's entry.
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
//! Writes go to a temporary file in the same directory, then are renamed over the entry, so a
//! reader sees the old entry or the new one, never a torn one. An expired or unreadable file is
//! removed when read and reported as missing: this is a cache tier, the origin still has the
//! data.
//!
//! Clearing a group (a flush) renames its directory to `.<name>.<nonce>.cleared`, so the group
//! is empty at once, and removes such directories' files for up to 200 ms per clear; the
//! rest goes at the next clears.

use std::fs;
use std::hash::{BuildHasher, RandomState};
use std::io::ErrorKind;
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

struct FsStorage;

impl Storage for FsStorage {
    const NAME: &'static str = "fs_storage";

    fn get(group: &str, key: &str) -> Result<Option<Entry>, Error> {
        let path = entry_path(group, key);
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
        let bytes = encode(key, &entry)?;
        let path = entry_path(group, key);
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|err| io_error("create", dir, &err))?;
        let tmp = temp_path(&path);
        let written = fs::write(&tmp, &bytes)
            .map_err(|err| io_error("write", &tmp, &err))
            .and_then(|()| fs::rename(&tmp, &path).map_err(|err| io_error("rename", &path, &err)));
        if let Err(err) = written {
            // Best effort: the error being returned is the interesting one.
            let _ = fs::remove_file(&tmp);
            return Err(err);
        }
        log::trace(&format!(
            "stored {} bytes in {}",
            bytes.len(),
            path.display()
        ));
        Ok(())
    }

    fn delete(group: &str, key: &str) -> Result<(), Error> {
        remove(&entry_path(group, key))
    }

    /// Renames the group's directory out of the way, which empties the group at once, then
    /// removes the files of such renamed directories for at most [`SWEEP_BUDGET`] (a large
    /// group may take longer than a plugin call may): what is left is removed by later
    /// clears, and no read ever looks there.
    fn clear(group: &str) -> Result<(), Error> {
        let dir = group_dir(group);
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        let nonce = RandomState::new().hash_one(now_ms());
        let trash = dir.with_file_name(format!(".{name}.{nonce:016x}{CLEARED}"));
        match fs::rename(&dir, &trash) {
            Ok(()) => log::debug(&format!("cleared {}", dir.display())),
            Err(err) if err.kind() == ErrorKind::NotFound => {}
            Err(err) => return Err(io_error("rename", &dir, &err)),
        }
        sweep(dir.parent().unwrap_or(Path::new(".")), SWEEP_BUDGET);
        Ok(())
    }
}

/// How long one clear spends removing the files of groups cleared before.
const SWEEP_BUDGET: Duration = Duration::from_millis(200);

/// The suffix of a cleared group's directory, renamed away to be removed.
const CLEARED: &str = ".cleared";

/// Removes the files (then the directory) of each cleared group's directory under `base`,
/// until `budget` is spent. Failures are logged and left for the next sweep.
fn sweep(base: &Path, budget: Duration) {
    let started = Instant::now();
    let Ok(dirs) = fs::read_dir(base) else { return };
    for dir in dirs.flatten() {
        let name = dir.file_name();
        if !name.to_string_lossy().ends_with(CLEARED) {
            continue;
        }
        let path = dir.path();
        if let Ok(files) = fs::read_dir(&path) {
            for file in files.flatten() {
                if started.elapsed() > budget {
                    return;
                }
                discard(&file.path());
            }
        }
        if let Err(err) = fs::remove_dir(&path) {
            log::warn(&format!("cannot remove {} yet: {err}", path.display()));
        }
    }
}

/// Where the entry for `key` of `group` lives.
fn entry_path(group: &str, key: &str) -> PathBuf {
    group_dir(group).join(file_name(key.as_bytes()))
}

/// The directory of `group`'s entries.
fn group_dir(group: &str) -> PathBuf {
    let dir = config::get("dir").unwrap_or_else(|| DEFAULT_DIR.to_owned());
    Path::new(&dir).join(file_name(group.as_bytes()))
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
    Error::Unavailable(format!(
        "cannot {op} {}: {err} (is the directory preopened for fs_storage?)",
        path.display()
    ))
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
    use super::*;

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
}
