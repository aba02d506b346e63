//! The one error type of the data module.
//!
//! Data problems are the first thing a user meets (wrong directory, a half-copied file), so
//! every message names the file or dataset and says what is wrong in a few words.

use std::path::PathBuf;

/// Why a dataset could not be read, generated or transformed.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The operating system refused a read; the path says which file.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file being read.
        path: PathBuf,
        /// What the operating system reported.
        source: std::io::Error,
    },

    /// A dataset file is not where the data directory says it should be.
    #[error(
        "dataset {dataset} not found: looked for {}; run `graft data fetch {dataset}`, or set GRAFT_DATA_DIR or data_dir (the README's \"Data\" section)",
        .path.display()
    )]
    Missing {
        /// The full path graft looked at.
        path: PathBuf,
        /// The catalog name of the dataset.
        dataset: String,
    },

    /// The file does not start like an IDX file, so it is probably the wrong file.
    #[error("{}: not an IDX file (first bytes {found:02x?})", .path.display())]
    BadMagic {
        /// The file being parsed.
        path: PathBuf,
        /// Its first four bytes (zero-padded if shorter).
        found: [u8; 4],
    },

    /// The file ends before the header says it should, usually an interrupted copy.
    #[error("{}: truncated: expected {expected} bytes, found {found}", .path.display())]
    Truncated {
        /// The file being parsed.
        path: PathBuf,
        /// Bytes the header implies (or the header itself needs).
        expected: usize,
        /// Bytes actually present.
        found: usize,
    },

    /// The file has the right kind but inconsistent content.
    #[error("{}: {reason}", .path.display())]
    Malformed {
        /// The file being parsed.
        path: PathBuf,
        /// What is wrong, with a line or sample number where one helps.
        reason: String,
    },

    /// An images file and its labels file disagree on the number of samples.
    #[error(
        "{} holds {images_n} samples but {} holds {labels_n} labels",
        .images.display(),
        .labels.display()
    )]
    CountMismatch {
        /// The images (features) file.
        images: PathBuf,
        /// The labels file.
        labels: PathBuf,
        /// Samples in the images file.
        images_n: usize,
        /// Labels in the labels file.
        labels_n: usize,
    },

    /// Standardising needs values that vary.
    #[error("{name}: cannot standardize: every value is the same")]
    Constant {
        /// The dataset.
        name: String,
    },

    /// Samples cannot be brought to the shape a model expects.
    #[error("{name}: cannot resize samples of shape {from:?} to {to:?}")]
    Shape {
        /// The dataset being resized.
        name: String,
        /// Its per-sample shape.
        from: Vec<usize>,
        /// The shape asked for.
        to: Vec<usize>,
    },

    /// A few-shot selection asked for more samples of a class than exist.
    #[error("{name}: class {class} has {have} samples, fewer than the {want} asked for")]
    NotEnoughPerClass {
        /// The dataset sampled from.
        name: String,
        /// The class that is short.
        class: u32,
        /// Samples of that class present.
        have: usize,
        /// Samples per class asked for.
        want: usize,
    },

    /// The catalog has no dataset of that name.
    #[error("unknown dataset {name:?} (known: {known})")]
    UnknownDataset {
        /// The name asked for.
        name: String,
        /// The catalog's names, comma-separated.
        known: String,
    },

    /// The dataset exists but has no such split.
    #[error("dataset {dataset} has no split {split:?} (known: {known})")]
    UnknownSplit {
        /// The catalog name of the dataset.
        dataset: String,
        /// The split asked for.
        split: String,
        /// The dataset's splits, comma-separated.
        known: String,
    },

    /// Values handed to the module (rather than read from a file) are inconsistent.
    #[error("{name}: {reason}")]
    Invalid {
        /// The dataset or configuration concerned.
        name: String,
        /// What is wrong.
        reason: String,
    },
}
