//! Jobs: submission, queries, cancellation and the end of a job.

use super::*;

impl Coordinator {
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
            JobEntry::new(record.clone(), Some(Arc::new(data)), start),
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
                "job {id} has already ended ({})",
                state_word(state)
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

    pub(super) fn end_job(&self, core: &mut Core, id: &JobId, state: JobState, reason: String) {
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
            Some(run) if run.verified < total => run.finishing = Some(Instant::now()),
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
        if let Some(d) = entry.run.as_mut().and_then(|r| r.drain.as_mut()) {
            // Failing the job now would lose it; after the restart it resumes from its newest
            // checkpoint instead, and the shutdown need not wait for a state that will not come.
            tracing::warn!(%job, %worker, %reason, "a worker left during the shutdown; the job resumes after the restart");
            d.abandoned = true;
            return Ok(());
        }
        let name = core
            .workers
            .get(worker)
            .map_or("?".to_string(), |w| w.name.clone());
        let reason = format!("worker {worker} ({name}, rank {rank}) left the job: {reason}");
        self.end_job(&mut core, &JobId(job.to_string()), JobState::Failed, reason);
        Ok(())
    }
}
