//! Hot reload: the node's plugins, each behind a slot whose version is swapped while it serves.
//!
//! Groups and codecs hold a [`Reloadable`] (the plugin's current version behind an
//! [`ArcSwap`]), never a version itself. A reload ([`Plugins::reload`]):
//! 1. reads the new component (a file, or bytes sent to the admin API) and compiles and probes
//!    it on a blocking thread, off the serving path ([`Plugins::prepare`]): it must load, be of
//!    the same kind, report the same name, and (a compressor) round-trip a sample and take
//!    every level the node's groups compress at with it;
//! 2. only then swaps it in ([`Plugins::commit`]). A call takes the current version when it
//!    starts and keeps it to the end, so calls in flight finish on the old version and new
//!    calls go to the new one; the old version's warm instances are dropped at once, and those
//!    of its calls in flight when those calls end.
//!
//! A component that fails any check is refused with a message saying why, and the old version
//! keeps serving. Reloads of one plugin run one at a time. The plugin keeps the grants the
//! operator gave its name, and its call counters (they count across versions); each version
//! records its SHA-256, where it came from and when it was loaded.
//!
//! A cluster rollout stages a prepared version on every node first ([`Plugins::stage`]) and
//! swaps it in everywhere only once every node has it ([`Plugins::commit_staged`]), so no node
//! is left unable to load what the others run.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

pub use super::slot::{Reloadable, Slot};
use super::{
    LoadedPlugin, PluginError, PluginGrants, PluginKind, PluginSnapshot, PluginStats, Runtime,
    WasmCompressor,
};
use crate::compression::{CodecError, Compressor};
use crate::error::{Error, Result};
use crate::group::{Getter, Storage};

/// How long a version staged by a cluster rollout waits for its commit before it is dropped.
pub const STAGED_TTL: Duration = Duration::from_secs(120);

/// Where a version's bytes came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file; SIGHUP and `--watch-plugins` reload the plugin when its content changes.
    File(PathBuf),
    /// Bytes sent to the admin API (or by a cluster rollout); not watched.
    Upload,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Upload => f.write_str("upload"),
        }
    }
}

/// What a new version is to be read from.
#[derive(Debug, Clone)]
pub enum Candidate {
    /// The file the current version came from (the first file when it was uploaded).
    SameFile,
    /// Another file, which the plugin is known by from now on.
    File(PathBuf),
    /// A component's bytes.
    Bytes(Bytes),
}

/// Identity of one version of a plugin.
#[derive(Debug, Clone)]
pub struct VersionInfo {
    /// The version the plugin reports.
    pub version: String,
    /// Hex SHA-256 of the component's bytes.
    pub sha256: String,
    /// Where its bytes came from.
    pub source: Source,
    /// When it was swapped in (or loaded at startup).
    pub loaded_at: SystemTime,
}

/// One loaded plugin and its history of versions.
#[derive(Debug)]
pub struct PluginEntry {
    /// The operator's name for it: what its grants are bound to.
    pub alias: String,
    /// The name it reports; every version must report the same.
    pub name: String,
    /// Its kind; every version must be of the same kind.
    pub kind: PluginKind,
    /// What the operator granted `alias`.
    grants: PluginGrants,
    /// The swappable current version.
    pub slot: Slot,
    /// The file it is known by: re-read by [`Candidate::SameFile`], and where its default
    /// database is looked for.
    path: Mutex<PathBuf>,
    /// The current version's identity.
    info: Mutex<Arc<VersionInfo>>,
    /// Successful reloads.
    reloads: AtomicU64,
    /// Refused reloads.
    reload_failures: AtomicU64,
    /// One reload of this plugin at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl PluginEntry {
    /// The current version's identity.
    pub fn info(&self) -> Arc<VersionInfo> {
        self.info.lock().clone()
    }

    /// The file the plugin is known by.
    pub fn path(&self) -> PathBuf {
        self.path.lock().clone()
    }

    /// Successful reloads so far.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Refused reloads so far.
    pub fn reload_failures(&self) -> u64 {
        self.reload_failures.load(Ordering::Relaxed)
    }

    /// Counters and identity, as `/api/v1/stats`, `/api/v1/plugins` and `/metrics` show them.
    pub fn snapshot(&self) -> PluginSnapshot {
        let mut snapshot = self.slot.current().snapshot();
        let info = self.info();
        snapshot.sha256 = info.sha256.clone();
        snapshot.reloads = self.reloads();
        snapshot.reload_failures = self.reload_failures();
        snapshot
    }
}

