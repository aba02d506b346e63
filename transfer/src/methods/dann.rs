//! Domain-adversarial training (Ganin et al. 2016): the label head learns from labelled
//! source data while a domain head, behind a gradient-reversal layer, learns to tell source
//! from unlabelled target features — and the reversed gradient teaches the extractor to make
//! them indistinguishable.

use burn::tensor::activation::log_sigmoid;
use burn::tensor::{Device, Tensor, TensorData};

use super::supervised::training_length;
use super::{
    Batch, BatchLoss, DataKey, EvalInputs, Evaluation, Length, Method, StageDef, StepContext,
    StreamDef, batch_tensors, cross_entropy_sum, evaluate_label_head, zero_loss,
};
use crate::model::{Architecture, HeadDef, Layout};
use crate::params::Params;
use crate::spec::{GrlRamp, JobSpec, MethodSpec, Role, defaults};

/// Prefix of the domain head.
pub const DOMAIN_HEAD: &str = "domain_head";

/// DANN with the paper's λ schedule.
#[derive(Debug, Clone)]
pub struct Dann {
    length: Length,
    batch: usize,
    target_batch: usize,
    schedule: GrlSchedule,
    trade_off: f64,
    domain_hidden: Vec<usize>,
}

/// λ_p = max · (2/(1+e^(−γp)) − 1): 0 at the start, rising to `max`, so the domain signal
/// cannot swamp the features before they are useful.
pub fn grl_lambda(max: f64, gamma: f64, p: f64) -> f64 {
    max * (2.0 / (1.0 + (-gamma * p).exp()) - 1.0)
}

/// How a job's reversal weight rises, as the workers and the coordinator's curves both
/// compute it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GrlSchedule {
    /// The weight it rises to.
    pub lambda_max: f64,
    /// γ of `ramp = "progress"`.
    pub gamma: f64,
    /// Over progress or over steps.
    pub ramp: GrlRamp,
    /// The scale of `ramp = "steps"`.
    pub ramp_steps: u64,
}

impl GrlSchedule {
    /// The schedule of a DANN spec (none for other methods).
    pub fn of(method: &MethodSpec) -> Option<Self> {
        match method {
            MethodSpec::Dann {
                lambda_max,
                gamma,
                ramp,
                ramp_steps,
                ..
            } => Some(Self {
                lambda_max: *lambda_max,
                gamma: *gamma,
                ramp: *ramp,
                ramp_steps: ramp_steps.unwrap_or(defaults::DANN_RAMP_STEPS).max(1),
            }),
            _ => None,
        }
    }

    /// λ at step `i` (0-based) of a stage of `steps` steps.
    pub fn lambda(&self, i: u64, steps: u64) -> f64 {
        match self.ramp {
            GrlRamp::Progress => {
                grl_lambda(self.lambda_max, self.gamma, i as f64 / steps.max(1) as f64)
            }
            GrlRamp::Steps => grl_lambda(self.lambda_max, 1.0, i as f64 / self.ramp_steps as f64),
        }
    }
}

/// The gradient-reversal layer: identity forward, −λ × the gradient backward.
///
/// `x.detach()·(1+λ) − x·λ` equals `x` in value, and only the second term carries a
/// gradient.
pub fn reverse_gradient<const D: usize>(x: Tensor<D>, lambda: f32) -> Tensor<D> {
    x.clone().detach().mul_scalar(1.0 + lambda) - x.mul_scalar(lambda)
}

/// Summed binary cross-entropy of logits `z` against one domain label for the whole batch.
fn bce_sum(z: Tensor<2>, target: bool) -> Tensor<1> {
    let l = if target {
        log_sigmoid(z)
    } else {
        log_sigmoid(z.neg())
    };
    l.sum().neg()
}

