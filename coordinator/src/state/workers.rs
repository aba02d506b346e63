//! Workers: registration, heartbeats, assignments, lost workers, and the scheduler that
//! forms groups.

use std::collections::BTreeMap;

use graft_common::{JobId, WorkerId};
use graft_proto::v1 as pb;

use super::{Action, Now, Reply, Run, State, WorkerEntry, jobs, regroup};
use crate::error::CoordinatorError;
use crate::job::JobState;

/// A worker as it registers.
pub(super) struct Registration {
    pub id: WorkerId,
    pub secret: String,
    pub name: String,
    pub device: String,
    pub collective: String,
}

pub(super) fn register(
    state: &mut State,
    now: Now,
    reg: Registration,
    held: Option<(JobId, u64, regroup::Held)>,
    out: &mut Vec<Action>,
) -> Result<Reply, CoordinatorError> {
    let Registration {
        id,
        secret,
        name,
        device,
        collective,
    } = reg;
    if state.workers.contains_key(&id) {
        return Err(CoordinatorError::Internal(format!(
            "worker id {id} drawn twice"
        )));
    }
    if state.workers.len() >= state.limits.max_workers as usize {
        return Err(CoordinatorError::Exhausted(format!(
            "the cluster has its {} workers (the coordinator's max_workers); this one is not \
             admitted until one leaves",
            state.limits.max_workers
        )));
    }

    tracing::info!(worker = %id, %name, %device, %collective, "worker registered");
    state.workers.insert(
        id.clone(),
        WorkerEntry {
            name,
            device,
            collective,
            secret,
            seq: state.next_worker,
            last_seen_ms: now.mono_ms,
            job: None,
            assignment: None,
        },
    );
    state.next_worker += 1;
    // Offered before the scheduler runs, so that a restarted coordinator does not start the
    // job from its checkpoint when the workers that register hold newer replicas.
    if let Some((job, generation, h)) = held {
        regroup::offer(state, &id, &job, generation, &h);
    }
    schedule(state, now, out);
    Ok(Reply::Registered(id))
}

/// Records a heartbeat; the answer names the job the worker must stop training: one the
/// coordinator no longer gives it, or one whose group is re-forming or has moved past the
/// worker's generation.
pub(super) fn heartbeat(
    state: &mut State,
    now: Now,
    worker: &WorkerId,
    job: &str,
    generation: u64,
) -> Result<Reply, CoordinatorError> {
    let Some(w) = state.workers.get_mut(worker) else {
        return Ok(Reply::Heartbeat(None));
    };
    w.last_seen_ms = now.mono_ms;
    if job.is_empty() {
        return Ok(Reply::Heartbeat(Some(Vec::new())));
    }
    let mine = w.job.as_ref().is_some_and(|c| c.0 == job);
    let current = mine
        && state
            .jobs
            .get(&JobId::from(job))
            .and_then(|j| j.run.as_ref())
            .is_some_and(|r| {
                r.regroup.is_none() && (generation == 0 || generation == r.generation)
            });
    if current {
        return Ok(Reply::Heartbeat(Some(Vec::new())));
    }
    Ok(Reply::Heartbeat(Some(vec![job.to_string()])))
}

/// Fails jobs whose final fingerprints are overdue, removes workers whose heartbeats
/// stopped (failing their jobs), and starts jobs that can start.
pub(super) fn tick(state: &mut State, now: Now, out: &mut Vec<Action>) {
    let step_timeout = state.limits.step_timeout_ms;
    let overdue: Vec<(JobId, String)> = state
        .jobs
        .iter()
        .filter_map(|(id, j)| {
            let run = j.run.as_ref()?;
            let since = run.finishing_ms?;
            if now.mono_ms.saturating_sub(since) <= step_timeout {
                return None;
            }
            let reported = run.fingerprints.get(&j.record.total_steps);
            let missing: Vec<String> = (0..run.members.len())
                .filter(|&r| reported.is_none_or(|slots| slots.get(r).is_none_or(Option::is_none)))
                .map(|r| r.to_string())
                .collect();
            Some((
                id.clone(),
                format!(
                    "rank(s) {} never reported their final fingerprint",
                    missing.join(", ")
                ),
            ))
        })
        .collect();
    for (id, reason) in overdue {
        jobs::end_job(state, now, &id, JobState::Failed, reason, out);
    }
    let timeout = state.limits.heartbeat_timeout_ms;
    let dead: Vec<WorkerId> = state
        .workers
        .iter()
        .filter(|(_, w)| now.mono_ms.saturating_sub(w.last_seen_ms) > timeout)
        .map(|(id, _)| id.clone())
        .collect();
    for id in dead {
        let Some(w) = state.workers.get(&id) else {
            continue;
        };
        tracing::warn!(worker = %id, name = %w.name, device = %w.device, "worker timed out");
        if let Some(job) = w.job.clone() {
            let rank = state
                .jobs
                .get(&job)
                .and_then(|j| j.run.as_ref())
                .and_then(|r| r.members.iter().position(|m| *m == id));
            let detail = format!(
                "worker {id} ({}, rank {}) stopped sending heartbeats for {:.1}s",
                w.name,
                rank.map_or("?".to_string(), |r| r.to_string()),
                timeout as f64 / 1e3
            );
            // Named while it is still registered, then forgotten.
            regroup::begin(
                state,
                now,
                &job,
                "lost",
                std::slice::from_ref(&id),
                detail,
                out,
            );
        }
        state.workers.remove(&id);
    }
    regroup::tick(state, now, out);
    schedule(state, now, out);
}

