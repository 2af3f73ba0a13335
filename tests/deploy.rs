//! What the project ships to run nodes, each run for real: the `geecache` command-line client
//! against real nodes, the node's logs on a terminal and in a file, the Prometheus rules and
//! scrape config (promtool), the systemd unit (systemd-analyze), the OCI images (buildah,
//! podman) and the Kubernetes manifests (kubectl kustomize, kubernetes-validate, and their
//! container arguments run against the real node). One test binary for all of deploy/.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

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

#[path = "deploy/cli.rs"]
mod cli;
#[path = "deploy/logs.rs"]
mod logs;
#[path = "deploy/prometheus.rs"]
mod prometheus;
