//! The `geecache` command-line client (cli/), built inside the tests crate so
//! tests/it/deploy/cli.rs can run it through `env!("CARGO_BIN_EXE_geecache-cli")`.

fn main() -> std::process::ExitCode {
    geecache_cli::main()
}
