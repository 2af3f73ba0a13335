//! The SQL capability offered to getters: an embedded SQLite database opened read-only.
//!
//! The host owns the connections, so a plugin can read only the one database the operator
//! configured for it, can never write to it, and cannot run past its call's deadline: epoch
//! interruption does not reach host code, so every query carries its own deadline through
//! SQLite's progress handler.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::bindings::sql::Value;

/// At most this many rows are returned by one query, whatever the plugin asks for.
pub const MAX_ROWS: u32 = 10_000;

/// Idle connections kept for reuse; more may be open while calls run concurrently.
const MAX_IDLE_CONNECTIONS: usize = 16;

/// SQLite checks the progress handler every this many virtual-machine instructions.
const PROGRESS_OPS: i32 = 1_000;

/// A read-only SQLite database shared by every call of one plugin.
#[derive(Debug)]
pub struct SqlDb {
    /// The database file, for messages.
    path: PathBuf,
    /// Connections not in use right now; opening one costs ~50 µs, a query a few µs.
    idle: Mutex<Vec<Connection>>,
}

/// Why a query failed, as the guest will see it.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The statement or its parameters are wrong.
    #[error("{0}")]
    InvalidInput(String),
    /// The database cannot be used right now, or the query ran out of time.
    #[error("{0}")]
    Unavailable(String),
}

impl SqlDb {
    /// Opens `path` read-only and checks that it is a readable SQLite database.
    ///
    /// # Errors
    /// A message naming the file and the fix when it is missing or not a database.
    pub fn open(path: &Path) -> Result<Self, String> {
        if !path.is_file() {
            return Err(format!(
                "database {} does not exist: run `bash plugins/build.sh` to create the demo \
                 database, or point the plugin at yours with --plugin-config NAME.database=PATH",
                path.display()
            ));
        }
        let db = SqlDb {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        };
        let conn = db.connect()?;
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| {
            row.get::<_, i64>(0)
        })
        .map_err(|e| format!("{} is not a readable SQLite database: {e}", path.display()))?;
        db.put_back(conn);
        Ok(db)
    }

    fn connect(&self) -> Result<Connection, String> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        Connection::open_with_flags(&self.path, flags)
            .map_err(|e| format!("cannot open database {}: {e}", self.path.display()))
    }

    fn take(&self) -> Result<Connection, String> {
        let idle = self.idle.lock().map(|mut v| v.pop()).unwrap_or(None);
        match idle {
            Some(conn) => Ok(conn),
            None => self.connect(),
        }
    }

    fn put_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE_CONNECTIONS
        {
            idle.push(conn);
        }
    }

    /// Runs one read-only statement with positional parameters, returning at most `max_rows`
    /// rows (and never more than [`MAX_ROWS`]), interrupted at `deadline`.
    ///
    /// # Errors
    /// [`SqlError::InvalidInput`] for a bad statement or parameters, [`SqlError::Unavailable`]
    /// when the database cannot be opened or the deadline passes.
    pub fn query(
        &self,
        statement: &str,
        params: &[Value],
        max_rows: u32,
        deadline: Instant,
    ) -> Result<Vec<Vec<Value>>, SqlError> {
        let conn = self.take().map_err(SqlError::Unavailable)?;
        conn.progress_handler(PROGRESS_OPS, Some(move || Instant::now() >= deadline));
        let result = run_query(&conn, statement, params, max_rows.min(MAX_ROWS));
        conn.progress_handler(0, None::<fn() -> bool>);
        self.put_back(conn);
        result.map_err(|e| classify(e, deadline))
    }
}

fn run_query(
    conn: &Connection,
    statement: &str,
    params: &[Value],
    max_rows: u32,
) -> rusqlite::Result<Vec<Vec<Value>>> {
    let mut stmt = conn.prepare_cached(statement)?;
    if !stmt.readonly() {
        return Err(rusqlite::Error::InvalidQuery);
    }
    let columns = stmt.column_count();
    let bound: Vec<rusqlite::types::Value> = params.iter().map(to_sqlite).collect();
    let mut rows = stmt.query(rusqlite::params_from_iter(bound))?;
    let mut out = Vec::new();
    while out.len() < max_rows as usize {
        let Some(row) = rows.next()? else { break };
        let mut values = Vec::with_capacity(columns);
        for i in 0..columns {
            values.push(from_sqlite(row.get_ref(i)?));
        }
        out.push(values);
    }
    Ok(out)
}

fn classify(e: rusqlite::Error, deadline: Instant) -> SqlError {
    match e {
        rusqlite::Error::SqliteFailure(err, _)
            if err.code == rusqlite::ErrorCode::OperationInterrupted
                || Instant::now() >= deadline =>
        {
            SqlError::Unavailable("query interrupted: the call's time limit passed".into())
        }
        rusqlite::Error::InvalidQuery => {
            SqlError::InvalidInput("only read-only statements are allowed".into())
        }
        rusqlite::Error::SqliteFailure(err, msg)
            if matches!(
                err.code,
                rusqlite::ErrorCode::CannotOpen
                    | rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::SystemIoFailure
            ) =>
        {
            SqlError::Unavailable(msg.unwrap_or_else(|| err.to_string()))
        }
        other => SqlError::InvalidInput(other.to_string()),
    }
}

fn to_sqlite(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as S;
    match v {
        Value::Null => S::Null,
        Value::Integer(i) => S::Integer(*i),
        Value::Real(f) => S::Real(*f),
        Value::Text(s) => S::Text(s.clone()),
        Value::Blob(b) => S::Blob(b.clone()),
    }
}

fn from_sqlite(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn demo_db() -> (tempfile::TempDir, SqlDb) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE scores(name TEXT PRIMARY KEY, score INTEGER);
             INSERT INTO scores VALUES ('Tom', 630), ('Jack', 589);",
        )
        .unwrap();
        drop(conn);
        let db = SqlDb::open(&path).unwrap();
        (dir, db)
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn reads_rows_with_parameters() {
        let (_dir, db) = demo_db();
        let rows = db
            .query(
                "SELECT score FROM scores WHERE name = ?1",
                &[Value::Text("Tom".into())],
                10,
                later(),
            )
            .unwrap();
        assert!(
            matches!(rows.as_slice(), [row] if matches!(row.as_slice(), [Value::Integer(630)]))
        );
    }

    #[test]
    fn refuses_writes() {
        let (_dir, db) = demo_db();
        let err = db
            .query("DELETE FROM scores", &[], 10, later())
            .unwrap_err();
        assert!(matches!(err, SqlError::InvalidInput(_)), "{err:?}");
    }

    #[test]
    fn a_runaway_query_is_interrupted_at_the_deadline() {
        let (_dir, db) = demo_db();
        let endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) \
                       SELECT count(*) FROM n";
        let deadline = Instant::now() + Duration::from_millis(50);
        let err = db.query(endless, &[], 1, deadline).unwrap_err();
        assert!(matches!(err, SqlError::Unavailable(_)), "{err:?}");
    }

    #[test]
    fn a_missing_database_names_the_fix() {
        let err = SqlDb::open(Path::new("/nonexistent/demo.db")).unwrap_err();
        assert!(err.contains("plugins/build.sh"), "{err}");
    }

    #[test]
    fn caps_rows() {
        let (_dir, db) = demo_db();
        let rows = db
            .query("SELECT name FROM scores", &[], 1, later())
            .unwrap();
        assert_eq!(rows.len(), 1);
    }
}
