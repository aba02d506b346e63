//! One step's forward and backward: the local batches in, the flattened gradient of the
//! trainable parameters out (whole or in buckets), with the batch's sums.

use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::Method;
use crate::model::Architecture;
use crate::params::Params;

/// The sums of one step's batch: what each rank reports with its gradient and what the group
/// adds up. One type from the method through the wire to the coordinator's progress.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct StepStats {
    /// Sum of the per-sample losses.
    pub loss_sum: f64,
    /// Samples of the first stream.
    pub samples: u64,
    /// Correct predictions.
    pub correct: u64,
}

impl StepStats {
    /// Adds another rank's sums (the group's total, in rank order).
    pub fn add(&mut self, o: &StepStats) {
        self.loss_sum += o.loss_sum;
        self.samples += o.samples;
        self.correct += o.correct;
    }

    /// The mean loss per sample (0 for an empty batch).
    pub fn mean_loss(&self) -> f64 {
        if self.samples > 0 {
            self.loss_sum / self.samples as f64
        } else {
            0.0
        }
    }

    /// The fraction of correct predictions (0 for an empty batch).
    pub fn accuracy(&self) -> f64 {
        if self.samples > 0 {
            self.correct as f64 / self.samples as f64
        } else {
            0.0
        }
    }
}

/// The samples of one local batch of one stream.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Row-major `[count, dim]`.
    pub features: Vec<f32>,
    /// One label per sample.
    pub labels: Vec<u32>,
    /// Elements per sample.
    pub dim: usize,
}

impl Batch {
    /// Samples in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether it holds no sample (a rank can get none of a short last batch).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Where a step is, for the losses that change over training or scale by the group's batch.
#[derive(Debug, Clone, PartialEq)]
pub struct StepContext {
    /// The stage.
    pub stage: usize,
    /// Steps of the stage done before this one.
    pub step_in_stage: u64,
    /// Steps in the stage.
    pub stage_steps: u64,
    /// Samples of each stream in the whole group's batch at this step.
    pub global_counts: Vec<usize>,
}

impl StepContext {
    /// Training progress p ∈ [0, 1] within the stage.
    pub fn progress(&self) -> f64 {
        self.step_in_stage as f64 / self.stage_steps.max(1) as f64
    }

    /// The factor that turns a sum over stream `s`'s samples into a contribution to the loss
    /// that the group divides by the first stream's global count: the sum then weighs as the
    /// mean over the stream's global batch.
    pub fn stream_scale(&self, s: usize) -> f32 {
        let primary = self.global_counts.first().copied().unwrap_or(1).max(1) as f32;
        let own = self.global_counts.get(s).copied().unwrap_or(1).max(1) as f32;
        primary / own
    }
}

/// What a method computes on one step's batches.
#[derive(Debug)]
pub struct BatchLoss {
    /// Sum (not mean) over the first stream's samples, with the other streams scaled by
    /// [`StepContext::stream_scale`], so that sums over workers divided by the first
    /// stream's global count give the mean loss of the global batch.
    ///
    /// # Shapes
    /// `[1]`.
    pub loss: Tensor<1>,
    /// Correctly classified samples of the first stream.
    pub correct: u64,
}

/// A zero loss on `device` (a step whose local batches are all empty).
pub fn zero_loss(device: &Device) -> Tensor<1> {
    Tensor::<1>::zeros([1], device)
}

/// The gradient of a step, flattened over the trainable parameters, and the batch's sums.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    /// Gradient of the summed loss, trainable parameters only, in order.
    pub grad: Vec<f32>,
    /// The batch's sums.
    pub stats: StepStats,
}

/// Forward and backward on one step's batches: the flattened gradient of the trainable
/// parameters. Batches that are all empty contribute a zero gradient.
pub fn compute_step(
    method: &dyn Method,
    arch: &Architecture,
    params: &Params,
    trainable: &[bool],
    batches: &[Batch],
    ctx: &StepContext,
    device: &Device,
) -> StepResult {
    let n = params.flat_len(trainable);
    let mut grad = Vec::with_capacity(n);
    let out = compute_step_buckets(
        method,
        arch,
        params,
        trainable,
        batches,
        ctx,
        device,
        &[n],
        &mut |b| grad.extend_from_slice(&b),
    );
    StepResult {
        grad,
        stats: out.stats,
    }
}

