//! deploy/image/build.sh: the node's and etcd's images built with buildah FROM scratch and
//! run with podman: a 3-node cluster registered in etcd, every container on the host network
//! on 127.0.0.1 ports, the cluster secret from the environment. Tom → 630 on every node; one
//! node stopped with SIGTERM turns unready, serves its grace period, leaves the ring and
//! exits 0 while the others keep answering.
//!
//! Containers and images are named after this process and removed when the test ends, failed
//! or not. This machine's podman needs `--runtime runc` (crun refuses hybrid cgroups) and a
//! containers.conf without default ulimits (the sandbox cannot raise rlimits); both are
//! harmless elsewhere.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use geecache_tests::{demo_db, free_port, http_get_blocking, plugins};

use super::repo;

/// The node's shutdown grace in this test (`GEECACHE_SHUTDOWN_GRACE`).
const GRACE: Duration = Duration::from_secs(3);
/// The issue's bound on the node image.
const MAX_IMAGE_BYTES: u64 = 80 * 1000 * 1000;

/// Runs podman or buildah (under `timeout`), with this test's containers.conf.
struct Tools {
    conf: PathBuf,
    /// Prefix of every container and image name of this test.
    prefix: String,
    containers: Vec<String>,
    images: Vec<String>,
}

impl Tools {
    fn new(dir: &Path) -> Tools {
        for tool in ["buildah", "podman", "runc"] {
            assert!(
                Command::new(tool)
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success()),
                "{tool} is missing: bash tests/setup.sh installs buildah, podman and runc"
            );
        }
        let conf = dir.join("containers.conf");
        std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n").unwrap();
        Tools {
            conf,
            prefix: format!("geecache-test-{}", std::process::id()),
            containers: Vec::new(),
            images: Vec::new(),
        }
    }

    fn run(&self, program: &str, args: &[&str], seconds: u32) -> Output {
        Command::new("timeout")
            .arg(seconds.to_string())
            .arg(program)
            .args(args)
            .env("CONTAINERS_CONF", &self.conf)
            .env("GEECACHE_CLUSTER_SECRET", "image-test-secret")
            .output()
            .unwrap()
    }

    fn podman(&self, args: &[&str]) -> String {
        let out = self.run("podman", args, 60);
        assert!(
            out.status.success(),
            "podman {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `bash deploy/image/build.sh ARGS --tag IMAGE`; returns the image's name.
    fn build(&mut self, name: &str, args: &[&str]) -> String {
        let image = format!("localhost/{}:{name}", self.prefix);
        self.images.push(image.clone());
        let script = repo().join("deploy/image/build.sh").display().to_string();
        let mut argv = vec![script.as_str()];
        argv.extend(args);
        argv.extend(["--tag", &image]);
        let out = self.run("bash", &argv, 300);
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "build.sh {args:?}:\n{said}");
        println!("{said}");
        image
    }

    /// Starts a container `name` of `image` on the host network, with podman's `options`;
    /// returns its full name.
    fn start(
        &mut self,
        name: &str,
        env: &[String],
        options: &[&str],
        image: &str,
        args: &[&str],
    ) -> String {
        let name = format!("{}-{name}", self.prefix);
        self.containers.push(name.clone());
        let mut argv = vec![
            "run",
            "-d",
            "--runtime",
            "runc",
            "--network",
            "host",
            "--name",
            &name,
        ];
        for e in env {
            argv.extend(["-e", e]);
        }
        argv.extend(options);
        argv.push(image);
        argv.extend(args);
        self.podman(&argv);
        name
    }

    fn logs(&self, container: &str) -> String {
        let out = self.run("podman", &["logs", "--tail", "30", container], 30);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
}

impl Drop for Tools {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = self.run("podman", &["rm", "-f", "-t", "0", c], 60);
        }
        for i in &self.images {
            let _ = self.run("podman", &["rmi", "-f", i], 60);
        }
    }
}

/// Status and body of `GET path` on `addr`, `None` when nothing answers.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let raw = http_get_blocking(addr, path)?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Polls `check` every 100 ms for at most `within`; panics with `what` and `logs()`.
fn wait_for(
    what: &str,
    within: Duration,
    logs: impl Fn() -> String,
    mut check: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} not within {within:?}:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The ring's size as node `addr` sees it.
fn ring_size(addr: SocketAddr) -> Option<usize> {
    let (status, body) = get(addr, "/api/v1/cluster")?;
    let cluster: serde_json::Value = serde_json::from_str(&body).ok()?;
    (status == 200).then(|| cluster["members"].as_array().map_or(0, Vec::len))
}