/// A new version, compiled and checked, not swapped in yet.
#[derive(Debug)]
pub struct Prepared {
    /// The plugin it is a version of.
    entry: Arc<PluginEntry>,
    /// The loaded version.
    plugin: LoadedPlugin,
    /// Its identity.
    info: VersionInfo,
    /// The file it was read from, which the plugin is known by once it is committed.
    path: Option<PathBuf>,
}

impl Prepared {
    /// Hex SHA-256 of the new version.
    pub fn sha256(&self) -> &str {
        &self.info.sha256
    }
}

/// What a committed reload changed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    /// The plugin's name.
    pub plugin: String,
    /// The version now serving.
    pub version: String,
    /// Its SHA-256.
    pub sha256: String,
    /// Where it came from.
    pub source: String,
    /// The version it replaced.
    pub previous_version: String,
    /// Its SHA-256.
    pub previous_sha256: String,
    /// Whether the content changed (a reload of the same bytes swaps in a fresh instance all
    /// the same).
    pub changed: bool,
}

/// Every plugin of a node, by reported name.
#[derive(Debug, Default)]
pub struct Plugins {
    /// Compiles new versions; `None` only for a node built without plugins (tests).
    runtime: Option<Arc<Runtime>>,
    /// The plugins, in load order.
    entries: Vec<Arc<PluginEntry>>,
    /// Versions staged by a cluster rollout, by plugin name, with when they were staged.
    staged: Mutex<HashMap<String, (Prepared, Instant)>>,
    /// Bumped whenever a reload changes where a plugin's bytes come from (another file, or an
    /// upload): what `--watch-plugins` follows to watch the files serving now.
    sources: tokio::sync::watch::Sender<u64>,
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A refused reload, with the message an operator needs.
fn refused(name: &str, message: impl std::fmt::Display) -> Error {
    Error::PluginRefused(format!("reload of plugin {name:?} refused: {message}"))
}

impl Plugins {
    /// Loads `specs` in order (each file with what the operator granted its name). Names that
    /// plugins report must be unique.
    ///
    /// Compiles plugins (CPU-heavy): call it before serving, from a blocking context.
    ///
    /// # Errors
    /// A message saying which plugin is wrong and how to fix it.
    pub fn load(
        runtime: Arc<Runtime>,
        specs: &[super::PluginSpec],
    ) -> std::result::Result<Plugins, String> {
        let mut entries: Vec<Arc<PluginEntry>> = Vec::new();
        for spec in specs {
            let bytes = super::read_component(&spec.path, super::MAX_COMPONENT_FILE_BYTES).map_err(|e| {
                PluginError::Load {
                    path: spec.path.display().to_string(),
                    message: format!(
                        "{e}; build the plugins with `bash plugins/build.sh`, which writes plugins/<name>.wasm"
                    ),
                }
                .to_string()
            })?;
            let loaded = runtime
                .load_bytes(&bytes, &spec.path, spec.grants.clone(), None)
                .map_err(|e| e.to_string())?;
            let name = loaded.info().name.clone();
            if entries.iter().any(|p| p.name == name) {
                return Err(format!(
                    "two plugins report the name {name:?} ({}): names must be unique",
                    spec.path.display()
                ));
            }
            entries.push(Arc::new(PluginEntry {
                alias: spec.name.clone(),
                kind: loaded.kind(),
                info: Mutex::new(Arc::new(VersionInfo {
                    version: loaded.info().version.clone(),
                    sha256: sha256_hex(&bytes),
                    source: Source::File(spec.path.clone()),
                    loaded_at: SystemTime::now(),
                })),
                name,
                grants: spec.grants.clone(),
                slot: Slot::new(loaded),
                path: Mutex::new(spec.path.clone()),
                reloads: AtomicU64::new(0),
                reload_failures: AtomicU64::new(0),
                reloading: tokio::sync::Mutex::new(()),
            }));
        }
        Ok(Plugins {
            runtime: Some(runtime),
            entries,
            staged: Mutex::default(),
            sources: tokio::sync::watch::Sender::default(),
        })
    }

    /// Every plugin, in load order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<PluginEntry>> {
        self.entries.iter()
    }

