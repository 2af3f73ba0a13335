//! A broken "new version" of `reload_getter` for the hot-reload tests: a getter component whose
//! `info` traps (it panics), so the host cannot even learn its name. Written against the SDK's
//! bindings directly, since `export_getter!` always answers `info`.

#![allow(unsafe_code)]

use geecache_guest_sdk::wit::getter::exports::geecache::plugin0_2_0::getter::{Guest, Lookup};
use geecache_guest_sdk::wit::getter::geecache::plugin0_1_0::types::{Error, PluginInfo};

struct Broken;

impl Guest for Broken {
    fn info() -> PluginInfo {
        panic!("reload_getter_broken: info always panics")
    }

    fn get(_group: String, key: String) -> Result<Lookup, Error> {
        Err(Error::Other(format!("never loaded, asked for {key}")))
    }
}

geecache_guest_sdk::wit::getter::export_getter_world!(Broken with_types_in geecache_guest_sdk::wit::getter);
