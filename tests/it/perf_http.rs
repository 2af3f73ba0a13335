//! `geecache-perf http` runs end to end, briefly, so the tool does not rot: the fixed-response
//! baselines and every workload against one node it starts, in two rounds, and every request
//! succeeds. No timing is asserted (the figures are the tool's business, not a test's). And
//! the servers it starts do not outlive it, even when it is killed with SIGKILL. And
//! `geecache-perf expiry` runs its two rows through a 3-node cluster, with one getter call per
//! expiry in the cluster when a stale window covers it. And the `groupcache` baseline (3 Go
//! groupcache nodes, tests/groupcache/main.go) runs beside our 3-node rows, with peer fetches,
//! the values synth_getter makes, and nodes that do not outlive the tool either. CI installs Go
//! and groupcache (tests/setup.sh); those tests fail without them. And `geecache-perf
//! hitratio` replays its traces on every store.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Flags of a brief `geecache-perf http` run: 1 s rows, a light client, few keys.
const BRIEF: [&str; 8] = [
    "--duration",
    "1s",
    "--connections",
    "4",
    "--threads",
    "1",
    "--keys",
    "100",
];

/// Runs `geecache-perf SUBCOMMAND` on this build's nodes with `args`, and returns its report.
/// Fails the test with the tool's output when the tool fails (`http` fails when any request
/// of any row failed; the table says which).
fn perf_report(subcommand: &str, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.md");
    let out = Command::new(env!("CARGO_BIN_EXE_geecache-perf"))
        .args([
            subcommand,
            "--host-bin",
            env!("CARGO_BIN_EXE_geecache-node"),
        ])
        .args(args)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "geecache-perf {subcommand} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::read_to_string(&report).unwrap()
}

/// The report's table line that starts with `| {first} |`, and its cells (the first one
/// empty, before the opening `|`).
fn row<'a>(text: &'a str, first: &str) -> (&'a str, Vec<&'a str>) {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("| {first} |")))
        .unwrap_or_else(|| panic!("no {first} row in the report:\n{text}"));
    (line, line.split('|').map(str::trim).collect())
}

#[test]
fn perf_http_runs_every_workload_against_one_node_and_every_request_succeeds() {
    let text = perf_report(
        "http",
        &[
            &[
                "--baselines",
                "hyper,axum",
                "--workloads",
                "hit,miss,zipf,mixed",
            ],
            &BRIEF[..],
            &["--zipf-keys", "1000", "--rounds", "2"],
        ]
        .concat(),
    );
    // The client's threads run under SCHED_BATCH by default, and the header says so.
    assert!(text.contains("under SCHED_BATCH (the default"), "{text}");
    assert!(
        text.contains("- Machine: ") && text.contains("Linux "),
        "{text}"
    );
    for row in ["hyper", "axum", "hit", "miss", "zipf", "mixed"] {
        let (line, cells) = self::row(&text, row);
        // | run | nodes | req/s | p50 | p99 | p99.9 | success % | ...
        assert_eq!(cells[7], "100.00", "{row}: {line}");
        assert!(cells[3].parse::<u64>().unwrap() > 0, "{row}: {line}");
        // | ... | node peak RSS | server CPU / req | CPU × hyper | CPU × hit | client CPU / req |
        for cpu in [&cells[15], &cells[18]] {
            let micros: f64 = cpu.trim_end_matches(" µs").parse().unwrap();
            assert!(micros > 0.0, "{row}: {line}");
        }
        let cpu_x_hyper: f64 = cells[16].parse().unwrap();
        assert!(cpu_x_hyper > 0.0, "{row}: {line}");
        if row == "hyper" {
            assert_eq!(cells[16], "1.00", "{line}");
        }
        // Against the 1-node hit: every workload but the hit itself.
        match row {
            "hyper" | "axum" | "hit" => assert_eq!(cells[17], "-", "{row}: {line}"),
            _ => assert!(cells[17].parse::<f64>().unwrap() > 0.0, "{row}: {line}"),
        }
        // Each round has its own line, with its own ratio to that round's baseline.
        for round in ["1", "2"] {
            let (line, cells) = self::row(&text, &format!("{round} | {row}"));
            // | round | run | req/s | × nginx | × hyper | × axum | × hit |
            assert!(cells[3].parse::<u64>().unwrap() > 0, "{line}");
            assert!(cells[5].parse::<f64>().unwrap() > 0.0, "{line}");
            assert!(cells[6].parse::<f64>().unwrap() > 0.0, "{line}");
        }
    }
}

