// The hot-reload test getter, shared by its versions: each crate's lib.rs sets `VERSION` and
// includes this file.
//
// Reports the name `reload_getter` and answers every key with `KEY@vVERSION`. A key that
// starts with `slow` is answered after a 50 ms sleep (`slower`: 400 ms), so that a reload can
// happen while calls are running on the old version.

use geecache_guest_sdk::{Error, Getter, Lookup, export_getter};

struct Reload;

impl Getter for Reload {
    const NAME: &'static str = "reload_getter";
    const VERSION: &'static str = VERSION;

    fn get(_group: &str, key: &str) -> Result<Lookup, Error> {
        if key.starts_with("slower") {
            std::thread::sleep(std::time::Duration::from_millis(400));
        } else if key.starts_with("slow") {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(Lookup::found(format!("{key}@v{VERSION}").into_bytes()))
    }
}

export_getter!(Reload);
