//! Fine-tuning: a source stage (or a model loaded from safetensors), then a target stage on
//! a few labelled target samples that starts from the source stage's weights.

use burn::tensor::{Device, Tensor};

use super::supervised::{first_batch_loss, labelled_stage, training_length};
use super::{Batch, BatchLoss, Length, Method, StageDef, StepContext};
use crate::model::Architecture;
use crate::spec::{JobSpec, MethodSpec, Role};

/// Two stages of cross-entropy training; every parameter trains in both.
#[derive(Debug, Clone)]
pub struct FineTuning {
    plan: SourceThenTarget,
}

/// The stages shared by fine-tuning, conservative training and layer transfer: an optional
/// source stage, then a target stage on the labelled target set.
#[derive(Debug, Clone)]
pub(crate) struct SourceThenTarget {
    /// The source stage's length; `None` when the model comes from a file.
    pub source: Option<Length>,
    /// The target stage's length.
    pub target: Length,
    /// Re-initialise the label head when the target stage starts.
    pub reset_head: bool,
    /// Global batch size.
    pub batch: usize,
}

impl SourceThenTarget {
    /// The plan of any method with a source stage.
    pub fn new(spec: &JobSpec) -> Self {
        let source = match spec.method.source_stage() {
            Some((_, _, Some(_))) | None => None,
            Some((Some(s), _, None)) => Some(Length::Steps(s)),
            Some((None, Some(e), None)) => Some(Length::Epochs(e)),
            Some((None, None, None)) => None,
        };
        let reset_head = match &spec.method {
            MethodSpec::FineTuning { reset_head, .. }
            | MethodSpec::Conservative { reset_head, .. }
            | MethodSpec::LayerTransfer { reset_head, .. } => *reset_head,
            _ => false,
        };
        Self {
            source,
            target: training_length(spec),
            reset_head,
            batch: spec.training.global_batch_size,
        }
    }

    /// Index of the target stage.
    pub fn target_stage(&self) -> usize {
        usize::from(self.source.is_some())
    }

    /// The stages; `copies` run when the target stage starts.
    pub fn stages(&self, copies: Vec<(String, String)>) -> Vec<StageDef> {
        let mut stages = Vec::new();
        if let Some(length) = self.source {
            stages.push(labelled_stage("source", Role::Source, length, self.batch));
        }
        let mut target = labelled_stage("target", Role::TargetLabelled, self.target, self.batch);
        if self.reset_head {
            target.reset_prefixes = vec!["label_head.".to_string()];
        }
        target.copies = copies;
        stages.push(target);
        stages
    }
}

impl FineTuning {
    /// The method for a job whose `method.kind = "fine_tuning"`.
    pub fn new(spec: &JobSpec) -> Self {
        Self {
            plan: SourceThenTarget::new(spec),
        }
    }
}

impl Method for FineTuning {
    fn name(&self) -> &'static str {
        "fine_tuning"
    }

    fn stages(&self) -> Vec<StageDef> {
        self.plan.stages(Vec::new())
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
