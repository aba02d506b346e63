//! A job's data and network, prepared on the coordinator: the datasets loaded, filtered and
//! resized to the model's input, the architecture, the method and its stages.
//!
//! Built once at submission (so that a bad dataset is refused before the job exists) and
//! again after a restart; the workers receive their shards from here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use graft_transfer::data::{Dataset, MoonsConfig, catalog};
use graft_transfer::methods::{Method, Stage, method_for, plan_stages};
use graft_transfer::optim::Optimizer;
use graft_transfer::spec::{DatasetSpec, MethodSpec, Role};
use graft_transfer::{Architecture, JobSpec, Params, weights};

use crate::error::CoordinatorError;

/// Largest network a job may train (1 GiB of f32 per replica), so that a job file cannot make
/// the coordinator or the workers allocate without bound.
pub const MAX_PARAMS: usize = 1 << 28;

/// Everything the coordinator needs to run and evaluate a job.
pub struct JobData {
    /// The network.
    pub arch: Architecture,
    /// The method.
    pub method: Box<dyn Method>,
    /// Stages with their steps.
    pub stages: Vec<Stage>,
    /// Training sets by role.
    pub train: HashMap<Role, Arc<Dataset>>,
    /// Evaluation sets with their metric labels, in job order.
    pub eval: Vec<(String, Arc<Dataset>)>,
    /// Weights to start from (fine-tuning from a file).
    pub init_params: Option<Params>,
}

impl std::fmt::Debug for JobData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobData")
            .field("stages", &self.stages)
            .finish_non_exhaustive()
    }
}

fn field_err(i: usize, e: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::InvalidSpec {
        field: format!("datasets[{i}]"),
        reason: e.to_string(),
    }
}

fn load_one(
    spec: &JobSpec,
    i: usize,
    d: &DatasetSpec,
    data_dir: &Path,
) -> Result<Dataset, CoordinatorError> {
    let defaults = MoonsConfig::default();
    let moons = MoonsConfig {
        samples: d.samples.unwrap_or(defaults.samples),
        noise: d.noise.unwrap_or(defaults.noise),
        rotation_deg: d.rotation_deg.unwrap_or(defaults.rotation_deg),
        seed: spec.seed,
    };
    let mut ds = catalog::load(&d.name, &d.split, data_dir, &moons).map_err(|e| field_err(i, e))?;
    if let Some(k) = d.labels_per_class {
        ds = ds
            .labels_per_class(k, spec.seed ^ i as u64)
            .map_err(|e| field_err(i, e))?;
    }
    if let Some(n) = d.limit {
        ds = ds.limit(n);
    }
    if ds.is_empty() {
        return Err(field_err(i, "has no samples"));
    }
    Ok(ds)
}

impl JobData {
    /// Loads and checks everything a job needs.
    ///
    /// # Errors
    /// [`CoordinatorError::InvalidSpec`] naming the dataset or field that cannot be used.
    pub fn load(spec: &JobSpec, data_dir: &Path) -> Result<Self, CoordinatorError> {
        let method = method_for(spec);
        let defs = method.stages();
        // The model's input is the first training set's shape; every other set is resized to it.
        let first_role = defs.first().map_or(Role::Source, |d| d.train_role);
        let mut loaded: Vec<(usize, &DatasetSpec, Dataset)> = Vec::new();
        for (i, d) in spec.datasets.iter().enumerate() {
            loaded.push((i, d, load_one(spec, i, d, data_dir)?));
        }
        let input_shape = loaded
            .iter()
            .find(|(_, d, _)| d.role == first_role)
            .map(|(_, _, ds)| ds.sample_shape.clone())
            .ok_or_else(|| CoordinatorError::InvalidSpec {
                field: "datasets".into(),
                reason: format!("needs a dataset with role = {:?}", first_role.as_str()),
            })?;
        let num_classes = loaded
            .iter()
            .map(|(_, _, ds)| ds.num_classes)
            .max()
            .unwrap_or(0);
        let arch = Architecture::new(&spec.model, &input_shape, num_classes).map_err(|e| {
            CoordinatorError::InvalidSpec {
                field: "model".into(),
                reason: e.to_string(),
            }
        })?;
        if arch.num_params() > MAX_PARAMS {
            return Err(CoordinatorError::InvalidSpec {
                field: "model".into(),
                reason: format!(
                    "{} parameters for input {input_shape:?}; graft takes at most {MAX_PARAMS}",
                    arch.num_params()
                ),
            });
        }
        let mut train = HashMap::new();
        let mut eval = Vec::new();
        for (i, d, ds) in loaded {
            let ds = ds.resize_to(&input_shape).map_err(|e| field_err(i, e))?;
            match d.role {
                Role::Eval => eval.push((d.metric_label().to_string(), Arc::new(ds))),
                role => {
                    train.insert(role, Arc::new(ds));
                }
            }
        }
        let mut labels: Vec<&str> = eval.iter().map(|(l, _)| l.as_str()).collect();
        labels.sort_unstable();
        if labels.windows(2).any(|w| w[0] == w[1]) {
            return Err(CoordinatorError::InvalidSpec {
                field: "datasets".into(),
                reason: "evaluation sets need distinct labels".into(),
            });
        }
        let stages = plan_stages(&defs, spec.training.global_batch_size, |r| {
            train.get(&r).map_or(0, |d| d.len())
        });
        let init_params = match &spec.method {
            MethodSpec::FineTuning {
                init_from: Some(path),
                ..
            } => {
                let bytes = std::fs::read(path).map_err(|e| CoordinatorError::InvalidSpec {
                    field: "method.init_from".into(),
                    reason: format!("{path}: {e}"),
                })?;
                Some(
                    weights::params_from_safetensors(&arch, &bytes).map_err(|e| {
                        CoordinatorError::InvalidSpec {
                            field: "method.init_from".into(),
                            reason: format!("{path}: {e}"),
                        }
                    })?,
                )
            }
            _ => None,
        };
        Ok(Self {
            arch,
            method,
            stages,
            train,
            eval,
            init_params,
        })
    }

    /// Steps in the whole job.
    pub fn total_steps(&self) -> u64 {
        self.stages.iter().map(|s| s.steps).sum()
    }

    /// The stage that runs global step `step` (0-based).
    pub fn stage_of(&self, step: u64) -> Option<(usize, &Stage)> {
        self.stages
            .iter()
            .enumerate()
            .find(|(_, s)| s.contains(step))
    }

    /// Length of the optimizer state in `stage` (as [`Optimizer::state`] lays it out).
    pub fn optimizer_len(&self, stage: usize, spec: &JobSpec) -> usize {
        Optimizer::state_len(&spec.optimizer, self.trainable_len(stage))
    }

    /// Length of the flattened gradient in `stage`.
    pub fn trainable_len(&self, stage: usize) -> usize {
        let mask = self.method.trainable(&self.arch, stage);
        self.arch
            .params
            .iter()
            .zip(&mask)
            .filter(|(_, m)| **m)
            .map(|(p, _)| p.numel())
            .sum()
    }
}

/// Where graft looks for data: `GRAFT_DATA_DIR`, else the configured directory.
pub fn data_dir(configured: &Path) -> PathBuf {
    std::env::var_os(catalog::DATA_DIR_ENV).map_or_else(|| configured.to_path_buf(), PathBuf::from)
}
