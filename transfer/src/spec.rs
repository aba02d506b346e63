//! What a job trains: the domain form of a job file, and its validation.
//!
//! The client reads a TOML file into [`JobSpec`], the wire carries it as `graft.v1.JobSpec`,
//! and the coordinator validates it once with [`JobSpec::validate`]. Every error names the
//! field (`optimizer.lr: must be > 0`), so a user can fix the file without guessing.

use serde::{Deserialize, Serialize};

use crate::data::catalog;

/// A whole job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// A name for people; the coordinator gives each job its own id.
    pub name: String,
    /// Seeds initial weights, epoch permutations and generated data.
    #[serde(default)]
    pub seed: u64,
    /// The network.
    pub model: ModelSpec,
    /// The transfer method and its parameters.
    pub method: MethodSpec,
    /// Datasets with their roles.
    pub datasets: Vec<DatasetSpec>,
    /// How gradients become updates.
    pub optimizer: OptimizerSpec,
    /// Learning-rate schedule.
    #[serde(default)]
    pub schedule: ScheduleSpec,
    /// Batch size and length.
    pub training: TrainingSpec,
    /// Group size.
    #[serde(default)]
    pub workers: WorkersSpec,
    /// When to write checkpoints.
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    /// When to evaluate.
    #[serde(default)]
    pub evaluation: EvaluationSpec,
    /// How the group sums its gradients.
    #[serde(default)]
    pub allreduce: AllReduce,
}

/// How the group sums its gradients each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllReduce {
    /// Between the workers (reduce-scatter then all-gather): each link carries about twice
    /// the gradient whatever the group's size, so it scales where the star does not.
    #[default]
    Ring,
    /// Through the coordinator, whose link carries 2·W gradients per step.
    Star,
}

impl AllReduce {
    /// The word job files use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ring => "ring",
            Self::Star => "star",
        }
    }
}

/// The network; its input shape and class count come from the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelSpec {
    /// Fully connected, ReLU between layers.
    Mlp {
        /// Widths of the hidden layers (the feature extractor).
        hidden: Vec<usize>,
    },
    /// The digits CNN of the DANN paper (Ganin et al. 2016).
    DigitsCnn,
}

/// The transfer method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum MethodSpec {
    /// Plain supervised training on the source data: the baseline.
    Supervised,
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
        /// Re-initialise the label head before the target stage (it then has no source
        /// counterpart and L2-SP leaves it out).
        #[serde(default)]
        reset_head: bool,
        /// Which distance.
        penalty: Penalty,
        /// Weight λ of the penalty.
        lambda: f64,
        /// Softening temperature of `output_kl`.
        #[serde(default = "default_temperature")]
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
        #[serde(default = "default_true")]
        laterals: bool,
    },
    /// Domain-adversarial training (Ganin et al. 2016): a domain head behind a
    /// gradient-reversal layer on labelled source and unlabelled target data.
    Dann {
        /// Largest reversal weight; λ_p = max · (2/(1+e^(−γp)) − 1).
        #[serde(default = "default_one")]
        lambda_max: f64,
        /// γ of the λ schedule (10 in the paper).
        #[serde(default = "default_gamma")]
        gamma: f64,
        /// Hidden widths of the domain head.
        #[serde(default = "default_domain_hidden")]
        domain_hidden: Vec<usize>,
        /// Target samples per step over the group (default: the global batch size).
        #[serde(default)]
        target_batch_size: Option<usize>,
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

/// The distance of conservative training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Penalty {
    /// λ·Σ‖θ−θ₀‖² over the parameters with a source counterpart (L2-SP).
    L2Sp,
    /// λ·T²·KL(softmax(f₀(x)/T) ‖ softmax(f(x)/T)) per sample (distillation).
    OutputKl,
    /// λ·‖features(x) − features₀(x)‖² per sample.
    FeatureL2,
}

impl Penalty {
    /// The name used in job files.
    pub fn as_str(self) -> &'static str {
        match self {
            Penalty::L2Sp => "l2_sp",
            Penalty::OutputKl => "output_kl",
            Penalty::FeatureL2 => "feature_l2",
        }
    }
}

