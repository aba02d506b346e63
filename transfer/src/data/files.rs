//! Datasets a user names by path instead of a catalog name: numpy `.npz` files and `.npy`
//! pairs, CSV tables, folders of images with one subfolder per class, and IDX files. Each
//! format is read through a kept crate (`npyz`, `csv`, `image`; IDX through [`super::idx`]),
//! and every problem is reported with the file it is in and what is wrong, before a job
//! exists.
//!
//! Whatever the format, the result is a [`Dataset`] whose labels are mapped to `0..K` (the
//! names of the classes kept, in that order, so a job can list them) and a sentence saying
//! what was read (samples, shape, value range and how values were scaled), because a file's
//! layout is a guess a user must be able to check.

mod images;
mod numpy;
mod table;

use std::path::{Path, PathBuf};

use super::idx::{self, IdxData};
use super::{DataError, Dataset};
use crate::rng::SplitMix64;

/// More classes than this is taken for a mistake (a float column taken for labels).
pub const MAX_CLASSES: usize = 10_000;

/// The formats a dataset file can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// numpy's `.npz`, arrays `x` and `y` (or the names given).
    Npz,
    /// Two `.npy` files, features at `path` and labels at `labels`.
    NpyPair,
    /// A CSV table: a label column, the rest features.
    Csv,
    /// A folder with one subfolder of PNG, JPEG or BMP images per class.
    ImageFolder,
    /// IDX files (MNIST's format, optionally gzipped), images at `path` and labels at `labels`.
    Idx,
}

/// Every format name a job file may give.
pub const FORMATS: &[&str] = &["npz", "npy-pair", "csv", "image-folder", "idx"];

impl FileFormat {
    /// The format of a job file's `format` value.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "npz" => Self::Npz,
            "npy-pair" => Self::NpyPair,
            "csv" => Self::Csv,
            "image-folder" => Self::ImageFolder,
            "idx" => Self::Idx,
            _ => return None,
        })
    }

    /// Its name in job files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Npz => "npz",
            Self::NpyPair => "npy-pair",
            Self::Csv => "csv",
            Self::ImageFolder => "image-folder",
            Self::Idx => "idx",
        }
    }

    /// The format a path's name makes clear, if it does: `.npz`, `.npy`, `.csv` (`.tsv`,
    /// either gzipped), an `-idx` or `.idx` name (MNIST's), or an existing directory.
    pub fn infer(path: &Path) -> Option<Self> {
        if path.is_dir() {
            return Some(Self::ImageFolder);
        }
        let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        if name.ends_with(".npz") {
            Some(Self::Npz)
        } else if name.ends_with(".npy") {
            Some(Self::NpyPair)
        } else if name.ends_with(".csv") || name.ends_with(".tsv") {
            Some(Self::Csv)
        } else if name.contains("-idx") || name.contains(".idx") || name.ends_with(".idx") {
            Some(Self::Idx)
        } else {
            None
        }
    }
}

/// Which column of a CSV table holds the labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelColumn {
    /// By its header.
    Name(String),
    /// By its 0-based position.
    Index(usize),
}

/// How to read a dataset file; every field is optional and has a default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileOptions {
    /// The format (default: inferred from the name).
    pub format: Option<FileFormat>,
    /// npy-pair and idx: the labels file.
    pub labels: Option<PathBuf>,
    /// npz: the features array (default `x`).
    pub x_key: Option<String>,
    /// npz: the labels array (default `y`).
    pub y_key: Option<String>,
    /// csv: the label column (default the last).
    pub label_column: Option<LabelColumn>,
    /// csv: whether the first row is a header (default: when a feature field of it is not a
    /// number).
    pub header: Option<bool>,
    /// image-folder: 1 (grayscale) or 3 (RGB); default 1 when every image is grayscale.
    pub channels: Option<usize>,
    /// image-folder: resize every image to this square size (default: they must agree).
    pub image_size: Option<usize>,
}

/// A dataset read from a file, with what a job reports about it.
#[derive(Debug, Clone, PartialEq)]
pub struct FileData {
    /// The samples, labels mapped to `0..classes.len()`.
    pub dataset: Dataset,
    /// The name of each class, in label order (the file's own labels, or folder names).
    pub classes: Vec<String>,
    /// What was read, in one line: samples, shape, value range and scaling, classes.
    pub stated: String,
}

