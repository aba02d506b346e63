//! The worker's calls to the coordinator, made from the training thread by blocking on the
//! runtime; every tensor goes out and comes back in checked chunks.

use graft_common::auth::Bearer;
use graft_proto::chunk::{Assembler, split};
use graft_proto::v1 as pb;
use graft_proto::v1::cluster_service_client::ClusterServiceClient;
use graft_proto::{CHUNK_BYTES, MAX_MESSAGE_BYTES};
use graft_transfer::StepStats;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::error::WorkerError;

/// A client of the coordinator's cluster service.
pub type Cluster = ClusterServiceClient<InterceptedService<Channel, Bearer>>;

/// A cluster client over `channel`.
pub fn cluster(channel: Channel, bearer: Bearer) -> Cluster {
    ClusterServiceClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The samples of this worker's shard for one epoch.
#[derive(Debug, Clone, Default)]
pub struct Shard {
    /// Row-major features.
    pub features: Vec<f32>,
    /// Labels.
    pub labels: Vec<u32>,
    /// Elements per sample.
    pub dim: usize,
}

/// Fetches the shard of `stage`, `epoch`.
///
/// # Errors
/// [`WorkerError`] when the call fails or the stream is inconsistent.
pub async fn fetch_shard(
    c: &mut Cluster,
    worker: &str,
    job: &str,
    stage: u32,
    stream: u32,
    epoch: u64,
    generation: u64,
) -> Result<Shard, WorkerError> {
    let req = pb::FetchShardRequest {
        worker_id: worker.into(),
        job_id: job.into(),
        stage,
        epoch,
        generation,
        stream,
    };
    let mut s = c
        .fetch_shard(req)
        .await
        .map_err(|e| WorkerError::rpc("FetchShard", e))?
        .into_inner();
    let mut shard = Shard::default();
    let mut total = None;
    while let Some(m) = s
        .message()
        .await
        .map_err(|e| WorkerError::rpc("FetchShard", e))?
    {
        let dim = m.sample_dim as usize;
        if dim == 0
            || m.features.len() != m.labels.len() * dim * 4
            || m.offset != shard.labels.len() as u64
        {
            return Err(WorkerError::Protocol(format!(
                "shard chunk at {} does not fit (dim {dim}, {} labels, {} bytes)",
                m.offset,
                m.labels.len(),
                m.features.len()
            )));
        }
        if shard.dim != 0 && shard.dim != dim {
            return Err(WorkerError::Protocol(format!(
                "shard chunk at {} has {dim} values per sample, earlier ones {}",
                m.offset, shard.dim
            )));
        }
        shard.dim = dim;
        total = Some(m.total_samples);
        graft_proto::chunk::bytes_to_f32(&m.features, &mut shard.features);
        shard.labels.extend_from_slice(&m.labels);
    }
    if total != Some(shard.labels.len() as u64) {
        return Err(WorkerError::Protocol(format!(
            "shard ended after {} of {:?} samples",
            shard.labels.len(),
            total
        )));
    }
    Ok(shard)
}

/// The answer of one star all-reduce.
#[derive(Debug, Clone)]
pub struct ReduceResult {
    /// The group's mean gradient.
    pub mean: Vec<f32>,
    /// The group's summed stats.
    pub stats: StepStats,
    /// The coordinator asks rank 0 for its state after this step (it is shutting down).
    pub upload_state: bool,
}

/// Star all-reduce through the coordinator: sends this rank's summed gradient, receives the
/// group's mean.
///
/// # Errors
/// [`WorkerError`] when the call fails (another worker died, the job stopped) or the answer
/// does not belong to this step.
#[allow(clippy::too_many_arguments)]
pub async fn reduce(
    c: &mut Cluster,
    worker: &str,
    job: &str,
    rank: u32,
    step: u64,
    generation: u64,
    grad: &[f32],
    stats: StepStats,
    times: Option<pb::StepTimes>,
) -> Result<ReduceResult, WorkerError> {
    let msgs: Vec<pb::ReduceGradientsRequest> = split(grad, step, generation, CHUNK_BYTES)
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| pb::ReduceGradientsRequest {
            worker_id: worker.into(),
            job_id: job.into(),
            rank,
            chunk: Some(chunk),
            stats: (i == 0).then(|| graft_common::wire::stats_to_pb(&stats)),
            times: if i == 0 { times } else { None },
        })
        .collect();
    let mut s = c
        .reduce_gradients(tokio_stream::iter(msgs))
        .await
        .map_err(|e| WorkerError::rpc("ReduceGradients", e))?
        .into_inner();
    let mut asm = Assembler::new(step, generation, grad.len() as u64).reject_non_finite();
    let mut global = None;
    let mut upload_state = false;
    while let Some(m) = s
        .message()
        .await
        .map_err(|e| WorkerError::rpc("ReduceGradients", e))?
    {
        upload_state |= m.upload_state;
        if let Some(st) = m.stats {
            global = Some(graft_common::wire::stats_from_pb(Some(&st)));
        }
        let chunk = m
            .chunk
            .ok_or_else(|| WorkerError::Protocol("reduced chunk missing".into()))?;
        asm.push(&chunk)
            .map_err(|e| WorkerError::Protocol(format!("reduced gradient: {e}")))?;
    }
    let mean = asm
        .finish()
        .map_err(|e| WorkerError::Protocol(format!("reduced gradient: {e}")))?;
    Ok(ReduceResult {
        mean,
        stats: global.ok_or_else(|| WorkerError::Protocol("reduced stats missing".into()))?,
        upload_state,
    })
}

