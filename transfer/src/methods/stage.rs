//! Stages: what a method trains on and for how long, before and after the data sizes are
//! known, and when a step is followed by an evaluation, a checkpoint or a state upload.

use crate::model::Architecture;
use crate::params::Params;
use crate::spec::{JobSpec, Role};

/// How long a stage runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// A number of steps.
    Steps(u64),
    /// A number of passes over the stage's first training set.
    Epochs(u32),
}

/// Which training set a stream draws from: a role (`source`, `target_labelled`,
/// `target_unlabelled`) or a task (`task:<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DataKey(pub String);

impl DataKey {
    /// The training set of a role.
    pub fn role(role: Role) -> Self {
        Self(role.as_str().to_string())
    }

    /// The training set of a task.
    pub fn task(name: &str) -> Self {
        Self(format!("task:{name}"))
    }
}

impl std::fmt::Display for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One training set a stage draws a batch from at every step.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamDef {
    /// The data.
    pub data: DataKey,
    /// Samples per step over the whole group.
    pub batch: usize,
}

/// A stage as the method defines it, before the data sizes are known.
#[derive(Debug, Clone, PartialEq)]
pub struct StageDef {
    /// For reports.
    pub name: String,
    /// The training sets of every step; the first one counts epochs and samples.
    pub streams: Vec<StreamDef>,
    /// How long.
    pub length: Length,
    /// Parameter-name prefixes re-initialised when the stage starts.
    pub reset_prefixes: Vec<String>,
    /// `(from, to)` parameter-name prefixes copied when the stage starts (before resets):
    /// how conservative training freezes its copy θ₀ of the source model.
    pub copies: Vec<(String, String)>,
}

impl StageDef {
    /// A stage that neither copies nor resets parameters when it starts.
    pub fn new(name: &str, streams: Vec<StreamDef>, length: Length) -> Self {
        Self {
            name: name.into(),
            streams,
            length,
            reset_prefixes: Vec::new(),
            copies: Vec::new(),
        }
    }
}

/// A stream with its sizes, once the data are known.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamPlan {
    /// The data.
    pub data: DataKey,
    /// Samples per step over the whole group.
    pub batch: usize,
    /// Samples in the set.
    pub samples: usize,
    /// Global batches per pass over the set.
    pub steps_per_epoch: u64,
}

impl StreamPlan {
    /// The epoch of the set and the batch within it at step `i` of the stage.
    pub fn position(&self, i: u64) -> (u64, u64) {
        let spe = self.steps_per_epoch.max(1);
        (i / spe, i % spe)
    }
}

/// A stage with its place in the job, once the data sizes are known.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// For reports.
    pub name: String,
    /// Global step (0-based) of its first step.
    pub first_step: u64,
    /// Its number of steps.
    pub steps: u64,
    /// Its training sets; the first one counts epochs and samples.
    pub streams: Vec<StreamPlan>,
    /// Parameter-name prefixes re-initialised when it starts.
    pub reset_prefixes: Vec<String>,
    /// Parameter-name prefixes copied when it starts.
    pub copies: Vec<(String, String)>,
}

impl Stage {
    /// Whether global step `step` is in this stage.
    pub fn contains(&self, step: u64) -> bool {
        (self.first_step..self.first_step + self.steps).contains(&step)
    }

    /// Global batches per epoch of the first stream.
    pub fn steps_per_epoch(&self) -> u64 {
        self.streams.first().map_or(1, |s| s.steps_per_epoch.max(1))
    }

    /// The epoch (of the first stream) at global step `step`.
    pub fn epoch_at(&self, step: u64) -> u64 {
        step.saturating_sub(self.first_step) / self.steps_per_epoch()
    }

    /// Global sample counts of every stream at step `i` of the stage.
    pub fn global_counts(&self, i: u64) -> Vec<usize> {
        self.streams
            .iter()
            .map(|s| crate::shard::global_batch(s.samples, s.batch, s.position(i).1).len())
            .collect()
    }
}

/// Resolves the method's stages against the sizes of the training sets.
pub fn plan_stages(defs: &[StageDef], samples: impl Fn(&DataKey) -> usize) -> Vec<Stage> {
    let mut first = 0;
    defs.iter()
        .map(|d| {
            let streams: Vec<StreamPlan> = d
                .streams
                .iter()
                .map(|s| {
                    let n = samples(&s.data);
                    StreamPlan {
                        data: s.data.clone(),
                        batch: s.batch,
                        samples: n,
                        steps_per_epoch: crate::shard::batches_per_epoch(n, s.batch).max(1),
                    }
                })
                .collect();
            let spe = streams.first().map_or(1, |s| s.steps_per_epoch);
            let steps = match d.length {
                Length::Steps(s) => s,
                Length::Epochs(e) => spe * e as u64,
            };
            let stage = Stage {
                name: d.name.clone(),
                first_step: first,
                steps,
                streams,
                reset_prefixes: d.reset_prefixes.clone(),
                copies: d.copies.clone(),
            };
            first += steps;
            stage
        })
        .collect()
}

/// Whether an evaluation runs after `done` steps: every `evaluation.interval_steps`, and at
/// the end of every stage (so fine-tuning reports the source model too).
pub fn evaluation_due(spec: &JobSpec, stages: &[Stage], done: u64) -> bool {
    let every = spec.evaluation.interval_steps;
    (every > 0 && done.is_multiple_of(every))
        || stages.iter().any(|s| s.first_step + s.steps == done)
}

/// Whether a checkpoint is written after `done` steps: every `checkpoint.interval_steps`, and
/// at the end of every stage.
pub fn checkpoint_due(spec: &JobSpec, stages: &[Stage], done: u64) -> bool {
    let every = spec.checkpoint.interval_steps;
    (every > 0 && done.is_multiple_of(every))
        || stages.iter().any(|s| s.first_step + s.steps == done)
}

/// Whether rank 0 uploads its state after `done` steps (for an evaluation or a checkpoint).
pub fn state_due(spec: &JobSpec, stages: &[Stage], done: u64) -> bool {
    done > 0 && (evaluation_due(spec, stages, done) || checkpoint_due(spec, stages, done))
}

/// Applies a stage's start: copies, then re-initialisation of the reset prefixes (from a
/// stream of the seed distinct from the first initialisation).
pub fn start_stage(
    arch: &Architecture,
    params: &mut Params,
    stage: &Stage,
    index: usize,
    seed: u64,
) {
    for (from, to) in &stage.copies {
        for (i, p) in arch.params.iter().enumerate() {
            if let Some(rest) = p.name.strip_prefix(to.as_str())
                && let Some(src) = arch.index_of(&format!("{from}{rest}"))
            {
                let v = params.values()[src].clone();
                params.values_mut()[i] = v;
            }
        }
    }
    for (i, p) in arch.params.iter().enumerate() {
        if stage
            .reset_prefixes
            .iter()
            .any(|pre| p.name.starts_with(pre.as_str()))
        {
            params.values_mut()[i] = arch.init_param(i, seed ^ ((index as u64 + 1) << 32));
        }
    }
}
