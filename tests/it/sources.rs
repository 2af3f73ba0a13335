//! Getters that read a real source server: `db_getter`, unchanged, against a real Postgres on
//! 127.0.0.1 (tests/postgres.rs) through the host's `sql` interface.
//!
//! - It answers and caches as against SQLite (`postgres://` in its `database` picks the
//!   backend); the URL is the host's, not shown in the plugin's config.
//! - The host runs only one read statement, in a read-only transaction: a write, a second
//!   statement or a table the role may not read fail the get, and nothing changes.
//! - A query that outlasts the call is stopped on the server (`statement_timeout` = the call's
//!   remaining time; `pg_stat_activity` shows it gone) and the get answers 504.
//! - With the server down, a miss fails with 502 `source_unavailable` and nothing is cached;
//!   once it is back, the same key loads.
//!
//! The hostile getter (`escape_getter`, whose `sql:STATEMENT` keys run any statement) against
//! the same server:
//! - a 300 MB row is refused at its header: the node's peak memory grows by less than the
//!   plugin's memory cap;
//! - nested comments (`/* /* */ SELECT */ COMMIT`) do not hide a statement that is not a read;
//! - what a read leaves in its session (an advisory lock) is gone before the connection serves
//!   another call;
//! - a call abandoned mid-query cancels the query, and the next call does not wait for it;
//! - a connection that received a large row (over 1 MiB) is not pooled again.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use geecache_tests::pki::TestCa;
use geecache_tests::postgres::Postgres;
use geecache_tests::{NodeProcess, TestNode, plugins};

