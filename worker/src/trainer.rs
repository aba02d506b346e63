//! The gradient loop of one job, on its own thread: draw the local batch, forward and
//! backward, all-reduce, apply the optimizer, report fingerprints and (rank 0) state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use burn::tensor::Device;
use graft_coordinator::reduce::Stats;
use graft_coordinator::wire::{class_vectors_from_pb, spec_from_pb, stage_from_pb};
use graft_proto::v1 as pb;
use graft_transfer::methods::{
    Batch, MethodData, Stage, StepContext, compute_step, method_for, start_stage, state_due,
};
use graft_transfer::optim::{Optimizer, learning_rate};
use graft_transfer::{Architecture, shard};
use tokio::runtime::Handle;

use crate::error::WorkerError;
use crate::rpc::{self, Cluster, Shard};

/// Sums gradients across the group. The star through the coordinator is one; the ring
/// between workers slots in behind the same trait.
pub trait Reducer {
    /// The group's mean gradient and summed stats for `step`.
    ///
    /// # Errors
    /// [`WorkerError`] when the group cannot complete the step.
    fn all_reduce(
        &mut self,
        step: u64,
        grad: &[f32],
        stats: Stats,
    ) -> Result<(Vec<f32>, Stats), WorkerError>;
}

/// Star all-reduce through the coordinator.
pub struct StarReducer {
    rt: Handle,
    cluster: Cluster,
    worker: String,
    job: String,
    rank: u32,
    generation: u64,
    /// The coordinator asked for the state after the last step (it is shutting down).
    upload_requested: bool,
}

impl Reducer for StarReducer {
    fn all_reduce(
        &mut self,
        step: u64,
        grad: &[f32],
        stats: Stats,
    ) -> Result<(Vec<f32>, Stats), WorkerError> {
        let r = self.rt.block_on(rpc::reduce(
            &mut self.cluster,
            &self.worker,
            &self.job,
            self.rank,
            step,
            self.generation,
            grad,
            stats,
        ))?;
        self.upload_requested = r.upload_state;
        Ok((r.mean, r.stats))
    }
}

/// What a job's thread needs.
pub struct JobContext {
    /// The runtime the RPCs run on.
    pub rt: Handle,
    /// The coordinator.
    pub cluster: Cluster,
    /// This worker.
    pub worker: String,
    /// The assignment.
    pub assignment: pb::Assignment,
    /// Set by the heartbeat task when the coordinator says to stop.
    pub abort: Arc<AtomicBool>,
    /// Steps done, read by the heartbeat task.
    pub progress: Arc<AtomicU64>,
    /// Where to compute.
    pub device: Device,
}

