//! The groups a node serves, by name, and what it offers its peers through them.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::Group;
use super::tier::Drained;
use crate::error::{Error, Result};
use crate::seam::PeerEntry;

/// The groups a node serves, by name.
#[derive(Debug, Default, Clone)]
pub struct Groups {
    /// Name → group.
    by_name: BTreeMap<String, Arc<Group>>,
}

impl Groups {
    /// Adds a group.
    ///
    /// # Errors
    /// When a group of that name already exists.
    pub fn insert(&mut self, group: Group) -> std::result::Result<(), String> {
        let name = group.name().to_string();
        if self.by_name.contains_key(&name) {
            return Err(format!("group {name:?} is defined twice"));
        }
        self.by_name.insert(name, Arc::new(group));
        Ok(())
    }

    /// The group called `name`.
    ///
    /// # Errors
    /// [`Error::GroupNotFound`].
    pub fn get(&self, name: &str) -> Result<&Arc<Group>> {
        self.by_name
            .get(name)
            .ok_or_else(|| Error::GroupNotFound(name.to_string()))
    }

    /// All groups, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Group>> {
        self.by_name.values()
    }

    /// [`Group::drain_storage`] for every group, all before one `deadline`; the totals.
    pub async fn drain_storage(&self, deadline: tokio::time::Instant) -> Drained {
        let drained =
            futures::future::join_all(self.iter().map(|g| g.drain_storage(deadline))).await;
        drained
            .into_iter()
            .fold(Drained::default(), |sum, d| Drained {
                written: sum.written + d.written,
                abandoned: sum.abandoned + d.abandoned,
            })
    }
}

/// What this node's groups offer to peers: answers as the keys' owner.
impl crate::seam::Entries for Groups {
    fn get<'a>(&'a self, group: &'a str, key: &'a str) -> BoxFuture<'a, Result<Option<PeerEntry>>> {
        Box::pin(async move { self.get(group)?.get_as_owner(key).await })
    }

    fn set<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
        entry: PeerEntry,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.get(group)?.set_as_owner(key, entry).await })
    }

    fn delete<'a>(&'a self, group: &'a str, key: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.get(group)?.remove_as_owner(key).await })
    }
}

impl crate::seam::PeerService for Groups {
    fn invalidate<'a>(&'a self, group: &'a str, keys: &'a [String]) -> BoxFuture<'a, Result<()>> {
        let done = self.get(group).map(|g| g.invalidate(keys));
        Box::pin(std::future::ready(done))
    }

    fn peek<'a>(
        &'a self,
        group: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<PeerEntry>>> {
        let held = self.get(group).and_then(|g| g.peek_as_owner(key));
        Box::pin(std::future::ready(held))
    }

    fn take_handoff<'a>(
        &'a self,
        group: &'a str,
        entries: Vec<(String, PeerEntry)>,
    ) -> BoxFuture<'a, Result<usize>> {
        Box::pin(async move { self.get(group)?.take_handoff(entries).await })
    }
}
