//! Builds the plugins workspace (`plugins/`) for wasm32-wasip2 and exposes each component's path
//! to the tests as `env!("PLUGIN_<NAME>")`, so the tests always run against the current plugin
//! sources and a plain `cargo build` of the host never builds wasm.
//!
//! Also builds the getters in other languages with `plugins/build_lang.sh` (which installs
//! componentize-py and componentize-js at pinned versions into the plugins' folders on first
//! use). One that cannot be built here (no python3 or node, no network) does not stop the
//! build: its `PLUGIN_<NAME>` is empty, cargo prints a warning saying what to install, and the
//! tests that need it fail with the same advice.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Rust plugins: (folder in `plugins/`, component file name without `.wasm`).
const PLUGINS: &[(&str, &str)] = &[
    ("db_getter", "db_getter"),
    ("http_getter", "http_getter"),
    ("fs_storage", "fs_storage"),
    ("brotli_compressor", "brotli_compressor"),
    ("chaos_getter", "chaos_getter"),
    ("chaos_compressor", "chaos_compressor"),
    ("escape_getter", "escape_getter"),
    ("synth_getter", "synth_getter"),
    ("template", "hello_getter"),
    ("reload_getter_v1", "reload_getter_v1"),
    ("reload_getter_v2", "reload_getter_v2"),
    ("reload_getter_broken", "reload_getter_broken"),
    ("reload_compressor_narrow", "reload_compressor_narrow"),
    ("storage_basic", "storage_basic"),
    ("compat_storage", "compat_storage"),
];
/// The plugins in other languages, built into `plugins/target/lang/<name>.wasm`: each one's
/// folder in `plugins/` and the files there it is built from.
const LANG_PLUGINS: &[(&str, &str, &[&str])] = &[
    ("py_getter", "py_getter", &["app.py", "requirements.txt"]),
    (
        "js_getter",
        "js_getter",
        &["getter.js", "package.json", "package-lock.json"],
    ),
    (
        "js_http_getter",
        "js_getter",
        &["http_getter.js", "package.json", "package-lock.json"],
    ),
];
const TARGET: &str = "wasm32-wasip2";

fn watch(path: &Path) {
    println!("cargo:rerun-if-changed={}", path.display());
}

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("tests/ is inside the repo")
        .to_path_buf();
    let plugins = root.join("plugins");
    // Watch sources only: never plugins/target or the copied .wasm files, or every build reruns.
    watch(&root.join("wit"));
    watch(&root.join("guest-sdk/src"));
    watch(&root.join("guest-sdk/Cargo.toml"));
    watch(&plugins.join("Cargo.toml"));
    watch(&plugins.join("Cargo.lock"));
    for (dir, _) in PLUGINS {
        watch(&plugins.join(dir).join("src"));
        watch(&plugins.join(dir).join("Cargo.toml"));
    }

    let target_dir = plugins.join("target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(plugins.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir);
    // Settings meant for the host build must not leak into the wasm build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("cannot run cargo to build the plugins");
    if !status.success() {
        panic!(
            "building the plugins failed (see above). Is the target installed? \
             `rustup target add {TARGET}`"
        );
    }
    for (_, name) in PLUGINS {
        let wasm = target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{name}.wasm"));
        assert!(wasm.is_file(), "{} was not built", wasm.display());
        println!(
            "cargo:rustc-env=PLUGIN_{}={}",
            name.to_uppercase(),
            wasm.display()
        );
    }
    build_lang_plugins(&plugins);
    println!("cargo:rustc-env=GEECACHE_REPO_ROOT={}", root.display());
}

/// Runs `plugins/build_lang.sh` and exposes what it built; see the module docs.
fn build_lang_plugins(plugins: &Path) {
    let script = plugins.join("build_lang.sh");
    watch(&script);
    for (_, dir, sources) in LANG_PLUGINS {
        for source in *sources {
            watch(&plugins.join(dir).join(source));
        }
    }
    let output = Command::new("bash").arg(&script).output();
    let log = match &output {
        Ok(out) => format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("cannot run bash {}: {e}", script.display()),
    };
    // The script's own progress stays in the build log (`cargo test -vv` shows it); what it
    // skipped, and how to fix that, is shown as a warning.
    for line in log.lines() {
        if line.contains("skipping") || line.contains("to build it") || line.contains("error") {
            println!("cargo:warning={line}");
        }
    }
    for (name, _, _) in LANG_PLUGINS {
        let wasm = plugins.join("target/lang").join(format!("{name}.wasm"));
        // Rebuilt when deleted; and while it does not exist, cargo reruns this script on every
        // build, so the plugin is built as soon as its tool is installed.
        watch(&wasm);
        let path = if wasm.is_file() {
            wasm.display().to_string()
        } else {
            String::new()
        };
        println!("cargo:rustc-env=PLUGIN_{}={path}", name.to_uppercase());
    }
}
