//! The exactly-once ledger: for every epoch of each stage's first stream, how many samples
//! the completed steps used and an order-independent hash of their indices. Steps are
//! counted as the coordinator learns they completed (a star round, a ring report, the step a
//! re-formed group starts from), so a step that was skipped or counted twice — a group that
//! re-formed at the wrong step — shows as an epoch whose count is not its size.

use graft_transfer::shard;

use super::JobEntry;
use crate::job::{EpochUse, index_mix};

/// Counts step `step` (0-based); steps between the last counted and it are counted first.
pub(super) fn count_step(job: &mut JobEntry, step: u64) {
    count_through(job, step);
    count_one(job, step);
    job.record.ledger_step = step + 1;
}

/// Counts every step from the last counted up to (not including) `upto`.
pub(super) fn count_through(job: &mut JobEntry, upto: u64) {
    while job.record.ledger_step < upto {
        let s = job.record.ledger_step;
        count_one(job, s);
        job.record.ledger_step = s + 1;
    }
}

/// The ledger of a job resumed at `record.step` (after a restart): the steps before it.
pub fn rebuild(job: &mut JobEntry) {
    job.record.epochs.clear();
    job.record.ledger_step = 0;
    let upto = job.record.step;
    count_through(job, upto);
}

fn count_one(job: &mut JobEntry, step: u64) {
    let Some(data) = job.data.clone() else {
        return;
    };
    let Some((si, stage)) = data.stage_of(step) else {
        return;
    };
    let Some(plan) = stage.streams.first() else {
        return;
    };
    let (epoch, b) = plan.position(step - stage.first_step);
    let key = (si, epoch);
    if job.ledger_perm.as_ref().is_none_or(|(k, _)| *k != key) {
        let perm = shard::epoch_permutation(
            job.record.spec.seed,
            shard::stream_key(si as u32, 0),
            epoch,
            plan.samples,
        );
        job.ledger_perm = Some((key, perm));
    }
    let Some((_, perm)) = job.ledger_perm.as_ref() else {
        return;
    };
    let positions = shard::global_batch(plan.samples, plan.batch, b);
    let used = positions.len() as u64;
    let hash = positions
        .filter_map(|p| perm.get(p))
        .fold(0u64, |h, &i| h.wrapping_add(index_mix(i as u64)));
    let entry = match job
        .record
        .epochs
        .iter_mut()
        .position(|e| e.stage == si as u32 && e.epoch == epoch)
    {
        Some(i) => &mut job.record.epochs[i],
        None => {
            job.record.epochs.push(EpochUse {
                stage: si as u32,
                epoch,
                samples: plan.samples as u64,
                used: 0,
                index_hash: 0,
            });
            let last = job.record.epochs.len() - 1;
            &mut job.record.epochs[last]
        }
    };
    entry.used += used;
    entry.index_hash = entry.index_hash.wrapping_add(hash);
}
