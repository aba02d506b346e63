//! The gradient loop of one job, on its own thread: draw the local batch, forward and
//! backward, all-reduce, apply the optimizer, report fingerprints and (rank 0) state.
//!
//! The loop runs a [`Replica`] in a [`Group`]; it hands the replica back however it ends,
//! so that a worker whose group fell apart keeps its progress for the next generation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use burn::tensor::Device;
use graft_common::wire::stats_to_pb;
use graft_proto::v1 as pb;
use graft_transfer::methods::{StepContext, bucket_plan, compute_step_buckets, state_due};
use graft_transfer::optim::learning_rate;
use tokio::runtime::Handle;

use crate::error::WorkerError;
use crate::group::Group;
use crate::replica::Replica;
use crate::ring::Inbox;
use crate::rpc::{self, Cluster};

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
    /// Where this worker's collective service hands over ring streams.
    pub inbox: Arc<Inbox>,
    /// Sent to ring neighbours (the cluster token).
    pub bearer: graft_common::auth::Bearer,
    /// A silent ring neighbour fails the step after this long.
    pub collective_timeout: std::time::Duration,
}

/// DDP's bucket sizes: a small first bucket so that the reduction starts early, then 25 MiB.
const FIRST_BUCKET_BYTES: usize = 1 << 20;
const BUCKET_BYTES: usize = 25 << 20;

