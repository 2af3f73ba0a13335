//! The one `bindgen!` site of the host: Rust bindings for the plugin worlds of
//! `wit/geecache.wit`, with async exports (calls run on the caller's task, see `plugin`). The storage and compressor worlds reuse the getter world's bindings for
//! the shared interfaces (`types`, `log`, `config`), so the host implements each import once.

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

/// Bindings for `world storage-plugin-basic`: what every storage plugin exports.
pub mod storage {
    wasmtime::component::bindgen!({
        world: "storage-plugin-basic",
        path: "../wit",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "geecache:plugin/types": super::getter::geecache::plugin::types,
            "geecache:plugin/log": super::getter::geecache::plugin::log,
            "geecache:plugin/config": super::getter::geecache::plugin::config,
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
            "geecache:plugin/types": super::getter::geecache::plugin::types,
            "geecache:plugin/log": super::getter::geecache::plugin::log,
            "geecache:plugin/config": super::getter::geecache::plugin::config,
            "geecache:plugin/storage": super::storage::exports::geecache::plugin::storage,
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
            "geecache:plugin/types": super::getter::geecache::plugin::types,
            "geecache:plugin/log": super::getter::geecache::plugin::log,
            "geecache:plugin/config": super::getter::geecache::plugin::config,
        },
    });
}

pub use getter::geecache::plugin::{config, log, sql, types};
