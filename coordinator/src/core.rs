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
use std::time::{Duration, Instant};

use graft_proto::v1 as pb;
use graft_transfer::{JobSpec, Params, shard};
use tokio::sync::{Notify, broadcast};

use crate::checkpoint::CheckpointDir;
use crate::config::CoordinatorConfig;
use crate::error::CoordinatorError;
use crate::job::{JobId, JobRecord, JobState, now_ms};
use crate::jobdata::JobData;
use crate::plot::{self, History};
use crate::reduce::{Reduced, Round, Stats};
use crate::store::Store;
use crate::wire::{spec_to_pb, stage_to_pb};

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
    /// The final state was evaluated and checkpointed; the job completes once the final
    /// fingerprints match too.
    finishing: bool,
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

struct Core {
    workers: BTreeMap<WorkerId, WorkerEntry>,
    jobs: BTreeMap<JobId, JobEntry>,
    next_worker: u64,
}

/// The coordinator.
pub struct Coordinator {
    core: Mutex<Core>,
    store: Store,
    /// Its configuration.
    pub config: CoordinatorConfig,
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
            let id = record.id.clone();
            jobs.insert(
                id,
                JobEntry {
                    record,
                    data,
                    events: broadcast::channel(1024).0,
                    pending_since: Instant::now(),
                    run: None,
                    start,
                    state_lock: Arc::new(tokio::sync::Mutex::new(())),
                    history: History::default(),
                },
            );
        }
        Ok(Self {
            core: Mutex::new(Core {
                workers: BTreeMap::new(),
                jobs,
                next_worker: 1,
            }),
            store,
            config,
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

    // ------------------------------------------------------------------ jobs

    /// Accepts a validated spec whose data has been loaded.
    ///
    /// # Errors
    /// [`CoordinatorError::Store`] when the job cannot be persisted (then it does not exist).
    pub fn submit(&self, spec: JobSpec, data: JobData) -> Result<JobRecord, CoordinatorError> {
        let id = self.store.next_job_id()?;
        let record = JobRecord::new(id.clone(), spec, data.total_steps());
        self.store.put(&record)?;
        let start = data.init_params.clone().map(|p| {
            Arc::new(StartState {
                step: 0,
                params: p,
                optimizer_state: Vec::new(),
                optimizer_steps: 0,
            })
        });
        let mut core = self.lock()?;
        core.jobs.insert(
            id.clone(),
            JobEntry {
                record: record.clone(),
                data: Some(Arc::new(data)),
                events: broadcast::channel(1024).0,
                pending_since: Instant::now(),
                run: None,
                start,
                state_lock: Arc::new(tokio::sync::Mutex::new(())),
                history: History::default(),
            },
        );
        tracing::info!(job = %id, name = %record.spec.name, method = record.spec.method.name(), "job submitted");
        self.schedule(&mut core);
        Ok(record)
    }

    /// A job's record.
    ///
    /// # Errors
    /// [`CoordinatorError::UnknownJob`].
    pub fn get(&self, id: &str) -> Result<JobRecord, CoordinatorError> {
        let core = self.lock()?;
        core.jobs
            .get(&JobId(id.to_string()))
            .map(|j| j.record.clone())
            .ok_or_else(|| CoordinatorError::UnknownJob(id.to_string()))
    }

    /// Every job, oldest first.
    ///
    /// # Errors
    /// Only an internal error.
    pub fn list(&self) -> Result<Vec<JobRecord>, CoordinatorError> {
        let core = self.lock()?;
        let mut all: Vec<JobRecord> = core.jobs.values().map(|j| j.record.clone()).collect();
        all.sort_by_key(|r| (r.created_unix_ms, r.id.0.len(), r.id.0.clone()));
        Ok(all)
    }

    /// A job's record and a receiver of its events (subscribed before the snapshot is taken,
    /// so nothing falls between them).
    ///
    /// # Errors
    /// [`CoordinatorError::UnknownJob`].
    pub fn watch(
        &self,
        id: &str,
    ) -> Result<(JobRecord, broadcast::Receiver<pb::JobEvent>), CoordinatorError> {
        let core = self.lock()?;
        let j = core
            .jobs
            .get(&JobId(id.to_string()))
            .ok_or_else(|| CoordinatorError::UnknownJob(id.to_string()))?;
        Ok((j.record.clone(), j.events.subscribe()))
    }

    /// Cancels a job that has not finished.
    ///
    /// # Errors
    /// [`CoordinatorError::UnknownJob`], or `Conflict` for a finished job.
    pub fn cancel(&self, id: &str) -> Result<JobRecord, CoordinatorError> {
        let mut core = self.lock()?;
        let jid = JobId(id.to_string());
        let state = core
            .jobs
            .get(&jid)
            .map(|j| j.record.state)
            .ok_or_else(|| CoordinatorError::UnknownJob(id.to_string()))?;
        if state.is_terminal() {
            return Err(CoordinatorError::Conflict(format!(
                "job {id} has already ended ({state:?})"
            )));
        }
        self.end_job(
            &mut core,
            &jid,
            JobState::Cancelled,
            "cancelled by user".into(),
        );
        core.jobs
            .get(&jid)
            .map(|j| j.record.clone())
            .ok_or_else(|| CoordinatorError::UnknownJob(id.to_string()))
    }

    /// Fails a job with `reason` (idempotent for finished jobs).
    pub fn fail(&self, id: &JobId, reason: String) {
        if let Ok(mut core) = self.lock() {
            self.end_job(&mut core, id, JobState::Failed, reason);
        }
    }

    fn end_job(&self, core: &mut Core, id: &JobId, state: JobState, reason: String) {
        let Some(job) = core.jobs.get_mut(id) else {
            return;
        };
        if job.record.state.is_terminal() {
            return;
        }
        match state {
            JobState::Failed => tracing::warn!(job = %id, %reason, "job failed"),
            _ => tracing::info!(job = %id, state = ?state, %reason, "job ended"),
        }
        job.record.state = state;
        job.record.reason = reason.clone();
        job.record.finished_unix_ms = now_ms();
        let members = job.run.take().map(|run| {
            for round in run.rounds.values() {
                round.fail(&format!("job {id} is {state:?}: {reason}"));
            }
            run.members
        });
        job.data = None;
        job.start = None;
        let _ = job.events.send(pb::JobEvent {
            event: Some(pb::job_event::Event::Finished(job.record.to_pb())),
        });
        let curves = plot::render(&format!("{} ({})", id, job.record.spec.name), &job.history);
        let record = job.record.clone();
        for w in members.unwrap_or_default() {
            if let Some(worker) = core.workers.get_mut(&w)
                && worker.job.as_ref() == Some(id)
            {
                worker.job = None;
                worker.assignment = None;
            }
        }
        self.write_curves(id, &curves);
        self.persist(&record);
        self.schedule(core);
    }

    /// Marks a job completed after its final state was evaluated and checkpointed — once the
    /// replicas' final fingerprints have matched (else when they do).
    pub fn complete(&self, id: &JobId) {
        let Ok(mut core) = self.lock() else { return };
        let Some(job) = core.jobs.get_mut(id) else {
            return;
        };
        let total = job.record.total_steps;
        match job.run.as_mut() {
            Some(run) if run.verified < total => run.finishing = true,
            _ => self.end_job(&mut core, id, JobState::Completed, String::new()),
        }
    }

    /// A member worker gave up on its job: the job fails with its reason.
    ///
    /// # Errors
    /// When the worker is not a member of the job's group.
    pub fn leave(&self, worker: &str, job: &str, reason: &str) -> Result<(), CoordinatorError> {
        let mut core = self.lock()?;
        let (entry, rank) = Self::member(&mut core, worker, job, None)?;
        let _ = entry;
        let name = core
            .workers
            .get(worker)
            .map_or("?".to_string(), |w| w.name.clone());
        let reason = format!("worker {worker} ({name}, rank {rank}) left the job: {reason}");
        self.end_job(&mut core, &JobId(job.to_string()), JobState::Failed, reason);
        Ok(())
    }

    // ------------------------------------------------------------------ workers

    /// Registers a worker.
    ///
    /// # Errors
    /// Only an internal error.
    pub fn register(&self, name: String, device: String) -> Result<WorkerId, CoordinatorError> {
        let mut core = self.lock()?;
        let id = format!("w-{:x}-{}", self.boot, core.next_worker);
        core.next_worker += 1;
        tracing::info!(worker = %id, %name, %device, "worker registered");
        core.workers.insert(
            id.clone(),
            WorkerEntry {
                name,
                device,
                last_seen: Instant::now(),
                job: None,
                assignment: None,
            },
        );
        self.schedule(&mut core);
        Ok(id)
    }

    /// Records a heartbeat; returns the jobs the worker must abandon, or `None` when the
    /// worker is unknown (it must register again).
    ///
    /// # Errors
    /// Only an internal error.
    pub fn heartbeat(
        &self,
        worker: &str,
        job: &str,
    ) -> Result<Option<Vec<String>>, CoordinatorError> {
        let mut core = self.lock()?;
        let Some(w) = core.workers.get_mut(worker) else {
            return Ok(None);
        };
        w.last_seen = Instant::now();
        let current = w.job.clone();
        if job.is_empty() || current.as_ref().is_some_and(|c| c.0 == job) {
            return Ok(Some(Vec::new()));
        }
        // The worker works on a job the coordinator no longer gives it.
        Ok(Some(vec![job.to_string()]))
    }

    /// Waits up to `wait` for an assignment for `worker`.
    ///
    /// # Errors
    /// [`CoordinatorError::UnknownWorker`].
    pub async fn next_assignment(
        &self,
        worker: &str,
        wait: Duration,
    ) -> Result<Option<pb::Assignment>, CoordinatorError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.assigned.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut core = self.lock()?;
                let w = core
                    .workers
                    .get_mut(worker)
                    .ok_or_else(|| CoordinatorError::UnknownWorker(worker.to_string()))?;
                w.last_seen = Instant::now();
                if let Some(a) = w.assignment.take() {
                    return Ok(Some(a));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(None);
            }
        }
    }

    /// Removes workers whose heartbeats stopped, failing their jobs, and starts jobs that
    /// can start. Called periodically.
    pub fn tick(&self) {
        let Ok(mut core) = self.lock() else { return };
        let timeout = Duration::from_millis(self.config.heartbeat_timeout_ms);
        let dead: Vec<WorkerId> = core
            .workers
            .iter()
            .filter(|(_, w)| w.last_seen.elapsed() > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in dead {
            let Some(w) = core.workers.remove(&id) else {
                continue;
            };
            tracing::warn!(worker = %id, name = %w.name, device = %w.device, "worker timed out");
            if let Some(job) = w.job {
                let rank = core
                    .jobs
                    .get(&job)
                    .and_then(|j| j.run.as_ref())
                    .and_then(|r| r.members.iter().position(|m| *m == id));
                let reason = format!(
                    "worker {id} ({}, rank {}) stopped sending heartbeats for {:.1}s",
                    w.name,
                    rank.map_or("?".to_string(), |r| r.to_string()),
                    timeout.as_secs_f64()
                );
                self.end_job(&mut core, &job, JobState::Failed, reason);
            }
        }
        self.schedule(&mut core);
    }

    /// Starts every pending job that has enough free workers: at once when `workers.max` are
    /// free, after the gather window when at least `workers.min` are.
    fn schedule(&self, core: &mut Core) {
        let window = Duration::from_millis(self.config.gather_window_ms);
        let pending: Vec<JobId> = core
            .jobs
            .iter()
            .filter(|(_, j)| j.record.state == JobState::Pending)
            .map(|(id, _)| id.clone())
            .collect();
        let mut any = false;
        for id in pending {
            let free: Vec<WorkerId> = core
                .workers
                .iter()
                .filter(|(_, w)| w.job.is_none())
                .map(|(id, _)| id.clone())
                .collect();
            let Some(job) = core.jobs.get_mut(&id) else {
                continue;
            };
            let (min, max) = (
                job.record.spec.workers.min as usize,
                job.record.spec.workers.max as usize,
            );
            if free.len() < min || (free.len() < max && job.pending_since.elapsed() < window) {
                continue;
            }
            let Some(data) = job.data.clone() else {
                continue;
            };
            let members: Vec<WorkerId> = free.into_iter().take(max).collect();
            let generation = job.run.as_ref().map_or(1, |r| r.generation + 1);
            let start_step = job.start.as_ref().map_or(0, |s| s.step);
            let assignment = |rank: usize| pb::Assignment {
                job_id: id.0.clone(),
                spec: Some(spec_to_pb(&job.record.spec)),
                rank: rank as u32,
                world_size: members.len() as u32,
                generation,
                stages: data.stages.iter().map(stage_to_pb).collect(),
                input_shape: data.arch.input_shape.iter().map(|&d| d as u32).collect(),
                num_classes: data.arch.num_classes as u32,
                start_step,
                has_initial_state: job.start.is_some(),
            };
            let assignments: Vec<pb::Assignment> = (0..members.len()).map(assignment).collect();
            job.run = Some(Run {
                generation,
                members: members.clone(),
                rounds: BTreeMap::new(),
                fingerprints: BTreeMap::new(),
                last_round_at: Instant::now(),
                verified: 0,
                finishing: false,
            });
            job.record.state = JobState::Running;
            job.record.reason.clear();
            job.record.workers = members.len() as u32;
            if job.record.started_unix_ms == 0 {
                job.record.started_unix_ms = now_ms();
            }
            let _ = job.events.send(pb::JobEvent {
                event: Some(pb::job_event::Event::Snapshot(job.record.to_pb())),
            });
            let record = job.record.clone();
            tracing::info!(job = %id, workers = members.len(), generation, start_step, "job started");
            for (w, a) in members.iter().zip(assignments) {
                if let Some(worker) = core.workers.get_mut(w) {
                    worker.job = Some(id.clone());
                    worker.assignment = Some(a);
                }
            }
            self.persist(&record);
            any = true;
        }
        if any {
            self.assigned.notify_waiters();
        }
    }

    // ------------------------------------------------------------------ steps

    /// Checks that `worker` is rank `rank` of the running group of `job` at `generation`,
    /// and returns the job's data.
    fn member<'a>(
        core: &'a mut Core,
        worker: &str,
        job: &str,
        generation: Option<u64>,
    ) -> Result<(&'a mut JobEntry, usize), CoordinatorError> {
        let jid = JobId(job.to_string());
        let entry = core
            .jobs
            .get_mut(&jid)
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
        let rank = run
            .members
            .iter()
            .position(|m| m == worker)
            .ok_or_else(|| {
                CoordinatorError::Conflict(format!(
                    "worker {worker} is not in the group of job {job}"
                ))
            })?;
        Ok((entry, rank))
    }

    /// The job's data and this worker's place in its group.
    ///
    /// # Errors
    /// When the worker is not a member of the running group.
    pub fn membership(
        &self,
        worker: &str,
        job: &str,
        generation: Option<u64>,
    ) -> Result<Membership, CoordinatorError> {
        let mut core = self.lock()?;
        let (entry, rank) = Self::member(&mut core, worker, job, generation)?;
        let data = entry
            .data
            .clone()
            .ok_or_else(|| CoordinatorError::Internal(format!("job {job} has no data loaded")))?;
        let world = entry.run.as_ref().map_or(1, |r| r.members.len());
        Ok(Membership {
            data,
            spec: entry.record.spec.clone(),
            rank,
            world,
            start: entry.start.clone(),
        })
    }

    /// The reduction round of `step` for a member worker, created on first use.
    ///
    /// # Errors
    /// When the worker is not rank `rank` of the group, or the step is not in the job.
    pub fn round(
        &self,
        worker: &str,
        job: &str,
        rank: u32,
        step: u64,
        generation: u64,
    ) -> Result<RoundTicket, CoordinatorError> {
        let mut core = self.lock()?;
        let (entry, my_rank) = Self::member(&mut core, worker, job, Some(generation))?;
        if my_rank != rank as usize {
            return Err(CoordinatorError::BadRequest(format!(
                "worker {worker} is rank {my_rank}, not {rank}"
            )));
        }
        let data = entry
            .data
            .clone()
            .ok_or_else(|| CoordinatorError::Internal(format!("job {job} has no data loaded")))?;
        let (stage, plan) = data.stage_of(step).ok_or_else(|| {
            CoordinatorError::BadRequest(format!(
                "step {step} is not in job {job} ({} steps)",
                data.total_steps()
            ))
        })?;
        // The group moves in lockstep: the only step open for reduction is the next one.
        if step != entry.record.step {
            return Err(CoordinatorError::BadRequest(format!(
                "step {step} is not the job's current step ({})",
                entry.record.step
            )));
        }
        let batch = (step - plan.first_step) % plan.steps_per_epoch.max(1);
        let global = shard::global_batch(
            plan.samples,
            entry.record.spec.training.global_batch_size,
            batch,
        );
        let run = entry
            .run
            .as_mut()
            .ok_or_else(|| CoordinatorError::Conflict(format!("job {job} is not running")))?;
        let world = run.members.len();
        let expected_samples =
            shard::local_part(global.len(), world as u32, my_rank as u32).len() as u64;
        let round = run
            .rounds
            .entry(step)
            .or_insert_with(|| Arc::new(Round::new(world, data.trainable_len(stage))))
            .clone();
        Ok(RoundTicket {
            round,
            rank: my_rank,
            expected_samples,
        })
    }

    /// Records a finished round: progress for watchers; old rounds are dropped.
    pub fn round_done(&self, job: &str, step: u64, reduced: &Reduced) {
        let Ok(mut core) = self.lock() else { return };
        let Some(entry) = core.jobs.get_mut(&JobId(job.to_string())) else {
            return;
        };
        let Some(run) = entry.run.as_mut() else {
            return;
        };
        let elapsed = run.last_round_at.elapsed().as_secs_f64().max(1e-9);
        run.last_round_at = Instant::now();
        run.rounds.retain(|&s, _| s > step);
        let workers = run.members.len() as u32;
        entry.record.step = entry.record.step.max(step + 1);
        let Some(data) = entry.data.clone() else {
            return;
        };
        let (stage_idx, stage) = data.stage_of(step).map_or((0, None), |(i, s)| (i, Some(s)));
        let Stats {
            loss_sum,
            samples,
            correct,
        } = reduced.stats;
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
            epoch: stage.map_or(0, |s| (step - s.first_step) / s.steps_per_epoch.max(1)),
            loss: if samples > 0 {
                loss_sum / samples as f64
            } else {
                0.0
            },
            train_accuracy: if samples > 0 {
                correct as f64 / samples as f64
            } else {
                0.0
            },
            samples_per_s: samples as f64 / elapsed,
            lr,
            workers,
        };
        entry
            .history
            .push_step(progress.step, progress.loss, progress.train_accuracy);
        let _ = entry.events.send(pb::JobEvent {
            event: Some(pb::job_event::Event::Progress(progress)),
        });
    }

    /// Records a parameter fingerprint; fails the job when replicas differ.
    ///
    /// # Errors
    /// When the worker is not a member.
    pub fn fingerprint(
        &self,
        worker: &str,
        job: &str,
        step: u64,
        generation: u64,
        fp: String,
    ) -> Result<(), CoordinatorError> {
        let mut core = self.lock()?;
        let (entry, rank) = Self::member(&mut core, worker, job, Some(generation))?;
        if step == 0 || step > entry.record.step {
            return Err(CoordinatorError::BadRequest(format!(
                "fingerprint for step {step}, but job {job} has done {} steps",
                entry.record.step
            )));
        }
        let total = entry.record.total_steps;
        let Some(run) = entry.run.as_mut() else {
            return Ok(());
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
                let jid = JobId(job.to_string());
                self.end_job(&mut core, &jid, JobState::Failed, reason);
                return Ok(());
            }
            run.verified = run.verified.max(step);
            if run.finishing && run.verified >= total {
                let jid = JobId(job.to_string());
                self.end_job(&mut core, &jid, JobState::Completed, String::new());
            }
        }
        Ok(())
    }

    /// What a state upload needs, for the rank-0 member.
    ///
    /// # Errors
    /// When the worker is not rank 0 of the running group.
    pub fn upload_target(
        &self,
        worker: &str,
        job: &str,
        step: u64,
    ) -> Result<JobHandle, CoordinatorError> {
        let mut core = self.lock()?;
        let (entry, rank) = Self::member(&mut core, worker, job, None)?;
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
        Ok(JobHandle {
            record: entry.record.clone(),
            data,
            state_lock: entry.state_lock.clone(),
        })
    }

    /// Records an evaluation: metrics into the record (stage-end evaluations of earlier
    /// stages also under `<stage>_stage.`), an event for watchers.
    pub fn evaluated(&self, job: &JobId, eval: pb::Evaluation, stage_prefix: Option<String>) {
        let Ok(mut core) = self.lock() else { return };
        let Some(entry) = core.jobs.get_mut(job) else {
            return;
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
        let curves = plot::render(
            &format!("{} ({})", job, entry.record.spec.name),
            &entry.history,
        );
        let _ = entry.events.send(pb::JobEvent {
            event: Some(pb::job_event::Event::Evaluation(eval)),
        });
        // Persisted under the lock, so that a concurrent end of the job cannot be overwritten
        // by this older copy.
        self.persist(&entry.record);
        drop(core);
        self.write_curves(job, &curves);
    }

    /// Writes a job's curves (`<state_dir>/jobs/<id>/curves.svg`); a failure is logged, not
    /// fatal: the curves are a convenience.
    fn write_curves(&self, job: &JobId, svg: &str) {
        let dir = self.config.job_dir(job);
        let write = std::fs::create_dir_all(&dir)
            .map_err(|source| CoordinatorError::Io {
                path: dir.display().to_string(),
                source,
            })
            .and_then(|()| {
                crate::checkpoint::write_atomic(&dir.join("curves.svg"), svg.as_bytes())
            });
        if let Err(e) = write {
            tracing::warn!(%job, error = %e, "cannot write the training curves");
        }
    }

    /// Records a written checkpoint.
    pub fn checkpointed(&self, job: &JobId, ckpt: crate::job::CheckpointRecord, keep: usize) {
        let Ok(mut core) = self.lock() else { return };
        let Some(entry) = core.jobs.get_mut(job) else {
            return;
        };
        let _ = entry.events.send(pb::JobEvent {
            event: Some(pb::job_event::Event::Checkpoint(ckpt.to_pb())),
        });
        entry.record.checkpoints.push(ckpt);
        let n = entry.record.checkpoints.len();
        if n > keep {
            entry.record.checkpoints.drain(..n - keep);
        }
        self.persist(&entry.record);
    }

    /// The directory of a job's files.
    pub fn job_dir(&self, job: &JobId) -> PathBuf {
        self.config.job_dir(job)
    }
}

/// The upper-case name of a state.
pub fn state_word(s: JobState) -> &'static str {
    crate::wire::state_name(s.to_pb())
}

#[cfg(test)]
mod tests;
