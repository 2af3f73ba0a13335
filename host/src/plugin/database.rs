//! A getter's database behind the `sql` interface: an embedded SQLite file (the default, see
//! `sql.rs`) or a Postgres server (`postgres.rs`), picked by the form of its `database` value.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bindings::sql::Value;
use super::postgres::{PgDb, is_postgres_url};
use super::sql::{SqlDb, SqlError};

/// How long a SQLite query may run on the calling (async worker) thread. A query that needs
/// more is stopped and run again on a blocking thread, where it may take the rest of the call's
/// time: most queries of a getter take microseconds and pay no thread hop, and a slow one holds
/// a worker for at most this long.
const INLINE_SQL_SLICE: Duration = Duration::from_millis(2);

/// One plugin's database.
#[derive(Debug)]
pub enum Database {
    /// A SQLite file, opened read-only.
    Sqlite(Arc<SqlDb>),
    /// A Postgres server, through a pool (boxed: its pool and connection settings are large).
    Postgres(Box<PgDb>),
}

impl Database {
    /// The database `database` names: a `postgres://` URL, or a SQLite file path. One result
    /// may hold at most `max_result_bytes`.
    ///
    /// # Errors
    /// A message naming what is wrong and the fix.
    pub fn open(database: &str, max_result_bytes: usize) -> Result<Database, String> {
        if is_postgres_url(database) {
            PgDb::open(database, max_result_bytes).map(|db| Database::Postgres(Box::new(db)))
        } else {
            SqlDb::open(Path::new(database), max_result_bytes)
                .map(|db| Database::Sqlite(Arc::new(db)))
        }
    }

    /// Runs one read statement by `deadline` (see each backend).
    ///
    /// # Errors
    /// As [`SqlError`].
    pub async fn query(
        &self,
        statement: String,
        params: Vec<Value>,
        max_rows: u32,
        deadline: Instant,
    ) -> Result<Vec<Vec<Value>>, SqlError> {
        match self {
            Database::Postgres(db) => db.query(&statement, &params, max_rows, deadline).await,
            Database::Sqlite(db) => {
                let slice_end = Instant::now() + INLINE_SQL_SLICE;
                match db.query_within(&statement, &params, max_rows, deadline, slice_end) {
                    Some(answer) => answer,
                    None => {
                        let db = Arc::clone(db);
                        tokio::task::spawn_blocking(move || {
                            db.query(&statement, &params, max_rows, deadline)
                        })
                        .await
                        .unwrap_or_else(|e| {
                            Err(SqlError::Unavailable(format!("the query failed: {e}")))
                        })
                    }
                }
            }
        }
    }
}
