//! The reload triggers that are not the admin API: `--watch-plugins` (file events) and SIGHUP
//! (wired in [`crate::server`]).
//! Both reload every plugin whose file's content changed ([`Plugins::reload_changed`]).
//!
//! `--watch-plugins` watches the directories of the plugin files the node started with
//! (inotify on Linux). Events come in bursts (a copy writes, a rename moves), so a reload waits
//! until no event came for [`DEBOUNCE`]; and since it compares the SHA-256 of each file with
//! the serving version's, a burst reloads each changed plugin once. The supported way to
//! publish a new version is an atomic rename (`cp new.wasm dir/x.wasm.tmp && mv
//! dir/x.wasm.tmp dir/x.wasm`): a file written in place may be read half-written, which is
//! refused (not a component) and then reloaded when the writes settle.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};

use super::Plugins;

/// Quiet time after the last file event before the plugins are checked.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// A running `--watch-plugins`: stops when dropped.
#[derive(Debug)]
pub struct PluginWatch {
    /// The file watcher (its thread stops when it is dropped).
    _watcher: notify::RecommendedWatcher,
    /// The task that debounces and reloads.
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PluginWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches the plugin files of `plugins` and reloads those that change (see the module docs).
/// Call it inside a tokio runtime.
///
/// # Errors
/// When the directories cannot be watched (e.g. the inotify watch limit), as text for the
/// operator.
pub fn watch(plugins: Arc<Plugins>) -> Result<PluginWatch, String> {
    let files = plugins.watched_files();
    let dirs: BTreeSet<PathBuf> = files
        .iter()
        .map(|f| match f.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect();
    let names: BTreeSet<std::ffi::OsString> = files
        .iter()
        .filter_map(|f| f.file_name().map(ToOwned::to_owned))
        .collect();
    // One pending wake-up is enough: the task re-reads every file when it runs.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        let ours = event
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|n| names.contains(n)));
        if ours {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| format!("--watch-plugins: cannot watch files: {e}"))?;
    for dir in &dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| format!("--watch-plugins: cannot watch {}: {e}", dir.display()))?;
    }
    tracing::info!(dirs = ?dirs, "watching plugin files; a replaced file is reloaded");
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait for a quiet moment.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => {}
                    Ok(None) => return,
                    Err(_quiet) => break,
                }
            }
            let results = plugins.reload_changed().await;
            tracing::debug!(reloads = results.len(), "plugin files changed");
        }
    });
    Ok(PluginWatch {
        _watcher: watcher,
        task,
    })
}

/// What SIGHUP does to plugins: reloads those whose files changed, and logs how many.
pub async fn reload_changed_on_signal(plugins: &Plugins) {
    let results = plugins.reload_changed().await;
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    tracing::info!(
        changed = results.len(),
        failed,
        "SIGHUP: reloaded the plugins whose files changed"
    );
}
