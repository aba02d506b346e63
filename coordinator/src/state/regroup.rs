//! Elastic groups: a job whose group loses a member, or gains one, re-forms at a step
//! boundary with the next generation, from the replicas its survivors hold.
//!
//! The sequence: something breaks the group (a worker lost to its heartbeats, a graceful
//! leave, a member whose collective failed, a free worker that can join) → [`begin`] puts
//! the job in RECONFIGURING, fails the star's open rounds and has every member's heartbeat
//! answer tell it to stop; each member stops after the last step it completed, keeps its
//! replica and says so in its next `NextAssignment` ([`poll`]) → once every member of the
//! old generation has either reported or is gone, [`try_form`] forms generation + 1 from
//! the survivors (in their old rank order) and free workers, starting at the highest step a
//! survivor holds. Survivors at that step keep their replicas; the others, and joiners,
//! fetch it from a survivor over the CollectiveService (`state_from`). No partial step is
//! ever applied: a step is applied only once the group's sum is in, so each survivor is
//! at a step boundary. The global batch stays the same, so the rest of the epoch is simply
//! re-partitioned among the new ranks by the shard planner.

use std::collections::{BTreeMap, BTreeSet};

use graft_common::wire::{class_vectors_to_pb, spec_to_pb, stage_to_pb};
use graft_common::{JobId, WorkerId};
use graft_proto::v1 as pb;

use super::{Action, JobEntry, Now, Reply, State, jobs, ledger};
use crate::error::CoordinatorError;
use crate::job::{JobState, MembershipChange};

/// A survivor's replica, as it reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Steps it has done.
    pub step: u64,
    /// Its parameters' fingerprint.
    pub fingerprint: String,
    /// Why its group fell apart, as the survivor saw it.
    pub why: String,
    /// The rank of the neighbour the survivor's failure points at.
    pub suspect: Option<u32>,
}

/// A group that is re-forming.
#[derive(Debug, Clone, Default)]
pub struct Regroup {
    /// Members of the old generation that hold their replicas.
    pub held: BTreeMap<WorkerId, Held>,
    /// Members of the old generation that are gone (lost, left).
    pub gone: BTreeSet<WorkerId>,
    /// Since when the group waits below `workers.min` for workers.
    pub waiting_since_ms: Option<u64>,
}

/// `id (name)` of each worker, for reasons and the membership log.
fn names(state: &State, who: &[WorkerId]) -> Vec<String> {
    who.iter()
        .map(|w| match state.workers.get(w) {
            Some(e) => format!("{w} ({})", e.name),
            None => w.to_string(),
        })
        .collect()
}

pub(super) fn log_change(
    job: &mut JobEntry,
    now: Now,
    generation: u64,
    cause: &str,
    workers: Vec<String>,
    detail: String,
) {
    tracing::info!(job = %job.record.id, generation, cause, workers = ?workers, %detail, "membership change");
    job.record.changes.push(MembershipChange {
        generation,
        step: job.record.step,
        cause: cause.to_string(),
        workers,
        detail,
        unix_ms: now.unix_ms,
    });
}

fn publish_snapshot(job: &JobEntry, out: &mut Vec<Action>) {
    out.push(Action::Publish(
        job.record.id.clone(),
        pb::JobEvent {
            event: Some(pb::job_event::Event::Snapshot(job.record.to_pb())),
        },
    ));
    out.push(Action::Persist(job.record.clone()));
}

/// Starts (or adds to) the re-forming of `id`'s group: `gone` are members that will not
/// come back. `cause` is one of the membership-change causes.
pub(super) fn begin(
    state: &mut State,
    now: Now,
    id: &JobId,
    cause: &str,
    gone: &[WorkerId],
    detail: String,
    out: &mut Vec<Action>,
) {
    let who = names(state, gone);
    let Some(job) = state.jobs.get_mut(id) else {
        return;
    };
    if job.record.state.is_terminal() {
        return;
    }
    let Some(run) = job.run.as_mut() else {
        return;
    };
    if let Some(d) = run.drain.as_mut() {
        // The coordinator is going down: the job resumes from its newest checkpoint after the
        // restart instead, and the shutdown need not wait for a state that will not come.
        tracing::warn!(job = %id, cause, %detail, "the group changed during the shutdown; the job resumes after the restart");
        d.abandoned = true;
        return;
    }
    let fresh = run.regroup.is_none();
    let regroup = run.regroup.get_or_insert_with(Regroup::default);
    for w in gone {
        if run.members.contains(w) {
            regroup.gone.insert(w.clone());
            regroup.held.remove(w);
        }
    }
    if fresh {
        // The step in flight is abandoned everywhere: its round fails, and a member that
        // asks for it or the next one is told the group is re-forming.
        for (_, open) in std::mem::take(&mut run.rounds) {
            out.push(Action::FailRound {
                round: open.round,
                reason: format!("job {id} is regrouping: {detail}"),
            });
        }
        run.fingerprints.clear();
        job.record.state = JobState::Reconfiguring;
    }
    job.record.reason = format!("regrouping: {detail}");
    log_change(job, now, 0, cause, who, detail);
    publish_snapshot(job, out);
    for w in gone {
        if let Some(e) = state.workers.get_mut(w)
            && e.job.as_ref() == Some(id)
        {
            e.job = None;
            e.assignment = None;
        }
    }
    try_form(state, now, id, out);
}

