//! Zero-shot learning: the network maps an input to its class's attribute vector; a class is
//! predicted as the nearest class vector, so classes never seen in training can be predicted
//! from their description alone, and an input far from every seen class can be flagged as
//! new.

use burn::tensor::activation::{log_sigmoid, sigmoid};
use burn::tensor::{Device, Tensor, TensorData};

use super::supervised::{labelled_stage, training_length};
use super::{
    Batch, BatchLoss, EvalInputs, Evaluation, Length, Method, StageDef, StepContext, batch_tensors,
    zero_loss,
};
use crate::eval::{auroc, batches, result_from_confusion};
use crate::model::{Architecture, Layout};
use crate::params::Params;
use crate::spec::{JobSpec, MethodSpec, Role, Scoring};
use crate::zeroshot::ClassVectors;

/// Attribute regression with nearest-class-vector prediction.
#[derive(Debug, Clone)]
pub struct ZeroShot {
    length: Length,
    batch: usize,
    unseen: Vec<u32>,
    vectors: Option<ClassVectors>,
    scoring: Scoring,
}

impl ZeroShot {
    /// The method for a job whose `method.kind = "zero_shot"`, with the class vectors the
    /// coordinator built.
    pub fn new(spec: &JobSpec, vectors: Option<ClassVectors>) -> Self {
        let (unseen, scoring) = match &spec.method {
            MethodSpec::ZeroShot {
                unseen_classes,
                scoring,
                ..
            } => (unseen_classes.clone(), *scoring),
            _ => (Vec::new(), Scoring::Nearest),
        };
        Self {
            length: training_length(spec),
            batch: spec.training.global_batch_size,
            unseen,
            vectors,
            scoring,
        }
    }

    fn seen(&self, classes: usize) -> Vec<u32> {
        (0..classes as u32)
            .filter(|c| !self.unseen.contains(c))
            .collect()
    }

    /// The predicted attribute vectors of a batch of outputs (probabilities for binary
    /// attributes).
    fn predicted(&self, out: Tensor<2>) -> Tensor<2> {
        match &self.vectors {
            Some(v) if v.binary => sigmoid(out),
            _ => out,
        }
    }
}

