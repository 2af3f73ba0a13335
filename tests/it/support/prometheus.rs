//! A real, private Prometheus for a test: `/usr/bin/prometheus` on a free loopback port with its
//! own TSDB directory and a generated config scraping the given targets every second, killed
//! when dropped; `promtool` checks; and a parser for the text exposition format.
//!
//! `crate::support::prometheus` in the integration tests (tests/it/main.rs). Starting and
//! stopping are synchronous (std only); queries are async (reqwest).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use geecache_tests::{free_port, http_get_blocking, wait_child_ready};

/// Where Debian's `prometheus` package installs the server.
pub const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";
/// Where Debian's `prometheus` package installs promtool.
pub const PROMTOOL_BIN: &str = "/usr/bin/promtool";
/// The most a start may take before the test fails (Prometheus is usually ready in ~1 s).
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn require(bin: &str) {
    assert!(
        Path::new(bin).exists(),
        "{bin} not found: these tests run a real Prometheus; install it with \
         `apt-get install --no-install-recommends prometheus` (.ci/run does)"
    );
}

/// One running Prometheus server.
pub struct PrometheusServer {
    /// The server process.
    child: Option<Child>,
    /// `--web.listen-address` port on 127.0.0.1.
    port: u16,
    /// Holds the config, the TSDB and the log; removed when the server is dropped.
    dir: tempfile::TempDir,
}

impl PrometheusServer {
    /// Starts Prometheus scraping `/metrics` of `targets` every second, and waits until it
    /// answers `/-/ready`.
    ///
    /// # Panics
    /// If `/usr/bin/prometheus` is missing, or it is not ready within 30 s (the panic message
    /// carries the end of its log).
    pub fn start(targets: &[SocketAddr]) -> PrometheusServer {
        require(PROMETHEUS_BIN);
        let dir = tempfile::Builder::new()
            .prefix("geecache-prometheus-")
            .tempdir()
            .unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: geecache\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS_BIN)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {PROMETHEUS_BIN}: {e}"));
        let mut server = PrometheusServer {
            child: Some(child),
            port,
            dir,
        };
        server.wait_ready();
        server
    }

    /// `http://127.0.0.1:port`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's combined stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("prometheus.log")
    }

    fn wait_ready(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let log = self.log_path();
        let child = self.child.as_mut().unwrap();
        wait_child_ready(
            &format!("prometheus at {addr}"),
            child,
            START_TIMEOUT,
            || std::fs::read_to_string(&log).unwrap_or_default(),
            || http_get_blocking(addr, "/-/ready").is_some_and(|r| r.starts_with("HTTP/1.1 200")),
        );
    }

    /// Runs an instant query; the value of each series in the answer (with its labels).
    ///
    /// # Panics
    /// When the query is rejected (bad PromQL) or the answer is not what the API documents.
    pub async fn query(&self, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let url = format!(
            "{}/api/v1/query?query={}",
            self.base(),
            percent_encode(promql)
        );
        let body: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        assert_eq!(body["status"], "success", "{promql}: {body}");
        body["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                let value = r["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// Polls `promql` (which must select one series) until its value is `expected`, for at most
    /// `timeout`.
    ///
    /// # Errors
    /// The last answer seen, when the deadline passes first.
    pub async fn wait_for_value(
        &self,
        promql: &str,
        expected: f64,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last = Vec::new();
        while Instant::now() < deadline {
            last = self.query(promql).await;
            if let [(_, value)] = last.as_slice()
                && *value == expected
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(format!(
            "{promql}: expected {expected} within {timeout:?}, last answer {last:?}"
        ))
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `promtool` with `args`, `stdin` as its input: whether it exited 0, and what it printed.
pub fn promtool(args: &[&str], stdin: &str) -> (bool, String) {
    require(PROMTOOL_BIN);
    let mut child = Command::new(PROMTOOL_BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {PROMTOOL_BIN}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// One sample of a text exposition: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name (`_bucket`, `_sum` and `_count` included for histograms).
    pub name: String,
    /// Label names and values.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// Whether every `(name, value)` of `labels` is among this sample's labels.
    pub fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels
            .iter()
            .all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }
}

/// Parses the Prometheus text format (0.0.4): every sample line, comments skipped. Label
/// values may hold `{`, `}`, `,`, spaces and escaped quotes.
///
/// # Panics
/// On a line that is not a sample.
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap();
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices();
            let mut key = String::new();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '}' => {
                        end = Some(i + 1);
                        break;
                    }
                    ',' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                        let mut value = String::new();
                        while let Some((_, c)) = chars.next() {
                            match c {
                                '\\' => match chars.next().unwrap().1 {
                                    'n' => value.push('\n'),
                                    other => value.push(other),
                                },
                                '"' => break,
                                other => value.push(other),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), value);
                    }
                    other => key.push(other),
                }
            }
            rest = &inner[end.unwrap_or_else(|| panic!("unclosed labels: {line}"))..];
        }
        let value = rest.trim().split(' ').next().unwrap();
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|e| panic!("{line}: {e}")),
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

/// The value of the one sample named `name` with `labels` among `samples`.
///
/// # Panics
/// When no sample or more than one matches.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && s.has(labels))
        .collect();
    match found.as_slice() {
        [one] => one.value,
        _ => panic!("{name}{labels:?}: {} samples match: {found:?}", found.len()),
    }
}

/// Percent-encodes everything but ASCII letters and digits (for a query string or one path
/// segment).
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