/// The assignment of `rank` in `members` at `generation`, starting at `start_step`.
#[allow(clippy::too_many_arguments)]
pub(super) fn assignment(
    state: &State,
    job: &JobEntry,
    members: &[WorkerId],
    generation: u64,
    start_step: u64,
    rank: usize,
    has_initial_state: bool,
    state_from: String,
) -> Option<pb::Assignment> {
    let data = job.data.as_ref()?;
    Some(pb::Assignment {
        job_id: job.record.id.0.clone(),
        spec: Some(spec_to_pb(&job.record.spec)),
        rank: rank as u32,
        world_size: members.len() as u32,
        generation,
        stages: data.stages.iter().map(stage_to_pb).collect(),
        input_shape: data.arch.input_shape.iter().map(|&d| d as u32).collect(),
        num_classes: data.arch.num_classes as u32,
        start_step,
        has_initial_state,
        class_vectors: data
            .method_data
            .class_vectors
            .as_ref()
            .map(class_vectors_to_pb),
        peers: members
            .iter()
            .map(|m| {
                state
                    .workers
                    .get(m)
                    .map(|w| w.collective.clone())
                    .unwrap_or_default()
            })
            .collect(),
        state_from,
        group_key: graft_common::group_key::GroupKey::derive(
            &state.group_seed,
            &job.record.id.0,
            generation,
        )
        .as_bytes()
        .to_vec(),
    })
}

