//! The TOML config file (`--config`): several groups and plugins, and the node-wide values a
//! file may set. Every field is optional; a flag given on the command line wins over it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The TOML config file. Every field is optional; flags win over it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address to listen on.
    pub bind: Option<IpAddr>,
    /// HTTP port.
    pub port: Option<u16>,
    /// Request (load) timeout, e.g. "5s".
    pub request_timeout: Option<String>,
    /// Largest request body, e.g. "16MiB".
    pub max_body_bytes: Option<String>,
    /// Byte budget of one batch answer, e.g. "4MiB".
    pub max_batch_bytes: Option<String>,
    /// Peer requests served at once.
    pub peer_concurrency: Option<usize>,
    /// Memory cap of one plugin call.
    pub plugin_memory: Option<String>,
    /// Time limit of one plugin call.
    pub plugin_timeout: Option<String>,
    /// Plugin calls running at once.
    pub plugin_concurrency: Option<usize>,
    /// Outbound HTTP requests in flight of one plugin call.
    pub plugin_http_per_call: Option<usize>,
    /// Outbound HTTP requests in flight of one plugin.
    pub plugin_http_concurrency: Option<usize>,
    /// Name lookups of one plugin running at once.
    pub plugin_dns_concurrency: Option<usize>,
    /// "reuse" or "fresh".
    pub plugin_instances: Option<String>,
    /// Calls one reused instance serves before it is retired.
    pub plugin_instance_calls: Option<u64>,
    /// Memory past which a reused instance is retired, e.g. "32MiB".
    pub plugin_instance_memory: Option<String>,
    /// Plugins to load.
    #[serde(default)]
    pub plugins: Vec<FilePlugin>,
    /// Groups to serve; when empty, one group (`--group`) is served by the first getter.
    #[serde(default)]
    pub groups: Vec<FileGroup>,
}

/// One `[[plugins]]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePlugin {
    /// The component file, relative to the config file's directory.
    pub path: PathBuf,
    /// What --plugin-config and --plugin-dir call it; default: the file's stem.
    pub name: Option<String>,
    /// The plugin's config values.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Directories granted to the plugin, `HOST_DIR[:GUEST_DIR][:rw]`.
    #[serde(default)]
    pub dirs: Vec<String>,
    /// Origins a getter may send HTTP requests to, `SCHEME://HOST[:PORT]` (as --plugin-http).
    #[serde(default)]
    pub http: Vec<String>,
}

/// One `[[groups]]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGroup {
    /// The group's name.
    pub name: String,
    /// Name of the getter plugin that loads its misses; default: the first getter loaded.
    pub getter: Option<String>,
    /// Byte budget of its main cache.
    pub cache_bytes: Option<String>,
    /// TTL of values whose getter sets no expiry.
    pub ttl: Option<String>,
    /// How long "no such key" is remembered.
    pub negative_ttl: Option<String>,
    /// How long past its expiry a value is still answered while it is refreshed.
    pub stale: Option<String>,
    /// Window before expiry in which hits may refresh a value early.
    pub refresh_ahead: Option<String>,
    /// Longest key.
    pub max_key_bytes: Option<usize>,
    /// Largest value.
    pub max_value_bytes: Option<String>,
    /// Codec of stored values, `CODEC[:LEVEL]`.
    pub compression: Option<String>,
    /// Size below which values are stored raw.
    pub compress_min_bytes: Option<String>,
    /// Storage plugin name, or `none`.
    pub storage: Option<String>,
}
impl FileConfig {
    /// The file at `path` (or an empty one when there is none), and the directory its relative
    /// paths are taken from.
    ///
    /// # Errors
    /// A message naming the file and what is wrong in it.
    pub fn read(path: Option<&Path>) -> Result<(FileConfig, PathBuf), String> {
        let Some(path) = path else {
            return Ok((FileConfig::default(), PathBuf::new()));
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        let file: FileConfig =
            toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))?;
        Ok((
            file,
            path.parent().map(Path::to_path_buf).unwrap_or_default(),
        ))
    }
}
