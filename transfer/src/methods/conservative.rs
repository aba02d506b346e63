//! Conservative training: the target loss plus a penalty that keeps the model near the
//! source model. θ₀ is a frozen copy of the network (`anchor.*`) taken when the target stage
//! starts, so it is checkpointed, restored and identical on every worker like any parameter,
//! and never flattened or sent.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Tensor};

use super::fine_tuning::SourceThenTarget;
use super::supervised::first_batch_loss;
use super::{Batch, BatchLoss, Method, StageDef, StepContext, batch_tensors, cross_entropy_sum};
use crate::model::{Architecture, ColumnDef, Layout};
use crate::spec::{JobSpec, MethodSpec, Penalty};

/// Prefix of the frozen source copy.
pub const ANCHOR: &str = "anchor.";

/// Fine-tuning with an L2-SP, output-KL or feature-L2 penalty towards the source model.
#[derive(Debug, Clone)]
pub struct Conservative {
    plan: SourceThenTarget,
    penalty: Penalty,
    lambda: f64,
    temperature: f64,
}

impl Conservative {
    /// The method for a job whose `method.kind = "conservative"`.
    pub fn new(spec: &JobSpec) -> Self {
        let (penalty, lambda, temperature) = match &spec.method {
            MethodSpec::Conservative {
                penalty,
                lambda,
                temperature,
                ..
            } => (*penalty, *lambda, *temperature),
            _ => (Penalty::L2Sp, 0.0, 1.0),
        };
        Self {
            plan: SourceThenTarget::new(spec),
            penalty,
            lambda,
            temperature,
        }
    }

    /// Pairs `(live, anchor)` of parameter indices that L2-SP pulls together: the trunk, and
    /// the label head unless it was re-initialised (then it has no source counterpart).
    pub fn l2sp_pairs(&self, arch: &Architecture) -> Vec<(usize, usize)> {
        arch.params
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.name.starts_with("features.")
                    || (!self.plan.reset_head && p.name.starts_with("label_head."))
            })
            .filter_map(|(i, p)| {
                arch.index_of(&format!("{ANCHOR}{}", p.name))
                    .map(|a| (i, a))
            })
            .collect()
    }
}

impl Method for Conservative {
    fn name(&self) -> &'static str {
        "conservative"
    }

    fn layout(&self, num_classes: usize) -> Layout {
        let mut l = Layout::single(num_classes);
        l.columns.push(ColumnDef {
            prefix: ANCHOR.into(),
            outputs: Some(num_classes),
            laterals: false,
        });
        l
    }

    fn stages(&self) -> Vec<StageDef> {
        self.plan.stages(vec![
            ("features.".into(), format!("{ANCHOR}features.")),
            ("label_head.".into(), format!("{ANCHOR}label_head.")),
        ])
    }

    fn trainable(&self, arch: &Architecture, _stage: usize) -> Vec<bool> {
        arch.params
            .iter()
            .map(|p| !p.name.starts_with(ANCHOR))
            .collect()
    }

    fn loss(
        &self,
        arch: &Architecture,
        params: &[Tensor<1>],
        batches: &[Batch],
        ctx: &StepContext,
        device: &Device,
    ) -> BatchLoss {
        let Some(batch) = batches.first().filter(|b| !b.is_empty()) else {
            return first_batch_loss(arch, params, batches, device);
        };
        if ctx.stage < self.plan.target_stage() {
            return first_batch_loss(arch, params, batches, device);
        }
        let (x, y) = batch_tensors(batch, device);
        let out = arch.forward(params, x.clone());
        let (ce, correct) = cross_entropy_sum(out.logits.clone(), y);
        let lambda = self.lambda as f32;
        let penalty = match self.penalty {
            // Each rank adds n_local·λ‖θ−θ₀‖²: summed over the group and divided by the
            // global batch, the penalty counts once.
            Penalty::L2Sp => {
                let n = batch.len() as f32;
                self.l2sp_pairs(arch)
                    .into_iter()
                    .map(|(i, a)| (params[i].clone() - params[a].clone()).powi_scalar(2).sum())
                    .reduce(|a, b| a + b)
                    .map(|s| s.mul_scalar(lambda * n))
            }
            Penalty::OutputKl => {
                let t = self.temperature as f32;
                let f0 = arch.forward_column(params, 1, x).logits.detach();
                let q0 = softmax(f0.clone().div_scalar(t), 1);
                let log_q0 = log_softmax(f0.div_scalar(t), 1);
                let log_q = log_softmax(out.logits.div_scalar(t), 1);
                Some((q0 * (log_q0 - log_q)).sum().mul_scalar(lambda * t * t))
            }
            Penalty::FeatureL2 => {
                let f0 = arch.forward_column(params, 1, x).features.detach();
                Some((out.features - f0).powi_scalar(2).sum().mul_scalar(lambda))
            }
        };
        BatchLoss {
            loss: match penalty {
                Some(p) => ce + p,
                None => ce,
            },
            correct,
        }
    }
}