/// Forms the next generation once every member of the old one has reported or is gone,
/// and enough workers are there for `workers.min`.
pub(super) fn try_form(state: &mut State, now: Now, id: &JobId, out: &mut Vec<Action>) {
    let Some(job) = state.jobs.get(id) else {
        return;
    };
    let Some(run) = job.run.as_ref() else {
        return;
    };
    let Some(regroup) = run.regroup.as_ref() else {
        return;
    };
    let waiting = run
        .members
        .iter()
        .any(|m| !regroup.held.contains_key(m) && !regroup.gone.contains(m));
    if waiting {
        return;
    }
    let survivors: Vec<(WorkerId, Held)> = run
        .members
        .iter()
        .filter_map(|m| regroup.held.get(m).map(|h| (m.clone(), h.clone())))
        .collect();
    let (min, max) = (
        job.record.spec.workers.min.max(1) as usize,
        job.record.spec.workers.max.max(1) as usize,
    );
    let free: Vec<WorkerId> = if state.draining {
        Vec::new()
    } else {
        let mut free = state.free_workers(&run.members);
        free.truncate(max.saturating_sub(survivors.len()));
        free
    };
    let mut members: Vec<WorkerId> = survivors.iter().map(|(w, _)| w.clone()).collect();
    members.extend(free.iter().cloned());
    members.truncate(max);
    if survivors.is_empty() {
        let reason = format!(
            "every worker of generation {} was lost, and with them the replicas; resubmit to start again (the newest checkpoint is kept)",
            run.generation
        );
        jobs::end_job(state, now, id, JobState::Failed, reason, out);
        return;
    }
    if members.len() < min {
        let n = members.len();
        let newest = survivors.iter().map(|(_, h)| h.step).max().unwrap_or(0);
        let saved = job.record.checkpoints.last().map_or(0, |c| c.step);
        let save = survivors
            .iter()
            .find(|(_, h)| h.step == newest)
            .and_then(|(w, _)| state.workers.get(w))
            .map(|e| e.collective.clone())
            .filter(|_| newest > saved);
        let Some(job) = state.jobs.get_mut(id) else {
            return;
        };
        let Some(regroup) = job.run.as_mut().and_then(|r| r.regroup.as_mut()) else {
            return;
        };
        if regroup.waiting_since_ms.is_none() {
            regroup.waiting_since_ms = Some(now.mono_ms);
            let detail = format!(
                "{n} of workers.min = {min} workers; waiting up to {:.0} s for more",
                state.limits.regroup_timeout_ms as f64 / 1e3
            );
            job.record.reason = format!("regrouping: {detail}");
            log_change(job, now, 0, "waiting", Vec::new(), detail);
            publish_snapshot(job, out);
            // The survivors' state is checkpointed at once: if no worker comes, the job fails
            // having lost nothing they held.
            if let Some(from) = save {
                out.push(Action::SaveReplica {
                    job: id.clone(),
                    from,
                    step: newest,
                });
            }
        }
        return;
    }
    let start = survivors.iter().map(|(_, h)| h.step).max().unwrap_or(0);
    let at_start: Vec<&(WorkerId, Held)> =
        survivors.iter().filter(|(_, h)| h.step == start).collect();
    if let Some((_, first)) = at_start.first()
        && let Some((w, other)) = at_start
            .iter()
            .map(|(w, h)| (w, h))
            .find(|(_, h)| h.fingerprint != first.fingerprint)
    {
        let reason = format!(
            "replicas diverged at step {start}: {} holds {}, another survivor {}",
            w, other.fingerprint, first.fingerprint
        );
        jobs::end_job(state, now, id, JobState::Failed, reason, out);
        return;
    }
    let source = at_start
        .first()
        .and_then(|(w, _)| state.workers.get(w))
        .map(|e| e.collective.clone())
        .unwrap_or_default();
    let keeps: BTreeSet<&WorkerId> = at_start.iter().map(|(w, _)| w).collect();
    let generation = run.generation + 1;
    let assignments: Vec<Option<pb::Assignment>> = (0..members.len())
        .map(|r| {
            let from = if keeps.contains(&members[r]) {
                String::new()
            } else {
                source.clone()
            };
            assignment(state, job, &members, generation, start, r, false, from)
        })
        .collect();
    let fetching = members.len() - keeps.len();
    let detail = format!(
        "{} workers from step {start}: {} continue their replicas, {fetching} fetch it from {source}",
        members.len(),
        keeps.len()
    );
    let who = names(state, &members);
    let joined = names(state, &free);
    let Some(job) = state.jobs.get_mut(id) else {
        return;
    };
    // The ring's rank 0 may not have reported the last steps the survivors completed.
    ledger::count_through(job, start);
    let Some(run_ref) = job.run.as_mut() else {
        return;
    };
    run_ref.generation = generation;
    run_ref.members = members.clone();
    run_ref.rounds.clear();
    run_ref.fingerprints.clear();
    run_ref.last_round_ms = now.mono_ms;
    run_ref.finishing_ms = None;
    run_ref.regroup = None;
    run_ref.verified = run_ref.verified.min(start);
    job.record.state = JobState::Running;
    job.record.reason.clear();
    job.record.step = start;
    job.record.workers = members.len() as u32;
    job.record.generation = generation;
    if !joined.is_empty() {
        log_change(job, now, generation, "joined", joined, String::new());
    }
    log_change(job, now, generation, "formed", who, detail);
    publish_snapshot(job, out);
    for (w, a) in members.iter().zip(assignments) {
        if let Some(e) = state.workers.get_mut(w) {
            e.job = Some(id.clone());
            e.assignment = a;
        }
    }
    out.push(Action::Assigned);
}

