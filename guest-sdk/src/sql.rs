//! Read-only SQL queries against the host's database (getters only).
//!
//! The host owns the connection (SQLite embedded by default, opened read-only) and bounds every
//! query by the call's time limit.
//!
//! ```no_run
//! use geecache_guest_sdk::sql::{self, Value};
//!
//! # fn main() -> Result<(), geecache_guest_sdk::Error> {
//! let rows = sql::query("SELECT score FROM scores WHERE name = ?1", &["Tom".into()], 1)?;
//! if let Some(Value::Integer(score)) = rows.first().and_then(|row| row.first()) {
//!     assert_eq!(*score, 630);
//! }
//! # Ok(())
//! # }
//! ```

use crate::Error;
use crate::wit::getter::geecache::plugin0_1_0::sql as wit;

/// One SQL value, as in SQLite's type system.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit signed integer.
    Integer(i64),
    /// A 64-bit float.
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// Raw bytes.
    Blob(Vec<u8>),
}

/// One result row: the columns in the order of the statement's result columns.
pub type Row = Vec<Value>;

/// Runs one read-only statement with positional parameters (`?1`, `?2`, ...) and returns up to
/// `max_rows` rows.
///
/// Natively (in a plugin's unit tests) the [`FakeHost`](crate::testing::FakeHost) the test runs
/// under answers.
///
/// # Errors
///
/// [`Error::InvalidInput`] for a bad statement or parameters, [`Error::Unavailable`] when the
/// database cannot be reached or the query ran out of time.
pub fn query(statement: &str, params: &[Value], max_rows: u32) -> Result<Vec<Row>, Error> {
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::sql_query(statement, params, max_rows);
    #[cfg(target_arch = "wasm32")]
    return query_host(statement, params, max_rows);
}

#[cfg(target_arch = "wasm32")]
fn query_host(statement: &str, params: &[Value], max_rows: u32) -> Result<Vec<Row>, Error> {
    let params: Vec<wit::Value> = params.iter().cloned().map(Into::into).collect();
    let rows = wit::query(statement, &params, max_rows)?;
    Ok(rows
        .into_iter()
        .map(|row| row.into_iter().map(Into::into).collect())
        .collect())
}

impl From<Value> for wit::Value {
    fn from(value: Value) -> Self {
        match value {
            Value::Null => Self::Null,
            Value::Integer(v) => Self::Integer(v),
            Value::Real(v) => Self::Real(v),
            Value::Text(v) => Self::Text(v),
            Value::Blob(v) => Self::Blob(v),
        }
    }
}

impl From<wit::Value> for Value {
    fn from(value: wit::Value) -> Self {
        match value {
            wit::Value::Null => Self::Null,
            wit::Value::Integer(v) => Self::Integer(v),
            wit::Value::Real(v) => Self::Real(v),
            wit::Value::Text(v) => Self::Text(v),
            wit::Value::Blob(v) => Self::Blob(v),
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Integer(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Self::Real(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Self::Blob(v)
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Self::Blob(v.to_vec())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}
