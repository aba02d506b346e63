//! The gradient loop of one job, on its own thread: draw the local batch, forward and
//! backward, all-reduce, apply the optimizer, report fingerprints and (rank 0) state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use burn::tensor::Device;
use graft_common::wire::{class_vectors_from_pb, spec_from_pb, stage_from_pb, stats_to_pb};
use graft_proto::v1 as pb;
use graft_transfer::StepStats;
use graft_transfer::methods::{
    Batch, MethodData, Stage, StepContext, bucket_plan, compute_step_buckets, method_for,
    start_stage, state_due,
};
use graft_transfer::optim::{Optimizer, learning_rate};
use graft_transfer::spec::AllReduce;
use graft_transfer::{Architecture, shard};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::error::WorkerError;
use crate::ring::{Inbox, Ring, RingError, RingSum, StepFeed};
use crate::rpc::{self, Cluster, Shard};

/// The group's answer for one step.
#[derive(Debug, Clone)]
pub struct Reduced {
    /// The mean gradient over the global batch.
    pub mean: Vec<f32>,
    /// The group's summed stats.
    pub stats: StepStats,
    /// Rank 0 is to upload its state after this step (the coordinator is shutting down).
    pub upload: bool,
    /// The group stops after this step (the ring's part of a shutdown).
    pub stop: bool,
}

/// Sums gradients across the group: the star through the coordinator, or the ring between
/// the workers. A step hands over its gradient bucket by bucket while it is flattened
/// ([`Reducer::bucket`]), so that a reducer can start on the first bucket while later
/// parameters are still being flattened, then waits for the sum ([`Reducer::finish`]).
pub trait Reducer {
    /// Starts `step`, whose gradient comes in `n_buckets` buckets.
    fn begin(&mut self, step: u64, n_buckets: usize);
    /// The next bucket of this rank's gradient.
    fn bucket(&mut self, values: Vec<f32>);
    /// This rank's stats; waits for the group's mean gradient and stats. `stop_at` is rank
    /// 0's word that the group stops after that many steps (the ring), `times` rank 0's
    /// breakdown of the previous step (the star carries it to the coordinator).
    ///
    /// # Errors
    /// [`WorkerError`] when the group cannot complete the step.
    fn finish(
        &mut self,
        stats: StepStats,
        stop_at: u64,
        times: Option<pb::StepTimes>,
    ) -> Result<Reduced, WorkerError>;
}

/// Star all-reduce through the coordinator.
pub struct StarReducer {
    rt: Handle,
    cluster: Cluster,
    worker: String,
    job: String,
    rank: u32,
    generation: u64,
    step: u64,
    grad: Vec<f32>,
}

impl Reducer for StarReducer {
    fn begin(&mut self, step: u64, _n_buckets: usize) {
        self.step = step;
        self.grad.clear();
    }

    fn bucket(&mut self, values: Vec<f32>) {
        if self.grad.is_empty() {
            self.grad = values;
        } else {
            self.grad.extend_from_slice(&values);
        }
    }

    fn finish(
        &mut self,
        stats: StepStats,
        _stop_at: u64,
        times: Option<pb::StepTimes>,
    ) -> Result<Reduced, WorkerError> {
        let grad = std::mem::take(&mut self.grad);
        let r = self.rt.block_on(rpc::reduce(
            &mut self.cluster,
            &self.worker,
            &self.job,
            self.rank,
            self.step,
            self.generation,
            &grad,
            stats,
            times,
        ))?;
        Ok(Reduced {
            mean: r.mean,
            stats: r.stats,
            upload: r.upload_state,
            stop: false,
        })
    }
}

type RingTask = tokio::task::JoinHandle<(Ring, Result<RingSum, RingError>)>;

/// Ring all-reduce between the workers ([`crate::ring`]); the ring's async work runs on the
/// runtime while the training thread flattens the next bucket.
pub struct RingReducer {
    rt: Handle,
    ring: Option<Ring>,
    task: Option<RingTask>,
    buckets: Option<mpsc::UnboundedSender<Vec<f32>>>,
    stats: Option<oneshot::Sender<(StepStats, u64)>>,
    step: u64,
    n_buckets: usize,
}

impl RingReducer {
    /// A reducer over `ring`.
    pub fn new(rt: Handle, ring: Ring) -> Self {
        Self {
            rt,
            ring: Some(ring),
            task: None,
            buckets: None,
            stats: None,
            step: 0,
            n_buckets: 0,
        }
    }

    /// Starts the step's ring on the runtime at the first bucket (not before the forward
    /// and backward, so that the ring's timeouts only measure the neighbours).
    fn start(&mut self) {
        if self.task.is_some() {
            return;
        }
        let Some(mut ring) = self.ring.take() else {
            return;
        };
        let (btx, brx) = mpsc::unbounded_channel();
        let (stx, srx) = oneshot::channel();
        self.buckets = Some(btx);
        self.stats = Some(stx);
        let (step, n) = (self.step, self.n_buckets);
        self.task = Some(self.rt.spawn(async move {
            let feed = StepFeed {
                buckets: brx,
                stats: srx,
            };
            let r = ring.all_reduce(step, n, feed).await;
            (ring, r)
        }));
    }
}

impl Reducer for RingReducer {
    fn begin(&mut self, step: u64, n_buckets: usize) {
        self.step = step;
        self.n_buckets = n_buckets;
    }

    fn bucket(&mut self, values: Vec<f32>) {
        self.start();
        if let Some(tx) = &self.buckets {
            // A failed send means the ring already failed; `finish` reports why.
            let _ = tx.send(values);
        }
    }

