//! Batch size and length of training.

use serde::{Deserialize, Serialize};

use super::error::{SpecError, bad};
use super::{MAX_EPOCHS, MAX_STEPS};

/// Batch size and length of the (last) stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    /// Samples per step over the whole group (split among the workers).
    pub global_batch_size: usize,
    /// Length in steps.
    #[serde(default)]
    pub steps: Option<u64>,
    /// Length in epochs.
    #[serde(default)]
    pub epochs: Option<u32>,
    /// Steps between parameter fingerprints (replica check).
    #[serde(default = "default_fingerprint")]
    pub fingerprint_interval: u64,
}

fn default_fingerprint() -> u64 {
    TrainingSpec::default_fingerprint_interval()
}

impl TrainingSpec {
    /// Its own fields; the batch's fit to the group is checked with the workers.
    pub(super) fn validate(&self) -> Result<(), SpecError> {
        let t = self;
        if t.global_batch_size == 0 {
            return Err(bad("training.global_batch_size", "must be > 0"));
        }
        match (t.steps, t.epochs) {
            (Some(_), Some(_)) => return Err(bad("training", "set steps or epochs, not both")),
            (None, None) => return Err(bad("training", "set steps or epochs")),
            (Some(0), _) => return Err(bad("training.steps", "must be > 0")),
            (_, Some(0)) => return Err(bad("training.epochs", "must be > 0")),
            (Some(s), _) if s > MAX_STEPS => {
                return Err(bad("training.steps", format!("must be <= {MAX_STEPS}")));
            }
            (_, Some(e)) if e > MAX_EPOCHS => {
                return Err(bad("training.epochs", format!("must be <= {MAX_EPOCHS}")));
            }
            _ => {}
        }
        if t.fingerprint_interval == 0 {
            return Err(bad("training.fingerprint_interval", "must be > 0"));
        }
        Ok(())
    }

    /// Steps between replica checks when a job does not say.
    pub const fn default_fingerprint_interval() -> u64 {
        super::defaults::FINGERPRINT_INTERVAL
    }
}
