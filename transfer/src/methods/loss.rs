//! Loss helpers the methods share: batches as tensors, cross-entropy, parameter masks.

use burn::tensor::{Device, Int, Tensor, TensorData, activation::log_softmax};

use super::{Batch, BatchLoss};
use crate::model::Architecture;

/// A mask of the parameters whose names start with one of `prefixes`.
pub fn mask_of(arch: &Architecture, prefixes: &[&str]) -> Vec<bool> {
    arch.params
        .iter()
        .map(|p| prefixes.iter().any(|pre| p.name.starts_with(pre)))
        .collect()
}

/// A batch on `device`.
///
/// # Shapes
/// Returns `[len, dim]` features and `[len, 1]` labels.
pub fn batch_tensors(batch: &Batch, device: &Device) -> (Tensor<2>, Tensor<2, Int>) {
    let n = batch.len();
    let x = Tensor::<2>::from_data(
        TensorData::new(batch.features.clone(), [n, batch.dim]),
        device,
    );
    let labels: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
    let y = Tensor::<2, Int>::from_data(TensorData::new(labels, [n, 1]), device);
    (x, y)
}

/// Summed cross-entropy of `logits` against `labels`, and the count of correct argmaxes.
///
/// # Shapes
/// `logits`: `[n, classes]`, `labels`: `[n, 1]` → `[1]`.
pub fn cross_entropy_sum(logits: Tensor<2>, labels: Tensor<2, Int>) -> (Tensor<1>, u64) {
    let predicted = logits.clone().argmax(1);
    let correct = predicted
        .equal(labels.clone())
        .int()
        .sum()
        .into_data()
        .iter::<i64>()
        .next()
        .unwrap_or(0);
    let picked = log_softmax(logits, 1).gather(1, labels);
    (picked.sum().neg(), correct.max(0) as u64)
}

/// Cross-entropy of column 0's label head on a labelled batch: the loss of supervised
/// training and of the fine-tuning stages.
pub fn classification_loss(
    arch: &Architecture,
    params: &[Tensor<1>],
    batch: &Batch,
    device: &Device,
) -> BatchLoss {
    let (x, y) = batch_tensors(batch, device);
    let out = arch.forward(params, x);
    let (loss, correct) = cross_entropy_sum(out.logits, y);
    BatchLoss { loss, correct }
}
