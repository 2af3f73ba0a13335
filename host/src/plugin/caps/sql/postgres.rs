//! The SQL capability backed by a Postgres server: what a getter's `sql.query` runs when the
//! operator points its `database` at a `postgres://` URL instead of a SQLite file.
//!
//! The host owns a pool of connections per plugin (deadpool-postgres over tokio-postgres). It
//! cannot authorize Postgres SQL the way it authorizes SQLite's, so the walls are:
//! - **the operator's role**: give the plugin a role that may only read what it needs (the
//!   README and docs/plugins.md say so); the host adds the rest;
//! - **one read statement**: the statement must begin with `SELECT`, `WITH`, `VALUES` or `TABLE`
//!   (after comments, which nest as Postgres nests them), and runs alone through the extended
//!   protocol (no `;`-separated second statement);
//! - **a read-only transaction** whose `statement_timeout` is the call's remaining time:
//!   `BEGIN READ ONLY; SET LOCAL statement_timeout = N`, the statement, `ROLLBACK`, `DISCARD
//!   ALL`, sent together (one round trip), on connections whose `default_transaction_read_only`
//!   is on. `DISCARD ALL` ends what a read can leave in a session (advisory locks, settings,
//!   prepared statements, `LISTEN`s): a connection goes back to the pool only when it
//!   succeeded. A connection whose query ran out of time, or whose call was abandoned, is
//!   closed, never pooled, and its query is cancelled on the server;
//! - **bounded results**: a message from the server longer than the plugin's memory cap (plus
//!   [`MESSAGE_SLACK`]) ends its connection as soon as its header arrives, before its body is
//!   buffered (`postgres_conn.rs`), and a connection that took a message over 1 MiB is closed
//!   after its query (its read buffer keeps that size); rows are read as they stream in and the
//!   query stops at `min(max_rows, MAX_ROWS)` rows or at the plugin's memory cap in bytes.
//!
//! Parameters are `?N` (as for SQLite; rewritten to `$N` outside quotes and comments) or `$N`.
//! Values map as for SQLite: null, integer (int2/int4/int8, bool as 0/1, oid), real
//! (float4/float8), text (text, varchar, char, name, json, jsonb), blob (bytea); a column of
//! another type is refused with a message saying to cast it (`::text`).

use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use futures::{StreamExt as _, pin_mut};
use tokio_postgres::types::{ToSql, Type};

use super::postgres_conn::Connector;
use super::sqlite::{MAX_ROWS, SqlError};
use crate::plugin::bindings::sql::Value;

/// Connections one plugin's pool may hold open.
const MAX_CONNECTIONS: usize = 16;

/// What one value costs in a result beyond its bytes, as for SQLite.
const VALUE_OVERHEAD: usize = 16;

/// How much longer than the plugin's memory cap one message from the server may be: room for
/// a row's framing, and for an error's text when the cap is small.
const MESSAGE_SLACK: usize = 64 << 10;

/// A plugin's Postgres database: a pool of connections and the result byte budget.
pub struct PgDb {
    /// The connections.
    pool: Pool,
    /// How they are made (and how an abandoned query is cancelled).
    connector: Connector,
    /// Where the server is, for a cancel request.
    config: tokio_postgres::Config,
    /// The server, for messages (no user or password in it).
    server: String,
    /// Most bytes one result may hold (the plugin's memory cap).
    max_result_bytes: usize,
}

impl std::fmt::Debug for PgDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDb")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Whether `database` names a Postgres server rather than a SQLite file.
pub fn is_postgres_url(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}

