//! Domain-adversarial training's reversal schedule and domain head.

use serde::{Deserialize, Serialize};

use crate::spec::error::{SpecError, bad};
use crate::spec::{JobSpec, MAX_STEPS, MAX_WIDTH, defaults};

/// How the reversal weight λ rises from 0 to `lambda_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrlRamp {
    /// The DANN paper's λ_p = max · (2/(1+e^(−γp)) − 1) over the stage's progress p ∈ [0, 1].
    #[default]
    Progress,
    /// TLlib's warm start, max · (2/(1+e^(−i/ramp_steps)) − 1) over the stage's steps i: the
    /// same curve whatever the job's length.
    Steps,
}

impl GrlRamp {
    /// The word job files use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Progress => "progress",
            Self::Steps => "steps",
        }
    }
}

pub(super) fn default_trade_off() -> f64 {
    defaults::DANN_TRADE_OFF
}

pub(super) fn default_lambda_max() -> f64 {
    defaults::LAMBDA_MAX
}
pub(super) fn default_gamma() -> f64 {
    defaults::DANN_GAMMA
}
pub(super) fn default_domain_hidden() -> Vec<usize> {
    defaults::DOMAIN_HIDDEN.to_vec()
}

impl JobSpec {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn validate_dann(
        &self,
        lambda_max: f64,
        gamma: f64,
        domain_hidden: &[usize],
        target_batch_size: Option<usize>,
        trade_off: f64,
        ramp: GrlRamp,
        ramp_steps: Option<u64>,
    ) -> Result<(), SpecError> {
        if !(trade_off.is_finite() && trade_off >= 0.0) {
            return Err(bad("method.trade_off", "must be a finite number >= 0"));
        }
        match (ramp, ramp_steps) {
            (GrlRamp::Progress, Some(_)) => {
                return Err(bad("method.ramp_steps", "only applies to ramp = \"steps\""));
            }
            (GrlRamp::Steps, Some(n)) if n == 0 || n > MAX_STEPS => {
                return Err(bad(
                    "method.ramp_steps",
                    format!("must be in 1..={MAX_STEPS}"),
                ));
            }
            _ => {}
        }
        if !(lambda_max.is_finite() && lambda_max >= 0.0) {
            return Err(bad("method.lambda_max", "must be a finite number >= 0"));
        }
        if !(gamma.is_finite() && gamma >= 0.0) {
            return Err(bad("method.gamma", "must be a finite number >= 0"));
        }
        if domain_hidden.len() > 8 {
            return Err(bad("method.domain_hidden", "takes at most 8 layers"));
        }
        if let Some(i) = domain_hidden.iter().position(|&h| h == 0 || h > MAX_WIDTH) {
            return Err(bad(
                format!("method.domain_hidden[{i}]"),
                format!("must be in 1..={MAX_WIDTH}"),
            ));
        }
        if let Some(b) = target_batch_size {
            self.check_batch("method.target_batch_size", b)?;
        }
        Ok(())
    }
}
