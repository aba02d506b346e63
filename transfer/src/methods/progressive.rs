//! Progressive neural networks (Rusu et al. 2016): one column per task, trained in order.
//! When a column trains, the earlier ones are frozen — not flattened, not sent, not updated —
//! and lateral connections feed their hidden layers into the new column's next layer, so
//! the new task reuses their features while their own outputs stay exactly as they were.

use burn::tensor::{Device, Tensor};

use super::supervised::{labelled_stage, training_length};
use super::{
    Batch, BatchLoss, DataKey, EvalInputs, Evaluation, Length, Method, StageDef, StepContext,
    batch_tensors, cross_entropy_sum, evaluate_sets, zero_loss,
};
use crate::model::{Architecture, ColumnDef, Layout};
use crate::params::Params;
use crate::spec::{JobSpec, MethodSpec, Role};

/// A column per task.
#[derive(Debug, Clone)]
pub struct Progressive {
    tasks: Vec<(String, usize, Length)>,
    laterals: bool,
}

/// Prefix of column `c`.
pub fn column_prefix(c: usize) -> String {
    format!("columns.{c}.")
}

impl Progressive {
    /// The method for a job whose `method.kind = "progressive"`.
    pub fn new(spec: &JobSpec) -> Self {
        let laterals = matches!(spec.method, MethodSpec::Progressive { laterals: true, .. });
        Self {
            tasks: spec
                .method
                .tasks()
                .iter()
                .map(|t| {
                    let length = match (t.steps, t.epochs) {
                        (Some(s), _) => Length::Steps(s),
                        (None, Some(e)) => Length::Epochs(e),
                        (None, None) => training_length(spec),
                    };
                    (
                        t.name.clone(),
                        t.batch_size.unwrap_or(spec.training.global_batch_size),
                        length,
                    )
                })
                .collect(),
            laterals,
        }
    }

    fn column_of(&self, task: Option<&str>) -> usize {
        task.and_then(|t| self.tasks.iter().position(|(n, _, _)| n == t))
            .unwrap_or(0)
    }
}

/// A 48-bit checksum of the exact bits of `values` (exactly representable as an `f64`
/// metric), so that "unchanged bit for bit" can be read off two evaluations.
pub fn bits_checksum(values: impl Iterator<Item = f32>) -> f64 {
    let h = values.fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
        v.to_bits()
            .to_le_bytes()
            .iter()
            .fold(h, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
    });
    (h >> 16) as f64
}

impl Method for Progressive {
    fn name(&self) -> &'static str {
        "progressive"
    }

    fn layout(&self, num_classes: usize) -> Layout {
        Layout {
            columns: (0..self.tasks.len())
                .map(|c| ColumnDef {
                    prefix: column_prefix(c),
                    outputs: Some(num_classes),
                    laterals: self.laterals && c > 0,
                })
                .collect(),
            heads: Vec::new(),
        }
    }

    fn stages(&self) -> Vec<StageDef> {
        self.tasks
            .iter()
            .map(|(name, batch, length)| {
                let mut s = labelled_stage(name, Role::Train, *length, *batch);
                s.streams[0].data = DataKey::task(name);
                s
            })
            .collect()
    }

    fn trainable(&self, arch: &Architecture, stage: usize) -> Vec<bool> {
        let prefix = column_prefix(stage);
        arch.params
            .iter()
            .map(|p| p.name.starts_with(&prefix))
            .collect()
    }

    fn loss(
        &self,
        arch: &Architecture,
        params: &[Tensor<1>],
        batches: &[Batch],
        ctx: &StepContext,
        device: &Device,
    ) -> BatchLoss {
        let Some(batch) = batches.first().filter(|b| !b.is_empty()) else {
            return BatchLoss {
                loss: zero_loss(device),
                correct: 0,
            };
        };
        let (x, y) = batch_tensors(batch, device);
        let logits = arch.forward_column(params, ctx.stage, x).logits;
        let (loss, correct) = cross_entropy_sum(logits, y);
        BatchLoss { loss, correct }
    }

    fn evaluate(
        &self,
        arch: &Architecture,
        params: &Params,
        inputs: &EvalInputs<'_>,
        device: &Device,
    ) -> Evaluation {
        // Every output of every set, kept to checksum them bit for bit.
        let mut outputs: Vec<(String, Vec<f32>)> = Vec::new();
        let mut out = evaluate_sets(arch, params, inputs, device, |set, tensors, x| {
            let logits = arch
                .forward_column(tensors, self.column_of(set.task.as_deref()), x)
                .logits;
            if outputs.last().is_none_or(|(label, _)| *label != set.label) {
                outputs.push((set.label.clone(), Vec::new()));
            }
            if let Some((_, bits)) = outputs.last_mut() {
                bits.extend(logits.clone().into_data().iter::<f32>());
            }
            logits
        });
        for (label, bits) in outputs {
            out.metrics.insert(
                format!("{label}.output_checksum"),
                bits_checksum(bits.into_iter()),
            );
        }
        out
    }
}
