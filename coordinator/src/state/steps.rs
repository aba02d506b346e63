//! Steps: membership checks, reduction rounds, ring reports, progress and fingerprints.

use std::sync::Arc;

use graft_common::{JobId, WorkerId};
use graft_proto::v1 as pb;
use graft_transfer::spec::AllReduce;
use graft_transfer::{StepStats, shard};

use super::{
    Action, JobEntry, Now, OpenRound, Reply, RoundTicket, State, jobs, ledger, state_word,
};
use crate::error::CoordinatorError;
use crate::job::JobState;
use crate::jobdata::JobData;
use crate::reduce::Round;

/// Checks that `worker` is a member of the running group of `job` (at `generation`, when
/// given) and returns its rank; a group that is re-forming takes no steps.
///
/// # Errors
/// An unknown or stopped job, a job that is not running or is re-forming, a stale
/// generation, a non-member.
pub(crate) fn member_rank(
    state: &State,
    worker: &WorkerId,
    job: &JobId,
    generation: Option<u64>,
) -> Result<usize, CoordinatorError> {
    let rank = member_of(state, worker, job, generation)?;
    if state
        .jobs
        .get(job)
        .and_then(|j| j.run.as_ref())
        .is_some_and(|r| r.regroup.is_some())
    {
        return Err(CoordinatorError::Conflict(format!(
            "the group of job {job} is re-forming; generation {} takes no more steps",
            generation.map_or("?".to_string(), |g| g.to_string())
        )));
    }
    Ok(rank)
}

/// [`member_rank`] that also answers while the group re-forms.
///
/// # Errors
/// As [`member_rank`], but for the re-forming.
pub(crate) fn member_of(
    state: &State,
    worker: &WorkerId,
    job: &JobId,
    generation: Option<u64>,
) -> Result<usize, CoordinatorError> {
    let entry = state
        .jobs
        .get(job)
        .ok_or_else(|| CoordinatorError::UnknownJob(job.to_string()))?;
    if entry.record.state.is_terminal() {
        return Err(CoordinatorError::JobStopped {
            job: job.to_string(),
            state: state_word(entry.record.state),
            reason: entry.record.reason.clone(),
        });
    }
    let run = entry
        .run
        .as_ref()
        .ok_or_else(|| CoordinatorError::Conflict(format!("job {job} is not running")))?;
    if let Some(g) = generation
        && g != run.generation
    {
        return Err(CoordinatorError::Conflict(format!(
            "generation {g} is stale; the group of job {job} is at generation {}",
            run.generation
        )));
    }
    // A member that is gone (lost, left) or forgotten is a member no more, whoever names it.
    let gone = run
        .regroup
        .as_ref()
        .is_some_and(|g| g.gone.contains(worker));
    run.members
        .iter()
        .position(|m| m == worker)
        .filter(|_| !gone && state.workers.contains_key(worker))
        .ok_or_else(|| {
            CoordinatorError::Conflict(format!("worker {worker} is not in the group of job {job}"))
        })
}

/// The job's loaded data and the index of the stage that runs `step`.
pub(crate) fn stage_of_step(
    entry: &JobEntry,
    job: &JobId,
    step: u64,
) -> Result<(Arc<JobData>, usize), CoordinatorError> {
    let data = entry
        .data
        .clone()
        .ok_or_else(|| CoordinatorError::Internal(format!("job {job} has no data loaded")))?;
    let (stage, _) = data.stage_of(step).ok_or_else(|| {
        CoordinatorError::BadRequest(format!(
            "step {step} is not in job {job} ({} steps)",
            data.total_steps()
        ))
    })?;
    Ok((data, stage))
}

/// The reduction round of `step` for a member worker, created on first use.
pub(super) fn open_round(
    state: &mut State,
    now: Now,
    worker: &WorkerId,
    job: &JobId,
    rank: u32,
    step: u64,
    generation: u64,
) -> Result<Reply, CoordinatorError> {
    let my_rank = member_rank(state, worker, job, Some(generation))?;
    if my_rank != rank as usize {
        return Err(CoordinatorError::BadRequest(format!(
            "worker {worker} is rank {my_rank}, not {rank}"
        )));
    }
    let entry = state
        .jobs
        .get_mut(job)
        .ok_or_else(|| CoordinatorError::UnknownJob(job.to_string()))?;
    let (data, stage) = stage_of_step(entry, job, step)?;
    let plan = &data.stages[stage];
    if entry
        .run
        .as_ref()
        .and_then(|r| r.drain.as_ref())
        .is_some_and(|d| step > d.last_step)
    {
        return Err(CoordinatorError::ShuttingDown(job.to_string()));
    }
    // The group moves in lockstep: the only step open for reduction is the next one.
    if step != entry.record.step {
        return Err(CoordinatorError::BadRequest(format!(
            "step {step} is not the job's current step ({})",
            entry.record.step
        )));
    }
    let global_len = plan
        .global_counts(step - plan.first_step)
        .first()
        .copied()
        .unwrap_or(0);
    let run = entry
        .run
        .as_mut()
        .ok_or_else(|| CoordinatorError::Conflict(format!("job {job} is not running")))?;
    let world = run.members.len();
    let expected_samples = shard::local_part(global_len, world as u32, my_rank as u32).len() as u64;
    let round = run
        .rounds
        .entry(step)
        .or_insert_with(|| OpenRound {
            round: Arc::new(Round::new(world, data.trainable_len(stage))),
            opened_ms: now.mono_ms,
        })
        .round
        .clone();
    Ok(Reply::Round(RoundTicket {
        round,
        rank: my_rank,
        expected_samples,
    }))
}

