//! How the group sums its gradients.

use serde::{Deserialize, Serialize};

/// How the group sums its gradients each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllReduce {
    /// Between the workers (reduce-scatter then all-gather): each link carries about twice
    /// the gradient whatever the group's size, so it scales where the star does not.
    #[default]
    Ring,
    /// Through the coordinator, whose link carries 2·W gradients per step.
    Star,
}

impl AllReduce {
    /// The word job files use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ring => "ring",
            Self::Star => "star",
        }
    }
}

/// What carries the ring's gradient chunks between workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RingTransport {
    /// One plain TCP connection per ring link and generation, raw `f32` frames: the data plane
    /// NCCL and Gloo use, without HTTP/2's framing and flow control in the way.
    #[default]
    Tcp,
    /// One gRPC client stream per step (`CollectiveService.Ring`).
    Grpc,
}

impl RingTransport {
    /// The word job files use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Grpc => "grpc",
        }
    }
}