impl PgDb {
    /// A pool for the server `url` names. Nothing is connected yet: a node starts while its
    /// database is down, and its getters answer `unavailable` until it is up.
    ///
    /// # Errors
    /// A message when `url` is not a valid connection string.
    pub fn open(url: &str, max_result_bytes: usize) -> Result<Self, String> {
        let (url, root_cert) = take_root_cert(url);
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| format!("database URL: {e} (e.g. postgres://ro_user@127.0.0.1/app)"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(2));
        }
        config.application_name("geecache");
        // Every transaction of these connections is read-only unless it says otherwise, which
        // no statement of ours does: a statement that somehow ran outside our `BEGIN READ
        // ONLY` (see [`PgDb::run`]) is read-only all the same.
        let options = match config.get_options() {
            Some(given) if !given.is_empty() => {
                format!("{given} -c default_transaction_read_only=on")
            }
            _ => "-c default_transaction_read_only=on".to_owned(),
        };
        config.options(&options);
        let server = describe(&config);
        // TLS as the URL's `sslmode` says (tokio-postgres: `prefer` unless given, `require`,
        // `disable`); a server's certificate is always verified, against `sslrootcert` when the
        // URL names one, else the system's roots.
        let tls = match &root_cert {
            Some(path) => rustls::ClientConfig::builder()
                .with_root_certificates(crate::tls::roots(
                    std::path::Path::new(path),
                    "the database URL's sslrootcert",
                )?)
                .with_no_client_auth(),
            None => crate::net::platform_tls(
                "Postgres servers' certificates cannot be verified: name a CA with \
                 sslrootcert=FILE in the database URL",
            ),
        };
        let max_result_bytes = max_result_bytes.max(1);
        let connector = Connector::new(tls, max_result_bytes.saturating_add(MESSAGE_SLACK));
        // `Fast`: each query resets its session itself (`DISCARD ALL`, see [`PgDb::run`]), in
        // the same round trip, so checking out a connection costs none.
        let manager = Manager::from_connect(
            config.clone(),
            connector.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(MAX_CONNECTIONS)
            .build()
            .map_err(|e| format!("database {server}: {e}"))?;
        Ok(PgDb {
            pool,
            connector,
            config,
            server,
            max_result_bytes,
        })
    }

