//! Evaluation: the sets a method is scored on and what it reports.

use std::collections::BTreeMap;
use std::sync::Arc;

use burn::tensor::{Device, Tensor};

use super::DataKey;

use crate::data::Dataset;
use crate::eval::{EvalResult, evaluate_logits};
use crate::model::Architecture;
use crate::params::Params;

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