impl Method for ZeroShot {
    fn name(&self) -> &'static str {
        "zero_shot"
    }

    fn layout(&self, num_classes: usize) -> Layout {
        Layout::single(self.vectors.as_ref().map_or(num_classes, |v| v.cols))
    }

    fn stages(&self) -> Vec<StageDef> {
        vec![labelled_stage(
            "seen",
            Role::Source,
            self.length,
            self.batch,
        )]
    }

    fn loss(
        &self,
        arch: &Architecture,
        params: &[Tensor<1>],
        batches: &[Batch],
        _ctx: &StepContext,
        device: &Device,
    ) -> BatchLoss {
        let (Some(batch), Some(cv)) = (batches.first().filter(|b| !b.is_empty()), &self.vectors)
        else {
            return BatchLoss {
                loss: zero_loss(device),
                correct: 0,
            };
        };
        let (x, _) = batch_tensors(batch, device);
        let out = arch.forward(params, x).logits;
        let n = batch.len();
        let targets: Vec<f32> = batch
            .labels
            .iter()
            .flat_map(|&l| cv.row((l as usize).min(cv.rows - 1)).to_vec())
            .collect();
        let t = Tensor::<2>::from_data(TensorData::new(targets, [n, cv.cols]), device);
        let loss = if cv.binary {
            // Binary cross-entropy with logits, summed over attributes and samples.
            let one_minus = t.clone().neg().add_scalar(1.0);
            (t * log_sigmoid(out.clone()) + one_minus * log_sigmoid(out.clone().neg()))
                .sum()
                .neg()
        } else {
            (out.clone() - t).powi_scalar(2).sum()
        };
        let pred: Vec<f32> = self
            .predicted(out.detach())
            .into_data()
            .iter::<f32>()
            .collect();
        let seen = self.seen(cv.rows);
        let correct = batch
            .labels
            .iter()
            .enumerate()
            .filter(|(i, l)| {
                cv.best(&pred[i * cv.cols..(i + 1) * cv.cols], &seen, self.scoring)
                    .is_some_and(|(c, _)| c == **l)
            })
            .count() as u64;
        BatchLoss { loss, correct }
    }

    fn evaluate(
        &self,
        arch: &Architecture,
        params: &Params,
        inputs: &EvalInputs<'_>,
        device: &Device,
    ) -> Evaluation {
        let mut out = Evaluation::default();
        let Some(cv) = &self.vectors else { return out };
        let tensors = arch.tensors(params, device, &[]);
        let seen = self.seen(cv.rows);
        let all: Vec<u32> = (0..cv.rows as u32).collect();
        for (si, set) in inputs.sets.iter().enumerate() {
            let k = arch.num_classes.max(cv.rows);
            let mut confusion = vec![vec![0u64; k]; k];
            let (mut zsl_right, mut zsl_n) = (0u64, 0u64);
            let (mut alt_right, mut alt_n) = (0u64, 0u64);
            let (mut gs_right, mut gs_n, mut gu_right, mut gu_n) = (0u64, 0u64, 0u64, 0u64);
            let mut novelty = Vec::with_capacity(set.data.len());
            for b in batches(&set.data) {
                let (x, _) = batch_tensors(&b, device);
                let pred: Vec<f32> = self
                    .predicted(arch.forward(&tensors, x).logits)
                    .into_data()
                    .iter::<f32>()
                    .collect();
                for (i, &label) in b.labels.iter().enumerate() {
                    let v = &pred[i * cv.cols..(i + 1) * cv.cols];
                    let is_unseen = self.unseen.contains(&label);
                    // GZSL: every class is a candidate, scored as the job scores.
                    let Some((g, _)) = cv.best(v, &all, self.scoring) else {
                        continue;
                    };
                    if (label as usize) < k && (g as usize) < k {
                        confusion[label as usize][g as usize] += 1;
                    }
                    if is_unseen {
                        zsl_n += 1;
                        gu_n += 1;
                        gu_right += u64::from(g == label);
                        if cv
                            .best(v, &self.unseen, self.scoring)
                            .is_some_and(|(c, _)| c == label)
                        {
                            zsl_right += 1;
                        }
                        // The other scoring too, for comparison.
                        let other = match self.scoring {
                            Scoring::Nearest if cv.binary => Some(Scoring::Likelihood),
                            Scoring::Likelihood => Some(Scoring::Nearest),
                            Scoring::Nearest => None,
                        };
                        if let Some(o) = other {
                            alt_n += 1;
                            alt_right += u64::from(
                                cv.best(v, &self.unseen, o).is_some_and(|(c, _)| c == label),
                            );
                        }
                    } else {
                        gs_n += 1;
                        gs_right += u64::from(g == label);
                    }
                    let d = cv
                        .best(v, &seen, self.scoring)
                        .map_or(f32::INFINITY, |(_, d)| d);
                    novelty.push((d as f64, is_unseen));
                }
            }
            let r = result_from_confusion(&set.label, confusion, 0.0, set.data.len());
            let frac = |a: u64, n: u64| if n == 0 { 0.0 } else { a as f64 / n as f64 };
            let (s, u) = (frac(gs_right, gs_n), frac(gu_right, gu_n));
            let h = if s + u > 0.0 {
                2.0 * s * u / (s + u)
            } else {
                0.0
            };
            // The first set gives the headline names; others are prefixed by their label.
            let name = |m: &str| {
                if si == 0 {
                    m.to_string()
                } else {
                    format!("{}_{m}", set.label)
                }
            };
            out.metrics
                .insert(format!("{}_accuracy", set.label), r.accuracy);
            out.metrics
                .insert(name("zsl_unseen_accuracy"), frac(zsl_right, zsl_n));
            out.metrics.insert(name("gzsl_seen_accuracy"), s);
            out.metrics.insert(name("gzsl_unseen_accuracy"), u);
            out.metrics.insert(name("gzsl_harmonic_mean"), h);
            out.metrics.insert(name("novelty_auroc"), auroc(&novelty));
            if alt_n > 0 {
                let other = match self.scoring {
                    Scoring::Nearest => "zsl_unseen_accuracy_by_likelihood",
                    Scoring::Likelihood => "zsl_unseen_accuracy_by_nearest",
                };
                out.metrics.insert(name(other), frac(alt_right, alt_n));
            }
            out.sets.push(r);
        }
        out
    }
}
