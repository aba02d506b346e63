//! The datasets of a job and what each is for.

use serde::{Deserialize, Serialize};

use super::error::{SpecError, bad};
use super::{JobSpec, MAX_GENERATED, defaults};
use crate::data::catalog;
use crate::data::files::{FORMATS, FileFormat};

/// What a dataset is for in a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Labelled source data.
    Source,
    /// Labelled target data (often few samples).
    TargetLabelled,
    /// Unlabelled target data (domain adaptation).
    TargetUnlabelled,
    /// Held-out evaluation data.
    Eval,
    /// Labelled training data of a task (multitask, progressive).
    Train,
}

impl Role {
    /// The name used in job files.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::TargetLabelled => "target_labelled",
            Role::TargetUnlabelled => "target_unlabelled",
            Role::Eval => "eval",
            Role::Train => "train",
        }
    }
}

/// A CSV table's label column, by header or by 0-based position (`label_column = "digit"`
/// or `label_column = 0` in a job file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ColumnRef {
    /// By position.
    Index(usize),
    /// By header.
    Name(String),
}

/// A fixed input normalisation, `(x − mean) / std` on every value (TLlib's digits recipes use
/// 0.5 and 0.5: values in [0, 1] to [−1, 1]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalize {
    /// Subtracted from every value.
    pub mean: f32,
    /// What the difference is divided by.
    pub std: f32,
}

/// One dataset of a job: a catalog name, or a file (or folder) of the user's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// A name from the built-in catalog (`mnist`, `usps`, `moons`, ...); empty when `path`
    /// names a file instead.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// A dataset file or image folder of the user's: relative to the coordinator's data
    /// directory, or absolute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The file's format (`npz`, `npy-pair`, `csv`, `image-folder`, `idx`); default: from
    /// the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// npy-pair and idx: the labels file (resolved as `path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// npz: the features array (default `x`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_key: Option<String>,
    /// npz: the labels array (default `y`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y_key: Option<String>,
    /// csv: the label column (default the last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_column: Option<ColumnRef>,
    /// csv: whether the first row is a header (default: when a feature field of it is not a
    /// number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<bool>,
    /// image-folder: 1 (grayscale) or 3 (RGB); default 1 when every image is grayscale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<usize>,
    /// A file: hold out this fraction of its samples, drawn from the job's seed; `split =
    /// "train"` is the rest and `split = "test"` the part held out, so two datasets naming the
    /// same file and fraction get complementary parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout: Option<f64>,
    /// `train` or `test` (or `all` for sets without a split); of a file, `all` (the whole
    /// file, also what the default `train` means without `holdout`) or, with `holdout`, the
    /// part kept (`train`) or held out (`test`).
    #[serde(default = "default_split")]
    pub split: String,
    /// What the job uses it for.
    pub role: Role,
    /// Keep a seeded choice of this many samples per class.
    #[serde(default)]
    pub labels_per_class: Option<usize>,
    /// Keep only the first samples.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Evaluation sets: prefix of the metric names (default `target`).
    #[serde(default)]
    pub label: Option<String>,
    /// The task it belongs to (multitask and progressive).
    #[serde(default)]
    pub task: Option<String>,
    /// Resize the images to `image_size × image_size` (bilinear) when loading.
    #[serde(default)]
    pub image_size: Option<usize>,
    /// Shift and scale the set's values to mean 0 and standard deviation 1, with one mean and
    /// one deviation over all of the set's values (no labels read). Domains whose images differ
    /// in ink and framing (MNIST's 20×20 box, USPS filling its frame) then start from the same
    /// intensity statistics, which the domain-adversarial game would otherwise spend its
    /// capacity on.
    #[serde(default)]
    pub standardize: bool,
    /// Normalise with given constants instead, after resizing: `normalize = { mean = 0.5,
    /// std = 0.5 }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<Normalize>,
    /// Generated moons: number of samples.
    #[serde(default)]
    pub samples: Option<usize>,
    /// Generated moons: noise standard deviation.
    #[serde(default)]
    pub noise: Option<f32>,
    /// Generated moons: rotation of the domain in degrees.
    #[serde(default)]
    pub rotation_deg: Option<f32>,
}

pub(super) fn default_split() -> String {
    defaults::SPLIT.to_string()
}