    /// Runs one read statement with positional parameters, returning at most `max_rows` rows
    /// (never more than [`MAX_ROWS`]) within the byte budget, by `deadline`.
    ///
    /// # Errors
    /// [`SqlError::InvalidInput`] for a refused or bad statement, a column of a type the
    /// interface cannot carry, or a result over the budget; [`SqlError::Unavailable`] when the
    /// server cannot be reached or the deadline passes.
    pub async fn query(
        &self,
        statement: &str,
        params: &[Value],
        max_rows: u32,
        deadline: Instant,
    ) -> Result<Vec<Vec<Value>>, SqlError> {
        check_read_statement(statement)?;
        let statement = positional_to_dollar(statement);
        let out_of_time = || {
            SqlError::Unavailable(format!(
                "the query on {} ran out of the call's time",
                self.server
            ))
        };
        let remaining = |now: Instant| {
            deadline
                .checked_duration_since(now)
                .filter(|d| !d.is_zero())
        };
        let wait = remaining(Instant::now()).ok_or_else(out_of_time)?;
        let seen = &self.connector.seen;
        let (too_large, large) = (
            seen.too_large.load(Ordering::Relaxed),
            seen.large.load(Ordering::Relaxed),
        );
        let client = match tokio::time::timeout(wait, self.pool.get()).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                return Err(SqlError::Unavailable(format!(
                    "cannot reach the database {}: {}",
                    self.server,
                    crate::error::chain(&e)
                )));
            }
            Err(_) => return Err(out_of_time()),
        };
        // Until the query is over, dropping this (the call abandoned, or out of time) closes
        // the connection and cancels the query on the server: never a busy one in the pool.
        let busy = Busy {
            client: Some(client),
            db: self,
        };
        let left = remaining(Instant::now()).ok_or_else(out_of_time)?;
        let running = self.run(busy.client(), &statement, params, max_rows, left);
        let Ok((answer, clean)) = tokio::time::timeout(left, running).await else {
            return Err(out_of_time());
        };
        busy.done(clean && seen.large.load(Ordering::Relaxed) == large);
        match answer {
            Err(_) if seen.too_large.load(Ordering::Relaxed) != too_large => {
                Err(SqlError::TooLarge(format!(
                    "a row or message of the result is larger than the plugin's {} bytes (its \
                     memory cap); select less",
                    self.max_result_bytes
                )))
            }
            answer => answer,
        }
    }

    /// The statement in a read-only transaction bounded by `left`, then `ROLLBACK`, then
    /// `DISCARD ALL`: the four are sent at once (tokio-postgres pipelines requests in the order
    /// they are first polled), so a query costs one round trip to the server, not four. The
    /// server runs them in order; should the `BEGIN` fail, the statement still runs read-only
    /// (the connection's `default_transaction_read_only`), and its answer is not used. Also
    /// whether the session is clean again (`DISCARD ALL` ran: out of any transaction, no
    /// lock, setting or prepared statement left), so the connection may serve another call.
    async fn run(
        &self,
        client: &tokio_postgres::Client,
        statement: &str,
        params: &[Value],
        max_rows: u32,
        left: Duration,
    ) -> (Result<Vec<Vec<Value>>, SqlError>, bool) {
        // Rounded up: the server's cancel comes after the call's deadline, never before it, so a
        // statement that outlasts the call always ends as the call's timeout.
        let millis = (left.as_millis() + 1).min(i32::MAX as u128);
        let begin = format!("BEGIN READ ONLY; SET LOCAL statement_timeout = {millis}");
        // `DISCARD ALL` alone in its message: Postgres refuses it inside a transaction block,
        // which a message of several statements is.
        let (begun, rows, rolled_back, discarded) = futures::join!(
            client.batch_execute(&begin),
            self.rows(client, statement, params, max_rows),
            client.batch_execute("ROLLBACK"),
            client.batch_execute("DISCARD ALL"),
        );
        let clean = discarded.is_ok();
        let answer = begun
            .map_err(|e| self.failed(&e))
            .and(rows)
            .and_then(|rows| rolled_back.map(|()| rows).map_err(|e| self.failed(&e)));
        (answer, clean)
    }

    /// Streams the statement's rows in, within the row and byte caps.
    async fn rows(
        &self,
        client: &tokio_postgres::Client,
        statement: &str,
        params: &[Value],
        max_rows: u32,
    ) -> Result<Vec<Vec<Value>>, SqlError> {
        let owned: Vec<(Box<dyn ToSql + Sync + Send>, Type)> = params.iter().map(param).collect();
        let typed = owned
            .iter()
            .map(|(v, t)| (v.as_ref() as &(dyn ToSql + Sync), t.clone()));
        let stream = client
            .query_typed_raw(statement, typed)
            .await
            .map_err(|e| self.failed(&e))?;
        pin_mut!(stream);
        let max_rows = usize::try_from(max_rows.min(MAX_ROWS)).unwrap_or(usize::MAX);
        let (mut rows, mut bytes) = (Vec::new(), 0usize);
        while rows.len() < max_rows {
            let Some(row) = stream.next().await else {
                break;
            };
            let row = row.map_err(|e| self.failed(&e))?;
            let mut values = Vec::with_capacity(row.len());
            for (i, column) in row.columns().iter().enumerate() {
                let value = column_value(&row, i, column.type_())
                    .map_err(|e| self.failed(&e))?
                    .ok_or_else(|| {
                        SqlError::InvalidInput(format!(
                            "column {:?} is of type {}, which the sql interface cannot carry: \
                             cast it in the statement (e.g. {}::text)",
                            column.name(),
                            column.type_(),
                            column.name()
                        ))
                    })?;
                bytes += VALUE_OVERHEAD + value_len(&value);
                values.push(value);
            }
            if bytes > self.max_result_bytes {
                return Err(SqlError::InvalidInput(format!(
                    "the result is larger than the plugin's {} bytes",
                    self.max_result_bytes
                )));
            }
            rows.push(values);
        }
        Ok(rows)
    }

    /// A Postgres error as the guest sees it: the server refused the statement (a syntax error,
    /// a missing table or permission, a write in the read-only transaction) is
    /// `invalid-input`; anything else (connection lost, statement timeout) `unavailable`.
    fn failed(&self, e: &tokio_postgres::Error) -> SqlError {
        match e.as_db_error() {
            Some(db) if db.code() == &tokio_postgres::error::SqlState::QUERY_CANCELED => {
                SqlError::Unavailable(format!(
                    "the query on {} ran out of the call's time",
                    self.server
                ))
            }
            Some(db) => SqlError::InvalidInput(format!("{}: {}", db.severity(), db.message())),
            None => SqlError::Unavailable(format!(
                "the database {} failed: {}",
                self.server,
                crate::error::chain(e)
            )),
        }
    }
}

