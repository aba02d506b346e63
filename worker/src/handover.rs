//! Handing a replica to another worker: a survivor whose group fell apart keeps a snapshot
//! of its replica and serves it over its CollectiveService (`FetchReplica`) to the workers
//! of the next generation that do not hold it — a joiner, or a survivor that fell a step
//! behind when the ring broke. The state never goes through the coordinator or the disk.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use graft_common::auth::Bearer;
use graft_proto::v1 as pb;
use tonic::Status;

use crate::error::WorkerError;
use crate::replica::Replica;
use crate::rpc::{read_state, state_chunks};

/// A replica's state at a step boundary.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The job.
    pub job: String,
    /// Steps done.
    pub step: u64,
    /// All parameters, flat.
    pub params: Vec<f32>,
    /// The optimizer state.
    pub optimizer: Vec<f32>,
    /// The optimizer's update count in the stage.
    pub optimizer_steps: u64,
}

impl Snapshot {
    /// A copy of `replica`'s state.
    pub fn of(replica: &Replica) -> Self {
        let (params, optimizer, optimizer_steps) = replica.state();
        Self {
            job: replica.job.clone(),
            step: replica.step,
            params,
            optimizer,
            optimizer_steps,
        }
    }
}

/// The snapshot a worker serves, if any: set by the agent when it keeps a replica, read by
/// the CollectiveService, cleared when the replica is dropped.
#[derive(Debug, Clone, Default)]
pub struct Handover(Arc<Mutex<Option<Arc<Snapshot>>>>);

impl Handover {
    /// Serves `s` from now on.
    pub fn offer(&self, s: Snapshot) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(Arc::new(s));
        }
    }

    /// Serves nothing.
    pub fn clear(&self) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = None;
        }
    }

    /// The snapshot of `job` at `step`.
    ///
    /// # Errors
    /// `FAILED_PRECONDITION` when this worker holds no such replica.
    pub fn get(&self, job: &str, step: u64) -> Result<Arc<Snapshot>, Status> {
        let slot = self
            .0
            .lock()
            .map_err(|_| Status::internal("handover lock poisoned"))?;
        match slot.as_ref() {
            Some(s) if s.job == job && s.step == step => Ok(s.clone()),
            Some(s) => Err(Status::failed_precondition(format!(
                "this worker holds job {} at step {}, not job {job} at step {step}",
                s.job, s.step
            ))),
            None => Err(Status::failed_precondition(format!(
                "this worker holds no replica of job {job}"
            ))),
        }
    }

    /// The messages of `FetchReplica` for `job` at `step`.
    ///
    /// # Errors
    /// As [`Handover::get`].
    pub fn stream(&self, r: &pb::FetchReplicaRequest) -> Result<Vec<pb::StateChunk>, Status> {
        let s = self.get(&r.job_id, r.step)?;
        tracing::info!(job = %r.job_id, step = r.step, generation = r.generation, "handing over the replica");
        Ok(state_chunks(
            "",
            &s.job,
            s.step,
            r.generation,
            &s.params,
            &s.optimizer,
            s.optimizer_steps,
        ))
    }
}

/// Fetches the replica of `job` at `step` from the worker whose CollectiveService is at
/// `addr`: all parameters (`n_params`), the optimizer state and its update count.
///
/// # Errors
/// [`WorkerError`] when the peer cannot be reached, holds no such replica, or sends a
/// damaged one.
pub async fn fetch_replica(
    addr: &str,
    bearer: Bearer,
    wait: Duration,
    job: &str,
    step: u64,
    generation: u64,
    n_params: usize,
) -> Result<(Vec<f32>, Vec<f32>, u64), WorkerError> {
    let mut peer = crate::ring::connect(addr, bearer, wait, 0).await?;
    let req = pb::FetchReplicaRequest {
        job_id: job.to_string(),
        step,
        generation,
    };
    let mut s = peer
        .fetch_replica(req)
        .await
        .map_err(|e| WorkerError::rpc("FetchReplica", e))?
        .into_inner();
    read_state(&mut s, "FetchReplica", n_params).await
}
