//! `hello_getter`: a getter to start from. It answers every key with `<greeting>, <key>`,
//! where `greeting` is a config value (default `hello`), and keys that start with `missing`
//! are "not found". Replace [`Hello::get`] with a lookup in your source of truth.
//!
//! With config `origin` set, it reads an HTTP service instead: `GET {origin}/{key}` (the
//! operator allows the origin with `--plugin-http hello_getter=https://...`).
//!
//! ```text
//! geecache-host --plugin plugins/hello_getter.wasm --plugin-config hello_getter.greeting=hi
//! curl "localhost:9999/api?key=you"   # hi, you
//! ```

use geecache_guest_sdk::{Error, Getter, Lookup, config, export_getter, http, log};

struct Hello;

impl Getter for Hello {
    /// The name groups refer to; keep it equal to the package name, which is also the file
    /// name (`hello_getter.wasm`) that operators grant config and databases to.
    const NAME: &'static str = "hello_getter";

    fn get(group: &str, key: &str) -> Result<Lookup, Error> {
        if key.starts_with("missing") {
            log::debug(&format!("{group}/{key}: not found"));
            return Ok(Lookup::NotFound);
        }
        // An HTTP source: 200 is the value, 404 "not found", anything else a failure.
        if let Some(origin) = config::get("origin") {
            let response = http::get(&format!("{origin}/{key}"))?;
            return match response.status {
                200 => Ok(Lookup::found(response.body)),
                404 => Ok(Lookup::NotFound),
                status => Err(Error::Unavailable(format!("the origin answered {status}"))),
            };
        }
        let greeting = config::get("greeting").unwrap_or_else(|| "hello".to_owned());
        if greeting.is_empty() {
            // A bad config value is an error, not a value: nothing is cached.
            return Err(Error::InvalidInput("config greeting is empty".into()));
        }
        Ok(Lookup::found(format!("{greeting}, {key}")))
    }
}

export_getter!(Hello);

#[cfg(test)]
mod tests {
    //! Run natively with `cargo test`: the SDK's `FakeHost` answers `config`, `log`, `sql` and
    //! `http`.

    use geecache_guest_sdk::http::Response;
    use geecache_guest_sdk::testing::{FakeHost, Level};

    use super::*;

    #[test]
    fn greets_with_the_configured_greeting() {
        assert_eq!(
            FakeHost::new().get::<Hello>("g", "you"),
            Ok(Lookup::found("hello, you"))
        );
        let host = FakeHost::new().config("greeting", "hi");
        assert_eq!(host.get::<Hello>("g", "you"), Ok(Lookup::found("hi, you")));
    }

    #[test]
    fn missing_keys_are_not_found_and_logged() {
        let host = FakeHost::new();
        assert_eq!(host.get::<Hello>("g", "missing-1"), Ok(Lookup::NotFound));
        assert!(host.logged(Level::Debug, "g/missing-1: not found"));
    }

    #[test]
    fn an_empty_greeting_is_an_error() {
        let host = FakeHost::new().config("greeting", "");
        assert!(matches!(
            host.get::<Hello>("g", "you"),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn reads_the_origin_when_one_is_configured() {
        let host = FakeHost::new()
            .config("origin", "https://api.example.com/v1")
            .http("https://api.example.com/v1/you", Response::new(200, "hey"))
            .http("https://api.example.com/v1/nobody", Response::new(404, ""));
        assert_eq!(host.get::<Hello>("g", "you"), Ok(Lookup::found("hey")));
        assert_eq!(host.get::<Hello>("g", "nobody"), Ok(Lookup::NotFound));
    }
}
