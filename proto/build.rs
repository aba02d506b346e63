//! Generates the tonic/prost code from `proto/` with the pure-Rust compiler `protox`, so
//! that building graft needs no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["graft/v1/graft.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
