//! Exports of a checkpoint's weights in a layout other than the checkpoint's own.
//!
//! A checkpoint holds graft's layout only; PyTorch's is made from it on request, so that
//! both can never disagree. The network is built again from the job's spec and data (the
//! input shape and class count come from the data), which also works for a job that has
//! ended and no longer holds its data.

use std::collections::BTreeMap;
use std::path::Path;

use graft_transfer::{torch_layout, weights};

use crate::error::CoordinatorError;
use crate::job::JobRecord;
use crate::jobdata::JobData;

/// Metadata key of graft's version in an export.
pub const VERSION_KEY: &str = "graft.version";
/// Metadata key of the job's spec (JSON) in an export.
pub const JOB_SPEC_KEY: &str = "graft.job_spec";

/// The weights of the checkpoint at `step` of `rec` (`graft`, in graft's layout) in
/// PyTorch's layout, with graft's version, the job, its step and its spec in the metadata.
///
/// # Errors
/// [`CoordinatorError::Conflict`] for a network no single `nn.Sequential` computes;
/// [`CoordinatorError::InvalidSpec`] when the job's data cannot be loaded again;
/// [`CoordinatorError::Internal`] when the checkpoint does not fit its own network.
pub fn torch(
    rec: &JobRecord,
    step: u64,
    graft: &[u8],
    datasets: &Path,
) -> Result<Vec<u8>, CoordinatorError> {
    let data = JobData::load(&rec.spec, datasets)?;
    let params = weights::params_from_safetensors(&data.arch, graft).map_err(|e| {
        CoordinatorError::Internal(format!(
            "the checkpoint of step {step} does not fit job {}'s network: {e}",
            rec.id
        ))
    })?;
    let spec = serde_json::to_string(&rec.spec)
        .map_err(|e| CoordinatorError::Internal(format!("the job spec as JSON: {e}")))?;
    let extra = BTreeMap::from([
        (
            VERSION_KEY.to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        (JOB_SPEC_KEY.to_string(), spec),
        ("graft.job_id".to_string(), rec.id.to_string()),
        ("graft.step".to_string(), step.to_string()),
    ]);
    torch_layout::to_torch_safetensors(&data.arch, &params, extra).map_err(|e| match e {
        weights::WeightsError::Layout(reason) => CoordinatorError::Conflict(format!(
            "job {} cannot be exported in PyTorch's layout: {reason}",
            rec.id
        )),
        other => CoordinatorError::Internal(other.to_string()),
    })
}
