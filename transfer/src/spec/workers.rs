//! How many workers a job uses.

use serde::{Deserialize, Serialize};

use super::error::{SpecError, bad};

/// How many workers a job uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersSpec {
    /// The job starts once this many workers are free.
    pub min: u32,
    /// The job never uses more.
    pub max: u32,
}

impl Default for WorkersSpec {
    fn default() -> Self {
        Self {
            min: super::defaults::WORKERS,
            max: super::defaults::WORKERS,
        }
    }
}

impl WorkersSpec {
    pub(super) fn validate(&self) -> Result<(), SpecError> {
        if self.min == 0 {
            return Err(bad("workers.min", "must be > 0"));
        }
        if self.max < self.min {
            return Err(bad(
                "workers.max",
                format!("must be >= workers.min ({})", self.min),
            ));
        }
        Ok(())
    }
}
