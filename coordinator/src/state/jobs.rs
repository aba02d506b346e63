//! Jobs: submission, cancellation, the end of a job, evaluations and checkpoints.

use std::sync::Arc;

use graft_common::{JobId, WorkerId};
use graft_proto::v1 as pb;

use super::{Action, JobEntry, Now, Reply, StartState, State, regroup, state_word, steps, workers};
use crate::error::CoordinatorError;
use crate::job::{CheckpointRecord, JobRecord, JobState};
use crate::jobdata::JobData;

pub(super) fn submitted(
    state: &mut State,
    now: Now,
    record: JobRecord,
    data: Arc<JobData>,
    start: Option<Arc<StartState>>,
    out: &mut Vec<Action>,
) -> Result<Reply, CoordinatorError> {
    tracing::info!(job = %record.id, name = %record.spec.name, method = record.spec.method.name(), "job submitted");
    let id = record.id.clone();
    state.jobs.insert(
        id.clone(),
        JobEntry::new(record.clone(), Some(data), start, now),
    );
    workers::schedule(state, now, out);
    let record = state.jobs.get(&id).map_or(record, |j| j.record.clone());
    Ok(Reply::Record(record))
}

/// The state of job `id`.
fn state_of(state: &State, id: &JobId) -> Result<JobState, CoordinatorError> {
    state
        .jobs
        .get(id)
        .map(|j| j.record.state)
        .ok_or_else(|| CoordinatorError::UnknownJob(id.to_string()))
}

/// Forgets a finished job: its record leaves the state and the store, and its directory
/// goes. A job that has not ended is refused (cancel it first), so that no worker, round or
/// upload can still refer to it.
pub(super) fn delete(
    state: &mut State,
    id: &JobId,
    out: &mut Vec<Action>,
) -> Result<Reply, CoordinatorError> {
    let job_state = state_of(state, id)?;
    if !job_state.is_terminal() {
        return Err(CoordinatorError::Conflict(format!(
            "job {id} is {}; only a finished job can be deleted (cancel it first)",
            state_word(job_state)
        )));
    }
    let entry = state
        .jobs
        .remove(id)
        .ok_or_else(|| CoordinatorError::UnknownJob(id.to_string()))?;
    out.push(Action::Forget(id.clone()));
    Ok(Reply::Record(entry.record))
}

pub(super) fn cancel(
    state: &mut State,
    now: Now,
    id: &JobId,
    out: &mut Vec<Action>,
) -> Result<Reply, CoordinatorError> {
    let job_state = state_of(state, id)?;
    if job_state.is_terminal() {
        return Err(CoordinatorError::Conflict(format!(
            "job {id} has already ended ({})",
            state_word(job_state)
        )));
    }
    end_job(
        state,
        now,
        id,
        JobState::Cancelled,
        "cancelled by user".into(),
        out,
    );
    state
        .jobs
        .get(id)
        .map(|j| Reply::Record(j.record.clone()))
        .ok_or_else(|| CoordinatorError::UnknownJob(id.to_string()))
}

/// Ends a job (idempotent for finished jobs): its rounds fail, its workers are freed, its
/// record and curves are written, and the scheduler runs for the freed workers.
pub(super) fn end_job(
    state: &mut State,
    now: Now,
    id: &JobId,
    to: JobState,
    reason: String,
    out: &mut Vec<Action>,
) {
    let Some(job) = state.jobs.get_mut(id) else {
        return;
    };
    if job.record.state.is_terminal() {
        return;
    }
    match to {
        JobState::Failed => tracing::warn!(job = %id, %reason, "job failed"),
        _ => tracing::info!(job = %id, state = state_word(to), %reason, "job ended"),
    }
    job.record.state = to;
    job.record.reason = reason.clone();
    job.record.finished_unix_ms = now.unix_ms;
    let members = job.run.take().map(|run| {
        for open in run.rounds.into_values() {
            out.push(Action::FailRound {
                round: open.round,
                reason: format!("job {id} is {to:?}: {reason}"),
            });
        }
        run.members
    });
    job.data = None;
    job.start = None;
    out.push(Action::Publish(
        id.clone(),
        pb::JobEvent {
            event: Some(pb::job_event::Event::Finished(job.record.to_pb())),
        },
    ));
    out.push(Action::Curves {
        job: id.clone(),
        title: format!("{} ({})", id, job.record.spec.name),
        history: job.history.clone(),
    });
    out.push(Action::Persist(job.record.clone()));
    for w in members.unwrap_or_default() {
        if let Some(worker) = state.workers.get_mut(&w)
            && worker.job.as_ref() == Some(id)
        {
            worker.job = None;
            worker.assignment = None;
        }
    }
    workers::schedule(state, now, out);
}

