//! A getter plugin behind the group's [`Getter`] trait.

use bytes::Bytes;
use futures::future::BoxFuture;

use super::bindings::getter::exports::geecache::plugin::getter::Lookup;
use super::bindings::getter::{GetterPlugin, GetterPluginPre};
use super::plugin_kind;
use crate::error::Result;
use crate::group::{Getter, Loaded};

plugin_kind!(
    /// A wasm getter: each `get` runs on a warm (or new) instance under the runtime's limits.
    WasmGetter,
    GetterPluginPre<super::host::HostState>,
    GetterPlugin,
    geecache_plugin_getter
);

impl Getter for WasmGetter {
    fn name(&self) -> &str {
        &self.core.name
    }

    fn get<'a>(&'a self, group: &'a str, key: &'a str) -> BoxFuture<'a, Result<Loaded>> {
        let (group, key) = (group.to_owned(), key.to_owned());
        Box::pin(async move {
            let lookup = self
                .invoke(|mut w| async move {
                    let getter = w.instance.geecache_plugin_getter();
                    let answer = getter.call_get(&mut w.store, &group, &key).await;
                    (w, answer)
                })
                .await?;
            Ok(match lookup {
                Lookup::Found(found) => Loaded::Found {
                    value: Bytes::from(found.value),
                    expires_at_ms: found.expires_at_ms,
                },
                Lookup::NotFound => Loaded::NotFound,
            })
        })
    }
}
