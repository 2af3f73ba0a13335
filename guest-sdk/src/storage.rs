//! Storage backends: a tier below memory where entries may be kept (disk, a remote store).

use crate::Error;
use crate::wit::storage::exports::geecache::plugin0_1_0::storage as wit;

/// A storage backend plugin: keeps entries the host hands it and gives them back on request.
///
/// Implement it on a unit struct and export it with [`export_storage!`](crate::export_storage).
/// See the [crate documentation](crate) for a complete plugin.
///
/// # Concurrent calls
///
/// The host may run several instances of a plugin at once (for example two `put`s of the same
/// key), and may discard an instance between calls: keep no state in memory that must survive
/// a call, and make each write atomic where the medium allows it.
pub trait Storage {
    /// The plugin's name, by which operators refer to it. Lower-case letters, digits, `_` and
    /// `-`, e.g. `fs_storage`.
    const NAME: &'static str;

    /// The plugin's version, free-form (semver recommended). Empty, the default, means the
    /// `version` of the plugin crate's `Cargo.toml`.
    const VERSION: &'static str = "";

    /// Returns the entry stored under `key` of `group`, or `None`.
    ///
    /// # Errors
    ///
    /// A missing entry is not an error: return `Ok(None)`. Return [`Error::Unavailable`] when
    /// the medium cannot be reached right now.
    fn get(group: &str, key: &str) -> Result<Option<Entry>, Error>;

    /// Stores `entry` under `key` of `group`, replacing any previous entry.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the medium cannot be written right now,
    /// [`Error::InvalidInput`] for an entry this backend can never hold.
    fn put(group: &str, key: &str, entry: Entry) -> Result<(), Error>;

    /// Removes `key` of `group`.
    ///
    /// # Errors
    ///
    /// Removing a missing key succeeds; fail only when the medium cannot be reached.
    fn delete(group: &str, key: &str) -> Result<(), Error>;

    /// Removes every entry of `group`, when the host flushes the group (for example after its
    /// getter was replaced: what the old one loaded must not come back from storage). The
    /// host's writes of `group` wait until it returns; a `get` started before may overlap it.
    ///
    /// # Errors
    ///
    /// Clearing a group that holds nothing succeeds; fail only when the medium cannot be
    /// reached or changed. The host then reports to the operator that the group's stored
    /// entries were left.
    ///
    /// The default says it is not supported (so a plugin written before this method existed
    /// still builds): the host then reports the group's stored entries as kept. Implement it
    /// in every new backend.
    fn clear(group: &str) -> Result<(), Error> {
        Err(Error::Unavailable(format!(
            "storage plugin {} does not implement clear: group {group}'s stored entries \
             were kept",
            Self::NAME
        )))
    }
}

/// One stored entry, exactly as the host hands it over.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The stored bytes (possibly compressed; see `codec`).
    pub value: Vec<u8>,
    /// Codec tag of `value` (e.g. `none`, `zstd`); opaque to the storage backend, which must
    /// give it back unchanged.
    pub codec: String,
    /// Absolute expiry in milliseconds since the Unix epoch, if any.
    pub expires_at_ms: Option<u64>,
}

impl Entry {
    /// An entry without expiry.
    ///
    /// ```
    /// use geecache_guest_sdk::Entry;
    ///
    /// let entry = Entry::new(*b"630", "none");
    /// assert_eq!(entry.expires_at_ms, None);
    /// ```
    pub fn new(value: impl Into<Vec<u8>>, codec: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            codec: codec.into(),
            expires_at_ms: None,
        }
    }
}

impl From<Entry> for wit::Entry {
    fn from(entry: Entry) -> Self {
        let Entry {
            value,
            codec,
            expires_at_ms,
        } = entry;
        Self {
            value,
            codec,
            expires_at_ms,
        }
    }
}

