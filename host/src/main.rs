//! `geecache-host`: see `geecache_host::server::main` and `--help`.

// mimalloc, not glibc malloc: the request path allocates per request, and glibc's malloc and
// free were a large share of a loaded node's CPU (docs/performance.md). Set in the binaries only, so the
// library keeps the system allocator; the `mimalloc` feature (default) builds it at all, and
// the fuzz targets (under ASan) build without it.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    geecache_host::server::main()
}
