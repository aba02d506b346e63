//! The wire types of graft (`graft.v1`), generated at build time from `proto/`, and the
//! helpers every side of the wire shares: tensor chunking with checksums and the protocol
//! version.
//!
//! - [`v1`]: the generated messages, clients and servers.
//! - [`chunk`]: cutting f32 vectors into checked chunks and putting them back together.

pub mod chunk;

/// The generated `graft.v1` package.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("graft.v1");
}

/// The encoded `FileDescriptorSet` of `graft.v1`, which the coordinator and the workers serve
/// through gRPC server reflection so that grpcurl-style tools need no copy of `proto/`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/graft_descriptor.bin"));

/// Bumped whenever a message changes meaning; checked at registration and in heartbeats.
pub const PROTOCOL_VERSION: u32 = 3;

/// Default tensor chunk size in bytes (docs/design.md: 1 MiB).
pub const CHUNK_BYTES: usize = 1 << 20;

/// Largest gRPC message graft accepts, a little above one chunk plus its header.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;
