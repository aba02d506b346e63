//! Evaluation of a classifier on a held-out set: loss, accuracy, per-class accuracy and the
//! confusion matrix.

use std::collections::BTreeMap;

use burn::tensor::Device;

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
    /// The scalar metrics, named `<label>_accuracy` and `<label>_loss`.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        BTreeMap::from([
            (format!("{}_accuracy", self.label), self.accuracy),
            (format!("{}_loss", self.label), self.loss),
        ])
    }
}

/// Evaluates the label head on `data` (no gradients).
pub fn evaluate(
    arch: &Architecture,
    params: &Params,
    data: &Dataset,
    label: &str,
    device: &Device,
) -> EvalResult {
    let k = arch.num_classes;
    let tensors = arch.tensors(params, device, &[]);
    let mut confusion = vec![vec![0u64; k]; k];
    let mut loss = 0.0;
    let dim = data.sample_dim();
    for start in (0..data.len()).step_by(EVAL_BATCH) {
        let end = (start + EVAL_BATCH).min(data.len());
        let batch = Batch {
            features: data.features[start * dim..end * dim].to_vec(),
            labels: data.labels[start..end].to_vec(),
            dim,
        };
        let (x, y) = batch_tensors(&batch, device);
        let logits = arch.forward(&tensors, x).logits;
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
    let n = data.len().max(1);
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
        loss: loss / n as f64,
        accuracy: correct as f64 / n as f64,
        per_class_accuracy,
        confusion,
        samples: data.len(),
    }
}
