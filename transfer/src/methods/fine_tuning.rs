//! Fine-tuning: a source stage (or a model loaded from safetensors), then a target stage on
//! a few labelled target samples that starts from the source stage's weights.

use burn::tensor::{Device, Tensor};

use super::supervised::training_length;
use super::{Batch, BatchLoss, Length, Method, StageDef, classification_loss};
use crate::model::Architecture;
use crate::spec::{JobSpec, MethodSpec, Role};

/// Two stages of cross-entropy training; every parameter trains in both.
#[derive(Debug, Clone)]
pub struct FineTuning {
    source: Option<Length>,
    target: Length,
    reset_head: bool,
}

impl FineTuning {
    /// The method for a job whose `method.kind = "fine_tuning"`.
    pub fn new(spec: &JobSpec) -> Self {
        let (source, reset_head) = match &spec.method {
            MethodSpec::FineTuning {
                source_steps,
                source_epochs,
                init_from,
                reset_head,
            } => {
                let source = match (init_from, source_steps, source_epochs) {
                    (Some(_), _, _) => None,
                    (None, Some(s), _) => Some(Length::Steps(*s)),
                    (None, None, Some(e)) => Some(Length::Epochs(*e)),
                    (None, None, None) => None,
                };
                (source, *reset_head)
            }
            MethodSpec::Supervised => (None, false),
        };
        Self {
            source,
            target: training_length(spec),
            reset_head,
        }
    }
}

impl Method for FineTuning {
    fn name(&self) -> &'static str {
        "fine_tuning"
    }

    fn stages(&self) -> Vec<StageDef> {
        let mut stages = Vec::new();
        if let Some(length) = self.source {
            stages.push(StageDef {
                name: "source".into(),
                train_role: Role::Source,
                length,
                reset_prefixes: Vec::new(),
            });
        }
        let reset_prefixes = if self.reset_head {
            vec!["label_head.".to_string()]
        } else {
            Vec::new()
        };
        stages.push(StageDef {
            name: "target".into(),
            train_role: Role::TargetLabelled,
            length: self.target,
            reset_prefixes,
        });
        stages
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
