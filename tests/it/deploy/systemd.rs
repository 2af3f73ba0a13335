//! deploy/systemd/geecache.service: `systemd-analyze verify` finds nothing to say about it,
//! and its command line with its environment (the unit's `Environment=` lines, every
//! `GEECACHE_` name one the node reads) serves Tom, reloads on SIGHUP and stops on SIGTERM
//! within `TimeoutStopSec`. systemd is not PID 1 here, so the unit is not started by systemd
//! itself: the test runs what `ExecStart` names the way the unit sets it up.

use std::process::Command;
use std::time::{Duration, Instant};

use super::repo as repo_root;
use super::{DeployedNode, IMAGE_CACHE};

/// `systemd-analyze`, from Debian's `systemd` (tests/setup.sh installs it).
const SYSTEMD_ANALYZE: &str = "systemd-analyze";

/// Where the unit expects the program.
const UNIT_BIN: &str = "/usr/local/bin/geecache-host";

/// The `GEECACHE_…` variables the node reads, from its `--help` (`[env: NAME=]`).
pub fn node_variables() -> Vec<String> {
    let help = Command::new(env!("CARGO_BIN_EXE_geecache-node"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout).into_owned();
    text.match_indices("[env: ")
        .map(|(i, _)| {
            text[i + 6..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect()
}

/// Every `GEECACHE_…` name in `text` that the node does not read (a misspelt one would be
/// ignored by the node without a word).
pub fn unknown_variables(text: &str) -> Vec<String> {
    let known = node_variables();
    assert!(
        known.len() > 40,
        "--help lists too few variables: {known:?}"
    );
    text.match_indices("GEECACHE_")
        .map(|(i, _)| {
            text[i..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| name.len() > "GEECACHE_".len() && !known.contains(name))
        .collect()
}

/// The values of `key=` lines of the unit, in order.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

/// Runs a command line of the unit with `$MAINPID` as `pid`, and checks it succeeded.
fn as_systemd_would(line: &str, pid: &str) {
    let words: Vec<String> = line
        .split_whitespace()
        .map(|w| w.replace("$MAINPID", pid))
        .collect();
    let status = Command::new(&words[0]).args(&words[1..]).status().unwrap();
    assert!(status.success(), "{line}: {status}");
}

#[test]
fn the_systemd_unit_verifies_and_its_command_serves_reloads_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let unit_path = repo_root().join("deploy/systemd/geecache.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    for key in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "StateDirectory=geecache",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.lines().any(|l| l == key), "the unit has no {key}");
    }
    assert_eq!(unit_values(&unit, "MemoryMax").len(), 1);

    // verify needs the program to exist: the unit as installed, with this build's node.
    let checked = dir.path().join("geecache.service");
    std::fs::write(
        &checked,
        unit.replace(UNIT_BIN, env!("CARGO_BIN_EXE_geecache-node")),
    )
    .unwrap();
    let out = Command::new("timeout")
        .args(["60", SYSTEMD_ANALYZE, "verify", "--man=no"])
        .arg(&checked)
        .output()
        .unwrap_or_else(|e| panic!("{SYSTEMD_ANALYZE}: {e} (tests/setup.sh installs systemd)"));
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    // It warns (and still exits 0) about unknown keys and bad values: any word fails.
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );

    let env_file =
        std::fs::read_to_string(repo_root().join("deploy/systemd/geecache.env")).unwrap();
    let unknown = unknown_variables(&(unit.clone() + &env_file));
    assert!(
        unknown.is_empty(),
        "variables the node does not read: {unknown:?}"
    );

    // Its command, as systemd would run it: the unit's environment, the plugins and database
    // where the unit expects them (here a temp dir), the cache directory systemd makes.
    let exec = unit_values(&unit, "ExecStart")[0].replace("${CACHE_DIRECTORY}", IMAGE_CACHE);
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some(UNIT_BIN));
    let args: Vec<String> = words.map(str::to_owned).collect();
    let env: Vec<(String, String)> = unit_values(&unit, "Environment")
        .into_iter()
        .map(|a| {
            let (name, value) = a.split_once('=').unwrap();
            (name.to_owned(), value.to_owned())
        })
        .collect();
    let mut node = DeployedNode::start(dir.path(), &args, &env, geecache_tests::free_port());
    let cache = dir.path().join("cache");
    assert!(
        std::fs::read_dir(&cache).unwrap().next().is_some(),
        "nothing compiled into the cache directory"
    );
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(
        log.lines().all(|l| l.starts_with('{')),
        "GEECACHE_LOG_JSON: {log}"
    );
    let addr = node.addr;
    let log_path = node.log.clone();
    let tail = || geecache_tests::log_tail(&std::fs::read_to_string(&log_path).unwrap_or_default());
    let child = &mut node.child;

    // ExecReload (SIGHUP), and it keeps serving.
    let pid = child.id().to_string();
    as_systemd_would(unit_values(&unit, "ExecReload")[0], &pid);
    std::thread::sleep(Duration::from_millis(300));
    let answer = geecache_tests::http_get_blocking(addr, "/api?key=Tom").unwrap_or_default();
    assert!(
        answer.ends_with("\r\n\r\n630"),
        "after SIGHUP: {answer}\n{}",
        tail()
    );

    // KillSignal within TimeoutStopSec.
    let stop_within = unit_values(&unit, "TimeoutStopSec")[0];
    let stop_within = Duration::from_secs(stop_within.trim_end_matches('s').parse().unwrap());
    let kill_signal = unit_values(&unit, "KillSignal")[0];
    as_systemd_would(&format!("/bin/kill -s {kill_signal} $MAINPID"), &pid);
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < stop_within,
            "still running {stop_within:?} after SIGTERM:\n{}",
            tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(child.wait().unwrap().success(), "{}", tail());
}