impl DatasetSpec {
    /// A catalog dataset with nothing else set.
    pub fn catalog(name: &str, split: &str, role: Role) -> Self {
        Self {
            name: name.to_string(),
            path: None,
            format: None,
            labels: None,
            x_key: None,
            y_key: None,
            label_column: None,
            header: None,
            channels: None,
            holdout: None,
            split: split.to_string(),
            role,
            labels_per_class: None,
            limit: None,
            label: None,
            task: None,
            image_size: None,
            standardize: false,
            normalize: None,
            samples: None,
            noise: None,
            rotation_deg: None,
        }
    }

    /// How the dataset is named in messages: its catalog name and split, or its path.
    pub fn source(&self) -> String {
        match &self.path {
            Some(p) => p.clone(),
            None => format!("{}/{}", self.name, self.split),
        }
    }

    /// The metric prefix of an evaluation set: its `label`, else `tasks.<task>` for a task's
    /// set, else `target`.
    pub fn metric_label(&self) -> String {
        match (&self.label, &self.task) {
            (Some(l), _) => l.clone(),
            (None, Some(t)) => format!("tasks.{t}"),
            (None, None) => "target".to_string(),
        }
    }
}

impl JobSpec {
    pub(super) fn validate_datasets(&self) -> Result<(), SpecError> {
        if self.datasets.is_empty() {
            return Err(bad("datasets", "must name at least one dataset"));
        }
        for (i, d) in self.datasets.iter().enumerate() {
            let f = |k: &str| format!("datasets[{i}].{k}");
            if d.path.is_some() {
                d.validate_file(&f)?;
            } else {
                d.validate_catalog(&f)?;
            }
            if let Some(n) = d.image_size
                && !(4..=512).contains(&n)
            {
                return Err(bad(f("image_size"), "must be in 4..=512"));
            }
            if d.labels_per_class == Some(0) {
                return Err(bad(f("labels_per_class"), "must be > 0"));
            }
            if let Some(n) = d.normalize {
                if d.standardize {
                    return Err(bad(
                        f("normalize"),
                        "give standardize (the set's own moments) or normalize (given ones), not both",
                    ));
                }
                if !(n.mean.is_finite() && n.std.is_finite() && n.std > 0.0) {
                    return Err(bad(
                        f("normalize"),
                        "mean must be finite and std a finite number > 0",
                    ));
                }
            }
            if d.limit == Some(0) {
                return Err(bad(f("limit"), "must be > 0"));
            }
            if d.task.is_some() && d.role == Role::Eval && d.label.is_some() {
                return Err(bad(
                    f("label"),
                    "a task's evaluation set is named by its task",
                ));
            }
            if d.label.is_some() && d.role != Role::Eval {
                return Err(bad(f("label"), "only applies to evaluation datasets"));
            }
        }
        if self.datasets_with(Role::Eval).next().is_none() {
            return Err(bad("datasets", "needs a dataset with role = \"eval\""));
        }
        Ok(())
    }
}

