#!/usr/bin/env bash
# Builds the getters written in other languages into plugins/target/lang/<name>.wasm:
#   py_getter  Python      componentize-py (version pinned in py_getter/requirements.txt)
#   js_getter  JavaScript  componentize-js (version pinned in js_getter/package-lock.json)
#   js_http_getter  JavaScript, fetch() over wasi:http (js_getter/http_getter.js, same tool)
#
#   bash plugins/build_lang.sh [--required]
#
# Each tool is installed on first use into its plugin's folder, at the pinned version:
# py_getter/.venv (python3 -m venv + pip) and js_getter/node_modules (npm ci; plus a node >= 20
# in js_getter/.node where the system's is older). These folders are git-ignored; delete them
# to reinstall. A component is rebuilt only when its sources, its pins, the WIT or this script
# changed. This needs python3 with its venv module (Debian: python3-venv) and node with npm
# (Debian: nodejs npm), and network access to PyPI and npm the first time.
#
# Without them a plugin is skipped, with a message saying what to install, its old component
# is removed, and the script exits 0: plugins/build.sh goes on with the Rust plugins, and
# tests/build.rs lets the tests that need it fail with that advice. With --required (CI) a
# plugin that could not be built makes the script exit 1.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The Python getter is built against the current WIT (0.2.0, the directory: it uses 0.1.0's
# interfaces from wit/deps); the JavaScript getters against 0.1.0 (frozen), as plugins built
# before 0.2.0 are: the tests that run them check that such plugins keep loading.
wit="$(cd "$here/.." && pwd)/wit"
wit_v0_1="$wit/deps/geecache-plugin-0.1.0/geecache.wit"
out_dir="$here/target/lang"
required=0
[[ "${1:-}" == "--required" ]] && required=1

say() { printf 'build_lang.sh: %s\n' "$*"; }
failed=()
# Records that plugin $1 was not built, and why ($2); tells how to fix it ($3). Removes its
# previous component, which no longer matches its sources: nothing must load a stale one.
skip() {
    rm -f "$out_dir/$1.wasm"
    say "skipping $1: $2"
    say "  to build it: $3"
    failed+=("$1")
}

# Whether $out is missing or older than any of the remaining arguments.
stale() {
    local out=$1
    shift
    [[ -f "$out" ]] || return 0
    local input
    for input in "$@" "$wit/geecache.wit" "$wit_v0_1" "${BASH_SOURCE[0]}"; do
        [[ "$input" -nt "$out" ]] && return 0
    done
    return 1
}

# Runs a build command (output in $out.tmp) and renames its result to $out, so an interrupted
# build never leaves a half-written component behind.
build_into() {
    local name=$1 out=$2
    shift 2
    rm -f "$out.tmp"
    local started=$SECONDS
    if "$@" && [[ -s "$out.tmp" ]]; then
        mv "$out.tmp" "$out"
        say "built $name ($(wc -c <"$out") bytes, $((SECONDS - started)) s)"
        return 0
    fi
    rm -f "$out.tmp"
    return 1
}

# Runs a command with its stdout (progress chatter) discarded; errors still show.
quietly() { "$@" >/dev/null; }

mkdir -p "$out_dir"
# One run at a time (a test build and a bench build may start this together); flock is
# util-linux's, on every Debian.
if command -v flock >/dev/null; then
    exec 9>"$out_dir/.lock"
    flock 9
fi

# --- Python: componentize-py ----------------------------------------------------------------
py="$here/py_getter"
py_out="$out_dir/py_getter.wasm"
venv="$py/.venv"
if ! stale "$py_out" "$py/app.py" "$py/requirements.txt"; then
    say "py_getter is up to date"
elif ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    skip py_getter "python3 with its venv module not found" \
        "sudo apt-get install python3 python3-venv, then run this again"
else
    # The venv is (re)made when missing or when the pins changed since it was filled.
    if [[ ! -x "$venv/bin/componentize-py" || "$py/requirements.txt" -nt "$venv/.installed" ]]; then
        say "installing componentize-py into py_getter/.venv ($(tr '\n' ' ' <"$py/requirements.txt"))"
        rm -rf "$venv"
        if python3 -m venv "$venv" &&
            "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$py/requirements.txt"; then
            touch "$venv/.installed"
        else
            rm -rf "$venv"
        fi
    fi
    if [[ ! -x "$venv/bin/componentize-py" ]]; then
        skip py_getter "could not install componentize-py (see pip's message above)" \
            "python3 -m venv plugins/py_getter/.venv && plugins/py_getter/.venv/bin/pip install -r plugins/py_getter/requirements.txt"
    elif ! build_into py_getter "$py_out" quietly env PYTHONDONTWRITEBYTECODE=1 \
        "$venv/bin/componentize-py" --wit-path "$wit" --world getter-plugin \
        componentize --python-path "$py" app --output "$py_out.tmp"; then
        skip py_getter "componentize-py failed (see above)" "fix plugins/py_getter/app.py"
    fi
