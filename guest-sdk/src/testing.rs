//! Unit-test a plugin natively: `cargo test` on your own machine's target, no wasm, no node.
//!
//! In a component, [`config`](crate::config), [`log`](crate::log), `sql` and `http` call the
//! host. Built for any other target (which is what `cargo test` does), they call the
//! [`FakeHost`] that the test runs its code under instead: its config values, its SQL rows and
//! HTTP answers, and a record of every query, request and log line. Outside
//! [`FakeHost::run`] they panic, so a test cannot silently miss the fake.
//!
#![cfg_attr(feature = "getter", doc = "```")]
#![cfg_attr(not(feature = "getter"), doc = "```ignore")]
//! use geecache_guest_sdk::sql::{self, Value};
//! use geecache_guest_sdk::testing::{FakeHost, Level};
//! use geecache_guest_sdk::{Error, Getter, Lookup, config, log};
//!
//! struct Scores;
//!
//! impl Getter for Scores {
//!     const NAME: &'static str = "scores";
//!     fn get(_group: &str, key: &str) -> Result<Lookup, Error> {
//!         let statement = config::get("query").unwrap_or_else(|| "SELECT 1".to_owned());
//!         let rows = sql::query(&statement, &[Value::from(key)], 1)?;
//!         log::debug(&format!("{key}: {} rows", rows.len()));
//!         Ok(match rows.first().and_then(|row| row.first()) {
//!             Some(Value::Integer(score)) => Lookup::found(score.to_string()),
//!             _ => Lookup::NotFound,
//!         })
//!     }
//! }
//!
//! let host = FakeHost::new()
//!     .config("query", "SELECT score FROM scores WHERE name = ?1")
//!     .rows("SELECT score FROM scores WHERE name = ?1", ["Tom"], vec![vec![Value::Integer(630)]])
//!     .rows("SELECT score FROM scores WHERE name = ?1", ["Nobody"], vec![]);
//!
//! assert_eq!(host.get::<Scores>("scores", "Tom"), Ok(Lookup::found("630")));
//! assert_eq!(host.get::<Scores>("scores", "Nobody"), Ok(Lookup::NotFound));
//! assert_eq!(host.queries().len(), 2);
//! assert!(host.logged(Level::Debug, "Tom: 1 rows"));
//! ```
//!
//! HTTP is faked the same way: [`FakeHost::http`] answers a `GET` of one URL,
//! [`FakeHost::http_answer`] any method (or an error, as for an origin that is down), and
//! [`FakeHost::http_origin`] everything else; [`FakeHost::requests`] lists what was sent.
//!
#![cfg_attr(feature = "getter", doc = "```")]
#![cfg_attr(not(feature = "getter"), doc = "```ignore")]
//! use geecache_guest_sdk::http::{self, Response};
//! use geecache_guest_sdk::testing::FakeHost;
//!
//! let host = FakeHost::new()
//!     .http("http://origin/old", Response::new(301, "").with_header("location", "/new"))
//!     .http("http://origin/new", Response::new(200, "hi"));
//! let got = host.run(|| http::get("http://origin/old"));
//! assert_eq!(got.map(|r| r.body), Ok(b"hi".to_vec()));
//! assert_eq!(host.requests().len(), 2);
//! ```
//!
//! The fake holds no database: a query it has no answer for fails with
//! [`Error::InvalidInput`] naming the statement, unless [`FakeHost::sql`] installed a function
//! that answers everything else (an in-memory table, say). Prove the SQL itself against the
//! real host: load the built component in a node (see the README's "Write a getter").

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

use crate::Error;
#[cfg(feature = "getter")]
use crate::sql::{Row, Value};

/// The severity of a log line a plugin wrote, as [`crate::log`]'s functions name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// [`crate::log::trace`].
    Trace,
    /// [`crate::log::debug`].
    Debug,
    /// [`crate::log::info`].
    Info,
    /// [`crate::log::warn`].
    Warn,
    /// [`crate::log::error`].
    Error,
}

/// One log line a plugin wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Its severity.
    pub level: Level,
    /// Its text.
    pub message: String,
}

/// One query a plugin ran (or, inside the fake, one it has an answer for).
#[cfg(feature = "getter")]
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// The statement, as the plugin passed it.
    pub statement: String,
    /// The positional parameters (`?1`, `?2`, ...).
    pub params: Vec<Value>,
    /// The most rows the plugin asked for (not matched: every answer is cut to it).
    pub max_rows: u32,
}

/// Answers every query that no [`FakeHost::rows`] or [`FakeHost::answer`] matched.
#[cfg(feature = "getter")]
type SqlFn = Box<dyn FnMut(&str, &[Value]) -> Result<Vec<Row>, Error>>;

