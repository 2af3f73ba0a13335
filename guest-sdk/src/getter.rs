//! Getters: how a cache miss is loaded from the source of truth.

use crate::Error;
use crate::wit::getter::exports::geecache::plugin0_2_0::getter as wit;

/// A getter plugin: loads a key of a cache group from the source of truth on a cache miss.
///
/// Implement it on a unit struct and export it with [`export_getter!`](crate::export_getter).
/// See the [crate documentation](crate) for a complete plugin.
///
/// # Concurrent calls
///
/// The host may run several instances of a plugin at once, and may discard an instance
/// between calls: keep no state that must survive a call.
pub trait Getter {
    /// The plugin's name, by which operators refer to it. Lower-case letters, digits, `_` and
    /// `-`, e.g. `db_getter`.
    const NAME: &'static str;

    /// The plugin's version, free-form (semver recommended). Empty, the default, means the
    /// `version` of the plugin crate's `Cargo.toml`.
    const VERSION: &'static str = "";

    /// Loads `key` of cache group `group`.
    ///
    /// # Errors
    ///
    /// A key that does not exist is not an error: return `Ok(Lookup::NotFound)`. Return
    /// [`Error::Unavailable`] when the source cannot be reached (the host may retry later) and
    /// [`Error::InvalidInput`] for a key the source can never hold.
    fn get(group: &str, key: &str) -> Result<Lookup, Error>;
}

/// The outcome of a lookup that did not fail.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lookup {
    /// The key exists.
    Found {
        /// The value's bytes, stored and served as they are.
        value: Vec<u8>,
        /// Absolute expiry in milliseconds since the Unix epoch, or `None` to use the group's
        /// default time-to-live.
        expires_at_ms: Option<u64>,
        /// How long past its expiry, in milliseconds, the value may still be answered (marked
        /// stale) while it is refreshed or its source fails; `None` to use the group's
        /// `stale` setting, `Some(0)` never. Hosts older than WIT 0.2.0 ignore it.
        stale_ms: Option<u32>,
    },
    /// The key does not exist in the source; the host caches this answer briefly.
    NotFound,
}

impl Lookup {
    /// A found value that expires by the group's default time-to-live.
    ///
    /// ```
    /// use geecache_guest_sdk::Lookup;
    ///
    /// assert_eq!(
    ///     Lookup::found("630"),
    ///     Lookup::Found { value: b"630".to_vec(), expires_at_ms: None, stale_ms: None },
    /// );
    /// ```
    pub fn found(value: impl Into<Vec<u8>>) -> Self {
        Self::Found {
            value: value.into(),
            expires_at_ms: None,
            stale_ms: None,
        }
    }

    /// A found value that expires at `expires_at_ms` (milliseconds since the Unix epoch).
    pub fn found_until(value: impl Into<Vec<u8>>, expires_at_ms: u64) -> Self {
        Self::Found {
            value: value.into(),
            expires_at_ms: Some(expires_at_ms),
            stale_ms: None,
        }
    }

    /// This found value with its own stale window: answered for `stale_ms` milliseconds past
    /// its expiry (marked stale) while the host refreshes it or its source fails, whatever the
    /// group's `stale` setting; 0 never. "Not found" is returned as it is.
    ///
    /// ```
    /// use geecache_guest_sdk::Lookup;
    ///
    /// let lookup = Lookup::found_until("630", 1_800_000_000_000).stale_for_ms(30_000);
    /// assert!(matches!(lookup, Lookup::Found { stale_ms: Some(30_000), .. }));
    /// ```
    #[must_use]
    pub fn stale_for_ms(self, stale_ms: u32) -> Self {
        match self {
            Self::Found {
                value,
                expires_at_ms,
                ..
            } => Self::Found {
                value,
                expires_at_ms,
                stale_ms: Some(stale_ms),
            },
            Self::NotFound => Self::NotFound,
        }
    }
}

impl From<Lookup> for wit::Lookup {
    fn from(lookup: Lookup) -> Self {
        match lookup {
            Lookup::Found {
                value,
                expires_at_ms,
                stale_ms,
            } => Self::Found(wit::Found {
                value,
                expires_at_ms,
                stale_ms,
            }),
            Lookup::NotFound => Self::NotFound,
        }
    }
}

crate::world_glue!(getter);

/// What [`export_getter!`](crate::export_getter) expands to call; not part of the API.
#[doc(hidden)]
pub mod export {
    use super::{Getter, wit};
    use crate::wit::getter::geecache::plugin0_1_0::types;

    pub fn info<G: Getter>(crate_version: &str) -> types::PluginInfo {
        types::PluginInfo::of(G::NAME, G::VERSION, crate_version)
    }

    pub fn get<G: Getter>(group: &str, key: &str) -> Result<wit::Lookup, types::Error> {
        G::get(group, key).map(Into::into).map_err(Into::into)
    }
}

/// Exports a [`Getter`] implementation as this component's `getter` interface.
///
/// Call it once, at the top level of the plugin crate (a `cdylib` that enables the SDK's
/// `getter` feature), with the implementing type:
///
/// ```ignore
/// geecache_guest_sdk::export_getter!(Hello);
/// ```
#[macro_export]
macro_rules! export_getter {
    ($getter:ty) => {
        #[allow(unsafe_code)]
        const _: () = {
            struct GeecacheGetterAdapter;

            impl $crate::wit::getter::exports::geecache::plugin0_2_0::getter::Guest
                for GeecacheGetterAdapter
            {
                fn info() -> $crate::wit::getter::geecache::plugin0_1_0::types::PluginInfo {
                    $crate::__getter_export::info::<$getter>(env!("CARGO_PKG_VERSION"))
                }

                fn get(
                    group: ::std::string::String,
                    key: ::std::string::String,
                ) -> ::std::result::Result<
                    $crate::wit::getter::exports::geecache::plugin0_2_0::getter::Lookup,
                    $crate::wit::getter::geecache::plugin0_1_0::types::Error,
                > {
                    $crate::__getter_export::get::<$getter>(&group, &key)
                }
            }

            $crate::wit::getter::export_getter_world!(
                GeecacheGetterAdapter with_types_in $crate::wit::getter
            );
        };
    };
}
