//! Configuration: what a node is told, resolved from command-line flags (each with a
//! `GEECACHE_*` env fallback), an optional TOML file for several groups and plugins, and the
//! built-in defaults. A flag given on the command line (or through its env variable) wins over
//! the file; the file wins over the default. Each default is written once, by the subsystem
//! whose option struct it fills (`GroupOptions::default`, `RuntimeOptions::default`,
//! [`ServerLimits::default`], ...); `--help` and docs/operations.md state them.
//!
//! With no arguments but `--plugin plugins/db_getter.wasm`, the node serves one group, `scores`,
//! from that getter, on 127.0.0.1:9999.
//!
//! - [`cli`]: the flags ([`Cli`]); [`file`]: the TOML file ([`FileConfig`]).
//! - One resolve step per subsystem: [`plugins`] (runtime limits, plugins and their grants),
//!   [`groups`] (the groups' options), [`cluster`] ([`ClusterSettings`]), [`server`] (the HTTP
//!   front's plain option structs, [`ApiOptions`] and [`ServerLimits`], which `api` enforces).
//!
//! This module imports no `api` type: the option structs the HTTP front takes are defined
//! here, as plain data.

pub mod cli;
pub mod cluster;
pub mod file;
mod groups;
mod plugins;
pub mod server;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

pub use cli::Cli;
pub use cluster::ClusterSettings;
pub use file::{FileConfig, FileGroup, FilePlugin};
pub use groups::DEFAULT_GROUP;
pub use server::{
    Access, AllowedHosts, ApiOptions, ApiToken, ConnTimeouts, EmptyToken, PerClient, ServerLimits,
    host_name,
};

use crate::group::GroupOptions;
use crate::plugin::RuntimeOptions;
// Where they live now; named here too, for the callers that knew them here.
pub use crate::plugin::PluginSpec;
pub use crate::units::{parse_duration, parse_size};

/// Default HTTP port.
pub const DEFAULT_PORT: u16 = 9999;
/// Default time a stopping node keeps serving while `/readyz` already answers 503.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A group to serve.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    /// The group's name.
    pub name: String,
    /// The getter's plugin name; `None` means the first getter loaded.
    pub getter: Option<String>,
    /// The storage plugin's name; `None` means the first storage plugin loaded (if any),
    /// `Some("none")` no storage tier.
    pub storage: Option<String>,
    /// Cache budget, TTLs, limits, compression.
    pub options: GroupOptions,
}

/// Everything a node needs to start, resolved from flags, env and file.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the HTTP API listens.
    pub addr: SocketAddr,
    /// Plugins to load, in order, each with its grants.
    pub plugins: Vec<PluginSpec>,
    /// Groups to serve.
    pub groups: Vec<GroupSpec>,
    /// Plugin runtime limits.
    pub runtime: RuntimeOptions,
    /// Body and batch limits, peer concurrency, and who must show the API token.
    pub api: ApiOptions,
    /// What all requests together may hold (connections, bodies in flight).
    pub server_limits: ServerLimits,
    /// JSON logs.
    pub log_json: bool,
    /// Reload plugins when their files change (`--watch-plugins`).
    pub watch_plugins: bool,
    /// The node's TLS certificate and key, when it serves TLS.
    pub tls: Option<crate::tls::TlsFiles>,
    /// How this node finds the others.
    pub cluster: ClusterSettings,
    /// How long a stopping node serves as "not ready" before it stops accepting (so load
    /// balancers that poll `/readyz` stop sending first).
    pub shutdown_grace: Duration,
    /// Worker threads of the async runtime; `None`: tokio's default (the cores available).
    pub worker_threads: Option<usize>,
    /// Large codings that may run at once, node-wide (`--codec-concurrency`).
    pub codec_concurrency: usize,
}