/// A finished star round: progress for watchers; rounds up to it are dropped.
pub(super) fn round_completed(
    state: &mut State,
    now: Now,
    job: &JobId,
    step: u64,
    stats: StepStats,
    out: &mut Vec<Action>,
) -> Result<Reply, CoordinatorError> {
    let Some(entry) = state.jobs.get_mut(job) else {
        return Ok(Reply::Done);
    };
    let Some(run) = entry.run.as_mut() else {
        return Ok(Reply::Done);
    };
    let mut bytes = 0;
    let mut took_ms = 0.0;
    if let Some(open) = run.rounds.get(&step) {
        // Every rank's gradient in, and the sum out to every rank.
        bytes = (open.round.len * 4 * open.round.world * 2) as u64;
        took_ms = now.mono_ms.saturating_sub(open.opened_ms) as f64;
    }
    run.rounds.retain(|&s, _| s > step);
    let times = run.last_times;
    out.push(Action::CountRound {
        samples: stats.samples,
        took_ms,
        bytes,
    });
    step_done(entry, now, job, step, stats, times, out);
    Ok(Reply::Done)
}

/// Rank 0's report of a ring step, as the transition reads it.
pub(super) struct RingReport<'a> {
    pub worker: &'a WorkerId,
    pub job: &'a JobId,
    pub rank: u32,
    pub step: u64,
    pub generation: u64,
    pub stats: StepStats,
    pub times: Option<pb::StepTimes>,
}

/// Rank 0's report of a ring step: the group's summed stats of `step` (0-based), checked
/// against the job as the star checks each rank's. Replies with the step count at which the
/// group is to stop (non-zero only while the coordinator shuts down).
pub(super) fn ring_step(
    state: &mut State,
    now: Now,
    r: RingReport<'_>,
    out: &mut Vec<Action>,
) -> Result<Reply, CoordinatorError> {
    let RingReport {
        worker,
        job,
        rank,
        step,
        generation,
        stats,
        times,
    } = r;
    let my_rank = member_rank(state, worker, job, Some(generation))?;
    if my_rank != 0 || rank != 0 {
        return Err(CoordinatorError::BadRequest(format!(
            "only rank 0 reports ring steps; worker {worker} is rank {my_rank}"
        )));
    }
    let entry = state
        .jobs
        .get_mut(job)
        .ok_or_else(|| CoordinatorError::UnknownJob(job.to_string()))?;
    if entry.record.spec.allreduce != AllReduce::Ring {
        return Err(CoordinatorError::BadRequest(format!(
            "job {job} reduces through the coordinator (allreduce = \"star\"), not the ring"
        )));
    }
    if step != entry.record.step {
        return Err(CoordinatorError::BadRequest(format!(
            "ring report for step {step}, but job {job} is at step {}",
            entry.record.step
        )));
    }
    let (data, stage) = stage_of_step(entry, job, step)?;
    let plan = &data.stages[stage];
    let global = plan
        .global_counts(step - plan.first_step)
        .first()
        .copied()
        .unwrap_or(0) as u64;
    if !stats.loss_sum.is_finite() || stats.samples != global || stats.correct > stats.samples {
        let reason = format!(
            "the ring reported {} samples ({} correct, loss sum {}) at step {step}; the step's batch has {global}",
            stats.samples, stats.correct, stats.loss_sum
        );
        jobs::end_job(state, now, job, JobState::Failed, reason.clone(), out);
        return Err(CoordinatorError::BadRequest(reason));
    }
    let total = entry.record.total_steps;
    let mut stop_at = 0;
    if let Some(run) = entry.run.as_mut() {
        let world = run.members.len() as u64;
        let n = data.trainable_len(stage) as u64;
        // Each rank sends 2(W-1)/W of the gradient to its neighbour.
        let bytes = 2 * (world.saturating_sub(1)) * n * 4;
        out.push(Action::CountRound {
            samples: stats.samples,
            took_ms: times.map_or(0.0, |t| t.comm_ms.max(0.0)),
            bytes,
        });
        if let Some(d) = run.drain.as_mut() {
            // The step after this one is in flight; the group stops after it.
            let at = d.ring_stop.unwrap_or_else(|| (step + 2).min(total));
            d.ring_stop = Some(at);
            d.checkpoint_step = at;
            d.last_step = at.saturating_sub(1);
            stop_at = at;
        }
    }
    step_done(entry, now, job, step, stats, times, out);
    Ok(Reply::StopAt(stop_at))
}

