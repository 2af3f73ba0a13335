//! What the project ships to run nodes, each run for real: the `geecache` command-line client
//! against real nodes, the node's logs on a terminal and in a file, the Prometheus rules and
//! scrape config (promtool), the systemd unit (systemd-analyze), the OCI images (buildah,
//! podman) and the Kubernetes manifests (kubectl kustomize, kubernetes-validate, and their
//! container arguments run against the real node). A module per file of deploy/.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use geecache_tests::{demo_db, http_get_blocking, log_tail, plugins, wait_child_ready};

/// The checkout these tests were compiled from. Not `geecache_tests::repo_root()`: that comes
/// from the build script's output, which checkouts sharing one `CARGO_TARGET_DIR` also share
/// (cargo does not run it again for another checkout of the same package), while
/// `CARGO_MANIFEST_DIR` is set for every compilation.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Where the image (deploy/image/build.sh) and the systemd unit keep the plugins and demo.db.
const IMAGE_LIB: &str = "/usr/local/lib/geecache";
/// Where the image keeps compiled plugins (`GEECACHE_COMPILE_CACHE_DIR`).
const IMAGE_CACHE: &str = "/var/cache/geecache";

/// A node started from the arguments and environment a deployment file gives it, as its
/// process manager would start it. Killed when dropped.
#[derive(Debug)]
struct DeployedNode {
    child: Child,
    /// Where it listens (127.0.0.1 and a free port, whatever the file says).
    addr: SocketAddr,
    log: PathBuf,
}

impl DeployedNode {
    /// Runs this build's node with `args` and only the environment `env` (plus what the
    /// image sets), the image's paths mapped into `dir` (which gets db_getter.wasm and a demo
    /// database), on 127.0.0.1:`port`, and waits until it answers Tom with 630 (at most 60 s).
    ///
    /// # Panics
    /// When it exits first or does not answer (a flag it does not know, say), with its log.
    fn start(dir: &Path, args: &[String], env: &[(String, String)], port: u16) -> DeployedNode {
        let lib = dir.join("lib");
        let cache = dir.join("cache");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::copy(plugins::DB_GETTER, lib.join("db_getter.wasm")).unwrap();
        if !lib.join("demo.db").exists() {
            std::fs::rename(demo_db(dir), lib.join("demo.db")).unwrap();
        }
        let map = |text: &str| {
            text.replace(IMAGE_LIB, &lib.display().to_string())
                .replace(IMAGE_CACHE, &cache.display().to_string())
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_geecache-node"));
        command
            .args(args.iter().map(|a| map(a)))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("GEECACHE_COMPILE_CACHE_DIR", &cache);
        for (name, value) in env {
            command.env(name, map(value));
        }
        // Tests listen on loopback only.
        command
            .env("GEECACHE_BIND", "127.0.0.1")
            .env("GEECACHE_PORT", port.to_string());
        let log = dir.join("node.log");
        let child = command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut node = DeployedNode {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        };
        let addr = node.addr;
        let log = node.log.clone();
        wait_child_ready(
            "the deployed node",
            &mut node.child,
            Duration::from_secs(60),
            || std::fs::read_to_string(&log).unwrap_or_default(),
            || http_get_blocking(addr, "/api?key=Tom").is_some_and(|r| r.ends_with("\r\n\r\n630")),
        );
        node
    }

    /// The end of its log.
    fn log_tail(&self) -> String {
        log_tail(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for DeployedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

mod cli;
mod image;
mod kubernetes;
mod logs;
mod prometheus;
mod systemd;