    /// The plugin that reports `name`.
    ///
    /// # Errors
    /// [`Error::PluginNotFound`] when no loaded plugin reports that name.
    pub fn get(&self, name: &str) -> Result<&Arc<PluginEntry>> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| Error::PluginNotFound(name.to_string()))
    }

    /// Every plugin's counters and identity.
    pub fn snapshots(&self) -> Vec<PluginSnapshot> {
        self.entries.iter().map(|e| e.snapshot()).collect()
    }

    /// The getters, as groups take them.
    pub fn getters(&self) -> Vec<Arc<dyn Getter>> {
        self.of_kind(|slot| match slot {
            Slot::Getter(s) => Some(s.clone() as Arc<dyn Getter>),
            _ => None,
        })
    }

    /// The storage backends, as groups take them.
    pub fn storages(&self) -> Vec<Arc<dyn Storage>> {
        self.of_kind(|slot| match slot {
            Slot::Storage(s) => Some(s.clone() as Arc<dyn Storage>),
            _ => None,
        })
    }

    /// The compressors, as codecs.
    pub fn compressors(&self) -> Vec<Arc<dyn Compressor>> {
        self.of_kind(|slot| match slot {
            Slot::Compressor(s) => Some(s.clone() as Arc<dyn Compressor>),
            _ => None,
        })
    }

    /// The slots `pick` takes, in load order, as what it makes of them.
    fn of_kind<T: ?Sized>(&self, pick: impl Fn(&Slot) -> Option<Arc<T>>) -> Vec<Arc<T>> {
        self.entries.iter().filter_map(|e| pick(&e.slot)).collect()
    }

    /// Reads, compiles and checks a new version of plugin `name` from `candidate`, off the
    /// serving path (a blocking thread). Nothing changes until it is committed.
    ///
    /// # Errors
    /// [`Error::PluginNotFound`]; [`Error::PluginRefused`] when the bytes cannot be read, are
    /// not a component, do not load, are of another kind, report another name, or (a
    /// compressor) do not round-trip a sample or refuse a level a group compresses at.
    pub async fn prepare(&self, name: &str, candidate: Candidate) -> Result<Prepared> {
        let entry = self.get(name)?.clone();
        let runtime = self
            .runtime
            .clone()
            .ok_or_else(|| Error::Internal("no plugin runtime".into()))?;
        let (read_from, sent) = match candidate {
            Candidate::SameFile => (Some(entry.path()), None),
            Candidate::File(path) => (Some(path), None),
            Candidate::Bytes(bytes) => (None, Some(bytes)),
        };
        // The file the new version is known by: where it was read from, else the old one's.
        let known_as = read_from.clone().unwrap_or_else(|| entry.path());
        let grants = entry.grants.clone();
        let stats: Arc<PluginStats> = entry.slot.current().info().stats.clone();
        let file = read_from.clone();
        // An upload's refusal names the upload, not the file the plugin is known by.
        let uploaded = sent.as_ref().map(Bytes::len);
        let loaded = tokio::task::spawn_blocking(move || {
            let bytes = match (sent, &file) {
                (Some(bytes), _) => bytes,
                (None, Some(path)) => Bytes::from(
                    super::read_component(path, super::MAX_COMPONENT_FILE_BYTES)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
                ),
                (None, None) => return Err("no component was given".to_string()),
            };
            let sha256 = sha256_hex(&bytes);
            runtime
                .load_bytes(&bytes, &known_as, grants, Some(stats))
                .map(|plugin| (plugin, sha256))
                .map_err(|e| match (uploaded, e) {
                    (Some(len), PluginError::Load { message, .. }) => {
                        format!("the uploaded component ({len} bytes): {message}")
                    }
                    (_, e) => e.to_string(),
                })
        })
        .await
        .map_err(|e| Error::Internal(format!("the plugin loader failed: {e}")))?;
        let (plugin, sha256) = loaded.map_err(|m| refused(name, m))?;
        if plugin.kind() != entry.kind {
            return Err(refused(
                name,
                format!(
                    "the new component is a {} plugin, and {name} is a {}; load it as a plugin of its own",
                    plugin.kind(),
                    entry.kind
                ),
            ));
        }
        if plugin.info().name != entry.name {
            return Err(refused(
                name,
                format!(
                    "the new component reports the name {:?}; a new version must report the same name",
                    plugin.info().name
                ),
            ));
        }
        if let LoadedPlugin::Compressor(c) = &plugin {
            round_trip(c)
                .await
                .map_err(|m| refused(name, format!("the new compressor {m}")))?;
            if let Slot::Compressor(old) = &entry.slot {
                takes_levels(c, old)
                    .await
                    .map_err(|m| refused(name, format!("the new compressor {m}")))?;
            }
        }
        Ok(Prepared {
            entry,
            info: VersionInfo {
                version: plugin.info().version.clone(),
                sha256,
                source: read_from.clone().map_or(Source::Upload, Source::File),
                loaded_at: SystemTime::now(),
            },
            plugin,
            path: read_from,
        })
    }

    /// Swaps a prepared version in: calls from now on run on it, calls in flight finish on the
    /// old one, whose warm instances are drained.
    ///
    /// # Errors
    /// Only a bug (a prepared version of another kind) fails it; nothing changes then.
    pub fn commit(&self, prepared: Prepared) -> Result<ReloadReport> {
        let Prepared {
            entry,
            plugin,
            info,
            path,
        } = prepared;
        let previous = entry.info();
        if entry.slot.swap(plugin).is_err() {
            return Err(Error::Internal(format!(
                "plugin {}: a prepared version of another kind",
                entry.name
            )));
        }
        if let Some(path) = path {
            *entry.path.lock() = path;
        }
        let info = Arc::new(info);
        *entry.info.lock() = info.clone();
        entry.reloads.fetch_add(1, Ordering::Relaxed);
        if info.source != previous.source {
            self.sources.send_modify(|n| *n += 1);
        }
        tracing::info!(
            plugin = %entry.name,
            version = %info.version,
            sha256 = %info.sha256,
            source = %info.source,
            previous_version = %previous.version,
            previous_sha256 = %previous.sha256,
            "plugin reloaded"
        );
        Ok(ReloadReport {
            plugin: entry.name.clone(),
            version: info.version.clone(),
            sha256: info.sha256.clone(),
            source: info.source.to_string(),
            previous_version: previous.version.clone(),
            previous_sha256: previous.sha256.clone(),
            changed: previous.sha256 != info.sha256,
        })
    }

    /// Replaces plugin `name` by a new version read from `candidate`: prepared off the serving
    /// path, then swapped in. One reload of a plugin at a time; a refused one is counted and
    /// logged, and the old version keeps serving.
    ///
    /// # Errors
    /// As [`Plugins::prepare`].
    pub async fn reload(&self, name: &str, candidate: Candidate) -> Result<ReloadReport> {
        let entry = self.get(name)?.clone();
        let _one_at_a_time = entry.reloading.lock().await;
        let prepared = self.prepare(name, candidate).await;
        self.counted(&entry, prepared).and_then(|p| self.commit(p))
    }

    /// Counts and logs a refused preparation.
    fn counted(&self, entry: &PluginEntry, prepared: Result<Prepared>) -> Result<Prepared> {
        if let Err(e) = &prepared {
            entry.reload_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(plugin = %entry.name, error = %e, "plugin reload refused; the old version keeps serving");
        }
        prepared
    }

    /// Reloads every plugin whose file changed (its SHA-256 differs from the loaded version's);
    /// what SIGHUP and `--watch-plugins` do. Uploaded versions are left alone.
    pub async fn reload_changed(&self) -> Vec<(String, Result<ReloadReport>)> {
        let mut results = Vec::new();
        for entry in &self.entries {
            let info = entry.info();
            let Source::File(path) = &info.source else {
                continue;
            };
            let read = path.clone();
            let current = tokio::task::spawn_blocking(move || {
                super::read_component(&read, super::MAX_COMPONENT_FILE_BYTES)
                    .map(|b| sha256_hex(&b))
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
            let result = match current {
                Ok(sha256) if sha256 == info.sha256 => continue,
                Ok(_) => self.reload(&entry.name, Candidate::SameFile).await,
                Err(e) => {
                    entry.reload_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(plugin = %entry.name, path = %path.display(), error = %e, "cannot read the plugin's file; the loaded version keeps serving");
                    Err(refused(
                        &entry.name,
                        format!("cannot read {}: {e}", path.display()),
                    ))
                }
            };
            results.push((entry.name.clone(), result));
        }
        results
    }

    /// Prepares `bytes` (whose SHA-256 must be `sha256`) as the next version of plugin `name`
    /// and keeps it, not serving, until [`Plugins::commit_staged`] (or for [`STAGED_TTL`]). A
    /// plugin has at most one staged version: a newer one replaces it.
    ///
    /// # Errors
    /// [`Error::BadRequest`] when the bytes do not hash to `sha256`; else as
    /// [`Plugins::prepare`].
    pub async fn stage(self: &Arc<Self>, name: &str, bytes: Bytes, sha256: &str) -> Result<()> {
        let entry = self.get(name)?.clone();
        if sha256_hex(&bytes) != sha256 {
            return Err(Error::BadRequest(format!(
                "the component's SHA-256 is not {sha256}"
            )));
        }
        let _one_at_a_time = entry.reloading.lock().await;
        let prepared = self.prepare(name, Candidate::Bytes(bytes)).await;
        let prepared = self.counted(&entry, prepared)?;
        self.staged
            .lock()
            .insert(name.to_string(), (prepared, Instant::now()));
        // A rollout whose coordinator died between the phases leaves it here: drop it later.
        let (this, name, sha256) = (Arc::downgrade(self), name.to_string(), sha256.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(STAGED_TTL).await;
            let Some(plugins) = this.upgrade() else {
                return;
            };
            let mut staged = plugins.staged.lock();
            let expired = staged
                .get(&name)
                .is_some_and(|(p, at)| p.sha256() == sha256 && at.elapsed() >= STAGED_TTL);
            if expired {
                staged.remove(&name);
                tracing::warn!(plugin = %name, %sha256, "a staged plugin version was never committed; dropped");
            }
        });
        Ok(())
    }

    /// Swaps in the version of plugin `name` staged with `sha256`.
    ///
    /// # Errors
    /// [`Error::PluginRefused`] when no such version is staged (never staged, expired, or
    /// replaced by a newer one).
    pub async fn commit_staged(&self, name: &str, sha256: &str) -> Result<ReloadReport> {
        let entry = self.get(name)?.clone();
        let _one_at_a_time = entry.reloading.lock().await;
        let prepared = {
            let mut staged = self.staged.lock();
            match staged.remove(name) {
                Some((p, at)) if p.sha256() == sha256 && at.elapsed() < STAGED_TTL => Some(p),
                Some(other) => {
                    staged.insert(name.to_string(), other);
                    None
                }
                None => None,
            }
        };
        let prepared = prepared.ok_or_else(|| {
            refused(
                name,
                format!("no version with SHA-256 {sha256} is staged here (it expired after {STAGED_TTL:?}, or another replaced it)"),
            )
        })?;
        self.commit(prepared)
    }

    /// Drops the version of plugin `name` staged with `sha256`, if it is still staged.
    pub fn abort_staged(&self, name: &str, sha256: &str) -> bool {
        let mut staged = self.staged.lock();
        if staged.get(name).is_some_and(|(p, _)| p.sha256() == sha256) {
            staged.remove(name);
            true
        } else {
            false
        }
    }

    /// Changes whenever a reload changes where a plugin's bytes come from, i.e. what
    /// [`Plugins::watched_files`] returns.
    pub fn sources_changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.sources.subscribe()
    }

    /// The files of the plugins serving from files now: what `--watch-plugins` watches.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        self.entries
            .iter()
            .filter_map(|e| match &e.info().source {
                Source::File(path) => Some(path.clone()),
                Source::Upload => None,
            })
            .collect()
    }
}