/// One task of multitask or progressive learning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Its name; datasets with `task = name` belong to it, metrics are `tasks.<name>.*`.
    pub name: String,
    /// Weight of its loss (multitask).
    #[serde(default = "default_one")]
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
        #[serde(default = "default_split")]
        split: String,
        /// Components kept.
        components: usize,
    },
}

fn default_true() -> bool {
    true
}
fn default_one() -> f64 {
    1.0
}
fn default_gamma() -> f64 {
    10.0
}
fn default_temperature() -> f64 {
    2.0
}
fn default_domain_hidden() -> Vec<usize> {
    vec![100]
}

impl MethodSpec {
    /// The method's name as reports show it.
    pub fn name(&self) -> &'static str {
        match self {
            MethodSpec::Supervised => "supervised",
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

    /// The tasks of multitask and progressive learning.
    pub fn tasks(&self) -> &[TaskSpec] {
        match self {
            MethodSpec::Multitask { tasks } | MethodSpec::Progressive { tasks, .. } => tasks,
            _ => &[],
        }
    }
}

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

fn default_split() -> String {
    "train".to_string()
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

/// The optimizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerSpec {
    /// SGD with momentum and (L2) weight decay, as PyTorch defines them.
    Sgd {
        /// Base learning rate.
        lr: f64,
        /// Momentum factor.
        #[serde(default)]
        momentum: f64,
        /// L2 penalty added to the gradient.
        #[serde(default)]
        weight_decay: f64,
        /// Nesterov momentum.
        #[serde(default)]
        nesterov: bool,
    },
    /// Adam (Kingma & Ba), L2 weight decay added to the gradient.
    Adam {
        /// Base learning rate.
        lr: f64,
        /// First-moment decay.
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// Second-moment decay.
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// Denominator guard.
        #[serde(default = "default_eps")]
        eps: f64,
        /// L2 penalty added to the gradient.
        #[serde(default)]
        weight_decay: f64,
    },
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}

impl OptimizerSpec {
    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerSpec::Sgd { lr, .. } | OptimizerSpec::Adam { lr, .. } => *lr,
        }
    }
}

/// The learning-rate schedule, applied within each stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleSpec {
    /// The base rate throughout.
    #[default]
    Constant,
    /// Multiply by `gamma` every `step_size` steps.
    Step {
        /// Steps between decays.
        step_size: u64,
        /// Decay factor.
        gamma: f64,
    },
    /// DANN's annealing: μ₀ / (1 + α·p)^β, p the stage's progress in [0, 1].
    Dann {
        /// α (10 in the paper).
        #[serde(default = "default_alpha")]
        alpha: f64,
        /// β (0.75 in the paper).
        #[serde(default = "default_beta")]
        beta: f64,
    },
}

fn default_alpha() -> f64 {
    10.0
}
fn default_beta() -> f64 {
    0.75
}

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
    /// Steps between replica checks when a job does not say.
    pub const fn default_fingerprint_interval() -> u64 {
        50
    }
}

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
        Self { min: 1, max: 1 }
    }
}

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
    3
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        Self {
            interval_steps: 0,
            keep: default_keep(),
        }
    }
}

/// Evaluation policy; the last step always evaluates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EvaluationSpec {
    /// Steps between evaluations (0: only at the end).
    #[serde(default)]
    pub interval_steps: u64,
}

/// A field of the spec and what is wrong with it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    /// Dotted path of the field, e.g. `optimizer.lr` or `datasets[1].split`.
    pub field: String,
    /// What is wrong, lowercase.
    pub reason: String,
}

/// Widest hidden layer a job may ask for; bounds the memory a job file can make the
/// coordinator and workers allocate.
pub const MAX_WIDTH: usize = 1 << 16;

/// Longest stage in steps, so that step arithmetic can never overflow.
pub const MAX_STEPS: u64 = 1 << 40;

/// Longest stage in epochs, for the same reason.
pub const MAX_EPOCHS: u32 = 1_000_000;

/// Most samples the generator may be asked for, for the same reason.
pub const MAX_GENERATED: usize = 10_000_000;

fn bad(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        reason: reason.into(),
    }
}

