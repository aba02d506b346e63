//! The coordinator's state and its transitions: workers, jobs, groups, rounds.
//!
//! One owner: every handler goes through [`Coordinator`], whose state sits behind one
//! synchronous mutex that is never held across an `.await` (so a plain `std` mutex is right
//! and cheaper than an async one). Job records are persisted under the lock (a short redb
//! commit) so that the store never holds an older state than memory; slow work — loading
//! data, evaluating, writing checkpoints — happens outside the lock on blocking threads.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use graft_proto::v1 as pb;
use graft_transfer::{JobSpec, Params};
use tokio::sync::{Notify, broadcast};

use crate::checkpoint::CheckpointDir;
use crate::config::CoordinatorConfig;
use crate::error::CoordinatorError;
use crate::job::{JobId, JobRecord, JobState, now_ms};
use crate::jobdata::JobData;
use crate::plot::{self, History};
use crate::reduce::{Reduced, Round};
use crate::store::Store;
use graft_common::wire::{class_vectors_to_pb, spec_to_pb, stage_to_pb};
use graft_transfer::StepStats;

/// A worker's id: `w-<boot>-<n>`, unique across coordinator restarts.
pub type WorkerId = String;

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

#[derive(Debug)]
struct WorkerEntry {
    name: String,
    device: String,
    /// Where its CollectiveService listens (ring peers connect there).
    collective: String,
    last_seen: Instant,
    job: Option<JobId>,
    /// Set by the scheduler, taken by the worker's `NextAssignment`.
    assignment: Option<pb::Assignment>,
}

/// A running group.
#[derive(Debug)]
pub struct Run {
    /// Bumped whenever the group changes.
    pub generation: u64,
    /// Worker ids by rank.
    pub members: Vec<WorkerId>,
    rounds: BTreeMap<u64, Arc<Round>>,
    fingerprints: BTreeMap<u64, Vec<Option<String>>>,
    last_round_at: Instant,
    /// Highest step at which every replica's fingerprint matched.
    verified: u64,
    /// Smoothed samples per second, for `/metrics`.
    samples_per_s: f64,
    /// Since when the final state is evaluated and checkpointed; the job completes once the
    /// final fingerprints match too, and fails if they do not come within `step_timeout_ms`.
    finishing: Option<Instant>,
    /// Set when the coordinator began shutting down while the job ran.
    drain: Option<drain::Drain>,
    /// Rank 0's latest step times (the star sends them with its next gradient).
    last_times: Option<pb::StepTimes>,
}

struct JobEntry {
    record: JobRecord,
    data: Option<Arc<JobData>>,
    /// Progress, evaluations and the end, for `WatchJob` subscribers; sent under the lock.
    events: broadcast::Sender<pb::JobEvent>,
    pending_since: Instant,
    run: Option<Run>,
    start: Option<Arc<StartState>>,
    /// Serialises the processing of uploaded states (evaluation, checkpoint, completion).
    state_lock: Arc<tokio::sync::Mutex<()>>,
    /// Loss and accuracy per step and the evaluations, for the curves.
    history: History,
}

impl JobEntry {
    fn new(record: JobRecord, data: Option<Arc<JobData>>, start: Option<Arc<StartState>>) -> Self {
        Self {
            record,
            data,
            events: broadcast::channel(1024).0,
            pending_since: Instant::now(),
            run: None,
            start,
            state_lock: Arc::new(tokio::sync::Mutex::new(())),
            history: History::default(),
        }
    }
}

struct Core {
    workers: BTreeMap<WorkerId, WorkerEntry>,
    jobs: BTreeMap<JobId, JobEntry>,
    next_worker: u64,
    /// The coordinator is shutting down: no job starts, no step after each job's drain step.
    draining: bool,
}

/// The coordinator.
pub struct Coordinator {
    core: Mutex<Core>,
    store: Store,
    /// Its configuration.
    pub config: CoordinatorConfig,
    /// Counters for `/metrics`, updated on the step path without the lock.
    pub counters: crate::metrics::Counters,
    /// Woken whenever assignments are made, so long-polling workers pick them up.
    assigned: Notify,
    boot: u64,
}

