//! A getter plugin behind the group's [`Getter`] trait, built against WIT 0.2.0 (`found`
//! carries a stale window) or 0.1.0 (it does not): [`WasmGetter`] is either.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use wasmtime::component::InstancePre;

use super::host::HostState;
use super::{PluginCore, PluginError, Runtime};
use crate::error::Result;
use crate::group::{Getter, Loaded};

/// The export a 0.1.0 getter has where a 0.2.0 one has `geecache:plugin/getter@0.2.0`.
pub(super) const GETTER_EXPORT_V0_1: &str = "geecache:plugin/getter@0.1.0";

/// A wasm getter: each `get` runs on a warm (or new) instance under the runtime's limits.
#[derive(Debug)]
pub enum WasmGetter {
    /// Built against WIT 0.2.0.
    Current(current::Getter),
    /// Built against WIT 0.1.0.
    V0_1(v0_1::Getter),
}

/// Which WIT version a getter component was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Version {
    Current,
    V0_1,
}

impl Version {
    /// The version of a component whose exports are `exports`.
    pub(super) fn of(exports: &[String]) -> Version {
        if exports.iter().any(|e| e == GETTER_EXPORT_V0_1) {
            Version::V0_1
        } else {
            Version::Current
        }
    }
}

/// Asks a freshly loaded getter for its name and version (see `call.rs`).
pub(super) fn info(
    version: Version,
    core: &Arc<PluginCore>,
    pre: &InstancePre<HostState>,
) -> std::result::Result<super::bindings::types::PluginInfo, PluginError> {
    match version {
        Version::Current => current::info(core, pre),
        Version::V0_1 => v0_1::info(core, pre),
    }
}

impl WasmGetter {
    pub(super) fn new(
        version: Version,
        core: Arc<PluginCore>,
        pre: InstancePre<HostState>,
        runtime: &Runtime,
    ) -> std::result::Result<Self, PluginError> {
        Ok(match version {
            Version::Current => WasmGetter::Current(current::Getter::new(core, pre, runtime)?),
            Version::V0_1 => WasmGetter::V0_1(v0_1::Getter::new(core, pre, runtime)?),
        })
    }

    /// Name, version and counters.
    pub fn core(&self) -> &PluginCore {
        match self {
            WasmGetter::Current(g) => g.core(),
            WasmGetter::V0_1(g) => g.core(),
        }
    }

    /// Instances created for calls so far.
    pub fn instances_created(&self) -> u64 {
        match self {
            WasmGetter::Current(g) => g.instances_created(),
            WasmGetter::V0_1(g) => g.instances_created(),
        }
    }

    /// Warm instances waiting for a call.
    pub fn idle_instances(&self) -> usize {
        match self {
            WasmGetter::Current(g) => g.idle_instances(),
            WasmGetter::V0_1(g) => g.idle_instances(),
        }
    }

    /// Drops this version's warm instances (it was replaced by a reload).
    pub(crate) fn retire(&self) {
        match self {
            WasmGetter::Current(g) => g.retire(),
            WasmGetter::V0_1(g) => g.retire(),
        }
    }
}

impl Getter for WasmGetter {
    fn name(&self) -> &str {
        &self.core().name
    }

    fn get<'a>(&'a self, group: &'a str, key: &'a str) -> BoxFuture<'a, Result<Loaded>> {
        match self {
            WasmGetter::Current(g) => Box::pin(g.load(group, key)),
            WasmGetter::V0_1(g) => Box::pin(g.load(group, key)),
        }
    }
}

/// One WIT version's getter module: its bindings (`$bindings`, package `$package`), the
/// accessor of its `getter` export, and how its `found` record's stale window is read. The two
/// versions differ in nothing else.
macro_rules! getter_version {
    (
        $(#[$doc:meta])*
        $module:ident, $bindings:ident, $package:ident, $accessor:ident,
        stale_ms: |$found:ident| $stale_ms:expr
    ) => {
        $(#[$doc])*
        pub mod $module {
            use super::{Bytes, Loaded, Result};
            use crate::plugin::bindings::$bindings::exports::geecache::$package::getter::Lookup;
            use crate::plugin::bindings::$bindings::{GetterPlugin, GetterPluginPre};
            use crate::plugin::plugin_kind;

            plugin_kind!(
                /// A getter built against this version of the WIT package.
                Getter,
                GetterPluginPre<crate::plugin::host::HostState>,
                GetterPlugin,
                $accessor
            );

            impl Getter {
                /// Loads `key` of `group`.
                pub(super) async fn load(&self, group: &str, key: &str) -> Result<Loaded> {
                    let (group, key) = (group.to_owned(), key.to_owned());
                    let lookup = self
                        .invoke(|mut w| async move {
                            let getter = w.instance.$accessor();
                            let answer = getter.call_get(&mut w.store, &group, &key).await;
                            (w, answer)
                        })
                        .await?;
                    Ok(match lookup {
                        Lookup::Found($found) => Loaded::Found {
                            stale_ms: $stale_ms,
                            value: Bytes::from($found.value),
                            expires_at_ms: $found.expires_at_ms,
                        },
                        Lookup::NotFound => Loaded::NotFound,
                    })
                }
            }
        }
    };
}

getter_version!(
    /// Getters built against WIT 0.2.0.
    current, getter, plugin0_2_0, geecache_plugin0_2_0_getter,
    stale_ms: |found| found.stale_ms
);

getter_version!(
    /// Getters built against WIT 0.1.0: no stale window of their own.
    v0_1, getter_v0_1, plugin0_1_0, geecache_plugin0_1_0_getter,
    stale_ms: |_found| None
);
