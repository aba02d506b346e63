//! The worker's errors.

/// What can stop a worker's job.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The coordinator refused or failed a call.
    #[error("{call}: {status}")]
    Rpc {
        /// The RPC.
        call: &'static str,
        /// What the coordinator said.
        status: String,
        /// Its code.
        code: tonic::Code,
    },
    /// The coordinator sent something malformed.
    #[error("bad message from the coordinator: {0}")]
    Protocol(String),
    /// The job was cancelled or failed elsewhere.
    #[error("job {0} was stopped by the coordinator")]
    Aborted(String),
    /// The job cannot run here (network, device).
    #[error("{0}")]
    Setup(String),
    /// The ring all-reduce between the workers failed.
    #[error("ring all-reduce: {0}")]
    Ring(#[from] crate::ring::RingError),
    /// The coordinator is shutting down and had the group stop after this step; the job
    /// resumes from the checkpoint rank 0 uploaded there.
    #[error("job {0} stopped for the coordinator's shutdown")]
    Drained(String),
}

impl WorkerError {
    /// Wraps a status of `call`.
    pub fn rpc(call: &'static str, s: tonic::Status) -> Self {
        WorkerError::Rpc {
            call,
            status: s.message().to_string(),
            code: s.code(),
        }
    }
}
