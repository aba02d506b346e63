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
    /// The group's generation (0 before it first ran).
    #[serde(default)]
    pub generation: u64,
    /// Every membership change, oldest first.
    #[serde(default)]
    pub changes: Vec<MembershipChange>,
    /// What the completed steps used of each epoch, for the exactly-once check.
    #[serde(default)]
    pub epochs: Vec<EpochUse>,
    /// Steps the ledger in `epochs` has counted.
    #[serde(default)]
    pub ledger_step: u64,
    /// What each dataset holds, as loaded at submission (empty in records of older versions).
    #[serde(default)]
    pub datasets: Vec<DatasetInfo>,
}

/// Why and when a job's group changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipChange {
    /// The generation the change produced (0 while the group re-forms).
    pub generation: u64,
    /// Steps done when it happened.
    pub step: u64,
    /// `lost`, `left`, `group-failed`, `joined`, `formed`, `waiting`.
    pub cause: String,
    /// The workers concerned, as `id (name)`.
    pub workers: Vec<String>,
    /// Anything more.
    pub detail: String,
    /// When.
    pub unix_ms: u64,
}

impl MembershipChange {
    /// The wire form.
    pub fn to_pb(&self) -> pb::MembershipChange {
        pb::MembershipChange {
            generation: self.generation,
            step: self.step,
            cause: self.cause.clone(),
            workers: self.workers.clone(),
            detail: self.detail.clone(),
            unix_ms: self.unix_ms,
        }
    }
}

/// What one dataset of a job holds, as loaded at submission: a user can check that a file
/// was read as meant (its classes, its shape, its scaling) without reading the logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// The catalog name and split, or the path the job gave.
    pub source: String,
    /// Its role in the job.
    pub role: String,
    /// Samples the job uses (after holdout, labels_per_class and limit).
    pub samples: u64,
    /// Per-sample shape as the model sees it.
    pub sample_shape: Vec<usize>,
    /// The class of each label, in label order.
    pub classes: Vec<String>,
    /// What was read, in one line.
    pub stated: String,
}

impl DatasetInfo {
    /// The record of dataset `spec` as loaded into `data`, whose samples were `read` in shape
    /// before resizing; `classes` and `stated` are a file's own, absent for catalog sets.
    pub fn of(
        spec: &graft_transfer::spec::DatasetSpec,
        data: &graft_transfer::data::Dataset,
        read: &[usize],
        classes: Option<Vec<String>>,
        stated: Option<String>,
    ) -> Self {
        let shape = |s: &[usize]| {
            s.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("×")
        };
        let mut stated = stated.unwrap_or_else(|| {
            format!(
                "{}: {} samples of {}, {} classes",
                spec.source(),
                data.len(),
                shape(read),
                data.num_classes
            )
        });
        if read != data.sample_shape.as_slice() {
            stated.push_str(&format!(
                "; resized to {} for the model",
                shape(&data.sample_shape)
            ));
        }
        Self {
            source: spec.source(),
            role: spec.role.as_str().to_string(),
            samples: data.len() as u64,
            sample_shape: data.sample_shape.clone(),
            classes: classes
                .unwrap_or_else(|| (0..data.num_classes).map(|k| k.to_string()).collect()),
            stated,
        }
    }

    /// The wire form.
    pub fn to_pb(&self) -> pb::DatasetInfo {
        pb::DatasetInfo {
            source: self.source.clone(),
            role: self.role.clone(),
            samples: self.samples,
            sample_shape: self.sample_shape.iter().map(|&d| d as u64).collect(),
            classes: self.classes.clone(),
            stated: self.stated.clone(),
        }
    }
}

/// The samples the completed steps of one epoch used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochUse {
    /// The stage.
    pub stage: u32,
    /// The epoch of the stage's first stream.
    pub epoch: u64,
    /// Samples in the epoch's training set.
    pub samples: u64,
    /// Samples used.
    pub used: u64,
    /// Wrapping sum of a 64-bit mix of every used index: independent of the order.
    pub index_hash: u64,
}

impl EpochUse {
    /// The wire form.
    pub fn to_pb(&self) -> pb::EpochUse {
        pb::EpochUse {
            stage: self.stage,
            epoch: self.epoch,
            samples: self.samples,
            used: self.used,
            index_hash: self.index_hash,
        }
    }
}

/// A 64-bit mix of a sample index (splitmix64's finaliser), summed for [`EpochUse`]: a
/// set of indices has one sum whatever the order, and a repeated or missing index changes it.
pub fn index_mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
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
            generation: 0,
            changes: Vec::new(),
            epochs: Vec::new(),
            ledger_step: 0,
            datasets: Vec::new(),
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
            generation: self.generation,
            membership_changes: self.changes.iter().map(MembershipChange::to_pb).collect(),
            epochs: self.epochs.iter().map(EpochUse::to_pb).collect(),
            datasets: self.datasets.iter().map(DatasetInfo::to_pb).collect(),
        }
    }
}
