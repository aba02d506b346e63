//! Summing gradients across the group: the star through the coordinator, or the ring between
//! the workers, behind one interface so that the step loop does not know which.

use graft_proto::v1 as pb;
use graft_transfer::StepStats;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::error::WorkerError;
use crate::ring::{Ring, RingError, RingSum, StepFeed};
use crate::rpc::{self, Cluster};

/// The group's answer for one step.
#[derive(Debug, Clone)]
pub struct Reduced {
    /// The mean gradient over the global batch.
    pub mean: Vec<f32>,
    /// The group's summed stats.
    pub stats: StepStats,
    /// Rank 0 is to upload its state after this step (the coordinator is shutting down).
    pub upload: bool,
    /// The group stops after this step (the ring's part of a shutdown).
    pub stop: bool,
}

/// Sums gradients across the group: the star through the coordinator, or the ring between
/// the workers. A step hands over its gradient bucket by bucket while it is flattened
/// ([`Reducer::bucket`]), so that a reducer can start on the first bucket while later
/// parameters are still being flattened, then waits for the sum ([`Reducer::finish`]).
pub trait Reducer {
    /// Starts `step`, whose gradient comes in `n_buckets` buckets.
    fn begin(&mut self, step: u64, n_buckets: usize);
    /// The next bucket of this rank's gradient.
    fn bucket(&mut self, values: Vec<f32>);
    /// This rank's stats; waits for the group's mean gradient and stats. `stop_at` is rank
    /// 0's word that the group stops after that many steps (the ring), `times` rank 0's
    /// breakdown of the previous step (the star carries it to the coordinator).
    ///
    /// # Errors
    /// [`WorkerError`] when the group cannot complete the step.
    fn finish(
        &mut self,
        stats: StepStats,
        stop_at: u64,
        times: Option<pb::StepTimes>,
    ) -> Result<Reduced, WorkerError>;
}

/// Star all-reduce through the coordinator.
pub struct StarReducer {
    rt: Handle,
    cluster: Cluster,
    worker: String,
    job: String,
    rank: u32,
    generation: u64,
    step: u64,
    grad: Vec<f32>,
}

impl StarReducer {
    /// A reducer for rank `rank` of `job`'s group at `generation`.
    pub fn new(
        rt: Handle,
        cluster: Cluster,
        worker: String,
        job: String,
        rank: u32,
        generation: u64,
    ) -> Self {
        Self {
            rt,
            cluster,
            worker,
            job,
            rank,
            generation,
            step: 0,
            grad: Vec::new(),
        }
    }
}

impl Reducer for StarReducer {
    fn begin(&mut self, step: u64, _n_buckets: usize) {
        self.step = step;
        self.grad.clear();
    }

    fn bucket(&mut self, values: Vec<f32>) {
        if self.grad.is_empty() {
            self.grad = values;
        } else {
            self.grad.extend_from_slice(&values);
        }
    }

    fn finish(
        &mut self,
        stats: StepStats,
        _stop_at: u64,
        times: Option<pb::StepTimes>,
    ) -> Result<Reduced, WorkerError> {
        let grad = std::mem::take(&mut self.grad);
        let r = self.rt.block_on(rpc::reduce(
            &mut self.cluster,
            &self.worker,
            &self.job,
            self.rank,
            self.step,
            self.generation,
            &grad,
            stats,
            times,
        ))?;
        Ok(Reduced {
            mean: r.mean,
            stats: r.stats,
            upload: r.upload_state,
            stop: false,
        })
    }
}

type RingTask = tokio::task::JoinHandle<(Ring, Result<RingSum, RingError>)>;

/// Ring all-reduce between the workers ([`crate::ring`]); the ring's async work runs on the
/// runtime while the training thread flattens the next bucket.
pub struct RingReducer {
    rt: Handle,
    ring: Option<Ring>,
    task: Option<RingTask>,
    buckets: Option<mpsc::UnboundedSender<Vec<f32>>>,
    stats: Option<oneshot::Sender<(StepStats, u64)>>,
    step: u64,
    n_buckets: usize,
}

impl RingReducer {
    /// A reducer over `ring`.
    pub fn new(rt: Handle, ring: Ring) -> Self {
        Self {
            rt,
            ring: Some(ring),
            task: None,
            buckets: None,
            stats: None,
            step: 0,
            n_buckets: 0,
        }
    }

    /// Starts the step's ring on the runtime at the first bucket (not before the forward
    /// and backward, so that the ring's timeouts only measure the neighbours).
    fn start(&mut self) {
        if self.task.is_some() {
            return;
        }
        let Some(mut ring) = self.ring.take() else {
            return;
        };
        let (btx, brx) = mpsc::unbounded_channel();
        let (stx, srx) = oneshot::channel();
        self.buckets = Some(btx);
        self.stats = Some(stx);
        let (step, n) = (self.step, self.n_buckets);
        self.task = Some(self.rt.spawn(async move {
            let feed = StepFeed {
                buckets: brx,
                stats: srx,
            };
            let r = ring.all_reduce(step, n, feed).await;
            (ring, r)
        }));
    }
}

impl Reducer for RingReducer {
    fn begin(&mut self, step: u64, n_buckets: usize) {
        self.step = step;
        self.n_buckets = n_buckets;
    }

    fn bucket(&mut self, values: Vec<f32>) {
        self.start();
        if let Some(tx) = &self.buckets {
            // A failed send means the ring already failed; `finish` reports why.
            let _ = tx.send(values);
        }
    }

    fn finish(
        &mut self,
        stats: StepStats,
        stop_at: u64,
        _times: Option<pb::StepTimes>,
    ) -> Result<Reduced, WorkerError> {
        self.start();
        self.buckets = None;
        if let Some(tx) = self.stats.take() {
            let _ = tx.send((stats, stop_at));
        }
        let task = self
            .task
            .take()
            .ok_or_else(|| WorkerError::Setup("the ring was lost by an earlier step".into()))?;
        let (ring, sum) = self
            .rt
            .block_on(task)
            .map_err(|e| WorkerError::Setup(format!("the ring's task failed: {e}")))?;
        self.ring = Some(ring);
        let RingSum {
            mut sum,
            stats,
            stop_at,
        } = sum?;
        if stats.samples > 0 {
            let inv = 1.0 / stats.samples as f32;
            for v in &mut sum {
                *v *= inv;
            }
        }
        let stop = stop_at != 0 && self.step + 1 >= stop_at;
        Ok(Reduced {
            mean: sum,
            stats,
            upload: stop,
            stop,
        })
    }
}
