//! The `sql` capability: a getter's database behind the `sql` interface, an embedded SQLite
//! file (the default, see `sqlite.rs`) or a Postgres server (`postgres.rs`, its connections
//! in `postgres_conn.rs`), picked by the form of its `database` value. [`add_to_linker`] gives
//! a getter's linker the interface; its errors are [`SqlError`]s, turned here into the
//! guest's `error` (a too-large answer counted in the plugin's `sql_too_large`, an unreachable
//! database marking the call's source as failed).

mod postgres;
mod postgres_conn;
pub mod sqlite;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use wasmtime::component::{HasSelf, Linker};

use self::postgres::PgDb;
pub(crate) use self::postgres::is_postgres_url;
use self::sqlite::SqlDb;
pub use self::sqlite::SqlError;
use crate::plugin::bindings::sql::Value;
use crate::plugin::bindings::{sql, types};
use crate::plugin::host::HostState;

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

/// The SQL capability's metric (labels `plugin` and `kind`, as every plugin series).
pub const METRICS: geecache_core::metrics::Table = &[(
    "geecache_plugin_sql_too_large_total",
    "SQL queries refused: a value, row, server message or result over the plugin's memory cap.",
)];

/// The series of [`METRICS`] for one plugin.
pub(crate) fn series(p: &crate::plugin::PluginSnapshot) -> (&'static str, f64) {
    (
        "geecache_plugin_sql_too_large_total",
        p.sql_too_large as f64,
    )
}

/// Adds the `sql` interface, served by [`HostState`]'s database, to a getter's `linker`.
///
/// # Errors
/// When the interface is in the linker already.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    sql::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

impl sql::Host for HostState {
    async fn query(
        &mut self,
        statement: String,
        params: Vec<sql::Value>,
        max_rows: u32,
    ) -> wasmtime::Result<Result<Vec<Vec<sql::Value>>, types::Error>> {
        let Some(db) = self.sql.clone() else {
            return Ok(Err(types::Error::Unavailable(
                "no database is configured for this plugin (set NAME.database)".into(),
            )));
        };
        let answer = db.query(statement, params, max_rows, self.deadline).await;
        Ok(answer.map_err(|e| match e {
            SqlError::InvalidInput(m) => types::Error::InvalidInput(m),
            SqlError::TooLarge(m) => {
                self.stats.sql_too_large.fetch_add(1, Ordering::Relaxed);
                types::Error::InvalidInput(m)
            }
            SqlError::Unavailable(m) => {
                self.source_failed.store(true, Ordering::Relaxed);
                types::Error::Unavailable(m)
            }
        }))
    }
}