/// Progress after `step` (0-based) for watchers, the curves and `/metrics`.
fn step_done(
    entry: &mut JobEntry,
    now: Now,
    job: &JobId,
    step: u64,
    stats: StepStats,
    times: Option<pb::StepTimes>,
    out: &mut Vec<Action>,
) {
    let Some(run) = entry.run.as_mut() else {
        return;
    };
    let elapsed = (now.mono_ms.saturating_sub(run.last_round_ms) as f64 / 1e3).max(1e-3);
    run.last_round_ms = now.mono_ms;
    let rate = stats.samples as f64 / elapsed;
    run.samples_per_s = if run.samples_per_s == 0.0 {
        rate
    } else {
        0.95 * run.samples_per_s + 0.05 * rate
    };
    let workers = run.members.len() as u32;
    entry.record.step = entry.record.step.max(step + 1);
    ledger::count_step(entry, step);
    let Some(data) = entry.data.clone() else {
        return;
    };
    let (stage_idx, stage) = data.stage_of(step).map_or((0, None), |(i, s)| (i, Some(s)));
    let lr = stage.map_or(0.0, |s| {
        graft_transfer::optim::learning_rate(
            entry.record.spec.optimizer.lr(),
            &entry.record.spec.schedule,
            step - s.first_step,
            s.steps,
        )
    });
    let progress = pb::Progress {
        step: step + 1,
        total_steps: entry.record.total_steps,
        stage: stage_idx as u32,
        stage_name: stage.map(|s| s.name.clone()).unwrap_or_default(),
        epoch: stage.map_or(0, |s| s.epoch_at(step)),
        loss: stats.mean_loss(),
        train_accuracy: stats.accuracy(),
        samples_per_s: rate,
        lr,
        workers,
        times,
    };
    entry
        .history
        .push_step(progress.step, progress.loss, progress.train_accuracy);
    out.push(Action::Publish(
        job.clone(),
        pb::JobEvent {
            event: Some(pb::job_event::Event::Progress(progress)),
        },
    ));
}

/// Records a parameter fingerprint; fails the job when replicas differ, and completes a
/// finishing job once its final fingerprints agree.
#[allow(clippy::too_many_arguments)]
pub(super) fn fingerprint(
    state: &mut State,
    now: Now,
    worker: &WorkerId,
    job: &JobId,
    step: u64,
    generation: u64,
    fp: String,
    out: &mut Vec<Action>,
) -> Result<Reply, CoordinatorError> {
    let rank = member_rank(state, worker, job, Some(generation))?;
    let entry = state
        .jobs
        .get_mut(job)
        .ok_or_else(|| CoordinatorError::UnknownJob(job.to_string()))?;
    // With the ring a rank may finish a step before rank 0's report of it arrives, never
    // two: rank 0 hears back from its report before it joins the next step's ring.
    let ahead = u64::from(entry.record.spec.allreduce == AllReduce::Ring);
    if step == 0 || step > entry.record.step + ahead {
        return Err(CoordinatorError::BadRequest(format!(
            "fingerprint for step {step}, but job {job} has done {} steps",
            entry.record.step
        )));
    }
    let total = entry.record.total_steps;
    let Some(run) = entry.run.as_mut() else {
        return Ok(Reply::Done);
    };
    let world = run.members.len();
    let slots = run
        .fingerprints
        .entry(step)
        .or_insert_with(|| vec![None; world]);
    slots[rank] = Some(fp);
    if slots.iter().all(Option::is_some) {
        let all: Vec<String> = slots.iter().flatten().cloned().collect();
        run.fingerprints.remove(&step);
        if all.iter().any(|f| *f != all[0]) {
            let detail: Vec<String> = all
                .iter()
                .enumerate()
                .map(|(r, f)| format!("rank {r}: {f}"))
                .collect();
            let reason = format!("replicas diverged at step {step} ({})", detail.join(", "));
            jobs::end_job(state, now, job, JobState::Failed, reason, out);
            return Ok(Reply::Done);
        }
        run.verified = run.verified.max(step);
        if run.finishing_ms.is_some() && run.verified >= total {
            jobs::end_job(state, now, job, JobState::Completed, String::new(), out);
        }
    }
    Ok(Reply::Done)
}
