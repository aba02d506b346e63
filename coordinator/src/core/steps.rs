//! Steps: membership checks, reduction rounds, progress, fingerprints, state uploads,
//! evaluations and checkpoints.

use graft_transfer::shard;

use super::*;

impl Coordinator {
    /// Checks that `worker` is rank `rank` of the running group of `job` at `generation`,
    /// and returns the job's data.
    pub(super) fn member<'a>(
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

    /// The job's loaded data and the index of the stage that runs `step`.
    fn stage_of_step(
        entry: &JobEntry,
        job: &str,
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
        let (data, stage) = Self::stage_of_step(entry, job, step)?;
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
        let expected_samples =
            shard::local_part(global_len, world as u32, my_rank as u32).len() as u64;
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
        let mut bytes = 0;
        let mut took = std::time::Duration::ZERO;
        if let Some(round) = run.rounds.get(&step) {
            // Every rank's gradient in, and the sum out to every rank.
            bytes = (round.len * 4 * round.world * 2) as u64;
            took = round.created.elapsed();
        }
        run.rounds.retain(|&s, _| s > step);
        let times = run.last_times;
        self.counters.round(reduced.stats.samples, took, bytes);
        Self::step_done(entry, step, reduced.stats, times);
    }

    /// Rank 0's report of a ring step: the group's summed stats of `step` (0-based), checked
    /// against the job as the star checks each rank's. Returns the step count at which the
    /// group is to stop (non-zero only while the coordinator shuts down).
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
        let mut core = self.lock()?;
        let (entry, my_rank) = Self::member(&mut core, worker, job, Some(generation))?;
        if my_rank != 0 || rank != 0 {
            return Err(CoordinatorError::BadRequest(format!(
                "only rank 0 reports ring steps; worker {worker} is rank {my_rank}"
            )));
        }
        if entry.record.spec.allreduce != graft_transfer::spec::AllReduce::Ring {
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
        let (data, stage) = Self::stage_of_step(entry, job, step)?;
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
            self.end_job(
                &mut core,
                &JobId(job.to_string()),
                JobState::Failed,
                reason.clone(),
            );
            return Err(CoordinatorError::BadRequest(reason));
        }
        let Some(entry) = core.jobs.get_mut(&JobId(job.to_string())) else {
            return Ok(0);
        };
        let total = entry.record.total_steps;
        let mut stop_at = 0;
        if let Some(run) = entry.run.as_mut() {
            let world = run.members.len() as u64;
            let n = data.trainable_len(stage) as u64;
            // Each rank sends 2(W-1)/W of the gradient to its neighbour.
            let bytes = 2 * (world.saturating_sub(1)) * n * 4;
            let took = times.map_or(0.0, |t| t.comm_ms);
            self.counters.round(
                stats.samples,
                std::time::Duration::from_secs_f64(took.max(0.0) / 1e3),
                bytes,
            );
            if let Some(d) = run.drain.as_mut() {
                // The step after this one is in flight; the group stops after it.
                let at = d.ring_stop.unwrap_or_else(|| (step + 2).min(total));
                d.ring_stop = Some(at);
                d.checkpoint_step = at;
                d.last_step = at.saturating_sub(1);
                stop_at = at;
            }
        }
        Self::step_done(entry, step, stats, times);
        Ok(stop_at)
    }

    /// Progress after `step` (0-based) for watchers, the curves and `/metrics`.
    fn step_done(entry: &mut JobEntry, step: u64, stats: StepStats, times: Option<pb::StepTimes>) {
        let Some(run) = entry.run.as_mut() else {
            return;
        };
        let elapsed = run.last_round_at.elapsed().as_secs_f64().max(1e-9);
        run.last_round_at = Instant::now();
        let rate = stats.samples as f64 / elapsed;
        run.samples_per_s = if run.samples_per_s == 0.0 {
            rate
        } else {
            0.95 * run.samples_per_s + 0.05 * rate
        };
        let workers = run.members.len() as u32;
        entry.record.step = entry.record.step.max(step + 1);
        let Some(data) = entry.data.clone() else {
            return;
        };
        let (stage_idx, stage) = data.stage_of(step).map_or((0, None), |(i, s)| (i, Some(s)));
        let StepStats {
            loss_sum,
            samples,
            correct,
        } = stats;
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
            times,
        };
        entry
            .history
            .push_step(progress.step, progress.loss, progress.train_accuracy);
        let _ = entry.events.send(pb::JobEvent {
            event: Some(pb::job_event::Event::Progress(progress)),
        });
    }

    /// Keeps rank 0's step times for the next progress event (the star).
    pub fn note_times(&self, job: &str, times: pb::StepTimes) {
        let Ok(mut core) = self.lock() else { return };
        if let Some(run) = core
            .jobs
            .get_mut(&JobId(job.to_string()))
            .and_then(|j| j.run.as_mut())
        {
            run.last_times = Some(times);
        }
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
        // With the ring a rank may finish a step before rank 0's report of it arrives, never
        // two: rank 0 hears back from its report before it joins the next step's ring.
        let ahead = u64::from(entry.record.spec.allreduce == graft_transfer::spec::AllReduce::Ring);
        if step == 0 || step > entry.record.step + ahead {
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
            if run.finishing.is_some() && run.verified >= total {
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
        generation: u64,
    ) -> Result<JobHandle, CoordinatorError> {
        let mut core = self.lock()?;
        let (entry, rank) = Self::member(&mut core, worker, job, Some(generation))?;
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
    pub(super) fn write_curves(&self, job: &JobId, svg: &str) {
        let dir = self.config.job_dir(job);
        let write = std::fs::create_dir_all(&dir)
            .map_err(|source| CoordinatorError::Io {
                path: dir.display().to_string(),
                source,
            })
            .and_then(|()| {
                graft_common::fs::write_atomic(&dir.join("curves.svg"), svg.as_bytes())
                    .map_err(CoordinatorError::from)
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

    /// Gauges for `/metrics`.
    pub fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        let Ok(core) = self.lock() else {
            return crate::metrics::Snapshot::default();
        };
        crate::metrics::Snapshot {
            workers: core.workers.len(),
            jobs: core
                .jobs
                .values()
                .map(|j| crate::metrics::JobGauges {
                    id: j.record.id.0.clone(),
                    state: state_word(j.record.state),
                    step: j.record.step,
                    total_steps: j.record.total_steps,
                    workers: j.record.workers,
                    samples_per_s: j.run.as_ref().map_or(0.0, |r| r.samples_per_s),
                    metrics: j.record.metrics.clone(),
                })
                .collect(),
        }
    }
}