impl DatasetSpec {
    /// A dataset by path: the file's keys make sense, the catalog's do not.
    fn validate_file(&self, f: &dyn Fn(&str) -> String) -> Result<(), SpecError> {
        let path = self.path.as_deref().unwrap_or_default();
        if !self.name.is_empty() {
            return Err(bad(
                f("name"),
                "give a catalog `name` or a file's `path`, not both",
            ));
        }
        if path.trim().is_empty() {
            return Err(bad(f("path"), "is empty"));
        }
        if path.len() > 4096 || path.chars().any(char::is_control) {
            return Err(bad(
                f("path"),
                "must be at most 4096 characters, with no control characters",
            ));
        }
        if let Some(format) = &self.format
            && FileFormat::parse(format).is_none()
        {
            return Err(bad(
                f("format"),
                format!("unknown format {format:?} (known: {})", FORMATS.join(", ")),
            ));
        }
        let format = self
            .format
            .as_deref()
            .and_then(FileFormat::parse)
            .or_else(|| FileFormat::infer(std::path::Path::new(path)));
        let only = |key: &str, set: bool, formats: &[FileFormat]| -> Result<(), SpecError> {
            if set && format.is_some_and(|fm| !formats.contains(&fm)) {
                let names: Vec<&str> = formats.iter().map(|fm| fm.as_str()).collect();
                return Err(bad(
                    f(key),
                    format!("only applies to format {}", names.join(" or ")),
                ));
            }
            Ok(())
        };
        only(
            "labels",
            self.labels.is_some(),
            &[FileFormat::NpyPair, FileFormat::Idx],
        )?;
        only("x_key", self.x_key.is_some(), &[FileFormat::Npz])?;
        only("y_key", self.y_key.is_some(), &[FileFormat::Npz])?;
        only(
            "label_column",
            self.label_column.is_some(),
            &[FileFormat::Csv],
        )?;
        only("header", self.header.is_some(), &[FileFormat::Csv])?;
        only(
            "channels",
            self.channels.is_some(),
            &[FileFormat::ImageFolder],
        )?;
        if matches!(format, Some(FileFormat::NpyPair | FileFormat::Idx)) && self.labels.is_none() {
            return Err(bad(
                f("labels"),
                "this format needs `labels`, the file of labels",
            ));
        }
        if let Some(c) = self.channels
            && c != 1
            && c != 3
        {
            return Err(bad(f("channels"), "must be 1 (grayscale) or 3 (RGB)"));
        }
        for (key, set) in [
            ("samples", self.samples.is_some()),
            ("noise", self.noise.is_some()),
            ("rotation_deg", self.rotation_deg.is_some()),
        ] {
            if set {
                return Err(bad(
                    f(key),
                    "only applies to the generated datasets \"moons\" and \"random\"",
                ));
            }
        }
        match (self.holdout, self.split.as_str()) {
            (Some(h), _) if !(h.is_finite() && h > 0.0 && h < 1.0) => Err(bad(
                f("holdout"),
                "must be a fraction strictly between 0 and 1",
            )),
            (Some(_), "train" | "test") | (None, "train" | "all") => Ok(()),
            (Some(_), other) => Err(bad(
                f("split"),
                format!(
                    "{other:?}: with holdout, \"train\" (the part kept) or \"test\" (the part held out)"
                ),
            )),
            (None, "test") => Err(bad(
                f("split"),
                "a file has no test split of its own: give `holdout` to carve one",
            )),
            (None, other) => Err(bad(
                f("split"),
                format!(
                    "{other:?}: a file's split is \"all\" (or \"train\"/\"test\" with holdout)"
                ),
            )),
        }
    }

    /// A dataset from the catalog: a known name and split, no file keys.
    fn validate_catalog(&self, f: &dyn Fn(&str) -> String) -> Result<(), SpecError> {
        for (key, set) in [
            ("format", self.format.is_some()),
            ("labels", self.labels.is_some()),
            ("x_key", self.x_key.is_some()),
            ("y_key", self.y_key.is_some()),
            ("label_column", self.label_column.is_some()),
            ("header", self.header.is_some()),
            ("channels", self.channels.is_some()),
            ("holdout", self.holdout.is_some()),
        ] {
            if set {
                return Err(bad(f(key), "only applies to a dataset given by `path`"));
            }
        }
        if self.name.is_empty() {
            return Err(bad(f("name"), "give a catalog `name` or a file's `path`"));
        }
        let Some(info) = catalog::describe(&self.name) else {
            return Err(bad(
                f("name"),
                format!(
                    "unknown dataset {:?} (known: {}; a file of your own is named by `path`)",
                    self.name,
                    catalog::KNOWN.join(", ")
                ),
            ));
        };
        if !info.splits.contains(&self.split.as_str()) {
            return Err(bad(
                f("split"),
                format!(
                    "{:?} has no split {:?} (has: {})",
                    self.name,
                    self.split,
                    info.splits.join(", ")
                ),
            ));
        }
        let generated = self.name == "moons" || self.name == "random";
        for (key, set) in [
            ("samples", self.samples.is_some()),
            ("noise", self.noise.is_some()),
            ("rotation_deg", self.rotation_deg.is_some()),
        ] {
            if set && !generated {
                return Err(bad(
                    f(key),
                    "only applies to the generated datasets \"moons\" and \"random\"",
                ));
            }
        }
        if let Some(n) = self.samples
            && !(2..=MAX_GENERATED).contains(&n)
        {
            return Err(bad(f("samples"), format!("must be in 2..={MAX_GENERATED}")));
        }
        if let Some(n) = self.noise
            && !(n.is_finite() && n >= 0.0)
        {
            return Err(bad(f("noise"), "must be a finite number >= 0"));
        }
        if let Some(r) = self.rotation_deg
            && !r.is_finite()
        {
            return Err(bad(f("rotation_deg"), "must be finite"));
        }
        Ok(())
    }
}