/// The Go groupcache node program, built if needed; fails the test when Go is missing.
fn groupcache_binary() -> std::path::PathBuf {
    geecache_tests::groupcache::binary()
        .unwrap()
        .unwrap_or_else(|| {
            panic!(
                "Go or its groupcache package is not installed ({})",
                geecache_tests::groupcache::INSTALL
            )
        })
}

/// `groupcache hit@3` and `groupcache miss@3` run beside our `hit@3` and `miss@3`: every
/// request answered with a value of the right size, one getter call per all-miss request with
/// peer fetches between the Go nodes, and our rows compared with them (× groupcache and CPU ×
/// groupcache), a groupcache row with itself at 1.00.
#[test]
fn perf_http_measures_groupcache_beside_our_three_node_rows() {
    groupcache_binary();
    let text = perf_report(
        "http",
        &[
            &["--baselines", "groupcache", "--workloads", "hit@3,miss@3"],
            &BRIEF[..],
            &["--value-bytes", "37"],
        ]
        .concat(),
    );
    for row in ["groupcache hit@3", "groupcache miss@3", "hit@3", "miss@3"] {
        let (line, cells) = self::row(&text, row);
        // | run | nodes | req/s | p50 | p99 | p99.9 | success % | × nginx | × hyper | × axum |
        // × hit | getter calls / req | peer requests / req | node peak RSS | server CPU / req |
        // CPU × hyper | CPU × hit | client CPU / req | × groupcache | CPU × groupcache |
        assert_eq!(cells[2], "3", "{row}: {line}");
        assert!(cells[3].parse::<u64>().unwrap() > 0, "{row}: {line}");
        // Success counts only answers of --value-bytes bytes.
        assert_eq!(cells[7], "100.00", "{row}: {line}");
        let micros: f64 = cells[15].trim_end_matches(" µs").parse().unwrap();
        assert!(micros > 0.0, "{row}: {line}");
        if row.ends_with("miss@3") {
            // Every request a getter call (by the key's owner), 2/3 of them asked of a peer:
            // by groupcache one peer request each, by ours in batches.
            let getter: f64 = cells[12].parse().unwrap();
            assert!((0.9..=1.1).contains(&getter), "{row}: {line}");
            let peers: f64 = cells[13].parse().unwrap();
            let least = if row.starts_with("groupcache") {
                0.5
            } else {
                0.01
            };
            assert!(peers > least, "{row}: {line}");
        }
        if row.starts_with("groupcache") {
            assert_eq!(cells[19], "1.00", "{row}: {line}");
            assert_eq!(cells[20], "1.00", "{row}: {line}");
            assert_eq!(cells[17], "-", "{row}: {line}");
        } else {
            assert!(cells[19].parse::<f64>().unwrap() > 0.0, "{row}: {line}");
            assert!(cells[20].parse::<f64>().unwrap() > 0.0, "{row}: {line}");
        }
    }
}

