//! Conservative training's distance and weights.

use serde::{Deserialize, Serialize};

use crate::spec::error::{SpecError, bad};

/// The distance of conservative training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Penalty {
    /// λ·Σ‖θ−θ₀‖² over the parameters with a source counterpart (L2-SP).
    L2Sp,
    /// λ·T²·KL(softmax(f₀(x)/T) ‖ softmax(f(x)/T)) per sample (distillation).
    OutputKl,
    /// λ·‖features(x) − features₀(x)‖² per sample.
    FeatureL2,
}

impl Penalty {
    /// The name used in job files.
    pub fn as_str(self) -> &'static str {
        match self {
            Penalty::L2Sp => "l2_sp",
            Penalty::OutputKl => "output_kl",
            Penalty::FeatureL2 => "feature_l2",
        }
    }
}

pub(super) fn default_temperature() -> f64 {
    crate::spec::defaults::TEMPERATURE
}

pub(super) fn validate(lambda: f64, temperature: f64) -> Result<(), SpecError> {
    if !(lambda.is_finite() && lambda >= 0.0) {
        return Err(bad("method.lambda", "must be a finite number >= 0"));
    }
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(bad("method.temperature", "must be > 0"));
    }
    Ok(())
}
