//! The transfer method of a job; each method's own parameters are checked in its submodule.

mod conservative;
mod dann;
mod layer_transfer;
mod source_stage;
mod tasks;
mod zero_shot;

use serde::{Deserialize, Serialize};

pub use conservative::Penalty;
pub use dann::GrlRamp;
pub use tasks::TaskSpec;
pub use zero_shot::{AttributeSource, Scoring};

use super::error::{SpecError, bad};
use super::{JobSpec, Role};
use crate::torch_layout::WeightsLayout;

/// The transfer method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum MethodSpec {
    /// Plain supervised training on the source data: the baseline. Braced, not a unit
    /// variant: serde ignores every other key of an internally tagged unit variant, so a
    /// stray `init_from` would pass unseen and the job train from scratch.
    Supervised {},
    /// Train on source (or load a model), then train on a few labelled target samples.
    FineTuning {
        /// Length of the source stage in steps.
        #[serde(default)]
        source_steps: Option<u64>,
        /// Length of the source stage in epochs.
        #[serde(default)]
        source_epochs: Option<u32>,
        /// A safetensors file (on the coordinator) to start the target stage from, instead
        /// of a source stage.
        #[serde(default)]
        init_from: Option<String>,
        /// The layout of `init_from`: `torch` for a PyTorch `state_dict` (an nn.Sequential's
        /// names, linear weights `[out, in]`), `graft` for graft's own; by default the one the
        /// file's metadata declares, else graft's.
        #[serde(default)]
        init_layout: Option<WeightsLayout>,
        /// Re-initialise the label head before the target stage.
        #[serde(default)]
        reset_head: bool,
    },
    /// Fine-tuning with a penalty that keeps the model near the source model θ₀ / f₀.
    Conservative {
        /// Length of the source stage in steps.
        #[serde(default)]
        source_steps: Option<u64>,
        /// Length of the source stage in epochs.
        #[serde(default)]
        source_epochs: Option<u32>,
        /// A safetensors file to take the source model from instead of a source stage.
        #[serde(default)]
        init_from: Option<String>,
        /// The layout of `init_from`: `torch` for a PyTorch `state_dict` (an nn.Sequential's
        /// names, linear weights `[out, in]`), `graft` for graft's own; by default the one the
        /// file's metadata declares, else graft's.
        #[serde(default)]
        init_layout: Option<WeightsLayout>,
        /// Re-initialise the label head before the target stage (it then has no source
        /// counterpart and L2-SP leaves it out).
        #[serde(default)]
        reset_head: bool,
        /// Which distance.
        penalty: Penalty,
        /// Weight λ of the penalty.
        lambda: f64,
        /// Softening temperature of `output_kl`.
        #[serde(default = "conservative::default_temperature")]
        temperature: f64,
    },
    /// Copy layers from the source model, freeze them, train the rest on the target.
    LayerTransfer {
        /// Length of the source stage in steps.
        #[serde(default)]
        source_steps: Option<u64>,
        /// Length of the source stage in epochs.
        #[serde(default)]
        source_epochs: Option<u32>,
        /// A safetensors file to take the source model from instead of a source stage.
        #[serde(default)]
        init_from: Option<String>,
        /// The layout of `init_from`: `torch` for a PyTorch `state_dict` (an nn.Sequential's
        /// names, linear weights `[out, in]`), `graft` for graft's own; by default the one the
        /// file's metadata declares, else graft's.
        #[serde(default)]
        init_layout: Option<WeightsLayout>,
        /// Re-initialise the label head before the target stage.
        #[serde(default)]
        reset_head: bool,
        /// The layers to transfer and freeze: parameter-name patterns (`features.*`,
        /// `features.conv1.weight`) or `first:K` / `last:K` over the network's layers.
        freeze: Vec<String>,
    },
    /// A shared trunk and one head per task; every step draws from every task.
    Multitask {
        /// The tasks; their datasets name them in `task`.
        tasks: Vec<TaskSpec>,
    },
    /// One column per task, trained in order; earlier columns frozen, laterals into the new.
    Progressive {
        /// The tasks, one column each, in training order.
        tasks: Vec<TaskSpec>,
        /// Feed earlier columns' hidden layers into the new column.
        #[serde(default = "tasks::default_laterals")]
        laterals: bool,
    },
    /// Domain-adversarial training (Ganin et al. 2016): a domain head behind a
    /// gradient-reversal layer on labelled source and unlabelled target data.
    Dann {
        /// Largest reversal weight; λ_p = max · (2/(1+e^(−γp)) − 1).
        #[serde(default = "dann::default_lambda_max")]
        lambda_max: f64,
        /// γ of the λ schedule (10 in the paper).
        #[serde(default = "dann::default_gamma")]
        gamma: f64,
        /// Hidden widths of the domain head.
        #[serde(default = "dann::default_domain_hidden")]
        domain_hidden: Vec<usize>,
        /// Target samples per step over the group (default: the global batch size).
        #[serde(default)]
        target_batch_size: Option<usize>,
        /// Weight of the domain loss beside the label loss (TLlib's `trade_off`).
        #[serde(default = "dann::default_trade_off")]
        trade_off: f64,
        /// How λ rises: over the stage's progress (`progress`, with `gamma`) or its steps
        /// (`steps`, with `ramp_steps`).
        #[serde(default)]
        ramp: GrlRamp,
        /// `ramp = "steps"`: the scale of the ramp in steps (default 1000).
        #[serde(default)]
        ramp_steps: Option<u64>,
    },
    /// Map inputs to class-attribute vectors; predict the nearest class vector, classes unseen
    /// in training included.
    ZeroShot {
        /// Classes left out of training (their samples are dropped from the training set).
        unseen_classes: Vec<u32>,
        /// Where the class vectors come from.
        attributes: AttributeSource,
        /// How a predicted attribute vector picks a class.
        #[serde(default)]
        scoring: Scoring,
    },
}

