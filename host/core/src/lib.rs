//! # geecache-core
//!
//! The bottom of geecache's crate graph: what a cache node does, with no wasm runtime, HTTP,
//! etcd, SQL, telemetry or protobuf below it (its `Cargo.toml` holds none of wasmtime, axum,
//! hyper, etcd-client, rusqlite, opentelemetry or prost, so the compiler keeps it that way).
//! The host crate (`geecache-host`) implements the [`seam`] traits and wires the rest.
//!
//! - [`seam`]: every trait a plugin runtime or a peer protocol implements for core
//!   ([`seam::Getter`]; [`seam::Entries`], the get / set / delete that [`seam::Storage`],
//!   [`seam::PeerService`] and [`seam::RemotePeer`] share; [`seam::PeerPicker`];
//!   [`seam::Compressor`]) and the values that cross them.
//! - [`group`]: a named namespace. `get` = main cache → hot cache → singleflight → owner peer
//!   (stored bytes + codec) or, for keys this node owns, storage tier → local getter; negative
//!   caching; set/remove at the owner with invalidation (part of the write's answer), writes
//!   that run to their end even when their caller goes away; flush (memory, then the storage
//!   tier's clear as a barrier across its ordered write queues).
//! - [`compression`]: the codec trait, the built-in codecs (none, gzip, snappy, lz4, zstd) and
//!   compressor plugins by name; the stored-value envelope (length + checksum, so nothing
//!   corrupt is served); a group's policy (codec, level, minimum size); the heavy lane that
//!   large codings wait in (`--codec-concurrency`).
//! - [`cache`]: byte-bounded cache on quick_cache with per-entry absolute expiry and an injected
//!   clock; [`cache::Doorkeeper`]: a hot copy is kept from a key's second fetch from its owner
//!   on.
//! - [`singleflight`]: N concurrent misses of one key cause one load; survives a leader that
//!   panics or is cancelled.
//! - [`batch`]: how a batch get (API or peer) is answered within a byte budget: each distinct
//!   key once, loads stopped once the budget is spent.
//! - [`ring`]: consistent hashing with virtual nodes (XXH3-64); which node owns a key.
//! - [`metrics`]: what a subsystem reports to `/metrics` as plain data (its table and its
//!   samples); each keeps its own beside its counters (`group::metrics`,
//!   `compression::metrics`), and the host's telemetry only exports them.
//! - [`spans`]: [`spans::in_span`], a future in a tracing span, or as it is when no layer
//!   wants the span (traces are not exported).
//! - [`units`]: the sizes and durations operators write, parsed one way everywhere.
//! - [`error`]: the error type every layer shares; the errors of the parts behind a seam
//!   reach it as [`error::SeamError`]s.
//! - [`foreign`]: [`foreign::SeamError`] and [`foreign::Foreign`], a leaf that [`error`] and
//!   [`compression`] both wrap (so neither imports the other for it).

pub mod batch;
pub mod cache;
pub mod compression;
pub mod error;
pub mod foreign;
pub mod group;
pub mod metrics;
pub mod ring;
pub mod seam;
pub mod singleflight;
pub mod spans;
pub mod units;