/// Where the flat gradient of the trainable parameters is cut into buckets, in elements:
/// at parameter boundaries, the first bucket closed once it holds `first_bytes`, the others
/// once they hold `bytes` (PyTorch DDP: 1 MiB, then 25 MiB). A small first bucket lets the
/// reduction start early while the rest is still being flattened. The lengths sum to the
/// flat length; a network without trainable parameters has no bucket.
pub fn bucket_plan(
    arch: &Architecture,
    trainable: &[bool],
    first_bytes: usize,
    bytes: usize,
) -> Vec<usize> {
    let mut plan = Vec::new();
    let mut open = 0usize;
    for (p, _) in arch.params.iter().zip(trainable).filter(|(_, m)| **m) {
        open += p.numel();
        let cap = if plan.is_empty() { first_bytes } else { bytes };
        if open * 4 >= cap.max(4) {
            plan.push(open);
            open = 0;
        }
    }
    if open > 0 {
        plan.push(open);
    }
    plan
}

/// Loss, counts and where the time of a step went, without the gradient (handed out in
/// buckets).
#[derive(Debug, Clone, Copy, Default)]
pub struct StepOutcome {
    /// The batch's sums.
    pub stats: StepStats,
    /// Forward and backward.
    pub compute: std::time::Duration,
    /// Gradients out of the autodiff graph into buckets (including the time `emit` took).
    pub flatten: std::time::Duration,
}

/// [`compute_step`], handing the flat gradient to `emit` in buckets of the lengths of
/// `plan` (see [`bucket_plan`]) as soon as each is filled, so that the caller can start
/// reducing a bucket while later parameters are still being flattened.
#[allow(clippy::too_many_arguments)]
pub fn compute_step_buckets(
    method: &dyn Method,
    arch: &Architecture,
    params: &Params,
    trainable: &[bool],
    batches: &[Batch],
    ctx: &StepContext,
    device: &Device,
    plan: &[usize],
    emit: &mut dyn FnMut(Vec<f32>),
) -> StepOutcome {
    let started = std::time::Instant::now();
    let samples = batches.first().map_or(0, |b| b.len() as u64);
    if batches.iter().all(Batch::is_empty) {
        for &len in plan {
            emit(vec![0.0; len]);
        }
        return StepOutcome {
            stats: StepStats {
                samples,
                ..StepStats::default()
            },
            flatten: started.elapsed(),
            ..StepOutcome::default()
        };
    }
    let device = device.clone().autodiff();
    let tensors = arch.tensors(params, &device, trainable);
    let out = method.loss(arch, &tensors, batches, ctx, &device);
    let loss_sum = out
        .loss
        .clone()
        .into_data()
        .iter::<f64>()
        .next()
        .unwrap_or(f64::NAN);
    let grads = out.loss.backward();
    let compute = started.elapsed();
    let mut sizes = plan.iter().copied();
    let mut want = sizes.next().unwrap_or(usize::MAX);
    let mut bucket = Vec::with_capacity(want.min(1 << 24));
    for (t, spec) in tensors
        .iter()
        .zip(&arch.params)
        .zip(trainable)
        .filter(|(_, m)| **m)
        .map(|(p, _)| p)
    {
        match t.grad(&grads) {
            Some(g) => {
                let data = g.into_data();
                // A slice copy, not `iter`: its boxed iterator costs a virtual call per value,
                // which was most of the flatten time of the mlp step (2.7 MB of gradient).
                match data.as_slice::<f32>() {
                    Ok(values) => bucket.extend_from_slice(values),
                    Err(_) => bucket.extend(data.iter::<f32>()),
                }
            }
            None => bucket.extend(std::iter::repeat_n(0.0, spec.numel())),
        }
        if bucket.len() >= want {
            let next = sizes.next().unwrap_or(usize::MAX);
            let full = std::mem::replace(&mut bucket, Vec::with_capacity(next.min(1 << 24)));
            emit(full);
            want = next;
        }
    }
    if !bucket.is_empty() {
        emit(bucket);
    }
    StepOutcome {
        stats: StepStats {
            loss_sum,
            samples,
            correct: out.correct,
        },
        compute,
        flatten: started.elapsed() - compute,
    }
}
