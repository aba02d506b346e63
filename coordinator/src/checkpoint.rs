//! Atomic checkpoints: a checkpoint is complete and verified, or it does not exist.
//!
//! Each checkpoint is three files in the job's directory: the model weights
//! (`model-<step>.safetensors`), the optimizer state (`optimizer-<step>.safetensors`) and a
//! JSON manifest (`checkpoint-<step>.json`) with the spec, step, metrics and the SHA-256 of
//! both weight files. Every file is written to a temporary name, fsynced, renamed and the
//! directory fsynced; the manifest is written last, so a crash leaves either a whole
//! checkpoint or files no manifest names, which the next write sweeps away.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use graft_transfer::{Architecture, JobSpec, Params, weights};
use serde::{Deserialize, Serialize};

use graft_common::fs::{sha256_hex, write_atomic};

use crate::error::CoordinatorError;
use crate::job::{CheckpointRecord, now_ms};

/// The manifest of one checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The job.
    pub job: String,
    /// Steps completed.
    pub step: u64,
    /// Stage index the next step belongs to.
    pub stage: usize,
    /// Epoch (within that stage) the next step belongs to.
    pub epoch: u64,
    /// Optimizer updates taken in the current stage.
    pub optimizer_steps: u64,
    /// The job's spec, so a run can be reproduced from its artifacts.
    pub spec: JobSpec,
    /// Evaluation metrics at this step (if any).
    pub metrics: BTreeMap<String, f64>,
    /// Weights file name and SHA-256.
    pub model: FileEntry,
    /// Optimizer state file name and SHA-256.
    pub optimizer: FileEntry,
    /// Write time.
    pub created_unix_ms: u64,
}

/// A file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Name within the checkpoint directory.
    pub file: String,
    /// SHA-256, hex.
    pub sha256: String,
    /// Size.
    pub bytes: u64,
}

/// A checkpoint read back and verified.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Its manifest.
    pub manifest: Manifest,
    /// All parameters.
    pub params: Params,
    /// The optimizer state vector.
    pub optimizer_state: Vec<f32>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CoordinatorError + '_ {
    move |source| CoordinatorError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The checkpoints of one job.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    dir: PathBuf,
}

/// What to save.
pub struct Snapshot<'a> {
    /// The job's id.
    pub job: &'a str,
    /// The job's spec.
    pub spec: &'a JobSpec,
    /// The network.
    pub arch: &'a Architecture,
    /// Steps completed.
    pub step: u64,
    /// Stage of the next step.
    pub stage: usize,
    /// Epoch of the next step within its stage.
    pub epoch: u64,
    /// All parameters.
    pub params: &'a Params,
    /// Optimizer state.
    pub optimizer_state: &'a [f32],
    /// Optimizer updates in the stage.
    pub optimizer_steps: u64,
    /// Metrics at this step.
    pub metrics: BTreeMap<String, f64>,
}

