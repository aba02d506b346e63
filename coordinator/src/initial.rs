//! The evaluation before the first step (`evaluation.at_start`): the state the first step
//! starts from — the `init_from` weights or the seeded initialisation, after the first
//! stage's copies and re-initialisations, as every worker builds it — evaluated on the
//! coordinator when the job is submitted, so that a fine-tuning job's starting point is in
//! its metrics (`initial.<metric>`) next to where it ended.

use graft_proto::v1 as pb;
use graft_transfer::methods::start_stage;

use crate::config::CoordinatorConfig;
use crate::error::CoordinatorError;
use crate::jobdata::JobData;

/// The prefix of the initial evaluation's metrics in the job's record.
pub const PREFIX: &str = "initial";

/// Evaluates the state the job's first step starts from, as an evaluation at step 0.
///
/// # Errors
/// [`CoordinatorError::Internal`] when the evaluation device cannot be made.
pub fn evaluate(
    config: &CoordinatorConfig,
    seed: u64,
    data: &JobData,
) -> Result<pb::Evaluation, CoordinatorError> {
    let mut params = data
        .init_params
        .clone()
        .unwrap_or_else(|| data.arch.init(seed));
    if let Some(first) = data.stages.first() {
        start_stage(&data.arch, &mut params, first, 0, seed);
    }
    let (metrics, sets) = data.evaluate(&params, config)?;
    for (name, value) in &metrics {
        tracing::info!(metric = %name, value = *value, "evaluated the starting state");
    }
    Ok(pb::Evaluation {
        step: 0,
        metrics: metrics.into_iter().collect(),
        sets,
    })
}