impl From<wit::Entry> for Entry {
    fn from(entry: wit::Entry) -> Self {
        let wit::Entry {
            value,
            codec,
            expires_at_ms,
        } = entry;
        Self {
            value,
            codec,
            expires_at_ms,
        }
    }
}

crate::world_glue!(storage);

/// What [`export_storage!`](crate::export_storage) expands to call; not part of the API.
#[doc(hidden)]
pub mod export {
    use super::{Storage, wit};
    use crate::wit::storage::geecache::plugin0_1_0::types;

    pub fn info<S: Storage>(crate_version: &str) -> types::PluginInfo {
        types::PluginInfo::of(S::NAME, S::VERSION, crate_version)
    }

    pub fn get<S: Storage>(group: &str, key: &str) -> Result<Option<wit::Entry>, types::Error> {
        S::get(group, key)
            .map(|entry| entry.map(Into::into))
            .map_err(Into::into)
    }

    pub fn put<S: Storage>(group: &str, key: &str, entry: wit::Entry) -> Result<(), types::Error> {
        S::put(group, key, entry.into()).map_err(Into::into)
    }

    pub fn delete<S: Storage>(group: &str, key: &str) -> Result<(), types::Error> {
        S::delete(group, key).map_err(Into::into)
    }

    pub fn clear<S: Storage>(group: &str) -> Result<(), types::Error> {
        S::clear(group).map_err(Into::into)
    }
}

/// Exports a [`Storage`] implementation as this component's `storage` and `storage-clear`
/// interfaces.
///
/// Call it once, at the top level of the plugin crate (a `cdylib` that enables the SDK's
/// `storage` feature), with the implementing type:
///
/// ```ignore
/// geecache_guest_sdk::export_storage!(Files);
/// ```
#[macro_export]
macro_rules! export_storage {
    ($storage:ty) => {
        #[allow(unsafe_code)]
        const _: () = {
            struct GeecacheStorageAdapter;

            impl $crate::wit::storage::exports::geecache::plugin0_1_0::storage::Guest
                for GeecacheStorageAdapter
            {
                fn info() -> $crate::wit::storage::geecache::plugin0_1_0::types::PluginInfo {
                    $crate::__storage_export::info::<$storage>(env!("CARGO_PKG_VERSION"))
                }

                fn get(
                    group: ::std::string::String,
                    key: ::std::string::String,
                ) -> ::std::result::Result<
                    ::std::option::Option<
                        $crate::wit::storage::exports::geecache::plugin0_1_0::storage::Entry,
                    >,
                    $crate::wit::storage::geecache::plugin0_1_0::types::Error,
                > {
                    $crate::__storage_export::get::<$storage>(&group, &key)
                }

                fn put(
                    group: ::std::string::String,
                    key: ::std::string::String,
                    entry: $crate::wit::storage::exports::geecache::plugin0_1_0::storage::Entry,
                ) -> ::std::result::Result<
                    (),
                    $crate::wit::storage::geecache::plugin0_1_0::types::Error,
                > {
                    $crate::__storage_export::put::<$storage>(&group, &key, entry)
                }

                fn delete(
                    group: ::std::string::String,
                    key: ::std::string::String,
                ) -> ::std::result::Result<
                    (),
                    $crate::wit::storage::geecache::plugin0_1_0::types::Error,
                > {
                    $crate::__storage_export::delete::<$storage>(&group, &key)
                }
            }

            impl $crate::wit::storage::exports::geecache::plugin0_1_0::storage_clear::Guest
                for GeecacheStorageAdapter
            {
                fn clear(
                    group: ::std::string::String,
                ) -> ::std::result::Result<
                    (),
                    $crate::wit::storage::geecache::plugin0_1_0::types::Error,
                > {
                    $crate::__storage_export::clear::<$storage>(&group)
                }
            }

            $crate::wit::storage::export_storage_world!(
                GeecacheStorageAdapter with_types_in $crate::wit::storage
            );
        };
    };
}
