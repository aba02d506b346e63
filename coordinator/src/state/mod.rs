//! The coordinator's jobs and membership as one owner: a plain [`State`], the [`Event`]s
//! that change it, and one transition, [`apply`], that turns an event into [`Action`]s.
//!
//! `apply` does no I/O and reads no clock: time comes in the event ([`Now`]), and what must
//! happen in the world — persist a record, publish a progress event, write the curves, fail
//! a reduction round, wake the workers waiting for assignments — comes out as actions that
//! the shell ([`crate::core::Coordinator`]) runs. So every failure mode can be scripted as
//! a sequence of events in a unit test, with no network and no sleeping (`tests.rs`).
//!
//! Answers to the caller are actions too: [`Action::Reply`] or [`Action::Refuse`], exactly
//! one per event. Reads that change nothing are plain functions on `&State` ([`queries`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use graft_common::{JobId, WorkerId};
use graft_proto::v1 as pb;
use graft_transfer::{Params, StepStats};

use crate::error::CoordinatorError;
use crate::job::JobRecord;
use crate::jobdata::JobData;
use crate::plot::History;
use crate::reduce::Round;

mod drain;
mod jobs;
pub mod ledger;
pub mod queries;
mod regroup;
mod steps;
mod workers;

#[cfg(test)]
mod tests;

pub use drain::Drain;
pub use regroup::{Held, Regroup};

/// The time an event happened, as values: the transition never reads a clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Now {
    /// Monotonic milliseconds since the coordinator started (timeouts, rates).
    pub mono_ms: u64,
    /// Wall-clock milliseconds since the Unix epoch (what the records show).
    pub unix_ms: u64,
}

/// The timeouts the transitions apply, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A worker silent this long is lost.
    pub heartbeat_timeout_ms: u64,
    /// A job waits this long for more than `workers.min` free workers.
    pub gather_window_ms: u64,
    /// A finishing job waits this long for its final fingerprints.
    pub step_timeout_ms: u64,
    /// A group below `workers.min` waits this long for workers before its job fails.
    pub regroup_timeout_ms: u64,
    /// No more workers than this are registered at once.
    pub max_workers: u32,
}

/// State handed to the workers when a job starts (a checkpoint, or weights from a file).
#[derive(Debug, Clone)]
pub struct StartState {
    /// Steps already done.
    pub step: u64,
    /// All parameters.
    pub params: Params,
    /// Optimizer state (empty: start the optimizer fresh).
    pub optimizer_state: Vec<f32>,
    /// Optimizer updates in the stage.
    pub optimizer_steps: u64,
}

impl StartState {
    /// Weights to start a job from (`init_from`), with a fresh optimizer.
    pub fn fresh(params: Params) -> Self {
        Self {
            step: 0,
            params,
            optimizer_state: Vec::new(),
            optimizer_steps: 0,
        }
    }
}

/// A registered worker.
#[derive(Debug)]
pub struct WorkerEntry {
    /// Its name (logs, reasons).
    pub name: String,
    /// Its device.
    pub device: String,
    /// Where its CollectiveService listens (ring peers connect there).
    pub collective: String,
    /// What its later calls must carry (`graft-worker-secret`).
    pub secret: String,
    /// Its place in the order of registration: free workers are taken, and ranked, in it
    /// (ids are random).
    pub seq: u64,
    /// When it was last heard of ([`Now::mono_ms`]).
    pub last_seen_ms: u64,
    /// The job it works on.
    pub job: Option<JobId>,
    /// Set by the scheduler, taken by the worker's `NextAssignment`.
    pub assignment: Option<pb::Assignment>,
}

/// A star round in progress.
#[derive(Debug)]
pub struct OpenRound {
    /// The round the ranks deposit into.
    pub round: Arc<Round>,
    /// When the first rank asked for it ([`Now::mono_ms`]).
    pub opened_ms: u64,
}

/// A running group.
#[derive(Debug)]
pub struct Run {
    /// Bumped whenever the group changes.
    pub generation: u64,
    /// Worker ids by rank.
    pub members: Vec<WorkerId>,
    /// The star's rounds by step.
    pub rounds: BTreeMap<u64, OpenRound>,
    /// Fingerprints by step, one slot per rank.
    pub fingerprints: BTreeMap<u64, Vec<Option<String>>>,
    /// When the last step was done ([`Now::mono_ms`]).
    pub last_round_ms: u64,
    /// Highest step at which every replica's fingerprint matched.
    pub verified: u64,
    /// Smoothed samples per second, for `/metrics`.
    pub samples_per_s: f64,
    /// Since when the final state is evaluated and checkpointed; the job completes once the
    /// final fingerprints match too, and fails if they do not come within `step_timeout_ms`.
    pub finishing_ms: Option<u64>,
    /// Set when the coordinator began shutting down while the job ran.
    pub drain: Option<Drain>,
    /// Rank 0's latest step times (the star sends them with its next gradient).
    pub last_times: Option<pb::StepTimes>,
    /// Set while the group re-forms (the job is RECONFIGURING): the old generation's
    /// members that hold their replicas and those that are gone.
    pub regroup: Option<Regroup>,
}

