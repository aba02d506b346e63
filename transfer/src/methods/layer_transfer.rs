//! Layer transfer: the chosen layers come from the source model and stay frozen in the
//! target stage; only the rest trains, so only the rest is flattened and all-reduced.

use burn::tensor::{Device, Tensor};

use super::fine_tuning::SourceThenTarget;
use super::pattern::union_mask;
use super::supervised::first_batch_loss;
use super::{Batch, BatchLoss, LayerPattern, Method, StageDef, StepContext};
use crate::model::Architecture;
use crate::spec::{JobSpec, MethodSpec};

/// Source stage (all layers), then the target stage with the chosen layers frozen.
#[derive(Debug, Clone)]
pub struct LayerTransfer {
    plan: SourceThenTarget,
    freeze: Vec<LayerPattern>,
}

impl LayerTransfer {
    /// The method for a job whose `method.kind = "layer_transfer"` (validated).
    pub fn new(spec: &JobSpec) -> Self {
        let freeze = match &spec.method {
            MethodSpec::LayerTransfer { freeze, .. } => freeze
                .iter()
                .filter_map(|f| LayerPattern::parse(f).ok())
                .collect(),
            _ => Vec::new(),
        };
        Self {
            plan: SourceThenTarget::new(spec),
            freeze,
        }
    }
}

impl Method for LayerTransfer {
    fn name(&self) -> &'static str {
        "layer_transfer"
    }

    fn stages(&self) -> Vec<StageDef> {
        self.plan.stages(Vec::new())
    }

    fn trainable(&self, arch: &Architecture, stage: usize) -> Vec<bool> {
        if stage < self.plan.target_stage() {
            return vec![true; arch.params.len()];
        }
        union_mask(arch, &self.freeze)
            .into_iter()
            .map(|f| !f)
            .collect()
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