impl MethodSpec {
    /// The method's name as reports show it.
    pub fn name(&self) -> &'static str {
        match self {
            MethodSpec::Supervised {} => "supervised",
            MethodSpec::FineTuning { .. } => "fine_tuning",
            MethodSpec::Conservative { .. } => "conservative",
            MethodSpec::LayerTransfer { .. } => "layer_transfer",
            MethodSpec::Multitask { .. } => "multitask",
            MethodSpec::Progressive { .. } => "progressive",
            MethodSpec::Dann { .. } => "dann",
            MethodSpec::ZeroShot { .. } => "zero_shot",
        }
    }

    /// The source stage of the methods that have one: `(steps, epochs, init_from)`.
    pub fn source_stage(&self) -> Option<(Option<u64>, Option<u32>, Option<&str>)> {
        match self {
            MethodSpec::FineTuning {
                source_steps,
                source_epochs,
                init_from,
                ..
            }
            | MethodSpec::Conservative {
                source_steps,
                source_epochs,
                init_from,
                ..
            }
            | MethodSpec::LayerTransfer {
                source_steps,
                source_epochs,
                init_from,
                ..
            } => Some((*source_steps, *source_epochs, init_from.as_deref())),
            _ => None,
        }
    }

    /// The layout the job names for its `init_from` file (`None`: the file's own, else
    /// graft's).
    pub fn init_layout(&self) -> Option<WeightsLayout> {
        match self {
            MethodSpec::FineTuning { init_layout, .. }
            | MethodSpec::Conservative { init_layout, .. }
            | MethodSpec::LayerTransfer { init_layout, .. } => *init_layout,
            _ => None,
        }
    }

    /// The tasks of multitask and progressive learning.
    pub fn tasks(&self) -> &[TaskSpec] {
        match self {
            MethodSpec::Multitask { tasks } | MethodSpec::Progressive { tasks, .. } => tasks,
            _ => &[],
        }
    }
}

impl JobSpec {
    pub(super) fn validate_method(&self) -> Result<(), SpecError> {
        let method = self.method.name();
        let one = |role: Role| -> Result<(), SpecError> {
            match self.datasets_with(role).count() {
                1 => Ok(()),
                0 => Err(bad(
                    "datasets",
                    format!(
                        "method {method} needs a dataset with role = {:?}",
                        role.as_str()
                    ),
                )),
                n => Err(bad(
                    "datasets",
                    format!(
                        "method {method} takes one dataset with role = {:?}, found {n}",
                        role.as_str()
                    ),
                )),
            }
        };
        let tasks = self.method.tasks();
        for (i, d) in self.datasets.iter().enumerate() {
            match (&d.task, tasks.is_empty()) {
                (Some(_), true) => {
                    return Err(bad(
                        format!("datasets[{i}].task"),
                        format!("method {method} has no tasks"),
                    ));
                }
                (Some(t), false) if !tasks.iter().any(|k| &k.name == t) => {
                    return Err(bad(
                        format!("datasets[{i}].task"),
                        format!("no task named {t:?} in method.tasks"),
                    ));
                }
                (None, false) => {
                    return Err(bad(
                        format!("datasets[{i}].task"),
                        format!("method {method} needs every dataset to name its task"),
                    ));
                }
                _ => {}
            }
            let fits = if tasks.is_empty() {
                d.role != Role::Train
            } else {
                matches!(d.role, Role::Train | Role::Eval)
            };
            if !fits {
                return Err(bad(
                    format!("datasets[{i}].role"),
                    if tasks.is_empty() {
                        format!(
                            "role = \"train\" is for the tasks of multitask and progressive jobs, not {method}"
                        )
                    } else {
                        format!("method {method} takes role = \"train\" or \"eval\"")
                    },
                ));
            }
        }
        match &self.method {
            MethodSpec::Supervised {} => one(Role::Source),
            MethodSpec::FineTuning { .. } => self.validate_source_stage(one),
            MethodSpec::Conservative {
                lambda,
                temperature,
                ..
            } => {
                conservative::validate(*lambda, *temperature)?;
                self.validate_source_stage(one)
            }
            MethodSpec::LayerTransfer { freeze, .. } => {
                layer_transfer::validate(freeze)?;
                self.validate_source_stage(one)
            }
            MethodSpec::Multitask { tasks } | MethodSpec::Progressive { tasks, .. } => {
                self.validate_tasks(tasks)
            }
            MethodSpec::Dann {
                lambda_max,
                gamma,
                domain_hidden,
                target_batch_size,
                trade_off,
                ramp,
                ramp_steps,
            } => {
                self.validate_dann(
                    *lambda_max,
                    *gamma,
                    domain_hidden,
                    *target_batch_size,
                    *trade_off,
                    *ramp,
                    *ramp_steps,
                )?;
                one(Role::Source)?;
                one(Role::TargetUnlabelled)
            }
            MethodSpec::ZeroShot {
                unseen_classes,
                attributes,
                scoring,
            } => {
                zero_shot::validate(unseen_classes, attributes, *scoring)?;
                one(Role::Source)
            }
        }
    }
}
