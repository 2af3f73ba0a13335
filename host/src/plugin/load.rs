//! Loading a component: read its file (bounded, regular files only), compile it (or fetch it
//! from the compile cache), detect its kind from what it exports, check what it imports, ask it
//! its name with no grants, then prepare it for calls with the grants the operator gave its file.

use std::path::Path;
use std::sync::Arc;

use wasmtime::component::Component;

use super::call::PluginCore;
use super::caps::sql::{Database, is_postgres_url};
use super::{
    LoadedPlugin, PluginError, PluginGrants, PluginKind, PluginStats, Runtime, WasmCompressor,
    WasmGetter, WasmStorage, compressor, getter, storage, validate_name,
};

/// WIT interface names (without version) that identify a plugin's kind.
const GETTER_EXPORT: &str = "geecache:plugin/getter";
const STORAGE_EXPORT: &str = "geecache:plugin/storage";
const COMPRESSOR_EXPORT: &str = "geecache:plugin/compressor";
const SQL_IMPORT: &str = "geecache:plugin/sql";

impl Runtime {
    /// Compiles `bytes` (the component known as `path`), or reads it from the compile cache,
    /// with a log line before and after: a first compile of a large component (a Python or
    /// JavaScript getter, 12–18 MB) takes seconds, which the node should not spend silently.
    /// Whether the cache answered is read off its hit count (loads at the same moment may
    /// blur it: it is for the log only).
    fn compile(&self, bytes: &[u8], path: &Path) -> wasmtime::Result<Component> {
        let hits = self.compile_cache.as_ref().map(wasmtime::Cache::cache_hits);
        tracing::info!(
            path = %path.display(),
            bytes = bytes.len(),
            cache = self.compile_cache.is_some(),
            "plugin: compiling (or reading the compile cache)"
        );
        let started = std::time::Instant::now();
        let component = Component::new(&self.engine, bytes)?;
        let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let cached = matches!(
            (&self.compile_cache, hits),
            (Some(cache), Some(before)) if cache.cache_hits() > before
        );
        if cached {
            tracing::info!(path = %path.display(), millis, cached, "plugin: read from the compile cache");
        } else {
            tracing::info!(
                path = %path.display(),
                millis,
                cached,
                "plugin: compiled{}",
                if self.compile_cache.is_some() {
                    "; the next start reads it from the compile cache"
                } else {
                    " (no compile cache: --no-compile-cache)"
                }
            );
        }
        Ok(component)
    }

    /// Compiles (or fetches from the compile cache) the component at `path`, detects its kind,
    /// asks it for its name, and prepares it for calls with `grants`, which the operator gave
    /// this file (the plugin's own name plays no part in what it is granted).
    ///
    /// Compilation is CPU-heavy: call this from a blocking context (or before serving).
    ///
    /// # Errors
    /// [`PluginError::Load`] with a message that says what to fix: the file is missing, not a
    /// component, not a geecache plugin, imports something the host does not offer, its
    /// database is missing, or its `info` call fails.
    pub fn load(&self, path: &Path, grants: PluginGrants) -> Result<LoadedPlugin, PluginError> {
        let bytes = read_component(path, MAX_COMPONENT_FILE_BYTES).map_err(|e| PluginError::Load {
            path: path.display().to_string(),
            message: format!(
                "{e}; build the plugins with `bash plugins/build.sh`, which writes plugins/<name>.wasm"
            ),
        })?;
        self.load_bytes(&bytes, path, grants, None)
    }

    /// [`Runtime::load`] of a component's bytes. `path` is the file the plugin is known by (in
    /// messages, and where its default database is looked for); `stats`, when given, are the
    /// counters of the version this one replaces, which the new version goes on counting in.
    ///
    /// # Errors
    /// As [`Runtime::load`].
    pub fn load_bytes(
        &self,
        bytes: &[u8],
        path: &Path,
        grants: PluginGrants,
        stats: Option<Arc<PluginStats>>,
    ) -> Result<LoadedPlugin, PluginError> {
        let load_err = |message: String| PluginError::Load {
            path: path.display().to_string(),
            message,
        };
        if !bytes.starts_with(b"\0asm") {
            return Err(load_err("not a WebAssembly file".into()));
        }
        let component = self.compile(bytes, path).map_err(|e| {
            load_err(format!(
                "not a valid WebAssembly component ({e:#}); plugins are components built for \
                 wasm32-wasip2, e.g. `cargo build --target wasm32-wasip2 --release`"
            ))
        })?;
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let has = |names: &[String], prefix: &str| {
            names.iter().any(|n| n.split('@').next() == Some(prefix))
        };
        let kinds: Vec<PluginKind> = [
            (GETTER_EXPORT, PluginKind::Getter),
            (STORAGE_EXPORT, PluginKind::Storage),
            (COMPRESSOR_EXPORT, PluginKind::Compressor),
        ]
        .into_iter()
        .filter(|(name, _)| has(&exports, name))
        .map(|(_, kind)| kind)
        .collect();
        let kind = match kinds.as_slice() {
            [kind] => *kind,
            [] => {
                return Err(load_err(format!(
                    "exports none of {GETTER_EXPORT}, {STORAGE_EXPORT}, {COMPRESSOR_EXPORT} \
                     (it exports {exports:?}); build it with geecache-guest-sdk and one of its \
                     export macros"
                )));
            }
            _ => {
                return Err(load_err(format!(
                    "exports more than one plugin kind: {kinds:?}"
                )));
            }
        };
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let wants_sql = has(&imports, SQL_IMPORT);
        if wants_sql && kind != PluginKind::Getter {
            return Err(load_err(format!(
                "a {kind} plugin imports {SQL_IMPORT}, which only getters are offered"
            )));
        }
        if kind != PluginKind::Getter && !grants.http.is_empty() {
            return Err(load_err(format!(
                "is a {kind} plugin and is granted outbound HTTP (--plugin-http), which only \
                 getters are offered; remove the grant"
            )));
        }
        let linker = match kind {
            PluginKind::Getter => &self.getter_linker,
            PluginKind::Storage | PluginKind::Compressor => &self.plain_linker,
        };
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| load_err(format!("imports something the host does not offer: {e:#}")))?;

