//! What the project ships to run nodes, each run for real: the `geecache` command-line client
//! against real nodes, the node's logs on a terminal and in a file, the Prometheus rules and
//! scrape config (promtool), the systemd unit (systemd-analyze), the OCI images (buildah,
//! podman) and the Kubernetes manifests (kubectl kustomize, kubernetes-validate, and their
//! container arguments run against the real node). One test binary for all of deploy/.

#![allow(clippy::unwrap_used)]

#[path = "deploy/cli.rs"]
mod cli;
#[path = "deploy/logs.rs"]
mod logs;
