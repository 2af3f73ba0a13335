//! `geecache-perf http` runs end to end, briefly, so the tool does not rot: the fixed-response
//! baseline and every workload against one node it starts, in two rounds, and every request
//! succeeds. No timing
//! is asserted (the figures are the tool's business, not a test's).

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn perf_http_runs_every_workload_against_one_node_and_every_request_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("http.md");
    let out = Command::new(env!("CARGO_BIN_EXE_geecache-perf"))
        .args(["http", "--host-bin", env!("CARGO_BIN_EXE_geecache-node")])
        .args(["--baselines", "axum", "--workloads", "hit,miss,zipf,mixed"])
        .args(["--duration", "1s", "--connections", "4", "--threads", "1"])
        .args(["--keys", "100", "--zipf-keys", "1000", "--rounds", "2"])
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The tool fails when any request of any row failed; the table says which.
    assert!(
        out.status.success(),
        "geecache-perf http failed ({}):\n{stderr}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    let text = std::fs::read_to_string(&report).unwrap();
    for row in ["axum", "hit", "miss", "zipf", "mixed"] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("| {row} |")))
            .unwrap_or_else(|| panic!("no {row} row in the report:\n{text}"));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | run | nodes | req/s | p50 | p99 | p99.9 | success % | ...
        assert_eq!(cells[7], "100.00", "{row}: {line}");
        assert!(cells[3].parse::<u64>().unwrap() > 0, "{row}: {line}");
        // Each round has its own line, with its own ratio to that round's baseline.
        for round in ["1", "2"] {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("| {round} | {row} |")))
                .unwrap_or_else(|| panic!("no round {round} of {row} in the report:\n{text}"));
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // | round | run | req/s | × nginx | × axum | × hit |
            assert!(cells[3].parse::<u64>().unwrap() > 0, "{line}");
            assert!(cells[5].parse::<f64>().unwrap() > 0.0, "{line}");
        }
    }
}
