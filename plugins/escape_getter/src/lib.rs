//! A getter written the way a hostile or careless plugin author would, so the host's tests can
//! show that each attempt to leave the sandbox fails: the key says what to try.
//!
//! | key              | attempt                                                               |
//! |------------------|-----------------------------------------------------------------------|
//! | `sleep:SECS`     | sleeps SECS seconds in a host call (WASI clocks), then answers        |
//! | `sql:STATEMENT`  | runs STATEMENT through the host's `sql` (ATTACH, BEGIN, PRAGMA, ...)  |
//! | `read:PATH`      | reads the file PATH                                                   |
//! | `write:PATH`     | creates the file PATH                                                 |
//! | `env`            | answers the number of environment variables it can see               |
//! | `other`          | fails with `other`, whose text is for operators only                  |
//! | `invalid`        | fails with `invalid-input`                                            |
//!
//! Every other key is not found.

use std::time::Duration;

use geecache_guest_sdk::sql::{self, Value};
use geecache_guest_sdk::{Error, Getter, Lookup, export_getter};

/// Text the host must never show a client (see the `other` key).
const SECRET: &str = "escape_getter: internal detail, password=hunter2";

struct Escape;

impl Getter for Escape {
    const NAME: &'static str = "escape_getter";

    fn get(_group: &str, key: &str) -> Result<Lookup, Error> {
        if let Some(secs) = key.strip_prefix("sleep:") {
            let secs: u64 = secs
                .parse()
                .map_err(|_| Error::InvalidInput(format!("not a number: {secs}")))?;
            std::thread::sleep(Duration::from_secs(secs));
            return Ok(Lookup::found("woke up"));
        }
        if let Some(statement) = key.strip_prefix("sql:") {
            let rows = sql::query(statement, &[], 10)?;
            let text = rows
                .iter()
                .flatten()
                .map(|v| match v {
                    Value::Null => "NULL".to_string(),
                    Value::Integer(i) => i.to_string(),
                    Value::Real(r) => r.to_string(),
                    Value::Text(t) => t.clone(),
                    Value::Blob(b) => format!("<{} bytes>", b.len()),
                })
                .collect::<Vec<_>>()
                .join(",");
            return Ok(Lookup::found(text));
        }
        if let Some(path) = key.strip_prefix("read:") {
            return std::fs::read(path)
                .map(Lookup::found)
                .map_err(|e| Error::Unavailable(format!("read {path}: {e}")));
        }
        if let Some(path) = key.strip_prefix("write:") {
            return std::fs::write(path, b"escaped")
                .map(|()| Lookup::found("written"))
                .map_err(|e| Error::Unavailable(format!("write {path}: {e}")));
        }
        match key {
            "env" => Ok(Lookup::found(std::env::vars().count().to_string())),
            "other" => Err(Error::Other(SECRET.into())),
            "invalid" => Err(Error::InvalidInput("escape_getter: bad key".into())),
            _ => Ok(Lookup::NotFound),
        }
    }
}

export_getter!(Escape);
