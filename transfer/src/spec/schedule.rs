//! The learning-rate schedule.

use serde::{Deserialize, Serialize};

use super::error::{SpecError, bad};

/// The learning-rate schedule, applied within each stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleSpec {
    /// The base rate throughout. Braced, so that stray keys are refused (as for
    /// `ModelSpec::DigitsCnn`).
    Constant {},
    /// Multiply by `gamma` every `step_size` steps.
    Step {
        /// Steps between decays.
        step_size: u64,
        /// Decay factor.
        gamma: f64,
    },
    /// DANN's annealing: μ₀ / (1 + α·p)^β, p the stage's progress in [0, 1].
    Dann {
        /// α (10 in the paper).
        #[serde(default = "default_alpha")]
        alpha: f64,
        /// β (0.75 in the paper).
        #[serde(default = "default_beta")]
        beta: f64,
    },
}

impl Default for ScheduleSpec {
    fn default() -> Self {
        Self::Constant {}
    }
}

fn default_alpha() -> f64 {
    super::defaults::SCHEDULE_ALPHA
}
fn default_beta() -> f64 {
    super::defaults::SCHEDULE_BETA
}

impl ScheduleSpec {
    pub(super) fn validate(&self) -> Result<(), SpecError> {
        match self {
            ScheduleSpec::Constant {} => {}
            ScheduleSpec::Step { step_size, gamma } => {
                if *step_size == 0 {
                    return Err(bad("schedule.step_size", "must be > 0"));
                }
                if !(gamma.is_finite() && *gamma > 0.0) {
                    return Err(bad("schedule.gamma", "must be > 0"));
                }
            }
            ScheduleSpec::Dann { alpha, beta } => {
                if !(alpha.is_finite() && *alpha >= 0.0) {
                    return Err(bad("schedule.alpha", "must be >= 0"));
                }
                if !(beta.is_finite() && *beta >= 0.0) {
                    return Err(bad("schedule.beta", "must be >= 0"));
                }
            }
        }
        Ok(())
    }
}