/// A Go groupcache node answers a key with the very bytes a node's synth_getter makes for it,
/// so the groupcache rows move the same values as ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groupcache_node_serves_the_values_synth_getter_makes() {
    let bin = groupcache_binary();
    let dir = tempfile::tempdir().unwrap();
    let port = geecache_tests::free_port();
    let mut command = geecache_tests::node_command(
        env!("CARGO_BIN_EXE_geecache-node"),
        port,
        geecache_tests::plugins::SYNTH_GETTER,
    );
    command.args([
        "--plugin-config",
        "synth_getter.value_bytes=37",
        "--group",
        "perf",
    ]);
    let node = geecache_tests::NodeProcess::spawn(command, port, dir.path()).await;
    let go_port = geecache_tests::free_port();
    let log = dir.path().join("groupcache.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut go = KilledOnDrop(
        Command::new(&bin)
            .args(["--port", &go_port.to_string(), "--group", "perf"])
            .args(["--value-bytes", "37"])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    );
    let go_addr = std::net::SocketAddr::from(([127, 0, 0, 1], go_port));
    geecache_tests::wait_child_ready(
        "groupcache node",
        &mut go.0,
        Duration::from_secs(30),
        || std::fs::read_to_string(&log).unwrap_or_default(),
        || {
            geecache_tests::http_get_blocking(go_addr, "/readyz")
                .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
        },
    );
    for key in ["k1", "perf-key-2", "x"] {
        let path = format!("/api/v1/groups/perf/keys/{key}");
        let ours = reqwest::get(format!("{}{path}", node.base)).await.unwrap();
        assert_eq!(ours.status(), 200, "{key}");
        let ours = ours.bytes().await.unwrap();
        let theirs = reqwest::get(format!("http://{go_addr}{path}"))
            .await
            .unwrap();
        assert_eq!(theirs.status(), 200, "{key}");
        let theirs = theirs.bytes().await.unwrap();
        assert_eq!(ours.len(), 37, "{key}");
        assert_eq!(ours, theirs, "{key}");
    }
}

#[test]
fn perf_expiry_runs_both_rows_and_a_stale_window_makes_one_getter_call_per_expiry() {
    let text = perf_report(
        "expiry",
        &[
            "--duration",
            "4s",
            "--ttl",
            "1s",
            "--rate",
            "300",
            "--rounds",
            "1",
        ],
    );
    for row in ["0s", "10s"] {
        let (line, cells) = self::row(&text, row);
        // | stale | requests | p99 steady | p99 after | ratio | max after | calls per expiry | failed |
        assert_eq!(cells[8], "0", "{line}");
        assert!(cells[2].parse::<u64>().unwrap() > 1000, "{line}");
        if row == "10s" {
            // The owner refreshes once for its own clients and its peers' together.
            assert_eq!(cells[7], "1.00", "{line}");
        }
    }
}

/// `geecache-perf hitratio` replays both traces on the three stores, and the scan trace is
/// the one with scans in it: a store that kept every scanned key would hit less on it.
#[test]
fn perf_hitratio_replays_both_traces_on_every_store() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("hitratio.md");
    let out = Command::new(env!("CARGO_BIN_EXE_geecache-perf"))
        .args(["hitratio", "--keys", "2000", "--requests", "40000"])
        .args(["--scan-every", "1000", "--scan-length", "500"])
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "geecache-perf hitratio failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&report).unwrap();
    for trace in ["zipf", "scan"] {
        for store in ["node", "moka", "quick_cache"] {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("| {trace} | {store} |")))
                .unwrap_or_else(|| panic!("no {trace}/{store} row in the report:\n{text}"));
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let ratio: f64 = cells[3].parse().unwrap();
            // Zipf 0.99 over 2,000 keys with a tenth of them cached: well inside (0.3, 0.95).
            assert!((0.3..0.95).contains(&ratio), "{line}");
        }
    }
    assert!(
        text.contains("500 one-time keys after every 1000"),
        "{text}"
    );
}

/// The processes whose parent is `pid` (from `/proc/*/stat`), with their command lines.
fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let ppid = after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            found.push((child, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    found
}

/// Whether `pid` has ended (gone, or a zombie nobody has reaped yet).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .is_some_and(|i| stat[i + 1..].trim_start().starts_with(['Z', 'X'])),
    }
}

