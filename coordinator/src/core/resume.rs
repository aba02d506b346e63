//! Starting over a store: the jobs it holds come back, unfinished ones as `PENDING` from
//! their newest valid checkpoint, finished ones as they were.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use super::{Coordinator, Shared};
use crate::checkpoint::CheckpointDir;
use crate::config::CoordinatorConfig;
use crate::error::CoordinatorError;
use crate::job::{JobRecord, JobState, now_ms};
use crate::jobdata::JobData;
use crate::state::{JobEntry, Limits, Now, StartState, State};
use crate::store::Store;

impl Coordinator {
    /// A coordinator over `store`, resuming the jobs it holds: unfinished jobs go back to
    /// `PENDING` and start again from their newest valid checkpoint.
    ///
    /// # Errors
    /// [`CoordinatorError::Store`] when the store cannot be read.
    pub fn new(config: CoordinatorConfig, store: Store) -> Result<Self, CoordinatorError> {
        let seed = graft_common::group_key::random().map_err(CoordinatorError::Internal)?;
        let mut state = State::new(Limits::of(&config), seed);
        let at = Now {
            mono_ms: 0,
            unix_ms: now_ms(),
        };
        let records = store.all()?;
        reserve_orphan_ids(&config, &store, &records)?;
        for mut record in records {
            let was_open = !record.state.is_terminal();
            let (data, start) = resume(&config, &mut record);
            if was_open {
                store.put(&record)?;
            }
            let mut entry = JobEntry::new(record, data, start, at);
            if entry.data.is_some() {
                // Resumed at its checkpoint's step: the ledger restarts from there.
                crate::state::ledger::rebuild(&mut entry);
            }
            state.jobs.insert(entry.record.id.clone(), entry);
        }
        let (saves, save_requests) = tokio::sync::mpsc::unbounded_channel();
        Ok(Self {
            saves,
            save_requests: Mutex::new(Some(save_requests)),
            shared: Mutex::new(Shared {
                state,
                channels: BTreeMap::new(),
            }),
            io: Mutex::new(()),
            store,
            config,
            counters: crate::metrics::Counters::default(),
            assigned: Notify::new(),
            started: Instant::now(),
        })
    }
}

/// Job directories the store does not know (a store lost or restored from an older backup)
/// keep their ids: new jobs are numbered past them, so that no job ever writes into, or
/// prunes, another's checkpoints.
fn reserve_orphan_ids(
    config: &CoordinatorConfig,
    store: &Store,
    records: &[JobRecord],
) -> Result<(), CoordinatorError> {
    let Ok(dir) = std::fs::read_dir(config.state_dir.join("jobs")) else {
        return Ok(());
    };
    let mut orphans: Vec<(u64, String)> = dir
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            // `job-N-<suffix>` (and `job-N` of stores written before ids had a suffix).
            let n = name
                .strip_prefix("job-")?
                .split('-')
                .next()?
                .parse::<u64>()
                .ok()?;
            (!records.iter().any(|r| r.id.0 == name)).then_some((n, name))
        })
        .collect();
    orphans.sort();
    if let Some((max, _)) = orphans.last() {
        let names: Vec<&str> = orphans.iter().map(|(_, n)| n.as_str()).collect();
        tracing::warn!(dirs = ?names, "the job store does not know these job directories; their ids will not be reused");
        store.reserve_job_numbers(*max)?;
    }
    Ok(())
}

/// Brings an unfinished job back: its data and the state it resumes from, or its end when
/// the final checkpoint exists or the data cannot be loaded. A finished job stays as it was.
fn resume(
    config: &CoordinatorConfig,
    record: &mut JobRecord,
) -> (Option<Arc<JobData>>, Option<Arc<StartState>>) {
    if record.state.is_terminal() {
        return (None, None);
    }
    let d = match JobData::load(&record.spec, &config.datasets_dir()) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            record.state = JobState::Failed;
            record.reason = format!("cannot resume after restart: {e}");
            record.finished_unix_ms = now_ms();
            return (None, None);
        }
    };
    let ckpt = CheckpointDir::new(config.job_dir(&record.id).join("checkpoints"));
    let start = match ckpt.latest_valid(&d.arch) {
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
            d.init_params
                .clone()
                .map(|p| Arc::new(StartState::fresh(p)))
        }
    };
    if record.step >= d.total_steps() {
        // The final checkpoint was written but the coordinator stopped before it recorded
        // the end: the job is done.
        tracing::info!(job = %record.id, step = record.step, "job had finished before the restart");
        record.state = JobState::Completed;
        record.reason.clear();
        record.finished_unix_ms = now_ms();
        if let Some(l) = ckpt.latest_valid(&d.arch) {
            record.metrics.extend(l.manifest.metrics.clone());
            if record.checkpoints.last().map(|c| c.step) != Some(l.manifest.step) {
                record.checkpoints.push(ckpt.record_of(&l.manifest));
            }
        }
        return (None, None);
    }
    tracing::info!(job = %record.id, step = record.step, "resuming job after restart");
    record.state = JobState::Pending;
    record.reason = format!("coordinator restarted; resuming from step {}", record.step);
    (Some(d), start)
}
