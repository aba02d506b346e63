//! Evaluation of a classifier on a held-out set: loss, accuracy, per-class accuracy and the
//! confusion matrix.

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor};

use crate::data::Dataset;
use crate::methods::{Batch, batch_tensors, cross_entropy_sum};
use crate::model::Architecture;
use crate::params::Params;

/// Samples per forward pass when evaluating.
const EVAL_BATCH: usize = 1000;

/// The result on one evaluation set.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalResult {
    /// Metric prefix (`target` unless the job names it).
    pub label: String,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Fraction correct.
    pub accuracy: f64,
    /// Accuracy within each true class (NaN-free: 0 for an absent class).
    pub per_class_accuracy: Vec<f64>,
    /// Row = true class, column = predicted class.
    pub confusion: Vec<Vec<u64>>,
    /// Samples evaluated.
    pub samples: usize,
}

impl EvalResult {
    /// The scalar metrics, named `<label>_accuracy` and `<label>_loss` (`tasks.<t>.accuracy`
    /// for a task's set).
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let sep = if self.label.starts_with("tasks.") {
            '.'
        } else {
            '_'
        };
        BTreeMap::from([
            (format!("{}{sep}accuracy", self.label), self.accuracy),
            (format!("{}{sep}loss", self.label), self.loss),
        ])
    }
}

/// Evaluates column 0's label head on `data` (no gradients).
pub fn evaluate(
    arch: &Architecture,
    params: &Params,
    data: &Dataset,
    label: &str,
    device: &Device,
) -> EvalResult {
    let tensors = arch.tensors(params, device, &[]);
    evaluate_logits(data, label, arch.num_classes, device, |x| {
        arch.forward(&tensors, x).logits
    })
}

/// Runs `logits_of` over `data` in batches and scores its argmax against the labels: loss,
/// accuracy, per-class accuracy and the confusion matrix over `k` classes.
pub fn evaluate_logits(
    data: &Dataset,
    label: &str,
    k: usize,
    device: &Device,
    mut logits_of: impl FnMut(Tensor<2>) -> Tensor<2>,
) -> EvalResult {
    let mut confusion = vec![vec![0u64; k]; k];
    let mut loss = 0.0;
    for batch in batches(data) {
        let (x, y) = batch_tensors(&batch, device);
        let logits = logits_of(x);
        let predicted: Vec<i64> = logits.clone().argmax(1).into_data().iter::<i64>().collect();
        let (l, _) = cross_entropy_sum(logits, y);
        loss += l.into_data().iter::<f64>().next().unwrap_or(f64::NAN);
        for (p, &t) in predicted.iter().zip(&batch.labels) {
            let (t, p) = (t as usize, (*p).clamp(0, k as i64 - 1) as usize);
            if t < k {
                confusion[t][p] += 1;
            }
        }
    }
    result_from_confusion(label, confusion, loss, data.len())
}

/// `data` in evaluation batches.
pub fn batches(data: &Dataset) -> impl Iterator<Item = Batch> + '_ {
    let dim = data.sample_dim();
    (0..data.len()).step_by(EVAL_BATCH).map(move |start| {
        let end = (start + EVAL_BATCH).min(data.len());
        Batch {
            features: data.features[start * dim..end * dim].to_vec(),
            labels: data.labels[start..end].to_vec(),
            dim,
        }
    })
}

/// Accuracy, per-class accuracy and mean loss from a confusion matrix.
pub fn result_from_confusion(
    label: &str,
    confusion: Vec<Vec<u64>>,
    loss_sum: f64,
    samples: usize,
) -> EvalResult {
    let k = confusion.len();
    let n = samples.max(1);
    let correct: u64 = (0..k).map(|c| confusion[c][c]).sum();
    let per_class_accuracy = (0..k)
        .map(|c| {
            let row: u64 = confusion[c].iter().sum();
            if row == 0 {
                0.0
            } else {
                confusion[c][c] as f64 / row as f64
            }
        })
        .collect();
    EvalResult {
        label: label.to_string(),
        loss: loss_sum / n as f64,
        accuracy: correct as f64 / n as f64,
        per_class_accuracy,
        confusion,
        samples,
    }
}

/// Area under the ROC curve of `scores` for telling positives (`true`) from negatives: the
/// probability that a random positive scores above a random negative (ties count half).
/// 0.5 when either class is absent.
pub fn auroc(scored: &[(f64, bool)]) -> f64 {
    let mut v: Vec<(f64, bool)> = scored
        .iter()
        .filter(|(s, _)| s.is_finite())
        .copied()
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let pos = v.iter().filter(|(_, p)| *p).count() as f64;
    let neg = v.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return 0.5;
    }
    // Mann-Whitney U with average ranks for ties.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let avg = (i + j + 1) as f64 / 2.0; // ranks are 1-based
        rank_sum += avg * v[i..j].iter().filter(|(_, p)| *p).count() as f64;
        i = j;
    }
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_orders_and_ties() {
        assert_eq!(auroc(&[(0.1, false), (0.9, true)]), 1.0);
        assert_eq!(auroc(&[(0.9, false), (0.1, true)]), 0.0);
        assert_eq!(auroc(&[(0.5, false), (0.5, true)]), 0.5);
        assert_eq!(auroc(&[(0.5, true)]), 0.5);
        let a = auroc(&[(0.1, false), (0.4, true), (0.5, false), (0.8, true)]);
        assert!((a - 0.75).abs() < 1e-12, "{a}");
    }
}