pub(crate) fn malformed(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::Malformed {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Labels as a file holds them, before they are mapped to `0..K`.
pub(crate) enum RawLabels {
    /// Non-negative integers: class `k` is label `k`, and the classes are `0..=max`.
    Numbers(Vec<u64>),
    /// Names: the classes are the distinct names, sorted.
    Names(Vec<String>),
}

/// Features read from a file, before labels are attached.
pub(crate) struct Features {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
    /// How the stored values became these, e.g. "u8 divided by 255".
    pub scaling: String,
}

/// Maps a file's labels to `0..K` and names the classes; numbers name themselves.
fn map_labels(path: &Path, raw: RawLabels) -> Result<(Vec<u32>, Vec<String>), DataError> {
    match raw {
        RawLabels::Numbers(v) => {
            let max = v.iter().copied().max().unwrap_or(0);
            if max as usize >= MAX_CLASSES {
                let i = v.iter().position(|&l| l == max).unwrap_or(0);
                return Err(malformed(
                    path,
                    format!(
                        "label {max} of sample {i} is out of range (at most {} classes)",
                        MAX_CLASSES
                    ),
                ));
            }
            let classes = (0..=max).map(|k| k.to_string()).collect();
            Ok((v.into_iter().map(|l| l as u32).collect(), classes))
        }
        RawLabels::Names(v) => {
            let mut classes: Vec<String> = v.clone();
            classes.sort();
            classes.dedup();
            if classes.len() > MAX_CLASSES {
                return Err(malformed(
                    path,
                    format!(
                        "{} distinct labels, more than {MAX_CLASSES} classes",
                        classes.len()
                    ),
                ));
            }
            let labels = v
                .iter()
                .map(|n| classes.binary_search(n).unwrap_or(0) as u32)
                .collect();
            Ok((labels, classes))
        }
    }
}

/// Puts features and labels together, checking that they agree.
pub(crate) fn assemble(
    path: &Path,
    labels_path: &Path,
    features: Features,
    raw: RawLabels,
) -> Result<FileData, DataError> {
    let n_labels = match &raw {
        RawLabels::Numbers(v) => v.len(),
        RawLabels::Names(v) => v.len(),
    };
    let dim: usize = features.shape.iter().product();
    let n = features.values.len().checked_div(dim).unwrap_or(0);
    if n == 0 {
        return Err(malformed(path, "no samples"));
    }
    if n != n_labels {
        return Err(DataError::CountMismatch {
            images: path.to_path_buf(),
            labels: labels_path.to_path_buf(),
            images_n: n,
            labels_n: n_labels,
        });
    }
    if let Some(i) = features.values.iter().position(|v| !v.is_finite()) {
        return Err(malformed(
            path,
            format!("non-finite value in sample {}", i / dim),
        ));
    }
    let (labels, classes) = map_labels(labels_path, raw)?;
    let (lo, hi) = features
        .values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let shape = features
        .shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("×");
    let shown: Vec<&str> = classes.iter().take(12).map(String::as_str).collect();
    let more = if classes.len() > 12 { ", …" } else { "" };
    let stated = format!(
        "{}: {n} samples of {shape} ({}), values {lo}..{hi}; {} classes: {}{more}",
        path.display(),
        features.scaling,
        classes.len(),
        shown.join(", ")
    );
    let dataset = Dataset::new(
        path.display().to_string(),
        features.shape,
        features.values,
        labels,
        classes.len(),
    )?;
    Ok(FileData {
        dataset,
        classes,
        stated,
    })
}

/// The per-sample shape of an array `[N, rest…]`: `[D]` for vectors, `[1, H, W]` for
/// grayscale images, `[C, H, W]` for images with 1 or 3 channels first, and `[H, W, C]`
/// (channels last, as numpy image stacks usually are) turned to `[C, H, W]`, which is the
/// only case that moves values. Returns the shape and whether to move channels.
pub(crate) fn sample_shape(path: &Path, dims: &[usize]) -> Result<(Vec<usize>, bool), DataError> {
    match dims {
        [_, d] => Ok((vec![*d], false)),
        [_, h, w] => Ok((vec![1, *h, *w], false)),
        [_, c, h, w] if *c == 1 || *c == 3 => Ok((vec![*c, *h, *w], false)),
        [_, h, w, c] if *c == 1 || *c == 3 => Ok((vec![*c, *h, *w], true)),
        _ => Err(malformed(
            path,
            format!(
                "features of shape {dims:?}: expected [N, D], [N, H, W], [N, C, H, W] or [N, H, W, C] with C = 1 or 3"
            ),
        )),
    }
}

/// `[N, H, W, C]` values as `[N, C, H, W]`.
pub(crate) fn channels_first(values: &[f32], shape: &[usize]) -> Vec<f32> {
    let (c, h, w) = (shape[0], shape[1], shape[2]);
    let per = c * h * w;
    let mut out = vec![0.0; values.len()];
    for (s, chunk) in values.chunks_exact(per).enumerate() {
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    out[s * per + ch * h * w + y * w + x] = chunk[(y * w + x) * c + ch];
                }
            }
        }
    }
    out
}

