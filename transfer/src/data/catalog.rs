//! The built-in datasets: names a job can use, where their files live under the data
//! directory (the layout docs/data.md describes), and how each is scaled, so that every
//! worker turns the same name into the same numbers.

use std::path::Path;

use super::idx::{self, IdxArray, IdxData};
use super::location;
use super::moons::{self, MoonsConfig};
use super::{DataError, Dataset};
use crate::rng::SplitMix64;

pub use super::location::DATA_DIR_ENV;

/// Every dataset name [`load`] accepts.
pub const KNOWN: &[&str] = &[
    "mnist",
    "usps",
    "mnist2000",
    "usps1800",
    "office-amazon",
    "office-caltech10",
    "office-dslr",
    "office-webcam",
    "optdigits",
    "moons",
    "random",
];

const TRAIN_TEST: &[&str] = &["train", "test"];
const SINGLE: &[&str] = &["train", "all"];

/// Stream of the moons seed used for the "test" split, so it differs from "train".
const MOONS_TEST_STREAM: u64 = 0x7e57;

/// What a dataset looks like, known without reading it, so a job can be checked (model
/// input size, class count, split names) before any worker touches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetInfo {
    /// Per-sample shape of [`load`]'s result.
    pub sample_shape: &'static [usize],
    /// Number of classes.
    pub num_classes: usize,
    /// Accepted split names; single-set datasets accept "train" and "all" for the same data.
    pub splits: &'static [&'static str],
}

/// The shape, classes and splits of a catalog dataset, or `None` for an unknown name.
pub fn describe(name: &str) -> Option<DatasetInfo> {
    let (sample_shape, splits): (&'static [usize], _) = match name {
        "mnist" => (&[1, 28, 28], TRAIN_TEST),
        "usps" => (&[1, 16, 16], TRAIN_TEST),
        "mnist2000" | "usps1800" => (&[1, 16, 16], SINGLE),
        "office-amazon" | "office-caltech10" | "office-dslr" | "office-webcam" => (&[800], SINGLE),
        "optdigits" => (&[1, 8, 8], SINGLE),
        "moons" => (&[2], TRAIN_TEST),
        "random" => (&[1, 28, 28], TRAIN_TEST),
        _ => return None,
    };
    let num_classes = if name == "moons" { 2 } else { 10 };
    Some(DatasetInfo {
        sample_shape,
        num_classes,
        splits,
    })
}

/// Uniform noise images (1×28×28 in [0, 1)) with uniform labels of 10 classes: a workload of
/// MNIST's shape that needs no files, for benchmarks (`graft bench train`). Nothing can be
/// learnt from it, which is the point: the step costs the same as on real digits.
fn random_images(samples: usize, seed: u64, name: &str) -> Dataset {
    let mut rng = SplitMix64::new(seed);
    let dim = 28 * 28;
    let mut features = Vec::with_capacity(samples * dim);
    let mut labels = Vec::with_capacity(samples);
    for _ in 0..samples {
        features.extend((0..dim).map(|_| rng.next_f64() as f32));
        labels.push(rng.below(10) as u32);
    }
    Dataset {
        name: name.to_string(),
        sample_shape: vec![1, 28, 28],
        features,
        labels,
        num_classes: 10,
    }
}

/// Loads split `split` of dataset `name` from `data_dir`, or from the per-user directory
/// `graft data fetch` fills where `data_dir` lacks the files (see [`location::search_path`]);
/// "moons" and "random" are generated from `moons_cfg`, which other datasets ignore. Images
/// come back scaled to [0, 1]; Office SURF histograms come back normalised as in the JDA/GFK
/// code.
pub fn load(
    name: &str,
    split: &str,
    data_dir: &Path,
    moons_cfg: &MoonsConfig,
) -> Result<Dataset, DataError> {
    load_in(name, split, &location::search_path(data_dir), moons_cfg)
}