/// Runs the job to its end (or until aborted).
///
/// # Errors
/// [`WorkerError`] naming what stopped the job.
pub fn run_job(mut ctx: JobContext) -> Result<(), WorkerError> {
    let a = ctx.assignment.clone();
    let job = a.job_id.clone();
    let spec = spec_from_pb(
        a.spec
            .as_ref()
            .ok_or_else(|| WorkerError::Protocol("assignment without spec".into()))?,
    )
    .map_err(|e| WorkerError::Protocol(e.to_string()))?;
    let input: Vec<usize> = a.input_shape.iter().map(|&d| d as usize).collect();
    let method_data = MethodData {
        class_vectors: a
            .class_vectors
            .as_ref()
            .map(class_vectors_from_pb)
            .transpose()
            .map_err(|e| WorkerError::Protocol(e.to_string()))?,
    };
    let method = method_for(&spec, &method_data);
    let num_classes = a.num_classes as usize;
    let arch = Architecture::with_layout(
        &spec.model,
        &input,
        num_classes,
        &method.layout(num_classes),
    )
    .map_err(|e| WorkerError::Setup(e.to_string()))?;
    let stages: Vec<Stage> = a
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| stage_from_pb(s, i))
        .collect::<Result<_, _>>()
        .map_err(|e| WorkerError::Protocol(e.to_string()))?;
    let total: u64 = stages.iter().map(|s| s.steps).sum();
    let (rank, world, generation) = (a.rank, a.world_size.max(1), a.generation);

    let (mut params, mut restore) = if a.has_initial_state {
        let (flat, opt, opt_steps) = ctx.rt.block_on(rpc::fetch_state(
            &mut ctx.cluster,
            &ctx.worker,
            &job,
            arch.num_params(),
        ))?;
        (
            arch.params_from_flat(&flat)
                .map_err(|e| WorkerError::Protocol(format!("starting state: {e}")))?,
            (!opt.is_empty()).then_some((opt, opt_steps)),
        )
    } else {
        (arch.init(spec.seed), None)
    };
    let mut reducer = StarReducer {
        rt: ctx.rt.clone(),
        cluster: ctx.cluster.clone(),
        worker: ctx.worker.clone(),
        job: job.clone(),
        rank,
        generation,
        upload_requested: false,
    };
    let mut step = a.start_step;
    // One cached shard per stream: ((stage, epoch), samples).
    let mut shards: Vec<Option<((usize, u64), Shard)>> = Vec::new();
    tracing::info!(%job, rank, world, start_step = step, total, params = arch.num_params(), "training");

    for (si, stage) in stages.iter().enumerate() {
        let end = stage.first_step + stage.steps;
        if step >= end {
            continue;
        }
        let mask = method.trainable(&arch, si);
        let n = params.flat_len(&mask);
        let mut opt = if step == stage.first_step {
            start_stage(&arch, &mut params, stage, si, spec.seed);
            restore = None;
            Optimizer::new(&spec.optimizer, n)
        } else {
            match restore.take() {
                Some((state, steps)) => Optimizer::from_state(&spec.optimizer, n, &state, steps)
                    .map_err(|e| WorkerError::Protocol(format!("optimizer state: {e}")))?,
                None => Optimizer::new(&spec.optimizer, n),
            }
        };
        shards.resize_with(stage.streams.len().max(shards.len()), || None);
        let dim = arch.input_dim();
        while step < end {
            if ctx.abort.load(Ordering::Relaxed) {
                return Err(WorkerError::Aborted(job));
            }
            let i = step - stage.first_step;
            let mut batches = Vec::with_capacity(stage.streams.len());
            for (k, plan) in stage.streams.iter().enumerate() {
                let (epoch, b) = plan.position(i);
                if shards[k].as_ref().map(|(key, _)| *key) != Some((si, epoch)) {
                    let s = ctx.rt.block_on(rpc::fetch_shard(
                        &mut ctx.cluster,
                        &ctx.worker,
                        &job,
                        si as u32,
                        k as u32,
                        epoch,
                        generation,
                    ))?;
                    shards[k] = Some(((si, epoch), s));
                }
                let Some((_, data)) = shards[k].as_ref() else {
                    return Err(WorkerError::Protocol("shard cache emptied".into()));
                };
                let range = shard::local_batch(plan.samples, plan.batch, world, rank, b);
                if range.end > data.labels.len() {
                    return Err(WorkerError::Protocol(format!(
                        "shard of {} samples has no local batch {range:?}",
                        data.labels.len()
                    )));
                }
                if !data.labels.is_empty() && data.dim != dim {
                    return Err(WorkerError::Protocol(format!(
                        "shard samples have {} values, the network takes {dim}",
                        data.dim
                    )));
                }
                batches.push(Batch {
                    features: data.features[range.start * dim..range.end * dim].to_vec(),
                    labels: data.labels[range.clone()].to_vec(),
                    dim,
                });
            }
            let step_ctx = StepContext {
                stage: si,
                step_in_stage: i,
                stage_steps: stage.steps,
                global_counts: stage.global_counts(i),
            };
            let r = compute_step(
                method.as_ref(),
                &arch,
                &params,
                &mask,
                &batches,
                &step_ctx,
                &ctx.device,
            );
            let stats = Stats {
                loss_sum: r.loss_sum,
                samples: r.samples,
                correct: r.correct,
            };
            let (mean, _global) = reducer.all_reduce(step, &r.grad, stats)?;
            let mut flat = params.flatten(&mask);
            let lr = learning_rate(spec.optimizer.lr(), &spec.schedule, i, stage.steps);
            opt.step(&mut flat, &mean, lr);
            params
                .unflatten(&mask, &flat)
                .map_err(|e| WorkerError::Protocol(e.to_string()))?;
            step += 1;
            ctx.progress.store(step, Ordering::Relaxed);
            if step.is_multiple_of(spec.training.fingerprint_interval) || step == total {
                let req = pb::ReportStepRequest {
                    worker_id: ctx.worker.clone(),
                    job_id: job.clone(),
                    rank,
                    step,
                    fingerprint: params.fingerprint(),
                    generation,
                };
                ctx.rt
                    .block_on(ctx.cluster.report_step(req))
                    .map_err(|e| WorkerError::rpc("ReportStep", e))?;
            }
            if rank == 0 && (state_due(&spec, &stages, step) || reducer.upload_requested) {
                let all = params.flatten_all();
                ctx.rt.block_on(rpc::upload_state(
                    &mut ctx.cluster,
                    &ctx.worker,
                    &job,
                    step,
                    generation,
                    &all,
                    &opt.state(),
                    opt.steps,
                ))?;
            }
        }
    }
    tracing::info!(%job, steps = step, fingerprint = %params.fingerprint(), "job done");
    Ok(())
}
