//! What one plugin instance keeps between its calls ([`INSTANCE`]): the writes a batched sync
//! still owes, whether directory syncs failed, whether a sweep is due, and the cached quota
//! usage. None of it survives the instance.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use crate::quota::GroupUsage;
use crate::sync::Pending;

/// What one instance keeps between its calls. None of it must survive the instance: it is
/// what a batched sync still owes, caches, and flags.
pub(crate) struct Instance {
    /// Written since the last batched sync and not synced yet.
    pub(crate) pending: Pending,
    /// When this instance last synced its pending writes (or started).
    pub(crate) last_sync: Instant,
    /// Whether syncing a directory failed once, after which this instance no longer tries.
    pub(crate) dir_sync_failed: bool,
    /// Whether cleared groups' directories may be left to remove.
    pub(crate) sweep_due: bool,
    /// Each group's bucket totals as last read, by group directory.
    pub(crate) usage: HashMap<PathBuf, GroupUsage>,
}

impl Instance {
    /// A new instance: nothing pending, and a sweep due (a previous instance may have left
    /// cleared groups' directories).
    fn new() -> Self {
        Self {
            pending: Pending::default(),
            last_sync: Instant::now(),
            dir_sync_failed: false,
            sweep_due: true,
            usage: HashMap::new(),
        }
    }
}

thread_local! {
    /// This instance's state (a component instance is single-threaded; natively, each test
    /// thread is an instance of its own).
    pub(crate) static INSTANCE: RefCell<Instance> = RefCell::new(Instance::new());
}
