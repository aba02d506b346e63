//! Domain-adversarial training's reversal schedule and domain head.

use crate::spec::error::{SpecError, bad};
use crate::spec::{JobSpec, MAX_WIDTH, defaults};

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
    pub(super) fn validate_dann(
        &self,
        lambda_max: f64,
        gamma: f64,
        domain_hidden: &[usize],
        target_batch_size: Option<usize>,
    ) -> Result<(), SpecError> {
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
