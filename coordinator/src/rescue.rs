//! Saving a re-forming group's state when it falls below `workers.min`: the coordinator
//! fetches a survivor's replica over the survivor's `CollectiveService` (`FetchReplica`, as a
//! joiner would) and checkpoints it at once, so that a job that then fails for want of
//! workers loses nothing its survivors held.

use std::sync::Arc;
use std::time::Duration;

use graft_common::JobId;
use graft_common::auth::Bearer;
use graft_proto::MAX_MESSAGE_BYTES;
use graft_proto::chunk::Assembler;
use graft_proto::v1 as pb;
use graft_proto::v1::collective_service_client::CollectiveServiceClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::Coordinator;
use crate::error::CoordinatorError;
use crate::upload::{Upload, checkpoint};

/// A replica to fetch and checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveRequest {
    /// The job.
    pub job: JobId,
    /// The survivor's CollectiveService address.
    pub from: String,
    /// The step its replica is at.
    pub step: u64,
}

/// Serves save requests until `shutdown`: each one on its own task, failures logged (the
/// job goes on waiting; only its safety net is missing).
pub async fn run(
    coord: Arc<Coordinator>,
    mut requests: mpsc::UnboundedReceiver<SaveRequest>,
    shutdown: CancellationToken,
) {
    loop {
        let r = tokio::select! {
            () = shutdown.cancelled() => return,
            r = requests.recv() => r,
        };
        let Some(r) = r else { return };
        let coord = coord.clone();
        tokio::spawn(async move {
            let (job, step) = (r.job.clone(), r.step);
            if let Err(e) = save(&coord, r).await {
                tracing::warn!(%job, step, error = %e, "cannot checkpoint the survivors' state");
            }
        });
    }
}

fn bad(what: &str) -> impl Fn(String) -> CoordinatorError + '_ {
    move |e| CoordinatorError::BadRequest(format!("{what}: {e}"))
}

async fn save(coord: &Arc<Coordinator>, r: SaveRequest) -> Result<(), CoordinatorError> {
    let handle = coord.save_target(&r.job)?;
    let bearer = Bearer::new(coord.config.cluster_token.as_deref())?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", r.from))
        .map_err(|e| bad("survivor address")(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| bad("survivor")(graft_common::tls::chain(&e)))?;
    let mut peer = CollectiveServiceClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut s = peer
        .fetch_replica(pb::FetchReplicaRequest {
            job_id: r.job.0.clone(),
            step: r.step,
            generation: 0,
        })
        .await
        .map_err(|e| bad("FetchReplica")(e.message().to_string()))?
        .into_inner();
    let data = &handle.data;
    let n_params = data.arch.num_params() as u64;
    let opt_len = data
        .stage_of(r.step.saturating_sub(1))
        .map_or(0, |(stage, _)| {
            data.optimizer_len(stage, &handle.record.spec)
        }) as u64;
    let mut params = Assembler::new(r.step, 0, n_params).reject_non_finite();
    let mut optimizer = Assembler::new(r.step, 0, opt_len).reject_non_finite();
    let mut optimizer_steps = 0;
    while let Some(m) = s
        .message()
        .await
        .map_err(|e| bad("FetchReplica")(e.message().to_string()))?
    {
        let c = m
            .chunk
            .as_ref()
            .ok_or_else(|| bad("replica")("a message without its chunk".into()))?;
        optimizer_steps = m.optimizer_steps;
        match pb::StateKind::try_from(m.kind) {
            Ok(pb::StateKind::Params) => params
                .push(c)
                .map_err(|e| bad("parameters")(e.to_string()))?,
            Ok(pb::StateKind::Optimizer) => optimizer
                .push(c)
                .map_err(|e| bad("optimizer state")(e.to_string()))?,
            _ => {
                return Err(bad("replica")(format!(
                    "a chunk of unknown kind {}",
                    m.kind
                )));
            }
        }
    }
    let params = params
        .finish()
        .map_err(|e| bad("parameters")(e.to_string()))?;
    let optimizer_state = if opt_len == 0 {
        Vec::new()
    } else {
        optimizer
            .finish()
            .map_err(|e| bad("optimizer state")(e.to_string()))?
    };
    let upload = Upload {
        step: r.step,
        params,
        optimizer_state,
        optimizer_steps,
    };
    let c = coord.clone();
    let _serial = handle.state_lock.clone().lock_owned().await;
    tokio::task::spawn_blocking(move || {
        let p = handle
            .data
            .arch
            .params_from_flat(&upload.params)
            .map_err(|e| bad("replica parameters")(e.to_string()))?;
        checkpoint(&c, &handle, &upload, &p, Default::default())
    })
    .await
    .map_err(|e| CoordinatorError::Internal(format!("checkpoint task: {e}")))?
}
