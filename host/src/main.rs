//! `geecache-host`: see `geecache_host::server::main` and `--help`.

fn main() -> std::process::ExitCode {
    geecache_host::server::main()
}
