//! A plugin's slot: [`Reloadable`] holds its current version behind an [`ArcSwap`] (what groups
//! and codecs call through, as a getter, storage backend or compressor), and [`Slot`] is that,
//! by kind. A reload swaps the version in the slot (see `registry.rs`).

use std::collections::BTreeSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use parking_lot::Mutex;

use super::{LoadedPlugin, WasmCompressor, WasmGetter, WasmStorage};
use crate::compression::{CodecError, Compressor};
use crate::error::Result;
use crate::group::{Entries, Getter, Loaded, PeerEntry, Storage};

/// One plugin's current version, swapped atomically by a reload. What groups and codecs hold.
#[derive(Debug)]
pub struct Reloadable<P> {
    /// The plugin's reported name, the same for every version.
    name: String,
    /// The version new calls go to.
    pub(super) current: ArcSwap<P>,
    /// A compressor's levels that groups were built with (each checked then): a new version
    /// must take them too.
    pub(super) levels: Mutex<BTreeSet<i32>>,
}

impl<P> Reloadable<P> {
    fn new(name: String, first: Arc<P>) -> Self {
        Reloadable {
            name,
            current: ArcSwap::new(first),
            levels: Mutex::new(BTreeSet::new()),
        }
    }

    /// The version a call starting now runs on (it keeps it to the end).
    pub fn current(&self) -> Arc<P> {
        self.current.load_full()
    }
}

impl Getter for Reloadable<WasmGetter> {
    fn name(&self) -> &str {
        &self.name
    }

    fn get<'a>(&'a self, group: &'a str, key: &'a str) -> BoxFuture<'a, Result<Loaded>> {
        let version = self.current();
        Box::pin(async move { version.get(group, key).await })
    }
}

impl Entries for Reloadable<WasmStorage> {
    fn get<'a>(&'a self, group: &'a str, key: &'a str) -> BoxFuture<'a, Result<Option<PeerEntry>>> {
        let version = self.current();
        Box::pin(async move { Ok(version.get(group, key).await?) })
    }

    fn set<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        entry: PeerEntry,
    ) -> BoxFuture<'a, Result<()>> {
        let version = self.current();
        Box::pin(async move { Ok(version.put(group, key, entry).await?) })
    }

    fn delete<'a>(&'a self, group: &'a str, key: &'a str) -> BoxFuture<'a, Result<()>> {
        let version = self.current();
        Box::pin(async move { Ok(version.delete(group, key).await?) })
    }
}

impl Storage for Reloadable<WasmStorage> {
    fn name(&self) -> &str {
        &self.name
    }

    fn clear<'a>(&'a self, group: &'a str) -> BoxFuture<'a, Result<()>> {
        let version = self.current();
        Box::pin(async move { Ok(version.clear(group).await?) })
    }

    fn cannot_clear(&self) -> Option<String> {
        Storage::cannot_clear(&*self.current())
    }
}

/// A reloadable codec. A new version must decode what the old one wrote: a value that does not
/// decode any more is dropped and reloaded by its group (and counted as corrupt).
impl Compressor for Reloadable<WasmCompressor> {
    fn name(&self) -> &str {
        &self.name
    }

    /// Checks `level` with the current version, and remembers it (a group compresses at it)
    /// so that a reload to a version that refuses it is refused.
    fn check_level(&self, level: Option<i32>) -> std::result::Result<(), CodecError> {
        self.current().check_level(level)?;
        if let Some(level) = level {
            self.levels.lock().insert(level);
        }
        Ok(())
    }

    fn verify_output(&self) -> bool {
        true
    }

    fn compress<'a>(
        &'a self,
        data: &'a [u8],
        level: Option<i32>,
    ) -> BoxFuture<'a, std::result::Result<Vec<u8>, CodecError>> {
        let version = self.current();
        Box::pin(async move { Ok(version.compress(data.to_vec(), level).await?) })
    }

    fn decompress<'a>(
        &'a self,
        data: &'a [u8],
        max_len: usize,
    ) -> BoxFuture<'a, std::result::Result<Vec<u8>, CodecError>> {
        let version = self.current();
        let max_len = u64::try_from(max_len).unwrap_or(u64::MAX);
        Box::pin(async move { Ok(version.decompress(data.to_vec(), max_len).await?) })
    }
}

/// The slot of one plugin, by kind.
#[derive(Debug, Clone)]
pub enum Slot {
    /// A getter's slot.
    Getter(Arc<Reloadable<WasmGetter>>),
    /// A storage backend's slot.
    Storage(Arc<Reloadable<WasmStorage>>),
    /// A compressor's slot.
    Compressor(Arc<Reloadable<WasmCompressor>>),
}

impl Slot {
    pub(super) fn new(plugin: LoadedPlugin) -> Slot {
        let name = plugin.info().name.clone();
        match plugin {
            LoadedPlugin::Getter(p) => Slot::Getter(Arc::new(Reloadable::new(name, p))),
            LoadedPlugin::Storage(p) => Slot::Storage(Arc::new(Reloadable::new(name, p))),
            LoadedPlugin::Compressor(p) => Slot::Compressor(Arc::new(Reloadable::new(name, p))),
        }
    }

    /// The current version.
    pub fn current(&self) -> LoadedPlugin {
        match self {
            Slot::Getter(s) => LoadedPlugin::Getter(s.current()),
            Slot::Storage(s) => LoadedPlugin::Storage(s.current()),
            Slot::Compressor(s) => LoadedPlugin::Compressor(s.current()),
        }
    }

    /// Swaps `new` in and drains the version it replaces. `new` is of the slot's kind (checked
    /// by [`Plugins::prepare`]); a mismatch is a bug and changes nothing.
    pub(super) fn swap(&self, new: LoadedPlugin) -> std::result::Result<(), LoadedPlugin> {
        match (self, new) {
            (Slot::Getter(s), LoadedPlugin::Getter(p)) => s.current.swap(p).retire(),
            (Slot::Storage(s), LoadedPlugin::Storage(p)) => s.current.swap(p).retire(),
            (Slot::Compressor(s), LoadedPlugin::Compressor(p)) => s.current.swap(p).retire(),
            (_, other) => return Err(other),
        }
        Ok(())
    }
}
