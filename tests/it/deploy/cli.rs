//! `geecache` (cli/) against real nodes: every command, failover past a dead URL, tokens from
//! the environment, the node's error codes and the exit statuses, TLS with --ca.

use std::process::Command;

use geecache_tests::{ADMIN_TOKEN, TestNode, pki::TestCa, plugins};

/// What one run of the client gave.
#[derive(Debug)]
struct Run {
    /// Its exit status (`-1` when killed by a signal).
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `geecache ARGS` with only the `GEECACHE_*` variables of `env` (none inherited).
async fn geecache(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_geecache-cli"));
    command.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("GEECACHE_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A URL nothing listens on (a port bound then released).
fn dead_url() -> String {
    format!("http://127.0.0.1:{}", geecache_tests::free_port())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_gets_sets_deletes_and_batches_on_a_real_cluster() {
    let nodes = TestNode::cluster(
        2,
        &[
            "--plugin",
            plugins::DB_GETTER,
            "--plugin-config",
            "db_getter.database={db}",
            "--api-token",
            "api-secret",
            "--cluster-secret",
            "cluster-secret",
        ],
    )
    .await;
    let (a, b) = (nodes[0].base.clone(), nodes[1].base.clone());
    // The first URL is dead: the client goes on to the next.
    let urls = format!("{},{a}", dead_url());

    let run = geecache(&["get", "Tom", "--url", &urls], &[]).await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "630\n"), "{run:?}");

    let run = geecache(&["get", "Nobody", "--url", &a], &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("404 key_not_found"), "{run:?}");

    // Writes need the API token, read from the node's own variable.
    let run = geecache(&["set", "k1", "v1", "--url", &a], &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("401 unauthorized"), "{run:?}");
    let token = [("GEECACHE_API_TOKEN", "api-secret")];
    let run = geecache(&["set", "k1", "v1", "--ttl", "1m", "--url", &a], &token).await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "OK\n"), "{run:?}");
    let run = geecache(&["get", "k1", "--url", &b, "--json"], &[]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let answer: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(answer, serde_json::json!({"key": "k1", "value": "v1"}));
    let run = geecache(&["del", "k1", "--url", &b], &token).await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "OK\n"), "{run:?}");
    let run = geecache(&["get", "k1", "--url", &a], &[]).await;
    assert!(
        run.code == 1 && run.stderr.contains("key_not_found"),
        "{run:?}"
    );

    // A batch: plain lines, exit 1 when a key has an error; JSON as the node answered.
    let run = geecache(&["batch", "Tom", "Jack", "--url", &a], &[]).await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "Tom\t630\nJack\t589\n"),
        "{run:?}"
    );
    let run = geecache(&["batch", "Tom", "Nobody", "--url", &b, "--json"], &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    let answer: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(answer["results"][0]["value"], "630");
    assert_eq!(answer["results"][1]["error"]["code"], "key_not_found");

    let run = geecache(&["stats", "--url", &a, "--json"], &[]).await;
    let stats: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(stats["groups"][0]["name"], "scores", "{run:?}");
    let run = geecache(&["cluster", "--url", &a], &[]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.matches("\nmember ").count(), 2, "{run:?}");
    assert!(run.stdout.contains(&nodes[1].addr.to_string()), "{run:?}");

    // Admin routes: the admin token, from its variable.
    let run = geecache(&["flush", "--url", &a], &token).await;
    assert_eq!(run.code, 1, "{run:?}");
    let admin = [("GEECACHE_ADMIN_TOKEN", ADMIN_TOKEN)];
    let run = geecache(&["flush", "--cluster", "--url", &a, "--json"], &admin).await;
    assert_eq!(run.code, 0, "{run:?}");
    let answer: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(answer["complete"], true, "{run:?}");
    let run = geecache(&["reload", "db_getter", "--url", &b], &admin).await;
    assert_eq!(run.code, 0, "{run:?}");
    let run = geecache(&["reload", "no_such_plugin", "--url", &b], &admin).await;
    assert!(
        run.code == 1 && run.stderr.contains("plugin_not_found"),
        "{run:?}"
    );

    // No node reachable: exit 3, each URL named.
    let (d1, d2) = (dead_url(), dead_url());
    let run = geecache(&["get", "Tom", "--url", &format!("{d1},{d2}")], &[]).await;
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains(&d1) && run.stderr.contains(&d2),
        "{run:?}"
    );
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_trusts_the_ca_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("geecache test CA");
    let ca_file = ca.write(dir.path(), "ca");
    let (cert, key) = ca.issue(dir.path(), "node", &["127.0.0.1"]);
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let node = TestNode::with_db_getter(&["--tls-cert", &cert, "--tls-key", &key]).await;
    let url = format!("https://{}", node.addr);

    let ca_arg = ca_file.display().to_string();
    let run = geecache(&["get", "Tom", "--url", &url, "--ca", &ca_arg], &[]).await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "630\n"), "{run:?}");
    // The same CA from the environment.
    let run = geecache(&["get", "Tom", "--url", &url], &[("GEECACHE_CA", &ca_arg)]).await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "630\n"), "{run:?}");
    // Without it, the system's roots do not know this CA: no answer is taken.
    let run = geecache(&["get", "Tom", "--url", &url], &[]).await;
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    node.stop().await;
}
