//! The reload triggers that are not the admin API: `--watch-plugins` (file events) and SIGHUP
//! (wired in `server.rs`).
//! Both reload every plugin whose file's content changed ([`Plugins::reload_changed`]).
//!
//! `--watch-plugins` watches the directories of the plugins' files (inotify on Linux): those the
//! node started with, then those a reload names (`reload?path=`). Events come in bursts (a copy
//! writes, a rename moves), so a reload waits until no event came for [`DEBOUNCE`]; and since it
//! compares the SHA-256 of each file with the serving version's, a burst reloads each changed
//! plugin once. The supported way to publish a new version is an atomic rename (`cp new.wasm
//! dir/x.wasm.tmp && mv dir/x.wasm.tmp dir/x.wasm`): a file written in place may be read
//! half-written, which is refused (not a component) and then reloaded when the writes settle.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use parking_lot::Mutex;

use super::Plugins;

/// Quiet time after the last file event before the plugins are checked.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// A running `--watch-plugins`: stops when dropped.
#[derive(Debug)]
pub struct PluginWatch {
    /// The task that debounces, reloads and follows the plugins' files; it owns the file
    /// watcher (whose thread stops when it is dropped).
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PluginWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The plugin files being watched: their names (what file events are matched on) and their
/// directories (what the watcher watches).
#[derive(Debug, Default)]
struct Watched {
    names: BTreeSet<OsString>,
    dirs: BTreeSet<PathBuf>,
}

impl Watched {
    fn of(files: &[PathBuf]) -> Watched {
        Watched {
            names: files
                .iter()
                .filter_map(|f| f.file_name().map(ToOwned::to_owned))
                .collect(),
            dirs: files
                .iter()
                .map(|f| match f.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                })
                .collect(),
        }
    }
}

/// Watches the plugin files of `plugins` and reloads those that change (see the module docs).
/// Follows reloads that change a plugin's file (`reload?path=`): the new file is watched from
/// then on. Call it inside a tokio runtime.
///
/// # Errors
/// When the directories cannot be watched (e.g. the inotify watch limit), as text for the
/// operator.
pub fn watch(plugins: Arc<Plugins>) -> Result<PluginWatch, String> {
    let mut sources = plugins.sources_changed();
    let watched = Watched::of(&plugins.watched_files());
    let names = Arc::new(Mutex::new(watched.names));
    // One pending wake-up is enough: the task re-reads every file when it runs.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let event_names = Arc::clone(&names);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        let names = event_names.lock();
        let ours = event
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|n| names.contains(n)));
        if ours {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| format!("--watch-plugins: cannot watch files: {e}"))?;
    for dir in &watched.dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| format!("--watch-plugins: cannot watch {}: {e}", dir.display()))?;
    }
    tracing::info!(dirs = ?watched.dirs, "watching plugin files; a replaced file is reloaded");
    let mut dirs = watched.dirs;
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                event = rx.recv() => {
                    if event.is_none() {
                        return;
                    }
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
                changed = sources.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = Watched::of(&plugins.watched_files());
                    for dir in now.dirs.difference(&dirs) {
                        match watcher.watch(dir, RecursiveMode::NonRecursive) {
                            Ok(()) => tracing::info!(dir = %dir.display(), "watching a new plugin directory"),
                            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "--watch-plugins: cannot watch a reloaded plugin's directory; reload it with the API or SIGHUP"),
                        }
                    }
                    for dir in dirs.difference(&now.dirs) {
                        let _ = watcher.unwatch(dir);
                    }
                    dirs = now.dirs;
                    *names.lock() = now.names;
                }
            }
        }
    });
    Ok(PluginWatch { task })
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
