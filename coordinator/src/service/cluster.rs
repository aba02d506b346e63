//! `ClusterService`: what workers call.

use std::sync::Arc;
use std::time::Duration;

use graft_common::wire::{stats_from_pb, stats_to_pb};
use graft_proto::chunk::{Assembler, ChunkError, split};
use graft_proto::v1 as pb;
use graft_proto::v1::cluster_service_server::ClusterService;
use graft_proto::{CHUNK_BYTES, PROTOCOL_VERSION};
use graft_transfer::shard;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::jobs::async_stream;
use crate::admission;
use crate::core::Coordinator;
use crate::job::JobId;
use crate::reduce;
use crate::upload::{Upload, process_upload};

/// How long `NextAssignment` holds a request open.
const ASSIGNMENT_POLL: Duration = Duration::from_secs(5);

/// The worker-facing service.
pub struct ClusterApi {
    coord: Arc<Coordinator>,
    /// Cancelled when the server shuts down; ends waits that would hold connections open.
    shutdown: CancellationToken,
}

impl ClusterApi {
    /// A service over `coord`.
    pub fn new(coord: Arc<Coordinator>, shutdown: CancellationToken) -> Self {
        Self { coord, shutdown }
    }
}

fn check_version(v: u32) -> Result<(), Status> {
    if v != PROTOCOL_VERSION {
        return Err(Status::failed_precondition(format!(
            "protocol version {v} is not supported; this coordinator speaks {PROTOCOL_VERSION}"
        )));
    }
    Ok(())
}

/// A worker's CollectiveService address as its peers must dial it: `host:port` as given,
/// or `:port` on the address its registration came from (a worker listening on 0.0.0.0
/// does not know which of its addresses the others can reach; the coordinator does).
fn collective_addr(given: &str, remote: Option<std::net::SocketAddr>) -> Result<String, Status> {
    if given.is_empty() {
        return Err(Status::invalid_argument(
            "collective_addr: empty; a worker names where its CollectiveService listens",
        ));
    }
    let Some(port) = given.strip_prefix(':') else {
        return Ok(given.to_string());
    };
    let port: u16 = port
        .parse()
        .map_err(|_| Status::invalid_argument(format!("collective_addr: bad port in {given:?}")))?;
    let ip = remote.map(|a| a.ip()).ok_or_else(|| {
        Status::invalid_argument(
            "collective_addr: only a port was given, and the request's address is unknown",
        )
    })?;
    Ok(std::net::SocketAddr::new(ip, port).to_string())
}

fn chunk_status(what: &str, e: ChunkError) -> Status {
    Status::invalid_argument(format!("{what}: {e}"))
}

type BoxStream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

use graft_common::auth::WORKER_SECRET;

