//! The integration tests, as one test binary (wasmtime's tests are laid out the same
//! way): one module per suite, so a change to geecache-host relinks one test executable instead
//! of one per suite. `cargo test -p geecache-tests --test it` runs them all;
//! `cargo test -p geecache-tests --test it cluster::` runs one suite.
//!
//! Every test here may run beside any other (libtest runs them on one thread per core): what a
//! test changes for the whole process (the environment, a process-wide limit) keeps its suite
//! in a binary of its own. Two do: `tests/proxy.rs` (sets `HTTP_PROXY`) and
//! `tests/sql_heap.rs` (runs into SQLite's process-wide heap limit).

mod support {
    //! What several suites share and the test harness library (`geecache_tests`, tests/lib.rs)
    //! does not hold: real etcd and Prometheus servers.
    pub mod etcd;
    pub mod prometheus;
}

mod batch;
mod cluster;
mod compression;
mod deploy;
mod discovery;
mod doors;
mod entry_weight;
mod flood;
mod flush;
mod http_sources;
mod lang_plugins;
mod membership;
mod metrics;
mod peer_protocol;
mod perf_http;
mod plugins;
mod reload;
mod shutdown;
mod single_node;
mod sources;
mod tls;
mod tracing;
mod trust;
mod writes;
