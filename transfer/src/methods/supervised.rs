//! Supervised training on the labelled source data: the baseline every transfer method is
//! compared with.

use burn::tensor::{Device, Tensor};

use super::{
    Batch, BatchLoss, DataKey, Length, Method, StageDef, StepContext, StreamDef,
    classification_loss, zero_loss,
};
use crate::model::Architecture;
use crate::spec::{JobSpec, Role};

/// All parameters train on the source set with cross-entropy.
#[derive(Debug, Clone)]
pub struct Supervised {
    length: Length,
    batch: usize,
}

impl Supervised {
    /// The method for a job whose `method.kind = "supervised"`.
    pub fn new(spec: &JobSpec) -> Self {
        Self {
            length: training_length(spec),
            batch: spec.training.global_batch_size,
        }
    }
}

/// The length the job's `training` table asks for.
pub(crate) fn training_length(spec: &JobSpec) -> Length {
    match (spec.training.steps, spec.training.epochs) {
        (Some(s), _) => Length::Steps(s),
        (None, Some(e)) => Length::Epochs(e),
        (None, None) => Length::Steps(0),
    }
}

/// One stage of cross-entropy training on the labelled set of `role`.
pub(crate) fn labelled_stage(name: &str, role: Role, length: Length, batch: usize) -> StageDef {
    StageDef::new(
        name,
        vec![StreamDef {
            data: DataKey::role(role),
            batch,
        }],
        length,
    )
}

/// Cross-entropy on the first batch of a step (or zero when the step has none).
pub(crate) fn first_batch_loss(
    arch: &Architecture,
    params: &[Tensor<1>],
    batches: &[Batch],
    device: &Device,
) -> BatchLoss {
    match batches.first().filter(|b| !b.is_empty()) {
        Some(b) => classification_loss(arch, params, b, device),
        None => BatchLoss {
            loss: zero_loss(device),
            correct: 0,
        },
    }
}

impl Method for Supervised {
    fn name(&self) -> &'static str {
        "supervised"
    }

    fn stages(&self) -> Vec<StageDef> {
        vec![labelled_stage(
            "source",
            Role::Source,
            self.length,
            self.batch,
        )]
    }

    fn loss(
        &self,
        arch: &Architecture,
        params: &[Tensor<1>],
        batches: &[Batch],
        _ctx: &StepContext,
        device: &Device,
    ) -> BatchLoss {
        first_batch_loss(arch, params, batches, device)
    }
}