/// What the fake knows and what it saw; shared by the [`FakeHost`] and the thread it runs on.
#[derive(Default)]
struct State {
    /// The operator's config values.
    config: BTreeMap<String, String>,
    /// Exact answers: statement and parameters, and what the query returns.
    #[cfg(feature = "getter")]
    answers: Vec<(Query, Result<Vec<Row>, Error>)>,
    /// The answer to everything else.
    #[cfg(feature = "getter")]
    sql: Option<SqlFn>,
    /// Every query run, in order.
    #[cfg(feature = "getter")]
    queries: Vec<Query>,
    /// Every log line written, in order.
    logs: Vec<LogLine>,
    /// Exact HTTP answers: method and URL, and what the request gets.
    #[cfg(feature = "getter")]
    http_answers: Vec<(
        crate::http::Method,
        String,
        Result<crate::http::Response, Error>,
    )>,
    /// The HTTP answer to everything else.
    #[cfg(feature = "getter")]
    http: Option<HttpFn>,
    /// Every HTTP request sent, in order (each redirect followed is one).
    #[cfg(feature = "getter")]
    requests: Vec<crate::http::Request>,
}

/// Answers every HTTP request that no [`FakeHost::http`] matched.
#[cfg(feature = "getter")]
type HttpFn = Box<dyn FnMut(&crate::http::Request) -> Result<crate::http::Response, Error>>;

/// A stand-in for the geecache host in a plugin's native unit tests: config values, SQL
/// answers, and a record of what the plugin asked and logged. See the [module docs](self).
///
/// Build it with its builder methods, then run plugin code under it with [`FakeHost::run`] (or
/// [`FakeHost::get`] for a getter). Each test thread has its own: tests may run in parallel.
#[derive(Clone, Default)]
pub struct FakeHost {
    state: Rc<RefCell<State>>,
}

impl fmt::Debug for FakeHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.borrow();
        f.debug_struct("FakeHost")
            .field("config", &state.config)
            .field("logs", &state.logs)
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// The fake that [`FakeHost::run`] installed on this thread, if any.
    static CURRENT: RefCell<Option<Rc<RefCell<State>>>> = const { RefCell::new(None) };
}

impl FakeHost {
    /// A host with no config values and no SQL answers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets config value `key` (what `--plugin-config NAME.key=value` sets on a real node).
    #[must_use]
    pub fn config(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.state
            .borrow_mut()
            .config
            .insert(key.into(), value.into());
        self
    }

    /// Answers `statement` run with exactly `params` with `rows` (cut to the query's
    /// `max_rows`, as the host does). An empty `rows` is "no such row".
    #[cfg(feature = "getter")]
    #[must_use]
    pub fn rows<P: Into<Value>>(
        self,
        statement: impl Into<String>,
        params: impl IntoIterator<Item = P>,
        rows: Vec<Row>,
    ) -> Self {
        self.answer(statement, params, Ok(rows))
    }

    /// Answers `statement` run with exactly `params` with `result`: rows, or the error the
    /// real host would return (for example [`Error::Unavailable`] for a database that is down).
    #[cfg(feature = "getter")]
    #[must_use]
    pub fn answer<P: Into<Value>>(
        self,
        statement: impl Into<String>,
        params: impl IntoIterator<Item = P>,
        result: Result<Vec<Row>, Error>,
    ) -> Self {
        let query = Query {
            statement: statement.into(),
            params: params.into_iter().map(Into::into).collect(),
            max_rows: 0,
        };
        self.state.borrow_mut().answers.push((query, result));
        self
    }

    /// Answers every query that [`FakeHost::rows`] and [`FakeHost::answer`] did not with
    /// `answer(statement, params)`: an in-memory table, or a database that is down.
    #[cfg(feature = "getter")]
    #[must_use]
    pub fn sql(
        self,
        answer: impl FnMut(&str, &[Value]) -> Result<Vec<Row>, Error> + 'static,
    ) -> Self {
        self.state.borrow_mut().sql = Some(Box::new(answer));
        self
    }

    /// Answers a `GET` of exactly `url` with `response` (sent as the host would: redirects in
    /// it are followed by [`crate::http::send`], each a request of its own).
    #[cfg(feature = "getter")]
    #[must_use]
    pub fn http(self, url: impl Into<String>, response: crate::http::Response) -> Self {
        self.http_answer(crate::http::Method::Get, url, Ok(response))
    }

    /// Answers `method` on exactly `url` with `result`: a response, or the error the real host
    /// would give (for example [`Error::Unavailable`] for an origin that is down, or one not
    /// in the plugin's allowlist).
    #[cfg(feature = "getter")]
    #[must_use]
    pub fn http_answer(
        self,
        method: crate::http::Method,
        url: impl Into<String>,
        result: Result<crate::http::Response, Error>,
    ) -> Self {
        self.state
            .borrow_mut()
            .http_answers
            .push((method, url.into(), result));
        self
    }

