//! One rank of the ring and its step loop: what it sends, what it accepts from the left
//! neighbour (every message is checked against the one that must come next), and how the
//! right neighbour's confirmation ends the step.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use graft_common::group_key::{GroupKey, NONCE_BYTES, StreamClaim, random};
use graft_proto::CHUNK_BYTES;
use graft_proto::chunk::checksum;
use graft_proto::v1 as pb;
use graft_transfer::StepStats;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::kernel::{add_or_store, join};
use super::pool::BufferPool;
use super::schedule::{Cursor, advance, segment, skip_empty};
use super::transport::{Incoming, RightLink, next_incoming};

/// Why a ring step failed.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// A neighbour was silent for too long.
    #[error("step {step}: {what} for {secs:.1}s (collective_timeout_ms)")]
    Timeout {
        /// The step.
        step: u64,
        /// Who did not do what.
        what: String,
        /// The timeout.
        secs: f64,
        /// The neighbour that was silent (none when this rank's own gradient was late).
        peer: Option<usize>,
    },
    /// A neighbour sent something that does not belong to this step.
    #[error("step {step}: refused a message from rank {from}: {reason}")]
    Refused {
        /// The step.
        step: u64,
        /// The sending rank.
        from: usize,
        /// What was wrong.
        reason: String,
    },
    /// The right neighbour's server refused or dropped the stream.
    #[error("step {step}: rank {to} at {addr}: {status}")]
    Send {
        /// The step.
        step: u64,
        /// The receiving rank.
        to: usize,
        /// Its address.
        addr: String,
        /// What it said.
        status: String,
    },
    /// This rank's own gradient is unusable.
    #[error(
        "rank {rank} computed a non-finite gradient at step {step} (bucket {bucket}, element {index}); the step is stopped"
    )]
    NonFinite {
        /// This rank.
        rank: usize,
        /// The step.
        step: u64,
        /// The bucket.
        bucket: usize,
        /// The element in the bucket.
        index: usize,
    },
    /// The caller broke the step's contract (too few buckets, no stats).
    #[error("step {step}: {0}", step = .1)]
    Local(String, u64),
}

impl RingError {
    /// The neighbour the failure points at: the rank that was silent, refused, or sent what
    /// does not belong (none when this rank itself failed the step).
    #[must_use]
    pub fn peer(&self) -> Option<usize> {
        match self {
            Self::Timeout { peer, .. } => *peer,
            Self::Refused { from, .. } => Some(*from),
            Self::Send { to, .. } => Some(*to),
            Self::NonFinite { .. } | Self::Local(..) => None,
        }
    }
}

/// The group's sums of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct RingSum {
    /// The summed buckets, concatenated (not divided by the sample count).
    pub sum: Vec<f32>,
    /// The ranks' stats summed in rank order.
    pub stats: StepStats,
    /// Rank 0's word: the group stops after this many steps (0: no stop).
    pub stop_at: u64,
}

/// One rank of a ring.
pub struct Ring {
    /// This rank.
    pub rank: usize,
    /// Ranks in the ring.
    pub world: usize,
    job: String,
    generation: u64,
    /// The group's key: the first message of each stream proves it to the right neighbour.
    key: GroupKey,
    right: Option<RightLink>,
    right_addr: String,
    inbox: mpsc::Receiver<Incoming>,
    timeout: Duration,
    chunk_elems: usize,
    abort: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// The buffers of the chunks this rank sends, reused from step to step.
    pool: BufferPool,
}

/// What one step of the ring is fed by the training thread.
pub struct StepFeed {
    /// The gradient buckets, in order, as they are flattened.
    pub buckets: mpsc::UnboundedReceiver<Vec<f32>>,
    /// This rank's stats and (rank 0) the stop word, once known.
    pub stats: oneshot::Receiver<(StepStats, u64)>,
}