    fn finish(
        &mut self,
        stats: StepStats,
        stop_at: u64,
        _times: Option<pb::StepTimes>,
    ) -> Result<Reduced, WorkerError> {
        self.start();
        self.buckets = None;
        if let Some(tx) = self.stats.take() {
            let _ = tx.send((stats, stop_at));
        }
        let task = self
            .task
            .take()
            .ok_or_else(|| WorkerError::Setup("the ring was lost by an earlier step".into()))?;
        let (ring, sum) = self
            .rt
            .block_on(task)
            .map_err(|e| WorkerError::Setup(format!("the ring's task failed: {e}")))?;
        self.ring = Some(ring);
        let RingSum {
            mut sum,
            stats,
            stop_at,
        } = sum?;
        if stats.samples > 0 {
            let inv = 1.0 / stats.samples as f32;
            for v in &mut sum {
                *v *= inv;
            }
        }
        let stop = stop_at != 0 && self.step + 1 >= stop_at;
        Ok(Reduced {
            mean: sum,
            stats,
            upload: stop,
            stop,
        })
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

/// Closes the job's ring mailbox however the job ends.
struct MailboxGuard<'a>(&'a Inbox, String);

impl Drop for MailboxGuard<'_> {
    fn drop(&mut self) {
        self.0.close(&self.1);
    }
}

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
    let ring_mode = spec.allreduce == AllReduce::Ring;
    let _mailbox = ring_mode.then(|| MailboxGuard(&ctx.inbox, job.clone()));
    let mut reducer: Box<dyn Reducer> = if ring_mode {
        let inbox = ctx.inbox.open(&job, generation);
        let right = ((rank + 1) % world) as usize;
        let right_addr = a.peers.get(right).cloned().unwrap_or_default();
        let client = if world > 1 {
            if right_addr.is_empty() {
                return Err(WorkerError::Protocol(format!(
                    "the coordinator gave no collective address for rank {right}"
                )));
            }
            Some(ctx.rt.block_on(crate::ring::connect(
                &right_addr,
                ctx.bearer.clone(),
                ctx.collective_timeout,
                right,
            ))?)
        } else {
            None
        };
        Box::new(RingReducer::new(
            ctx.rt.clone(),
            Ring::new(
                rank as usize,
                world as usize,
                &job,
                generation,
                client,
                right_addr,
                inbox,
                ctx.collective_timeout,
            )
            .with_abort(ctx.abort.clone()),
        ))
    } else {
        Box::new(StarReducer {
            rt: ctx.rt.clone(),
            cluster: ctx.cluster.clone(),
            worker: ctx.worker.clone(),
            job: job.clone(),
            rank,
            generation,
            step: 0,
            grad: Vec::new(),
        })
    };
    // The ring: rank 0's report of the last step, in flight while the next one computes.
    let mut report: Option<
        tokio::task::JoinHandle<Result<tonic::Response<pb::ReportStepResponse>, tonic::Status>>,
    > = None;
    // Rank 0's word from the coordinator: stop after this many steps (0: none).
    let mut stop_at = 0u64;
    let mut last_times: Option<pb::StepTimes> = None;
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
        let plan = bucket_plan(&arch, &mask, FIRST_BUCKET_BYTES, BUCKET_BYTES);
        while step < end {
            let started = std::time::Instant::now();
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
            reducer.begin(step, plan.len());
            let out = compute_step_buckets(
                method.as_ref(),
                &arch,
                &params,
                &mask,
                &batches,
                &step_ctx,
                &ctx.device,
                &plan,
                &mut |b| reducer.bucket(b),
            );
            let flattened = std::time::Instant::now();
            let stats = out.stats;
            if let Some(r) = report.take() {
                stop_at = join_report(&ctx.rt, r)?.max(stop_at);
            }
            let reduced = match reducer.finish(stats, stop_at, last_times) {
                Ok(r) => r,
                // The coordinator ended the job while the group waited on each other.
                Err(_) if ctx.abort.load(Ordering::Relaxed) => {
                    return Err(WorkerError::Aborted(job));
                }
                Err(e) => return Err(e),
            };
            let comm = flattened.elapsed();
            let opt_started = std::time::Instant::now();
            let mut flat = params.flatten(&mask);
            let lr = learning_rate(spec.optimizer.lr(), &spec.schedule, i, stage.steps);
            opt.step(&mut flat, &reduced.mean, lr);
            params
                .unflatten(&mask, &flat)
                .map_err(|e| WorkerError::Protocol(e.to_string()))?;
            let optimizer = opt_started.elapsed();
            step += 1;
            ctx.progress.store(step, Ordering::Relaxed);
            let times = pb::StepTimes {
                step_ms: ms(started.elapsed()),
                compute_ms: ms(out.compute),
                flatten_ms: ms(out.flatten),
                comm_ms: ms(comm),
                optimizer_ms: ms(optimizer),
            };
            let fingerprint_due =
                step.is_multiple_of(spec.training.fingerprint_interval) || step == total;
            let upload = rank == 0 && (state_due(&spec, &stages, step) || reduced.upload);
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
                        params.fingerprint()
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
                    fingerprint: params.fingerprint(),
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
            if reduced.stop && step < total {
                tracing::info!(%job, step, "stopping for the coordinator's shutdown");
                return Err(WorkerError::Drained(job));
            }
        }
    }
    if let Some(r) = report.take() {
        join_report(&ctx.rt, r)?;
    }
    tracing::info!(%job, steps = step, fingerprint = %params.fingerprint(), "job done");
    Ok(())
}