#[test]
fn images_run_a_3_node_cluster_with_etcd_under_podman_and_a_node_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let mut tools = Tools::new(dir.path());
    let db = demo_db(dir.path()).display().to_string();
    let node_image = tools.build(
        "node",
        &[
            "node",
            "--binary",
            env!("CARGO_BIN_EXE_geecache-node"),
            "--plugin",
            plugins::DB_GETTER,
            "--db",
            &db,
        ],
    );
    let etcd_image = tools.build("etcd", &["etcd"]);

    let config = tools.podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.User}}|{{json .Config.Entrypoint}}|{{.Size}}",
        &node_image,
    ]);
    let parts: Vec<&str> = config.split('|').collect();
    assert_eq!(
        parts[..2],
        ["10001:10001", r#"["/usr/local/bin/geecache-host"]"#],
        "{config}"
    );
    let size: u64 = parts[2].parse().unwrap();
    println!("node image: {size} bytes (a stripped debug build of the node)");
    assert!(size < MAX_IMAGE_BYTES, "the node image is {size} bytes");

    let (client, peer) = (free_port(), free_port());
    let etcd = tools.start(
        "etcd",
        &[],
        &[],
        &etcd_image,
        &[
            "--name=e",
            &format!("--listen-client-urls=http://127.0.0.1:{client}"),
            &format!("--advertise-client-urls=http://127.0.0.1:{client}"),
            &format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            &format!("--initial-cluster=e=http://127.0.0.1:{peer}"),
        ],
    );
    let etcd_addr: SocketAddr = format!("127.0.0.1:{client}").parse().unwrap();
    wait_for(
        "etcd healthy",
        Duration::from_secs(30),
        || tools.logs(&etcd),
        || get(etcd_addr, "/health").is_some_and(|(s, b)| s == 200 && b.contains("true")),
    );

    let mut nodes = Vec::new();
    for i in 0..3 {
        let port = free_port();
        let env = [
            "GEECACHE_BIND=127.0.0.1".to_owned(),
            format!("GEECACHE_PORT={port}"),
            format!("GEECACHE_ETCD_ENDPOINTS=http://127.0.0.1:{client}"),
            format!("GEECACHE_SHUTDOWN_GRACE={}s", GRACE.as_secs()),
            // No value: podman passes on its own environment's (Tools::run sets it).
            "GEECACHE_CLUSTER_SECRET".to_owned(),
        ];
        let name = tools.start(&format!("node{i}"), &env, &[], &node_image, &[]);
        nodes.push((name, SocketAddr::from(([127, 0, 0, 1], port))));
    }
    for (name, addr) in &nodes {
        wait_for(
            "a ring of 3",
            Duration::from_secs(60),
            || tools.logs(name),
            || ring_size(*addr) == Some(3),
        );
    }
    for (name, addr) in &nodes {
        assert_eq!(
            get(*addr, "/api?key=Tom"),
            Some((200, "630".into())),
            "{}",
            tools.logs(name)
        );
        // The secret is in force: an unsigned peer request is refused.
        let (status, _) = get(*addr, "/_geecache/scores/Tom").unwrap();
        assert_eq!(status, 401, "{}", tools.logs(name));
        let pid = tools.podman(&["inspect", "--format", "{{.State.Pid}}", name]);
        let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid = proc_status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert_eq!(uid.split_whitespace().nth(1), Some("10001"), "{uid}");
    }

    // SIGTERM to node 0: unready at once, serving for the grace, then gone; the others answer.
    let (stopping, stopping_addr) = nodes[0].clone();
    let sent = Instant::now();
    tools.podman(&["kill", "--signal", "TERM", &stopping]);
    let mut unready_at = None;
    let mut closed_at = None;
    let deadline = sent + GRACE + Duration::from_secs(20);
    while closed_at.is_none() && Instant::now() < deadline {
        match get(stopping_addr, "/readyz") {
            Some((503, body)) => {
                assert!(body.contains("draining"), "{body}");
                unready_at.get_or_insert(sent.elapsed());
            }
            Some(_) => {}
            None => closed_at = Some(sent.elapsed()),
        }
        for (name, addr) in &nodes[1..] {
            assert_eq!(
                get(*addr, "/api?key=Tom"),
                Some((200, "630".into())),
                "{}",
                tools.logs(name)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs = tools.logs(&stopping);
    let unready_at = unready_at.unwrap_or_else(|| panic!("/readyz never said 503:\n{logs}"));
    let closed_at =
        closed_at.unwrap_or_else(|| panic!("still listening 20 s after its grace:\n{logs}"));
    assert!(
        unready_at < Duration::from_secs(1),
        "unready after {unready_at:?}"
    );
    assert!(
        closed_at >= GRACE - Duration::from_millis(300),
        "stopped listening {closed_at:?} after SIGTERM, before its {GRACE:?} grace:\n{logs}"
    );
    let exit = tools.podman(&["wait", &stopping]);
    assert_eq!(exit, "0", "exit status {exit}:\n{logs}");
    for (name, addr) in &nodes[1..] {
        wait_for(
            "the ring without the stopped node",
            Duration::from_secs(20),
            || tools.logs(name),
            || ring_size(*addr) == Some(2),
        );
        assert_eq!(
            get(*addr, "/api?key=Tom"),
            Some((200, "630".into())),
            "{}",
            tools.logs(name)
        );
        assert_eq!(
            get(*addr, "/api?key=Jack"),
            Some((200, "589".into())),
            "{}",
            tools.logs(name)
        );
    }
    // The Kubernetes pod's container (overlays/dns as rendered) from this image, as its pod
    // spec runs it: read-only root, the compile cache and /tmp on empty volumes, no
    // capabilities, no privilege escalation. A path the image lacks fails here.
    let k8s_dir = dir.path().join("k8s");
    std::fs::create_dir(&k8s_dir).unwrap();
    let objects = super::kubernetes::render_and_validate(
        &repo().join("deploy/kubernetes/overlays/dns"),
        &k8s_dir.join("dns.yaml"),
    );
    let container = super::kubernetes::check_cluster_shape(&objects);
    let port = free_port();
    let mut env: Vec<String> = super::kubernetes::env_here(
        &container,
        port,
        &[("geecache-peers.default.svc.cluster.local", "localhost")],
    )
    .into_iter()
    .map(|(n, v)| format!("{n}={v}"))
    .collect();
    // Tests listen on loopback only.
    env.push("GEECACHE_BIND=127.0.0.1".into());
    let args = super::kubernetes::container_args(&container);
    let options = [
        "--read-only",
        "--tmpfs",
        "/tmp:mode=1777",
        "--tmpfs",
        "/var/cache/geecache:mode=1777",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pod = tools.start("k8s", &env, &options, &node_image, &args);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for(
        "the Kubernetes container answering Tom",
        Duration::from_secs(60),
        || tools.logs(&pod),
        || get(addr, "/api?key=Tom") == Some((200, "630".into())),
    );
}
