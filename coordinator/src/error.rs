//! The coordinator's errors, and their mapping to gRPC status codes.

use tonic::Status;

use crate::store::StoreError;

/// What can go wrong in the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// A job spec field cannot be used.
    #[error("{field}: {reason}")]
    InvalidSpec {
        /// Dotted field path.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// No such job.
    #[error("no job {0}")]
    UnknownJob(String),
    /// No such worker (or it timed out).
    #[error("unknown worker {0}: register again")]
    UnknownWorker(String),
    /// A request that does not fit the job's current state.
    #[error("{0}")]
    Conflict(String),
    /// The job stopped while the request waited.
    #[error("job {job} is {state}: {reason}")]
    JobStopped {
        /// The job.
        job: String,
        /// Its state.
        state: &'static str,
        /// Why.
        reason: String,
    },
    /// A call that names a worker without carrying its secret.
    #[error("{0}")]
    PermissionDenied(String),
    /// A peer sent something malformed.
    #[error("{0}")]
    BadRequest(String),
    /// A limit of the coordinator is reached (the message names it).
    #[error("{0}")]
    Exhausted(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// File I/O failed (checkpoints).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The coordinator is stopping; the job resumes from its checkpoint when it is back.
    #[error(
        "the coordinator is shutting down; job {0} resumes from its checkpoint after the restart"
    )]
    ShuttingDown(String),
    /// A shared helper failed (an atomic write, TLS set-up).
    #[error(transparent)]
    Common(#[from] graft_common::CommonError),
    /// Anything else internal.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<CoordinatorError> for Status {
    fn from(e: CoordinatorError) -> Self {
        let msg = e.to_string();
        match e {
            CoordinatorError::InvalidSpec { .. } | CoordinatorError::BadRequest(_) => {
                Status::invalid_argument(msg)
            }
            CoordinatorError::UnknownJob(_) => Status::not_found(msg),
            CoordinatorError::UnknownWorker(_) => Status::unauthenticated(msg),
            CoordinatorError::PermissionDenied(_) => Status::permission_denied(msg),
            CoordinatorError::Conflict(_) => Status::failed_precondition(msg),
            CoordinatorError::JobStopped { .. } => Status::aborted(msg),
            CoordinatorError::ShuttingDown(_) => Status::unavailable(msg),
            CoordinatorError::Exhausted(_) => Status::resource_exhausted(msg),
            CoordinatorError::Store(_)
            | CoordinatorError::Io { .. }
            | CoordinatorError::Common(_)
            | CoordinatorError::Internal(_) => Status::internal(msg),
        }
    }
}
