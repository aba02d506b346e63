//! Datasets: reading the benchmark files, generating the two-moons problem, and the few
//! transformations transfer-learning jobs need (few-shot subsets, resizing between domains).
//!
//! Everything is held in memory as `f32`: the largest set (MNIST train) is 188 MB that way,
//! and keeping one flat buffer per dataset makes batches a matter of slicing.

pub mod catalog;
mod error;
pub mod files;
pub mod idx;
pub mod location;
pub mod moons;
mod resize;

pub use catalog::{DatasetInfo, KNOWN, describe, load};
pub use error::DataError;
pub use moons::MoonsConfig;

use crate::rng::SplitMix64;

/// An in-memory dataset: samples as f32 features in [0,1]-ish scale, row-major, plus labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Where the data came from, e.g. "mnist/train", for logs and error messages.
    pub name: String,
    /// Per-sample shape: `[channels, h, w]` for images, `[d]` for feature vectors.
    pub sample_shape: Vec<usize>,
    /// All samples back to back; `len() * sample_dim()` values.
    pub features: Vec<f32>,
    /// One class index per sample, each below `num_classes`.
    pub labels: Vec<u32>,
    /// Classes of the task, which may exceed the largest label present in a subset.
    pub num_classes: usize,
}

fn invalid(name: &str, reason: String) -> DataError {
    DataError::Invalid {
        name: name.to_string(),
        reason,
    }
}

impl Dataset {
    /// Builds a dataset after checking that features, labels and shape agree, so every later
    /// indexing operation can trust them.
    pub fn new(
        name: impl Into<String>,
        sample_shape: Vec<usize>,
        features: Vec<f32>,
        labels: Vec<u32>,
        num_classes: usize,
    ) -> Result<Self, DataError> {
        let name = name.into();
        if num_classes == 0 {
            return Err(invalid(&name, "no classes".into()));
        }
        if sample_shape.contains(&0) {
            return Err(invalid(
                &name,
                format!("sample shape {sample_shape:?} has a zero dimension"),
            ));
        }
        let expected = sample_shape
            .iter()
            .try_fold(labels.len(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| invalid(&name, format!("sample shape {sample_shape:?} too large")))?;
        if features.len() != expected {
            return Err(invalid(
                &name,
                format!(
                    "{} feature values for {} samples of shape {sample_shape:?} (expected {expected})",
                    features.len(),
                    labels.len()
                ),
            ));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| l as usize >= num_classes)
        {
            return Err(invalid(
                &name,
                format!("label {l} of sample {i} is not below the {num_classes} classes"),
            ));
        }
        Ok(Self {
            name,
            sample_shape,
            features,
            labels,
            num_classes,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples (e.g. after `limit(0)`).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per sample: the product of `sample_shape`, i.e. a model's input width.
    pub fn sample_dim(&self) -> usize {
        self.sample_shape.iter().product()
    }

    /// The features of sample `i`; panics if `i >= len()` like slice indexing.
    pub fn sample(&self, i: usize) -> &[f32] {
        let d = self.sample_dim();
        &self.features[i * d..(i + 1) * d]
    }

    /// The samples at `indices`, in that order (repeats allowed); indices come from this
    /// process (a permutation, a few-shot choice), so out-of-range ones panic.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut features = Vec::with_capacity(indices.len() * self.sample_dim());
        for &i in indices {
            features.extend_from_slice(self.sample(i));
        }
        Dataset {
            name: self.name.clone(),
            sample_shape: self.sample_shape.clone(),
            features,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            num_classes: self.num_classes,
        }
    }

    /// `k` labelled samples of every class, for few-shot fine-tuning; the same `seed` picks
    /// the same samples on every worker. The result keeps the original order.
    pub fn labels_per_class(&self, k: usize, seed: u64) -> Result<Dataset, DataError> {
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); self.num_classes];
        for (i, &l) in self.labels.iter().enumerate() {
            if let Some(members) = by_class.get_mut(l as usize) {
                members.push(i);
            }
        }
        let mut chosen = Vec::with_capacity(k.saturating_mul(self.num_classes));
        for (class, mut members) in by_class.into_iter().enumerate() {
            if members.len() < k {
                return Err(DataError::NotEnoughPerClass {
                    name: self.name.clone(),
                    class: class as u32,
                    have: members.len(),
                    want: k,
                });
            }
            // A partial Fisher-Yates shuffle, one stream per class so classes are independent.
            let mut rng = SplitMix64::derive(seed, class as u64);
            for j in 0..k {
                let r = j + rng.below((members.len() - j) as u64) as usize;
                members.swap(j, r);
            }
            chosen.extend_from_slice(&members[..k]);
        }
        chosen.sort_unstable();
        Ok(self.subset(&chosen))
    }

    /// Mean and standard deviation over all values (one of each for the whole set), in f64
    /// so that 47 million MNIST pixels sum without drift.
    pub fn value_moments(&self) -> (f64, f64) {
        let n = self.features.len().max(1) as f64;
        let mean = self.features.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = self
            .features
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var.sqrt())
    }

