//! Write geecache plugins — getters, storage backends and compressors — as WebAssembly
//! components.
//!
//! A plugin is a `cdylib` crate built for `wasm32-wasip2`. It enables the one Cargo feature of
//! this crate that matches its kind (`getter`, `storage` or `compressor`), implements the
//! matching trait on a unit struct and calls the matching export macro once. The generated
//! WebAssembly plumbing stays hidden; authors see plain Rust types.
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! geecache-guest-sdk = { path = "../../guest-sdk", features = ["getter"] }
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the output
//! `target/wasm32-wasip2/release/<crate>.wasm` is a component the host loads with
//! `--plugin`. Its name is [`Getter::NAME`] (or the other traits' `NAME`), and its version
//! defaults to the plugin crate's own `version`.
//!
//! # What a plugin may call
//!
//! - [`log`]: structured logging into the host's log stream.
//! - [`config`]: the plugin's own configuration values, set by the operator.
//! - `sql` (getters only): read-only SQL queries against the host's database.
//! - `http` (getters only): outbound HTTP to the origins the operator allowed
//!   (`--plugin-http`), over standard `wasi:http`.
//!
//! Built for any target but wasm32 (as `cargo test` builds a plugin's unit tests), these are
//! answered by the `testing::FakeHost` a test runs under: see [`testing`] for how to unit-test
//! a plugin natively.
//!
//! Everything else — files, sockets, environment variables — is denied unless the operator
//! grants it to the plugin (for example a preopened directory for a file-backed storage plugin,
//! used through `std::fs`). A panic, a trap or running out of the memory or time budget fails
//! only the call in progress: the host discards the instance and keeps serving.
//!
//! # One instance, many calls
//!
//! The host reuses an instance that finished a call cleanly for later calls (until it has
//! served `--plugin-instance-calls` calls or its memory grew past `--plugin-instance-memory`),
//! unless the operator runs with `--plugin-instances fresh`. So a `static` (a `OnceLock`
//! holding a parsed config, a small cache) survives between calls, and the first call of an
//! instance may pay for setting it up; but never rely on globals being reset, nor on them
//! surviving: any call may land on a new instance. Returning [`Error::Other`] tells the host
//! something is wrong with this instance, and it is discarded.
//!
//! # A getter: how a cache miss is loaded
//!
#![cfg_attr(feature = "getter", doc = "```no_run")]
#![cfg_attr(not(feature = "getter"), doc = "```ignore")]
//! use geecache_guest_sdk::{export_getter, Error, Getter, Lookup};
//!
//! struct Hello;
//!
//! impl Getter for Hello {
//!     const NAME: &'static str = "hello";
//!     fn get(_group: &str, key: &str) -> Result<Lookup, Error> {
//!         Ok(Lookup::found(format!("hello, {key}")))
//!     }
//! }
//!
//! export_getter!(Hello);
//! # fn main() {}
//! ```
//!
//! A getter backed by the host's SQL capability, with an operator-configurable statement:
//!
#![cfg_attr(feature = "getter", doc = "```no_run")]
#![cfg_attr(not(feature = "getter"), doc = "```ignore")]
//! use geecache_guest_sdk::{config, export_getter, sql, Error, Getter, Lookup};
//!
//! struct Scores;
//!
//! impl Getter for Scores {
//!     const NAME: &'static str = "scores";
//!     fn get(_group: &str, key: &str) -> Result<Lookup, Error> {
//!         let statement = config::get("query")
//!             .unwrap_or_else(|| "SELECT score FROM scores WHERE name = ?1".to_owned());
//!         let rows = sql::query(&statement, &[sql::Value::from(key)], 1)?;
//!         Ok(match rows.first().and_then(|row| row.first()) {
//!             Some(sql::Value::Integer(score)) => Lookup::found(score.to_string()),
//!             _ => Lookup::NotFound,
//!         })
//!     }
//! }
//!
//! export_getter!(Scores);
//! # fn main() {}
//! ```
//!
//! # A storage backend: where entries live beyond memory
//!
#![cfg_attr(feature = "storage", doc = "```no_run")]
#![cfg_attr(not(feature = "storage"), doc = "```ignore")]
//! use std::{fs, io::ErrorKind};
//!
//! use geecache_guest_sdk::{export_storage, log, Entry, Error, Storage};
//!
//! /// Keeps each value in `/data/<group>/<key>`; a real backend encodes the names safely and
//! /// also stores `codec` and `expires_at_ms` (see `plugins/fs_storage`).
//! struct Files;
//!
//! fn path(group: &str, key: &str) -> String {
//!     format!("/data/{group}/{key}")
//! }
//!
//! fn io_error(err: std::io::Error) -> Error {
//!     Error::Unavailable(err.to_string())
//! }
//!
//! impl Storage for Files {
//!     const NAME: &'static str = "files";
//!
//!     fn get(group: &str, key: &str) -> Result<Option<Entry>, Error> {
//!         match fs::read(path(group, key)) {
//!             Ok(value) => Ok(Some(Entry::new(value, "none"))),
//!             Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
//!             Err(err) => Err(io_error(err)),
//!         }
//!     }
//!
//!     fn put(group: &str, key: &str, entry: Entry) -> Result<(), Error> {
//!         log::debug(&format!("storing {} bytes", entry.value.len()));
//!         fs::create_dir_all(format!("/data/{group}")).map_err(io_error)?;
//!         fs::write(path(group, key), &entry.value).map_err(io_error)
//!     }
//!
//!     fn delete(group: &str, key: &str) -> Result<(), Error> {
//!         match fs::remove_file(path(group, key)) {
//!             Err(err) if err.kind() != ErrorKind::NotFound => Err(io_error(err)),
//!             _ => Ok(()),
//!         }
//!     }
//!
//!     fn clear(group: &str) -> Result<(), Error> {
//!         match fs::remove_dir_all(format!("/data/{group}")) {
//!             Err(err) if err.kind() != ErrorKind::NotFound => Err(io_error(err)),
//!             _ => Ok(()),
//!         }
//!     }
//! }
//!
//! export_storage!(Files);
//! # fn main() {}
//! ```
//!
//! # A compressor: a codec the host does not have built in
//!
#![cfg_attr(feature = "compressor", doc = "```no_run")]
#![cfg_attr(not(feature = "compressor"), doc = "```ignore")]
//! use geecache_guest_sdk::{export_compressor, Compressor, Error};
//!
//! /// Run-length encoding: pairs of (count, byte).
//! struct Rle;
//!
//! impl Compressor for Rle {
//!     const NAME: &'static str = "rle";
//!
//!     fn compress(data: &[u8], level: Option<i32>) -> Result<Vec<u8>, Error> {
//!         if level.is_some() {
//!             return Err(Error::InvalidInput("rle has no levels".into()));
//!         }
//!         let mut out = Vec::new();
//!         for run in data.chunk_by(|a, b| a == b) {
//!             for piece in run.chunks(255) {
//!                 out.extend([piece.len() as u8, piece[0]]);
//!             }
//!         }
//!         Ok(out)
//!     }
//!
//!     fn decompress(data: &[u8], max_len: u64) -> Result<Vec<u8>, Error> {
//!         let mut out = Vec::new();
//!         for pair in data.chunks(2) {
//!             let &[count, byte] = pair else {
//!                 return Err(Error::InvalidInput("truncated input".into()));
//!             };
//!             if (out.len() + usize::from(count)) as u64 > max_len {
//!                 return Err(Error::InvalidInput("output exceeds max_len".into()));
//!             }
//!             out.resize(out.len() + usize::from(count), byte);
//!         }
//!         Ok(out)
//!     }
//! }
//!
//! export_compressor!(Rle);
//! # fn main() {}
//! ```
//!
//! # Cargo features
//!
//! | feature      | trait          | macro                  | WIT world           |
//! |--------------|----------------|------------------------|---------------------|
//! | `getter`     | [`Getter`]     | [`export_getter!`]     | `getter-plugin`     |
//! | `storage`    | [`Storage`]    | [`export_storage!`]    | `storage-plugin`    |
//! | `compressor` | [`Compressor`] | [`export_compressor!`] | `compressor-plugin` |
//!
//! Enable exactly one in a plugin: each feature adds its world's exports to the component.
//!
//! Files: `error.rs` ([`Error`], what every trait method returns), one per capability
//! (`config.rs`, `log.rs`, `sql.rs`, `http.rs`), one per plugin kind (`getter.rs`,
//! `storage.rs`, `compressor.rs`), and `testing.rs` (the native `FakeHost`).
#![deny(missing_docs)]
// These docs link every kind's items, which exist only with that kind's feature (docs.rs builds
// with all of them).
#![cfg_attr(
    not(all(feature = "getter", feature = "storage", feature = "compressor")),
    allow(rustdoc::broken_intra_doc_links)
)]