/// [`load`] with the directories to search given: each file is taken from the first of
/// `roots` that holds it, and a missing one is reported under the first.
pub(crate) fn load_in(
    name: &str,
    split: &str,
    roots: &[std::path::PathBuf],
    moons_cfg: &MoonsConfig,
) -> Result<Dataset, DataError> {
    let info = describe(name).ok_or_else(|| DataError::UnknownDataset {
        name: name.to_string(),
        known: KNOWN.join(", "),
    })?;
    if !info.splits.contains(&split) {
        return Err(DataError::UnknownSplit {
            dataset: name.to_string(),
            split: split.to_string(),
            known: info.splits.join(", "),
        });
    }
    let full_name = format!("{name}/{split}");
    let file = |rel: String| location::root_holding(roots, &rel).join(rel);
    match name {
        "mnist" => {
            let prefix = if split == "train" { "train" } else { "t10k" };
            let images = file(format!("mnist/{prefix}-images-idx3-ubyte.gz"));
            let labels = file(format!("mnist/{prefix}-labels-idx1-ubyte.gz"));
            load_pair(name, full_name, &info, &images, &labels, 255.0)
        }
        "usps" => {
            let images = file(format!("usps/usps-{split}-images-idx3-float.gz"));
            let labels = file(format!("usps/usps-{split}-labels-idx1-ubyte.gz"));
            load_pair(name, full_name, &info, &images, &labels, 255.0)
        }
        "mnist2000" | "usps1800" => {
            // The JDA MNIST file stores Xs * 256 (exact integers); undo exactly that.
            let (stem, kind) = if name == "mnist2000" {
                ("jda-mnist2000", "ubyte")
            } else {
                ("jda-usps1800", "float")
            };
            let images = file(format!("mnist_usps_jda/{stem}-images-idx3-{kind}.gz"));
            let labels = file(format!("mnist_usps_jda/{stem}-labels-idx1-ubyte.gz"));
            load_pair(name, full_name, &info, &images, &labels, 256.0)
        }
        "optdigits" => load_optdigits(name, full_name, &file("uci_optdigits/digits.csv.gz".into())),
        "random" => {
            moons_cfg.validate()?;
            let seed = if split == "train" {
                moons_cfg.seed
            } else {
                SplitMix64::derive(moons_cfg.seed, MOONS_TEST_STREAM).next_u64()
            };
            Ok(random_images(moons_cfg.samples, seed, &full_name))
        }
        "moons" => {
            moons_cfg.validate()?;
            let seed = if split == "train" {
                moons_cfg.seed
            } else {
                SplitMix64::derive(moons_cfg.seed, MOONS_TEST_STREAM).next_u64()
            };
            let cfg = MoonsConfig { seed, ..*moons_cfg };
            Ok(moons::moons(&cfg, &full_name))
        }
        _ => {
            // The Office-Caltech10 domains, the only names left that `describe` accepts.
            let domain = name.trim_start_matches("office-");
            let dir = "office_caltech10_surf";
            let images = file(format!("{dir}/{domain}-surf800-idx2-ubyte.gz"));
            let labels = file(format!("{dir}/{domain}-labels-idx1-ubyte.gz"));
            let mut ds = load_pair(name, full_name, &info, &images, &labels, 1.0)?;
            normalise_surf(&mut ds.features, 800);
            Ok(ds)
        }
    }
}

/// Reads an IDX file, reporting an absent one as a missing dataset rather than an I/O error.
fn read_idx(path: &Path, dataset: &str) -> Result<IdxArray, DataError> {
    idx::read_idx_gz(path).map_err(|e| missing_if_not_found(e, dataset))
}

fn missing_if_not_found(e: DataError, dataset: &str) -> DataError {
    match e {
        DataError::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
            DataError::Missing {
                path,
                dataset: dataset.to_string(),
            }
        }
        e => e,
    }
}

