//! What a job trains: the domain form of a job file, and its validation.
//!
//! The client reads a TOML file into [`JobSpec`], the wire carries it as `graft.v1.JobSpec`,
//! and the coordinator validates it once with [`JobSpec::validate`]. Every error names the
//! field (`optimizer.lr: must be > 0`), so a user can fix the file without guessing.
//!
//! Each table of the file has its own module (its types, defaults and checks); each method's
//! own parameters are checked in `method/<method>.rs`, and [`JobSpec::validate`] (in `job`)
//! walks them in the order the file reads.

mod allreduce;
mod checkpoint;
mod dataset;
pub mod defaults;
mod error;
mod evaluation;
mod job;
mod limits;
mod method;
mod model;
mod optimizer;
mod schedule;
mod training;
mod workers;

pub use allreduce::{AllReduce, RingTransport};
pub use checkpoint::CheckpointSpec;
pub use dataset::{ColumnRef, DatasetSpec, Normalize, Role};
pub use error::SpecError;
pub use evaluation::EvaluationSpec;
pub use job::JobSpec;
pub use limits::{MAX_EPOCHS, MAX_GENERATED, MAX_STEPS, MAX_WIDTH};
pub use method::{AttributeSource, GrlRamp, MethodSpec, Penalty, Scoring, TaskSpec};
pub use model::ModelSpec;
pub use optimizer::OptimizerSpec;
pub use schedule::ScheduleSpec;
pub use training::TrainingSpec;
pub use workers::WorkersSpec;

#[cfg(test)]
mod tests;