/// The secret a call carries (empty when none).
fn worker_secret<T>(req: &Request<T>) -> String {
    req.metadata()
        .get(WORKER_SECRET)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let remote = req.remote_addr();
        let r = req.into_inner();
        check_version(r.protocol_version)?;
        admission::check_name("name", &r.name, admission::MAX_NAME_CHARS)?;
        admission::check_device(&r.device)?;
        let collective = collective_addr(&r.collective_addr, remote)?;
        admission::check_addr("collective_addr", &collective)?;
        // Before the state knows of it: a worker is scheduled only once it answers here.
        admission::probe(
            &collective,
            &r.probe_key,
            self.coord.config.cluster_token.as_deref(),
        )
        .await?;
        let (id, secret) = self
            .coord
            .register_holding(r.name, r.device, collective, r.held)?;
        Ok(Response::new(pb::RegisterResponse {
            worker_id: id.0,
            heartbeat_interval_ms: self.coord.config.heartbeat_interval_ms,
            worker_secret: secret,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let secret = worker_secret(&req);
        let r = req.into_inner();
        self.coord.authorize(&r.worker_id, &secret)?;
        check_version(r.protocol_version)?;
        Ok(Response::new(
            match self
                .coord
                .heartbeat(&r.worker_id, &r.job_id, r.generation)?
            {
                Some(abort_jobs) => pb::HeartbeatResponse {
                    abort_jobs,
                    reregister: false,
                },
                None => pb::HeartbeatResponse {
                    abort_jobs: if r.job_id.is_empty() {
                        vec![]
                    } else {
                        vec![r.job_id]
                    },
                    reregister: true,
                },
            },
        ))
    }

    async fn next_assignment(
        &self,
        req: Request<pb::NextAssignmentRequest>,
    ) -> Result<Response<pb::NextAssignmentResponse>, Status> {
        let secret = worker_secret(&req);
        let r = req.into_inner();
        self.coord.authorize(&r.worker_id, &secret)?;
        let (assignment, drop_held) = self
            .coord
            .next_assignment(&r.worker_id, r.held, ASSIGNMENT_POLL)
            .await?;
        Ok(Response::new(pb::NextAssignmentResponse {
            assignment,
            drop_held,
        }))
    }

    type FetchShardStream = BoxStream<pb::ShardChunk>;

    async fn fetch_shard(
        &self,
        req: Request<pb::FetchShardRequest>,
    ) -> Result<Response<Self::FetchShardStream>, Status> {
        let secret = worker_secret(&req);
        let r = req.into_inner();
        self.coord.authorize(&r.worker_id, &secret)?;
        let crate::state::queries::Membership {
            data,
            spec,
            rank,
            world,
            ..
        } = self
            .coord
            .membership(&r.worker_id, &r.job_id, Some(r.generation))?;
        let stage = data
            .stages
            .get(r.stage as usize)
            .ok_or_else(|| {
                Status::invalid_argument(format!("stage {} is not in job {}", r.stage, r.job_id))
            })?
            .clone();
        let plan = stage
            .streams
            .get(r.stream as usize)
            .cloned()
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "stage {} of job {} has no stream {}",
                    r.stage, r.job_id, r.stream
                ))
            })?;
        let max_epoch = stage.steps.div_ceil(plan.steps_per_epoch.max(1));
        if r.epoch >= max_epoch.max(1) {
            return Err(Status::invalid_argument(format!(
                "epoch {} is past the end of stream {} of stage {} ({max_epoch} epochs)",
                r.epoch, r.stream, r.stage
            )));
        }
        let set = data.train.get(&plan.data).cloned().ok_or_else(|| {
            Status::internal(format!("job {} has no {} data", r.job_id, plan.data))
        })?;
        let batch = plan.batch;
        let stage_idx = shard::stream_key(r.stage, r.stream);
        let epoch = r.epoch;
        let seed = spec.seed;
        let stream = async_stream(move |tx| async move {
            let chunks = tokio::task::spawn_blocking(move || {
                let perm = shard::epoch_permutation(seed, stage_idx, epoch, set.len());
                let indices = shard::shard_indices(&perm, batch, world as u32, rank as u32);
                let dim = set.sample_dim();
                let per = (CHUNK_BYTES / (4 * dim.max(1))).max(1);
                let total = indices.len() as u64;
                let mut out = Vec::with_capacity(indices.len() / per + 1);
                if indices.is_empty() {
                    out.push(pb::ShardChunk {
                        offset: 0,
                        total_samples: 0,
                        sample_dim: dim as u32,
                        features: Vec::new(),
                        labels: Vec::new(),
                    });
                }
                for (c, part) in indices.chunks(per).enumerate() {
                    let mut features = Vec::with_capacity(part.len() * dim * 4);
                    for &i in part {
                        for v in set.sample(i) {
                            features.extend_from_slice(&v.to_le_bytes());
                        }
                    }
                    out.push(pb::ShardChunk {
                        offset: (c * per) as u64,
                        total_samples: total,
                        sample_dim: dim as u32,
                        features,
                        labels: part.iter().map(|&i| set.labels[i]).collect(),
                    });
                }
                out
            })
            .await;
            match chunks {
                Ok(chunks) => {
                    for c in chunks {
                        if tx.send(Ok(c)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx
                        .send(Err(Status::internal(format!("building shard: {e}"))))
                        .await;
                }
            }
        });
        Ok(Response::new(stream))
    }

    type ReduceGradientsStream = BoxStream<pb::ReduceGradientsResponse>;

    async fn reduce_gradients(
        &self,
        req: Request<Streaming<pb::ReduceGradientsRequest>>,
    ) -> Result<Response<Self::ReduceGradientsStream>, Status> {
        let secret = worker_secret(&req);
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty gradient stream"))?;
        self.coord.authorize(&first.worker_id, &secret)?;
        let chunk = first
            .chunk
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("chunk: missing"))?;
        let (step, generation) = (chunk.step, chunk.generation);
        let stats = stats_from_pb(first.stats.as_ref());
        // Membership first: only a member of the job's group can stop its step.
        let ticket = self.coord.round(
            &first.worker_id,
            &first.job_id,
            first.rank,
            step,
            generation,
        )?;
        let job = JobId(first.job_id.clone());
        let rank = ticket.rank;
        if rank == 0
            && let Some(t) = first.times
        {
            self.coord.note_times(&job.0, t);
        }
        if !stats.loss_sum.is_finite() {
            let reason = format!("rank {rank} reported a non-finite loss at step {step}");
            self.coord.fail(&job, reason.clone());
            return Err(Status::invalid_argument(reason));
        }
        if stats.samples != ticket.expected_samples || stats.correct > stats.samples {
            let reason = format!(
                "rank {rank} reported {} samples ({} correct) at step {step}; its part of the batch has {}",
                stats.samples, stats.correct, ticket.expected_samples
            );
            self.coord.fail(&job, reason.clone());
            return Err(Status::invalid_argument(reason));
        }
        let mut asm = Assembler::new(step, generation, ticket.round.len as u64).reject_non_finite();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            let c = msg
                .chunk
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("chunk: missing"))?;
            if let Err(e) = asm.push(c) {
                if let ChunkError::NonFinite { index } = e {
                    let reason = format!(
                        "rank {rank} sent a non-finite gradient at step {step} (element {index}); the step is stopped"
                    );
                    self.coord.fail(&job, reason.clone());
                    return Err(Status::invalid_argument(reason));
                }
                return Err(chunk_status("gradient", e));
            }
            if !asm.is_complete() {
                next = Some(
                    inbound
                        .message()
                        .await?
                        .ok_or_else(|| Status::invalid_argument("gradient stream ended early"))?,
                );
            }
        }
        let grad = asm.finish().map_err(|e| chunk_status("gradient", e))?;
        let rx = ticket.round.subscribe();
        match ticket.round.deposit(rank, grad, stats) {
            Ok(Some(reduced)) => {
                // Record the step before anyone learns the sum: the next request is then
                // for a step the coordinator already expects.
                self.coord.round_done(&job.0, step, &reduced);
                ticket.round.publish(reduced);
            }
            Ok(None) => {}
            Err(reason) => return Err(Status::aborted(reason)),
        }
        let timeout = Duration::from_millis(self.coord.config.step_timeout_ms);
        let reduced = tokio::select! {
            r = tokio::time::timeout(timeout, reduce::wait(rx)) => match r {
                Ok(Ok(r)) => r,
                Ok(Err(reason)) => return Err(Status::aborted(reason)),
                Err(_) => {
                    let reason = format!(
                        "step {step}: the group did not complete the reduction within {}s (step_timeout_ms)",
                        timeout.as_secs()
                    );
                    self.coord.fail(&job, reason.clone());
                    return Err(Status::deadline_exceeded(reason));
                }
            },
            _ = self.shutdown.cancelled() => return Err(Status::unavailable("the coordinator is shutting down")),
        };
        let s = reduced.stats;
        let upload_state = self.coord.drain_upload_wanted(&job.0, step);
        let out: Vec<Result<pb::ReduceGradientsResponse, Status>> =
            split(&reduced.grad, step, generation, CHUNK_BYTES)
                .into_iter()
                .enumerate()
                .map(|(i, chunk)| {
                    Ok(pb::ReduceGradientsResponse {
                        chunk: Some(chunk),
                        stats: (i == 0).then(|| stats_to_pb(&s)),
                        upload_state: i == 0 && upload_state,
                    })
                })
                .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(out))))
    }

    async fn leave_job(
        &self,
        req: Request<pb::LeaveJobRequest>,
    ) -> Result<Response<pb::LeaveJobResponse>, Status> {
        let secret = worker_secret(&req);
        let r = req.into_inner();
        self.coord.authorize(&r.worker_id, &secret)?;
        let reason: String = r.reason.chars().take(1000).collect();
        self.coord
            .leave(&r.worker_id, &r.job_id, &reason, r.graceful)?;
        Ok(Response::new(pb::LeaveJobResponse {}))
    }

    async fn report_step(
        &self,
        req: Request<pb::ReportStepRequest>,
    ) -> Result<Response<pb::ReportStepResponse>, Status> {
        let secret = worker_secret(&req);
        let r = req.into_inner();
        self.coord.authorize(&r.worker_id, &secret)?;
        if r.stats.is_none() && r.fingerprint.is_empty() {
            return Err(Status::invalid_argument(
                "a step report carries the step's stats, a fingerprint, or both",
            ));
        }
        let mut stop_at = 0;
        if let Some(st) = r.stats {
            if r.step == 0 {
                return Err(Status::invalid_argument(
                    "step: a report names steps done (>= 1)",
                ));
            }
            let stats = stats_from_pb(Some(&st));
            stop_at = self.coord.ring_step(
                &r.worker_id,
                &r.job_id,
                r.rank,
                r.step - 1,
                r.generation,
                stats,
                r.times,
            )?;
        }
        if !r.fingerprint.is_empty() {
            self.coord
                .fingerprint(&r.worker_id, &r.job_id, r.step, r.generation, r.fingerprint)?;
        }
        Ok(Response::new(pb::ReportStepResponse { stop_at }))
    }

    async fn upload_state(
        &self,
        req: Request<Streaming<pb::StateChunk>>,
    ) -> Result<Response<pb::UploadStateResponse>, Status> {
        let secret = worker_secret(&req);
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty state stream"))?;
        self.coord.authorize(&first.worker_id, &secret)?;
        let generation = first.chunk.as_ref().map_or(0, |c| c.generation);
        let handle =
            self.coord
                .upload_target(&first.worker_id, &first.job_id, first.step, generation)?;
        let step = first.step;
        if step == 0 || step > handle.record.total_steps {
            return Err(Status::invalid_argument(format!(
                "state for step {step}: job {} has {} steps",
                first.job_id, handle.record.total_steps
            )));
        }
        let n_params = handle.data.arch.num_params() as u64;
        // The optimizer state belongs to the stage of the last step done.
        let opt_len = handle.data.stage_of(step - 1).map_or(0, |(stage, _)| {
            handle.data.optimizer_len(stage, &handle.record.spec)
        }) as u64;
        // NaN weights would be evaluated and checkpointed as if they were a model.
        let mut params = Assembler::new(step, generation, n_params).reject_non_finite();
        let mut optimizer: Option<Assembler> = None;
        let optimizer_steps = first.optimizer_steps;
        let mut msg = Some(first);
        let mut finished = false;
        while let Some(m) = msg.take() {
            let c = m
                .chunk
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("chunk: missing"))?;
            match pb::StateKind::try_from(m.kind) {
                Ok(pb::StateKind::Params) => {
                    params.push(c).map_err(|e| chunk_status("parameters", e))?
                }
                Ok(pb::StateKind::Optimizer) => {
                    let asm = optimizer.get_or_insert_with(|| {
                        Assembler::new(step, generation, opt_len).reject_non_finite()
                    });
                    asm.push(c)
                        .map_err(|e| chunk_status("optimizer state", e))?;
                }
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "state chunk of unknown kind {}",
                        m.kind
                    )));
                }
            }
            if m.r#final {
                finished = true;
                break;
            }
            msg = inbound.message().await?;
        }
        if !finished {
            return Err(Status::invalid_argument(
                "state stream ended without its final chunk",
            ));
        }
        let params = params.finish().map_err(|e| chunk_status("parameters", e))?;
        let optimizer_state = match optimizer {
            Some(a) => a.finish().map_err(|e| chunk_status("optimizer state", e))?,
            None if opt_len == 0 => Vec::new(),
            None => {
                return Err(Status::invalid_argument(format!(
                    "state for step {step} has no optimizer state ({opt_len} values expected)"
                )));
            }
        };
        let upload = Upload {
            step,
            params,
            optimizer_state,
            optimizer_steps,
        };
        let coord = self.coord.clone();
        tokio::spawn(async move { process_upload(coord, handle, upload).await });
        Ok(Response::new(pb::UploadStateResponse {}))
    }

    type FetchStateStream = BoxStream<pb::StateChunk>;

    async fn fetch_state(
        &self,
        req: Request<pb::FetchStateRequest>,
    ) -> Result<Response<Self::FetchStateStream>, Status> {
        let secret = worker_secret(&req);
        let r = req.into_inner();
        self.coord.authorize(&r.worker_id, &secret)?;
        let start = self.coord.membership(&r.worker_id, &r.job_id, None)?.start;
        let start = start.ok_or_else(|| {
            Status::failed_precondition(format!(
                "job {} starts from fresh weights; there is no state to fetch",
                r.job_id
            ))
        })?;
        let flat = start.params.flatten_all();
        let mut out = Vec::new();
        for c in split(&flat, start.step, 0, CHUNK_BYTES) {
            out.push(pb::StateChunk {
                job_id: r.job_id.clone(),
                step: start.step,
                kind: pb::StateKind::Params as i32,
                chunk: Some(c),
                optimizer_steps: start.optimizer_steps,
                ..Default::default()
            });
        }
        if !start.optimizer_state.is_empty() {
            for c in split(&start.optimizer_state, start.step, 0, CHUNK_BYTES) {
                out.push(pb::StateChunk {
                    job_id: r.job_id.clone(),
                    step: start.step,
                    kind: pb::StateKind::Optimizer as i32,
                    chunk: Some(c),
                    optimizer_steps: start.optimizer_steps,
                    ..Default::default()
                });
            }
        }
        if let Some(last) = out.last_mut() {
            last.r#final = true;
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(
            out.into_iter().map(Ok),
        ))))
    }
}