// Lets the generated bindings name this crate by its public path (`geecache_guest_sdk::…`),
// which is also how they are reached when the export macros expand inside a plugin crate.
#[cfg(any(feature = "getter", feature = "storage", feature = "compressor"))]
extern crate self as geecache_guest_sdk;

mod error;
pub use error::Error;

#[cfg(any(feature = "getter", feature = "storage", feature = "compressor"))]
pub mod config;
#[cfg(any(feature = "getter", feature = "storage", feature = "compressor"))]
pub mod log;

#[cfg(feature = "getter")]
mod getter;
#[cfg(feature = "getter")]
pub mod http;
#[cfg(feature = "getter")]
pub mod sql;
#[cfg(feature = "getter")]
#[doc(hidden)]
pub use getter::export as __getter_export;
#[cfg(feature = "getter")]
pub use getter::{Getter, Lookup};

#[cfg(feature = "storage")]
mod storage;
#[cfg(feature = "storage")]
#[doc(hidden)]
pub use storage::export as __storage_export;
#[cfg(feature = "storage")]
pub use storage::{Entry, Storage};

#[cfg(all(
    not(target_arch = "wasm32"),
    any(feature = "getter", feature = "storage", feature = "compressor")
))]
pub mod testing;

#[cfg(feature = "compressor")]
mod compressor;
#[cfg(feature = "compressor")]
pub use compressor::Compressor;
#[cfg(feature = "compressor")]
#[doc(hidden)]
pub use compressor::export as __compressor_export;

