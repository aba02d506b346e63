//! Job states as the wire and people spell them.

use graft_proto::v1 as pb;

/// The name of a job state as people read it (`COMPLETED`).
pub fn state_name(s: pb::JobState) -> &'static str {
    match s {
        pb::JobState::Unspecified => "UNSPECIFIED",
        pb::JobState::Pending => "PENDING",
        pb::JobState::Running => "RUNNING",
        pb::JobState::Reconfiguring => "RECONFIGURING",
        pb::JobState::Completed => "COMPLETED",
        pb::JobState::Failed => "FAILED",
        pb::JobState::Cancelled => "CANCELLED",
    }
}

/// Whether a job in this state will not change again.
pub fn is_terminal(s: pb::JobState) -> bool {
    matches!(
        s,
        pb::JobState::Completed | pb::JobState::Failed | pb::JobState::Cancelled
    )
}
