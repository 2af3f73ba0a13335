//! The command line: global options (each with its `GEECACHE_…` variable) and one subcommand
//! per route of docs/api.md.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// The command-line client of a geecache cluster.
///
/// Every command goes to the first node of --url that can be reached; a node that cannot be
/// (refused, unresolvable, no TLS handshake) is passed over for the next. Exit status: 0 done,
/// 1 the node answered an error (its code and message on stderr), 2 a usage error, 3 no node
/// could be reached.
#[derive(Debug, Parser)]
#[command(name = "geecache", version, about, long_about)]
pub struct Args {
    /// The nodes, tried in order: `http://host:port` or `https://host:port`; repeat the flag
    /// or separate them with commas.
    #[arg(
        long = "url",
        value_name = "URL",
        env = "GEECACHE_URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:9999",
        global = true
    )]
    pub urls: Vec<String>,

    /// The group the key commands (get, set, del, batch, flush) name.
    #[arg(
        short,
        long,
        env = "GEECACHE_GROUP",
        default_value = "scores",
        global = true
    )]
    pub group: String,

    /// The API token (the node's --api-token), sent as `Authorization: Bearer` by get, set,
    /// del, batch, stats and cluster. Prefer the variable: `ps` shows a command line.
    #[arg(
        long,
        env = "GEECACHE_API_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub api_token: Option<String>,

    /// The admin token (the node's --admin-token), sent by flush and reload.
    #[arg(
        long,
        env = "GEECACHE_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub admin_token: Option<String>,

    /// PEM file of the CA certificate(s) an `https://` node's certificate must chain to
    /// (instead of the system's roots).
    #[arg(long, value_name = "FILE", env = "GEECACHE_CA", global = true)]
    pub ca: Option<PathBuf>,

    /// Print every answer as one line of JSON (values as `value`, or `value_base64` when not
    /// UTF-8) instead of plain text.
    #[arg(long, global = true)]
    pub json: bool,

    /// Longest one request may take, connecting included.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Duration,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// One subcommand per route.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a key's value (GET /api/v1/groups/{group}/keys/{key}).
    Get {
        /// The key.
        key: String,
    },
    /// Set a key's value at its owner (PUT); the value is VALUE, or standard input without it.
    Set {
        /// The key.
        key: String,
        /// The value; read from standard input when absent.
        value: Option<String>,
        /// Lifetime of the value (`30s`, `10m`, `2h`); the group's TTL without it.
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
    },
    /// Remove a key at its owner; the next get loads it again (DELETE).
    Del {
        /// The key.
        key: String,
    },
    /// Get many keys in one request (POST /api/v1/groups/{group}/batch); the keys are
    /// KEY..., or the lines of standard input without them. Exits 1 when a key has an error.
    Batch {
        /// The keys (at most 1,000).
        keys: Vec<String>,
    },
    /// The node's counters per group and plugin (GET /api/v1/stats).
    Stats,
    /// The node's address, registration state and ring members (GET /api/v1/cluster).
    Cluster,
    /// Drop the group's values on the node, storage tier included (an admin route).
    Flush {
        /// On every node of the ring, not only the one asked.
        #[arg(long)]
        cluster: bool,
    },
    /// Swap in a new version of a plugin while the node serves (an admin route): FILE
    /// uploaded, or a file on the node (--path), or the plugin's own file read again.
    Reload {
        /// The plugin's name (as `GET /api/v1/plugins` lists it).
        plugin: String,
        /// A component on this machine, sent as the request body.
        #[arg(long, value_name = "FILE", conflicts_with = "path")]
        upload: Option<PathBuf>,
        /// A file on the node, inside its --reload-dir.
        #[arg(long, value_name = "FILE")]
        path: Option<String>,
        /// Flush the groups the plugin serves once the new version is in.
        #[arg(long)]
        flush: bool,
        /// On every node of the ring (a rollout: all or none).
        #[arg(long)]
        cluster: bool,
    },
}