fi

# --- JavaScript: componentize-js ------------------------------------------------------------
js="$here/js_getter"
js_out="$out_dir/js_getter.wasm"
# componentize-js 0.23 needs node >= 20 (npm skips its parser's native binding on older ones).
# Where the system's node is older (Debian 12 ships 18), this node, from the npm registry's
# official builds (package node-<platform>-<arch>), is installed into js_getter/.node and used.
node_pin=22.23.3
node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
jsh_out="$out_dir/js_http_getter.wasm"
js_stale=0
jsh_stale=0
stale "$js_out" "$js/getter.js" "$js/package.json" "$js/package-lock.json" && js_stale=1
stale "$jsh_out" "$js/http_getter.js" "$js/package.json" "$js/package-lock.json" && jsh_stale=1
# Skips every JavaScript plugin still to build: $1 why, $2 how to fix it.
skip_js() {
    [[ $js_stale -eq 1 ]] && skip js_getter "$1" "$2"
    [[ $jsh_stale -eq 1 ]] && skip js_http_getter "$1" "$2"
    return 0
}
if [[ $js_stale -eq 0 && $jsh_stale -eq 0 ]]; then
    say "js_getter and js_http_getter are up to date"
elif ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    skip_js "node and npm not found" "sudo apt-get install nodejs npm, then run this again"
else
    # npm runs under the node first on PATH (its own shebang may name the system's).
    npm_cli="$(readlink -f "$(command -v npm)")"
    npm() { node "$npm_cli" "$@"; }
    if [[ $(node_major) -lt 20 ]]; then
        node_pkg="node-$(node -p 'process.platform + "-" + process.arch')"
        local_node="$js/.node/node_modules/$node_pkg/bin"
        if [[ ! -x "$local_node/node" ]]; then
            say "node $(node --version) is older than componentize-js needs (20): installing $node_pkg@$node_pin into js_getter/.node"
            npm install --prefix "$js/.node" --ignore-scripts --no-audit --no-fund --loglevel=error "$node_pkg@$node_pin" ||
                rm -rf "$js/.node"
        fi
        PATH="$local_node:$PATH"
    fi
    # `npm ci` installs exactly the lock file's versions; install scripts are not needed.
    if [[ $(node_major) -lt 20 ]]; then
        skip_js "node $(node --version) is too old, and node $node_pin could not be installed (see above)" \
            "install node >= 20 (https://nodejs.org), then run this again"
    elif [[ ! -x "$js/node_modules/.bin/componentize-js" || "$js/package-lock.json" -nt "$js/node_modules/.package-lock.json" ]]; then
        say "installing componentize-js into js_getter/node_modules (npm ci)"
        (cd "$js" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) || rm -rf "$js/node_modules"
    fi
    if [[ ! -x "$js/node_modules/.bin/componentize-js" ]]; then
        [[ " ${failed[*]} " == *" js_getter "* || " ${failed[*]} " == *" js_http_getter "* ]] ||
            skip_js "could not install componentize-js (see npm's message above)" \
                "cd plugins/js_getter && npm ci"
    else
        # package.json's `build` and `build-http` scripts are the build commands (`npm run
        # build` by hand); here their output goes to a temporary name first (a second --out
        # wins). js_http_getter keeps componentize-js's `http` feature: fetch() over wasi:http.
        if [[ $js_stale -eq 1 ]] &&
            ! build_into js_getter "$js_out" npm run --silent --prefix "$js" build -- --out "$js_out.tmp"; then
            skip js_getter "componentize-js failed (see above)" "fix plugins/js_getter/getter.js"
        fi
        if [[ $jsh_stale -eq 1 ]] &&
            ! build_into js_http_getter "$jsh_out" npm run --silent --prefix "$js" build-http -- --out "$jsh_out.tmp"; then
            skip js_http_getter "componentize-js failed (see above)" "fix plugins/js_getter/http_getter.js"
        fi
    fi
fi

if [[ ${#failed[@]} -gt 0 && $required -eq 1 ]]; then
    say "error: not built: ${failed[*]}"
    exit 1
fi
exit 0
