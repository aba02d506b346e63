//! The gRPC adapters: each service validates a request, calls [`Coordinator`](crate::core::Coordinator)
//! and converts the answer. No state lives here.

pub mod cluster;
pub mod jobs;
