//! The network of a job.

use serde::{Deserialize, Serialize};

use super::MAX_WIDTH;
use super::error::{SpecError, bad};

/// The network; its input shape and class count come from the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelSpec {
    /// Fully connected, ReLU between layers.
    Mlp {
        /// Widths of the hidden layers (the feature extractor).
        hidden: Vec<usize>,
    },
    /// The digits CNN of the DANN paper (Ganin et al. 2016). Braced, so that
    /// `deny_unknown_fields` refuses stray keys: serde ignores them on a unit variant of an
    /// internally tagged enum.
    DigitsCnn {},
}

impl ModelSpec {
    pub(super) fn validate(&self) -> Result<(), SpecError> {
        match self {
            ModelSpec::Mlp { hidden } => {
                if let Some(i) = hidden.iter().position(|&h| h == 0) {
                    return Err(bad(format!("model.hidden[{i}]"), "must be > 0"));
                }
                if let Some(i) = hidden.iter().position(|&h| h > MAX_WIDTH) {
                    return Err(bad(
                        format!("model.hidden[{i}]"),
                        format!("must be <= {MAX_WIDTH}"),
                    ));
                }
            }
            ModelSpec::DigitsCnn {} => {}
        }
        Ok(())
    }
}
