//! Workers: registration, heartbeats, assignments, and the scheduler that forms groups.

use std::time::Duration;

use super::*;

impl Coordinator {
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
        let mut core = self.lock()?;
        let id = format!("w-{:x}-{}", self.boot, core.next_worker);
        core.next_worker += 1;
        tracing::info!(worker = %id, %name, %device, %collective, "worker registered");
        core.workers.insert(
            id.clone(),
            WorkerEntry {
                name,
                device,
                collective,
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
        let step_timeout = Duration::from_millis(self.config.step_timeout_ms);
        let overdue: Vec<(JobId, String)> = core
            .jobs
            .iter()
            .filter_map(|(id, j)| {
                let run = j.run.as_ref()?;
                if run.finishing.is_none_or(|t| t.elapsed() <= step_timeout) {
                    return None;
                }
                let reported = run.fingerprints.get(&j.record.total_steps);
                let missing: Vec<String> = (0..run.members.len())
                    .filter(|&r| {
                        reported.is_none_or(|slots| slots.get(r).is_none_or(Option::is_none))
                    })
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
            self.end_job(&mut core, &id, JobState::Failed, reason);
        }
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
    pub(super) fn schedule(&self, core: &mut Core) {
        if core.draining {
            // A job started now could not be checkpointed before the coordinator exits.
            return;
        }
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
            let peers: Vec<String> = members
                .iter()
                .map(|m| {
                    core.workers
                        .get(m)
                        .map(|w| w.collective.clone())
                        .unwrap_or_default()
                })
                .collect();
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
                class_vectors: data
                    .method_data
                    .class_vectors
                    .as_ref()
                    .map(class_vectors_to_pb),
                peers: peers.clone(),
            };
            let assignments: Vec<pb::Assignment> = (0..members.len()).map(assignment).collect();
            job.run = Some(Run {
                generation,
                members: members.clone(),
                rounds: BTreeMap::new(),
                fingerprints: BTreeMap::new(),
                last_round_at: Instant::now(),
                verified: 0,
                samples_per_s: 0.0,
                finishing: None,
                drain: None,
                last_times: None,
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
}
