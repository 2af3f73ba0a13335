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
//! | `fanout:N:MS:URL`| starts N `GET URL` requests at once, holds them MS ms, then answers   |
//! |                  | `started:S refused:R` (R: refused by `handle` itself)                 |
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
        if let Some(spec) = key.strip_prefix("fanout:") {
            return fanout(spec);
        }
        match key {
            "env" => Ok(Lookup::found(std::env::vars().count().to_string())),
            "other" => Err(Error::Other(SECRET.into())),
            "invalid" => Err(Error::InvalidInput("escape_getter: bad key".into())),
            _ => Ok(Lookup::NotFound),
        }
    }
}

/// `N:MS:URL`: N requests to URL started at once and held MS ms; what became of them.
fn fanout(spec: &str) -> Result<Lookup, Error> {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{Fields, OutgoingRequest, Scheme};

    let bad = || Error::InvalidInput(format!("fanout:N:MS:http://HOST:PORT/PATH, not {spec}"));
    let mut parts = spec.splitn(3, ':');
    let (Some(n), Some(ms), Some(url)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let n: usize = n.parse().map_err(|_| bad())?;
    let ms: u64 = ms.parse().map_err(|_| bad())?;
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut pending = Vec::with_capacity(n);
    let mut refused = 0;
    for _ in 0..n {
        let request = OutgoingRequest::new(Fields::new());
        request.set_scheme(Some(&Scheme::Http)).map_err(|()| bad())?;
        request.set_authority(Some(authority)).map_err(|()| bad())?;
        request.set_path_with_query(Some(path)).map_err(|()| bad())?;
        match outgoing_handler::handle(request, None) {
            Ok(future) => pending.push(future),
            Err(_) => refused += 1,
        }
    }
    wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
    // What became of them is the host's to count (a future's state is only settled by polling
    // it, which this getter means not to do): dropping them here ends those still in flight.
    Ok(Lookup::found(format!(
        "started:{} refused:{refused}",
        pending.len()
    )))
}

export_getter!(Escape);
