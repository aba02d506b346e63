//! The transfer methods.
//!
//! A method says what a job trains and how, in terms the coordinator and workers share
//! without knowing which method runs: its stages (which data each trains on, how long, what
//! is re-initialised when it starts), which parameters are trainable, the loss of a batch,
//! and its evaluation. One method per file.

mod fine_tuning;
mod supervised;

use burn::tensor::{Device, Int, Tensor, TensorData, activation::log_softmax};

pub use fine_tuning::FineTuning;
pub use supervised::Supervised;

use crate::model::Architecture;
use crate::params::Params;
use crate::spec::{JobSpec, MethodSpec, Role};

/// How long a stage runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// A number of steps.
    Steps(u64),
    /// A number of passes over the stage's training set.
    Epochs(u32),
}

/// A stage as the method defines it, before the data sizes are known.
#[derive(Debug, Clone, PartialEq)]
pub struct StageDef {
    /// For reports.
    pub name: String,
    /// The labelled data it trains on.
    pub train_role: Role,
    /// How long.
    pub length: Length,
    /// Parameter-name prefixes re-initialised when the stage starts.
    pub reset_prefixes: Vec<String>,
}

/// A stage with its place in the job, once the data sizes are known.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// For reports.
    pub name: String,
    /// The labelled data it trains on.
    pub train_role: Role,
    /// Global step (0-based) of its first step.
    pub first_step: u64,
    /// Its number of steps.
    pub steps: u64,
    /// Samples in its training set.
    pub samples: usize,
    /// Global batches per epoch.
    pub steps_per_epoch: u64,
    /// Parameter-name prefixes re-initialised when it starts.
    pub reset_prefixes: Vec<String>,
}

impl Stage {
    /// Whether global step `step` is in this stage.
    pub fn contains(&self, step: u64) -> bool {
        (self.first_step..self.first_step + self.steps).contains(&step)
    }
}

/// The samples of one local batch.
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

/// What a method computes on one batch.
#[derive(Debug)]
pub struct BatchLoss {
    /// Sum (not mean) over the batch's samples, so that sums over workers divided by the
    /// global sample count give the mean over the global batch.
    ///
    /// # Shapes
    /// `[1]`.
    pub loss: Tensor<1>,
    /// Correctly classified samples.
    pub correct: u64,
}

/// A transfer method.
pub trait Method: Send + Sync {
    /// Its name in reports.
    fn name(&self) -> &'static str;
    /// Its stages.
    fn stages(&self) -> Vec<StageDef>;
    /// Which parameters train in `stage` (`true` = trainable), in the architecture's order.
    fn trainable(&self, arch: &Architecture, stage: usize) -> Vec<bool>;
    /// The loss of a batch in `stage`.
    ///
    /// # Shapes
    /// `params` as from [`Architecture::tensors`]; the batch becomes `[len, dim]`.
    fn loss(
        &self,
        arch: &Architecture,
        params: &[Tensor<1>],
        batch: &Batch,
        stage: usize,
        device: &Device,
    ) -> BatchLoss;
}

/// The method a job asks for.
pub fn method_for(spec: &JobSpec) -> Box<dyn Method> {
    match &spec.method {
        MethodSpec::Supervised => Box::new(Supervised::new(spec)),
        MethodSpec::FineTuning { .. } => Box::new(FineTuning::new(spec)),
    }
}

/// Resolves the method's stages against the sizes of the training sets.
pub fn plan_stages(
    defs: &[StageDef],
    global_batch: usize,
    samples: impl Fn(Role) -> usize,
) -> Vec<Stage> {
    let mut first = 0;
    defs.iter()
        .map(|d| {
            let n = samples(d.train_role);
            let spe = crate::shard::batches_per_epoch(n, global_batch).max(1);
            let steps = match d.length {
                Length::Steps(s) => s,
                Length::Epochs(e) => spe * e as u64,
            };
            let stage = Stage {
                name: d.name.clone(),
                train_role: d.train_role,
                first_step: first,
                steps,
                samples: n,
                steps_per_epoch: spe,
                reset_prefixes: d.reset_prefixes.clone(),
            };
            first += steps;
            stage
        })
        .collect()
}

/// Whether an evaluation runs after `done` steps: every `evaluation.interval_steps`, and at
/// the end of every stage (so fine-tuning reports the source model too).
pub fn evaluation_due(spec: &JobSpec, stages: &[Stage], done: u64) -> bool {
    let every = spec.evaluation.interval_steps;
    (every > 0 && done.is_multiple_of(every))
        || stages.iter().any(|s| s.first_step + s.steps == done)
}