impl Ring {
    /// Rank `rank` of `world` for `job` at `generation`, sending to `right_addr` and reading
    /// the streams queued in `inbox` (from [`Inbox::open`](super::Inbox::open)).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rank: usize,
        world: usize,
        job: &str,
        generation: u64,
        key: GroupKey,
        right: Option<RightLink>,
        right_addr: String,
        inbox: mpsc::Receiver<Incoming>,
        timeout: Duration,
    ) -> Self {
        Self {
            rank,
            world,
            job: job.to_string(),
            generation,
            key,
            right,
            right_addr,
            inbox,
            timeout,
            chunk_elems: CHUNK_BYTES / 4,
            abort: None,
            pool: BufferPool::default(),
        }
    }

    /// Gives up on a step as soon as `abort` is set (the coordinator ended the job: a
    /// neighbour that died between steps would otherwise hold this rank for the timeout).
    pub fn with_abort(mut self, abort: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.abort = Some(abort);
        self
    }

    /// Uses chunks of `bytes` (tests use small ones to exercise many chunks).
    pub fn with_chunk_bytes(mut self, bytes: usize) -> Self {
        self.chunk_elems = (bytes / 4).max(1);
        self
    }

    #[allow(clippy::too_many_arguments)]
    fn chunk_msg(
        &self,
        step: u64,
        bucket: usize,
        segment: usize,
        phase: pb::RingPhase,
        offset: usize,
        total: usize,
        values: &[f32],
    ) -> pb::RingMessage {
        let data = self.pool.f32_bytes(values);
        pb::RingMessage {
            job_id: String::new(),
            from_rank: self.rank as u32,
            bucket: bucket as u32,
            segment: segment as u32,
            phase: phase as i32,
            chunk: Some(pb::TensorChunk {
                offset: offset as u64,
                total_len: total as u64,
                step,
                generation: self.generation,
                crc32: checksum(&data),
                data,
            }),
            stats: None,
            step,
            generation: self.generation,
            nonce: Vec::new(),
            proof: Vec::new(),
        }
    }

    /// Queues this rank's own segment of `bucket` (the first reduce-scatter pass).
    fn queue_own(&self, step: u64, b: usize, values: &[f32], out: &mut VecDeque<pb::RingMessage>) {
        let (start, end) = segment(values.len(), self.world, self.rank);
        let mut at = start;
        while at < end {
            let to = (at + self.chunk_elems).min(end);
            out.push_back(self.chunk_msg(
                step,
                b,
                self.rank,
                pb::RingPhase::ReduceScatter,
                at,
                values.len(),
                &values[at..to],
            ));
            at = to;
        }
    }

    /// One step: the buckets of `feed` summed over the ring.
    ///
    /// # Errors
    /// [`RingError`] when a neighbour is silent, refuses, or sends what does not belong.
    pub async fn all_reduce(
        &mut self,
        step: u64,
        n_buckets: usize,
        mut feed: StepFeed,
    ) -> Result<RingSum, RingError> {
        let local = |e: &str| RingError::Local(e.to_string(), step);
        let world = self.world;
        let mut buckets: Vec<Vec<f32>> = Vec::with_capacity(n_buckets);
        let mut own_stats: Option<(StepStats, u64)> = None;
        if world == 1 {
            while buckets.len() < n_buckets {
                let b = feed
                    .buckets
                    .recv()
                    .await
                    .ok_or_else(|| local("the gradient ended early"))?;
                buckets.push(b);
            }
            let (stats, stop_at) = feed
                .stats
                .await
                .map_err(|_| local("the step's stats never came"))?;
            return Ok(RingSum {
                sum: join(buckets),
                stats,
                stop_at,
            });
        }
        let right = self
            .right
            .as_ref()
            .ok_or_else(|| local("no connection to the right neighbour"))?;
        let (tx, rx) = mpsc::channel::<pb::RingMessage>(4);
        let mut call = right.open(step, rx);
        let mut pending: VecDeque<pb::RingMessage> = VecDeque::new();
        let mut tx = Some(tx);

        // StepStats of every rank, and rank 0's stop word.
        let mut stats: Vec<Option<StepStats>> = vec![None; world];
        let mut stop_at = 0u64;
        let mut stats_seen = 0usize;

        let mut incoming: Option<Incoming> = None;
        let mut sent_first = false;
        let mut done_tx: Option<oneshot::Sender<Result<(), Status>>> = None;
        let mut cursor = Cursor {
            bucket: 0,
            pass: 0,
            offset: 0,
        };
        // Chunks expected in all: every bucket's 2(W-1) passes; with the stats, the step is
        // complete once both are in and everything queued has been handed to the stream.
        let mut received_all = n_buckets == 0;
        let secs = self.timeout.as_secs_f64();
        let mut deadline = tokio::time::Instant::now() + self.timeout;
        let mut call_ok = false;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let result: Result<(), RingError> = async {
            loop {
                // The next bucket is needed once the cursor reaches it (or to send its own
                // segment first thing).
                let need_bucket = buckets.len() < n_buckets
                    && (buckets.len() <= cursor.bucket);
                let finished = pending.is_empty()
                    && !need_bucket
                    && own_stats.is_some()
                    && received_all
                    && stats_seen >= world - 1;
                if finished {
                    break;
                }
                let sender = tx.as_ref();
                tokio::select! {
                    biased;
                    b = feed.buckets.recv(), if need_bucket => {
                        let b = b.ok_or_else(|| local("the gradient ended early"))?;
                        let i = buckets.len();
                        if let Some(index) = b.iter().position(|v| !v.is_finite()) {
                            return Err(RingError::NonFinite { rank: self.rank, step, bucket: i, index });
                        }
                        self.queue_own(step, i, &b, &mut pending);
                        buckets.push(b);
                        // Empty segments have no chunks to wait for.
                        skip_empty(&mut cursor, &buckets, n_buckets, world, &mut received_all, self);
                    }
                    s = &mut feed.stats, if own_stats.is_none() => {
                        let (st, stop) = s.map_err(|_| local("the step's stats never came"))?;
                        own_stats = Some((st, stop));
                        stats[self.rank] = Some(st);
                        if self.rank == 0 {
                            stop_at = stop;
                        }
                        pending.push_back(pb::RingMessage {
                            from_rank: self.rank as u32,
                            stats: Some(pb::RankStats {
                                rank: self.rank as u32,
                                stats: Some(graft_common::wire::stats_to_pb(&st)),
                                stop_at: stop,
                            }),
                            step,
                            generation: self.generation,
                            ..Default::default()
                        });
                    }
                    permit = async { sender?.reserve().await.ok() }, if !pending.is_empty() && sender.is_some() => {
                        let Some(permit) = permit else {
                            return Err(self.send_error(step, &mut call, "the stream closed").await);
                        };
                        if let Some(mut m) = pending.pop_front() {
                            // The first message of the stream says whose it is, and
                            // proves it.
                            if !sent_first {
                                m.job_id.clone_from(&self.job);
                                let nonce = random::<NONCE_BYTES>().map_err(|e| local(&e))?;
                                m.proof = self.key.prove(
                                    StreamClaim {
                                        job: &self.job,
                                        generation: self.generation,
                                        step,
                                        from_rank: self.rank as u32,
                                    },
                                    &nonce,
                                );
                                m.nonce = nonce.to_vec();
                                sent_first = true;
                            }
                            permit.send(m);
                        }
                        deadline = tokio::time::Instant::now() + self.timeout;
                    }
                    // Not while this rank's own bucket under the cursor is still being
                    // flattened: the neighbour's part of it could not be added yet.
                    msg = next_incoming(&mut incoming, &mut self.inbox), if !(need_bucket || received_all && stats_seen >= world - 1) => {
                        deadline = tokio::time::Instant::now() + self.timeout;
                        let msg = match msg {
                            Some(Ok((m, fresh))) => {
                                if let Some(d) = fresh {
                                    done_tx = Some(d);
                                }
                                m
                            }
                            Some(Err(s)) => {
                                return Err(RingError::Refused { step, from: self.left(), reason: format!("the stream failed: {}", s.message()) });
                            }
                            None => {
                                return Err(RingError::Refused { step, from: self.left(), reason: "the stream ended before the step was complete".into() });
                            }
                        };
                        self.take(step, msg, &mut cursor, &mut buckets, n_buckets, &mut stats, &mut stats_seen, &mut stop_at, &mut pending, &mut received_all)?;
                    }
                    // The right neighbour's answer before this rank is done: it refused or
                    // died (a dead peer's connection fails at once, not at the timeout).
                    r = &mut call, if !call_ok => {
                        match r {
                            Ok(Ok(_)) => call_ok = true,
                            Ok(Err(s)) => {
                                return Err(RingError::Send { step, to: self.right_rank(), addr: self.right_addr.clone(), status: s.message().to_string() });
                            }
                            Err(e) => return Err(local(&format!("the sending task failed: {e}"))),
                        }
                    }
                    _ = tick.tick() => {
                        if self.abort.as_ref().is_some_and(|a| a.load(std::sync::atomic::Ordering::Relaxed)) {
                            return Err(local("the job was stopped"));
                        }
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        let (what, peer) = if need_bucket || own_stats.is_none() {
                            ("this rank's own gradient did not come".to_string(), None)
                        } else if !pending.is_empty() {
                            (format!("rank {} at {} took nothing", self.right_rank(), self.right_addr), Some(self.right_rank()))
                        } else {
                            (format!("rank {} sent nothing", self.left()), Some(self.left()))
                        };
                        return Err(RingError::Timeout { step, what, secs, peer });
                    }
                }
            }
            Ok(())
        }
        .await;
        // Tell the left neighbour how its stream went, and end ours.
        if let Some(d) = done_tx.take() {
            let _ = d.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(Status::aborted(e.to_string())),
            });
        } else if let Some(inc) = incoming.take() {
            let _ = inc.done.send(Err(Status::aborted("the step failed")));
        }
        drop(tx.take());
        result?;
        if !call_ok {
            self.confirm(step, &mut call).await?;
        }
        let mut total = StepStats::default();
        for s in stats.iter().flatten() {
            total.loss_sum += s.loss_sum;
            total.samples += s.samples;
            total.correct += s.correct;
        }
        Ok(RingSum {
            sum: join(buckets),
            stats: total,
            stop_at,
        })
    }

    /// Waits for the right neighbour's answer to the step's stream, giving up as soon as
    /// the job is stopped: a neighbour that hangs or is cut off after this rank has sent
    /// its last chunk never answers, and the group must not wait `collective_timeout_ms`
    /// for it to re-form.
    async fn confirm(
        &self,
        step: u64,
        call: &mut tokio::task::JoinHandle<Result<(), Status>>,
    ) -> Result<(), RingError> {
        let secs = self.timeout.as_secs_f64();
        let local = |e: &str| RingError::Local(e.to_string(), step);
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let answer = loop {
            tokio::select! {
                r = &mut *call => break Ok(r),
                () = tokio::time::sleep_until(deadline) => break Err(()),
                _ = tick.tick() => {
                    if self.abort.as_ref().is_some_and(|a| a.load(std::sync::atomic::Ordering::Relaxed)) {
                        return Err(local("the job was stopped"));
                    }
                }
            }
        };
        match answer {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(s))) => {
                return Err(RingError::Send {
                    step,
                    to: self.right_rank(),
                    addr: self.right_addr.clone(),
                    status: s.message().to_string(),
                });
            }
            Ok(Err(e)) => return Err(local(&format!("the sending task failed: {e}"))),
            Err(_) => {
                return Err(RingError::Timeout {
                    step,
                    what: format!(
                        "rank {} at {} did not confirm the step",
                        self.right_rank(),
                        self.right_addr
                    ),
                    secs,
                    peer: Some(self.right_rank()),
                });
            }
        }
        Ok(())
    }

    async fn send_error(
        &self,
        step: u64,
        call: &mut tokio::task::JoinHandle<Result<(), Status>>,
        fallback: &str,
    ) -> RingError {
        let status = match tokio::time::timeout(Duration::from_secs(1), call).await {
            Ok(Ok(Err(s))) => s.message().to_string(),
            _ => fallback.to_string(),
        };
        RingError::Send {
            step,
            to: self.right_rank(),
            addr: self.right_addr.clone(),
            status,
        }
    }

    /// Checks one received message against what must come next and acts on it.
    #[allow(clippy::too_many_arguments)]
    fn take(
        &self,
        step: u64,
        m: pb::RingMessage,
        cursor: &mut Cursor,
        buckets: &mut [Vec<f32>],
        n_buckets: usize,
        stats: &mut [Option<StepStats>],
        stats_seen: &mut usize,
        stop_at: &mut u64,
        pending: &mut VecDeque<pb::RingMessage>,
        received_all: &mut bool,
    ) -> Result<(), RingError> {
        let world = self.world;
        let from = self.left();
        let refuse = |reason: String| RingError::Refused { step, from, reason };
        if m.step != step || m.generation != self.generation {
            return Err(refuse(format!(
                "it is for step {} generation {}, this ring is at step {step} generation {}",
                m.step, m.generation, self.generation
            )));
        }
        if m.from_rank as usize != from {
            return Err(refuse(format!(
                "it says it comes from rank {}, the left neighbour is rank {from}",
                m.from_rank
            )));
        }
        if let Some(rs) = m.stats {
            // Every other rank's stats come once, in whatever order they were ready.
            let expect = rs.rank as usize;
            if expect >= world || expect == self.rank || stats[expect].is_some() {
                return Err(refuse(format!(
                    "stats of rank {} that this rank has or cannot take",
                    rs.rank
                )));
            }
            let st = rs.stats.unwrap_or_default();
            if !st.loss_sum.is_finite() || st.correct > st.samples {
                return Err(refuse(format!(
                    "rank {} reported loss sum {} and {} correct of {} samples",
                    rs.rank, st.loss_sum, st.correct, st.samples
                )));
            }
            stats[expect] = Some(graft_common::wire::stats_from_pb(Some(&st)));
            if expect == 0 {
                *stop_at = rs.stop_at;
            }
            *stats_seen += 1;
            // On round the ring, but not back to where they started.
            if expect != self.right_rank() {
                pending.push_back(pb::RingMessage {
                    from_rank: self.rank as u32,
                    stats: Some(rs),
                    step,
                    generation: self.generation,
                    ..Default::default()
                });
            }
            return Ok(());
        }
        let c = m
            .chunk
            .ok_or_else(|| refuse("neither a chunk nor stats".into()))?;
        if *received_all || cursor.bucket >= n_buckets {
            return Err(refuse("a chunk after the step's last".into()));
        }
        let Some(bucket) = buckets.get_mut(cursor.bucket) else {
            // The neighbour is a bucket ahead of this rank's own flattening; a well-behaved
            // ring never gets here because this rank waits for its bucket before reading.
            return Err(refuse(format!(
                "bucket {} came before this rank flattened it",
                cursor.bucket
            )));
        };
        let len = bucket.len();
        let seg = self.recv_segment(cursor.pass);
        let (_, end) = segment(len, world, seg);
        let phase = self.phase(cursor.pass);
        let want_len = (end - cursor.offset).min(self.chunk_elems);
        if m.bucket as usize != cursor.bucket
            || m.segment as usize != seg
            || m.phase != phase as i32
            || c.offset as usize != cursor.offset
            || c.total_len as usize != len
            || c.data.len() != want_len * 4
            || c.step != step
            || c.generation != self.generation
        {
            return Err(refuse(format!(
                "expected bucket {} ({len} elements) segment {seg} {:?} at element {} ({want_len} elements); got bucket {} ({} elements) segment {} phase {} at element {} ({} bytes)",
                cursor.bucket,
                phase,
                cursor.offset,
                m.bucket,
                c.total_len,
                m.segment,
                m.phase,
                c.offset,
                c.data.len()
            )));
        }
        if checksum(&c.data) != c.crc32 {
            return Err(refuse(format!(
                "checksum mismatch at element {} of bucket {}",
                c.offset, cursor.bucket
            )));
        }
        let at = cursor.offset;
        let dst = &mut bucket[at..at + want_len];
        // Decode, check and add (reduce-scatter) or store (all-gather) in one pass. (Two
        // passes, add then check, measured slower: docs/PERFORMANCE.md.)
        if add_or_store(dst, &c.data, cursor.pass < world - 1) {
            let i = c
                .data
                .chunks_exact(4)
                .position(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite())
                .unwrap_or(0);
            return Err(refuse(format!(
                "non-finite value at element {} of bucket {}",
                at + i,
                cursor.bucket
            )));
        }
        // Every pass but the last sends what it received (plus this rank's part) on.
        if cursor.pass < 2 * (world - 1) - 1 {
            let next = self.phase(cursor.pass + 1);
            let msg = self.chunk_msg(step, cursor.bucket, seg, next, at, len, dst);
            pending.push_back(msg);
        }
        cursor.offset += want_len;
        if cursor.offset >= end {
            advance(cursor, buckets, n_buckets, world, received_all, self);
        }
        Ok(())
    }
}
