//! `storage_basic`: a storage backend as one was built before the `storage-clear` interface
//! existed (world `storage-plugin-basic`), to test that the host still loads one and that a
//! flush then reports the group's stored entries as left. It keeps entries in the instance's
//! memory, so it forgets them when the host replaces the instance: enough for a test of
//! loading, serving and flushing, not a backend to use. A put of a key that starts with `slow`
//! takes a second, of one that starts with `slow5` five (for tests of writes that outlive
//! their client or their deadline).

#![allow(unsafe_code)] // the generated bindings' exports

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

wit_bindgen::generate!({
    path: "../../wit/deps/geecache-plugin-0.1.0",
    world: "storage-plugin-basic",
});

use exports::geecache::plugin::storage::{Entry, Guest};
use geecache::plugin::types::{Error, PluginInfo};

/// Entries by (group, key), in this instance's memory.
static ENTRIES: Mutex<Option<HashMap<(String, String), Entry>>> = Mutex::new(None);

struct BasicStorage;

impl Guest for BasicStorage {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "storage_basic".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn get(group: String, key: String) -> Result<Option<Entry>, Error> {
        let entries = ENTRIES.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(entries.as_ref().and_then(|e| e.get(&(group, key)).cloned()))
    }

    fn put(group: String, key: String, entry: Entry) -> Result<(), Error> {
        if key.starts_with("slow") {
            let seconds = if key.starts_with("slow5") { 5 } else { 1 };
            std::thread::sleep(std::time::Duration::from_secs(seconds));
        }
        let mut entries = ENTRIES.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get_or_insert_default().insert((group, key), entry);
        Ok(())
    }

    fn delete(group: String, key: String) -> Result<(), Error> {
        let mut entries = ENTRIES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entries) = entries.as_mut() {
            entries.remove(&(group, key));
        }
        Ok(())
    }
}

export!(BasicStorage);
