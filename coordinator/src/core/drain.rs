//! Shutting down without losing work: on SIGTERM the coordinator lets every running job
//! finish the step it is on, asks rank 0 for its state after that step (the same upload a
//! checkpoint interval triggers), writes the checkpoint, and only then exits. A restarted
//! coordinator resumes the jobs from those checkpoints, as after any restart.
//!
//! The star all-reduce is what makes this exact: the coordinator sees every step, so it can
//! name the last one ([`Drain::last_step`]), refuse the next, and tell rank 0 in that step's
//! answer to upload its state.

use std::time::Duration;

use super::*;

/// A running job's part in the shutdown.
#[derive(Debug, Clone)]
pub(super) struct Drain {
    /// The last step the group may reduce; later ones are refused as UNAVAILABLE.
    pub(super) last_step: u64,
    /// The step of the checkpoint the shutdown waits for (`last_step + 1`).
    pub(super) checkpoint_step: u64,
    /// A member left: no state will come, the job resumes from its last checkpoint.
    pub(super) abandoned: bool,
    /// The ring: the step count at which the group was told to stop (in the answer to rank
    /// 0's next report), which then fixes `last_step` and `checkpoint_step`.
    pub(super) ring_stop: Option<u64>,
}

impl Coordinator {
    /// Stops starting jobs and marks where each running job stops; returns the jobs the
    /// shutdown waits for, with the step of their checkpoint.
    pub fn begin_drain(&self) -> Vec<(JobId, u64)> {
        let Ok(mut core) = self.lock() else {
            return Vec::new();
        };
        core.draining = true;
        let mut waiting = Vec::new();
        for (id, job) in core.jobs.iter_mut() {
            let total = job.record.total_steps;
            let (step, done) = (
                job.record.step,
                job.record.checkpoints.last().map_or(0, |c| c.step),
            );
            let Some(run) = job.run.as_mut() else {
                continue;
            };
            // The step open now (or about to open) still runs; the state after it is saved.
            // A job past its last step is only waiting for its final upload, which always
            // checkpoints.
            // With the ring the coordinator hears of a step after it is done, and the group
            // learns of the stop in rank 0's next report: the step after the one in flight is
            // the last (fixed exactly when rank 0 is told).
            let ring = job.record.spec.allreduce == graft_transfer::spec::AllReduce::Ring;
            let checkpoint_step = (step + 1 + u64::from(ring)).min(total);
            run.drain = Some(Drain {
                last_step: checkpoint_step.saturating_sub(1),
                checkpoint_step,
                abandoned: false,
                ring_stop: None,
            });
            if done < checkpoint_step {
                waiting.push((id.clone(), checkpoint_step));
            }
        }
        waiting
    }

    /// Whether the answer to `step` of `job` asks rank 0 to upload its state.
    pub fn drain_upload_wanted(&self, job: &str, step: u64) -> bool {
        self.drain_of(job).is_some_and(|d| d.last_step == step)
    }

    /// Whether an uploaded state of `step` must be checkpointed for the shutdown.
    pub fn drain_checkpoint_wanted(&self, job: &JobId, step: u64) -> bool {
        self.drain_of(&job.0)
            .is_some_and(|d| d.checkpoint_step == step)
    }

    fn drain_of(&self, job: &str) -> Option<Drain> {
        let core = self.lock().ok()?;
        core.jobs
            .get(&JobId(job.to_string()))?
            .run
            .as_ref()?
            .drain
            .clone()
    }

    /// The jobs of `waiting` that still have neither their checkpoint nor an end.
    fn still_draining(&self, waiting: &[(JobId, u64)]) -> Vec<JobId> {
        let Ok(core) = self.lock() else {
            return Vec::new();
        };
        waiting
            .iter()
            .filter(|(id, step)| {
                core.jobs.get(id).is_some_and(|j| {
                    // The ring's stop may have been fixed since the drain began.
                    let step = j
                        .run
                        .as_ref()
                        .and_then(|r| r.drain.as_ref())
                        .map_or(*step, |d| d.checkpoint_step);
                    let saved = j.record.checkpoints.last().is_some_and(|c| c.step >= step);
                    let abandoned = j
                        .run
                        .as_ref()
                        .and_then(|r| r.drain.as_ref())
                        .is_some_and(|d| d.abandoned);
                    !(j.record.state.is_terminal() || j.run.is_none() || saved || abandoned)
                })
            })
            .map(|(id, _)| id.clone())
            .collect()
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
            let left = self.still_draining(&waiting);
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
