//! deploy/prometheus-rules.yml and deploy/prometheus.yml, checked and unit-tested by promtool;
//! the rules name only metrics docs/metrics.md documents; the scrape config lists the ports
//! tests/start_servers.sh starts its nodes on, and those nodes get a cluster secret.

use std::collections::BTreeSet;

use super::repo as repo_root;
use crate::support::prometheus as promtool;

fn deploy_file(name: &str) -> String {
    repo_root().join("deploy").join(name).display().to_string()
}

/// Every `geecache_…` name in `text`, without a histogram's `_bucket`/`_count`/`_sum`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("geecache_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        names.insert(base.to_owned());
    }
    names
}

#[test]
fn promtool_checks_and_unit_tests_the_alerts_and_the_scrape_config() {
    let rules = deploy_file("prometheus-rules.yml");
    let (ok, out) = promtool::promtool(&["check", "rules", &rules], "");
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = promtool::promtool(&["check", "config", &deploy_file("prometheus.yml")], "");
    assert!(ok, "promtool check config:\n{out}");
    assert!(
        out.contains("1 rule files found"),
        "the config loads no rules:\n{out}"
    );
    let tests = deploy_file("prometheus-rules.test.yml");
    let (ok, out) = promtool::promtool(&["test", "rules", &tests], "");
    assert!(ok, "promtool test rules:\n{out}");

    let text = std::fs::read_to_string(&rules).unwrap();
    for alert in [
        "GeecacheNodeDown",
        "GeecacheRingDisagreement",
        "GeecacheGetterErrors",
        "GeecachePeerErrors",
        "GeecacheInflightBudgetSpent",
        "GeecacheCacheNearBudget",
        "GeecacheHttp5xx",
    ] {
        assert!(text.contains(&format!("alert: {alert}\n")), "no {alert}");
    }
    let documented =
        metric_names(&std::fs::read_to_string(repo_root().join("docs/metrics.md")).unwrap());
    let used = metric_names(&text);
    assert!(used.len() > 10, "{used:?}");
    let unknown: Vec<&String> = used.difference(&documented).collect();
    assert!(
        unknown.is_empty(),
        "rules name metrics docs/metrics.md does not: {unknown:?}"
    );
}

#[test]
fn the_scrape_config_lists_the_demo_clusters_ports_and_its_nodes_share_a_secret() {
    let script = std::fs::read_to_string(repo_root().join("tests/start_servers.sh")).unwrap();
    let ports_line = script
        .lines()
        .find(|l| l.trim_start().starts_with("for port in"))
        .expect("start_servers.sh starts its nodes in a `for port in ...` loop");
    let ports: Vec<&str> = ports_line
        .split_whitespace()
        .map(|w| w.trim_end_matches(';'))
        .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(ports.len(), 3, "{ports_line}");
    let config = std::fs::read_to_string(deploy_file("prometheus.yml")).unwrap();
    for port in &ports {
        assert!(
            config.contains(&format!("- 127.0.0.1:{port}\n")),
            "port {port} not scraped"
        );
    }
    assert!(
        script.contains("export GEECACHE_CLUSTER_SECRET="),
        "start_servers.sh starts its nodes without a cluster secret"
    );
}
