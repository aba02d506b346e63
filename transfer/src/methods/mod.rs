//! The transfer methods.
//!
//! A method says what a job trains and how, in terms the coordinator and workers share
//! without knowing which method runs: the network's columns and heads ([`Layout`]), its
//! stages (which data each trains on, how long, what is copied or re-initialised when it
//! starts), which parameters are trainable, the loss of a step's batches, and its
//! evaluation. One method per file.

mod conservative;
mod dann;
mod fine_tuning;
mod layer_transfer;
mod multitask;
mod pattern;
mod progressive;
mod supervised;
mod zero_shot;

use std::collections::BTreeMap;
use std::sync::Arc;

use burn::tensor::{Device, Int, Tensor, TensorData, activation::log_softmax};
pub use conservative::Conservative;
pub use dann::{Dann, grl_lambda, reverse_gradient};
pub use fine_tuning::FineTuning;
pub use layer_transfer::LayerTransfer;
pub use multitask::Multitask;
pub use pattern::LayerPattern;
pub use progressive::Progressive;
pub use supervised::Supervised;
pub use zero_shot::ZeroShot;

use crate::data::Dataset;
use crate::eval::{EvalResult, evaluate_logits};
use crate::model::{Architecture, Layout};
use crate::params::Params;
use crate::spec::{JobSpec, MethodSpec, Role};
use crate::zeroshot::ClassVectors;

/// How long a stage runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// A number of steps.
    Steps(u64),
    /// A number of passes over the stage's first training set.
    Epochs(u32),
}

/// Which training set a stream draws from: a role (`source`, `target_labelled`,
/// `target_unlabelled`) or a task (`task:<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DataKey(pub String);

impl DataKey {
    /// The training set of a role.
    pub fn role(role: Role) -> Self {
        Self(role.as_str().to_string())
    }

    /// The training set of a task.
    pub fn task(name: &str) -> Self {
        Self(format!("task:{name}"))
    }
}

impl std::fmt::Display for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One training set a stage draws a batch from at every step.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamDef {
    /// The data.
    pub data: DataKey,
    /// Samples per step over the whole group.
    pub batch: usize,
}

/// A stage as the method defines it, before the data sizes are known.
#[derive(Debug, Clone, PartialEq)]
pub struct StageDef {
    /// For reports.
    pub name: String,
    /// The training sets of every step; the first one counts epochs and samples.
    pub streams: Vec<StreamDef>,
    /// How long.
    pub length: Length,
    /// Parameter-name prefixes re-initialised when the stage starts.
    pub reset_prefixes: Vec<String>,
    /// `(from, to)` parameter-name prefixes copied when the stage starts (before resets):
    /// how conservative training freezes its copy θ₀ of the source model.
    pub copies: Vec<(String, String)>,
}

impl StageDef {
    /// A stage that neither copies nor resets parameters when it starts.
    pub fn new(name: &str, streams: Vec<StreamDef>, length: Length) -> Self {
        Self {
            name: name.into(),
            streams,
            length,
            reset_prefixes: Vec::new(),
            copies: Vec::new(),
        }
    }
}

/// A stream with its sizes, once the data are known.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamPlan {
    /// The data.
    pub data: DataKey,
    /// Samples per step over the whole group.
    pub batch: usize,
    /// Samples in the set.
    pub samples: usize,
    /// Global batches per pass over the set.
    pub steps_per_epoch: u64,
}

impl StreamPlan {
    /// The epoch of the set and the batch within it at step `i` of the stage.
    pub fn position(&self, i: u64) -> (u64, u64) {
        let spe = self.steps_per_epoch.max(1);
        (i / spe, i % spe)
    }
}

/// A stage with its place in the job, once the data sizes are known.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// For reports.
    pub name: String,
    /// Global step (0-based) of its first step.
    pub first_step: u64,
    /// Its number of steps.
    pub steps: u64,
    /// Its training sets; the first one counts epochs and samples.
    pub streams: Vec<StreamPlan>,
    /// Parameter-name prefixes re-initialised when it starts.
    pub reset_prefixes: Vec<String>,
    /// Parameter-name prefixes copied when it starts.
    pub copies: Vec<(String, String)>,
}

impl Stage {
    /// Whether global step `step` is in this stage.
    pub fn contains(&self, step: u64) -> bool {
        (self.first_step..self.first_step + self.steps).contains(&step)
    }