        // Ask the plugin its name with no grants at all, then attach the operator's grants.
        let probe = Arc::new(PluginCore::new(
            path.display().to_string(),
            PluginGrants::default(),
            None,
            self,
        ));
        let getter_version = getter::Version::of(&exports);
        let info = match kind {
            PluginKind::Getter => getter::info(getter_version, &probe, &pre),
            PluginKind::Storage => storage::info(&probe, &pre),
            PluginKind::Compressor => compressor::info(&probe, &pre),
        }
        .map_err(|e| load_err(format!("its info() call failed: {e}")))?;
        validate_name(&info.name).map_err(|e| load_err(format!("reports {e}")))?;
        let mut grants = grants;
        let sql = if wants_sql {
            let database = match grants.config.get("database") {
                Some(database) => database.clone(),
                None => path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join("demo.db")
                    .display()
                    .to_string(),
            };
            // A server's URL may carry a password: the host keeps it, the plugin's config
            // does not show it.
            if is_postgres_url(&database) {
                grants.config.remove("database");
            }
            Some(Arc::new(
                Database::open(&database, self.options.memory_limit).map_err(load_err)?,
            ))
        } else {
            None
        };
        for dir in &grants.dirs {
            if !dir.host.is_dir() {
                return Err(load_err(format!(
                    "granted directory {} does not exist",
                    dir.host.display()
                )));
            }
        }
        let mut core = PluginCore::new(info.name, grants, sql, self);
        core.version = info.version;
        core.path = path.to_path_buf();
        if let Some(stats) = stats {
            core.stats = stats;
        }
        let core = Arc::new(core);
        tracing::info!(plugin = %core.name, version = %core.version, %kind, path = %path.display(), "plugin loaded");
        release_freed_memory();
        Ok(match kind {
            PluginKind::Getter => {
                LoadedPlugin::Getter(Arc::new(WasmGetter::new(getter_version, core, pre, self)?))
            }
            PluginKind::Storage => {
                LoadedPlugin::Storage(Arc::new(WasmStorage::new(core, pre, self)?))
            }
            PluginKind::Compressor => {
                LoadedPlugin::Compressor(Arc::new(WasmCompressor::new(core, pre, self)?))
            }
        })
    }
}

/// Runs `work` to completion on a thread of its own with a small tokio runtime: for the few
/// calls made outside the serving path (the `info` probe while loading, a compressor's level
/// check while building a group), which may come from sync code inside or outside a runtime.
pub(crate) fn on_own_thread<R: Send>(
    work: impl Future<Output = Result<R, PluginError>> + Send,
) -> Result<R, PluginError> {
    let unavailable = |message: String| PluginError::Unavailable {
        plugin: "<runtime>".into(),
        message,
    };
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("geecache-plugin-probe".into())
            .spawn_scoped(scope, || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .map_err(|e| unavailable(format!("cannot start a runtime: {e}")))?
                    .block_on(work)
            })
            .map_err(|e| unavailable(format!("cannot start a thread: {e}")))?
            .join()
            .unwrap_or_else(|_| Err(unavailable("the probe thread panicked".into())))
    })
}

/// Largest component file read from disk where no request set a limit (the files given at
/// start, a plugin's own file read again on SIGHUP or a file change).
pub const MAX_COMPONENT_FILE_BYTES: u64 = 1 << 30;

/// Reads the component file at `path`, which must be a regular file of at most `max` bytes.
/// It is opened without blocking (a FIFO does not hang the caller) and checked before a
/// byte is read, so a device such as `/dev/zero` is refused rather than read for ever.
///
/// # Errors
/// The file cannot be opened, is not a regular file, or is larger than `max`.
pub fn read_component(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} bytes, more than the {max} a component may have",
                meta.len()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // Bounded even if the file grows while it is read.
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("more than the {max} bytes a component may have"),
        ));
    }
    Ok(bytes)
}

// Linked wherever this library is, so that `mi_collect` below resolves in binaries that keep
// the system allocator too (the tests').
#[cfg(feature = "mimalloc")]
extern crate mimalloc as _;

/// Gives the memory a load freed back to the OS now. Compiling a component, or reading it from
/// the compile cache, allocates and frees several times the component's size; mimalloc keeps
/// freed pages for reuse and returns them only as the thread that freed them allocates again,
/// which a loading thread (and the compiling threads of rayon's pool) then rarely does. For a
/// large component (the Python getter) this halves the node's resident memory after starting
/// (docs/performance.md).
pub(crate) fn release_freed_memory() {
    #[cfg(feature = "mimalloc")]
    #[allow(unsafe_code)]
    {
        unsafe extern "C" {
            // mimalloc's `void mi_collect(bool force)`, linked with the `mimalloc` crate.
            fn mi_collect(force: bool);
        }
        // SAFETY: `mi_collect` takes no pointers and may be called from any thread; it only
        // returns free memory of mimalloc's heaps and arenas to the OS.
        let collect = || unsafe { mi_collect(true) };
        // wasmtime compiles in parallel on rayon's global pool: what those threads freed is
        // theirs to return.
        rayon::broadcast(|_| collect());
        collect();
    }
}
