//! The star all-reduce: one round per step, the gradient sum taken in rank order.
//!
//! Every worker streams its flattened gradient to the coordinator; when all `W` ranks of the
//! group have contributed, the round sums them in rank order (so the result is the same from
//! run to run for a given `W`), divides by the global sample count and wakes every waiting
//! handler, which streams the mean back.

use std::sync::{Arc, Mutex};

pub use graft_common::reduce::{Reduced, reduce_in_rank_order};
use graft_transfer::StepStats;
use tokio::sync::watch;

/// Where a round is.
#[derive(Debug, Clone)]
pub enum RoundStatus {
    /// Waiting for contributions.
    Waiting,
    /// Every rank contributed.
    Done(Arc<Reduced>),
    /// The job stopped; the reason.
    Failed(String),
}

/// One rank's gradient and stats.
type Contribution = (Vec<f32>, StepStats);

#[derive(Debug)]
struct Slots {
    parts: Vec<Option<Contribution>>,
    /// Every rank contributed; nothing more is taken.
    complete: bool,
}

/// One step's reduction.
#[derive(Debug)]
pub struct Round {
    /// Elements of the flattened gradient.
    pub len: usize,
    /// Ranks in the group.
    pub world: usize,
    slots: Mutex<Slots>,
    /// Sent by whoever completes or fails the round; every handler of the step waits on a
    /// receiver. Never closed while the round is referenced.
    status: watch::Sender<RoundStatus>,
}

impl Round {
    /// A round for `world` ranks and gradients of `len` elements.
    pub fn new(world: usize, len: usize) -> Self {
        Self {
            len,
            world,
            slots: Mutex::new(Slots {
                parts: vec![None; world],
                complete: false,
            }),
            status: watch::channel(RoundStatus::Waiting).0,
        }
    }

    /// A receiver of the round's status.
    pub fn subscribe(&self) -> watch::Receiver<RoundStatus> {
        self.status.subscribe()
    }

    /// Adds rank `rank`'s contribution; returns the sum if it was the last one. The caller
    /// records the step, then [`publish`](Round::publish)es the sum to the waiters, so that no
    /// rank can ask for the next step before the coordinator has moved on to it.
    ///
    /// # Errors
    /// A message when the rank is out of range, already contributed, the length is wrong or
    /// the round is complete or failed.
    pub fn deposit(
        &self,
        rank: usize,
        grad: Vec<f32>,
        stats: StepStats,
    ) -> Result<Option<Arc<Reduced>>, String> {
        if grad.len() != self.len {
            return Err(format!(
                "gradient has {} elements, expected {}",
                grad.len(),
                self.len
            ));
        }
        if let RoundStatus::Failed(r) = &*self.status.borrow() {
            return Err(r.clone());
        }
        let mut slots = self
            .slots
            .lock()
            .map_err(|_| "round lock poisoned".to_string())?;
        if slots.complete {
            return Err("this step's reduction is already complete".into());
        }
        let world = slots.parts.len();
        let slot = slots
            .parts
            .get_mut(rank)
            .ok_or_else(|| format!("rank {rank} is not in a group of {world}"))?;
        if slot.is_some() {
            return Err(format!(
                "rank {rank} already sent its gradient for this step"
            ));
        }
        *slot = Some((grad, stats));
        if slots.parts.iter().all(Option::is_some) {
            slots.complete = true;
            let all: Vec<Contribution> = slots.parts.iter_mut().filter_map(Option::take).collect();
            return Ok(Some(Arc::new(reduce_in_rank_order(&all))));
        }
        Ok(None)
    }

    /// Wakes every waiter with the sum.
    pub fn publish(&self, reduced: Arc<Reduced>) {
        // A round failed in the meantime (the job ended) stays failed.
        self.status.send_if_modified(|status| {
            if matches!(status, RoundStatus::Waiting) {
                *status = RoundStatus::Done(reduced);
                true
            } else {
                false
            }
        });
    }

    /// Fails the round: every waiter wakes with `reason`.
    pub fn fail(&self, reason: &str) {
        if !matches!(*self.status.borrow(), RoundStatus::Done(_)) {
            self.status
                .send_replace(RoundStatus::Failed(reason.to_string()));
        }
    }
}

/// Waits until the round is done or failed.
///
/// # Errors
/// The failure reason.
pub async fn wait(mut rx: watch::Receiver<RoundStatus>) -> Result<Arc<Reduced>, String> {
    loop {
        match &*rx.borrow_and_update() {
            RoundStatus::Done(r) => return Ok(r.clone()),
            RoundStatus::Failed(reason) => return Err(reason.clone()),
            RoundStatus::Waiting => {}
        }
        if rx.changed().await.is_err() {
            return Err("round abandoned".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_over_global_samples_in_rank_order() {
        let r = reduce_in_rank_order(&[
            (
                vec![2.0, 4.0],
                StepStats {
                    loss_sum: 1.0,
                    samples: 1,
                    correct: 1,
                },
            ),
            (
                vec![6.0, 8.0],
                StepStats {
                    loss_sum: 3.0,
                    samples: 3,
                    correct: 0,
                },
            ),
        ]);
        assert_eq!(r.grad, vec![2.0, 3.0]);
        assert_eq!(r.stats.samples, 4);
        assert_eq!(r.stats.loss_sum, 4.0);
    }

    #[tokio::test]
    async fn round_completes_once_every_rank_contributed() {
        let round = Arc::new(Round::new(2, 1));
        let rx = round.subscribe();
        let waiter = tokio::spawn(wait(rx));
        assert!(
            round
                .deposit(
                    1,
                    vec![3.0],
                    StepStats {
                        samples: 1,
                        ..StepStats::default()
                    }
                )
                .expect("ok")
                .is_none()
        );
        assert!(
            round.deposit(1, vec![3.0], StepStats::default()).is_err(),
            "twice from one rank"
        );
        assert!(
            round
                .deposit(0, vec![1.0, 2.0], StepStats::default())
                .is_err(),
            "wrong length"
        );
        assert!(
            round.deposit(2, vec![1.0], StepStats::default()).is_err(),
            "rank out of range"
        );
        let done = round
            .deposit(
                0,
                vec![1.0],
                StepStats {
                    samples: 1,
                    ..StepStats::default()
                },
            )
            .expect("ok")
            .expect("complete");
        assert_eq!(done.grad, vec![2.0]);
        assert!(
            !waiter.is_finished(),
            "waiters wake only when the sum is published"
        );
        round.publish(done);
        assert_eq!(waiter.await.expect("joins").expect("done").grad, vec![2.0]);
        assert!(
            round.deposit(0, vec![1.0], StepStats::default()).is_err(),
            "a complete round takes nothing more"
        );
    }

    #[tokio::test]
    async fn a_failed_round_wakes_its_waiters() {
        let round = Round::new(2, 1);
        let rx = round.subscribe();
        round.fail("worker w-1 died");
        round.publish(Arc::new(reduce_in_rank_order(&[(
            vec![1.0],
            StepStats::default(),
        )])));
        assert_eq!(
            wait(rx).await.expect_err("failed"),
            "worker w-1 died",
            "publishing does not revive a failed round"
        );
        assert!(round.deposit(0, vec![1.0], StepStats::default()).is_err());
    }
}