impl Cli {
    /// Resolves flags, env, the config file and defaults into [`Settings`].
    ///
    /// # Errors
    /// A message saying which flag or file entry is wrong and how to fix it.
    pub fn resolve(&self) -> Result<Settings, String> {
        let (file, base) = FileConfig::read(self.config.as_deref())?;
        let load_timeout = given(
            self.request_timeout
                .as_deref()
                .or(file.request_timeout.as_deref()),
            parse_duration,
        )?
        .unwrap_or(GroupOptions::default().load_timeout);
        let runtime = plugins::runtime(self, &file)?;
        let plugins = plugins::plugins(self, &file, &base)?;
        let groups = groups::groups(self, &file, load_timeout)?;
        let bind = self
            .bind
            .or(file.bind)
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let port = self.port.or(file.port).unwrap_or(DEFAULT_PORT);
        let cluster = cluster::cluster(self, bind, port)?;
        let (mut api, server_limits) = server::api_and_limits(self, &file)?;
        api.access.hosts = server::AllowedHosts::new(
            self.allowed_host.iter().map(String::as_str),
            &cluster.advertise_addr,
        );
        Ok(Settings {
            addr: SocketAddr::new(bind, port),
            plugins,
            groups,
            runtime,
            api,
            server_limits,
            log_json: self.log_json,
            watch_plugins: self.watch_plugins,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            cluster,
            shutdown_grace: given(self.shutdown_grace.as_deref(), parse_duration)
                .map_err(|e| format!("--shutdown-grace: {e}"))?
                .unwrap_or(DEFAULT_SHUTDOWN_GRACE),
            worker_threads: match self.worker_threads {
                Some(0) => return Err("--worker-threads must be at least 1".into()),
                n => n,
            },
            codec_concurrency: match self.codec_concurrency {
                Some(0) => return Err("--codec-concurrency must be at least 1".into()),
                Some(n) => n,
                None => crate::compression::builtin::default_concurrency(),
            },
        })
    }
}

