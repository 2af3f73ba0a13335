#!/usr/bin/env bash
# Builds the geecache plugins as WebAssembly components and the demo database.
#
#   bash plugins/build.sh        (from any directory)
#
# Produces plugins/<name>.wasm for every plugin in this workspace and plugins/demo.db (from
# db_getter/demo.sql, rebuilt when missing or older than the SQL); then, with build_lang.sh,
# plugins/py_getter.wasm and plugins/js_getter.wasm where python3 and node are available. Installs the wasm32-wasip2
# Rust target through rustup when it is missing. Safe to run again: cargo rebuilds only what
# changed, and unchanged outputs are left alone.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target=wasm32-wasip2
plugins=(db_getter http_getter fs_storage brotli_compressor chaos_getter chaos_compressor escape_getter synth_getter hello_getter)

say() { printf 'build.sh: %s\n' "$*"; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

# 1. The Rust target. `rustc --print target-libdir` answers for the toolchain in use, whether
#    it came from rustup or elsewhere.
command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs)"
libdir="$(cd "$here" && rustc --print target-libdir --target "$target" 2>/dev/null || true)"
if [[ -z "$libdir" || ! -d "$libdir" ]]; then
    if command -v rustup >/dev/null; then
        say "installing the $target target: rustup target add $target"
        (cd "$here" && rustup target add "$target")
    else
        die "the $target Rust target is not installed; run: rustup target add $target"
    fi
fi

# 1b. protoc: the host's etcd client compiles etcd's .proto files when the host is built. Not
#     needed for the plugins themselves, but this script is the setup step of the README's first
#     command, so it installs Debian's protobuf-compiler when it is missing and it can. Those
#     files import Google's well-known types (descriptor.proto), which are in libprotobuf-dev:
#     a Recommends of protobuf-compiler, so missing where apt skips recommends.
protoc_pkgs=()
command -v protoc >/dev/null || protoc_pkgs+=(protobuf-compiler)
[[ -f /usr/include/google/protobuf/descriptor.proto || -f /usr/local/include/google/protobuf/descriptor.proto ]] ||
    protoc_pkgs+=(libprotobuf-dev)
if [[ ${#protoc_pkgs[@]} -gt 0 ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        say "installing ${protoc_pkgs[*]} (protoc and its well-known types), needed to build the host"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${protoc_pkgs[@]}" >/dev/null ||
            { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${protoc_pkgs[@]}" >/dev/null; } ||
            die "could not install ${protoc_pkgs[*]}; install protoc with its include files and run again"
    else
        say "warning: building the host needs protoc and its include files: sudo apt-get install ${protoc_pkgs[*]}"
    fi
fi

# 2. The components.
say "building plugins (cargo build --release --target $target)"
cargo build --release --target "$target" --manifest-path "$here/Cargo.toml"
target_dir="$(cargo metadata --format-version 1 --no-deps --manifest-path "$here/Cargo.toml" |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
# Copies component $1 to plugins/$2.wasm unless that is already the same.
publish() {
    local built=$1 name=$2
    if cmp -s "$built" "$here/$name.wasm"; then
        say "plugins/$name.wasm is up to date ($(wc -c <"$built") bytes)"
    else
        cp "$built" "$here/$name.wasm.tmp" && mv "$here/$name.wasm.tmp" "$here/$name.wasm"
        say "wrote plugins/$name.wasm ($(wc -c <"$built") bytes)"
    fi
}
for name in "${plugins[@]}"; do
    built="$target_dir/$target/release/$name.wasm"
    [[ -f "$built" ]] || die "cargo did not produce $built"
    publish "$built" "$name"
done

# 3. The demo database for db_getter. Built under a temporary name and renamed, so an
#    interrupted run never leaves a half-filled demo.db behind.
sql="$here/db_getter/demo.sql"
db="$here/demo.db"
if [[ -f "$db" && ! "$sql" -nt "$db" ]]; then
    say "plugins/demo.db is up to date"
else
    tmp="$db.tmp"
    rm -f "$tmp"
    if command -v sqlite3 >/dev/null; then
        sqlite3 "$tmp" <"$sql"
    elif command -v python3 >/dev/null && python3 -c 'import sqlite3' 2>/dev/null; then
        python3 -c 'import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
with open(sys.argv[2]) as f:
    con.executescript(f.read())
con.close()' "$tmp" "$sql"
    else
        die "creating demo.db needs the sqlite3 CLI (apt-get install sqlite3) or python3 with its sqlite3 module"
    fi
    mv "$tmp" "$db"
    say "wrote plugins/demo.db from db_getter/demo.sql"
fi

# 4. The getters in Python and JavaScript: built when python3 (with venv) and node (with npm)
#    are here, their pinned tools installed into the plugins' folders on first use. When a
#    tool is missing, build_lang.sh says how to get it, and the Rust plugins above still work.
bash "$here/build_lang.sh" || say "warning: build_lang.sh failed; the Python and JavaScript getters were not built"
for name in py_getter js_getter js_http_getter; do
    built="$here/target/lang/$name.wasm"
    if [[ -f "$built" ]]; then
        publish "$built" "$name"
    fi
done
