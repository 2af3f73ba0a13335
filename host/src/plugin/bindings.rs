//! The one `bindgen!` site of the host: Rust bindings for the plugin worlds of
//! `wit/geecache.wit` (package 0.2.0) and of the getter world of 0.1.0
//! (`wit/deps/geecache-plugin-0.1.0`), with async exports (calls run on the caller's task, see
//! `plugin`). Every world reuses the getter world's bindings for the shared interfaces
//! (`types`, `log`, `config`, `sql`: 0.1.0's in both versions), so the host implements each
//! import once; only the getter export differs between the versions.

#![allow(missing_docs, missing_debug_implementations)]

/// Bindings for `world getter-plugin` (and, through it, the shared interfaces).
pub mod getter {
    wasmtime::component::bindgen!({
        world: "getter-plugin",
        path: "../wit",
        // `sql.query` may leave the worker thread for a slow query (see `host`); the other
        // imports are quick and synchronous. Exports are called with `call_async`.
        imports: {
            "geecache:plugin/sql.query": async | trappable,
            default: trappable,
        },
        exports: { default: async },
    });
}

/// Bindings for 0.1.0's `world getter-plugin`: getters built before `found` had a stale
/// window. Its imports are the same interfaces as 0.2.0's.
pub mod getter_v0_1 {
    wasmtime::component::bindgen!({
        world: "geecache:plugin/getter-plugin@0.1.0",
        path: "../wit",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "geecache:plugin/types@0.1.0": super::getter::geecache::plugin0_1_0::types,
            "geecache:plugin/log@0.1.0": super::getter::geecache::plugin0_1_0::log,
            "geecache:plugin/config@0.1.0": super::getter::geecache::plugin0_1_0::config,
            "geecache:plugin/sql@0.1.0": super::getter::geecache::plugin0_1_0::sql,
        },
    });
}

/// Bindings for `world storage-plugin-basic`: what every storage plugin exports.
pub mod storage {
    wasmtime::component::bindgen!({
        world: "storage-plugin-basic",
        path: "../wit",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "geecache:plugin/types@0.1.0": super::getter::geecache::plugin0_1_0::types,
            "geecache:plugin/log@0.1.0": super::getter::geecache::plugin0_1_0::log,
            "geecache:plugin/config@0.1.0": super::getter::geecache::plugin0_1_0::config,
        },
    });
}

/// Bindings for `world storage-plugin`, for its `storage-clear` export only: a storage
/// plugin built before that interface existed lacks it, so the host looks it up on its own
/// (see `plugin::storage`).
pub mod storage_clear {
    wasmtime::component::bindgen!({
        world: "storage-plugin",
        path: "../wit",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "geecache:plugin/types@0.1.0": super::getter::geecache::plugin0_1_0::types,
            "geecache:plugin/log@0.1.0": super::getter::geecache::plugin0_1_0::log,
            "geecache:plugin/config@0.1.0": super::getter::geecache::plugin0_1_0::config,
            "geecache:plugin/storage@0.1.0": super::storage::exports::geecache::plugin0_1_0::storage,
        },
    });
}

/// Bindings for `world compressor-plugin`.
pub mod compressor {
    wasmtime::component::bindgen!({
        world: "compressor-plugin",
        path: "../wit",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "geecache:plugin/types@0.1.0": super::getter::geecache::plugin0_1_0::types,
            "geecache:plugin/log@0.1.0": super::getter::geecache::plugin0_1_0::log,
            "geecache:plugin/config@0.1.0": super::getter::geecache::plugin0_1_0::config,
        },
    });
}

pub use getter::geecache::plugin0_1_0::{config, log, sql, types};