/// Whether `new` takes every level the groups compress at with `old` (each checked as at
/// startup, on a blocking thread: the check is a plugin call of its own).
async fn takes_levels(
    new: &Arc<WasmCompressor>,
    old: &Reloadable<WasmCompressor>,
) -> std::result::Result<(), String> {
    let levels: Vec<i32> = old.levels.lock().iter().copied().collect();
    if levels.is_empty() {
        return Ok(());
    }
    let new = Arc::clone(new);
    tokio::task::spawn_blocking(move || {
        for level in levels {
            match new.check_level(Some(level)) {
                Ok(()) => {}
                Err(e @ CodecError::BadLevel { .. }) => {
                    return Err(format!(
                        "refuses level {level}, which a group of this node compresses at: {e}"
                    ));
                }
                Err(e) => {
                    return Err(format!(
                        "failed the check of level {level}, which a group of this node \
                         compresses at: {e}"
                    ));
                }
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| format!("could not be checked: {e}"))?
}

/// Compresses a sample with a new compressor and decompresses it back.
async fn round_trip(c: &WasmCompressor) -> std::result::Result<(), String> {
    const SAMPLE: &[u8] = b"geecache reload check: geecache reload check: geecache reload check";
    let packed = c
        .compress(SAMPLE.to_vec(), None)
        .await
        .map_err(|e| format!("failed to compress a sample: {e}"))?;
    let back = c
        .decompress(packed, SAMPLE.len() as u64)
        .await
        .map_err(|e| format!("failed to decompress its own output: {e}"))?;
    if back == SAMPLE {
        Ok(())
    } else {
        Err("does not decompress its own output to the input".into())
    }
}
