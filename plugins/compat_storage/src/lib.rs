//! `compat_storage`: a storage backend exactly as plugins were written against the first SDK
//! release (get, put, delete; no `clear`). It is built with every build of the plugins, so an
//! SDK change that breaks plugins written against an earlier SDK fails the build here: new
//! trait methods must come with a default. It keeps entries in the instance's memory.
//!
//! Do not modernize this file; it stands for plugins written outside this repository.

use std::cell::RefCell;
use std::collections::HashMap;

use geecache_guest_sdk::{Entry, Error, Storage, export_storage};

thread_local! {
    static ENTRIES: RefCell<HashMap<(String, String), Entry>> = RefCell::new(HashMap::new());
}

struct CompatStorage;

impl Storage for CompatStorage {
    const NAME: &'static str = "compat_storage";

    fn get(group: &str, key: &str) -> Result<Option<Entry>, Error> {
        Ok(ENTRIES.with(|e| e.borrow().get(&(group.into(), key.into())).cloned()))
    }

    fn put(group: &str, key: &str, entry: Entry) -> Result<(), Error> {
        ENTRIES.with(|e| e.borrow_mut().insert((group.into(), key.into()), entry));
        Ok(())
    }

    fn delete(group: &str, key: &str) -> Result<(), Error> {
        ENTRIES.with(|e| e.borrow_mut().remove(&(group.into(), key.into())));
        Ok(())
    }
}

export_storage!(CompatStorage);