/// A job as the state holds it.
#[derive(Debug)]
pub struct JobEntry {
    /// The persisted record.
    pub record: JobRecord,
    /// Its data and network while it can still run.
    pub data: Option<Arc<JobData>>,
    /// Since when it waits for workers ([`Now::mono_ms`]).
    pub pending_since_ms: u64,
    /// Its group while it runs.
    pub run: Option<Run>,
    /// The state it starts from, if not fresh weights.
    pub start: Option<Arc<StartState>>,
    /// Loss and accuracy per step and the evaluations, for the curves.
    pub history: History,
    /// The permutation of the epoch the ledger is counting, by (stage, epoch).
    pub ledger_perm: Option<((usize, u64), Vec<usize>)>,
    /// A job waiting to start again after a restart: the replicas free workers still hold
    /// of its last generation.
    pub offers: BTreeMap<WorkerId, Held>,
}

impl JobEntry {
    /// A job that waits for workers from `now`.
    pub fn new(
        record: JobRecord,
        data: Option<Arc<JobData>>,
        start: Option<Arc<StartState>>,
        now: Now,
    ) -> Self {
        Self {
            record,
            data,
            pending_since_ms: now.mono_ms,
            run: None,
            start,
            history: History::default(),
            ledger_perm: None,
            offers: BTreeMap::new(),
        }
    }
}

/// The coordinator's jobs and workers.
#[derive(Debug)]
pub struct State {
    /// Registered workers.
    pub workers: BTreeMap<WorkerId, WorkerEntry>,
    /// Every job the store holds.
    pub jobs: BTreeMap<JobId, JobEntry>,
    /// The number in the next worker id.
    pub next_worker: u64,
    /// The coordinator is shutting down: no job starts, no step after each job's drain step.
    pub draining: bool,
    /// Its timeouts.
    pub limits: Limits,
    /// Drawn once per coordinator process: each group's key is derived from it, so that
    /// keys are unguessable and the transitions stay free of randomness.
    pub group_seed: [u8; graft_common::group_key::KEY_BYTES],
}

impl State {
    /// The free workers (no job) in the order they registered, except `but`.
    pub fn free_workers(&self, but: &[WorkerId]) -> Vec<WorkerId> {
        let mut free: Vec<(&WorkerId, u64)> = self
            .workers
            .iter()
            .filter(|(w, e)| e.job.is_none() && !but.contains(w))
            .map(|(w, e)| (w, e.seq))
            .collect();
        free.sort_by_key(|(_, seq)| *seq);
        free.into_iter().map(|(w, _)| w.clone()).collect()
    }

    /// An empty state whose group keys derive from `group_seed`.
    pub fn new(limits: Limits, group_seed: [u8; graft_common::group_key::KEY_BYTES]) -> Self {
        Self {
            workers: BTreeMap::new(),
            jobs: BTreeMap::new(),
            next_worker: 1,
            draining: false,
            limits,
            group_seed,
        }
    }
}

/// What a worker needs to take part in a reduction round.
#[derive(Debug, Clone)]
pub struct RoundTicket {
    /// The round.
    pub round: Arc<Round>,
    /// The worker's rank.
    pub rank: usize,
    /// Samples of this rank's part of the step's global batch.
    pub expected_samples: u64,
}

/// Something that happened, at a time.
#[derive(Debug)]
pub struct Event {
    /// When.
    pub at: Now,
    /// What.
    pub kind: EventKind,
}