/// A worker asks for its assignment, naming the replica it holds: the answer is the
/// assignment waiting for it, if any; the replica joins the re-forming of its group.
pub(super) fn poll(
    state: &mut State,
    now: Now,
    worker: &WorkerId,
    held: Option<(JobId, u64, Held)>,
    out: &mut Vec<Action>,
) -> Result<Reply, CoordinatorError> {
    let w = state
        .workers
        .get_mut(worker)
        .ok_or_else(|| CoordinatorError::UnknownWorker(worker.to_string()))?;
    w.last_seen_ms = now.mono_ms;
    if let Some(a) = w.assignment.take() {
        return Ok(Reply::Assignment {
            assignment: Some(a),
            drop_held: false,
        });
    }
    let Some((id, generation, h)) = held else {
        // A member of a re-forming group that holds no replica (it lost it, or never had
        // one) will not report one: it is gone, or the group would wait for it forever.
        let job = state.workers.get(worker).and_then(|e| e.job.clone());
        if let Some(job) = job
            && let Some(g) = state
                .jobs
                .get_mut(&job)
                .and_then(|j| j.run.as_mut())
                .filter(|r| r.members.contains(worker))
                .and_then(|r| r.regroup.as_mut())
            && !g.held.contains_key(worker)
        {
            g.gone.insert(worker.clone());
            if let Some(e) = state.workers.get_mut(worker) {
                e.job = None;
            }
            try_form(state, now, &job, out);
        }
        let assignment = state
            .workers
            .get_mut(worker)
            .and_then(|e| e.assignment.take());
        return Ok(Reply::Assignment {
            assignment,
            drop_held: false,
        });
    };
    if let Some(offer) = offer_to_pending(state, now, worker, &id, generation, &h, out) {
        return Ok(offer);
    }
    let member = state.jobs.get(&id).and_then(|j| {
        let run = j.run.as_ref().filter(|_| !j.record.state.is_terminal())?;
        let gone = run
            .regroup
            .as_ref()
            .is_some_and(|g| g.gone.contains(worker));
        (run.members.contains(worker) && !gone).then_some((run.generation, run.regroup.is_some()))
    });
    let Some((current, regrouping)) = member else {
        // Its job ended, or the group went on without it: the replica is of no use.
        if let Some(e) = state.workers.get_mut(worker)
            && e.job.as_ref() == Some(&id)
        {
            e.job = None;
        }
        return Ok(Reply::Assignment {
            assignment: None,
            drop_held: true,
        });
    };
    if generation != current {
        // A replica of an older generation than the group's: of no use, and its holder will
        // report no other.
        if regrouping
            && let Some(g) = state
                .jobs
                .get_mut(&id)
                .and_then(|j| j.run.as_mut())
                .and_then(|r| r.regroup.as_mut())
        {
            g.gone.insert(worker.clone());
            if let Some(e) = state.workers.get_mut(worker) {
                e.job = None;
            }
            try_form(state, now, &id, out);
        }
        return Ok(Reply::Assignment {
            assignment: None,
            drop_held: true,
        });
    }
    let step = h.step;
    if let Some(g) = state
        .jobs
        .get_mut(&id)
        .and_then(|j| j.run.as_mut())
        .and_then(|r| r.regroup.as_mut())
    {
        g.held.insert(worker.clone(), h.clone());
    }
    if regrouping {
        try_form(state, now, &id, out);
    } else {
        let rank = state
            .jobs
            .get(&id)
            .and_then(|j| j.run.as_ref())
            .and_then(|r| r.members.iter().position(|m| m == worker))
            .unwrap_or(0);
        let name = names(state, std::slice::from_ref(worker)).join("");
        // The member the survivor's failure points at is named first: that is the one that
        // most likely died or hung, not the survivor that reports it.
        let suspect = h
            .suspect
            .and_then(|r| {
                let run = state.jobs.get(&id)?.run.as_ref()?;
                let m = run.members.get(r as usize)?;
                Some(format!(
                    "{}, rank {r}, failed the ring of {name}, rank {rank}",
                    names(state, std::slice::from_ref(m)).join("")
                ))
            })
            .unwrap_or_else(|| format!("{name}, rank {rank}, lost its group"));
        let why = if h.why.is_empty() {
            String::new()
        } else {
            format!(": {}", h.why.escape_debug())
        };
        begin(
            state,
            now,
            &id,
            "group-failed",
            &[],
            format!("{suspect} after step {step}{why}"),
            out,
        );
        if let Some(g) = state
            .jobs
            .get_mut(&id)
            .and_then(|j| j.run.as_mut())
            .and_then(|r| r.regroup.as_mut())
        {
            g.held.insert(worker.clone(), h);
        }
        try_form(state, now, &id, out);
    }
    let assignment = state
        .workers
        .get_mut(worker)
        .and_then(|e| e.assignment.take());
    Ok(Reply::Assignment {
        assignment,
        drop_held: false,
    })
}

/// A replica held for a job that waits to start again after a coordinator restart: kept as
/// an offer for the scheduler, which starts the job from the live replicas rather than from
/// its newest checkpoint when they are of the job's last generation and agree. `None` when
/// the job is not such a job.
fn offer_to_pending(
    state: &mut State,
    now: Now,
    worker: &WorkerId,
    id: &JobId,
    generation: u64,
    h: &Held,
    out: &mut Vec<Action>,
) -> Option<Reply> {
    let job = state.jobs.get(id)?;
    if job.record.state != JobState::Pending || job.data.is_none() {
        return None;
    }
    if !offer(state, worker, id, generation, h) {
        return Some(Reply::Assignment {
            assignment: None,
            drop_held: true,
        });
    }
    super::workers::schedule(state, now, out);
    let assignment = state
        .workers
        .get_mut(worker)
        .and_then(|e| e.assignment.take());
    Some(Reply::Assignment {
        assignment,
        drop_held: false,
    })
}