/// Loads an images (or feature) file and its labels file; u8 values are divided by
/// `u8_scale`, f32 values are taken as they are.
fn load_pair(
    dataset: &str,
    full_name: String,
    info: &DatasetInfo,
    images_path: &Path,
    labels_path: &Path,
    u8_scale: f32,
) -> Result<Dataset, DataError> {
    let images = read_idx(images_path, dataset)?;
    let labels = read_idx(labels_path, dataset)?;
    let malformed = |path: &Path, reason: String| DataError::Malformed {
        path: path.to_path_buf(),
        reason,
    };

    // Files hold [N, h, w] for single-channel images and [N, d] for feature vectors.
    let per_sample = match info.sample_shape {
        [1, rest @ ..] if !rest.is_empty() => rest,
        shape => shape,
    };
    let n = match images.dims.split_first() {
        Some((&n, rest)) if rest == per_sample => n,
        _ => {
            return Err(malformed(
                images_path,
                format!(
                    "dimensions {:?}, expected [N, {}]",
                    images.dims,
                    per_sample
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    };
    let labels: Vec<u32> = match (labels.dims.as_slice(), labels.data) {
        ([_], IdxData::U8(v)) => v.into_iter().map(u32::from).collect(),
        (dims, _) => {
            return Err(malformed(
                labels_path,
                format!("labels must be a 1-d u8 array, found dimensions {dims:?}"),
            ));
        }
    };
    if labels.len() != n {
        return Err(DataError::CountMismatch {
            images: images_path.to_path_buf(),
            labels: labels_path.to_path_buf(),
            images_n: n,
            labels_n: labels.len(),
        });
    }
    if let Some((i, l)) = labels
        .iter()
        .enumerate()
        .find(|&(_, &l)| l as usize >= info.num_classes)
    {
        return Err(malformed(
            labels_path,
            format!("label {l} of sample {i} is not below {}", info.num_classes),
        ));
    }
    let features = match images.data {
        IdxData::U8(v) => v.into_iter().map(|b| f32::from(b) / u8_scale).collect(),
        IdxData::F32(v) => {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                let d = per_sample.iter().product::<usize>().max(1);
                return Err(malformed(
                    images_path,
                    format!("non-finite value in sample {}", i / d),
                ));
            }
            v
        }
    };
    Dataset::new(
        full_name,
        info.sample_shape.to_vec(),
        features,
        labels,
        info.num_classes,
    )
}

/// The usual SURF preprocessing (JDA/GFK code): each histogram divided by its total
/// (empty rows stay zero), then each feature z-scored over the dataset with the population
/// standard deviation (constant features become zero).
fn normalise_surf(features: &mut [f32], dim: usize) {
    let rows = features.len() / dim;
    if rows == 0 {
        return;
    }
    let mut x: Vec<f64> = features.iter().map(|&v| f64::from(v)).collect();
    for row in x.chunks_exact_mut(dim) {
        let sum: f64 = row.iter().sum();
        if sum != 0.0 {
            row.iter_mut().for_each(|v| *v /= sum);
        }
    }
    for j in 0..dim {
        let column = || x.iter().skip(j).step_by(dim);
        let mean = column().sum::<f64>() / rows as f64;
        let var = column().map(|v| (v - mean).powi(2)).sum::<f64>() / rows as f64;
        let std = var.sqrt();
        for (out, v) in features.iter_mut().skip(j).step_by(dim).zip(column()) {
            *out = if std > 0.0 {
                ((v - mean) / std) as f32
            } else {
                0.0
            };
        }
    }
}

/// Parses scikit-learn's `digits.csv.gz`: one sample per line, 64 pixel counts (0..16,
/// scaled to [0, 1]) then the digit.
fn load_optdigits(dataset: &str, full_name: String, path: &Path) -> Result<Dataset, DataError> {
    let bytes = idx::read_gz(path).map_err(|e| missing_if_not_found(e, dataset))?;
    let malformed = |reason: String| DataError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::str::from_utf8(&bytes).map_err(|e| malformed(format!("not text: {e}")))?;
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for (line_no, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l)) {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 65 {
            return Err(malformed(format!(
                "line {line_no}: {} fields, expected 65 (64 pixels and a label)",
                fields.len()
            )));
        }
        for (j, field) in fields.iter().enumerate() {
            let v: u32 = field.trim().parse().map_err(|_| {
                malformed(format!(
                    "line {line_no}: field {} is not an integer: {field:?}",
                    j + 1
                ))
            })?;
            let max = if j < 64 { 16 } else { 9 };
            if v > max {
                return Err(malformed(format!(
                    "line {line_no}: field {} is {v}, above {max}",
                    j + 1
                )));
            }
            if j < 64 {
                features.push(v as f32 / 16.0);
            } else {
                labels.push(v);
            }
        }
    }
    if labels.is_empty() {
        return Err(malformed("no samples".into()));
    }
    Dataset::new(full_name, vec![1, 8, 8], features, labels, 10)
}

#[cfg(test)]
mod tests;