/// What can happen to the coordinator's state.
#[derive(Debug)]
pub enum EventKind {
    /// A validated job whose data has been loaded (already in the store).
    JobSubmitted {
        /// Its record (boxed: a spec is large beside the other events).
        record: Box<JobRecord>,
        /// Its data.
        data: Arc<JobData>,
        /// Weights to start from, if any.
        start: Option<Arc<StartState>>,
    },
    /// A user cancels a job.
    CancelRequested {
        /// The job.
        job: JobId,
    },
    /// A user deletes a finished job, with its files.
    DeleteRequested {
        /// The job.
        job: JobId,
    },
    /// Something outside the state failed a job (a bad upload, a bad gradient).
    JobFailed {
        /// The job.
        job: JobId,
        /// Why.
        reason: String,
    },
    /// The final state was evaluated and checkpointed.
    FinalStateSaved {
        /// The job.
        job: JobId,
    },
    /// A worker registers.
    WorkerRegistered {
        /// Its id and secret, random (drawn by the shell).
        id: WorkerId,
        /// What its later calls must carry.
        secret: String,
        /// Its name.
        name: String,
        /// Its device.
        device: String,
        /// Its CollectiveService address.
        collective: String,
        /// The replica it still holds (it registers again after a coordinator restart).
        held: Option<(JobId, u64, Held)>,
    },
    /// A worker's heartbeat, naming the job it works on (empty: none) and the generation it
    /// trains in (0: unknown).
    Heartbeat {
        /// The worker.
        worker: WorkerId,
        /// Its job.
        job: String,
        /// Its generation.
        generation: u64,
    },
    /// A worker asks for its assignment, saying which replica it holds, if any.
    AssignmentPolled {
        /// The worker.
        worker: WorkerId,
        /// The replica it kept when its group fell apart.
        held: Option<(JobId, u64, Held)>,
    },
    /// A member gives up on its job, or (graceful) goes away and lets the group go on.
    WorkerLeft {
        /// The worker.
        worker: WorkerId,
        /// The job.
        job: JobId,
        /// Why.
        reason: String,
        /// A graceful leave: the group re-forms without the worker.
        graceful: bool,
    },
    /// A rank opens (or joins) the star round of a step.
    RoundOpened {
        /// The worker.
        worker: WorkerId,
        /// The job.
        job: JobId,
        /// The rank it claims.
        rank: u32,
        /// The step.
        step: u64,
        /// Its generation.
        generation: u64,
    },
    /// Every rank deposited; the round's sums.
    RoundCompleted {
        /// The job.
        job: JobId,
        /// The step.
        step: u64,
        /// The group's sums.
        stats: StepStats,
    },
    /// Rank 0's report of a ring step.
    RingStepReported {
        /// The worker.
        worker: WorkerId,
        /// The job.
        job: JobId,
        /// The rank it claims.
        rank: u32,
        /// The step (0-based).
        step: u64,
        /// Its generation.
        generation: u64,
        /// The group's sums.
        stats: StepStats,
        /// Where rank 0's step time went.
        times: Option<pb::StepTimes>,
    },
    /// Rank 0's step times, for the next progress event (the star).
    TimesNoted {
        /// The job.
        job: JobId,
        /// The times.
        times: pb::StepTimes,
    },
    /// A replica's parameter fingerprint after `step` steps.
    FingerprintReported {
        /// The worker.
        worker: WorkerId,
        /// The job.
        job: JobId,
        /// Steps done.
        step: u64,
        /// Its generation.
        generation: u64,
        /// The fingerprint.
        fingerprint: String,
    },
    /// An evaluation of an uploaded state.
    Evaluated {
        /// The job.
        job: JobId,
        /// What it measured.
        evaluation: pb::Evaluation,
        /// For an earlier stage's end: the prefix its metrics are kept under too.
        stage_prefix: Option<String>,
    },
    /// A checkpoint was written.
    Checkpointed {
        /// The job.
        job: JobId,
        /// Its record.
        checkpoint: crate::job::CheckpointRecord,
        /// How many the job keeps.
        keep: usize,
    },
    /// The coordinator begins shutting down.
    DrainBegan,
    /// Time passes: lost workers, overdue final fingerprints, jobs that can start.
    Tick,
}

/// The answer to an event.
#[derive(Debug)]
pub enum Reply {
    /// Done; nothing to say.
    Done,
    /// A registered worker's id.
    Registered(WorkerId),
    /// The jobs a worker must abandon; `None` when the worker is unknown (register again).
    Heartbeat(Option<Vec<String>>),
    /// A worker's assignment, if one waits; `drop_held` when the replica it holds is of no
    /// use any more (its job ended, or the worker is not in its group).
    Assignment {
        /// The assignment.
        assignment: Option<pb::Assignment>,
        /// Drop the held replica.
        drop_held: bool,
    },
    /// A rank's place in a star round.
    Round(RoundTicket),
    /// The step count at which a ring group stops (0: none).
    StopAt(u64),
    /// A job's record after the event.
    Record(JobRecord),
    /// The jobs a shutdown waits for, with the step of their checkpoint.
    Draining(Vec<(JobId, u64)>),
}

