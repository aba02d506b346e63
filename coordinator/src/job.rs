//! A job as the coordinator keeps it: its spec, its state and what it has produced. This is
//! the part that is persisted in the store and survives a restart.

use std::collections::BTreeMap;

use graft_proto::v1 as pb;
use graft_transfer::JobSpec;
use serde::{Deserialize, Serialize};

pub use graft_common::JobId;
pub use graft_common::clock::now_ms;
use graft_common::wire::spec_to_pb;

/// `PENDING → RUNNING ⇄ RECONFIGURING → COMPLETED | FAILED | CANCELLED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Waiting for workers.
    Pending,
    /// Training.
    Running,
    /// The group is changing (workers leaving or joining).
    Reconfiguring,
    /// Finished, evaluated and checkpointed.
    Completed,
    /// Stopped by an error; `reason` says which.
    Failed,
    /// Stopped by a user.
    Cancelled,
}

impl JobState {
    /// The wire form.
    pub fn to_pb(self) -> pb::JobState {
        match self {
            JobState::Pending => pb::JobState::Pending,
            JobState::Running => pb::JobState::Running,
            JobState::Reconfiguring => pb::JobState::Reconfiguring,
            JobState::Completed => pb::JobState::Completed,
            JobState::Failed => pb::JobState::Failed,
            JobState::Cancelled => pb::JobState::Cancelled,
        }
    }

    /// Whether the job is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled
        )
    }
}

/// A written checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// Steps completed when it was taken.
    pub step: u64,
    /// The model weights (safetensors).
    pub path: String,
    /// The JSON manifest.
    pub manifest: String,
    /// SHA-256 of the weights file.
    pub sha256: String,
    /// When it was written.
    pub created_unix_ms: u64,
    /// Metrics of the evaluation at that step, if one ran.
    pub metrics: BTreeMap<String, f64>,
}

impl CheckpointRecord {
    /// The wire form.
    pub fn to_pb(&self) -> pb::CheckpointInfo {
        pb::CheckpointInfo {
            step: self.step,
            path: self.path.clone(),
            manifest: self.manifest.clone(),
            sha256: self.sha256.clone(),
            created_unix_ms: self.created_unix_ms,
            metrics: self.metrics.clone().into_iter().collect(),
        }
    }
}

/// Everything persisted about a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Its id.
    pub id: JobId,
    /// What it trains.
    pub spec: JobSpec,
    /// Where it is.
    pub state: JobState,
    /// Why it failed or was cancelled (empty otherwise).
    pub reason: String,
    /// Steps completed.
    pub step: u64,
    /// Steps in the whole job.
    pub total_steps: u64,
    /// Workers in its group.
    pub workers: u32,
    /// Latest evaluation metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Checkpoints kept, oldest first.
    pub checkpoints: Vec<CheckpointRecord>,
    /// Submission time.
    pub created_unix_ms: u64,
    /// First start.
    pub started_unix_ms: u64,
    /// End.
    pub finished_unix_ms: u64,
}

impl JobRecord {
    /// A new pending job.
    pub fn new(id: JobId, spec: JobSpec, total_steps: u64) -> Self {
        Self {
            id,
            spec,
            state: JobState::Pending,
            reason: String::new(),
            step: 0,
            total_steps,
            workers: 0,
            metrics: BTreeMap::new(),
            checkpoints: Vec::new(),
            created_unix_ms: now_ms(),
            started_unix_ms: 0,
            finished_unix_ms: 0,
        }
    }

    /// The wire form.
    pub fn to_pb(&self) -> pb::Job {
        pb::Job {
            id: self.id.0.clone(),
            spec: Some(spec_to_pb(&self.spec)),
            state: self.state.to_pb() as i32,
            reason: self.reason.clone(),
            step: self.step,
            total_steps: self.total_steps,
            workers: self.workers,
            metrics: self.metrics.clone().into_iter().collect(),
            checkpoint: self
                .checkpoints
                .last()
                .map(|c| c.path.clone())
                .unwrap_or_default(),
            created_unix_ms: self.created_unix_ms,
            started_unix_ms: self.started_unix_ms,
            finished_unix_ms: self.finished_unix_ms,
            method: self.spec.method.name().to_string(),
        }
    }
}
