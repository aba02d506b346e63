//! How gradients become updates.

use serde::{Deserialize, Serialize};

use super::error::{SpecError, bad};

/// The optimizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerSpec {
    /// SGD with momentum and (L2) weight decay, as PyTorch defines them.
    Sgd {
        /// Base learning rate.
        lr: f64,
        /// Momentum factor.
        #[serde(default)]
        momentum: f64,
        /// L2 penalty added to the gradient.
        #[serde(default)]
        weight_decay: f64,
        /// Nesterov momentum.
        #[serde(default)]
        nesterov: bool,
    },
    /// Adam (Kingma & Ba), L2 weight decay added to the gradient.
    Adam {
        /// Base learning rate.
        lr: f64,
        /// First-moment decay.
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// Second-moment decay.
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// Denominator guard.
        #[serde(default = "default_eps")]
        eps: f64,
        /// L2 penalty added to the gradient.
        #[serde(default)]
        weight_decay: f64,
    },
}

fn default_beta1() -> f64 {
    super::defaults::BETA1
}
fn default_beta2() -> f64 {
    super::defaults::BETA2
}
fn default_eps() -> f64 {
    super::defaults::EPS
}

impl OptimizerSpec {
    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerSpec::Sgd { lr, .. } | OptimizerSpec::Adam { lr, .. } => *lr,
        }
    }

    pub(super) fn validate(&self) -> Result<(), SpecError> {
        let lr = self.lr();
        if !(lr.is_finite() && lr > 0.0) {
            return Err(bad("optimizer.lr", "must be > 0"));
        }
        match self {
            OptimizerSpec::Sgd {
                momentum,
                weight_decay,
                nesterov,
                ..
            } => {
                if !(momentum.is_finite() && (0.0..1.0).contains(momentum)) {
                    return Err(bad("optimizer.momentum", "must be in [0, 1)"));
                }
                if !(weight_decay.is_finite() && *weight_decay >= 0.0) {
                    return Err(bad("optimizer.weight_decay", "must be >= 0"));
                }
                if *nesterov && *momentum == 0.0 {
                    return Err(bad("optimizer.nesterov", "needs momentum > 0"));
                }
            }
            OptimizerSpec::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => {
                for (k, v) in [("beta1", beta1), ("beta2", beta2)] {
                    if !(v.is_finite() && (0.0..1.0).contains(v)) {
                        return Err(bad(format!("optimizer.{k}"), "must be in [0, 1)"));
                    }
                }
                if !(eps.is_finite() && *eps > 0.0) {
                    return Err(bad("optimizer.eps", "must be > 0"));
                }
                if !(weight_decay.is_finite() && *weight_decay >= 0.0) {
                    return Err(bad("optimizer.weight_decay", "must be >= 0"));
                }
            }
        }
        Ok(())
    }
}
