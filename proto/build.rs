//! Generates the tonic/prost code from `proto/` with the pure-Rust compiler `protox`, so
//! that building graft needs no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["graft/v1/graft.proto"], ["proto"])?;
    // The descriptors again, encoded, for the servers' reflection service.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("graft_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // Gradient chunks as `Bytes`: decoding then slices the received buffer instead of copying
    // every megabyte out of it (one pass over memory less per byte on the ring).
    tonic_prost_build::configure()
        .bytes(".graft.v1.TensorChunk.data")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
