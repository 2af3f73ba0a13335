//! Resolves the groups to serve: one (`--group`) when the file defines none, else the file's
//! `[[groups]]`, a flag winning over a file group's value. Defaults are
//! [`GroupOptions::default`]'s.

use std::time::Duration;

use super::{Cli, FileConfig, FileGroup, GroupSpec, given, size_usize};
use crate::group::GroupOptions;
use crate::units::{parse_duration, parse_size};

/// Name of the group served by the first getter when the config file defines none.
pub const DEFAULT_GROUP: &str = "scores";
/// The hot cache's share of the main cache budget, as a divisor.
pub const HOT_CACHE_DIVISOR: u64 = 8;

/// The groups, each load bounded by `load_timeout` (`--request-timeout`).
pub(super) fn groups(
    cli: &Cli,
    file: &FileConfig,
    load_timeout: Duration,
) -> Result<Vec<GroupSpec>, String> {
    let base = base_options(cli, load_timeout)?;
    let groups = if file.groups.is_empty() {
        vec![GroupSpec {
            name: cli
                .group
                .clone()
                .unwrap_or_else(|| DEFAULT_GROUP.to_string()),
            getter: None,
            storage: cli.storage.clone(),
            options: base,
        }]
    } else {
        file.groups
            .iter()
            .map(|g| from_file(cli, g, &base))
            .collect::<Result<_, _>>()?
    };
    for g in &groups {
        validate_group_name(&g.name)?;
        if u32::try_from(g.options.max_value_bytes).is_err() {
            return Err(format!(
                "group {:?}: values are limited to under 4 GiB (--max-value-bytes)",
                g.name
            ));
        }
    }
    Ok(groups)
}

/// Every group's options from the flags and the defaults.
fn base_options(cli: &Cli, load_timeout: Duration) -> Result<GroupOptions, String> {
    let d = GroupOptions::default();
    let cache_bytes = given(cli.cache_bytes.as_deref(), parse_size)?.unwrap_or(d.cache_bytes);
    Ok(GroupOptions {
        cache_bytes,
        hot_cache_bytes: given(cli.hot_cache_bytes.as_deref(), parse_size)?
            .unwrap_or(cache_bytes / HOT_CACHE_DIVISOR),
        hot_ttl: d.hot_ttl,
        ttl: given(cli.ttl.as_deref(), parse_duration)?,
        negative_ttl: given(cli.negative_ttl.as_deref(), parse_duration)?.unwrap_or(d.negative_ttl),
        stale: given(cli.stale.as_deref(), parse_duration)?.unwrap_or(d.stale),
        refresh_ahead: given(cli.refresh_ahead.as_deref(), parse_duration)?
            .unwrap_or(d.refresh_ahead),
        max_key_bytes: cli.max_key_bytes.unwrap_or(d.max_key_bytes),
        max_value_bytes: given(cli.max_value_bytes.as_deref(), size_usize)?
            .unwrap_or(d.max_value_bytes),
        load_timeout,
        peer_timeout: given(cli.peer_timeout.as_deref(), parse_duration)?.unwrap_or(d.peer_timeout),
        handoff_timeout: given(cli.handoff_timeout.as_deref(), parse_duration)?
            .unwrap_or(d.handoff_timeout),
        compression: match &cli.compression {
            Some(codec) => codec.parse()?,
            None => d.compression,
        },
        compress_min_bytes: given(cli.compress_min_bytes.as_deref(), size_usize)?
            .unwrap_or(d.compress_min_bytes),
        storage_queue_bytes: given(cli.storage_queue_bytes.as_deref(), size_usize)?
            .unwrap_or(d.storage_queue_bytes),
    })
}

/// A file group, with the flags winning over the file's values.
fn from_file(cli: &Cli, g: &FileGroup, base: &GroupOptions) -> Result<GroupSpec, String> {
    let ctx = |e: String| format!("group {:?}: {e}", g.name);
    // A file group with its own cache budget gets the default share of it as hot cache,
    // unless --hot-cache-bytes says otherwise.
    let (cache_bytes, hot_cache_bytes) = match (&cli.cache_bytes, &g.cache_bytes) {
        (None, Some(s)) => {
            let bytes = parse_size(s).map_err(ctx)?;
            let hot = match &cli.hot_cache_bytes {
                None => bytes / HOT_CACHE_DIVISOR,
                Some(_) => base.hot_cache_bytes,
            };
            (bytes, hot)
        }
        _ => (base.cache_bytes, base.hot_cache_bytes),
    };
    let options = GroupOptions {
        cache_bytes,
        hot_cache_bytes,
        ttl: match (&cli.ttl, &g.ttl) {
            (None, Some(s)) => Some(parse_duration(s).map_err(ctx)?),
            _ => base.ttl,
        },
        negative_ttl: match (&cli.negative_ttl, &g.negative_ttl) {
            (None, Some(s)) => parse_duration(s).map_err(ctx)?,
            _ => base.negative_ttl,
        },
        stale: match (&cli.stale, &g.stale) {
            (None, Some(s)) => parse_duration(s).map_err(ctx)?,
            _ => base.stale,
        },
        refresh_ahead: match (&cli.refresh_ahead, &g.refresh_ahead) {
            (None, Some(s)) => parse_duration(s).map_err(ctx)?,
            _ => base.refresh_ahead,
        },
        max_key_bytes: cli
            .max_key_bytes
            .or(g.max_key_bytes)
            .unwrap_or(base.max_key_bytes),
        max_value_bytes: match (&cli.max_value_bytes, &g.max_value_bytes) {
            (None, Some(s)) => size_usize(s).map_err(ctx)?,
            _ => base.max_value_bytes,
        },
        compression: match (&cli.compression, &g.compression) {
            (None, Some(s)) => s.parse().map_err(ctx)?,
            _ => base.compression.clone(),
        },
        compress_min_bytes: match (&cli.compress_min_bytes, &g.compress_min_bytes) {
            (None, Some(s)) => size_usize(s).map_err(ctx)?,
            _ => base.compress_min_bytes,
        },
        ..base.clone()
    };
    Ok(GroupSpec {
        name: g.name.clone(),
        getter: g.getter.clone(),
        storage: cli.storage.clone().or_else(|| g.storage.clone()),
        options,
    })
}

/// Group names appear in URL paths: keep them plain.
fn validate_group_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "group name {name:?}: use 1-64 characters of A-Z, a-z, 0-9, '_', '-', '.'"
        ))
    }
}