/// Generated bindings, one module per enabled plugin kind. Not part of the API: the export
/// macros and the wrappers in this crate are the only users.
#[cfg(any(feature = "getter", feature = "storage", feature = "compressor"))]
#[doc(hidden)]
#[allow(unsafe_code, missing_docs)]
pub mod wit {
    pub use wit_bindgen;

    /// Bindings of the `getter-plugin` world.
    #[cfg(feature = "getter")]
    pub mod getter {
        wit_bindgen::generate!({
            path: "../wit",
            world: "getter-plugin",
            // 0.2.0's worlds use 0.1.0's interfaces (another package version): generate them too.
            generate_all,
            pub_export_macro: true,
            export_macro_name: "export_getter_world",
            default_bindings_module: "geecache_guest_sdk::wit::getter",
            runtime_path: "geecache_guest_sdk::wit::wit_bindgen::rt",
        });
    }

    /// Bindings of the `storage-plugin` world.
    #[cfg(feature = "storage")]
    pub mod storage {
        wit_bindgen::generate!({
            path: "../wit",
            world: "storage-plugin",
            // 0.2.0's worlds use 0.1.0's interfaces (another package version): generate them too.
            generate_all,
            pub_export_macro: true,
            export_macro_name: "export_storage_world",
            default_bindings_module: "geecache_guest_sdk::wit::storage",
            runtime_path: "geecache_guest_sdk::wit::wit_bindgen::rt",
        });
    }

    /// Bindings of the `compressor-plugin` world.
    #[cfg(feature = "compressor")]
    pub mod compressor {
        wit_bindgen::generate!({
            path: "../wit",
            world: "compressor-plugin",
            // 0.2.0's worlds use 0.1.0's interfaces (another package version): generate them too.
            generate_all,
            pub_export_macro: true,
            export_macro_name: "export_compressor_world",
            default_bindings_module: "geecache_guest_sdk::wit::compressor",
            runtime_path: "geecache_guest_sdk::wit::wit_bindgen::rt",
        });
    }

    // The imports every world shares (`log`, `config`), taken from one enabled world. A plugin
    // enables a single kind, so this is the only copy it links; with several kinds enabled (as
    // in documentation builds) the getter's serves.
    #[cfg(feature = "getter")]
    pub(crate) use getter::geecache::plugin0_1_0 as shared;

    #[cfg(all(feature = "storage", not(feature = "getter")))]
    pub(crate) use storage::geecache::plugin0_1_0 as shared;

    #[cfg(all(
        feature = "compressor",
        not(any(feature = "getter", feature = "storage"))
    ))]
    pub(crate) use compressor::geecache::plugin0_1_0 as shared;
}

/// Converts between this crate's [`Error`] and one world's generated error, and builds that
/// world's plugin info. Each world generates its own copy of the `types` interface, so every
/// enabled kind needs the same glue.
#[cfg(any(feature = "getter", feature = "storage", feature = "compressor"))]
macro_rules! world_glue {
    ($world:ident) => {
        impl From<crate::Error> for crate::wit::$world::geecache::plugin0_1_0::types::Error {
            fn from(err: crate::Error) -> Self {
                use crate::wit::$world::geecache::plugin0_1_0::types::Error as Wit;
                match err {
                    crate::Error::InvalidInput(msg) => Wit::InvalidInput(msg),
                    crate::Error::Unavailable(msg) => Wit::Unavailable(msg),
                    crate::Error::Other(msg) => Wit::Other(msg),
                }
            }
        }

        impl From<crate::wit::$world::geecache::plugin0_1_0::types::Error> for crate::Error {
            fn from(err: crate::wit::$world::geecache::plugin0_1_0::types::Error) -> Self {
                use crate::wit::$world::geecache::plugin0_1_0::types::Error as Wit;
                match err {
                    Wit::InvalidInput(msg) => Self::InvalidInput(msg),
                    Wit::Unavailable(msg) => Self::Unavailable(msg),
                    Wit::Other(msg) => Self::Other(msg),
                }
            }
        }

        impl crate::wit::$world::geecache::plugin0_1_0::types::PluginInfo {
            /// The info a plugin reports: `name`, and `version` unless it is empty, in which
            /// case the plugin crate's version (`crate_version`) is used.
            pub(crate) fn of(name: &str, version: &str, crate_version: &str) -> Self {
                let version = if version.is_empty() {
                    crate_version
                } else {
                    version
                };
                Self {
                    name: name.to_owned(),
                    version: version.to_owned(),
                }
            }
        }
    };
}
#[cfg(any(feature = "getter", feature = "storage", feature = "compressor"))]
use world_glue;
