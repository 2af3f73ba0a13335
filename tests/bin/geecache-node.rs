//! The `geecache-host` program, built inside the tests crate so process-level tests can find it
//! through `env!("CARGO_BIN_EXE_geecache-node")` (cargo exposes only a package's own binaries).

fn main() -> std::process::ExitCode {
    geecache_host::server::main()
}
