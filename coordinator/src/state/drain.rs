//! Shutting down without losing work: on SIGTERM the coordinator lets every running job
//! finish the step it is on, asks rank 0 for its state after that step (the same upload a
//! checkpoint interval triggers), writes the checkpoint, and only then exits. A restarted
//! coordinator resumes the jobs from those checkpoints, as after any restart.
//!
//! The star all-reduce is what makes this exact: the coordinator sees every step, so it can
//! name the last one ([`Drain::last_step`]), refuse the next, and tell rank 0 in that step's
//! answer to upload its state.

use graft_common::JobId;
use graft_transfer::spec::AllReduce;

use super::State;

/// A running job's part in the shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    /// The last step the group may reduce; later ones are refused as UNAVAILABLE.
    pub last_step: u64,
    /// The step of the checkpoint the shutdown waits for (`last_step + 1`).
    pub checkpoint_step: u64,
    /// A member left: no state will come, the job resumes from its last checkpoint.
    pub abandoned: bool,
    /// The ring: the step count at which the group was told to stop (in the answer to rank
    /// 0's next report), which then fixes `last_step` and `checkpoint_step`.
    pub ring_stop: Option<u64>,
}

/// Stops starting jobs and marks where each running job stops; returns the jobs the
/// shutdown waits for, with the step of their checkpoint.
pub(super) fn begin(state: &mut State) -> Vec<(JobId, u64)> {
    state.draining = true;
    let mut waiting = Vec::new();
    for (id, job) in state.jobs.iter_mut() {
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
        // checkpoints. With the ring the coordinator hears of a step after it is done, and
        // the group learns of the stop in rank 0's next report: the step after the one in
        // flight is the last (fixed exactly when rank 0 is told).
        if run.regroup.is_some() {
            // No state can come before the group forms, and it will not form now: the job
            // resumes from its newest checkpoint (or the workers' replicas) after the restart.
            run.drain = Some(Drain {
                last_step: job.record.step,
                checkpoint_step: job.record.step,
                abandoned: true,
                ring_stop: None,
            });
            continue;
        }
        let ring = job.record.spec.allreduce == AllReduce::Ring;
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