/// Whether a checkpoint is written after `done` steps: every `checkpoint.interval_steps`, and
/// at the end of every stage.
pub fn checkpoint_due(spec: &JobSpec, stages: &[Stage], done: u64) -> bool {
    let every = spec.checkpoint.interval_steps;
    (every > 0 && done.is_multiple_of(every))
        || stages.iter().any(|s| s.first_step + s.steps == done)
}

/// Whether rank 0 uploads its state after `done` steps (for an evaluation or a checkpoint).
pub fn state_due(spec: &JobSpec, stages: &[Stage], done: u64) -> bool {
    done > 0 && (evaluation_due(spec, stages, done) || checkpoint_due(spec, stages, done))
}

/// A batch on `device`.
///
/// # Shapes
/// Returns `[len, dim]` features and `[len, 1]` labels.
pub fn batch_tensors(batch: &Batch, device: &Device) -> (Tensor<2>, Tensor<2, Int>) {
    let n = batch.len();
    let x = Tensor::<2>::from_data(
        TensorData::new(batch.features.clone(), [n, batch.dim]),
        device,
    );
    let labels: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
    let y = Tensor::<2, Int>::from_data(TensorData::new(labels, [n, 1]), device);
    (x, y)
}

/// Summed cross-entropy of `logits` against `labels`, and the count of correct argmaxes.
///
/// # Shapes
/// `logits`: `[n, classes]`, `labels`: `[n, 1]` → `[1]`.
pub fn cross_entropy_sum(logits: Tensor<2>, labels: Tensor<2, Int>) -> (Tensor<1>, u64) {
    let predicted = logits.clone().argmax(1);
    let correct = predicted
        .equal(labels.clone())
        .int()
        .sum()
        .into_scalar_i64();
    let picked = log_softmax(logits, 1).gather(1, labels);
    (picked.sum().neg(), correct.max(0) as u64)
}

/// Cross-entropy of the label head on a labelled batch: the loss of supervised training and
/// of both fine-tuning stages.
pub fn classification_loss(
    arch: &Architecture,
    params: &[Tensor<1>],
    batch: &Batch,
    device: &Device,
) -> BatchLoss {
    let (x, y) = batch_tensors(batch, device);
    let out = arch.forward(params, x);
    let (loss, correct) = cross_entropy_sum(out.logits, y);
    BatchLoss { loss, correct }
}

/// Reads a scalar from an int tensor.
trait IntoScalarI64 {
    fn into_scalar_i64(self) -> i64;
}

impl IntoScalarI64 for Tensor<1, Int> {
    fn into_scalar_i64(self) -> i64 {
        self.into_data().iter::<i64>().next().unwrap_or(0)
    }
}

/// The gradient of a step, flattened over the trainable parameters, and the batch's sums.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    /// Gradient of the summed loss, trainable parameters only, in order.
    pub grad: Vec<f32>,
    /// Sum of the per-sample loss.
    pub loss_sum: f64,
    /// Samples in the batch.
    pub samples: u64,
    /// Correct predictions.
    pub correct: u64,
}

/// Forward and backward on one batch: the flattened gradient of the trainable parameters.
/// An empty batch contributes a zero gradient.
pub fn compute_step(
    method: &dyn Method,
    arch: &Architecture,
    params: &Params,
    trainable: &[bool],
    batch: &Batch,
    stage: usize,
    device: &Device,
) -> StepResult {
    let n = params.flat_len(trainable);
    if batch.is_empty() {
        return StepResult {
            grad: vec![0.0; n],
            loss_sum: 0.0,
            samples: 0,
            correct: 0,
        };
    }
    let device = device.clone().autodiff();
    let tensors = arch.tensors(params, &device, trainable);
    let out = method.loss(arch, &tensors, batch, stage, &device);
    let loss_sum = out
        .loss
        .clone()
        .into_data()
        .iter::<f64>()
        .next()
        .unwrap_or(f64::NAN);
    let grads = out.loss.backward();
    let mut grad = Vec::with_capacity(n);
    for (t, spec) in tensors
        .iter()
        .zip(&arch.params)
        .zip(trainable)
        .filter(|(_, m)| **m)
        .map(|(p, _)| p)
    {
        match t.grad(&grads) {
            Some(g) => grad.extend(g.into_data().iter::<f32>()),
            None => grad.extend(std::iter::repeat_n(0.0, spec.numel())),
        }
    }
    StepResult {
        grad,
        loss_sum,
        samples: batch.len() as u64,
        correct: out.correct,
    }
}

#[cfg(test)]
mod tests;