/// Marks a job completed after its final state was evaluated and checkpointed — once the
/// replicas' final fingerprints have matched (else when they do).
pub(super) fn complete(
    state: &mut State,
    now: Now,
    id: &JobId,
    out: &mut Vec<Action>,
) -> Result<Reply, CoordinatorError> {
    let Some(job) = state.jobs.get_mut(id) else {
        return Ok(Reply::Done);
    };
    let total = job.record.total_steps;
    match job.run.as_mut() {
        Some(run) if run.verified < total => run.finishing_ms = Some(now.mono_ms),
        _ => end_job(state, now, id, JobState::Completed, String::new(), out),
    }
    Ok(Reply::Done)
}

/// A member worker gave up on its job: the job fails with its reason (during a shutdown it
/// resumes from its checkpoint after the restart instead). A graceful leave (the worker is
/// going away) re-forms the group without it.
pub(super) fn leave(
    state: &mut State,
    now: Now,
    worker: &WorkerId,
    id: &JobId,
    reason: &str,
    graceful: bool,
    out: &mut Vec<Action>,
) -> Result<Reply, CoordinatorError> {
    let rank = steps::member_of(state, worker, id, None)?;
    if graceful {
        let name = state
            .workers
            .get(worker)
            .map_or("?".to_string(), |w| w.name.clone());
        let detail = format!("worker {worker} ({name}, rank {rank}) left: {reason}");
        regroup::begin(
            state,
            now,
            id,
            "left",
            std::slice::from_ref(worker),
            detail,
            out,
        );
        // It is going away: offered as a joiner, it would leave the new group waiting for
        // a connection that never comes. Forgotten now; if it stays after all, its next
        // heartbeat tells it to register again.
        state.workers.remove(worker);
        return Ok(Reply::Done);
    }
    if let Some(d) = state
        .jobs
        .get_mut(id)
        .and_then(|j| j.run.as_mut())
        .and_then(|r| r.drain.as_mut())
    {
        // Failing the job now would lose it; after the restart it resumes from its newest
        // checkpoint instead, and the shutdown need not wait for a state that will not come.
        tracing::warn!(job = %id, %worker, %reason, "a worker left during the shutdown; the job resumes after the restart");
        d.abandoned = true;
        return Ok(Reply::Done);
    }
    let name = state
        .workers
        .get(worker)
        .map_or("?".to_string(), |w| w.name.clone());
    let reason = format!("worker {worker} ({name}, rank {rank}) left the job: {reason}");
    end_job(state, now, id, JobState::Failed, reason, out);
    Ok(Reply::Done)
}

/// Records an evaluation: metrics into the record (stage-end evaluations of earlier stages
/// also under `<stage>_stage.`), an event for watchers, the curves.
pub(super) fn evaluated(
    state: &mut State,
    id: &JobId,
    eval: pb::Evaluation,
    stage_prefix: Option<String>,
    out: &mut Vec<Action>,
) -> Result<Reply, CoordinatorError> {
    let Some(entry) = state.jobs.get_mut(id) else {
        return Ok(Reply::Done);
    };
    for (k, v) in &eval.metrics {
        entry.record.metrics.insert(k.clone(), *v);
        if let Some(p) = &stage_prefix {
            entry.record.metrics.insert(format!("{p}.{k}"), *v);
        }
    }
    entry
        .history
        .push_eval(eval.step, eval.metrics.clone().into_iter().collect());
    out.push(Action::Curves {
        job: id.clone(),
        title: format!("{} ({})", id, entry.record.spec.name),
        history: entry.history.clone(),
    });
    out.push(Action::Publish(
        id.clone(),
        pb::JobEvent {
            event: Some(pb::job_event::Event::Evaluation(eval)),
        },
    ));
    out.push(Action::Persist(entry.record.clone()));
    Ok(Reply::Done)
}

/// Records a written checkpoint, keeping the newest `keep` in the record.
pub(super) fn checkpointed(
    state: &mut State,
    id: &JobId,
    ckpt: CheckpointRecord,
    keep: usize,
    out: &mut Vec<Action>,
) -> Result<Reply, CoordinatorError> {
    let Some(entry) = state.jobs.get_mut(id) else {
        return Ok(Reply::Done);
    };
    out.push(Action::Publish(
        id.clone(),
        pb::JobEvent {
            event: Some(pb::job_event::Event::Checkpoint(ckpt.to_pb())),
        },
    ));
    entry.record.checkpoints.push(ckpt);
    let n = entry.record.checkpoints.len();
    if n > keep {
        entry.record.checkpoints.drain(..n - keep);
    }
    out.push(Action::Persist(entry.record.clone()));
    Ok(Reply::Done)
}