/// A pooled connection while its query runs: dropped before [`Busy::done`], it leaves the
/// pool closed and its query is cancelled on the server.
struct Busy<'a> {
    /// The connection (taken by `done` or `drop`).
    client: Option<Object>,
    /// Its database, for the cancel request.
    db: &'a PgDb,
}

impl Busy<'_> {
    /// The connection.
    fn client(&self) -> &tokio_postgres::Client {
        match &self.client {
            Some(client) => client,
            None => unreachable!("only `done` and `drop` take it, and both end the guard"),
        }
    }

    /// The query is over: the connection goes back to the pool if its session is `clean` and
    /// it is still open, else it is closed.
    fn done(mut self, clean: bool) {
        if let Some(client) = self.client.take()
            && (!clean || client.is_closed())
        {
            drop(Object::take(client));
        }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if !client.is_closed() {
                self.db
                    .connector
                    .cancel(&self.db.config, client.cancel_token());
            }
            drop(Object::take(client));
        }
    }
}

/// `url` without its `sslrootcert` parameter (libpq's, which tokio-postgres does not know),
/// and that parameter's value.
fn take_root_cert(url: &str) -> (String, Option<String>) {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return (url.to_owned(), None);
    };
    let mut root_cert = None;
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter_map(|(k, v)| {
            if k == "sslrootcert" {
                root_cert = Some(v.into_owned());
                None
            } else {
                Some((k.into_owned(), v.into_owned()))
            }
        })
        .collect();
    if root_cert.is_none() {
        return (url.to_owned(), None);
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    (parsed.to_string(), root_cert)
}

/// `host:port/dbname` of a connection config, without user or password.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", config.get_dbname().unwrap_or_default())
}

/// One parameter with the type it is sent as.
fn param(value: &Value) -> (Box<dyn ToSql + Sync + Send>, Type) {
    match value {
        Value::Null => (Box::new(None::<String>), Type::TEXT),
        Value::Integer(i) => (Box::new(*i), Type::INT8),
        Value::Real(r) => (Box::new(*r), Type::FLOAT8),
        Value::Text(t) => (Box::new(t.clone()), Type::TEXT),
        Value::Blob(b) => (Box::new(b.clone()), Type::BYTEA),
    }
}

/// Column `i` of `row` as a value, or `None` for a type the interface cannot carry.
fn column_value(
    row: &tokio_postgres::Row,
    i: usize,
    ty: &Type,
) -> Result<Option<Value>, tokio_postgres::Error> {
    macro_rules! get {
        ($t:ty, $into:expr) => {
            row.try_get::<_, Option<$t>>(i)?.map_or(Value::Null, $into)
        };
    }
    Ok(Some(match *ty {
        Type::BOOL => get!(bool, |b| Value::Integer(i64::from(b))),
        Type::INT2 => get!(i16, |v| Value::Integer(i64::from(v))),
        Type::INT4 => get!(i32, |v| Value::Integer(i64::from(v))),
        Type::INT8 => get!(i64, Value::Integer),
        Type::OID => get!(u32, |v| Value::Integer(i64::from(v))),
        Type::FLOAT4 => get!(f32, |v| Value::Real(f64::from(v))),
        Type::FLOAT8 => get!(f64, Value::Real),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            get!(String, Value::Text)
        }
        Type::JSON | Type::JSONB => get!(serde_json::Value, |v| Value::Text(v.to_string())),
        Type::BYTEA => get!(Vec<u8>, Value::Blob),
        _ => return Ok(None),
    }))
}

/// Bytes a value holds.
fn value_len(value: &Value) -> usize {
    match value {
        Value::Null | Value::Integer(_) | Value::Real(_) => 8,
        Value::Text(t) => t.len(),
        Value::Blob(b) => b.len(),
    }
}

/// Refuses a statement that is not one read: its first keyword (after white space and
/// comments) must be `SELECT`, `WITH`, `VALUES` or `TABLE`.
fn check_read_statement(statement: &str) -> Result<(), SqlError> {
    let mut rest = statement.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if rest.starts_with("/*") {
            rest = after_block_comment(rest).trim_start();
        } else {
            break;
        }
    }
    let word: String = rest
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect::<String>()
        .to_ascii_uppercase();
    if matches!(word.as_str(), "SELECT" | "WITH" | "VALUES" | "TABLE") {
        Ok(())
    } else {
        Err(SqlError::InvalidInput(format!(
            "only a read (SELECT, WITH, VALUES, TABLE) may run, not {word:?}"
        )))
    }
}

