//! A worker's place in one generation of a job's group: its rank and world, its peers, the
//! reducer that sums with them, and its shards of the data. Torn down and formed again when
//! the group changes, while the [`Replica`](crate::replica::Replica) stays.

use std::sync::Arc;

use graft_common::group_key::GroupKey;
use graft_proto::v1 as pb;
use graft_transfer::methods::Batch;
use graft_transfer::shard;
use graft_transfer::spec::AllReduce;

use crate::error::WorkerError;
use crate::reducer::{Reducer, RingReducer, StarReducer};
use crate::replica::Replica;
use crate::ring::{Gate, Inbox, RightLink, Ring};
use crate::rpc::{self, Shard};
use crate::trainer::JobContext;

/// Closes the job's ring mailbox when the group is torn down, however that happens.
struct MailboxGuard(Arc<Inbox>, String);

impl Drop for MailboxGuard {
    fn drop(&mut self) {
        self.0.close(&self.1);
    }
}

/// Resolves once `abort` is set (checked every 100 ms, as the step loop does).
async fn stopped(abort: Arc<std::sync::atomic::AtomicBool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        tick.tick().await;
        if abort.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
    }
}

/// One generation of a job's group, as this worker sees it.
pub struct Group {
    /// The job.
    pub job: String,
    /// Bumped by the coordinator whenever the membership changes; every message of the
    /// group carries it, and one of another generation is refused.
    pub generation: u64,
    /// This worker's rank.
    pub rank: u32,
    /// The group's size.
    pub world: u32,
    /// The ring or the star.
    pub reducer: Box<dyn Reducer>,
    /// One cached shard per stream: ((stage, epoch), samples). A shard depends on the rank
    /// and world, so it belongs to the group, not the replica.
    shards: Vec<Option<((usize, u64), Shard)>>,
    _mailbox: Option<MailboxGuard>,
}

impl Group {
    /// Joins the group the assignment describes: for the ring, opens this generation's
    /// mailbox and connects to the right neighbour.
    ///
    /// # Errors
    /// [`WorkerError`] when the assignment lacks a peer's address or the neighbour cannot be
    /// reached.
    pub fn form(ctx: &JobContext, a: &pb::Assignment, ring: bool) -> Result<Self, WorkerError> {
        let (rank, world, generation) = (a.rank, a.world_size.max(1), a.generation);
        let job = a.job_id.clone();
        let (reducer, mailbox): (Box<dyn Reducer>, _) = if ring {
            let key = GroupKey::from_bytes(&a.group_key).map_err(WorkerError::Protocol)?;
            let left = (rank + world - 1) % world;
            let inbox = ctx.inbox.open(
                &job,
                generation,
                Gate {
                    key: key.clone(),
                    left,
                },
            );
            let guard = MailboxGuard(ctx.inbox.clone(), job.clone());
            let right = ((rank + 1) % world) as usize;
            let right_addr = a.peers.get(right).cloned().unwrap_or_default();
            let client = if world > 1 {
                if right_addr.is_empty() {
                    return Err(WorkerError::Protocol(format!(
                        "the coordinator gave no collective address for rank {right}"
                    )));
                }
                // A neighbour that died before the group formed is not waited for until the
                // collective timeout: the coordinator stops the generation, and so do we.
                let abort = ctx.abort.clone();
                // As the wire reads it: unset (or a value unknown here) is tcp.
                let tcp = a
                    .spec
                    .as_ref()
                    .is_none_or(|s| s.ring_transport() != pb::RingTransport::Grpc);
                let transport = if tcp { "tcp" } else { "grpc" };
                tracing::info!(
                    job = %job,
                    generation,
                    rank,
                    right = %right_addr,
                    transport = %transport,
                    "joining the ring"
                );
                let (addr, bearer, wait) = (
                    right_addr.clone(),
                    ctx.bearer.clone(),
                    ctx.collective_timeout,
                );
                let (job, key) = (job.clone(), key.clone());
                let connect = async move {
                    if tcp {
                        crate::ring::TcpLink::connect(
                            &addr, &job, generation, rank, &key, wait, right,
                        )
                        .await
                        .map(RightLink::Tcp)
                    } else {
                        crate::ring::connect(&addr, bearer, wait, right)
                            .await
                            .map(RightLink::from)
                    }
                };
                Some(ctx.rt.block_on(async move {
                    tokio::select! {
                        r = connect => r,
                        () = stopped(abort) => Err(crate::ring::RingError::Local(
                            "the job was stopped while connecting to the ring".into(),
                            0,
                        )),
                    }
                })?)
            } else {
                None
            };
            let ring = Ring::new(
                rank as usize,
                world as usize,
                &job,
                generation,
                key,
                client,
                right_addr,
                inbox,
                ctx.collective_timeout,
            )
            .with_abort(ctx.abort.clone());
            (
                Box::new(RingReducer::new(ctx.rt.clone(), ring)),
                Some(guard),
            )
        } else {
            (
                Box::new(StarReducer::new(
                    ctx.rt.clone(),
                    ctx.cluster.clone(),
                    ctx.worker.clone(),
                    job.clone(),
                    rank,
                    generation,
                )),
                None,
            )
        };
        Ok(Self {
            job,
            generation,
            rank,
            world,
            reducer,
            shards: Vec::new(),
            _mailbox: mailbox,
        })
    }

    /// Whether a job of this spec reduces over the ring.
    pub fn uses_ring(replica: &Replica) -> bool {
        replica.spec.allreduce == AllReduce::Ring
    }

    /// This rank's local batches of step `i` of stage `si`, one per stream, fetching the
    /// stream's shard of the epoch when the step enters a new one.
    ///
    /// # Errors
    /// [`WorkerError`] when a shard cannot be fetched or does not fit the network.
    pub fn local_batches(
        &mut self,
        ctx: &mut JobContext,
        replica: &Replica,
        si: usize,
        i: u64,
    ) -> Result<Vec<Batch>, WorkerError> {
        let stage = &replica.stages[si];
        let dim = replica.arch.input_dim();
        self.shards
            .resize_with(stage.streams.len().max(self.shards.len()), || None);
        let mut batches = Vec::with_capacity(stage.streams.len());
        for (k, plan) in stage.streams.iter().enumerate() {
            let (epoch, b) = plan.position(i);
            if self.shards[k].as_ref().map(|(key, _)| *key) != Some((si, epoch)) {
                let s = ctx.rt.block_on(rpc::fetch_shard(
                    &mut ctx.cluster,
                    &ctx.worker,
                    &self.job,
                    si as u32,
                    k as u32,
                    epoch,
                    self.generation,
                ))?;
                self.shards[k] = Some(((si, epoch), s));
            }
            let Some((_, data)) = self.shards[k].as_ref() else {
                return Err(WorkerError::Protocol("shard cache emptied".into()));
            };
            let range = shard::local_batch(plan.samples, plan.batch, self.world, self.rank, b);
            if range.end > data.labels.len() {
                return Err(WorkerError::Protocol(format!(
                    "shard of {} samples has no local batch {range:?}",
                    data.labels.len()
                )));
            }
            if !data.labels.is_empty() && data.dim != dim {
                return Err(WorkerError::Protocol(format!(
                    "shard samples have {} values, the network takes {dim}",
                    data.dim
                )));
            }
            batches.push(Batch {
                features: data.features[range.start * dim..range.end * dim].to_vec(),
                labels: data.labels[range.clone()].to_vec(),
                dim,
            });
        }
        Ok(batches)
    }
}