/// What the shell does after a transition.
#[derive(Debug)]
pub enum Action {
    /// Answer the caller.
    Reply(Reply),
    /// Refuse the caller; nothing changed.
    Refuse(CoordinatorError),
    /// Write a job's record to the store.
    Persist(JobRecord),
    /// Remove a deleted job's record from the store, and its directory (checkpoints,
    /// manifests, curves).
    Forget(JobId),
    /// Send an event to a job's watchers (in order, before the state lock is released).
    Publish(JobId, pb::JobEvent),
    /// Render and write a job's training curves.
    Curves {
        /// The job.
        job: JobId,
        /// The plot's title.
        title: String,
        /// What to draw.
        history: History,
    },
    /// Wake the handlers waiting on a star round: the job ended under them.
    FailRound {
        /// The round.
        round: Arc<Round>,
        /// Why.
        reason: String,
    },
    /// Assignments were made: wake the workers' long polls.
    Assigned,
    /// Fetch the replica of `job` at `step` from the survivor whose CollectiveService is at
    /// `from`, and checkpoint it: the group fell below `workers.min`, and the job may fail
    /// for want of workers.
    SaveReplica {
        /// The job.
        job: JobId,
        /// The survivor's CollectiveService address.
        from: String,
        /// The step its replica is at.
        step: u64,
    },
    /// A step was reduced (for `/metrics`).
    CountRound {
        /// Samples of the global batch.
        samples: u64,
        /// How long the reduction took, in milliseconds.
        took_ms: f64,
        /// Bytes the reduction moved.
        bytes: u64,
    },
}

/// The one transition: applies `event` to `state` and says what must happen outside.
/// Exactly one of the actions is a [`Action::Reply`] or an [`Action::Refuse`].
pub fn apply(state: &mut State, event: Event) -> Vec<Action> {
    let mut out = Vec::new();
    let now = event.at;
    let answer = match event.kind {
        EventKind::JobSubmitted {
            record,
            data,
            start,
        } => jobs::submitted(state, now, *record, data, start, &mut out),
        EventKind::CancelRequested { job } => jobs::cancel(state, now, &job, &mut out),
        EventKind::DeleteRequested { job } => jobs::delete(state, &job, &mut out),
        EventKind::JobFailed { job, reason } => {
            jobs::end_job(
                state,
                now,
                &job,
                crate::job::JobState::Failed,
                reason,
                &mut out,
            );
            Ok(Reply::Done)
        }
        EventKind::FinalStateSaved { job } => jobs::complete(state, now, &job, &mut out),
        EventKind::WorkerRegistered {
            id,
            secret,
            name,
            device,
            collective,
            held,
        } => workers::register(
            state,
            now,
            workers::Registration {
                id,
                secret,
                name,
                device,
                collective,
            },
            held,
            &mut out,
        ),
        EventKind::Heartbeat {
            worker,
            job,
            generation,
        } => workers::heartbeat(state, now, &worker, &job, generation),
        EventKind::AssignmentPolled { worker, held } => {
            regroup::poll(state, now, &worker, held, &mut out)
        }
        EventKind::WorkerLeft {
            worker,
            job,
            reason,
            graceful,
        } => jobs::leave(state, now, &worker, &job, &reason, graceful, &mut out),
        EventKind::RoundOpened {
            worker,
            job,
            rank,
            step,
            generation,
        } => steps::open_round(state, now, &worker, &job, rank, step, generation),
        EventKind::RoundCompleted { job, step, stats } => {
            steps::round_completed(state, now, &job, step, stats, &mut out)
        }
        EventKind::RingStepReported {
            worker,
            job,
            rank,
            step,
            generation,
            stats,
            times,
        } => steps::ring_step(
            state,
            now,
            steps::RingReport {
                worker: &worker,
                job: &job,
                rank,
                step,
                generation,
                stats,
                times,
            },
            &mut out,
        ),
        EventKind::TimesNoted { job, times } => {
            if let Some(run) = state.jobs.get_mut(&job).and_then(|j| j.run.as_mut()) {
                run.last_times = Some(times);
            }
            Ok(Reply::Done)
        }
        EventKind::FingerprintReported {
            worker,
            job,
            step,
            generation,
            fingerprint,
        } => steps::fingerprint(
            state,
            now,
            &worker,
            &job,
            step,
            generation,
            fingerprint,
            &mut out,
        ),
        EventKind::Evaluated {
            job,
            evaluation,
            stage_prefix,
        } => jobs::evaluated(state, &job, evaluation, stage_prefix, &mut out),
        EventKind::Checkpointed {
            job,
            checkpoint,
            keep,
        } => jobs::checkpointed(state, &job, checkpoint, keep, &mut out),
        EventKind::DrainBegan => Ok(Reply::Draining(drain::begin(state))),
        EventKind::Tick => {
            workers::tick(state, now, &mut out);
            Ok(Reply::Done)
        }
    };
    out.push(match answer {
        Ok(r) => Action::Reply(r),
        Err(e) => Action::Refuse(e),
    });
    out
}

/// The upper-case name of a state.
pub fn state_word(s: crate::job::JobState) -> &'static str {
    graft_common::wire::state_name(s.to_pb())
}