/// Starts every pending job that has enough free workers: at once when `workers.max` are
/// free, after the gather window when at least `workers.min` are.
pub(super) fn schedule(state: &mut State, now: Now, out: &mut Vec<Action>) {
    if state.draining {
        // A job started now could not be checkpointed before the coordinator exits.
        return;
    }
    let window = state.limits.gather_window_ms;
    let pending: Vec<JobId> = state
        .jobs
        .iter()
        .filter(|(_, j)| j.record.state == JobState::Pending)
        .map(|(id, _)| id.clone())
        .collect();
    let mut any = false;
    for id in pending {
        let free: Vec<WorkerId> = state.free_workers(&[]);
        let Some(job) = state.jobs.get_mut(&id) else {
            continue;
        };
        let (min, max) = (
            job.record.spec.workers.min as usize,
            job.record.spec.workers.max as usize,
        );
        let waited = now.mono_ms.saturating_sub(job.pending_since_ms);
        if free.len() < min || (free.len() < max && waited < window) {
            continue;
        }
        if job.data.is_none() {
            continue;
        }
        // A job resumed after a restart continues its generations, so that a message of a
        // group from before the restart is never taken for the new one's.
        let generation = job.record.generation + 1;
        let Some(job) = state.jobs.get(&id) else {
            continue;
        };
        // After a coordinator restart, the live workers' replicas are newer than the newest
        // checkpoint: their holders go first, the others fetch from one of them.
        let offered = regroup::start_from_offers(state, job, &free);
        let mut members: Vec<WorkerId> = match &offered {
            Some((_, holders, _)) => holders
                .iter()
                .cloned()
                .chain(free.iter().filter(|w| !holders.contains(w)).cloned())
                .collect(),
            None => free,
        };
        members.truncate(max);
        let start_step = offered
            .as_ref()
            .map_or_else(|| job.start.as_ref().map_or(0, |s| s.step), |(s, _, _)| *s);
        let assignments: Vec<Option<pb::Assignment>> = (0..members.len())
            .map(|r| match &offered {
                Some((_, holders, source)) => {
                    let from = if holders.contains(&members[r]) {
                        String::new()
                    } else {
                        source.clone()
                    };
                    regroup::assignment(
                        state, job, &members, generation, start_step, r, false, from,
                    )
                }
                None => regroup::assignment(
                    state,
                    job,
                    &members,
                    generation,
                    start_step,
                    r,
                    job.start.is_some(),
                    String::new(),
                ),
            })
            .collect();
        let checkpoint_step = job.start.as_ref().map_or(0, |s| s.step);
        let Some(job) = state.jobs.get_mut(&id) else {
            continue;
        };
        job.run = Some(Run {
            generation,
            members: members.clone(),
            rounds: BTreeMap::new(),
            fingerprints: BTreeMap::new(),
            last_round_ms: now.mono_ms,
            verified: 0,
            samples_per_s: 0.0,
            finishing_ms: None,
            drain: None,
            last_times: None,
            regroup: None,
        });
        job.record.state = JobState::Running;
        job.record.reason.clear();
        job.record.workers = members.len() as u32;
        job.record.generation = generation;
        job.offers.clear();
        if let Some((step, holders, source)) = offered {
            job.record.step = step;
            super::ledger::count_through(job, step);
            regroup::log_change(
                job,
                now,
                generation,
                "resumed",
                Vec::new(),
                format!(
                    "from the live workers' replicas at step {step} (the newest checkpoint is at step {checkpoint_step}): {} hold it, {} fetch it from {source}",
                    holders.len(),
                    members.len() - holders.len().min(members.len())
                ),
            );
        }
        if job.record.started_unix_ms == 0 {
            job.record.started_unix_ms = now.unix_ms;
        }
        out.push(Action::Publish(
            id.clone(),
            pb::JobEvent {
                event: Some(pb::job_event::Event::Snapshot(job.record.to_pb())),
            },
        ));
        out.push(Action::Persist(job.record.clone()));
        tracing::info!(job = %id, workers = members.len(), generation, start_step, "job started");
        for (w, a) in members.iter().zip(assignments) {
            if let Some(worker) = state.workers.get_mut(w) {
                worker.job = Some(id.clone());
                worker.assignment = a;
            }
        }
        any = true;
    }
    if any {
        out.push(Action::Assigned);
    }
    regroup::admit_joiners(state, now, out);
}