    /// Global batches per epoch of the first stream.
    pub fn steps_per_epoch(&self) -> u64 {
        self.streams.first().map_or(1, |s| s.steps_per_epoch.max(1))
    }

    /// The epoch (of the first stream) at global step `step`.
    pub fn epoch_at(&self, step: u64) -> u64 {
        step.saturating_sub(self.first_step) / self.steps_per_epoch()
    }

    /// Global sample counts of every stream at step `i` of the stage.
    pub fn global_counts(&self, i: u64) -> Vec<usize> {
        self.streams
            .iter()
            .map(|s| crate::shard::global_batch(s.samples, s.batch, s.position(i).1).len())
            .collect()
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

/// Evaluation sets and what a method may need besides them.
pub struct EvalInputs<'a> {
    /// The evaluation sets in job order.
    pub sets: &'a [EvalSet],
    /// The training sets, by key (domain accuracy takes source samples from here).
    pub train: &'a BTreeMap<DataKey, Arc<Dataset>>,
}

/// One evaluation set.
#[derive(Debug, Clone)]
pub struct EvalSet {
    /// Metric prefix: `target`, a job's label, or `tasks.<task>`.
    pub label: String,
    /// The task it belongs to (multitask, progressive).
    pub task: Option<String>,
    /// The samples.
    pub data: Arc<Dataset>,
}

/// What an evaluation reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evaluation {
    /// Scalar metrics by name (`target_accuracy`, `tasks.mnist.accuracy`, ...).
    pub metrics: BTreeMap<String, f64>,
    /// Per-set details (per-class accuracy, confusion matrix).
    pub sets: Vec<EvalResult>,
}

/// A transfer method.
pub trait Method: Send + Sync {
    /// Its name in reports.
    fn name(&self) -> &'static str;

    /// The columns and heads of its network for data with `num_classes` classes.
    fn layout(&self, num_classes: usize) -> Layout {
        Layout::single(num_classes)
    }

    /// Its stages.
    fn stages(&self) -> Vec<StageDef>;

    /// Which parameters train in `stage` (`true` = trainable), in the architecture's order;
    /// by default all of them.
    fn trainable(&self, arch: &Architecture, _stage: usize) -> Vec<bool> {
        vec![true; arch.params.len()]
    }

    /// The loss of a step: one batch per stream of the stage.
    ///
    /// # Shapes
    /// `params` as from [`Architecture::tensors`]; each batch becomes `[len, dim]`.
    fn loss(
        &self,
        arch: &Architecture,
        params: &[Tensor<1>],
        batches: &[Batch],
        ctx: &StepContext,
        device: &Device,
    ) -> BatchLoss;

    /// Evaluates the parameters; by default the label head on every set.
    fn evaluate(
        &self,
        arch: &Architecture,
        params: &Params,
        inputs: &EvalInputs<'_>,
        device: &Device,
    ) -> Evaluation {
        evaluate_label_head(arch, params, inputs, device)
    }
}

/// Column 0's label head on every evaluation set.
pub fn evaluate_label_head(
    arch: &Architecture,
    params: &Params,
    inputs: &EvalInputs<'_>,
    device: &Device,
) -> Evaluation {
    evaluate_sets(arch, params, inputs, device, |_, tensors, x| {
        arch.forward(tensors, x).logits
    })
}

/// Every evaluation set through `logits(set, parameters, x)`, a method's choice of head or
/// column per set; the accuracies and losses of all sets in one [`Evaluation`].
pub fn evaluate_sets(
    arch: &Architecture,
    params: &Params,
    inputs: &EvalInputs<'_>,
    device: &Device,
    mut logits: impl FnMut(&EvalSet, &[Tensor<1>], Tensor<2>) -> Tensor<2>,
) -> Evaluation {
    let tensors = arch.tensors(params, device, &[]);
    let mut out = Evaluation::default();
    for set in inputs.sets {
        let r = evaluate_logits(&set.data, &set.label, arch.num_classes, device, |x| {
            logits(set, &tensors, x)
        });
        out.metrics.extend(r.metrics());
        out.sets.push(r);
    }
    out
}

/// What a method needs beyond its spec that the coordinator derives from data (the class
/// vectors of zero-shot learning) and sends to the workers with the assignment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MethodData {
    /// Zero-shot learning's class vectors.
    pub class_vectors: Option<ClassVectors>,
}

