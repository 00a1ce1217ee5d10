//! Generates the Rust wire types from `proto/*.proto` at build time.
//!
//! The `.proto` files are compiled by `protox`, a pure-Rust protobuf compiler, so no
//! `protoc` binary has to be installed on any machine that builds rmb.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/types.proto", "proto/peer.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