impl JobSpec {
    /// The datasets of a role, with their index in `datasets`.
    pub fn datasets_with(&self, role: Role) -> impl Iterator<Item = (usize, &DatasetSpec)> {
        self.datasets
            .iter()
            .enumerate()
            .filter(move |(_, d)| d.role == role)
    }

    /// Checks everything that can be checked without reading data files.
    ///
    /// # Errors
    /// The first [`SpecError`] found, naming the field.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.name.trim().is_empty() {
            return Err(bad("name", "must not be empty"));
        }
        match &self.model {
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
            ModelSpec::DigitsCnn => {}
        }
        self.validate_datasets()?;
        self.validate_method()?;
        self.validate_optimizer()?;
        match &self.schedule {
            ScheduleSpec::Constant => {}
            ScheduleSpec::Step { step_size, gamma } => {
                if *step_size == 0 {
                    return Err(bad("schedule.step_size", "must be > 0"));
                }
                if !(gamma.is_finite() && *gamma > 0.0) {
                    return Err(bad("schedule.gamma", "must be > 0"));
                }
            }
            ScheduleSpec::Dann { alpha, beta } => {
                if !(alpha.is_finite() && *alpha >= 0.0) {
                    return Err(bad("schedule.alpha", "must be >= 0"));
                }
                if !(beta.is_finite() && *beta >= 0.0) {
                    return Err(bad("schedule.beta", "must be >= 0"));
                }
            }
        }
        let t = &self.training;
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
        if self.workers.min == 0 {
            return Err(bad("workers.min", "must be > 0"));
        }
        if self.workers.max < self.workers.min {
            return Err(bad(
                "workers.max",
                format!("must be >= workers.min ({})", self.workers.min),
            ));
        }
        if (t.global_batch_size as u64) < self.workers.max as u64 {
            return Err(bad(
                "training.global_batch_size",
                format!(
                    "must be >= workers.max ({}) so that every worker gets samples",
                    self.workers.max
                ),
            ));
        }
        if self.checkpoint.keep == 0 {
            return Err(bad("checkpoint.keep", "must be > 0"));
        }
        Ok(())
    }

    fn validate_datasets(&self) -> Result<(), SpecError> {
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

    fn validate_method(&self) -> Result<(), SpecError> {
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
            MethodSpec::Supervised => one(Role::Source),
            MethodSpec::FineTuning { .. } => self.validate_source_stage(one),
            MethodSpec::Conservative {
                lambda,
                temperature,
                ..
            } => {
                if !(lambda.is_finite() && *lambda >= 0.0) {
                    return Err(bad("method.lambda", "must be a finite number >= 0"));
                }
                if !(temperature.is_finite() && *temperature > 0.0) {
                    return Err(bad("method.temperature", "must be > 0"));
                }
                self.validate_source_stage(one)
            }
            MethodSpec::LayerTransfer { freeze, .. } => {
                if freeze.is_empty() {
                    return Err(bad("method.freeze", "must name at least one layer"));
                }
                for (i, f) in freeze.iter().enumerate() {
                    crate::methods::LayerPattern::parse(f)
                        .map_err(|reason| bad(format!("method.freeze[{i}]"), reason))?;
                }
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
            } => {
                if !(lambda_max.is_finite() && *lambda_max >= 0.0) {
                    return Err(bad("method.lambda_max", "must be a finite number >= 0"));
                }
                if !(gamma.is_finite() && *gamma >= 0.0) {
                    return Err(bad("method.gamma", "must be a finite number >= 0"));
                }
                if domain_hidden.len() > 8 {
                    return Err(bad("method.domain_hidden", "takes at most 8 layers"));
                }
                if let Some(i) = domain_hidden.iter().position(|&h| h == 0 || h > MAX_WIDTH) {
                    return Err(bad(
                        format!("method.domain_hidden[{i}]"),
                        format!("must be in 1..={MAX_WIDTH}"),
                    ));
                }
                if let Some(b) = target_batch_size {
                    self.check_batch("method.target_batch_size", *b)?;
                }
                one(Role::Source)?;
                one(Role::TargetUnlabelled)
            }
            MethodSpec::ZeroShot {
                unseen_classes,
                attributes,
                scoring,
            } => {
                if *scoring == Scoring::Likelihood
                    && matches!(attributes, AttributeSource::Pca { .. })
                {
                    return Err(bad(
                        "method.scoring",
                        "likelihood scoring needs binary attributes; PCA vectors are real-valued",
                    ));
                }
                if unseen_classes.is_empty() {
                    return Err(bad("method.unseen_classes", "must name at least one class"));
                }
                let mut sorted = unseen_classes.clone();
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
                one(Role::Source)
            }
        }
    }

    /// A global batch size given somewhere other than `training`.
    fn check_batch(&self, field: &str, b: usize) -> Result<(), SpecError> {
        if b == 0 {
            return Err(bad(field, "must be > 0"));
        }
        if (b as u64) < self.workers.max as u64 {
            return Err(bad(
                field,
                format!(
                    "must be >= workers.max ({}) so that every worker gets samples",
                    self.workers.max
                ),
            ));
        }
        if b > MAX_GENERATED {
            return Err(bad(field, format!("must be <= {MAX_GENERATED}")));
        }
        Ok(())
    }

    fn validate_tasks(&self, tasks: &[TaskSpec]) -> Result<(), SpecError> {
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

    fn validate_source_stage(
        &self,
        one: impl Fn(Role) -> Result<(), SpecError>,
    ) -> Result<(), SpecError> {
        one(Role::TargetLabelled)?;
        let Some((source_steps, source_epochs, init_from)) = self.method.source_stage() else {
            return Ok(());
        };
        match (init_from, source_steps, source_epochs) {
            (Some(path), None, None) => {
                if path.trim().is_empty() {
                    return Err(bad("method.init_from", "must not be empty"));
                }
                Ok(())
            }
            (Some(_), _, _) => Err(bad(
                "method.init_from",
                "starts from a file: leave source_steps and source_epochs unset",
            )),
            (None, Some(_), Some(_)) => {
                Err(bad("method", "set source_steps or source_epochs, not both"))
            }
            (None, None, None) => Err(bad(
                "method",
                "set source_steps or source_epochs (the source stage), or init_from",
            )),
            (None, Some(0), _) => Err(bad("method.source_steps", "must be > 0")),
            (None, Some(s), _) if s > MAX_STEPS => Err(bad(
                "method.source_steps",
                format!("must be <= {MAX_STEPS}"),
            )),
            (None, _, Some(e)) if e > MAX_EPOCHS => Err(bad(
                "method.source_epochs",
                format!("must be <= {MAX_EPOCHS}"),
            )),
            (None, _, Some(0)) => Err(bad("method.source_epochs", "must be > 0")),
            (None, _, _) => one(Role::Source),
        }
    }

    fn validate_optimizer(&self) -> Result<(), SpecError> {
        let lr = self.optimizer.lr();
        if !(lr.is_finite() && lr > 0.0) {
            return Err(bad("optimizer.lr", "must be > 0"));
        }
        match &self.optimizer {
            OptimizerSpec::Sgd {
                momentum,
                weight_decay,
                nesterov,
                ..
            } => {
                if !(momentum.is_finite() && (0.0..1.0).contains(momentum)) {
                    return Err(bad("optimizer.momentum", "must be in [0, 1)"));
                }
                if !(weight_decay.is_finite() && *weight_decay >= 0.0) {
                    return Err(bad("optimizer.weight_decay", "must be >= 0"));
                }
                if *nesterov && *momentum == 0.0 {
                    return Err(bad("optimizer.nesterov", "needs momentum > 0"));
                }
            }
            OptimizerSpec::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => {
                for (k, v) in [("beta1", beta1), ("beta2", beta2)] {
                    if !(v.is_finite() && (0.0..1.0).contains(v)) {
                        return Err(bad(format!("optimizer.{k}"), "must be in [0, 1)"));
                    }
                }
                if !(eps.is_finite() && *eps > 0.0) {
                    return Err(bad("optimizer.eps", "must be > 0"));
                }
                if !(weight_decay.is_finite() && *weight_decay >= 0.0) {
                    return Err(bad("optimizer.weight_decay", "must be >= 0"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