/// Keeps `worker`'s replica as an offer for pending job `id` when it is of the job's last
/// generation and not behind the job's checkpoint; whether it was kept.
pub(super) fn offer(
    state: &mut State,
    worker: &WorkerId,
    id: &JobId,
    generation: u64,
    h: &Held,
) -> bool {
    let Some(job) = state.jobs.get_mut(id) else {
        return false;
    };
    let from = job.start.as_ref().map_or(0, |s| s.step);
    let usable = job.record.state == JobState::Pending
        && job.data.is_some()
        && generation == job.record.generation
        && generation > 0
        && h.step >= from
        && h.step < job.record.total_steps;
    if usable {
        job.offers.insert(worker.clone(), h.clone());
    }
    usable
}

/// Where a pending job starts from the replicas its free workers offer: the step, the
/// workers holding it, and the collective address to fetch it from. `None` when no offer is
/// usable (or the offers at the highest step disagree: then the checkpoint is safer).
pub(super) fn start_from_offers(
    state: &State,
    job: &JobEntry,
    free: &[WorkerId],
) -> Option<(u64, BTreeSet<WorkerId>, String)> {
    let offers: Vec<(&WorkerId, &Held)> = job
        .offers
        .iter()
        .filter(|(w, _)| free.contains(w))
        .collect();
    let step = offers.iter().map(|(_, h)| h.step).max()?;
    let top: Vec<&(&WorkerId, &Held)> = offers.iter().filter(|(_, h)| h.step == step).collect();
    let first = &top.first()?.1.fingerprint;
    if top.iter().any(|(_, h)| h.fingerprint != *first) {
        tracing::warn!(job = %job.record.id, step, "the live replicas disagree; starting from the checkpoint");
        return None;
    }
    let holders: BTreeSet<WorkerId> = top.iter().map(|(w, _)| (*w).clone()).collect();
    let source = top
        .first()
        .and_then(|(w, _)| state.workers.get(*w))
        .map(|e| e.collective.clone())?;
    Some((step, holders, source))
}

/// The periodic part: jobs that waited below `workers.min` for too long fail; re-forming
/// groups try again (workers may have come).
pub(super) fn tick(state: &mut State, now: Now, out: &mut Vec<Action>) {
    let timeout = state.limits.regroup_timeout_ms;
    let regrouping: Vec<(JobId, Option<u64>)> = state
        .jobs
        .iter()
        .filter_map(|(id, j)| {
            let g = j.run.as_ref()?.regroup.as_ref()?;
            Some((id.clone(), g.waiting_since_ms))
        })
        .collect();
    for (id, waiting) in regrouping {
        if let Some(since) = waiting
            && now.mono_ms.saturating_sub(since) > timeout
        {
            let min = state.jobs.get(&id).map_or(0, |j| j.record.spec.workers.min);
            let reason = format!(
                "fewer than workers.min = {min} workers for {:.0} s (regroup_timeout_ms) after the group lost members; its newest checkpoint is kept",
                timeout as f64 / 1e3
            );
            jobs::end_job(state, now, &id, JobState::Failed, reason, out);
        } else {
            try_form(state, now, &id, out);
        }
    }
}

/// Free workers join running groups below `workers.max` (once no job waits for them).
pub(super) fn admit_joiners(state: &mut State, now: Now, out: &mut Vec<Action>) {
    if state.draining
        || state
            .jobs
            .values()
            .any(|j| j.record.state == JobState::Pending)
    {
        return;
    }
    let mut free: Vec<WorkerId> = state.free_workers(&[]);
    if free.is_empty() {
        return;
    }
    let growing: Vec<JobId> = state
        .jobs
        .iter()
        .filter(|(_, j)| {
            j.record.state == JobState::Running
                && j.record.step < j.record.total_steps
                && j.run.as_ref().is_some_and(|r| {
                    r.regroup.is_none()
                        && r.finishing_ms.is_none()
                        && r.members.len() < j.record.spec.workers.max as usize
                })
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in growing {
        if free.is_empty() {
            return;
        }
        let room = state.jobs.get(&id).map_or(0, |j| {
            (j.record.spec.workers.max as usize)
                .saturating_sub(j.run.as_ref().map_or(0, |r| r.members.len()))
        });
        let joining: Vec<WorkerId> = free.drain(..room.min(free.len())).collect();
        let who = names(state, &joining).join(", ");
        begin(
            state,
            now,
            &id,
            "joining",
            &[],
            format!("{who} can join the group"),
            out,
        );
    }
}
