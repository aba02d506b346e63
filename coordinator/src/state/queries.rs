//! Reads of the state that change nothing: records, memberships, upload targets, the
//! shutdown's progress and the gauges of `/metrics`.

use std::sync::Arc;

use graft_common::{JobId, WorkerId};
use graft_transfer::JobSpec;

use super::steps::member_rank;
use super::{Drain, StartState, State, state_word};
use crate::error::CoordinatorError;
use crate::job::JobRecord;
use crate::jobdata::JobData;

/// A worker's place in a running job.
pub struct Membership {
    /// The job's data and network.
    pub data: Arc<JobData>,
    /// The job's spec.
    pub spec: JobSpec,
    /// The worker's rank.
    pub rank: usize,
    /// The group's size.
    pub world: usize,
    /// The state the job starts from, if not fresh weights.
    pub start: Option<Arc<StartState>>,
}

/// Whether a call that names `worker` may act for it: an unknown worker passes (the call
/// itself then answers that it must register), a known one must carry its secret.
///
/// # Errors
/// [`CoordinatorError::PermissionDenied`] when the secret does not match.
pub fn authorize(state: &State, worker: &WorkerId, secret: &str) -> Result<(), CoordinatorError> {
    match state.workers.get(worker) {
        Some(w)
            if !graft_common::auth::constant_time_eq(w.secret.as_bytes(), secret.as_bytes()) =>
        {
            Err(CoordinatorError::PermissionDenied(format!(
                "the call names worker {worker} but does not carry its secret"
            )))
        }
        _ => Ok(()),
    }
}

/// A job's record.
///
/// # Errors
/// [`CoordinatorError::UnknownJob`].
pub fn record(state: &State, id: &JobId) -> Result<JobRecord, CoordinatorError> {
    state
        .jobs
        .get(id)
        .map(|j| j.record.clone())
        .ok_or_else(|| CoordinatorError::UnknownJob(id.to_string()))
}

/// Every job, oldest first.
pub fn list(state: &State) -> Vec<JobRecord> {
    let mut all: Vec<JobRecord> = state.jobs.values().map(|j| j.record.clone()).collect();
    all.sort_by_key(|r| (r.created_unix_ms, r.id.0.len(), r.id.0.clone()));
    all
}

/// The job's data and this worker's place in its group.
///
/// # Errors
/// When the worker is not a member of the running group.
pub fn membership(
    state: &State,
    worker: &WorkerId,
    job: &JobId,
    generation: Option<u64>,
) -> Result<Membership, CoordinatorError> {
    let rank = member_rank(state, worker, job, generation)?;
    let entry = state
        .jobs
        .get(job)
        .ok_or_else(|| CoordinatorError::UnknownJob(job.to_string()))?;
    let data = entry
        .data
        .clone()
        .ok_or_else(|| CoordinatorError::Internal(format!("job {job} has no data loaded")))?;
    Ok(Membership {
        data,
        spec: entry.record.spec.clone(),
        rank,
        world: entry.run.as_ref().map_or(1, |r| r.members.len()),
        start: entry.start.clone(),
    })
}

/// The record and data a state upload of `step` needs, for the rank-0 member.
///
/// # Errors
/// When the worker is not rank 0 of the running group, or the step is not one the job has
/// done.
pub fn upload_target(
    state: &State,
    worker: &WorkerId,
    job: &JobId,
    step: u64,
    generation: u64,
) -> Result<(JobRecord, Arc<JobData>), CoordinatorError> {
    let rank = member_rank(state, worker, job, Some(generation))?;
    let entry = state
        .jobs
        .get(job)
        .ok_or_else(|| CoordinatorError::UnknownJob(job.to_string()))?;
    if step == 0 || step > entry.record.step {
        return Err(CoordinatorError::BadRequest(format!(
            "state for step {step}, but job {job} has done {} steps",
            entry.record.step
        )));
    }
    if rank != 0 {
        return Err(CoordinatorError::BadRequest(format!(
            "only rank 0 uploads state; worker {worker} is rank {rank}"
        )));
    }
    let data = entry
        .data
        .clone()
        .ok_or_else(|| CoordinatorError::Internal(format!("job {job} has no data loaded")))?;
    Ok((entry.record.clone(), data))
}

/// A running job's part in the shutdown, if it began.
pub fn drain_of(state: &State, job: &JobId) -> Option<Drain> {
    state.jobs.get(job)?.run.as_ref()?.drain.clone()
}

/// The jobs of `waiting` that still have neither their checkpoint nor an end.
pub fn still_draining(state: &State, waiting: &[(JobId, u64)]) -> Vec<JobId> {
    waiting
        .iter()
        .filter(|(id, step)| {
            state.jobs.get(id).is_some_and(|j| {
                let drain = j.run.as_ref().and_then(|r| r.drain.as_ref());
                // The ring's stop may have been fixed since the drain began.
                let step = drain.map_or(*step, |d| d.checkpoint_step);
                let saved = j.record.checkpoints.last().is_some_and(|c| c.step >= step);
                let abandoned = drain.is_some_and(|d| d.abandoned);
                !(j.record.state.is_terminal() || j.run.is_none() || saved || abandoned)
            })
        })
        .map(|(id, _)| id.clone())
        .collect()
}

/// Gauges for `/metrics`.
pub fn metrics(state: &State) -> crate::metrics::Snapshot {
    crate::metrics::Snapshot {
        workers: state.workers.len(),
        jobs: state
            .jobs
            .values()
            .map(|j| crate::metrics::JobGauges {
                id: j.record.id.0.clone(),
                state: state_word(j.record.state),
                step: j.record.step,
                total_steps: j.record.total_steps,
                workers: j.record.workers,
                samples_per_s: j.run.as_ref().map_or(0.0, |r| r.samples_per_s),
                train_loss: j.history.train.last().map(|&(_, loss, _)| loss),
                train_accuracy: j.history.train.last().map(|&(_, _, acc)| acc),
                metrics: j.record.metrics.clone(),
                generation: j.record.generation,
                regroups: j.record.changes.iter().fold(
                    std::collections::BTreeMap::new(),
                    |mut m, c| {
                        if matches!(
                            c.cause.as_str(),
                            "lost" | "left" | "group-failed" | "joining"
                        ) {
                            *m.entry(c.cause.clone()).or_insert(0) += 1;
                        }
                        m
                    },
                ),
            })
            .collect(),
    }
}