/// What follows the block comment `text` opens, which may nest (`/* a /* b */ c */`, as
/// Postgres reads it); empty when it is not closed.
fn after_block_comment(text: &str) -> &str {
    let bytes = text.as_bytes();
    let (mut depth, mut i) = (0usize, 0);
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return &text[i..];
                }
            }
            _ => i += 1,
        }
    }
    ""
}

/// `?N` parameters rewritten as Postgres' `$N`, outside quoted strings, quoted identifiers,
/// dollar-quoted strings and comments (a `?` followed by no digit, e.g. jsonb's operator, is
/// left alone).
fn positional_to_dollar(statement: &str) -> String {
    let bytes = statement.as_bytes();
    let mut out = String::with_capacity(statement.len());
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let skip_to = |from: usize, end: &str| {
            statement[from..]
                .find(end)
                .map_or(statement.len(), |at| from + at + end.len())
        };
        let next = match c {
            b'\'' => skip_to(i + 1, "'"),
            b'"' => skip_to(i + 1, "\""),
            b'-' if bytes.get(i + 1) == Some(&b'-') => skip_to(i + 2, "\n"),
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                statement.len() - after_block_comment(&statement[i..]).len()
            }
            b'$' => {
                // A dollar-quote tag `$tag$` (or `$$`) opens a string closed by the same tag.
                let tag_end = statement[i + 1..]
                    .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                    .map(|at| i + 1 + at);
                match tag_end {
                    Some(end) if bytes[end] == b'$' && !bytes[i + 1].is_ascii_digit() => {
                        let tag = &statement[i..=end];
                        skip_to(end + 1, tag)
                    }
                    _ => i + 1,
                }
            }
            b'?' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                out.push('$');
                i += 1;
                continue;
            }
            _ => i + 1,
        };
        out.push_str(&statement[i..next]);
        i = next;
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn positional_parameters_become_dollar_ones_outside_quotes_and_comments() {
        assert_eq!(
            positional_to_dollar("SELECT score FROM scores WHERE name = ?1"),
            "SELECT score FROM scores WHERE name = $1"
        );
        assert_eq!(
            positional_to_dollar("SELECT '?1', \"a?2\", $$?3$$, $t$?4$t$ -- ?5\n, ?6 /* ?7 */"),
            "SELECT '?1', \"a?2\", $$?3$$, $t$?4$t$ -- ?5\n, $6 /* ?7 */"
        );
        assert_eq!(
            positional_to_dollar("SELECT /* /* */ ?1 */ ?2"),
            "SELECT /* /* */ ?1 */ $2"
        );
        assert_eq!(
            positional_to_dollar("SELECT j ? 'k', $1"),
            "SELECT j ? 'k', $1"
        );
        assert_eq!(
            positional_to_dollar("SELECT 'unterminated ?1"),
            "SELECT 'unterminated ?1"
        );
    }

    #[test]
    fn only_a_read_statement_may_run() {
        for ok in [
            "SELECT 1",
            "  with x as (select 1) select * from x",
            "-- c\n/* d */ VALUES (1)",
            "/* a /* b */ c */ SELECT 1",
            "TABLE t",
        ] {
            assert!(check_read_statement(ok).is_ok(), "{ok}");
        }
        for bad in [
            "DELETE FROM t",
            "COMMIT",
            "set statement_timeout = 0",
            "",
            "/* SELECT */ DROP TABLE t",
            "/* /* */ SELECT */ COMMIT",
            "/* a /* b /* c */ SELECT */ */ PREPARE p AS SELECT 1",
            "/* /* unclosed */ SELECT 1",
            "CALL p()",
        ] {
            assert!(
                matches!(check_read_statement(bad), Err(SqlError::InvalidInput(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_bad_url_is_refused_and_a_good_one_names_no_password() {
        assert!(PgDb::open("postgres://u@[bad", 1 << 20).is_err());
        let db = PgDb::open("postgres://ro:s3cret@127.0.0.1:5999/app", 1 << 20).unwrap();
        assert_eq!(db.server, "127.0.0.1:5999/app");
        assert!(!format!("{db:?}").contains("s3cret"));
    }
}
