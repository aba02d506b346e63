//! Supervised training on the labelled source data: the baseline every transfer method is
//! compared with.

use burn::tensor::{Device, Tensor};

use super::{Batch, BatchLoss, Length, Method, StageDef, classification_loss};
use crate::model::Architecture;
use crate::spec::{JobSpec, Role};

/// All parameters train on the source set with cross-entropy.
#[derive(Debug, Clone)]
pub struct Supervised {
    length: Length,
}

impl Supervised {
    /// The method for a job whose `method.kind = "supervised"`.
    pub fn new(spec: &JobSpec) -> Self {
        Self {
            length: training_length(spec),
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

impl Method for Supervised {
    fn name(&self) -> &'static str {
        "supervised"
    }

    fn stages(&self) -> Vec<StageDef> {
        vec![StageDef {
            name: "source".into(),
            train_role: Role::Source,
            length: self.length,
            reset_prefixes: Vec::new(),
        }]
    }

    fn trainable(&self, arch: &Architecture, _stage: usize) -> Vec<bool> {
        vec![true; arch.params.len()]
    }

    fn loss(
        &self,
        arch: &Architecture,
        params: &[Tensor<1>],
        batch: &Batch,
        _stage: usize,
        device: &Device,
    ) -> BatchLoss {
        classification_loss(arch, params, batch, device)
    }
}