/// Uploads rank 0's state after `step` for an evaluation or a checkpoint.
///
/// # Errors
/// [`WorkerError`] when the call fails.
#[allow(clippy::too_many_arguments)]
pub async fn upload_state(
    c: &mut Cluster,
    worker: &str,
    job: &str,
    step: u64,
    generation: u64,
    params: &[f32],
    optimizer: &[f32],
    optimizer_steps: u64,
) -> Result<(), WorkerError> {
    let msgs = state_chunks(
        worker,
        job,
        step,
        generation,
        params,
        optimizer,
        optimizer_steps,
    );
    c.upload_state(tokio_stream::iter(msgs))
        .await
        .map_err(|e| WorkerError::rpc("UploadState", e))?;
    Ok(())
}

/// A replica's state as the messages that carry it: the parameters, then the optimizer
/// state, in checked chunks; the last one marked final.
pub fn state_chunks(
    worker: &str,
    job: &str,
    step: u64,
    generation: u64,
    params: &[f32],
    optimizer: &[f32],
    optimizer_steps: u64,
) -> Vec<pb::StateChunk> {
    let mut msgs = Vec::new();
    for (kind, values) in [
        (pb::StateKind::Params, params),
        (pb::StateKind::Optimizer, optimizer),
    ] {
        for chunk in split(values, step, generation, CHUNK_BYTES) {
            msgs.push(pb::StateChunk {
                worker_id: worker.into(),
                job_id: job.into(),
                step,
                kind: kind as i32,
                chunk: Some(chunk),
                optimizer_steps,
                r#final: false,
            });
        }
    }
    if let Some(last) = msgs.last_mut() {
        last.r#final = true;
    }
    msgs
}

/// The state a job starts from: all parameters, the optimizer state (maybe empty) and the
/// optimizer's update count.
///
/// # Errors
/// [`WorkerError`] when the call fails or the state is damaged.
pub async fn fetch_state(
    c: &mut Cluster,
    worker: &str,
    job: &str,
    n_params: usize,
) -> Result<(Vec<f32>, Vec<f32>, u64), WorkerError> {
    let req = pb::FetchStateRequest {
        worker_id: worker.into(),
        job_id: job.into(),
    };
    let mut s = c
        .fetch_state(req)
        .await
        .map_err(|e| WorkerError::rpc("FetchState", e))?
        .into_inner();
    read_state(&mut s, "FetchState", n_params).await
}

/// Reads a replica's state off a stream of [`pb::StateChunk`]s: all parameters (exactly
/// `n_params`), the optimizer state (maybe empty) and the optimizer's update count.
///
/// # Errors
/// [`WorkerError`] when the stream fails or the state is damaged or does not fit.
pub async fn read_state(
    s: &mut tonic::Streaming<pb::StateChunk>,
    call: &'static str,
    n_params: usize,
) -> Result<(Vec<f32>, Vec<f32>, u64), WorkerError> {
    let mut params: Option<Assembler> = None;
    let mut opt: Option<Assembler> = None;
    let mut opt_steps = 0;
    while let Some(m) = s.message().await.map_err(|e| WorkerError::rpc(call, e))? {
        let chunk = m
            .chunk
            .ok_or_else(|| WorkerError::Protocol("state chunk missing".into()))?;
        opt_steps = m.optimizer_steps;
        let slot = match pb::StateKind::try_from(m.kind) {
            Ok(pb::StateKind::Params) => &mut params,
            Ok(pb::StateKind::Optimizer) => &mut opt,
            _ => {
                return Err(WorkerError::Protocol(format!(
                    "state chunk of unknown kind {}",
                    m.kind
                )));
            }
        };
        let asm = slot
            .get_or_insert_with(|| Assembler::new(chunk.step, chunk.generation, chunk.total_len));
        asm.push(&chunk)
            .map_err(|e| WorkerError::Protocol(format!("state: {e}")))?;
    }
    let params = params
        .ok_or_else(|| WorkerError::Protocol("state has no parameters".into()))?
        .finish()
        .map_err(|e| WorkerError::Protocol(e.to_string()))?;
    if params.len() != n_params {
        return Err(WorkerError::Protocol(format!(
            "state has {} parameters, the network has {n_params}",
            params.len()
        )));
    }
    let opt = match opt {
        Some(a) => a
            .finish()
            .map_err(|e| WorkerError::Protocol(e.to_string()))?,
        None => Vec::new(),
    };
    Ok((params, opt, opt_steps))
}
