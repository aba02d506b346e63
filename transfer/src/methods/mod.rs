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

mod evaluation;
mod loss;
mod stage;
mod step;

use burn::tensor::{Device, Tensor};
pub use conservative::Conservative;
pub use dann::{Dann, GrlSchedule, grl_lambda, reverse_gradient};
pub use evaluation::{EvalInputs, EvalSet, Evaluation, evaluate_label_head, evaluate_sets};
pub use fine_tuning::FineTuning;
pub use layer_transfer::LayerTransfer;
pub use loss::{batch_tensors, classification_loss, cross_entropy_sum, mask_of};
pub use multitask::Multitask;
pub use pattern::LayerPattern;
pub use progressive::Progressive;
pub use stage::{
    DataKey, Length, Stage, StageDef, StreamDef, StreamPlan, checkpoint_due, evaluation_due,
    plan_stages, start_stage, state_due,
};
pub use step::{
    Batch, BatchLoss, StepContext, StepOutcome, StepResult, StepStats, bucket_plan, compute_step,
    compute_step_buckets, zero_loss,
};
pub use supervised::Supervised;
pub use zero_shot::ZeroShot;

use crate::model::{Architecture, Layout};
use crate::params::Params;
use crate::spec::{JobSpec, MethodSpec};
use crate::zeroshot::ClassVectors;

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
        MethodSpec::Supervised {} => Box::new(Supervised::new(spec)),
        MethodSpec::FineTuning { .. } => Box::new(FineTuning::new(spec)),
        MethodSpec::Conservative { .. } => Box::new(Conservative::new(spec)),
        MethodSpec::LayerTransfer { .. } => Box::new(LayerTransfer::new(spec)),
        MethodSpec::Multitask { .. } => Box::new(Multitask::new(spec)),
        MethodSpec::Progressive { .. } => Box::new(Progressive::new(spec)),
        MethodSpec::Dann { .. } => Box::new(Dann::new(spec)),
        MethodSpec::ZeroShot { .. } => Box::new(ZeroShot::new(spec, data.class_vectors.clone())),
    }
}

#[cfg(test)]
mod tests;
