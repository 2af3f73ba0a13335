#!/usr/bin/env bash
# Builds the OCI images of a geecache node and of etcd with Debian's buildah, FROM scratch: no
# base image is pulled. Each holds one stripped program, the C libraries `ldd` lists for it
# (with the dynamic loader), the CA certificates, a passwd/group naming a non-root user
# (10001), and for the node the plugins and demo.db.
#
#   bash deploy/image/build.sh                  # localhost/geecache:latest (release build)
#   podman run --rm -p 9999:9999 localhost/geecache:latest
#   curl "localhost:9999/api?key=Tom"           # 630
#   bash deploy/image/build.sh etcd             # localhost/geecache-etcd:latest
#
# Options:
#   --binary FILE   the program (node: default target/release/geecache-host, built with
#                   `cargo build --release -p geecache-host`; etcd: /usr/bin/etcd from
#                   Debian's etcd-server). Stripped into the image, never changed in place.
#   --plugin FILE   a plugin component for /usr/local/lib/geecache/ (repeatable; default:
#                   plugins/{db_getter,http_getter,fs_storage,brotli_compressor}.wasm, built by
#                   plugins/build.sh when missing)
#   --db FILE       the demo database (default plugins/demo.db)
#   --tag NAME      the image's name (default localhost/geecache:latest, localhost/geecache-etcd:latest)
#
# The node image runs `geecache-host` as user 10001, serving db_getter over demo.db on
# GEECACHE_BIND:GEECACHE_PORT (default 0.0.0.0:9999); every flag has its GEECACHE_ variable,
# and arguments after the image name replace the default command. See docs/operations.md.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
say() { printf 'build.sh: %s\n' "$*"; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

what=node
if [[ ${1:-} == node || ${1:-} == etcd ]]; then what=$1; shift; fi
binary="" tag="" db="" plugins=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --binary) binary=$2; shift 2 ;;
        --plugin) plugins+=("$2"); shift 2 ;;
        --db) db=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
for tool in buildah ldd strip; do
    command -v "$tool" >/dev/null || die "$tool not found (bash tests/setup.sh installs buildah; ldd and strip come with libc-bin and binutils)"
done

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
rootfs="$stage/rootfs"
mkdir -p "$rootfs"/{etc/ssl/certs,usr/local/bin,tmp} "$stage/owned"

# The program, stripped, and every library it loads (ldd's paths kept, symlinks followed).
add_program() { # add_program FILE NAME
    local file=$1 name=$2 lib
    [[ -x $file ]] || die "$file is not an executable file"
    strip --strip-all -o "$rootfs/usr/local/bin/$name" "$file"
    say "$name: $(du -h "$rootfs/usr/local/bin/$name" | cut -f1) stripped (from $(du -h "$file" | cut -f1))"
    for lib in $(ldd "$file" | grep -o '/[^ ]*'); do
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
    done
}

case $what in
node)
    if [[ -z $binary ]]; then
        say "cargo build --release -p geecache-host"
        (cd "$root" && cargo build --release -p geecache-host)
        binary="${CARGO_TARGET_DIR:-$root/target}/release/geecache-host"
    fi
    if [[ ${#plugins[@]} -eq 0 ]]; then
        for name in db_getter http_getter fs_storage brotli_compressor; do
            plugins+=("$root/plugins/$name.wasm")
        done
    fi
    db=${db:-$root/plugins/demo.db}
    for file in "${plugins[@]}" "$db"; do
        if [[ ! -f $file ]]; then
            say "$file missing: bash plugins/build.sh"
            bash "$root/plugins/build.sh" >/dev/null
            break
        fi
    done
    add_program "$binary" geecache-host
    mkdir -p "$rootfs/usr/local/lib/geecache" "$stage/owned/var/cache/geecache"
    for file in "${plugins[@]}"; do
        [[ -f $file ]] || die "plugin $file not found"
        cp "$file" "$rootfs/usr/local/lib/geecache/"
    done
    [[ -f $db ]] || die "database $db not found"
    cp "$db" "$rootfs/usr/local/lib/geecache/demo.db"
    tag=${tag:-localhost/geecache:latest}
    entrypoint='["/usr/local/bin/geecache-host"]'
    cmd='["--plugin", "/usr/local/lib/geecache/db_getter.wasm", "--plugin-config", "db_getter.database=/usr/local/lib/geecache/demo.db"]'
    env='GEECACHE_BIND=0.0.0.0 GEECACHE_PORT=9999 GEECACHE_COMPILE_CACHE_DIR=/var/cache/geecache GEECACHE_LOG_JSON=true'
    port=9999
    ;;
etcd)
    binary=${binary:-/usr/bin/etcd}
    add_program "$binary" etcd
    mkdir -p "$stage/owned/var/lib/etcd"
    tag=${tag:-localhost/geecache-etcd:latest}
    entrypoint='["/usr/local/bin/etcd"]'
    cmd='[]'
    env='ETCD_DATA_DIR=/var/lib/etcd'
    port=2379
    ;;
esac

cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/" ||
    die "no /etc/ssl/certs/ca-certificates.crt (apt-get install ca-certificates)"
printf 'root:x:0:0:root:/nonexistent:/sbin/nologin\ngeecache:x:10001:10001:geecache:/nonexistent:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\ngeecache:x:10001:\n' >"$rootfs/etc/group"
chmod 1777 "$rootfs/tmp"

cat >"$stage/Containerfile" <<EOT
FROM scratch
COPY rootfs/ /
COPY --chown=10001:10001 owned/ /
ENV $env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 10001:10001
EXPOSE $port
ENTRYPOINT $entrypoint
CMD $cmd
EOT
buildah bud --quiet --layers=false -t "$tag" -f "$stage/Containerfile" "$stage" >/dev/null
size=$(buildah inspect --format '{{.FromImageDigest}}' "$tag" >/dev/null 2>&1; buildah images --format '{{.Size}}' "$tag" | head -n 1)
say "built $tag ($size)"
