//! What happens to a state uploaded by rank 0: evaluation, checkpoint, and — after the last
//! step — completion. Runs on a blocking thread, one upload of a job at a time.

use std::collections::BTreeMap;
use std::sync::Arc;

use graft_proto::v1 as pb;
use graft_transfer::methods::{checkpoint_due, evaluation_due};

use crate::checkpoint::{CheckpointDir, Snapshot};
use crate::core::{Coordinator, JobHandle};
use crate::error::CoordinatorError;

/// A state received from rank 0.
pub struct Upload {
    /// Steps done.
    pub step: u64,
    /// All parameters, concatenated in the architecture's order.
    pub params: Vec<f32>,
    /// Optimizer state.
    pub optimizer_state: Vec<f32>,
    /// Optimizer updates in the stage.
    pub optimizer_steps: u64,
}

/// Evaluates and checkpoints as the job asks; completes the job after its last step.
pub async fn process_upload(coord: Arc<Coordinator>, handle: JobHandle, upload: Upload) {
    let _serial = handle.state_lock.clone().lock_owned().await;
    let id = handle.record.id.clone();
    let total = handle.record.total_steps;
    let step = upload.step;
    let c = coord.clone();
    let result = tokio::task::spawn_blocking(move || run(&c, &handle, upload)).await;
    match result {
        Ok(Ok(())) => {
            if step == total {
                coord.complete(&id);
            }
        }
        Ok(Err(e)) => coord.fail(&id, format!("processing the state of step {step}: {e}")),
        Err(e) => coord.fail(
            &id,
            format!("processing the state of step {step} panicked: {e}"),
        ),
    }
}

fn run(coord: &Coordinator, h: &JobHandle, u: Upload) -> Result<(), CoordinatorError> {
    let data = &h.data;
    let spec = &h.record.spec;
    let params = data
        .arch
        .params_from_flat(&u.params)
        .map_err(|e| CoordinatorError::BadRequest(format!("uploaded parameters: {e}")))?;
    let mut metrics = BTreeMap::new();
    if evaluation_due(spec, &data.stages, u.step) {
        let (report, sets) = data.evaluate(&params, &coord.config)?;
        metrics.extend(report);
        // What each worker flattens and sends per step in the stage just finished: frozen
        // parameters are left out.
        let stage = data
            .stage_of(u.step.saturating_sub(1))
            .map_or(0, |(i, _)| i);
        metrics.insert(
            "allreduce_bytes_per_step".into(),
            (data.trainable_len(stage) * 4) as f64,
        );
        // One line per metric, each value a field of its own: `?metrics` made the map one
        // string, which `--log-format json` wrote as `"metrics":"{\"target_accuracy\": …}"`.
        // tracing's field names are fixed at compile time, so the metric's name is a field's
        // value, not a field's name.
        for (name, value) in &metrics {
            tracing::info!(job = %h.record.id, step = u.step, metric = %name, value = *value, "evaluated");
        }
        // Evaluations at the end of an earlier stage are kept under the stage's name too.
        let stage_prefix = data
            .stages
            .iter()
            .find(|s| s.first_step + s.steps == u.step && u.step != h.record.total_steps)
            .map(|s| format!("{}_stage", s.name));
        coord.evaluated(
            &h.record.id,
            pb::Evaluation {
                step: u.step,
                metrics: metrics.clone().into_iter().collect(),
                sets,
            },
            stage_prefix,
        );
    }
    // A shutting-down coordinator asked for this state to checkpoint it (see `core::drain`).
    if checkpoint_due(spec, &data.stages, u.step)
        || coord.drain_checkpoint_wanted(&h.record.id, u.step)
    {
        checkpoint(coord, h, &u, &params, metrics)?;
    }
    Ok(())
}

/// Writes the checkpoint of `u` (whose parameters are `params`) with `metrics`, and records
/// it: at a checkpoint interval, for the shutdown, or for a group that fell below
/// `workers.min` (`crate::rescue`).
///
/// # Errors
/// [`CoordinatorError`] when the files cannot be written.
pub fn checkpoint(
    coord: &Coordinator,
    h: &JobHandle,
    u: &Upload,
    params: &graft_transfer::Params,
    metrics: BTreeMap<String, f64>,
) -> Result<(), CoordinatorError> {
    let data = &h.data;
    let spec = &h.record.spec;
    let (stage, epoch) = data
        .stage_of(u.step)
        .map_or((data.stages.len(), 0), |(i, s)| (i, s.epoch_at(u.step)));
    let dir = CheckpointDir::new(coord.job_dir(&h.record.id).join("checkpoints"));
    let keep = spec.checkpoint.keep as usize;
    let rec = dir.write(
        &Snapshot {
            job: &h.record.id.0,
            spec,
            arch: &data.arch,
            step: u.step,
            stage,
            epoch,
            params,
            optimizer_state: &u.optimizer_state,
            optimizer_steps: u.optimizer_steps,
            metrics,
        },
        keep,
    )?;
    tracing::info!(job = %h.record.id, step = u.step, path = %rec.path, "checkpoint written");
    coord.checkpointed(&h.record.id, rec, keep);
    Ok(())
}
