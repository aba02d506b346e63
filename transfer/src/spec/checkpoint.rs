//! When a job writes checkpoints.

use serde::{Deserialize, Serialize};

use super::error::{SpecError, bad};

/// Checkpoint policy; the last step always checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    /// Steps between checkpoints (0: only at the end).
    #[serde(default)]
    pub interval_steps: u64,
    /// How many checkpoints to keep.
    #[serde(default = "default_keep")]
    pub keep: u32,
}

fn default_keep() -> u32 {
    super::defaults::CHECKPOINT_KEEP
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        Self {
            interval_steps: 0,
            keep: default_keep(),
        }
    }
}

impl CheckpointSpec {
    pub(super) fn validate(&self) -> Result<(), SpecError> {
        if self.keep == 0 {
            return Err(bad("checkpoint.keep", "must be > 0"));
        }
        Ok(())
    }
}
