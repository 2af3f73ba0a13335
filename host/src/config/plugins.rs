//! Resolves the plugin runtime's limits and the plugins to load, each with what it is granted
//! (config values, directories). Defaults are [`RuntimeOptions::default`]'s and
//! [`InstancePolicy::defaults`]'.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Cli, FileConfig, given, size_usize};
use crate::plugin::{
    DirGrant, HttpAllowlist, HttpLimits, InstancePolicy, PluginGrants, PluginSpec, RuntimeOptions,
};
use crate::units::parse_duration;

/// The plugin runtime's limits: flags, then the file, then the defaults.
pub(super) fn runtime(cli: &Cli, file: &FileConfig) -> Result<RuntimeOptions, String> {
    let d = RuntimeOptions::default();
    let memory_limit = given(
        cli.plugin_memory
            .as_deref()
            .or(file.plugin_memory.as_deref()),
        size_usize,
    )?
    .unwrap_or(d.memory_limit);
    let policy = InstancePolicy::defaults(memory_limit);
    let instances = InstancePolicy {
        mode: match cli
            .plugin_instances
            .as_deref()
            .or(file.plugin_instances.as_deref())
        {
            Some(mode) => mode.parse()?,
            None => policy.mode,
        },
        max_calls: cli
            .plugin_instance_calls
            .or(file.plugin_instance_calls)
            .unwrap_or(policy.max_calls),
        max_memory: given(
            cli.plugin_instance_memory
                .as_deref()
                .or(file.plugin_instance_memory.as_deref()),
            size_usize,
        )?
        .unwrap_or(policy.max_memory),
    };
    if instances.max_calls == 0 {
        return Err("--plugin-instance-calls must be at least 1".into());
    }
    let runtime = RuntimeOptions {
        memory_limit,
        call_timeout: given(
            cli.plugin_timeout
                .as_deref()
                .or(file.plugin_timeout.as_deref()),
            parse_duration,
        )?
        .unwrap_or(d.call_timeout),
        max_concurrent_calls: cli
            .plugin_concurrency
            .or(file.plugin_concurrency)
            .unwrap_or(d.max_concurrent_calls),
        compile_cache_dir: if cli.no_compile_cache {
            None
        } else {
            cli.compile_cache_dir
                .clone()
                .or_else(default_compile_cache_dir)
        },
        pooling: d.pooling,
        instances,
        http: HttpLimits {
            per_call: cli
                .plugin_http_per_call
                .or(file.plugin_http_per_call)
                .unwrap_or(d.http.per_call),
            per_plugin: cli
                .plugin_http_concurrency
                .or(file.plugin_http_concurrency)
                .unwrap_or(d.http.per_plugin),
            lookups: cli
                .plugin_dns_concurrency
                .or(file.plugin_dns_concurrency)
                .unwrap_or(d.http.lookups),
        },
    };
    if runtime.max_concurrent_calls == 0 {
        return Err("--plugin-concurrency must be at least 1".into());
    }
    if runtime.http.per_call == 0 || runtime.http.per_plugin == 0 || runtime.http.lookups == 0 {
        return Err("--plugin-http-per-call, --plugin-http-concurrency and \
                    --plugin-dns-concurrency must be at least 1"
            .into());
    }
    Ok(runtime)
}

/// The plugins to load, in order (the file's, then `--plugin`'s), each with the grants of
/// `--plugin-config`, `--plugin-dir` and `--plugin-http` added to the file's. File paths are taken relative to
/// `base`, the config file's directory.
pub(super) fn plugins(
    cli: &Cli,
    file: &FileConfig,
    base: &Path,
) -> Result<Vec<PluginSpec>, String> {
    let mut plugins: Vec<PluginSpec> = Vec::new();
    for p in &file.plugins {
        let name = match &p.name {
            Some(name) => {
                crate::plugin::validate_name(name)?;
                name.clone()
            }
            None => file_stem_name(&p.path)?,
        };
        let dirs = p
            .dirs
            .iter()
            .map(|d| parse_dir(d, base))
            .collect::<Result<_, _>>()?;
        plugins.push(PluginSpec {
            name,
            path: base.join(&p.path),
            grants: PluginGrants {
                config: p.config.clone(),
                dirs,
                http: HttpAllowlist::parse(p.http.iter().map(String::as_str))
                    .map_err(|e| format!("plugin {}: {e}", p.path.display()))?,
            },
        });
    }
    for flag in &cli.plugins {
        let (name, path) = parse_plugin_flag(flag)?;
        plugins.push(PluginSpec {
            name,
            path,
            grants: PluginGrants::default(),
        });
    }
    for (i, p) in plugins.iter().enumerate() {
        if plugins[..i].iter().any(|q| q.name == p.name) {
            return Err(format!(
                "two plugins are named {:?} ({} and another); name one with --plugin NAME=FILE",
                p.name,
                p.path.display()
            ));
        }
    }
    // Grants go to the plugin the operator named, never to whatever name a plugin reports.
    for (name, flags) in flag_grants(cli)? {
        let Some(spec) = plugins.iter_mut().find(|p| p.name == name) else {
            let known: Vec<&str> = plugins.iter().map(|p| p.name.as_str()).collect();
            return Err(format!(
                "--plugin-config/--plugin-dir/--plugin-http name plugin {name:?}, but no plugin is loaded \
                 under that name (loaded: {known:?}); a plugin's name is its file's stem or \
                 the NAME of --plugin NAME=FILE"
            ));
        };
        spec.grants.config.extend(flags.config);
        spec.grants.dirs.extend(flags.dirs);
        spec.grants.http.extend(flags.http);
    }
    Ok(plugins)
}

