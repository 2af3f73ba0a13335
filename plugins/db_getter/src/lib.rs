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

#[cfg(test)]
mod tests {
    //! Natively, under the SDK's fake host: the statement, the parameter and how each column
    //! type is served. `tests/it/single_node.rs` runs the same plugin in a real node over SQLite.

    use geecache_guest_sdk::testing::{FakeHost, Level};

    use super::*;

    fn scores(rows: &[(&str, Value)]) -> FakeHost {
        rows.iter()
            .fold(FakeHost::new(), |host, (name, value)| {
                host.rows(DEFAULT_QUERY, [*name], vec![vec![value.clone()]])
            })
            .rows(DEFAULT_QUERY, ["Nobody"], vec![])
    }

    #[test]
    fn tom_is_630_and_nobody_is_not_found() {
        let host = scores(&[("Tom", Value::Integer(630))]);
        assert_eq!(
            host.get::<DbGetter>("scores", "Tom"),
            Ok(Lookup::found("630"))
        );
        assert_eq!(
            host.get::<DbGetter>("scores", "Nobody"),
            Ok(Lookup::NotFound)
        );
        let queries = host.queries();
        assert_eq!(queries[0].params, vec![Value::from("Tom")]);
        assert_eq!(queries[0].max_rows, 1);
        assert!(host.logged(Level::Debug, "scores/Tom: found, 3 bytes"));
        assert!(host.logged(Level::Debug, "scores/Nobody: not found"));
    }

    #[test]
    fn every_column_type_is_served_and_null_is_not_found() {
        let host = scores(&[
            ("real", Value::Real(2.5)),
            ("text", Value::from("héllo")),
            ("blob", Value::Blob(vec![0, 255])),
            ("null", Value::Null),
        ]);
        let get = |key| host.get::<DbGetter>("g", key);
        assert_eq!(get("real"), Ok(Lookup::found("2.5")));
        assert_eq!(get("text"), Ok(Lookup::found("héllo")));
        assert_eq!(get("blob"), Ok(Lookup::found(vec![0, 255])));
        assert_eq!(get("null"), Ok(Lookup::NotFound));
    }

    #[test]
    fn the_operators_query_is_used_and_its_errors_are_the_calls() {
        let query = "SELECT v FROM kv WHERE k = ?1";
        let host = FakeHost::new()
            .config("query", query)
            .rows(query, ["a"], vec![vec![Value::Integer(1)]])
            .answer(
                query,
                ["down"],
                Err(Error::Unavailable("db is down".into())),
            );
        assert_eq!(host.get::<DbGetter>("g", "a"), Ok(Lookup::found("1")));
        assert_eq!(
            host.get::<DbGetter>("g", "down"),
            Err(Error::Unavailable("db is down".into()))
        );
        assert!(host.queries().iter().all(|q| q.statement == query));
    }
}
