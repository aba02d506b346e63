//! The shell around the coordinator's state: it stamps each event with the time, applies
//! it with [`state::apply`] under one lock, and runs the actions that come out.
//!
//! The lock is a synchronous mutex that is never held across an `.await` (so a plain `std`
//! mutex is right and cheaper than an async one) and never held for I/O. Actions that only
//! hand something to a channel — a progress event for the watchers, a failed star round, a
//! wake-up for the workers' long polls, a counter — run under it, so watchers see events in
//! the order of the transitions. Actions that touch the disk — the store, the curves — run
//! after it is released but in that same order: the dispatcher takes the I/O lock before it
//! lets go of the state lock, so a later transition's record never lands before an earlier
//! one's. Slow work — loading data, evaluating, writing checkpoints — never goes through here;
//! it runs on blocking threads and reports back as events.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use graft_common::{JobId, WorkerId};
use graft_proto::v1 as pb;
use graft_transfer::{JobSpec, StepStats};
use tokio::sync::{Notify, broadcast};

use crate::config::CoordinatorConfig;
use crate::error::CoordinatorError;
use crate::job::{CheckpointRecord, JobRecord, now_ms};
use crate::jobdata::JobData;
use crate::state::queries::{self, Membership};
use crate::state::{
    Action, Event, EventKind, Held, Limits, Now, Reply, RoundTicket, StartState, State, apply,
};
use crate::store::Store;

mod resume;

/// A job's channels, beside the state: its watchers' broadcast and the lock that serialises
/// the processing of its uploaded states.
struct JobChannels {
    /// Progress, evaluations and the end, for `WatchJob` subscribers; sent under the state
    /// lock by [`Coordinator::dispatch`], received by each subscriber's stream.
    events: broadcast::Sender<pb::JobEvent>,
    /// Held by `upload::process_upload` while it evaluates and checkpoints one state.
    state_lock: Arc<tokio::sync::Mutex<()>>,
    /// The job's TensorBoard event file, fed what its watchers are sent.
    board: crate::tensorboard::JobBoard,
}

impl JobChannels {
    fn new() -> Self {
        Self {
            events: broadcast::channel(1024).0,
            state_lock: Arc::new(tokio::sync::Mutex::new(())),
            board: crate::tensorboard::JobBoard::default(),
        }
    }
}

struct Shared {
    state: State,
    channels: BTreeMap<JobId, JobChannels>,
}

impl Shared {
    fn channels(&mut self, job: &JobId) -> &JobChannels {
        self.channels
            .entry(job.clone())
            .or_insert_with(JobChannels::new)
    }
}