    /// Shifts and scales every value by the set's own [`Dataset::value_moments`].
    ///
    /// # Errors
    /// [`DataError::Constant`] when every value is the same: there is no scale to divide by.
    pub fn standardize(&mut self) -> Result<(), DataError> {
        let (mean, std) = self.value_moments();
        if std.is_nan() || std <= 1e-12 {
            return Err(DataError::Constant {
                name: self.name.clone(),
            });
        }
        self.normalize(mean, std);
        Ok(())
    }

    /// Maps every value through (x − mean) / std: given constants (a job's `normalize`), or
    /// the set's own moments ([`Self::standardize`]). `std` must be above 0.
    pub fn normalize(&mut self, mean: f64, std: f64) {
        for v in &mut self.features {
            *v = ((f64::from(*v) - mean) / std) as f32;
        }
    }

    /// Gives the samples new labels: `to[k]` for every sample labelled `k`, in a task of
    /// `num_classes` classes (how a job gives all its files one set of classes).
    ///
    /// # Errors
    /// [`DataError::Invalid`] when a label has no entry in `to` or maps past `num_classes`.
    pub fn relabel(&mut self, to: &[u32], num_classes: usize) -> Result<(), DataError> {
        if let Some(bad) = self.labels.iter().find(|&&l| {
            to.get(l as usize)
                .is_none_or(|&n| n as usize >= num_classes)
        }) {
            return Err(invalid(
                &self.name,
                format!("label {bad} has no class among {num_classes}"),
            ));
        }
        for l in &mut self.labels {
            *l = to[*l as usize];
        }
        self.num_classes = num_classes;
        Ok(())
    }

    /// The first `n` samples (all if fewer), for quick runs and smoke tests.
    pub fn limit(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        let d = self.sample_dim();
        Dataset {
            name: self.name.clone(),
            sample_shape: self.sample_shape.clone(),
            features: self.features[..n * d].to_vec(),
            labels: self.labels[..n].to_vec(),
            num_classes: self.num_classes,
        }
    }

