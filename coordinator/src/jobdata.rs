//! A job's data and network, prepared on the coordinator: the datasets loaded, filtered and
//! resized to the model's input, the architecture, the method and its stages.
//!
//! Built once at submission (so that a bad dataset is refused before the job exists) and
//! again after a restart; the workers receive their shards from here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use graft_transfer::data::files::{self, FileFormat, FileOptions, LabelColumn};
use graft_transfer::data::{Dataset, MoonsConfig, catalog};
use graft_transfer::methods::{
    DataKey, EvalInputs, EvalSet, Method, MethodData, Stage, method_for, plan_stages,
};
use graft_transfer::optim::Optimizer;
use graft_transfer::spec::{AttributeSource, ColumnRef, DatasetSpec, MethodSpec, Role};
use graft_transfer::zeroshot::{ClassVectors, builtin_table};
use graft_transfer::{Architecture, JobSpec, Params, weights};

use crate::error::CoordinatorError;
use crate::job::DatasetInfo;

/// Largest network a job may train (1 GiB of f32 per replica), so that a job file cannot make
/// the coordinator or the workers allocate without bound.
pub const MAX_PARAMS: usize = 1 << 28;

/// Everything the coordinator needs to run and evaluate a job.
pub struct JobData {
    /// The network.
    pub arch: Architecture,
    /// The method.
    pub method: Box<dyn Method>,
    /// What the method needs besides its spec (sent to the workers).
    pub method_data: MethodData,
    /// Stages with their steps.
    pub stages: Vec<Stage>,
    /// Training sets by key.
    pub train: BTreeMap<DataKey, Arc<Dataset>>,
    /// Evaluation sets in job order.
    pub eval: Vec<EvalSet>,
    /// What each dataset of the job holds, in job order (for the job's status).
    pub datasets: Vec<DatasetInfo>,
    /// Weights to start from (a source model from a file).
    pub init_params: Option<Params>,
    /// Length of the flattened gradient of each stage: asked for at every round, so worked
    /// out once here rather than from the method's mask each time.
    trainable_lens: Vec<usize>,
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

fn invalid(field: &str, reason: impl Into<String>) -> CoordinatorError {
    CoordinatorError::InvalidSpec {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A path of a job file: under the data directory, unless absolute (`join` keeps an absolute
/// path as it is).
fn resolve(data_dir: &Path, path: &str) -> PathBuf {
    data_dir.join(path)
}

/// Seeds the holdout of a file: the job's seed and the file as resolved (canonical where it
/// exists), so that the two datasets naming the same file, however spelled (`a.csv`,
/// `./a.csv`), draw the same permutation.
fn holdout_seed(spec: &JobSpec, file: &Path) -> u64 {
    let file = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
    file.to_string_lossy()
        .bytes()
        .fold(spec.seed ^ 0x686f_6c64_6f75_7421, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// Reads a dataset the job names by path, and its held-out part or the rest where it asks.
/// Returns the samples, the names of the file's classes and what was read.
fn load_file(
    spec: &JobSpec,
    i: usize,
    d: &DatasetSpec,
    path: &str,
    data_dir: &Path,
) -> Result<(Dataset, Vec<String>, String), CoordinatorError> {
    let opts = FileOptions {
        format: d.format.as_deref().and_then(FileFormat::parse),
        labels: d.labels.as_deref().map(|l| resolve(data_dir, l)),
        x_key: d.x_key.clone(),
        y_key: d.y_key.clone(),
        label_column: d.label_column.as_ref().map(|c| match c {
            ColumnRef::Index(k) => LabelColumn::Index(*k),
            ColumnRef::Name(n) => LabelColumn::Name(n.clone()),
        }),
        header: d.header,
        channels: d.channels,
        image_size: d.image_size,
    };
    let at = resolve(data_dir, path);
    let file = files::load_file(&at, &opts).map_err(|e| field_err(i, e))?;
    let mut stated = file.stated;
    let ds = match d.holdout {
        None => file.dataset,
        Some(fraction) => {
            let (kept, held) = files::holdout(&file.dataset, fraction, holdout_seed(spec, &at))
                .map_err(|e| field_err(i, e))?;
            let (part, what) = if d.split == "test" {
                (held, "held out")
            } else {
                (kept, "kept")
            };
            stated.push_str(&format!(
                "; the {} samples {what} of holdout {fraction}",
                part.len()
            ));
            part
        }
    };
    Ok((ds, file.classes, stated))
}

/// A dataset of the job, as loaded: the samples, and for a file the names of its classes
/// and what was read.
struct Loaded<'a> {
    index: usize,
    spec: &'a DatasetSpec,
    data: Dataset,
    classes: Option<Vec<String>>,
    stated: Option<String>,
}

fn load_one<'a>(
    spec: &JobSpec,
    i: usize,
    d: &'a DatasetSpec,
    data_dir: &Path,
) -> Result<Loaded<'a>, CoordinatorError> {
    let (mut ds, classes, stated) = match &d.path {
        Some(path) => {
            let (ds, classes, stated) = load_file(spec, i, d, path, data_dir)?;
            (ds, Some(classes), Some(stated))
        }
        None => {
            let defaults = MoonsConfig::default();
            let moons = MoonsConfig {
                samples: d.samples.unwrap_or(defaults.samples),
                noise: d.noise.unwrap_or(defaults.noise),
                rotation_deg: d.rotation_deg.unwrap_or(defaults.rotation_deg),
                seed: spec.seed,
            };
            let ds =
                catalog::load(&d.name, &d.split, data_dir, &moons).map_err(|e| field_err(i, e))?;
            (ds, None, None)
        }
    };
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
    if let Some(size) = d.image_size {
        let shape = match ds.sample_shape.as_slice() {
            [c, _, _] => vec![*c, size, size],
            other => {
                return Err(field_err(
                    i,
                    format!("image_size needs images, the samples are {other:?}"),
                ));
            }
        };
        ds = ds.resize_to(&shape).map_err(|e| field_err(i, e))?;
    }
    Ok(Loaded {
        index: i,
        spec: d,
        data: ds,
        classes,
        stated,
    })
}

/// Gives every file of the job the same classes: the union of their class names, so that a
/// label means one class in the source, the target and the evaluation sets even where one
/// file lacks a class. Names that are all numbers keep their value as the label (`7` and
/// `07` are class 7, as in the catalog's sets); other names are sorted.
fn align_classes(loaded: &mut [Loaded<'_>]) -> Result<(), CoordinatorError> {
    let mut names: Vec<String> = loaded
        .iter()
        .filter_map(|l| l.classes.as_ref())
        .flatten()
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Ok(());
    }
    let numbers: Option<Vec<u64>> = names.iter().map(|n| n.parse::<u64>().ok()).collect();
    let numeric = numbers
        .as_ref()
        .and_then(|v| v.iter().max())
        .is_some_and(|&max| (max as usize) < files::MAX_CLASSES);
    let union: Vec<String> = match numbers.as_ref().and_then(|v| v.iter().max()) {
        Some(&max) if numeric => (0..=max).map(|k| k.to_string()).collect(),
        _ => names.clone(),
    };
    for l in loaded.iter_mut() {
        let Some(own) = &l.classes else { continue };
        let to: Vec<u32> = own
            .iter()
            .map(|n| match n.parse::<u64>() {
                Ok(v) if numeric => v as u32,
                _ => names.binary_search(n).unwrap_or_default() as u32,
            })
            .collect();
        l.data
            .relabel(&to, union.len())
            .map_err(|e| field_err(l.index, e))?;
        l.classes = Some(union.clone());
    }
    Ok(())
}

/// The training set a dataset of the job feeds, if any.
fn train_key(d: &DatasetSpec) -> Option<DataKey> {
    match (d.role, &d.task) {
        (Role::Eval, _) => None,
        (Role::Train, Some(t)) => Some(DataKey::task(t)),
        (role, _) => Some(DataKey::role(role)),
    }
}

/// Zero-shot learning: the class vectors the job asks for, checked against the data.
fn class_vectors(
    spec: &JobSpec,
    num_classes: usize,
    data_dir: &Path,
) -> Result<Option<ClassVectors>, CoordinatorError> {
    let MethodSpec::ZeroShot {
        unseen_classes,
        attributes,
        ..
    } = &spec.method
    else {
        return Ok(None);
    };
    if let Some(c) = unseen_classes.iter().find(|&&c| c as usize >= num_classes) {
        return Err(invalid(
            "method.unseen_classes",
            format!("class {c} is not in the data ({num_classes} classes)"),
        ));
    }
    if unseen_classes.len() >= num_classes {
        return Err(invalid(
            "method.unseen_classes",
            "leaves no class to train on",
        ));
    }
    let seen: Vec<u32> = (0..num_classes as u32)
        .filter(|c| !unseen_classes.contains(c))
        .collect();
    let cv = match attributes {
        AttributeSource::Builtin { table } => builtin_table(table).ok_or_else(|| {
            invalid(
                "method.attributes.table",
                format!("unknown table {table:?}"),
            )
        })?,
        AttributeSource::File { path } => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid("method.attributes.path", format!("{path}: {e}")))?;
            ClassVectors::from_csv(&text)
                .map_err(|e| invalid("method.attributes.path", format!("{path}: {e}")))?
        }
        AttributeSource::Pca {
            dataset,
            split,
            components,
        } => {
            let ds = catalog::load(dataset, split, data_dir, &MoonsConfig::default())
                .map_err(|e| invalid("method.attributes.dataset", e.to_string()))?;
            ClassVectors::pca(&ds, num_classes, &seen, *components)
                .map_err(|e| invalid("method.attributes", e.to_string()))?
        }
    };
    if matches!(
        &spec.method,
        MethodSpec::ZeroShot {
            scoring: graft_transfer::spec::Scoring::Likelihood,
            ..
        }
    ) && !cv.binary
    {
        return Err(invalid(
            "method.scoring",
            "likelihood scoring needs a table of 0s and 1s",
        ));
    }
    if cv.rows < num_classes {
        return Err(invalid(
            "method.attributes",
            format!("describes {} classes, the data has {num_classes}", cv.rows),
        ));
    }
    Ok(Some(cv))
}

impl JobData {
    /// Loads and checks everything a job needs.
    ///
    /// # Errors
    /// [`CoordinatorError::InvalidSpec`] naming the dataset or field that cannot be used.
    pub fn load(spec: &JobSpec, data_dir: &Path) -> Result<Self, CoordinatorError> {
        let mut loaded: Vec<Loaded<'_>> = Vec::new();
        for (i, d) in spec.datasets.iter().enumerate() {
            loaded.push(load_one(spec, i, d, data_dir)?);
        }
        align_classes(&mut loaded)?;
        let num_classes = loaded.iter().map(|l| l.data.num_classes).max().unwrap_or(0);
        let method_data = MethodData {
            class_vectors: class_vectors(spec, num_classes, data_dir)?,
        };
        let method = method_for(spec, &method_data);
        let defs = method.stages();
        // The model's input is the first training set's shape; every other set is resized to it.
        let first_key = defs
            .first()
            .and_then(|d| d.streams.first())
            .map(|s| s.data.clone())
            .ok_or_else(|| invalid("method", "has no training stage"))?;
        let input_shape = loaded
            .iter()
            .find(|l| train_key(l.spec).as_ref() == Some(&first_key))
            .map(|l| l.data.sample_shape.clone())
            .ok_or_else(|| invalid("datasets", format!("needs a training set for {first_key}")))?;
        let layout = method.layout(num_classes);
        let arch = Architecture::with_layout(&spec.model, &input_shape, num_classes, &layout)
            .map_err(|e| invalid("model", e.to_string()))?;
        if arch.num_params() > MAX_PARAMS {
            return Err(invalid(
                "model",
                format!(
                    "{} parameters for input {input_shape:?}; graft takes at most {MAX_PARAMS}",
                    arch.num_params()
                ),
            ));
        }
        let mut train = BTreeMap::new();
        let mut eval = Vec::new();
        let mut datasets = Vec::new();
        for l in loaded {
            let (i, d) = (l.index, l.spec);
            let read = l.data.sample_shape.clone();
            let mut ds = l
                .data
                .resize_to(&input_shape)
                .map_err(|e| field_err(i, e))?;
            if let (MethodSpec::ZeroShot { unseen_classes, .. }, Role::Source) =
                (&spec.method, d.role)
            {
                // Zero-shot learning never trains on the unseen classes.
                let keep: Vec<usize> = (0..ds.len())
                    .filter(|&k| !unseen_classes.contains(&ds.labels[k]))
                    .collect();
                ds = ds.subset(&keep);
                if ds.is_empty() {
                    return Err(field_err(i, "has no sample of a seen class"));
                }
            }
            // Last, on the samples the job will see at the model's input size: resizing
            // smooths the values, so standardising before it would leave a deviation below 1.
            if d.standardize {
                ds.standardize().map_err(|e| field_err(i, e))?;
            }
            if let Some(n) = d.normalize {
                ds.normalize(f64::from(n.mean), f64::from(n.std));
            }
            datasets.push(DatasetInfo::of(d, &ds, &read, l.classes, l.stated));
            match train_key(d) {
                None => eval.push(EvalSet {
                    label: d.metric_label(),
                    task: d.task.clone(),
                    data: Arc::new(ds),
                }),
                Some(key) => {
                    train.insert(key, Arc::new(ds));
                }
            }
        }
        let mut labels: Vec<&str> = eval.iter().map(|s| s.label.as_str()).collect();
        labels.sort_unstable();
        if labels.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("datasets", "evaluation sets need distinct labels"));
        }
        for d in &defs {
            for s in &d.streams {
                if !train.contains_key(&s.data) {
                    return Err(invalid(
                        "datasets",
                        format!("needs a training set for {}", s.data),
                    ));
                }
            }
        }
        let stages = plan_stages(&defs, |k| train.get(k).map_or(0, |d| d.len()));
        for (i, _) in stages.iter().enumerate() {
            let mask = method.trainable(&arch, i);
            if !mask.iter().any(|m| *m) {
                return Err(invalid(
                    "method",
                    format!("stage {i} has no trainable parameter (is every layer frozen?)"),
                ));
            }
        }
        let init_params = match spec.method.source_stage() {
            Some((_, _, Some(path))) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| invalid("method.init_from", format!("{path}: {e}")))?;
                // Tensors a stage copies into are filled by the job itself.
                let filled: Vec<&str> = stages
                    .iter()
                    .flat_map(|s| s.copies.iter().map(|(_, to)| to.as_str()))
                    .collect();
                Some(
                    weights::params_from_file_over(
                        &arch,
                        &bytes,
                        spec.method.init_layout(),
                        &arch.init(spec.seed),
                        |name| filled.iter().any(|p| name.starts_with(p)),
                    )
                    .map_err(|e| invalid("method.init_from", format!("{path}: {e}")))?,
                )
            }
            _ => None,
        };
        let trainable_lens = (0..stages.len())
            .map(|stage| masked_len(&arch, &method.trainable(&arch, stage)))
            .collect();
        Ok(Self {
            arch,
            method,
            method_data,
            stages,
            train,
            eval,
            datasets,
            init_params,
            trainable_lens,
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

    /// The method's evaluation of `params` on the job's evaluation sets, on the
    /// coordinator's evaluation device: the metrics, and each set's per-class figures in
    /// wire form. The one place both the evaluation at start and those of uploaded states
    /// go through.
    ///
    /// # Errors
    /// [`CoordinatorError::Internal`] when the evaluation device cannot be made.
    pub fn evaluate(
        &self,
        params: &Params,
        config: &crate::config::CoordinatorConfig,
    ) -> Result<(BTreeMap<String, f64>, Vec<graft_proto::v1::EvalSet>), CoordinatorError> {
        let device = config
            .eval_device()
            .map_err(|e| CoordinatorError::Internal(e.to_string()))?;
        let inputs = EvalInputs {
            sets: &self.eval,
            train: &self.train,
        };
        let report = self.method.evaluate(&self.arch, params, &inputs, &device);
        let sets = report
            .sets
            .iter()
            .map(|r| graft_proto::v1::EvalSet {
                label: r.label.clone(),
                per_class_accuracy: r.per_class_accuracy.clone(),
                confusion: r.confusion.iter().flatten().copied().collect(),
                num_classes: r.confusion.len() as u32,
            })
            .collect();
        Ok((report.metrics, sets))
    }

    /// Length of the flattened gradient in `stage`.
    pub fn trainable_len(&self, stage: usize) -> usize {
        self.trainable_lens
            .get(stage)
            .copied()
            .unwrap_or_else(|| masked_len(&self.arch, &self.method.trainable(&self.arch, stage)))
    }
}

/// Values in the parameters that `mask` marks.
fn masked_len(arch: &Architecture, mask: &[bool]) -> usize {
    arch.params
        .iter()
        .zip(mask)
        .filter(|(_, m)| **m)
        .map(|(p, _)| p.numel())
        .sum()
}

/// Where graft looks for data: `GRAFT_DATA_DIR`, else the configured directory.
pub fn data_dir(configured: &Path) -> PathBuf {
    std::env::var_os(catalog::DATA_DIR_ENV).map_or_else(|| configured.to_path_buf(), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> PathBuf {
        data_dir(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data"
        )))
    }

    /// USPS (16×16) is resized to MNIST's 28×28 when the job loads; standardising comes after
    /// that, so the set the model sees has mean 0 and deviation 1.
    #[test]
    fn a_set_is_standardised_at_the_models_input_size() {
        let spec: JobSpec = toml::from_str(
            r#"
name = "std"
[model]
kind = "digits_cnn"
[method]
kind = "dann"
[[datasets]]
name = "mnist"
role = "source"
limit = 300
[[datasets]]
name = "usps"
role = "target_unlabelled"
limit = 200
standardize = true
[[datasets]]
name = "usps"
split = "test"
role = "eval"
limit = 100
standardize = true
[optimizer]
kind = "sgd"
lr = 0.01
[training]
global_batch_size = 20
steps = 5
"#,
        )
        .expect("parses");
        let jd = JobData::load(&spec, &data()).expect("loads");
        let target = &jd.train[&DataKey::role(Role::TargetUnlabelled)];
        assert_eq!(target.sample_shape, vec![1, 28, 28]);
        for set in [target.as_ref(), jd.eval[0].data.as_ref()] {
            let (m, s) = set.value_moments();
            let v = s * s;
            assert!(
                m.abs() < 1e-4 && (v - 1.0).abs() < 1e-3,
                "mean {m}, variance {v}"
            );
        }
        // A set without the option keeps its values.
        let source = &jd.train[&DataKey::role(Role::Source)];
        assert!(source.features.iter().all(|&x| (0.0..=1.0).contains(&x)));
    }

    /// `normalize` maps every value of the set, after resizing, through (x − mean) / std,
    /// and leaves the other sets as they were.
    #[test]
    fn a_fixed_normalisation_maps_every_value_of_its_set() {
        let job = |normalize: &str| -> JobSpec {
            toml::from_str(&format!(
                r#"
name = "norm"
[model]
kind = "mlp"
hidden = [4]
[method]
kind = "supervised"
[[datasets]]
name = "moons"
role = "source"
[[datasets]]
name = "moons"
split = "test"
role = "eval"
{normalize}
[optimizer]
kind = "sgd"
lr = 0.1
[training]
global_batch_size = 8
steps = 1
"#
            ))
            .expect("parses")
        };
        let plain = JobData::load(&job(""), Path::new("/nonexistent")).expect("moons");
        let spec = job("normalize = { mean = 1.0, std = 2.0 }");
        spec.validate().expect("valid");
        let norm = JobData::load(&spec, Path::new("/nonexistent")).expect("moons");
        let (a, b) = (&plain.eval[0].data.features, &norm.eval[0].data.features);
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b.iter()) {
            assert!((y - (x - 1.0) / 2.0).abs() < 1e-6, "{x} -> {y}");
        }
        let source = DataKey::role(Role::Source);
        assert_eq!(plain.train[&source].features, norm.train[&source].features);
    }
}
