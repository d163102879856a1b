//! Compiles the gRPC contract in `proto/` without a system `protoc`
//! (protox parses the .proto files in Rust) and keeps the descriptor set for
//! server reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: a build script binary can be reused for another
    // checkout of the same crate.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let dir = root.join("dialtone/v1");
    let mut files: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".proto"))
        .map(|name| format!("dialtone/v1/{name}"))
        .collect();
    files.sort();
    println!("cargo:rerun-if-changed={}", dir.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("dialtone_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Audio as `Bytes`: a message's chunks are slices of the stored
        // blob, not copies.
        .bytes(".dialtone.v1.AudioChunk.data")
        .bytes(".dialtone.v1.RecordingChunk.data")
        .compile_fds(fds)?;
    Ok(())
}
