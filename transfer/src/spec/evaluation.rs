//! When a job evaluates.

use serde::{Deserialize, Serialize};

/// Evaluation policy; the last step always evaluates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EvaluationSpec {
    /// Steps between evaluations (0: only at the end).
    #[serde(default)]
    pub interval_steps: u64,
    /// Also evaluate the state the first step starts from (a fine-tuning job's starting
    /// point), in the job's metrics as `initial.<metric>`.
    #[serde(default)]
    pub at_start: bool,
}
