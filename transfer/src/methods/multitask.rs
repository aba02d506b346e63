//! Multitask learning: one shared trunk, one head per task; every step draws a batch from
//! every task and the loss is the weighted sum of the tasks' mean losses. The trunk is the
//! whole network up to the label head's last layer (hard parameter sharing); each task's head
//! is one linear layer on it.

use burn::tensor::{Device, Tensor};

use super::supervised::training_length;
use super::{
    Batch, BatchLoss, DataKey, EvalInputs, Evaluation, Length, Method, StageDef, StepContext,
    StreamDef, batch_tensors, cross_entropy_sum, evaluate_sets, zero_loss,
};
use crate::model::{Architecture, ColumnDef, HeadDef, Layout};
use crate::params::Params;
use crate::spec::JobSpec;

/// A shared trunk with a head per task.
#[derive(Debug, Clone)]
pub struct Multitask {
    tasks: Vec<(String, f64, usize)>,
    length: Length,
}

/// Prefix of task `name`'s head.
pub fn task_head(name: &str) -> String {
    format!("task_heads.{name}")
}

impl Multitask {
    /// The method for a job whose `method.kind = "multitask"`.
    pub fn new(spec: &JobSpec) -> Self {
        Self {
            tasks: spec
                .method
                .tasks()
                .iter()
                .map(|t| {
                    (
                        t.name.clone(),
                        t.weight,
                        t.batch_size.unwrap_or(spec.training.global_batch_size),
                    )
                })
                .collect(),
            length: training_length(spec),
        }
    }
}

impl Method for Multitask {
    fn name(&self) -> &'static str {
        "multitask"
    }

    fn layout(&self, num_classes: usize) -> Layout {
        Layout {
            columns: vec![ColumnDef {
                prefix: String::new(),
                outputs: None,
                laterals: false,
            }],
            heads: self
                .tasks
                .iter()
                .map(|(name, _, _)| HeadDef {
                    prefix: task_head(name),
                    hidden: Vec::new(),
                    outputs: num_classes,
                })
                .collect(),
        }
    }

    fn stages(&self) -> Vec<StageDef> {
        let streams = self
            .tasks
            .iter()
            .map(|(name, _, batch)| StreamDef {
                data: DataKey::task(name),
                batch: *batch,
            })
            .collect();
        vec![StageDef::new("multitask", streams, self.length)]
    }

    fn loss(
        &self,
        arch: &Architecture,
        params: &[Tensor<1>],
        batches: &[Batch],
        ctx: &StepContext,
        device: &Device,
    ) -> BatchLoss {
        let mut loss = zero_loss(device);
        let mut correct = 0;
        for (t, ((name, weight, _), batch)) in self.tasks.iter().zip(batches).enumerate() {
            if batch.is_empty() {
                continue;
            }
            let (x, y) = batch_tensors(batch, device);
            let features = arch.forward(params, x).features;
            let head = arch.head_index(&task_head(name)).unwrap_or(usize::MAX);
            let (ce, c) = cross_entropy_sum(arch.head(params, head, features), y);
            loss = loss + ce.mul_scalar(*weight as f32 * ctx.stream_scale(t));
            if t == 0 {
                correct = c;
            }
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
        evaluate_sets(arch, params, inputs, device, |set, tensors, x| {
            let task = set.task.as_deref().unwrap_or(self.tasks[0].0.as_str());
            let head = arch.head_index(&task_head(task)).unwrap_or(usize::MAX);
            arch.head(tensors, head, arch.forward(tensors, x).features)
        })
    }
}