/// A node whose `db_getter` reads `pg` (with `query` as its statement, when given).
async fn node(pg: &Postgres, query: Option<&str>, extra: &[&str]) -> TestNode {
    let database = format!("db_getter.database={}", pg.url());
    let mut args = vec!["--plugin", plugins::DB_GETTER, "--plugin-config", &database];
    let query = query.map(|q| format!("db_getter.query={q}"));
    if let Some(q) = &query {
        args.extend(["--plugin-config", q]);
    }
    args.extend_from_slice(extra);
    TestNode::start(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_getter_reads_postgres_and_the_node_caches_what_it_read() {
    let pg = Postgres::start();
    let node = node(&pg, None, &[]).await;
    assert_eq!(node.get_key("scores", "Tom").await, (200, "630".to_owned()));
    assert_eq!(node.get_key("scores", "nobody").await.0, 404);
    // Cached: the row changes at the source, the node keeps serving what it loaded.
    pg.psql("app", "UPDATE scores SET score = 1 WHERE name = 'Tom'");
    assert_eq!(node.get_key("scores", "Tom").await, (200, "630".to_owned()));
    assert_eq!(
        node.get_key("scores", "Jack").await,
        (200, "589".to_owned())
    );
    let stats = node.group_stats("scores").await;
    assert_eq!(stats["loads"], 3, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_read_runs_and_what_the_role_may_not_read_stays_unread() {
    let pg = Postgres::start();
    for (query, why) in [
        ("DELETE FROM scores WHERE name = ?1", "a write"),
        (
            "SELECT 1; DELETE FROM scores WHERE name = ?1",
            "a second statement",
        ),
        (
            "WITH d AS (DELETE FROM scores WHERE name = ?1 RETURNING score) SELECT score FROM d",
            "a write inside a read",
        ),
        (
            "SELECT s FROM secrets WHERE s <> ?1",
            "a table the role may not read",
        ),
    ] {
        let node = node(&pg, Some(query), &[]).await;
        let (status, body) = node.get_key("scores", "Tom").await;
        assert!(status == 400 || status == 503, "{why}: {status} {body}");
        assert!(!body.contains("hidden"), "{why}: {body}");
    }
    // Nothing was deleted.
    let node = node(&pg, None, &[]).await;
    assert_eq!(node.get_key("scores", "Tom").await, (200, "630".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_outlasts_the_call_is_stopped_and_the_next_one_runs() {
    let pg = Postgres::start();
    let slow = "SELECT score FROM scores WHERE name = 'Tom' \
                AND (?1 <> 'slow' OR pg_sleep(30)::text = '')";
    let node = node(&pg, Some(slow), &["--plugin-timeout", "500ms"]).await;
    let started = std::time::Instant::now();
    let (status, body) = node.get_key("scores", "slow").await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("plugin_timeout"), "{body}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // The server cancelled the statement itself: no backend of the role is left in `pg_sleep`.
    let running = "SELECT count(*) FROM pg_stat_activity \
                   WHERE usename = 'ro_user' AND state = 'active' AND query LIKE '%pg_sleep%'";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while pg.psql("app", running).trim() != "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow statement still runs on the server"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The pool still serves: the next query gets a working connection.
    assert_eq!(
        node.get_key("scores", "fast").await,
        (200, "630".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_server_down_a_miss_fails_and_nothing_is_cached() {
    let pg = Postgres::start();
    let node = node(&pg, None, &[]).await;
    assert_eq!(node.get_key("scores", "Tom").await, (200, "630".to_owned()));
    pg.stop();
    let (status, body) = node.get_key("scores", "Jack").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("source_unavailable"), "{body}");
    // What was cached is still served.
    assert_eq!(node.get_key("scores", "Tom").await, (200, "630".to_owned()));
    pg.start_server();
    assert_eq!(
        node.get_key("scores", "Jack").await,
        (200, "589".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_getter_reads_postgres_over_tls_and_checks_the_servers_certificate() {
    let ca = TestCa::new("postgres test CA");
    let pg = Postgres::start_tls(&ca);
    let dir = tempfile::tempdir().unwrap();
    let start = |ca_file: std::path::PathBuf| {
        let database = format!(
            "db_getter.database={}?sslmode=require&sslrootcert={}",
            pg.url(),
            ca_file.display()
        );
        async move {
            TestNode::start(&["--plugin", plugins::DB_GETTER, "--plugin-config", &database]).await
        }
    };
    let node = start(ca.write(dir.path(), "ca")).await;
    assert_eq!(node.get_key("scores", "Tom").await, (200, "630".to_owned()));
    let over_tls = pg.psql(
        "app",
        "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.usename = 'ro_user'",
    );
    assert_eq!(over_tls.trim(), "t", "the node's connections use TLS");

    // A server whose certificate another CA signed is not the one asked for.
    let other = TestCa::new("another CA");
    let node = start(other.write(dir.path(), "other")).await;
    let (status, body) = node.get_key("scores", "Jack").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("source_unavailable"), "{body}");
}

/// The escape_getter node's path for the key `sql:STATEMENT` (group `scores`).
fn sql_key(statement: &str) -> String {
    let encoded: String = format!("sql:{statement}")
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("/api/v1/groups/scores/keys/{encoded}")
}

/// A node (in this process) whose one getter is escape_getter, reading `pg`.
async fn escape_node(pg: &Postgres, extra: &[&str]) -> TestNode {
    let database = format!("escape_getter.database={}", pg.url());
    let mut args = vec![
        "--plugin",
        plugins::ESCAPE_GETTER,
        "--plugin-config",
        &database,
    ];
    args.extend_from_slice(extra);
    TestNode::start(&args).await
}

/// Status and body of `sql:STATEMENT` on `node`.
async fn run_sql(node: &TestNode, statement: &str) -> (u16, String) {
    let (status, body) = node.get(&sql_key(statement)).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_row_is_refused_before_the_node_buffers_it() {
    const MIB: u64 = 1 << 20;
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let port = geecache_tests::free_port();
    let database = format!("escape_getter.database={}", pg.url());
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_geecache-node"));
    command
        .args([
            "--plugin",
            plugins::ESCAPE_GETTER,
            "--plugin-config",
            &database,
        ])
        .args(["--plugin-memory", "64MiB", "--plugin-timeout", "30s"])
        .args(["--port", &port.to_string()])
        .arg("--compile-cache-dir")
        .arg(geecache_tests::compile_cache_dir());
    let mut node = NodeProcess::spawn(command, port, dir.path()).await;
    let client = reqwest::Client::new();
    let base = node.base.clone();
    let get = |statement: &str| {
        let url = format!("{base}{}", sql_key(statement));
        let client = client.clone();
        async move {
            let r = client.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // Warm: the plugin instance and a pooled connection exist before the peak is read.
    assert_eq!(get("SELECT 'warm'").await, (200, "warm".to_owned()));
    let (_, peak_before) = node.memory();
    let (status, body) = get("SELECT repeat('x', 300000000)").await;
    let (_, peak_after) = node.memory();
    assert_eq!(status, 400, "{}", &body[..body.len().min(300)]);
    assert!(body.contains("larger than"), "{body}");
    eprintln!(
        "node peak RSS {} MiB before the 300 MB row, {} MiB after",
        peak_before / MIB,
        peak_after / MIB
    );
    assert!(
        peak_after - peak_before < 64 * MIB,
        "the node's peak memory grew by {} MiB",
        (peak_after - peak_before) / MIB
    );
    // Counted, and the pool still serves.
    let metrics = node.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("geecache_plugin_sql_too_large_total{") && l.ends_with(" 1")),
        "{metrics}"
    );
    assert_eq!(get("SELECT 'after'").await, (200, "after".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_comments_do_not_hide_a_statement_that_is_not_a_read() {
    let pg = Postgres::start();
    let node = escape_node(&pg, &[]).await;
    for statement in [
        "/* /* */ SELECT */ COMMIT",
        "/* /* */ SELECT */ PREPARE p AS SELECT 1",
    ] {
        let (status, body) = run_sql(&node, statement).await;
        assert_eq!(status, 400, "{statement}: {body}");
        assert!(
            body.contains("plugin_error") && body.contains("only a read"),
            "{body}"
        );
    }
    assert_eq!(
        run_sql(&node, "/* a /* b */ c */ SELECT 'read'").await,
        (200, "read".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_read_leaves_in_its_session_is_gone_before_the_next_call() {
    let pg = Postgres::start();
    let node = escape_node(&pg, &[]).await;
    let (status, body) = run_sql(&node, "SELECT pg_advisory_lock(4242)::text").await;
    assert_eq!(status, 200, "{body}");
    let held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242";
    assert_eq!(
        pg.psql("app", held).trim(),
        "0",
        "the pooled connection holds the lock"
    );
    // The session's reset keeps what the node set when it connected.
    assert_eq!(
        run_sql(
            &node,
            "SELECT current_setting('default_transaction_read_only')"
        )
        .await,
        (200, "on".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_abandoned_mid_query_cancels_it_and_the_next_call_does_not_wait() {
    let pg = Postgres::start();
    let node = escape_node(&pg, &["--plugin-timeout", "10s"]).await;
    // One pooled connection: the one the abandoned call will take.
    assert_eq!(
        run_sql(&node, "SELECT 'warm'").await,
        (200, "warm".to_owned())
    );
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let abandoned = impatient
        .get(format!(
            "{}{}",
            node.base,
            sql_key("SELECT pg_sleep(2.5)::text")
        ))
        .send()
        .await;
    assert!(abandoned.is_err(), "the client gave up: {abandoned:?}");
    let gave_up = Instant::now();
    // Time for the node to see its client gone and drop the call (else the next call finds
    // the connection still checked out, and takes a new one whatever the pool does).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let (status, body) = run_sql(&node, "SELECT 'next'").await;
    assert_eq!((status, body.as_str()), (200, "next"));
    assert!(
        asked.elapsed() < Duration::from_millis(1000),
        "the next call waited {:?} for the abandoned query",
        asked.elapsed()
    );
    // The server stopped the abandoned statement well before its 2.5 s.
    let running = "SELECT count(*) FROM pg_stat_activity \
                   WHERE usename = 'ro_user' AND state = 'active' AND query LIKE '%pg_sleep%'";
    while pg.psql("app", running).trim() != "0" {
        assert!(
            gave_up.elapsed() < Duration::from_millis(1500),
            "the abandoned statement still runs on the server"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_received_a_large_row_is_closed_not_pooled() {
    let pg = Postgres::start();
    let node = escape_node(&pg, &["--plugin-timeout", "10s"]).await;
    let pid = |statement: &'static str| {
        let node = &node;
        async move {
            let (status, body) = run_sql(node, statement).await;
            assert_eq!(status, 200, "{body}");
            body
        }
    };
    // One pooled connection, used again by the next small query...
    let first = pid("SELECT pg_backend_pid()::text").await;
    assert_eq!(
        pid("SELECT pg_backend_pid()::text /* again */").await,
        first
    );
    // ...but not after a 2 MB row came through it: its read buffer would keep that size.
    let _ = run_sql(&node, "SELECT repeat('x', 2000000)").await;
    let after = pid("SELECT pg_backend_pid()::text /* after */").await;
    assert_ne!(
        after, first,
        "the connection that took the large row was pooled again"
    );
}
