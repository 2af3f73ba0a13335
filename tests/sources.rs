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

#![allow(clippy::unwrap_used)]

use geecache_tests::pki::TestCa;
use geecache_tests::postgres::Postgres;
use geecache_tests::{TestNode, plugins};

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
