//! SQLite's process-wide hard heap limit, in a test binary of its own (not a module of
//! tests/it/): the limit holds for the whole process, so a test that runs into it must not share
//! the process with other SQLite use.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use geecache_host::plugin::caps::sql::sqlite::{HEAP_LIMIT, SqlDb, SqlError};
use geecache_tests::demo_db;

#[test]
fn plugin_queries_never_take_sqlite_past_its_heap_limit() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqlDb::open(&demo_db(dir.path()), 64 << 20).unwrap();
    // Five 60 MB columns: each one within SQLITE_LIMIT_LENGTH (the 64 MiB plugin memory cap),
    // together past the 256 MiB heap limit. Before the limit, SQLite built all 300 MB.
    assert_eq!(HEAP_LIMIT, 256 << 20);
    let columns: Vec<String> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|c| format!("printf('%.*c', 60000000, '{c}')"))
        .collect();
    let statement = format!("SELECT {}", columns.join(", "));
    let later = Instant::now() + Duration::from_secs(60);
    match db.query(&statement, &[], 1, later) {
        Err(SqlError::InvalidInput(m)) => assert!(m.contains("out of memory"), "{m}"),
        other => panic!("expected out of memory, got {:?}", other.map(|r| r.len())),
    }
    // The database still serves ordinary reads.
    let rows = db
        .query("SELECT score FROM scores WHERE name = 'Tom'", &[], 1, later)
        .unwrap();
    assert_eq!(rows.len(), 1);
}
