//! Compiles `proto/geecache.proto` (the peer protocol) into Rust with prost.
//!
//! protox parses the .proto in pure Rust, so a build needs no `protoc` on the machine.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    println!(
        "cargo:rerun-if-changed={}",
        proto_dir.join("geecache.proto").display()
    );
    let descriptors = protox::compile(["geecache.proto"], [&proto_dir])?;
    prost_build::Config::new()
        // Values are `Bytes`, so decoding a response shares the body's buffer instead of copying.
        .bytes([".geecache.v1.Entry.value"])
        .compile_fds(descriptors)?;
    Ok(())
}