    /// The dataset with every image resized to `shape`, so that a source and a target domain
    /// of different resolutions (MNIST 28x28, USPS 16x16) can feed one model. Only
    /// `[c, h, w]` to `[c, H, W]` is possible; anything else is an error.
    pub fn resize_to(&self, shape: &[usize]) -> Result<Dataset, DataError> {
        if shape == self.sample_shape.as_slice() {
            return Ok(self.clone());
        }
        let shape_err = || DataError::Shape {
            name: self.name.clone(),
            from: self.sample_shape.clone(),
            to: shape.to_vec(),
        };
        let (&[c, h, w], &[c2, oh, ow]) = (self.sample_shape.as_slice(), shape) else {
            return Err(shape_err());
        };
        if c != c2 || [c, h, w, oh, ow].contains(&0) {
            return Err(shape_err());
        }
        let total = [c, oh, ow]
            .iter()
            .try_fold(self.len(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(shape_err)?;
        let mut features = Vec::with_capacity(total);
        for i in 0..self.len() {
            resize::bilinear_into(self.sample(i), c, (h, w), (oh, ow), &mut features);
        }
        Ok(Dataset {
            name: self.name.clone(),
            sample_shape: shape.to_vec(),
            features,
            labels: self.labels.clone(),
            num_classes: self.num_classes,
        })
    }

    /// Samples per class, to check balance and report what a job trains on.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 samples of shape [1, 2, 2], labels 0 1 2 0 1 2 0 1 2 0; sample i is all i.
    fn toy() -> Dataset {
        let features = (0..10).flat_map(|i| [i as f32; 4]).collect();
        let labels = (0..10).map(|i| i % 3).collect();
        Dataset::new("toy", vec![1, 2, 2], features, labels, 3).unwrap()
    }

    #[test]
    fn relabel_maps_every_label_and_refuses_one_without_a_class() {
        let mut d = toy();
        d.relabel(&[4, 0, 2], 5).expect("every label has a class");
        assert_eq!(d.labels, vec![4, 0, 2, 4, 0, 2, 4, 0, 2, 4]);
        assert_eq!(d.num_classes, 5);
        let mut short = toy();
        let e = short.relabel(&[0, 1], 5).expect_err("label 2 has no entry");
        assert!(e.to_string().contains("label 2"), "{e}");
        assert_eq!(short.labels, toy().labels, "nothing changed");
        assert!(
            toy().relabel(&[0, 1, 5], 5).is_err(),
            "past the class count"
        );
    }

    #[test]
    fn standardize_gives_mean_zero_and_unit_deviation_and_refuses_constant_sets() {
        let mut d = toy();
        d.standardize().expect("values vary");
        let n = d.features.len() as f64;
        let mean = d.features.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = d
            .features
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 1e-6, "mean {mean}");
        assert!((var - 1.0).abs() < 1e-5, "variance {var}");
        // Order is kept: sample 9 (all 9s) is the largest, sample 0 the smallest.
        assert!(d.features[36] > d.features[0]);
        let mut flat = toy().limit(1);
        let before = flat.features.clone();
        assert!(matches!(
            flat.standardize(),
            Err(DataError::Constant { .. })
        ));
        assert_eq!(flat.features, before, "a refused set is unchanged");
    }

    #[test]
    fn new_checks_lengths_and_labels() {
        assert!(Dataset::new("a", vec![2], vec![0.0; 4], vec![0, 1], 2).is_ok());
        let err = Dataset::new("a", vec![2], vec![0.0; 5], vec![0, 1], 2).unwrap_err();
        assert!(err.to_string().starts_with("a: 5 feature values"), "{err}");
        let err = Dataset::new("a", vec![2], vec![0.0; 4], vec![0, 2], 2).unwrap_err();
        assert!(err.to_string().contains("label 2 of sample 1"), "{err}");
        assert!(Dataset::new("a", vec![0], vec![], vec![], 2).is_err());
        assert!(Dataset::new("a", vec![2], vec![], vec![], 0).is_err());
    }

    #[test]
    fn accessors_subset_and_limit() {
        let d = toy();
        assert_eq!((d.len(), d.sample_dim(), d.is_empty()), (10, 4, false));
        assert_eq!(d.sample(3), &[3.0; 4]);
        let s = d.subset(&[7, 2, 7]);
        assert_eq!(s.labels, vec![1, 2, 1]);
        assert_eq!(s.sample(0), &[7.0; 4]);
        assert_eq!(s.sample(1), &[2.0; 4]);
        let l = d.limit(4);
        assert_eq!(l.labels, vec![0, 1, 2, 0]);
        assert_eq!(l.features.len(), 16);
        assert_eq!(d.limit(100), d);
        assert!(d.limit(0).is_empty());
        assert_eq!(d.class_counts(), vec![4, 3, 3]);
    }

    #[test]
    fn labels_per_class_is_seeded_balanced_and_ordered() {
        let d = toy();
        let a = d.labels_per_class(2, 42).unwrap();
        assert_eq!(a, d.labels_per_class(2, 42).unwrap());
        assert_eq!(a.class_counts(), vec![2, 2, 2]);
        let originals: Vec<usize> = (0..a.len()).map(|i| a.sample(i)[0] as usize).collect();
        assert!(originals.windows(2).all(|w| w[0] < w[1]), "{originals:?}");
        for (i, &o) in originals.iter().enumerate() {
            assert_eq!(d.labels[o], a.labels[i]);
        }
        let differs = (0..20).any(|s| d.labels_per_class(2, s).unwrap() != a);
        assert!(differs, "the seed should change the choice");
        assert_eq!(d.labels_per_class(3, 1).unwrap().len(), 9);
        assert!(d.labels_per_class(0, 1).unwrap().is_empty());
        match d.labels_per_class(4, 1) {
            Err(DataError::NotEnoughPerClass {
                class, have, want, ..
            }) => {
                assert_eq!((class, have, want), (1, 3, 4));
            }
            other => panic!("expected NotEnoughPerClass, got {other:?}"),
        }
    }

    #[test]
    fn resize_to_images_only() {
        let d = toy();
        assert_eq!(d.resize_to(&[1, 2, 2]).unwrap(), d);
        let r = d.resize_to(&[1, 4, 3]).unwrap();
        assert_eq!(r.sample_shape, vec![1, 4, 3]);
        assert_eq!(r.len(), 10);
        assert_eq!(r.sample(5), &[5.0; 12]);
        assert_eq!(r.labels, d.labels);
        for bad in [&[2, 4, 4][..], &[16][..], &[1, 0, 4][..]] {
            let err = d.resize_to(bad).unwrap_err();
            assert!(matches!(err, DataError::Shape { .. }), "{err:?}");
            assert!(err.to_string().contains("[1, 2, 2]"), "{err}");
        }
        let flat = Dataset::new("flat", vec![4], vec![0.0; 8], vec![0, 1], 2).unwrap();
        assert!(flat.resize_to(&[1, 2, 2]).is_err());
    }
}
