//! The `config` capability: the values the operator set for the plugin (`NAME.config.KEY`),
//! read-only, one key at a time.

use wasmtime::component::{HasSelf, Linker};

use crate::plugin::bindings::config;
use crate::plugin::host::HostState;

/// Adds the `config` interface, served by [`HostState`]'s values, to `linker` (every kind).
///
/// # Errors
/// When the interface is in the linker already.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    config::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

impl config::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.config.get(&key).cloned())
    }
}