/// The answer to a ring report: the coordinator's stop word.
fn join_report(
    rt: &Handle,
    r: tokio::task::JoinHandle<Result<tonic::Response<pb::ReportStepResponse>, tonic::Status>>,
) -> Result<u64, WorkerError> {
    match rt.block_on(r) {
        Ok(Ok(a)) => Ok(a.into_inner().stop_at),
        Ok(Err(s)) => Err(WorkerError::rpc("ReportStep", s)),
        Err(e) => Err(WorkerError::Setup(format!("ReportStep task failed: {e}"))),
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// How a job's thread ended: the replica (unless it could not be built) and why.
pub struct JobEnd {
    /// The replica as it stands after the last step it completed.
    pub replica: Option<Replica>,
    /// `Ok` when this worker's part of the job is done.
    pub result: Result<(), WorkerError>,
}

/// Runs the assignment to its end (or until aborted): with `kept` when this worker's
/// replica from an earlier generation continues in the new group, else with a replica of
/// the job's starting state.
pub fn run_job(mut ctx: JobContext, kept: Option<Replica>) -> JobEnd {
    let a = ctx.assignment.clone();
    let replica = match kept {
        Some(r) if r.continues(&a) => Ok(r),
        _ => fresh_replica(&mut ctx, &a),
    };
    let mut replica = match replica {
        Ok(r) => r,
        Err(e) => {
            return JobEnd {
                replica: None,
                result: Err(e),
            };
        }
    };
    let result = Group::form(&ctx, &a, Group::uses_ring(&replica))
        .and_then(|mut group| train(&mut ctx, &mut replica, &mut group));
    JobEnd {
        replica: Some(replica),
        result,
    }
}

/// The job's replica at the assignment's start: from a survivor of the previous
/// generation (`state_from`), or the job's starting state from the coordinator when it has
/// one, else initialised from the seed.
fn fresh_replica(ctx: &mut JobContext, a: &pb::Assignment) -> Result<Replica, WorkerError> {
    let state = if !a.state_from.is_empty() {
        let n = Replica::new(a, None)?.arch.num_params();
        let started = std::time::Instant::now();
        let s = ctx.rt.block_on(crate::handover::fetch_replica(
            &a.state_from,
            ctx.bearer.clone(),
            ctx.collective_timeout,
            &a.job_id,
            a.start_step,
            a.generation,
            n,
        ))?;
        tracing::info!(job = %a.job_id, step = a.start_step, from = %a.state_from, ms = started.elapsed().as_millis() as u64, "received the replica from a survivor");
        Some(s)
    } else if a.has_initial_state {
        let n = Replica::new(a, None)?.arch.num_params();
        Some(ctx.rt.block_on(rpc::fetch_state(
            &mut ctx.cluster,
            &ctx.worker,
            &a.job_id,
            n,
        ))?)
    } else {
        None
    };
    Replica::new(a, state)
}

/// The step loop: from the replica's step to the end of the job.
fn train(
    ctx: &mut JobContext,
    replica: &mut Replica,
    group: &mut Group,
) -> Result<(), WorkerError> {
    let job = replica.job.clone();
    let total = replica.total();
    let (rank, generation) = (group.rank, group.generation);
    let ring_mode = Group::uses_ring(replica);
    // The ring: rank 0's report of the last step, in flight while the next one computes.
    let mut report: Option<
        tokio::task::JoinHandle<Result<tonic::Response<pb::ReportStepResponse>, tonic::Status>>,
    > = None;
    // Rank 0's word from the coordinator: stop after this many steps (0: none).
    let mut stop_at = 0u64;
    let mut last_times: Option<pb::StepTimes> = None;
    tracing::info!(%job, rank, world = group.world, generation, start_step = replica.step, total, params = replica.arch.num_params(), "training");
    if generation > 1 && replica.step > 0 && replica.step < total {
        // A re-formed group: every member's replica, kept or received, is checked against
        // the others' before the first step of the new generation counts.
        let req = pb::ReportStepRequest {
            worker_id: ctx.worker.clone(),
            job_id: job.clone(),
            rank,
            step: replica.step,
            fingerprint: replica.fingerprint(),
            generation,
            stats: None,
            times: None,
        };
        ctx.rt
            .block_on(ctx.cluster.report_step(req))
            .map_err(|e| WorkerError::rpc("ReportStep", e))?;
    }

    for si in 0..replica.stages.len() {
        let (first, steps) = (replica.stages[si].first_step, replica.stages[si].steps);
        let end = first + steps;
        if replica.step >= end {
            continue;
        }
        let mask = replica.method.trainable(&replica.arch, si);
        let n = replica.params.flat_len(&mask);
        replica.optimizer(si, n)?;
        let plan = bucket_plan(&replica.arch, &mask, FIRST_BUCKET_BYTES, BUCKET_BYTES);
        while replica.step < end {
            let started = std::time::Instant::now();
            if ctx.abort.load(Ordering::Relaxed) {
                return Err(WorkerError::Aborted(job));
            }
            let step = replica.step;
            let i = step - first;
            let batches = group.local_batches(ctx, replica, si, i)?;
            let step_ctx = StepContext {
                stage: si,
                step_in_stage: i,
                stage_steps: steps,
                global_counts: replica.stages[si].global_counts(i),
            };
            group.reducer.begin(step, plan.len());
            let reducer = &mut group.reducer;
            let out = compute_step_buckets(
                replica.method.as_ref(),
                &replica.arch,
                &replica.params,
                &mask,
                &batches,
                &step_ctx,
                &ctx.device,
                &plan,
                &mut |b| reducer.bucket(b),
            );
            let flattened = std::time::Instant::now();
            if let Some(r) = report.take() {
                stop_at = join_report(&ctx.rt, r)?.max(stop_at);
            }
            let reduced = match group.reducer.finish(out.stats, stop_at, last_times) {
                Ok(r) => r,
                // The coordinator ended the job while the group waited on each other.
                Err(_) if ctx.abort.load(Ordering::Relaxed) => {
                    return Err(WorkerError::Aborted(job));
                }
                Err(e) => return Err(e),
            };
            let comm = flattened.elapsed();
            // The step is applied only once the group's sum is in: a step abandoned above
            // leaves the replica as it was after the previous one.
            let opt_started = std::time::Instant::now();
            let mut flat = replica.params.flatten(&mask);
            let lr = learning_rate(
                replica.spec.optimizer.lr(),
                &replica.spec.schedule,
                i,
                steps,
            );
            replica.optimizer(si, n)?.step(&mut flat, &reduced.mean, lr);
            replica
                .params
                .unflatten(&mask, &flat)
                .map_err(|e| WorkerError::Protocol(e.to_string()))?;
            let optimizer = opt_started.elapsed();
            replica.step += 1;
            let step = replica.step;
            ctx.progress.store(step, Ordering::Relaxed);
            let times = pb::StepTimes {
                step_ms: ms(started.elapsed()),
                compute_ms: ms(out.compute),
                flatten_ms: ms(out.flatten),
                comm_ms: ms(comm),
                optimizer_ms: ms(optimizer),
            };
            let fingerprint_due =
                step.is_multiple_of(replica.spec.training.fingerprint_interval) || step == total;
            let upload =
                rank == 0 && (state_due(&replica.spec, &replica.stages, step) || reduced.upload);
            if ring_mode && rank == 0 {
                // Rank 0 tells the coordinator of every ring step (the coordinator sees no
                // gradient); the answer is awaited before the next step's ring, or now when
                // the state goes up (which must name a step the coordinator knows).
                let req = pb::ReportStepRequest {
                    worker_id: ctx.worker.clone(),
                    job_id: job.clone(),
                    rank,
                    step,
                    fingerprint: if fingerprint_due {
                        replica.fingerprint()
                    } else {
                        String::new()
                    },
                    generation,
                    stats: Some(stats_to_pb(&reduced.stats)),
                    times: Some(times),
                };
                let mut c = ctx.cluster.clone();
                let r = ctx.rt.spawn(async move { c.report_step(req).await });
                if upload || reduced.stop || step == total {
                    stop_at = join_report(&ctx.rt, r)?.max(stop_at);
                } else {
                    report = Some(r);
                }
            } else if fingerprint_due {
                let req = pb::ReportStepRequest {
                    worker_id: ctx.worker.clone(),
                    job_id: job.clone(),
                    rank,
                    step,
                    fingerprint: replica.fingerprint(),
                    generation,
                    stats: None,
                    times: None,
                };
                ctx.rt
                    .block_on(ctx.cluster.report_step(req))
                    .map_err(|e| WorkerError::rpc("ReportStep", e))?;
            }
            last_times = Some(times);
            if upload {
                let (all, opt, opt_steps) = replica.state();
                ctx.rt.block_on(rpc::upload_state(
                    &mut ctx.cluster,
                    &ctx.worker,
                    &job,
                    step,
                    generation,
                    &all,
                    &opt,
                    opt_steps,
                ))?;
            }
            if reduced.stop && step < total {
                tracing::info!(%job, step, "stopping for the coordinator's shutdown");
                return Err(WorkerError::Drained(job));
            }
        }
    }
    if let Some(r) = report.take() {
        join_report(&ctx.rt, r)?;
    }
    tracing::info!(%job, steps = replica.step, fingerprint = %replica.fingerprint(), "job done");
    Ok(())
}