/// `--plugin-config` and `--plugin-dir`, by the plugin name they give.
fn flag_grants(cli: &Cli) -> Result<BTreeMap<String, PluginGrants>, String> {
    let mut grants: BTreeMap<String, PluginGrants> = BTreeMap::new();
    for item in cli.plugin_config.iter().flat_map(|v| config_items(v)) {
        let expected = || {
            format!(
                "--plugin-config {item:?}: expected NAME.KEY=VALUE, e.g. db_getter.database=demo.db"
            )
        };
        let (name_key, value) = item.split_once('=').ok_or_else(expected)?;
        let (name, key) = name_key.split_once('.').ok_or_else(expected)?;
        grants
            .entry(name.into())
            .or_default()
            .config
            .insert(key.into(), value.into());
    }
    for item in &cli.plugin_dirs {
        let (name, dir) = item.split_once('=').ok_or_else(|| {
            format!("--plugin-dir {item:?}: expected NAME=HOST_DIR[:GUEST_DIR][:rw], e.g. fs_storage=/var/cache/geecache:rw")
        })?;
        let dir = parse_dir(dir, Path::new("")).map_err(|e| format!("--plugin-dir: {e}"))?;
        grants.entry(name.into()).or_default().dirs.push(dir);
    }
    for item in &cli.plugin_http {
        let (name, origins) = item.split_once('=').ok_or_else(|| {
            format!(
                "--plugin-http {item:?}: expected NAME=URL[,URL], e.g. \
                 http_getter=https://api.example.com,https://*.internal:8443"
            )
        })?;
        let allow = HttpAllowlist::parse(origins.split(',').filter(|o| !o.trim().is_empty()))
            .map_err(|e| format!("--plugin-http: {e}"))?;
        grants.entry(name.into()).or_default().http.extend(allow);
    }
    Ok(grants)
}

/// The `NAME.KEY=VALUE` items of one `--plugin-config` value: split at the commas that begin
/// another item (what follows reads `NAME.KEY=`, NAME a plugin name), so a value may hold
/// commas of its own (`db_getter.query=SELECT a, b FROM t`).
fn config_items(value: &str) -> Vec<&str> {
    let begins_item = |rest: &str| {
        let Some((name_key, _)) = rest.split_once('=') else {
            return false;
        };
        let Some((name, key)) = name_key.split_once('.') else {
            return false;
        };
        crate::plugin::validate_name(name).is_ok()
            && !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    let mut items = Vec::new();
    let mut start = 0;
    for (comma, _) in value.match_indices(',') {
        if begins_item(&value[comma + 1..]) {
            items.push(&value[start..comma]);
            start = comma + 1;
        }
    }
    items.push(&value[start..]);
    items
}

/// Parses the `HOST_DIR[:GUEST_DIR][:rw|:ro]` of a directory grant (host paths relative to
/// `base`); read-only unless `rw`.
fn parse_dir(s: &str, base: &Path) -> Result<DirGrant, String> {
    let (rest, writable) = match s.rsplit_once(':') {
        Some((rest, "rw")) => (rest, true),
        Some((rest, "ro")) => (rest, false),
        _ => (s, false),
    };
    let (host, guest) = match rest.split_once(':') {
        Some((host, guest)) => (host, guest.to_string()),
        None => (rest, "/data".to_string()),
    };
    if host.is_empty() || guest.is_empty() {
        return Err(format!(
            "directory grant {s:?}: expected HOST_DIR[:GUEST_DIR][:rw], e.g. /var/cache/geecache:/data:rw"
        ));
    }
    Ok(DirGrant {
        host: base.join(host),
        guest,
        writable,
    })
}

/// Splits `--plugin [NAME=]FILE` into the operator's name for the plugin and its file.
fn parse_plugin_flag(s: &str) -> Result<(String, PathBuf), String> {
    if let Some((name, path)) = s.split_once('=')
        && !name.contains('/')
    {
        crate::plugin::validate_name(name).map_err(|e| format!("--plugin {s:?}: {e}"))?;
        return Ok((name.to_string(), PathBuf::from(path)));
    }
    let path = PathBuf::from(s);
    Ok((file_stem_name(&path)?, path))
}

/// A plugin's default name: its file's stem (`db_getter` for `plugins/db_getter.wasm`).
fn file_stem_name(path: &Path) -> Result<String, String> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    crate::plugin::validate_name(&stem).map_err(|e| {
        format!(
            "plugin file {}: {e}; give it a name with --plugin NAME={}",
            path.display(),
            path.display()
        )
    })?;
    Ok(stem)
}

/// The default on-disk cache of compiled plugins.
fn default_compile_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("geecache"))
}