impl Dann {
    /// The method for a job whose `method.kind = "dann"`.
    pub fn new(spec: &JobSpec) -> Self {
        let (domain_hidden, target_batch, trade_off) = match &spec.method {
            MethodSpec::Dann {
                domain_hidden,
                target_batch_size,
                trade_off,
                ..
            } => (domain_hidden.clone(), *target_batch_size, *trade_off),
            _ => (
                defaults::DOMAIN_HIDDEN.to_vec(),
                None,
                defaults::DANN_TRADE_OFF,
            ),
        };
        Self {
            length: training_length(spec),
            batch: spec.training.global_batch_size,
            target_batch: target_batch.unwrap_or(spec.training.global_batch_size),
            schedule: GrlSchedule::of(&spec.method).unwrap_or(GrlSchedule {
                lambda_max: defaults::LAMBDA_MAX,
                gamma: defaults::DANN_GAMMA,
                ramp: GrlRamp::Progress,
                ramp_steps: defaults::DANN_RAMP_STEPS,
            }),
            trade_off,
            domain_hidden,
        }
    }
}

impl Method for Dann {
    fn name(&self) -> &'static str {
        "dann"
    }

    fn layout(&self, num_classes: usize) -> Layout {
        let mut l = Layout::single(num_classes);
        l.heads.push(HeadDef {
            prefix: DOMAIN_HEAD.into(),
            hidden: self.domain_hidden.clone(),
            outputs: 1,
        });
        l
    }

    fn stages(&self) -> Vec<StageDef> {
        let streams = vec![
            StreamDef {
                data: DataKey::role(Role::Source),
                batch: self.batch,
            },
            StreamDef {
                data: DataKey::role(Role::TargetUnlabelled),
                batch: self.target_batch,
            },
        ];
        vec![StageDef::new("adapt", streams, self.length)]
    }

    fn loss(
        &self,
        arch: &Architecture,
        params: &[Tensor<1>],
        batches: &[Batch],
        ctx: &StepContext,
        device: &Device,
    ) -> BatchLoss {
        let lambda = self.schedule.lambda(ctx.step_in_stage, ctx.stage_steps) as f32;
        let trade_off = self.trade_off as f32;
        let head = arch.head_index(DOMAIN_HEAD).unwrap_or(usize::MAX);
        let mut loss = zero_loss(device);
        let mut correct = 0;
        // Domain loss: the mean over source and the mean over target, averaged.
        for (s, batch) in batches.iter().enumerate().take(2) {
            if batch.is_empty() {
                continue;
            }
            let (x, y) = batch_tensors(batch, device);
            let out = arch.forward(params, x);
            if s == 0 {
                let (ce, c) = cross_entropy_sum(out.logits, y);
                loss = loss + ce;
                correct = c;
            }
            let z = arch.head(params, head, reverse_gradient(out.features, lambda));
            let d = bce_sum(z, s == 1).mul_scalar(0.5 * trade_off * ctx.stream_scale(s));
            loss = loss + d;
        }
        BatchLoss { loss, correct }
    }

    fn evaluate(
        &self,
        arch: &Architecture,
        params: &Params,
        inputs: &EvalInputs<'_>,
        device: &Device,
    ) -> Evaluation {
        let mut out = evaluate_label_head(arch, params, inputs, device);
        // Domain accuracy: the target evaluation set against as many source training samples.
        let tensors = arch.tensors(params, device, &[]);
        let head = arch.head_index(DOMAIN_HEAD).unwrap_or(usize::MAX);
        let source = inputs.train.get(&DataKey::role(Role::Source));
        let target = inputs
            .sets
            .iter()
            .find(|s| s.label == "target")
            .or(inputs.sets.first());
        let Some(target) = target else {
            return out;
        };
        let Some(source) = source else { return out };
        let n = target.data.len().min(source.len());
        let mut right = 0usize;
        let mut total = 0usize;
        for (set, is_target, count) in [
            (source.as_ref(), false, n),
            (target.data.as_ref(), true, target.data.len()),
        ] {
            let dim = set.sample_dim();
            for start in (0..count).step_by(1000) {
                let end = (start + 1000).min(count);
                let x = Tensor::<2>::from_data(
                    TensorData::new(
                        set.features[start * dim..end * dim].to_vec(),
                        [end - start, dim],
                    ),
                    device,
                );
                let f = arch.forward(&tensors, x).features;
                let z: Vec<f32> = arch
                    .head(&tensors, head, f)
                    .into_data()
                    .iter::<f32>()
                    .collect();
                right += z.iter().filter(|&&v| (v > 0.0) == is_target).count();
                total += z.len();
            }
        }
        if total > 0 {
            out.metrics
                .insert("domain_accuracy".into(), right as f64 / total as f64);
        }
        out
    }
}
