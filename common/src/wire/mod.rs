//! Conversions between the wire types (`graft.v1`) and the domain types of `graft-transfer`,
//! and the one place that maps a bad wire field to `tonic::Status`.
//!
//! Inbound conversions are `TryFrom`: a missing or bad field becomes `invalid_argument`
//! naming the field. The coordinator, the worker and the client all use these, so all three
//! sides agree.

use tonic::Status;

mod method;
mod spec;
mod state;
mod stats;

pub use method::{
    class_vectors_from_pb, class_vectors_to_pb, method_from_pb, method_to_pb, stage_from_pb,
    stage_to_pb,
};
pub use spec::{WireSpec, role_from_pb, role_to_pb, spec_from_pb, spec_to_pb};
pub use state::{is_terminal, state_name};
pub use stats::{stats_from_pb, stats_to_pb};

/// A wire field that is missing or out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct WireError {
    /// Dotted field path.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl From<WireError> for Status {
    fn from(e: WireError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

fn missing(field: &str) -> WireError {
    WireError {
        field: field.into(),
        reason: "missing".into(),
    }
}

fn usize_of(v: u64, field: &str) -> Result<usize, WireError> {
    usize::try_from(v).map_err(|_| WireError {
        field: field.into(),
        reason: "too large".into(),
    })
}
