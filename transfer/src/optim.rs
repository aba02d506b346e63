//! Optimizers and learning-rate schedules on flat vectors.
//!
//! Every worker applies the same update to the same averaged gradient, so replicas stay
//! bit-identical; the state (momentum, Adam moments) is flat too, which makes checkpoints and
//! the state handed to a joining worker plain vectors.

use crate::spec::{OptimizerSpec, ScheduleSpec};

/// Optimizer state for the trainable parameters of one stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Optimizer {
    spec: OptimizerSpec,
    /// SGD: momentum buffer. Adam: first moment.
    pub m: Vec<f32>,
    /// Adam: second moment (empty for SGD).
    pub v: Vec<f32>,
    /// Updates applied so far in this stage.
    pub steps: u64,
}

/// Why a state cannot be restored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("optimizer state has {got} elements, expected {expected}")]
pub struct StateLengthError {
    /// Elements expected.
    pub expected: usize,
    /// Elements given.
    pub got: usize,
}

impl Optimizer {
    /// Fresh state for `n` trainable elements.
    pub fn new(spec: &OptimizerSpec, n: usize) -> Self {
        let v = match spec {
            OptimizerSpec::Adam { .. } => vec![0.0; n],
            OptimizerSpec::Sgd { .. } => Vec::new(),
        };
        Self {
            spec: spec.clone(),
            m: vec![0.0; n],
            v,
            steps: 0,
        }
    }

    /// Length of [`Optimizer::state`] for `n` trainable elements.
    pub fn state_len(spec: &OptimizerSpec, n: usize) -> usize {
        match spec {
            OptimizerSpec::Sgd { .. } => n,
            OptimizerSpec::Adam { .. } => 2 * n,
        }
    }

    /// Restores state saved from [`Optimizer::state`].
    ///
    /// # Errors
    /// [`StateLengthError`] when the vectors do not fit `n` elements.
    pub fn restore(
        spec: &OptimizerSpec,
        n: usize,
        m: Vec<f32>,
        v: Vec<f32>,
        steps: u64,
    ) -> Result<Self, StateLengthError> {
        let fresh = Self::new(spec, n);
        if m.len() != fresh.m.len() {
            return Err(StateLengthError {
                expected: fresh.m.len(),
                got: m.len(),
            });
        }
        if v.len() != fresh.v.len() {
            return Err(StateLengthError {
                expected: fresh.v.len(),
                got: v.len(),
            });
        }
        Ok(Self {
            spec: spec.clone(),
            m,
            v,
            steps,
        })
    }

    /// The state as one vector (`m` then `v`) for checkpoints.
    pub fn state(&self) -> Vec<f32> {
        let mut s = self.m.clone();
        s.extend_from_slice(&self.v);
        s
    }

    /// Splits a vector saved by [`Optimizer::state`] back into a state for `n` elements.
    ///
    /// # Errors
    /// [`StateLengthError`] when the length does not fit.
    pub fn from_state(
        spec: &OptimizerSpec,
        n: usize,
        state: &[f32],
        steps: u64,
    ) -> Result<Self, StateLengthError> {
        let expected = Self::state_len(spec, n);
        if state.len() != expected {
            return Err(StateLengthError {
                expected,
                got: state.len(),
            });
        }
        Self::restore(spec, n, state[..n].to_vec(), state[n..].to_vec(), steps)
    }

    /// One update of `params` (flat, trainable only) with the averaged gradient at rate `lr`.
    /// Follows PyTorch's `SGD` and `Adam` (L2 weight decay folded into the gradient).
    pub fn step(&mut self, params: &mut [f32], grad: &[f32], lr: f64) {
        self.steps += 1;
        match self.spec {
            OptimizerSpec::Sgd {
                momentum,
                weight_decay,
                nesterov,
                ..
            } => {
                let (mu, wd, lr) = (momentum as f32, weight_decay as f32, lr as f32);
                let first = self.steps == 1;
                for i in 0..params.len() {
                    let mut g = grad[i] + wd * params[i];
                    if mu != 0.0 {
                        let b = if first { g } else { mu * self.m[i] + g };
                        self.m[i] = b;
                        g = if nesterov { g + mu * b } else { b };
                    }
                    params[i] -= lr * g;
                }
            }
            OptimizerSpec::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => {
                let (b1, b2, eps, wd) =
                    (beta1 as f32, beta2 as f32, eps as f32, weight_decay as f32);
                let t = self.steps as i32;
                let bc1 = 1.0 - b1.powi(t);
                let bc2 = 1.0 - b2.powi(t);
                let step_size = lr as f32 / bc1;
                let bc2_sqrt = bc2.sqrt();
                for i in 0..params.len() {
                    let g = grad[i] + wd * params[i];
                    self.m[i] = b1 * self.m[i] + (1.0 - b1) * g;
                    self.v[i] = b2 * self.v[i] + (1.0 - b2) * g * g;
                    let denom = self.v[i].sqrt() / bc2_sqrt + eps;
                    params[i] -= step_size * self.m[i] / denom;
                }
            }
        }
    }
}

/// The learning rate at step `step_in_stage` (0-based) of a stage of `stage_steps` steps.
pub fn learning_rate(
    base: f64,
    schedule: &ScheduleSpec,
    step_in_stage: u64,
    stage_steps: u64,
) -> f64 {
    match schedule {
        ScheduleSpec::Constant {} => base,
        ScheduleSpec::Step { step_size, gamma } => {
            base * gamma.powi((step_in_stage / (*step_size).max(1)) as i32)
        }
        ScheduleSpec::Dann { alpha, beta } => {
            let p = step_in_stage as f64 / stage_steps.max(1) as f64;
            base / (1.0 + alpha * p).powf(*beta)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgd_momentum_matches_pytorch_by_hand() {
        let spec = OptimizerSpec::Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
            nesterov: false,
        };
        let mut o = Optimizer::new(&spec, 1);
        let mut p = [1.0f32];
        o.step(&mut p, &[1.0], 0.1); // b = 1, p = 0.9
        o.step(&mut p, &[1.0], 0.1); // b = 1.9, p = 0.71
        assert!((p[0] - 0.71).abs() < 1e-6, "{}", p[0]);
    }

    #[test]
    fn adam_first_step_moves_by_lr() {
        let spec = OptimizerSpec::Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut o = Optimizer::new(&spec, 2);
        let mut p = [0.0f32, 0.0];
        o.step(&mut p, &[3.0, -0.5], 0.01);
        assert!(
            (p[0] + 0.01).abs() < 1e-6 && (p[1] - 0.01).abs() < 1e-6,
            "{p:?}"
        );
        let saved = o.state();
        let back = Optimizer::from_state(&spec, 2, &saved, o.steps).expect("fits");
        assert_eq!(back, o);
        assert!(Optimizer::from_state(&spec, 3, &saved, 1).is_err());
    }

    #[test]
    fn schedules() {
        assert_eq!(learning_rate(0.1, &ScheduleSpec::Constant {}, 50, 100), 0.1);
        let s = ScheduleSpec::Step {
            step_size: 10,
            gamma: 0.5,
        };
        assert!((learning_rate(1.0, &s, 25, 100) - 0.25).abs() < 1e-12);
        let d = ScheduleSpec::Dann {
            alpha: 10.0,
            beta: 0.75,
        };
        assert_eq!(learning_rate(0.01, &d, 0, 100), 0.01);
        assert!((learning_rate(0.01, &d, 100, 100) - 0.01 / 11f64.powf(0.75)).abs() < 1e-12);
    }
}