/// The coordinator.
pub struct Coordinator {
    shared: Mutex<Shared>,
    /// Taken before the state lock is released, by a dispatch with store or file actions,
    /// so that those run in the order of the transitions.
    io: Mutex<()>,
    store: Store,
    /// Its configuration.
    pub config: CoordinatorConfig,
    /// Counters for `/metrics`, updated on the step path without the lock.
    pub counters: crate::metrics::Counters,
    /// Woken whenever assignments are made, so long-polling workers pick them up.
    assigned: Notify,
    /// The origin of [`Now::mono_ms`].
    started: Instant,
    /// Replicas to checkpoint ([`crate::rescue`]): sent by `dispatch` under the lock,
    /// received by the task the server starts with [`Coordinator::take_save_requests`].
    saves: tokio::sync::mpsc::UnboundedSender<crate::rescue::SaveRequest>,
    /// The receiving end, until the server takes it.
    save_requests: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<crate::rescue::SaveRequest>>>,
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
    fn now(&self) -> Now {
        Now {
            mono_ms: self.started.elapsed().as_millis() as u64,
            unix_ms: now_ms(),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Shared>, CoordinatorError> {
        self.shared
            .lock()
            .map_err(|_| CoordinatorError::Internal("state lock poisoned".into()))
    }

    /// Applies one event and runs its actions; the event's answer.
    fn dispatch(&self, kind: EventKind) -> Result<Reply, CoordinatorError> {
        let mut shared = self.lock()?;
        let actions = apply(
            &mut shared.state,
            Event {
                at: self.now(),
                kind,
            },
        );
        let mut answer = Ok(Reply::Done);
        let mut later = Vec::new();
        for a in actions {
            match a {
                Action::Reply(r) => answer = Ok(r),
                Action::Refuse(e) => answer = Err(e),
                Action::Publish(job, event) => {
                    let scalars = crate::tensorboard::Scalars::of(&shared.state, &job, &event);
                    let channels = shared.channels(&job);
                    channels
                        .board
                        .write(&self.config.job_dir(&job), &job, scalars);
                    // No subscriber is no error: nobody is watching.
                    let _ = channels.events.send(event);
                }
                Action::FailRound { round, reason } => round.fail(&reason),
                Action::Assigned => self.assigned.notify_waiters(),
                Action::SaveReplica { job, from, step } => {
                    // No server to serve it (a unit test): the job only lacks its safety net.
                    let _ = self
                        .saves
                        .send(crate::rescue::SaveRequest { job, from, step });
                }
                Action::CountRound {
                    samples,
                    took_ms,
                    bytes,
                } => self.counters.round(
                    samples,
                    Duration::from_secs_f64(took_ms.max(0.0) / 1e3),
                    bytes,
                ),
                io @ (Action::Persist(_) | Action::Forget(_) | Action::Curves { .. }) => {
                    later.push(io);
                }
            }
        }
        if later.is_empty() {
            return answer;
        }
        let io = self
            .io
            .lock()
            .map_err(|_| CoordinatorError::Internal("I/O lock poisoned".into()))?;
        drop(shared);
        for a in later {
            match a {
                Action::Persist(record) => self.persist(&record),
                Action::Forget(job) => self.forget(&job),
                Action::Curves {
                    job,
                    title,
                    history,
                } => crate::plot::write(&self.config.job_dir(&job), &title, &history),
                _ => {}
            }
        }
        drop(io);
        answer
    }

    fn persist(&self, record: &JobRecord) {
        if let Err(e) = self.store.put(record) {
            tracing::error!(job = %record.id, error = %e, "cannot persist job");
        }
    }

    /// What the coordinator adds to a valid spec: a name people can read in logs and tables,
    /// and a group the cluster can ever form.
    ///
    /// # Errors
    /// [`CoordinatorError::InvalidSpec`] naming the field.
    pub fn check_admissible(spec: &JobSpec, max_workers: u32) -> Result<(), CoordinatorError> {
        if let Some(reason) = crate::admission::name_problem(&spec.name, MAX_JOB_NAME_CHARS) {
            return Err(CoordinatorError::InvalidSpec {
                field: "name".into(),
                reason,
            });
        }
        if spec.workers.min > max_workers {
            return Err(CoordinatorError::InvalidSpec {
                field: "workers.min".into(),
                reason: format!(
                    "{} workers, but the cluster has at most {max_workers} (the coordinator's \
                     max_workers): the job could never start",
                    spec.workers.min
                ),
            });
        }
        Ok(())
    }

    /// Removes a deleted job's record and directory. The record goes first: a coordinator
    /// that dies between the two finds an orphan directory, whose id it never reuses.
    fn forget(&self, job: &JobId) {
        if let Err(e) = self.store.remove(job) {
            tracing::error!(%job, error = %e, "cannot remove the deleted job's record");
            return;
        }
        let dir = self.config.job_dir(job);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::info!(%job, dir = %dir.display(), "job deleted"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(%job, "job deleted (it had no files)");
            }
            Err(e) => {
                tracing::warn!(%job, dir = %dir.display(), error = %e, "job deleted, but its files could not all be removed");
            }
        }
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> Result<T, CoordinatorError> {
        Ok(f(&self.lock()?.state))
    }

    /// Accepts a validated spec whose data has been loaded.
    ///
    /// # Errors
    /// [`CoordinatorError::Store`] when the job cannot be persisted (then it does not exist).
    pub fn submit(&self, spec: JobSpec, data: JobData) -> Result<JobRecord, CoordinatorError> {
        // A directory of that name would be another job's (a store lost with its ids):
        // never share it, so that pruning only ever deletes the checkpoints a job wrote.
        let id = loop {
            let id = self.store.next_job_id(&random_base32(8)?)?;
            if !self.config.job_dir(&id).exists() {
                break id;
            }
        };
        let mut record = JobRecord::new(id, spec, data.total_steps());
        record.datasets = data.datasets.clone();
        self.store.put(&record)?;
        let start = data
            .init_params
            .clone()
            .map(|p| Arc::new(StartState::fresh(p)));
        match self.dispatch(EventKind::JobSubmitted {
            record: Box::new(record),
            data: Arc::new(data),
            start,
        })? {
            Reply::Record(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    /// A job's record.
    ///
    /// # Errors
    /// [`CoordinatorError::UnknownJob`].
    pub fn get(&self, id: &str) -> Result<JobRecord, CoordinatorError> {
        self.read(|s| queries::record(s, &JobId::from(id)))?
    }

    /// Every job, oldest first.
    ///
    /// # Errors
    /// Only an internal error.
    pub fn list(&self) -> Result<Vec<JobRecord>, CoordinatorError> {
        self.read(queries::list)
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
        let mut shared = self.lock()?;
        let id = JobId::from(id);
        let record = queries::record(&shared.state, &id)?;
        Ok((record, shared.channels(&id).events.subscribe()))
    }

    /// Cancels a job that has not finished.
    ///
    /// # Errors
    /// [`CoordinatorError::UnknownJob`], or `Conflict` for a finished job.
    pub fn cancel(&self, id: &str) -> Result<JobRecord, CoordinatorError> {
        match self.dispatch(EventKind::CancelRequested {
            job: JobId::from(id),
        })? {
            Reply::Record(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    /// Deletes a finished job: its record, checkpoints, manifests and curves.
    ///
    /// # Errors
    /// [`CoordinatorError::UnknownJob`], or [`CoordinatorError::Conflict`] for a job that
    /// has not ended.
    pub fn delete(&self, id: &str) -> Result<JobRecord, CoordinatorError> {
        match self.dispatch(EventKind::DeleteRequested {
            job: JobId::from(id),
        })? {
            Reply::Record(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    /// Fails a job with `reason` (idempotent for finished jobs).
    pub fn fail(&self, id: &JobId, reason: String) {
        let _ = self.dispatch(EventKind::JobFailed {
            job: id.clone(),
            reason,
        });
    }

    /// Marks a job completed after its final state was evaluated and checkpointed — once the
    /// replicas' final fingerprints have matched (else when they do).
    pub fn complete(&self, id: &JobId) {
        let _ = self.dispatch(EventKind::FinalStateSaved { job: id.clone() });
    }

    /// A member worker gave up on its job: the job fails with its reason, or, for a graceful
    /// leave, its group re-forms without the worker.
    ///
    /// # Errors
    /// When the worker is not a member of the job's group.
    pub fn leave(
        &self,
        worker: &str,
        job: &str,
        reason: &str,
        graceful: bool,
    ) -> Result<(), CoordinatorError> {
        self.dispatch(EventKind::WorkerLeft {
            worker: WorkerId::from(worker),
            job: JobId::from(job),
            reason: reason.to_string(),
            graceful,
        })
        .map(|_| ())
    }

    /// Registers a worker.
    ///
    /// # Errors
    /// Only an internal error.
    pub fn register(&self, name: String, device: String) -> Result<WorkerId, CoordinatorError> {
        self.register_peer(name, device, String::new())
    }

    /// Registers a worker whose CollectiveService listens at `collective` (host:port).
    ///
    /// # Errors
    /// Only an internal error.
    pub fn register_peer(
        &self,
        name: String,
        device: String,
        collective: String,
    ) -> Result<WorkerId, CoordinatorError> {
        self.register_holding(name, device, collective, None)
            .map(|(id, _)| id)
    }

    /// Registers a worker that still holds a replica (`held`: job, generation, step,
    /// fingerprint), as after a coordinator restart.
    ///
    /// # Errors
    /// Only an internal error.
    pub fn register_holding(
        &self,
        name: String,
        device: String,
        collective: String,
        held: Option<pb::HeldReplica>,
    ) -> Result<(WorkerId, String), CoordinatorError> {
        let id = WorkerId(format!("w-{}", random_hex(8)?));
        let secret = random_hex(16)?;
        match self.dispatch(EventKind::WorkerRegistered {
            id,
            secret: secret.clone(),
            name,
            device,
            collective,
            held: held_of(held),
        })? {
            Reply::Registered(id) => Ok((id, secret)),
            other => Err(unexpected(&other)),
        }
    }

    /// Whether a call naming `worker` carries its secret (an unknown worker passes: the call
    /// answers that it must register).
    ///
    /// # Errors
    /// [`CoordinatorError::PermissionDenied`].
    pub fn authorize(&self, worker: &str, secret: &str) -> Result<(), CoordinatorError> {
        self.read(|s| queries::authorize(s, &WorkerId::from(worker), secret))?
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
        generation: u64,
    ) -> Result<Option<Vec<String>>, CoordinatorError> {
        match self.dispatch(EventKind::Heartbeat {
            worker: WorkerId::from(worker),
            job: job.to_string(),
            generation,
        })? {
            Reply::Heartbeat(h) => Ok(h),
            other => Err(unexpected(&other)),
        }
    }

    /// Waits up to `wait` for an assignment for `worker`, which holds the replica `held`
    /// (job, generation, step and fingerprint) if its group fell apart. The answer's flag
    /// says to drop the held replica.
    ///
    /// # Errors
    /// [`CoordinatorError::UnknownWorker`].
    pub async fn next_assignment(
        &self,
        worker: &str,
        held: Option<pb::HeldReplica>,
        wait: Duration,
    ) -> Result<(Option<pb::Assignment>, bool), CoordinatorError> {
        let deadline = tokio::time::Instant::now() + wait;
        let held = held_of(held);
        loop {
            let notified = self.assigned.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.dispatch(EventKind::AssignmentPolled {
                worker: WorkerId::from(worker),
                held: held.clone(),
            })? {
                Reply::Assignment {
                    assignment: Some(a),
                    ..
                } => return Ok((Some(a), false)),
                Reply::Assignment {
                    drop_held: true, ..
                } => return Ok((None, true)),
                Reply::Assignment { .. } => {}
                other => return Err(unexpected(&other)),
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok((None, false));
            }
        }
    }

    /// Lost workers, overdue final fingerprints, jobs that can start. Called periodically.
    pub fn tick(&self) {
        let _ = self.dispatch(EventKind::Tick);
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
        self.read(|s| {
            queries::membership(s, &WorkerId::from(worker), &JobId::from(job), generation)
        })?
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
        match self.dispatch(EventKind::RoundOpened {
            worker: WorkerId::from(worker),
            job: JobId::from(job),
            rank,
            step,
            generation,
        })? {
            Reply::Round(t) => Ok(t),
            other => Err(unexpected(&other)),
        }
    }

    /// Records a finished round: progress for watchers; old rounds are dropped.
    pub fn round_done(&self, job: &str, step: u64, reduced: &crate::reduce::Reduced) {
        let _ = self.dispatch(EventKind::RoundCompleted {
            job: JobId::from(job),
            step,
            stats: reduced.stats,
        });
    }

    /// Rank 0's report of a ring step: the group's summed stats of `step` (0-based). Returns
    /// the step count at which the group is to stop (non-zero only while the coordinator
    /// shuts down).
    ///
    /// # Errors
    /// When the worker is not rank 0 of the group, the job does not use the ring, the step is
    /// not the one after the last reported, or the stats do not fit the step's batch.
    #[allow(clippy::too_many_arguments)]
    pub fn ring_step(
        &self,
        worker: &str,
        job: &str,
        rank: u32,
        step: u64,
        generation: u64,
        stats: StepStats,
        times: Option<pb::StepTimes>,
    ) -> Result<u64, CoordinatorError> {
        match self.dispatch(EventKind::RingStepReported {
            worker: WorkerId::from(worker),
            job: JobId::from(job),
            rank,
            step,
            generation,
            stats,
            times,
        })? {
            Reply::StopAt(at) => Ok(at),
            other => Err(unexpected(&other)),
        }
    }

    /// Keeps rank 0's step times for the next progress event (the star).
    pub fn note_times(&self, job: &str, times: pb::StepTimes) {
        let _ = self.dispatch(EventKind::TimesNoted {
            job: JobId::from(job),
            times,
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
        self.dispatch(EventKind::FingerprintReported {
            worker: WorkerId::from(worker),
            job: JobId::from(job),
            step,
            generation,
            fingerprint: fp,
        })
        .map(|_| ())
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
        generation: u64,
    ) -> Result<JobHandle, CoordinatorError> {
        let mut shared = self.lock()?;
        let id = JobId::from(job);
        let (record, data) = queries::upload_target(
            &shared.state,
            &WorkerId::from(worker),
            &id,
            step,
            generation,
        )?;
        let state_lock = shared.channels(&id).state_lock.clone();
        Ok(JobHandle {
            record,
            data,
            state_lock,
        })
    }

    /// Records an evaluation: metrics into the record (stage-end evaluations of earlier
    /// stages also under `<stage>_stage.`), an event for watchers.
    pub fn evaluated(&self, job: &JobId, eval: pb::Evaluation, stage_prefix: Option<String>) {
        let _ = self.dispatch(EventKind::Evaluated {
            job: job.clone(),
            evaluation: eval,
            stage_prefix,
        });
    }

    /// Records a written checkpoint.
    pub fn checkpointed(&self, job: &JobId, ckpt: CheckpointRecord, keep: usize) {
        let _ = self.dispatch(EventKind::Checkpointed {
            job: job.clone(),
            checkpoint: ckpt,
            keep,
        });
    }

    /// The receiver of save requests, for the task that serves them (once).
    pub fn take_save_requests(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<crate::rescue::SaveRequest>> {
        self.save_requests.lock().ok()?.take()
    }

    /// What a checkpoint of a job's state needs, whatever the job's group does.
    ///
    /// # Errors
    /// An unknown job, or one whose data is not loaded (it has ended).
    pub fn save_target(&self, job: &JobId) -> Result<JobHandle, CoordinatorError> {
        let mut shared = self.lock()?;
        let record = queries::record(&shared.state, job)?;
        let data = shared
            .state
            .jobs
            .get(job)
            .and_then(|j| j.data.clone())
            .ok_or_else(|| CoordinatorError::Conflict(format!("job {job} has ended")))?;
        let state_lock = shared.channels(job).state_lock.clone();
        Ok(JobHandle {
            record,
            data,
            state_lock,
        })
    }

    /// The directory of a job's files.
    pub fn job_dir(&self, job: &JobId) -> PathBuf {
        self.config.job_dir(job)
    }

    /// Gauges for `/metrics`.
    pub fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        self.read(queries::metrics).unwrap_or_default()
    }

    /// Whether the answer to `step` of `job` asks rank 0 to upload its state.
    pub fn drain_upload_wanted(&self, job: &str, step: u64) -> bool {
        self.read(|s| queries::drain_of(s, &JobId::from(job)))
            .ok()
            .flatten()
            .is_some_and(|d| d.last_step == step)
    }

    /// Whether an uploaded state of `step` must be checkpointed for the shutdown.
    pub fn drain_checkpoint_wanted(&self, job: &JobId, step: u64) -> bool {
        self.read(|s| queries::drain_of(s, job))
            .ok()
            .flatten()
            .is_some_and(|d| d.checkpoint_step == step)
    }

    /// Stops starting jobs and marks where each running job stops; returns the jobs the
    /// shutdown waits for, with the step of their checkpoint.
    pub fn begin_drain(&self) -> Vec<(JobId, u64)> {
        match self.dispatch(EventKind::DrainBegan) {
            Ok(Reply::Draining(w)) => w,
            _ => Vec::new(),
        }
    }

    /// Drains: every running job checkpoints after its current step, for up to `grace`.
    /// Jobs stay `RUNNING` in the store, so a restarted coordinator resumes them; one whose
    /// checkpoint did not come in time resumes from its previous checkpoint.
    pub async fn drain(&self, grace: Duration) {
        let waiting = self.begin_drain();
        if waiting.is_empty() {
            return;
        }
        tracing::info!(jobs = ?waiting.iter().map(|(j, s)| format!("{j}@{s}")).collect::<Vec<_>>(), "checkpointing running jobs before exiting");
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let left = self
                .read(|s| queries::still_draining(s, &waiting))
                .unwrap_or_default();
            if left.is_empty() {
                tracing::info!("every running job is checkpointed");
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(jobs = ?left.iter().map(|j| j.0.clone()).collect::<Vec<_>>(), grace_ms = grace.as_millis() as u64, "no checkpoint within the grace period; these jobs resume from their previous checkpoint");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `bytes` random bytes from the operating system, as hex: ids and secrets nobody can guess
/// from the ones they have seen.
fn random_hex(bytes: usize) -> Result<String, CoordinatorError> {
    Ok(random_bytes(bytes)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// `n` bytes of the operating system's randomness.
fn random_bytes(n: usize) -> Result<Vec<u8>, CoordinatorError> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf)
        .map_err(|e| CoordinatorError::Internal(format!("no randomness: {e}")))?;
    Ok(buf)
}

/// The longest job name taken.
pub const MAX_JOB_NAME_CHARS: usize = 256;

/// `chars` random characters of lowercase Crockford base32 (no i, l, o, u): short, easy to
/// read aloud and to type, 5 bits of the operating system's randomness each.
fn random_base32(chars: usize) -> Result<String, CoordinatorError> {
    const DIGITS: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    Ok(random_bytes(chars)?
        .iter()
        .map(|b| char::from(DIGITS[usize::from(b & 31)]))
        .collect())
}

/// A held replica off the wire (none for an empty job id).
fn held_of(h: Option<pb::HeldReplica>) -> Option<(JobId, u64, Held)> {
    h.filter(|h| !h.job_id.is_empty()).map(|h| {
        (
            JobId(h.job_id),
            h.generation,
            Held {
                step: h.step,
                fingerprint: h.fingerprint,
                // A peer's words, bounded: they end up in the job's record and logs.
                why: h.why.chars().take(500).collect(),
                suspect: h.suspect_rank,
            },
        )
    })
}

/// A reply the event does not give: a bug in the transition, reported rather than hidden.
fn unexpected(reply: &Reply) -> CoordinatorError {
    CoordinatorError::Internal(format!("unexpected answer {reply:?}"))
}

impl Limits {
    /// The transitions' timeouts from the configuration.
    pub fn of(config: &CoordinatorConfig) -> Self {
        Self {
            heartbeat_timeout_ms: config.heartbeat_timeout_ms,
            gather_window_ms: config.gather_window_ms,
            step_timeout_ms: config.step_timeout_ms,
            regroup_timeout_ms: config.regroup_timeout_ms,
            max_workers: config.max_workers,
        }
    }
}

#[cfg(test)]
mod tests;