fn labels_path(path: &Path, opts: &FileOptions, format: FileFormat) -> Result<PathBuf, DataError> {
    opts.labels.clone().ok_or_else(|| {
        malformed(
            path,
            format!(
                "format {} needs `labels`, the file of labels",
                format.as_str()
            ),
        )
    })
}

/// Reads the IDX file at `path` (gzipped or not).
fn read_idx_any(path: &Path) -> Result<idx::IdxArray, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        idx::read_idx_gz(path)
    } else {
        idx::parse_idx(&bytes, path)
    }
}

fn load_idx(path: &Path, labels: &Path) -> Result<FileData, DataError> {
    let images = read_idx_any(path)?;
    let (shape, _) = sample_shape(path, &images.dims)?;
    let (values, scaling) = match images.data {
        IdxData::U8(v) => (
            v.into_iter().map(|b| f32::from(b) / 255.0).collect(),
            "u8 divided by 255".to_string(),
        ),
        IdxData::F32(v) => (v, "f32 as stored".to_string()),
    };
    let lab = read_idx_any(labels)?;
    let raw = match (lab.dims.as_slice(), lab.data) {
        ([_], IdxData::U8(v)) => RawLabels::Numbers(v.into_iter().map(u64::from).collect()),
        (dims, _) => {
            return Err(malformed(
                labels,
                format!("labels must be a 1-d u8 array, found dimensions {dims:?}"),
            ));
        }
    };
    assemble(
        path,
        labels,
        Features {
            shape,
            values,
            scaling,
        },
        raw,
    )
}

/// Reads the dataset at `path` as `opts` says.
///
/// # Errors
/// [`DataError`] naming the file and what is wrong with it: missing, of a format that
/// cannot be told, a wrong dtype or shape, ragged rows, an unreadable image, an empty class
/// folder, labels out of range, features and labels of different lengths.
pub fn load_file(path: &Path, opts: &FileOptions) -> Result<FileData, DataError> {
    if !path.exists() {
        return Err(DataError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        });
    }
    let format = match opts.format.or_else(|| FileFormat::infer(path)) {
        Some(f) => f,
        None => {
            return Err(malformed(
                path,
                format!(
                    "cannot tell the format from the name: give `format` ({})",
                    FORMATS.join(", ")
                ),
            ));
        }
    };
    match format {
        FileFormat::Npz => numpy::load_npz(path, opts),
        FileFormat::NpyPair => numpy::load_pair(path, &labels_path(path, opts, format)?),
        FileFormat::Csv => table::load_csv(path, opts),
        FileFormat::ImageFolder => images::load_folder(path, opts),
        FileFormat::Idx => load_idx(path, &labels_path(path, opts, format)?),
    }
}

/// Splits `ds` into the samples it keeps for training and the `fraction` it holds out, by a
/// permutation drawn from `seed`, so that two datasets of a job naming the same file, fraction
/// and seed get complementary parts. Both keep the file's order.
///
/// # Errors
/// [`DataError::Invalid`] when `fraction` is not in (0, 1) or leaves a part empty.
pub fn holdout(ds: &Dataset, fraction: f64, seed: u64) -> Result<(Dataset, Dataset), DataError> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(DataError::Invalid {
            name: ds.name.clone(),
            reason: format!("holdout {fraction} is not between 0 and 1"),
        });
    }
    let n = ds.len();
    let k = (n as f64 * fraction).round() as usize;
    if k == 0 || k == n {
        return Err(DataError::Invalid {
            name: ds.name.clone(),
            reason: format!("holdout {fraction} of {n} samples leaves a part empty"),
        });
    }
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(seed);
    for i in (1..n).rev() {
        let j = rng.below((i + 1) as u64) as usize;
        order.swap(i, j);
    }
    let (held, kept) = order.split_at_mut(k);
    held.sort_unstable();
    kept.sort_unstable();
    Ok((ds.subset(kept), ds.subset(held)))
}

#[cfg(test)]
mod tests;
