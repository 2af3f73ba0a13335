//! `db_getter`: loads a cache miss from the host's SQL database.
//!
//! Runs the statement in config key `query` (default [`DEFAULT_QUERY`]) with the cache key bound
//! as `?1` (text) and returns the first column of the first row: integers and reals as decimal
//! text (`630` → `b"630"`), text as UTF-8, blobs as they are. No row, or a NULL, is "not found".
//! The group is not used: give each group its own plugin config if they need different queries.
//!
//! With the demo database (`plugins/demo.db`, from `db_getter/demo.sql`), key `Tom` → `630`.

use geecache_guest_sdk::sql::{self, Value};
use geecache_guest_sdk::{Error, Getter, Lookup, config, export_getter, log};

/// The statement run when the operator did not set config key `query`.
const DEFAULT_QUERY: &str = "SELECT score FROM scores WHERE name = ?1";

struct DbGetter;

impl Getter for DbGetter {
    const NAME: &'static str = "db_getter";

    fn get(group: &str, key: &str) -> Result<Lookup, Error> {
        let statement = config::get("query");
        let statement = statement.as_deref().unwrap_or(DEFAULT_QUERY);
        let rows = sql::query(statement, &[Value::from(key)], 1)?;
        let first = rows
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().next());
        let lookup = match first.and_then(value_bytes) {
            Some(value) => Lookup::found(value),
            None => Lookup::NotFound,
        };
        match &lookup {
            Lookup::Found { value, .. } => {
                log::debug(&format!("{group}/{key}: found, {} bytes", value.len()));
            }
            Lookup::NotFound => log::debug(&format!("{group}/{key}: not found")),
        }
        Ok(lookup)
    }
}

/// The bytes a column value is served as; `None` for NULL.
fn value_bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::Null => None,
        Value::Integer(v) => Some(v.to_string().into_bytes()),
        Value::Real(v) => Some(v.to_string().into_bytes()),
        Value::Text(v) => Some(v.into_bytes()),
        Value::Blob(v) => Some(v),
    }
}

export_getter!(DbGetter);