/// What a worker needs to take part in a reduction round.
pub struct RoundTicket {
    /// The round.
    pub round: Arc<Round>,
    /// The worker's rank.
    pub rank: usize,
    /// Samples of this rank's part of the step's global batch.
    pub expected_samples: u64,
}

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

/// A job's identity and setup for a state upload.
pub struct JobHandle {
    /// The record as it is now.
    pub record: JobRecord,
    /// Its data and network.
    pub data: Arc<JobData>,
    /// Serialises state processing.
    pub state_lock: Arc<tokio::sync::Mutex<()>>,
}

impl Coordinator {
    /// A coordinator over `store`, resuming the jobs it holds: unfinished jobs go back to
    /// `PENDING` and start again from their newest valid checkpoint.
    ///
    /// # Errors
    /// [`CoordinatorError::Store`] when the store cannot be read.
    pub fn new(config: CoordinatorConfig, store: Store) -> Result<Self, CoordinatorError> {
        let mut jobs = BTreeMap::new();
        for mut record in store.all()? {
            let mut data = None;
            let mut start = None;
            if !record.state.is_terminal() {
                match JobData::load(&record.spec, &config.datasets_dir()) {
                    Ok(d) => {
                        let d = Arc::new(d);
                        let ckpt =
                            CheckpointDir::new(config.job_dir(&record.id).join("checkpoints"));
                        start = match ckpt.latest_valid(&d.arch) {
                            Some(l) => {
                                record.step = l.manifest.step;
                                Some(Arc::new(StartState {
                                    step: l.manifest.step,
                                    params: l.params,
                                    optimizer_state: l.optimizer_state,
                                    optimizer_steps: l.manifest.optimizer_steps,
                                }))
                            }
                            None => {
                                record.step = 0;
                                d.init_params.clone().map(|p| {
                                    Arc::new(StartState {
                                        step: 0,
                                        params: p,
                                        optimizer_state: Vec::new(),
                                        optimizer_steps: 0,
                                    })
                                })
                            }
                        };
                        if record.step >= d.total_steps() {
                            // The final checkpoint was written but the coordinator stopped
                            // before it recorded the end: the job is done.
                            tracing::info!(job = %record.id, step = record.step, "job had finished before the restart");
                            record.state = JobState::Completed;
                            record.reason.clear();
                            record.finished_unix_ms = now_ms();
                            if let Some(l) = ckpt.latest_valid(&d.arch) {
                                record.metrics.extend(l.manifest.metrics.clone());
                                if record.checkpoints.last().map(|c| c.step)
                                    != Some(l.manifest.step)
                                {
                                    record.checkpoints.push(ckpt.record_of(&l.manifest));
                                }
                            }
                            start = None;
                        } else {
                            tracing::info!(job = %record.id, step = record.step, "resuming job after restart");
                            record.state = JobState::Pending;
                            record.reason = format!(
                                "coordinator restarted; resuming from step {}",
                                record.step
                            );
                            data = Some(d);
                        }
                    }
                    Err(e) => {
                        record.state = JobState::Failed;
                        record.reason = format!("cannot resume after restart: {e}");
                        record.finished_unix_ms = now_ms();
                    }
                }
                store.put(&record)?;
            }
            jobs.insert(record.id.clone(), JobEntry::new(record, data, start));
        }
        Ok(Self {
            core: Mutex::new(Core {
                workers: BTreeMap::new(),
                jobs,
                next_worker: 1,
                draining: false,
            }),
            store,
            config,
            counters: crate::metrics::Counters::default(),
            assigned: Notify::new(),
            boot: now_ms() % 0xFFFF_FFFF,
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, Core>, CoordinatorError> {
        self.core
            .lock()
            .map_err(|_| CoordinatorError::Internal("state lock poisoned".into()))
    }

    fn persist(&self, record: &JobRecord) {
        if let Err(e) = self.store.put(record) {
            tracing::error!(job = %record.id, error = %e, "cannot persist job");
        }
    }
}

/// The upper-case name of a state.
pub fn state_word(s: JobState) -> &'static str {
    graft_common::wire::state_name(s.to_pb())
}

mod drain;
mod jobs;
mod steps;
mod workers;

#[cfg(test)]
mod tests;
