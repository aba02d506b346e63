//! What a benchmark peer (`graft-worker bench-peer`) tells the `graft bench` that started it:
//! one JSON line on stdout.

use serde::{Deserialize, Serialize};

/// What one peer measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerReport {
    /// The peer's index.
    pub rank: usize,
    /// Seconds of each timed all-reduce.
    pub reduce_s: Vec<f64>,
    /// Seconds of each timed raw TCP exchange.
    pub tcp_s: Vec<f64>,
}