    /// Answers every HTTP request that [`FakeHost::http`] and [`FakeHost::http_answer`] did
    /// not with `answer(request)`: an origin in memory, or one that is down.
    #[cfg(feature = "getter")]
    #[must_use]
    pub fn http_origin(
        self,
        answer: impl FnMut(&crate::http::Request) -> Result<crate::http::Response, Error> + 'static,
    ) -> Self {
        self.state.borrow_mut().http = Some(Box::new(answer));
        self
    }

    /// Every HTTP request the plugin sent under this fake, in order.
    #[cfg(feature = "getter")]
    pub fn requests(&self) -> Vec<crate::http::Request> {
        self.state.borrow().requests.clone()
    }

    /// Runs `f` with this fake answering [`config`](crate::config), [`log`](crate::log) and
    /// [`sql`](crate::sql) on this thread. Restores whatever was installed before when `f`
    /// returns or panics, so runs may nest.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<Rc<RefCell<State>>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                CURRENT.with(|current| *current.borrow_mut() = previous);
            }
        }
        let previous = CURRENT.with(|current| current.replace(Some(self.state.clone())));
        let _restore = Restore(previous);
        f()
    }

    /// Calls getter `G` for `key` of `group` under this fake: `self.run(|| G::get(group, key))`.
    ///
    /// # Errors
    /// Whatever the getter returns.
    #[cfg(feature = "getter")]
    pub fn get<G: crate::Getter>(&self, group: &str, key: &str) -> Result<crate::Lookup, Error> {
        self.run(|| G::get(group, key))
    }

    /// Every query the plugin ran under this fake, in order.
    #[cfg(feature = "getter")]
    pub fn queries(&self) -> Vec<Query> {
        self.state.borrow().queries.clone()
    }

    /// Every log line the plugin wrote under this fake, in order.
    pub fn logs(&self) -> Vec<LogLine> {
        self.state.borrow().logs.clone()
    }

    /// Whether the plugin wrote a line at `level` that contains `text`.
    pub fn logged(&self, level: Level, text: &str) -> bool {
        self.state
            .borrow()
            .logs
            .iter()
            .any(|line| line.level == level && line.message.contains(text))
    }
}

/// The fake installed on this thread.
///
/// # Panics
/// When there is none: natively, host capabilities exist only under [`FakeHost::run`].
fn current(capability: &str) -> Rc<RefCell<State>> {
    CURRENT.with(|current| current.borrow().clone()).unwrap_or_else(|| {
        panic!(
            "geecache_guest_sdk::{capability} was called outside FakeHost::run: built natively, \
             a plugin reaches the host only through geecache_guest_sdk::testing::FakeHost"
        )
    })
}

/// [`crate::config::get`], natively.
pub(crate) fn config_get(key: &str) -> Option<String> {
    current("config").borrow().config.get(key).cloned()
}

/// [`crate::log`], natively: recorded, and printed to stderr (which the test harness shows
/// for failing tests).
pub(crate) fn log(level: crate::wit::shared::log::Level, message: &str) {
    use crate::wit::shared::log::Level as Wit;
    let level = match level {
        Wit::Trace => Level::Trace,
        Wit::Debug => Level::Debug,
        Wit::Info => Level::Info,
        Wit::Warn => Level::Warn,
        Wit::Error => Level::Error,
    };
    eprintln!("plugin log {level:?}: {message}");
    current("log").borrow_mut().logs.push(LogLine {
        level,
        message: message.to_owned(),
    });
}