/// Waits (up to a minute) until `find` finds something, and returns it.
fn wait_for<T>(what: &str, mut find: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(found) = find() {
            return found;
        }
        assert!(Instant::now() < deadline, "no {what} within a minute");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed (SIGKILL) when dropped.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `geecache-perf http` with `args` (60 s rows), waits until `servers` finds the servers
/// it started, kills it with SIGKILL (no destructor runs), and checks that every one of those
/// servers ends within 15 s.
fn servers_end_with_a_killed_perf_tool(args: &[&str], servers: impl Fn(u32) -> Option<Vec<u32>>) {
    let perf = Command::new(env!("CARGO_BIN_EXE_geecache-perf"))
        .args(["http", "--host-bin", env!("CARGO_BIN_EXE_geecache-node")])
        .args(["--duration", "60s", "--connections", "2", "--threads", "1"])
        .args(["--keys", "10"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = perf.id();
    // Killed on every path: a failed wait must not leave the tool and its servers running.
    let mut perf = KilledOnDrop(perf);
    let running = wait_for("server started by the perf tool", || servers(pid));
    perf.0.kill().unwrap();
    perf.0.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !running.iter().all(|p| ended(*p)) {
        if Instant::now() > deadline {
            let left: Vec<u32> = running.iter().copied().filter(|p| !ended(*p)).collect();
            for p in &left {
                let _ = Command::new("kill")
                    .args(["-KILL", &p.to_string()])
                    .status();
            }
            panic!("servers {left:?} outlived the perf tool's SIGKILL");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The perf tool's nodes and its fixed-response server do not outlive it, even killed by
/// SIGKILL.
#[test]
fn a_killed_perf_tool_leaves_no_node_or_fixed_server_running() {
    servers_end_with_a_killed_perf_tool(&["--baselines", "none", "--workloads", "hit"], |perf| {
        let nodes: Vec<u32> = children_of(perf)
            .into_iter()
            .filter(|(_, cmd)| cmd.starts_with(env!("CARGO_BIN_EXE_geecache-node")))
            .map(|(pid, _)| pid)
            .collect();
        (!nodes.is_empty()).then_some(nodes)
    });
    servers_end_with_a_killed_perf_tool(&["--baselines", "axum", "--workloads", "none"], |perf| {
        let fixed: Vec<u32> = children_of(perf)
            .into_iter()
            // The server itself, not `setpriv` starting it (its parent-death signal is set
            // once `setpriv` has run the server).
            .filter(|(_, cmd)| {
                cmd.starts_with(env!("CARGO_BIN_EXE_geecache-perf")) && cmd.contains("fixed-server")
            })
            .map(|(pid, _)| pid)
            .collect();
        (!fixed.is_empty()).then_some(fixed)
    });
}

/// The Go groupcache nodes (the `groupcache` baseline) do not outlive the perf tool either.
#[test]
fn a_killed_perf_tool_leaves_no_groupcache_node_running() {
    let bin = groupcache_binary();
    let bin = bin.to_str().unwrap();
    servers_end_with_a_killed_perf_tool(
        &["--baselines", "groupcache", "--workloads", "none"],
        |perf| {
            let nodes: Vec<u32> = children_of(perf)
                .into_iter()
                .filter(|(_, cmd)| cmd.starts_with(bin))
                .map(|(pid, _)| pid)
                .collect();
            (nodes.len() == 3).then_some(nodes)
        },
    );
}

/// nginx (the baseline) does not outlive the perf tool either: its master is told to stop,
/// and stops its workers. CI installs nginx (`nginx-light`); this test fails without it.
#[test]
fn a_killed_perf_tool_leaves_no_nginx_running() {
    assert!(
        std::path::Path::new("/usr/sbin/nginx").exists() || which_nginx(),
        "nginx is not installed (Debian: apt-get install nginx-light)"
    );
    servers_end_with_a_killed_perf_tool(&["--baselines", "nginx", "--workloads", "none"], |perf| {
        let master = children_of(perf)
            .into_iter()
            .find(|(_, cmd)| cmd.starts_with("nginx: master"))?;
        let workers: Vec<u32> = children_of(master.0).into_iter().map(|(p, _)| p).collect();
        (!workers.is_empty()).then(|| [vec![master.0], workers].concat())
    });
}

/// Whether `nginx` is on the PATH.
fn which_nginx() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("nginx").exists()))
}
