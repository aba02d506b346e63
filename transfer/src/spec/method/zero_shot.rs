//! Zero-shot learning's class vectors and scoring.

use serde::{Deserialize, Serialize};

use crate::data::catalog;
use crate::spec::error::{SpecError, bad};

/// How zero-shot learning scores a class against a predicted attribute vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scoring {
    /// The nearest class vector (Euclidean).
    #[default]
    Nearest,
    /// The class whose binary attribute vector is most likely under the predicted attribute
    /// probabilities, as in DAP (Lampert et al.); binary tables only.
    Likelihood,
}

/// The class vectors of zero-shot learning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AttributeSource {
    /// A built-in table by name: `seven_segment` (digits as lit segments a–g) or
    /// `digit_strokes` (hand-made: loops, strokes, curves).
    Builtin {
        /// The table.
        table: String,
    },
    /// A CSV file on the coordinator: one row per class, in class order, numbers only.
    File {
        /// Its path.
        path: String,
    },
    /// Principal components of the per-class mean samples of a description dataset, fitted
    /// on the seen classes; unseen classes are projected into the same space.
    Pca {
        /// The dataset whose class means describe the classes.
        dataset: String,
        /// Its split.
        #[serde(default = "crate::spec::dataset::default_split")]
        split: String,
        /// Components kept.
        components: usize,
    },
}

pub(super) fn validate(
    unseen_classes: &[u32],
    attributes: &AttributeSource,
    scoring: Scoring,
) -> Result<(), SpecError> {
    if scoring == Scoring::Likelihood && matches!(attributes, AttributeSource::Pca { .. }) {
        return Err(bad(
            "method.scoring",
            "likelihood scoring needs binary attributes; PCA vectors are real-valued",
        ));
    }
    if unseen_classes.is_empty() {
        return Err(bad("method.unseen_classes", "must name at least one class"));
    }
    let mut sorted = unseen_classes.to_vec();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return Err(bad("method.unseen_classes", "lists a class twice"));
    }
    match attributes {
        AttributeSource::Builtin { table } => {
            if crate::zeroshot::builtin_table(table).is_none() {
                return Err(bad(
                    "method.attributes.table",
                    format!(
                        "unknown table {table:?} (known: {})",
                        crate::zeroshot::BUILTIN_TABLES.join(", ")
                    ),
                ));
            }
        }
        AttributeSource::File { path } => {
            if path.trim().is_empty() {
                return Err(bad("method.attributes.path", "must not be empty"));
            }
        }
        AttributeSource::Pca {
            dataset,
            split,
            components,
        } => {
            if !(1..=256).contains(components) {
                return Err(bad("method.attributes.components", "must be in 1..=256"));
            }
            let Some(info) = catalog::describe(dataset) else {
                return Err(bad(
                    "method.attributes.dataset",
                    format!("unknown dataset {dataset:?}"),
                ));
            };
            if !info.splits.contains(&split.as_str()) {
                return Err(bad(
                    "method.attributes.split",
                    format!("{dataset:?} has no split {split:?}"),
                ));
            }
        }
    }
    Ok(())
}
