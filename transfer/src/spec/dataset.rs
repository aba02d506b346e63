//! The datasets of a job and what each is for.

use serde::{Deserialize, Serialize};

use super::error::{SpecError, bad};
use super::{JobSpec, MAX_GENERATED, defaults};
use crate::data::catalog;

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

/// One dataset of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// A name from the built-in catalog (`mnist`, `usps`, `moons`, ...).
    pub name: String,
    /// `train` or `test` (or `all` for sets without a split).
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
            let Some(info) = catalog::describe(&d.name) else {
                return Err(bad(
                    f("name"),
                    format!(
                        "unknown dataset {:?} (known: {})",
                        d.name,
                        catalog::KNOWN.join(", ")
                    ),
                ));
            };
            if !info.splits.contains(&d.split.as_str()) {
                return Err(bad(
                    f("split"),
                    format!(
                        "{:?} has no split {:?} (has: {})",
                        d.name,
                        d.split,
                        info.splits.join(", ")
                    ),
                ));
            }
            if let Some(n) = d.image_size
                && !(4..=512).contains(&n)
            {
                return Err(bad(f("image_size"), "must be in 4..=512"));
            }
            if d.labels_per_class == Some(0) {
                return Err(bad(f("labels_per_class"), "must be > 0"));
            }
            if d.limit == Some(0) {
                return Err(bad(f("limit"), "must be > 0"));
            }
            let generated = d.name == "moons" || d.name == "random";
            for (key, set) in [
                ("samples", d.samples.is_some()),
                ("noise", d.noise.is_some()),
                ("rotation_deg", d.rotation_deg.is_some()),
            ] {
                if set && !generated {
                    return Err(bad(
                        f(key),
                        "only applies to the generated datasets \"moons\" and \"random\"",
                    ));
                }
            }
            if let Some(n) = d.samples
                && !(2..=MAX_GENERATED).contains(&n)
            {
                return Err(bad(f("samples"), format!("must be in 2..={MAX_GENERATED}")));
            }
            if let Some(n) = d.noise
                && !(n.is_finite() && n >= 0.0)
            {
                return Err(bad(f("noise"), "must be a finite number >= 0"));
            }
            if let Some(r) = d.rotation_deg
                && !r.is_finite()
            {
                return Err(bad(f("rotation_deg"), "must be finite"));
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
