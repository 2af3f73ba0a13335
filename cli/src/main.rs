//! `geecache`: see [`geecache_cli`].

fn main() -> std::process::ExitCode {
    geecache_cli::main()
}
