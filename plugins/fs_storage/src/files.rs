//! The small file-system helpers every other module uses: writing a file, removing one (a
//! missing file is fine), the [`Error`] a failed operation returns with the operator's likely
//! fix, and the wall clock in milliseconds (expiries and nonces).

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use geecache_guest_sdk::{Error, log};

/// Writes `bytes` to a new file at `path`, synced to the disk when `sync`.
pub(crate) fn write_file(path: &Path, bytes: &[u8], sync: bool) -> Result<(), Error> {
    let mut file = File::create(path).map_err(|err| io_error("create", path, &err))?;
    file.write_all(bytes)
        .map_err(|err| io_error("write", path, &err))?;
    if sync {
        file.sync_all()
            .map_err(|err| io_error("sync", path, &err))?;
    }
    Ok(())
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
pub(crate) fn discard(path: &Path) {
    if let Err(err) = remove(path) {
        log::warn(&err.to_string());
    }
}

pub(crate) fn io_error(op: &str, path: &Path, err: &std::io::Error) -> Error {
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

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
