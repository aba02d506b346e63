//! The tasks of multitask and progressive learning.

use serde::{Deserialize, Serialize};

use crate::spec::error::{SpecError, bad};
use crate::spec::{JobSpec, MAX_EPOCHS, MAX_STEPS, MethodSpec, Role};

/// One task of multitask or progressive learning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Its name; datasets with `task = name` belong to it, metrics are `tasks.<name>.*`.
    pub name: String,
    /// Weight of its loss (multitask).
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Its samples per step over the group (default: the global batch size).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Progressive: length of its column's stage in steps (default: the `training` table).
    #[serde(default)]
    pub steps: Option<u64>,
    /// Progressive: length of its column's stage in epochs.
    #[serde(default)]
    pub epochs: Option<u32>,
}

fn default_weight() -> f64 {
    crate::spec::defaults::TASK_WEIGHT
}

/// Progressive networks feed earlier columns into the new one unless told not to.
pub(super) fn default_laterals() -> bool {
    crate::spec::defaults::LATERALS
}

impl JobSpec {
    pub(super) fn validate_tasks(&self, tasks: &[TaskSpec]) -> Result<(), SpecError> {
        let progressive = matches!(self.method, MethodSpec::Progressive { .. });
        if tasks.is_empty() {
            return Err(bad("method.tasks", "must name at least one task"));
        }
        if tasks.len() > 16 {
            return Err(bad("method.tasks", "takes at most 16 tasks"));
        }
        for (i, t) in tasks.iter().enumerate() {
            let f = |k: &str| format!("method.tasks[{i}].{k}");
            if t.name.is_empty()
                || !t
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(bad(f("name"), "must be letters, digits, '_' or '-'"));
            }
            if tasks[..i].iter().any(|o| o.name == t.name) {
                return Err(bad(f("name"), format!("{:?} is used twice", t.name)));
            }
            if !(t.weight.is_finite() && t.weight >= 0.0) {
                return Err(bad(f("weight"), "must be a finite number >= 0"));
            }
            if let Some(b) = t.batch_size {
                self.check_batch(&f("batch_size"), b)?;
            }
            if !progressive && (t.steps.is_some() || t.epochs.is_some()) {
                return Err(bad(
                    f("steps"),
                    "multitask tasks train together: set the length in the training table",
                ));
            }
            match (t.steps, t.epochs) {
                (Some(_), Some(_)) => return Err(bad(f("steps"), "set steps or epochs, not both")),
                (Some(s), _) if s == 0 || s > MAX_STEPS => {
                    return Err(bad(f("steps"), format!("must be in 1..={MAX_STEPS}")));
                }
                (_, Some(e)) if e == 0 || e > MAX_EPOCHS => {
                    return Err(bad(f("epochs"), format!("must be in 1..={MAX_EPOCHS}")));
                }
                _ => {}
            }
            let train = self
                .datasets
                .iter()
                .filter(|d| d.role == Role::Train && d.task.as_deref() == Some(&t.name))
                .count();
            if train != 1 {
                return Err(bad(
                    "datasets",
                    format!(
                        "task {:?} needs exactly one dataset with role = \"train\", found {train}",
                        t.name
                    ),
                ));
            }
        }
        Ok(())
    }
}