/// [`crate::sql::query`], natively.
#[cfg(feature = "getter")]
pub(crate) fn sql_query(
    statement: &str,
    params: &[Value],
    max_rows: u32,
) -> Result<Vec<Row>, Error> {
    let state = current("sql");
    state.borrow_mut().queries.push(Query {
        statement: statement.to_owned(),
        params: params.to_vec(),
        max_rows,
    });
    let exact = state
        .borrow()
        .answers
        .iter()
        .find(|(q, _)| q.statement == statement && q.params == params)
        .map(|(_, result)| result.clone());
    let result = match exact {
        Some(result) => result,
        None => {
            // Taken out while it runs, so that it may itself log or query.
            let answer = state.borrow_mut().sql.take();
            match answer {
                Some(mut answer) => {
                    let result = answer(statement, params);
                    state.borrow_mut().sql = Some(answer);
                    result
                }
                None => Err(Error::InvalidInput(format!(
                    "FakeHost has no answer for {statement:?} with {params:?}; \
                     give one with FakeHost::rows, FakeHost::answer or FakeHost::sql"
                ))),
            }
        }
    };
    result.map(|mut rows| {
        rows.truncate(usize::try_from(max_rows).unwrap_or(usize::MAX));
        rows
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config;

    #[test]
    fn config_comes_from_the_fake_and_is_per_run() {
        let host = FakeHost::new().config("query", "SELECT 1");
        assert_eq!(
            host.run(|| config::get("query")).as_deref(),
            Some("SELECT 1")
        );
        assert_eq!(host.run(|| config::get("other")), None);
        let other = FakeHost::new();
        assert_eq!(other.run(|| config::get("query")), None);
    }

    #[test]
    fn runs_nest_and_the_outer_fake_is_restored() {
        let outer = FakeHost::new().config("k", "outer");
        let inner = FakeHost::new().config("k", "inner");
        outer.run(|| {
            assert_eq!(inner.run(|| config::get("k")).as_deref(), Some("inner"));
            assert_eq!(config::get("k").as_deref(), Some("outer"));
        });
    }

    #[test]
    fn the_fake_is_restored_after_a_panic() {
        let host = FakeHost::new().config("k", "v");
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            FakeHost::new().run(|| panic!("plugin bug"))
        }));
        assert!(caught.is_err());
        host.run(|| assert_eq!(config::get("k").as_deref(), Some("v")));
        let outside = std::panic::catch_unwind(|| config::get("k"));
        assert!(outside.is_err(), "no fake is installed any more");
    }

    #[test]
    fn log_lines_are_recorded_in_order() {
        let host = FakeHost::new();
        host.run(|| {
            crate::log::info("one");
            crate::log::warn("two");
        });
        assert_eq!(
            host.logs(),
            vec![
                LogLine {
                    level: Level::Info,
                    message: "one".into()
                },
                LogLine {
                    level: Level::Warn,
                    message: "two".into()
                },
            ]
        );
        assert!(host.logged(Level::Warn, "tw"));
        assert!(!host.logged(Level::Info, "two"));
    }

    #[cfg(feature = "getter")]
    #[test]
    fn queries_get_exact_answers_then_the_fallback_and_are_recorded() {
        use crate::sql;

        let host = FakeHost::new()
            .rows(
                "SELECT ?1",
                [1i64],
                vec![vec![1i64.into()], vec![2i64.into()]],
            )
            .answer(
                "SELECT ?1",
                [2i64],
                Err(Error::Unavailable("database down".into())),
            );
        host.run(|| {
            assert_eq!(
                sql::query("SELECT ?1", &[1i64.into()], 10),
                Ok(vec![vec![1i64.into()], vec![2i64.into()]])
            );
            assert_eq!(
                sql::query("SELECT ?1", &[1i64.into()], 1),
                Ok(vec![vec![1i64.into()]]),
                "cut to max_rows"
            );
            assert_eq!(
                sql::query("SELECT ?1", &[2i64.into()], 1),
                Err(Error::Unavailable("database down".into()))
            );
            let unanswered = sql::query("SELECT ?1", &[3i64.into()], 1).unwrap_err();
            assert!(
                matches!(&unanswered, Error::InvalidInput(m) if m.contains("no answer")),
                "{unanswered:?}"
            );
        });
        assert_eq!(host.queries().len(), 4);
        assert_eq!(host.queries()[3].params, vec![Value::Integer(3)]);

        let table = FakeHost::new().sql(|_, params| {
            Ok(match params {
                [Value::Text(name)] if name == "Tom" => vec![vec![630i64.into()]],
                _ => vec![],
            })
        });
        table.run(|| {
            assert_eq!(
                sql::query("anything", &["Tom".into()], 1),
                Ok(vec![vec![630i64.into()]])
            );
            assert_eq!(sql::query("anything", &["Sam".into()], 1), Ok(vec![]));
        });
    }
}

/// [`crate::http::send`]'s one request, natively.
#[cfg(feature = "getter")]
pub(crate) fn http_send(request: &crate::http::Request) -> Result<crate::http::Response, Error> {
    let state = current("http");
    state.borrow_mut().requests.push(request.clone());
    let exact = state
        .borrow()
        .http_answers
        .iter()
        .find(|(method, url, _)| *method == request.method && *url == request.url)
        .map(|(_, _, result)| result.clone());
    if let Some(result) = exact {
        return result;
    }
    // Taken out while it runs, so that it may itself log.
    let answer = state.borrow_mut().http.take();
    match answer {
        Some(mut answer) => {
            let result = answer(request);
            state.borrow_mut().http = Some(answer);
            result
        }
        None => Err(Error::Unavailable(format!(
            "FakeHost has no answer for {} {}; give one with FakeHost::http, \
             FakeHost::http_answer or FakeHost::http_origin",
            request.method, request.url
        ))),
    }
}
