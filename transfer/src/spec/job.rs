//! The whole job, and the validation that walks its tables.

use serde::{Deserialize, Serialize};

use super::error::{SpecError, bad};
use super::{
    AllReduce, CheckpointSpec, DatasetSpec, EvaluationSpec, MAX_GENERATED, MethodSpec, ModelSpec,
    OptimizerSpec, RingTransport, Role, ScheduleSpec, TrainingSpec, WorkersSpec,
};

/// A whole job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// A name for people; the coordinator gives each job its own id.
    pub name: String,
    /// Seeds initial weights, epoch permutations and generated data.
    #[serde(default)]
    pub seed: u64,
    /// The network.
    pub model: ModelSpec,
    /// The transfer method and its parameters.
    pub method: MethodSpec,
    /// Datasets with their roles.
    pub datasets: Vec<DatasetSpec>,
    /// How gradients become updates.
    pub optimizer: OptimizerSpec,
    /// Learning-rate schedule.
    #[serde(default)]
    pub schedule: ScheduleSpec,
    /// Batch size and length.
    pub training: TrainingSpec,
    /// Group size.
    #[serde(default)]
    pub workers: WorkersSpec,
    /// When to write checkpoints.
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    /// When to evaluate.
    #[serde(default)]
    pub evaluation: EvaluationSpec,
    /// How the group sums its gradients.
    #[serde(default)]
    pub allreduce: AllReduce,
    /// What carries the ring's chunks (the ring only).
    #[serde(default)]
    pub ring_transport: RingTransport,
}

impl JobSpec {
    /// The datasets of a role, with their index in `datasets`.
    pub fn datasets_with(&self, role: Role) -> impl Iterator<Item = (usize, &DatasetSpec)> {
        self.datasets
            .iter()
            .enumerate()
            .filter(move |(_, d)| d.role == role)
    }

    /// Checks everything that can be checked without reading data files.
    ///
    /// # Errors
    /// The first [`SpecError`] found, naming the field.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.name.trim().is_empty() {
            return Err(bad("name", "must not be empty"));
        }
        self.model.validate()?;
        self.validate_datasets()?;
        self.validate_method()?;
        self.optimizer.validate()?;
        self.schedule.validate()?;
        self.training.validate()?;
        self.workers.validate()?;
        if (self.training.global_batch_size as u64) < self.workers.max as u64 {
            return Err(bad(
                "training.global_batch_size",
                format!(
                    "must be >= workers.max ({}) so that every worker gets samples",
                    self.workers.max
                ),
            ));
        }
        self.checkpoint.validate()
    }

    /// A global batch size given somewhere other than `training`.
    pub(super) fn check_batch(&self, field: &str, b: usize) -> Result<(), SpecError> {
        if b == 0 {
            return Err(bad(field, "must be > 0"));
        }
        if (b as u64) < self.workers.max as u64 {
            return Err(bad(
                field,
                format!(
                    "must be >= workers.max ({}) so that every worker gets samples",
                    self.workers.max
                ),
            ));
        }
        if b > MAX_GENERATED {
            return Err(bad(field, format!("must be <= {MAX_GENERATED}")));
        }
        Ok(())
    }
}