/// The method a job asks for.
pub fn method_for(spec: &JobSpec, data: &MethodData) -> Box<dyn Method> {
    match &spec.method {
        MethodSpec::Supervised => Box::new(Supervised::new(spec)),
        MethodSpec::FineTuning { .. } => Box::new(FineTuning::new(spec)),
        MethodSpec::Conservative { .. } => Box::new(Conservative::new(spec)),
        MethodSpec::LayerTransfer { .. } => Box::new(LayerTransfer::new(spec)),
        MethodSpec::Multitask { .. } => Box::new(Multitask::new(spec)),
        MethodSpec::Progressive { .. } => Box::new(Progressive::new(spec)),
        MethodSpec::Dann { .. } => Box::new(Dann::new(spec)),
        MethodSpec::ZeroShot { .. } => Box::new(ZeroShot::new(spec, data.class_vectors.clone())),
    }
}

/// Resolves the method's stages against the sizes of the training sets.
pub fn plan_stages(defs: &[StageDef], samples: impl Fn(&DataKey) -> usize) -> Vec<Stage> {
    let mut first = 0;
    defs.iter()
        .map(|d| {
            let streams: Vec<StreamPlan> = d
                .streams
                .iter()
                .map(|s| {
                    let n = samples(&s.data);
                    StreamPlan {
                        data: s.data.clone(),
                        batch: s.batch,
                        samples: n,
                        steps_per_epoch: crate::shard::batches_per_epoch(n, s.batch).max(1),
                    }
                })
                .collect();
            let spe = streams.first().map_or(1, |s| s.steps_per_epoch);
            let steps = match d.length {
                Length::Steps(s) => s,
                Length::Epochs(e) => spe * e as u64,
            };
            let stage = Stage {
                name: d.name.clone(),
                first_step: first,
                steps,
                streams,
                reset_prefixes: d.reset_prefixes.clone(),
                copies: d.copies.clone(),
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

/// Applies a stage's start: copies, then re-initialisation of the reset prefixes (from a
/// stream of the seed distinct from the first initialisation).
pub fn start_stage(
    arch: &Architecture,
    params: &mut Params,
    stage: &Stage,
    index: usize,
    seed: u64,
) {
    for (from, to) in &stage.copies {
        for (i, p) in arch.params.iter().enumerate() {
            if let Some(rest) = p.name.strip_prefix(to.as_str())
                && let Some(src) = arch.index_of(&format!("{from}{rest}"))
            {
                let v = params.values()[src].clone();
                params.values_mut()[i] = v;
            }
        }
    }
    for (i, p) in arch.params.iter().enumerate() {
        if stage
            .reset_prefixes
            .iter()
            .any(|pre| p.name.starts_with(pre.as_str()))
        {
            params.values_mut()[i] = arch.init_param(i, seed ^ ((index as u64 + 1) << 32));
        }
    }
}

/// A mask of the parameters whose names start with one of `prefixes`.
pub fn mask_of(arch: &Architecture, prefixes: &[&str]) -> Vec<bool> {
    arch.params
        .iter()
        .map(|p| prefixes.iter().any(|pre| p.name.starts_with(pre)))
        .collect()
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
        .into_data()
        .iter::<i64>()
        .next()
        .unwrap_or(0);
    let picked = log_softmax(logits, 1).gather(1, labels);
    (picked.sum().neg(), correct.max(0) as u64)
}

/// Cross-entropy of column 0's label head on a labelled batch: the loss of supervised
/// training and of the fine-tuning stages.
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

/// A zero loss on `device` (a step whose local batches are all empty).
pub fn zero_loss(device: &Device) -> Tensor<1> {
    Tensor::<1>::zeros([1], device)
}

/// The gradient of a step, flattened over the trainable parameters, and the batch's sums.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    /// Gradient of the summed loss, trainable parameters only, in order.
    pub grad: Vec<f32>,
    /// Sum of the per-sample loss.
    pub loss_sum: f64,
    /// Samples of the first stream.
    pub samples: u64,
    /// Correct predictions.
    pub correct: u64,
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
        loss_sum: out.loss_sum,
        samples: out.samples,
        correct: out.correct,
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
    /// Sum of the per-sample losses.
    pub loss_sum: f64,
    /// Samples of the first stream.
    pub samples: u64,
    /// Correct predictions.
    pub correct: u64,
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
            samples,
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
        loss_sum,
        samples,
        correct: out.correct,
        compute,
        flatten: started.elapsed() - compute,
    }
}

#[cfg(test)]
mod tests;