/// `given` parsed by `parse`, when it was given.
fn given<T>(
    given: Option<&str>,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, String> {
    given.map(parse).transpose()
}

/// The duration `flag` gives (or `default`), which must be more than zero.
fn positive_duration(
    flag: &str,
    given: &Option<String>,
    default: Duration,
) -> Result<Duration, String> {
    let Some(text) = given else {
        return Ok(default);
    };
    let d = parse_duration(text).map_err(|e| format!("{flag}: {e}"))?;
    if d.is_zero() {
        return Err(format!("{flag} must be more than 0"));
    }
    Ok(d)
}

/// A size that must fit in memory (`usize`).
fn size_usize(s: &str) -> Result<usize, String> {
    parse_size(s).and_then(|b| usize::try_from(b).map_err(|_| format!("size {s:?} is too large")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::PathBuf;

    use clap::Parser as _;

    use super::*;
    use crate::plugin::{DirGrant, InstanceMode};

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["geecache-host"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap()
    }

    /// Every `[default: X]` that `--help` states is the default the code applies: giving
    /// `--flag X` resolves to the same settings as not giving the flag (each default is written
    /// once, in its option struct; this keeps the help text true to it). Defaults stated in
    /// words ("one per core") are left out; each stated value counted must parse.
    #[test]
    fn every_default_the_help_states_is_the_one_applied() {
        use clap::CommandFactory as _;
        let base = ["--plugin", "plugins/db_getter.wasm"];
        let plain = format!("{:?}", cli(&base).resolve().unwrap());
        let mut checked = Vec::new();
        for arg in Cli::command().get_arguments() {
            let (Some(long), Some(help)) = (arg.get_long(), arg.get_long_help().or(arg.get_help()))
            else {
                continue;
            };
            let help = help.to_string();
            let Some((_, rest)) = help.split_once("[default: ") else {
                continue;
            };
            let stated = rest.split([']', ',', ';']).next().unwrap().trim();
            if stated.contains(' ') || stated.starts_with('-') {
                continue;
            }
            let flag = format!("--{long}");
            let mut args = base.to_vec();
            args.extend([flag.as_str(), stated]);
            let given = match cli(&args).resolve() {
                Ok(given) => given,
                // "[default: none]" of a flag that is simply not set by default (`--ttl`).
                Err(_) if stated == "none" => continue,
                Err(e) => panic!("{flag} {stated} (its stated default): {e}"),
            };
            assert_eq!(
                format!("{given:?}"),
                plain,
                "{flag}: --help says its default is {stated}, but giving that changes the settings"
            );
            checked.push(flag);
        }
        // The stated defaults of limits, timeouts, sizes and the plugin runtime are all checked.
        for flag in [
            "--port",
            "--cache-bytes",
            "--request-timeout",
            "--plugin-memory",
            "--max-connections",
            "--idle-timeout",
            "--lease-ttl",
            "--peers-refresh",
            "--peer-coalesce",
            "--shutdown-grace",
        ] {
            assert!(
                checked.iter().any(|c| c == flag),
                "{flag} not checked: {checked:?}"
            );
        }
    }

    #[test]
    fn defaults_serve_scores_on_9999() {
        let s = cli(&["--plugin", "plugins/db_getter.wasm"])
            .resolve()
            .unwrap();
        assert_eq!(s.addr, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(s.groups.len(), 1);
        assert_eq!(s.groups[0].name, "scores");
        assert_eq!(s.groups[0].options.cache_bytes, 64 << 20);
        assert_eq!(s.plugins.len(), 1);
    }

    #[test]
    fn plugin_instances_are_reused_by_default_and_configurable() {
        let plugin = ["--plugin", "plugins/db_getter.wasm"];
        let s = cli(&plugin).resolve().unwrap();
        assert_eq!(s.runtime.instances.mode, InstanceMode::Reuse);
        assert_eq!(s.runtime.instances.max_calls, 10_000);
        assert_eq!(
            s.runtime.instances.max_memory,
            32 << 20,
            "half of --plugin-memory"
        );

        let mut args = plugin.to_vec();
        args.extend([
            "--plugin-instances",
            "fresh",
            "--plugin-memory",
            "16MiB",
            "--plugin-instance-calls",
            "5",
        ]);
        let s = cli(&args).resolve().unwrap();
        assert_eq!(s.runtime.instances.mode, InstanceMode::Fresh);
        assert_eq!(s.runtime.instances.max_calls, 5);
        assert_eq!(s.runtime.instances.max_memory, 8 << 20);

        let mut bad = plugin.to_vec();
        bad.extend(["--plugin-instances", "pooled"]);
        let err = cli(&bad).resolve().unwrap_err();
        assert!(err.contains("\"reuse\" or \"fresh\""), "{err}");
        let mut zero = plugin.to_vec();
        zero.extend(["--plugin-instance-calls", "0"]);
        assert!(cli(&zero).resolve().unwrap_err().contains("at least 1"));
    }

    #[test]
    fn grants_go_to_the_name_the_operator_gave() {
        let s = cli(&[
            "--plugin",
            "plugins/db_getter.wasm,fs=plugins/fs_storage.wasm",
            "--plugin-config",
            "db_getter.database=/tmp/x.db",
            "--plugin-dir",
            "fs=/tmp",
            "--plugin-dir",
            "fs=/var/cache/g:/cache:rw",
        ])
        .resolve()
        .unwrap();
        let [db, fs] = &s.plugins[..] else {
            panic!("two plugins")
        };
        assert_eq!((db.name.as_str(), fs.name.as_str()), ("db_getter", "fs"));
        assert_eq!(db.grants.config["database"], "/tmp/x.db");
        assert!(db.grants.dirs.is_empty() && fs.grants.config.is_empty());
        let read_only = DirGrant {
            host: PathBuf::from("/tmp"),
            guest: "/data".into(),
            writable: false,
        };
        let writable = DirGrant {
            host: PathBuf::from("/var/cache/g"),
            guest: "/cache".into(),
            writable: true,
        };
        assert_eq!(fs.grants.dirs, [read_only, writable]);
    }

    #[test]
    fn plugin_config_values_may_hold_commas() {
        let s = cli(&[
            "--plugin",
            "plugins/db_getter.wasm,h=plugins/http_getter.wasm",
            "--plugin-config",
            "db_getter.query=SELECT a, b FROM t WHERE k = ?1,h.header.accept=text/plain,h.base=x",
            "--plugin-config",
            "db_getter.database=/tmp/x.db",
        ])
        .resolve()
        .unwrap();
        let config = |i: usize| &s.plugins[i].grants.config;
        assert_eq!(config(0)["query"], "SELECT a, b FROM t WHERE k = ?1");
        assert_eq!(config(0)["database"], "/tmp/x.db");
        assert_eq!(config(1)["header.accept"], "text/plain");
        assert_eq!(config(1)["base"], "x");
    }

    #[test]
    fn http_grants_from_flags_and_the_file_add_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("geecache.toml");
        std::fs::write(
            &path,
            "[[plugins]]\npath = \"api.wasm\"\nhttp = [\"https://api.example.com\"]\n",
        )
        .unwrap();
        let s = cli(&[
            "--config",
            path.to_str().unwrap(),
            "--plugin-http",
            "api=https://*.internal:8443,http://127.0.0.1:8080;api=https://api.example.com",
        ])
        .resolve()
        .unwrap();
        let allowed: Vec<String> = s.plugins[0]
            .grants
            .http
            .entries()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            allowed,
            [
                "https://api.example.com",
                "https://*.internal:8443",
                "http://127.0.0.1:8080"
            ]
        );
        let err = cli(&[
            "--plugin",
            "api.wasm",
            "--plugin-http",
            "api=api.example.com",
        ])
        .resolve()
        .unwrap_err();
        assert!(err.contains("SCHEME://HOST[:PORT]"), "{err}");
        let err = cli(&["--plugin", "api.wasm", "--plugin-http", "https://x.com"])
            .resolve()
            .unwrap_err();
        assert!(err.contains("NAME=URL"), "{err}");
    }

    #[test]
    fn a_grant_to_a_name_no_plugin_has_is_refused() {
        // A plugin that reports "db_getter" about itself gets nothing meant for db_getter.
        let err = cli(&[
            "--plugin",
            "plugins/evil.wasm",
            "--plugin-config",
            "db_getter.database=/srv/secret.db",
        ])
        .resolve()
        .unwrap_err();
        assert!(
            err.contains("\"db_getter\"") && err.contains("evil"),
            "{err}"
        );
        let err = cli(&["--plugin", "a/x.wasm,b/x.wasm"])
            .resolve()
            .unwrap_err();
        assert!(err.contains("--plugin NAME=FILE"), "{err}");
        let err = cli(&["--plugin", "Bad Name=x.wasm"]).resolve().unwrap_err();
        assert!(err.contains("a-z"), "{err}");
    }

    #[test]
    fn bad_values_name_the_fix() {
        let err = cli(&["--plugin-config", "nodot"]).resolve().unwrap_err();
        assert!(err.contains("NAME.KEY=VALUE"), "{err}");
        let err = cli(&["--api-token", "t", "--peers", "127.0.0.1:1"])
            .resolve()
            .unwrap_err();
        assert!(err.contains("--cluster-secret"), "{err}");
        let err = cli(&["--plugin-dir", "fs=:rw"]).resolve().unwrap_err();
        assert!(err.contains("HOST_DIR[:GUEST_DIR][:rw]"), "{err}");
        let err = cli(&["--cache-bytes", "lots"]).resolve().unwrap_err();
        assert!(err.contains("64MiB"), "{err}");
        let err = cli(&["--ttl", "soon"]).resolve().unwrap_err();
        assert!(err.contains("10m"), "{err}");
    }

    #[test]
    fn file_groups_and_flag_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("geecache.toml");
        std::fs::write(
            &path,
            r#"
port = 8001
[[plugins]]
path = "db_getter.wasm"
config = { database = "scores.db" }
[[groups]]
name = "scores"
cache_bytes = "1MiB"
ttl = "10m"
[[groups]]
name = "users"
getter = "db_getter"
compression = "zstd:5"
compress_min_bytes = "1KiB"
storage = "fs_storage"
"#,
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let s = cli(&["--config", p, "--port", "8002"]).resolve().unwrap();
        assert_eq!(s.addr.port(), 8002, "the flag wins over the file");
        assert_eq!(s.groups.len(), 2);
        assert_eq!(s.groups[0].options.cache_bytes, 1 << 20);
        assert_eq!(s.groups[0].options.ttl, Some(Duration::from_secs(600)));
        assert_eq!(s.groups[1].getter.as_deref(), Some("db_getter"));
        assert_eq!(s.plugins[0].path, dir.path().join("db_getter.wasm"));
        assert_eq!(s.plugins[0].grants.config["database"], "scores.db");
        let users = &s.groups[1];
        assert_eq!(users.options.compression.to_string(), "zstd:5");
        assert_eq!(users.options.compress_min_bytes, 1024);
        assert_eq!(users.storage.as_deref(), Some("fs_storage"));
        assert_eq!(s.groups[0].options.compression.to_string(), "none");

        let s = cli(&["--config", p, "--compression", "lz4"])
            .resolve()
            .unwrap();
        assert_eq!(
            s.groups[1].options.compression.to_string(),
            "lz4",
            "the flag wins"
        );
        let err = cli(&["--compression", "zstd:high"]).resolve().unwrap_err();
        assert!(err.contains("e.g. zstd:3"), "{err}");
    }

    #[test]
    fn storage_queue_bytes_from_the_flag_or_the_default() {
        let s = cli(&["--plugin", "plugins/db_getter.wasm"])
            .resolve()
            .unwrap();
        assert_eq!(s.groups[0].options.storage_queue_bytes, 64 << 20);
        let s = cli(&[
            "--plugin",
            "plugins/db_getter.wasm",
            "--storage-queue-bytes",
            "1MiB",
        ])
        .resolve()
        .unwrap();
        assert_eq!(s.groups[0].options.storage_queue_bytes, 1 << 20);
    }

    #[test]
    fn admin_routes_and_connection_timers_from_flags() {
        let s = cli(&[]).resolve().unwrap();
        assert!(s.api.access.admin.is_none() && s.api.access.reload_dir.is_none());
        assert_eq!(s.server_limits.timeouts, ConnTimeouts::default());
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let s = cli(&[
            "--admin-token",
            "a",
            "--reload-dir",
            d,
            "--idle-timeout",
            "5s",
        ])
        .resolve()
        .unwrap();
        assert!(s.api.access.admin.is_some());
        assert_eq!(
            s.api.access.reload_dir,
            Some(std::fs::canonicalize(d).unwrap())
        );
        assert_eq!(s.server_limits.timeouts.idle, Duration::from_secs(5));
        let err = cli(&["--admin-token", "t", "--api-token", "t"])
            .resolve()
            .unwrap_err();
        assert!(err.contains("must differ"), "{err}");
        let missing = dir.path().join("missing");
        let err = cli(&["--reload-dir", missing.to_str().unwrap()])
            .resolve()
            .unwrap_err();
        assert!(err.contains("--reload-dir"), "{err}");
        let err = cli(&["--write-timeout", "0s"]).resolve().unwrap_err();
        assert!(err.contains("more than 0"), "{err}");
    }

    #[test]
    fn etcd_tls_and_user_from_flags() {
        use crate::discovery::etcd::{EtcdTls, EtcdUser};
        let s = cli(&[]).resolve().unwrap();
        assert!(s.cluster.etcd_tls.is_none() && s.cluster.etcd_user.is_none());
        let s = cli(&[
            "--etcd-endpoints",
            "https://127.0.0.1:2379",
            "--etcd-ca",
            "/ca.pem",
            "--etcd-cert",
            "/n.pem",
            "--etcd-key",
            "/n.key",
            "--etcd-user",
            "geecache",
            "--etcd-password",
            "pw",
        ])
        .resolve()
        .unwrap();
        assert_eq!(
            s.cluster.etcd_tls,
            Some(EtcdTls {
                ca: "/ca.pem".into(),
                identity: Some(("/n.pem".into(), "/n.key".into())),
            })
        );
        let user = s.cluster.etcd_user.unwrap();
        assert_eq!(
            user,
            EtcdUser {
                name: "geecache".into(),
                password: "pw".into()
            }
        );
        assert!(
            !format!("{user:?}").contains("pw"),
            "the password is never printed"
        );
        for (args, wanted) in [
            (&["--etcd-cert", "/n.pem"][..], "go together"),
            (
                &["--etcd-cert", "/n.pem", "--etcd-key", "/n.key"][..],
                "needs --etcd-ca",
            ),
            (&["--etcd-user", "u"][..], "go together"),
            (&["--etcd-max-members", "0"][..], "at least 1"),
        ] {
            let err = cli(args).resolve().unwrap_err();
            assert!(err.contains(wanted), "{args:?}: {err}");
        }
    }

    #[test]
    fn per_client_limits_and_codec_lanes_from_flags() {
        let s = cli(&[]).resolve().unwrap();
        assert_eq!(
            s.server_limits.per_client,
            PerClient::default(),
            "off by default"
        );
        assert_eq!(
            s.codec_concurrency,
            crate::compression::builtin::default_concurrency()
        );
        let s = cli(&[
            "--max-connections-per-client",
            "8",
            "--rate-limit",
            "50",
            "--codec-concurrency",
            "3",
        ])
        .resolve()
        .unwrap();
        assert_eq!(
            s.server_limits.per_client,
            PerClient {
                max_connections: 8,
                rate: 50,
                burst: 50,
            },
            "the burst defaults to one second's worth"
        );
        assert_eq!(s.codec_concurrency, 3);
        let s = cli(&["--rate-limit", "5", "--rate-burst", "20"])
            .resolve()
            .unwrap();
        assert_eq!(s.server_limits.per_client.burst, 20);
        for (args, wanted) in [
            (&["--rate-burst", "5"][..], "needs --rate-limit"),
            (
                &["--rate-limit", "5", "--rate-burst", "0"][..],
                "at least 1",
            ),
            (&["--codec-concurrency", "0"][..], "at least 1"),
        ] {
            let err = cli(args).resolve().unwrap_err();
            assert!(err.contains(wanted), "{args:?}: {err}");
        }
    }

    #[test]
    fn api_limits_and_token_from_flags_file_and_defaults() {
        let s = cli(&[]).resolve().unwrap();
        assert_eq!(s.api.max_batch_bytes, 4 << 20);
        assert_eq!(s.api.max_body_bytes, 16 << 20);
        assert_eq!(s.api.peer_concurrency, 256);
        assert!(s.api.access.token.is_none());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limits.toml");
        std::fs::write(&path, "max_batch_bytes = \"1MiB\"\npeer_concurrency = 8\n").unwrap();
        let p = path.to_str().unwrap();
        let s = cli(&["--config", p]).resolve().unwrap();
        assert_eq!(
            (s.api.max_batch_bytes, s.api.peer_concurrency),
            (1 << 20, 8)
        );
        let s = cli(&[
            "--config",
            p,
            "--max-batch-bytes",
            "64KiB",
            "--api-token",
            "t",
        ])
        .resolve()
        .unwrap();
        assert_eq!(s.api.max_batch_bytes, 64 << 10, "the flag wins");
        assert!(s.api.access.token.is_some() && !s.api.access.reads);

        let err = cli(&["--api-token-reads"]).resolve().unwrap_err();
        assert!(err.contains("--api-token"), "{err}");
        let err = cli(&["--api-token", ""]).resolve().unwrap_err();
        assert!(err.contains("empty"), "{err}");
        let err = cli(&["--peer-concurrency", "0"]).resolve().unwrap_err();
        assert!(err.contains("at least 1"), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "prot = 1\n").unwrap();
        let err = cli(&["--config", path.to_str().unwrap()])
            .resolve()
            .unwrap_err();
        assert!(err.contains("prot"), "{err}");
    }
}