impl CheckpointDir {
    /// The directory `dir` (created on first write).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Writes a checkpoint and keeps only the newest `keep`.
    ///
    /// # Errors
    /// [`CoordinatorError::Io`] when a file cannot be written; then no manifest names the step.
    pub fn write(
        &self,
        s: &Snapshot<'_>,
        keep: usize,
    ) -> Result<CheckpointRecord, CoordinatorError> {
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        self.sweep();
        let model_bytes = weights::params_to_safetensors(s.arch, s.params)
            .map_err(|e| CoordinatorError::Internal(e.to_string()))?;
        let opt_bytes = weights::to_safetensors(
            &[(
                "optimizer.state".to_string(),
                vec![s.optimizer_state.len()],
                s.optimizer_state,
            )],
            None,
        )
        .map_err(|e| CoordinatorError::Internal(e.to_string()))?;
        let model_file = format!("model-{:08}.safetensors", s.step);
        let opt_file = format!("optimizer-{:08}.safetensors", s.step);
        let model_path = self.dir.join(&model_file);
        write_atomic(&model_path, &model_bytes)?;
        write_atomic(&self.dir.join(&opt_file), &opt_bytes)?;
        let manifest = Manifest {
            job: s.job.to_string(),
            step: s.step,
            stage: s.stage,
            epoch: s.epoch,
            optimizer_steps: s.optimizer_steps,
            spec: s.spec.clone(),
            metrics: s.metrics.clone(),
            model: FileEntry {
                file: model_file,
                sha256: sha256_hex(&model_bytes),
                bytes: model_bytes.len() as u64,
            },
            optimizer: FileEntry {
                file: opt_file,
                sha256: sha256_hex(&opt_bytes),
                bytes: opt_bytes.len() as u64,
            },
            created_unix_ms: now_ms(),
        };
        let manifest_path = self.dir.join(format!("checkpoint-{:08}.json", s.step));
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| CoordinatorError::Internal(e.to_string()))?;
        write_atomic(&manifest_path, &json)?;
        // The checkpoint is whole now; failing to delete old ones must not fail the job.
        if let Err(e) = self.prune(keep) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot prune old checkpoints");
        }
        Ok(self.record_of(&manifest))
    }

    /// The record of a checkpoint described by its manifest.
    pub fn record_of(&self, m: &Manifest) -> CheckpointRecord {
        CheckpointRecord {
            step: m.step,
            path: self.dir.join(&m.model.file).display().to_string(),
            manifest: self
                .dir
                .join(format!("checkpoint-{:08}.json", m.step))
                .display()
                .to_string(),
            sha256: m.model.sha256.clone(),
            created_unix_ms: m.created_unix_ms,
            metrics: m.metrics.clone(),
        }
    }

    /// Removes what a crashed write left: temporary files, and weights no manifest names.
    fn sweep(&self) {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        let named: Vec<u64> = self.steps();
        for entry in rd.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().to_string();
            let orphan = ["model-", "optimizer-"].iter().any(|prefix| {
                name.strip_prefix(prefix)
                    .and_then(|r| r.strip_suffix(".safetensors"))
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|step| !named.contains(&step))
            });
            if ((name.starts_with('.') && name.ends_with(".tmp")) || orphan)
                && let Err(e) = fs::remove_file(entry.path())
            {
                tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove a leftover file");
            }
        }
    }

    /// Steps of the manifests present, ascending.
    fn steps(&self) -> Vec<u64> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut steps: Vec<u64> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.strip_prefix("checkpoint-")?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect();
        steps.sort_unstable();
        steps
    }

    fn prune(&self, keep: usize) -> Result<(), CoordinatorError> {
        let steps = self.steps();
        let drop = steps.len().saturating_sub(keep.max(1));
        for step in &steps[..drop] {
            // Manifest first: without it the weights are no longer a checkpoint.
            for name in [
                format!("checkpoint-{step:08}.json"),
                format!("model-{step:08}.safetensors"),
                format!("optimizer-{step:08}.safetensors"),
            ] {
                let p = self.dir.join(name);
                if p.exists() {
                    fs::remove_file(&p).map_err(io(&p))?;
                }
            }
        }
        Ok(())
    }

    /// The manifest of `step`.
    fn manifest(&self, step: u64) -> Result<Manifest, CoordinatorError> {
        let path = self.dir.join(format!("checkpoint-{step:08}.json"));
        let raw = fs::read(&path).map_err(io(&path))?;
        serde_json::from_slice(&raw).map_err(|e| {
            CoordinatorError::BadRequest(format!("{}: damaged manifest: {e}", path.display()))
        })
    }

    /// Reads and verifies the checkpoint of `step`.
    ///
    /// # Errors
    /// [`CoordinatorError`] naming the file that is missing, damaged or does not match its
    /// checksum or the network.
    pub fn load(&self, step: u64, arch: &Architecture) -> Result<Loaded, CoordinatorError> {
        let manifest = self.manifest(step)?;
        let read_checked = |entry: &FileEntry| -> Result<Vec<u8>, CoordinatorError> {
            let p = self.dir.join(&entry.file);
            let bytes = fs::read(&p).map_err(io(&p))?;
            if sha256_hex(&bytes) != entry.sha256 {
                return Err(CoordinatorError::BadRequest(format!(
                    "{}: checksum does not match its manifest",
                    p.display()
                )));
            }
            Ok(bytes)
        };
        let model = read_checked(&manifest.model)?;
        let params = weights::params_from_safetensors(arch, &model)
            .map_err(|e| CoordinatorError::BadRequest(format!("{}: {e}", manifest.model.file)))?;
        let opt = read_checked(&manifest.optimizer)?;
        let mut all: HashMap<String, (Vec<usize>, Vec<f32>)> = weights::read_all(&opt)
            .map_err(|e| CoordinatorError::BadRequest(format!("{}: {e}", manifest.optimizer.file)))?
            .into_iter()
            .collect();
        let optimizer_state = all
            .remove("optimizer.state")
            .map(|(_, v)| v)
            .unwrap_or_default();
        Ok(Loaded {
            manifest,
            params,
            optimizer_state,
        })
    }

    /// The newest checkpoint that verifies, skipping damaged ones.
    pub fn latest_valid(&self, arch: &Architecture) -> Option<Loaded> {
        self.steps()
            .into_iter()
            .rev()
            .find_map(|s| match self.load(s, arch) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(step = s, error = %e, "skipping damaged checkpoint");
                    None
                }
            })
    }

    /// Raw bytes of the model file of `step`, verified against its manifest.
    ///
    /// # Errors
    /// [`CoordinatorError`] when it is missing or damaged.
    pub fn model_bytes(&self, step: u64) -> Result<Vec<u8>, CoordinatorError> {
        let manifest = self.manifest(step)?;
        let p = self.dir.join(&manifest.model.file);
        let bytes = fs::read(&p).map_err(io(&p))?;
        if sha256_hex(&bytes) != manifest.model.sha256 {
            return Err(CoordinatorError::BadRequest(format!(
                "{}: checksum does not match its manifest",
                p.display()
            )));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests;
