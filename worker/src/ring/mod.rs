//! The ring all-reduce between workers (Baidu's / Horovod's / NCCL's ring).
//!
//! Every step, rank `r` of `W` streams to rank `r + 1` (its right neighbour) over one gRPC
//! client stream (`CollectiveService.Ring`) and takes one from rank `r - 1`. Each gradient
//! bucket is cut into `W` segments and each segment into chunks. Reduce-scatter: for
//! `W - 1` passes a rank adds the segment it receives to its own and sends the sum on, so
//! that afterwards rank `r` holds the group's sum of segment `r + 1`; all-gather: for
//! `W - 1` more passes the finished segments travel on round the ring. Every received chunk
//! is turned into the next outgoing chunk as soon as it has arrived, so sending, receiving
//! and adding overlap chunk by chunk (the pipeline), and each link carries `2(W-1)/W` of the
//! gradient whatever `W` is.
//!
//! Segment `s` is summed in one fixed order (ranks `s, s+1, …`) and the finished sum is
//! what every rank receives, so the result is bit-identical on every rank and from run to
//! run for a given `W`. The ranks' loss, sample and correct counts travel round the ring
//! too and are summed in rank order, so every rank also agrees on them.
//!
//! Every message names its step, generation, bucket, segment, pass and element offset, and
//! carries a CRC-32; the receiver knows exactly which message must come next and refuses
//! anything else. A neighbour that sends or takes nothing for `timeout` fails the step.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use graft_common::auth::Bearer;
use graft_proto::chunk::{checksum, f32_to_bytes};
use graft_proto::v1 as pb;
use graft_proto::v1::collective_service_client::CollectiveServiceClient;
use graft_proto::v1::collective_service_server::CollectiveService;
use graft_proto::{CHUNK_BYTES, MAX_MESSAGE_BYTES};
use graft_transfer::StepStats;
use tokio::sync::{Notify, mpsc, oneshot};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

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

/// One stream from the left neighbour, waiting to be read by the job's reducer.
pub struct Incoming {
    first: pb::RingMessage,
    rest: Pin<Box<dyn Stream<Item = Result<pb::RingMessage, Status>> + Send>>,
    done: oneshot::Sender<Result<(), Status>>,
}

struct Mailbox {
    job: String,
    generation: u64,
    tx: mpsc::Sender<Incoming>,
}

/// Where the worker's `CollectiveService` hands incoming ring streams to the job that runs
/// on this worker (one at a time).
#[derive(Default)]
pub struct Inbox {
    slot: Mutex<Option<Mailbox>>,
    /// The last job whose mailbox closed, and its generation: late streams of that
    /// generation or an earlier one are refused at once; a later generation's wait for the
    /// re-formed group to open its mailbox.
    closed: Mutex<Option<(String, u64)>>,
    changed: Notify,
    /// Cancelled when the worker shuts down: waiting streams are refused.
    stopping: tokio_util::sync::CancellationToken,
}

impl Inbox {
    /// Opens the mailbox of `job` at `generation`; streams for it queue here until read.
    pub fn open(&self, job: &str, generation: u64) -> mpsc::Receiver<Incoming> {
        // Two: the step being read and the next one, which the left neighbour may open as
        // soon as it has sent its part of this one.
        let (tx, rx) = mpsc::channel(2);
        if let Ok(mut s) = self.slot.lock() {
            *s = Some(Mailbox {
                job: job.to_string(),
                generation,
                tx,
            });
        }
        self.changed.notify_waiters();
        rx
    }

    /// Closes the mailbox of `job` (later streams for it are refused).
    pub fn close(&self, job: &str) {
        let mut generation = u64::MAX;
        if let Ok(mut s) = self.slot.lock()
            && s.as_ref().is_some_and(|m| m.job == job)
        {
            generation = s.as_ref().map_or(u64::MAX, |m| m.generation);
            *s = None;
        }
        if let Ok(mut c) = self.closed.lock() {
            *c = Some((job.to_string(), generation));
        }
        self.changed.notify_waiters();
    }

    /// Refuses every stream from now on (the worker is shutting down).
    pub fn stop(&self) {
        self.stopping.cancel();
    }

    /// The queue of `job` at `generation`, waiting up to `wait` for this worker to open it
    /// (a neighbour may start the first step before this worker has taken the assignment).
    async fn sender(
        &self,
        job: &str,
        generation: u64,
        wait: Duration,
    ) -> Result<mpsc::Sender<Incoming>, Status> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let slot = self
                    .slot
                    .lock()
                    .map_err(|_| Status::internal("ring inbox lock poisoned"))?;
                if let Some(m) = slot.as_ref()
                    && m.job == job
                {
                    if m.generation == generation {
                        return Ok(m.tx.clone());
                    }
                    if generation < m.generation {
                        return Err(Status::failed_precondition(format!(
                            "generation {generation} of job {job} is over; this worker is at generation {}",
                            m.generation
                        )));
                    }
                }
                let left = self.closed.lock().is_ok_and(|c| {
                    c.as_ref()
                        .is_some_and(|(j, g)| j == job && generation <= *g)
                });
                if slot.is_none() && left {
                    return Err(Status::failed_precondition(format!(
                        "this worker has left generation {generation} of job {job}"
                    )));
                }
            }
            tokio::select! {
                () = self.stopping.cancelled() => {
                    return Err(Status::unavailable("the worker is shutting down"));
                }
                r = tokio::time::timeout_at(deadline, changed) => if r.is_err() {
                    return Err(Status::failed_precondition(format!(
                        "this worker is not in the ring of job {job} at generation {generation}"
                    )));
                }
            }
        }
    }
}

/// The `CollectiveService` of a worker.
pub struct CollectiveApi {
    inbox: Arc<Inbox>,
    wait: Duration,
    handover: crate::handover::Handover,
}

impl CollectiveApi {
    /// A service handing streams to `inbox`; a stream for a job this worker has not opened
    /// yet waits up to `wait`.
    pub fn new(inbox: Arc<Inbox>, wait: Duration) -> Self {
        Self {
            inbox,
            wait,
            handover: crate::handover::Handover::default(),
        }
    }

    /// Serves the replica snapshots of `handover` (`FetchReplica`).
    #[must_use]
    pub fn with_handover(mut self, handover: crate::handover::Handover) -> Self {
        self.handover = handover;
        self
    }
}

#[tonic::async_trait]
impl CollectiveService for CollectiveApi {
    type FetchReplicaStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::StateChunk, Status>> + Send>>;

    async fn fetch_replica(
        &self,
        req: Request<pb::FetchReplicaRequest>,
    ) -> Result<Response<Self::FetchReplicaStream>, Status> {
        let msgs = self.handover.stream(&req.into_inner())?;
        Ok(Response::new(Box::pin(tokio_stream::iter(
            msgs.into_iter().map(Ok),
        ))))
    }

    async fn ring(
        &self,
        req: Request<Streaming<pb::RingMessage>>,
    ) -> Result<Response<pb::RingAck>, Status> {
        let mut s = req.into_inner();
        let first = s
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty ring stream"))?;
        let tx = self
            .inbox
            .sender(&first.job_id, first.generation, self.wait)
            .await?;
        let (done, finished) = oneshot::channel();
        tx.send(Incoming {
            first,
            rest: Box::pin(s),
            done,
        })
        .await
        .map_err(|_| Status::unavailable("the job's ring on this worker has ended"))?;
        tokio::select! {
            r = finished => match r {
                Ok(Ok(())) => Ok(Response::new(pb::RingAck {})),
                Ok(Err(s)) => Err(s),
                Err(_) => Err(Status::aborted("the receiving worker gave up on the step")),
            },
            () = self.inbox.stopping.cancelled() => Err(Status::unavailable("the worker is shutting down")),
        }
    }
}

/// HTTP/2 flow-control window of ring streams. h2's default (64 KiB) makes the sender wait
/// for a window update every 64 KiB of a 1 MiB chunk, which on loopback cost the ring most of
/// its bandwidth; a window of a few chunks keeps the link busy.
pub const RING_WINDOW: u32 = 16 << 20;

/// A client of a neighbour's collective service.
pub type Collective = CollectiveServiceClient<InterceptedService<Channel, Bearer>>;

/// Connects to `addr` (`host:port`), retrying until `wait` has passed.
///
/// # Errors
/// [`RingError::Send`] when it cannot be reached.
pub async fn connect(
    addr: &str,
    bearer: Bearer,
    wait: Duration,
    to: usize,
) -> Result<Collective, RingError> {
    let fail = |status: String| RingError::Send {
        step: 0,
        to,
        addr: addr.to_string(),
        status,
    };
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| fail(format!("bad address: {e}")))?
        .tcp_nodelay(true)
        .initial_stream_window_size(RING_WINDOW)
        .initial_connection_window_size(RING_WINDOW)
        .connect_timeout(wait);
    let deadline = tokio::time::Instant::now() + wait;
    let channel = loop {
        match endpoint.connect().await {
            Ok(c) => break c,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(fail(format!("cannot connect: {e}"))),
        }
    };
    Ok(CollectiveServiceClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
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

/// `[start, end)` of segment `s` of `len` elements cut in `world` (the first `len % world`
/// segments one longer, as the shards are cut).
pub fn segment(len: usize, world: usize, s: usize) -> (usize, usize) {
    let base = len / world;
    let extra = len % world;
    let start = s * base + s.min(extra);
    (start, start + base + usize::from(s < extra))
}

/// One rank of a ring.
pub struct Ring {
    /// This rank.
    pub rank: usize,
    /// Ranks in the ring.
    pub world: usize,
    job: String,
    generation: u64,
    right: Option<Collective>,
    right_addr: String,
    inbox: mpsc::Receiver<Incoming>,
    timeout: Duration,
    chunk_elems: usize,
    abort: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// What one step of the ring is fed by the training thread.
pub struct StepFeed {
    /// The gradient buckets, in order, as they are flattened.
    pub buckets: mpsc::UnboundedReceiver<Vec<f32>>,
    /// This rank's stats and (rank 0) the stop word, once known.
    pub stats: oneshot::Receiver<(StepStats, u64)>,
}

/// Where the incoming stream is.
struct Cursor {
    bucket: usize,
    /// Pass in the bucket: `0..W-1` reduce-scatter, `W-1..2W-2` all-gather.
    pass: usize,
    /// Element offset in the bucket of the next chunk.
    offset: usize,
}

impl Ring {
    /// Rank `rank` of `world` for `job` at `generation`, sending to `right_addr` and reading
    /// the streams queued in `inbox` (from [`Inbox::open`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rank: usize,
        world: usize,
        job: &str,
        generation: u64,
        right: Option<Collective>,
        right_addr: String,
        inbox: mpsc::Receiver<Incoming>,
        timeout: Duration,
    ) -> Self {
        Self {
            rank,
            world,
            job: job.to_string(),
            generation,
            right,
            right_addr,
            inbox,
            timeout,
            chunk_elems: CHUNK_BYTES / 4,
            abort: None,
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

    fn left(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    fn right_rank(&self) -> usize {
        (self.rank + 1) % self.world
    }

    /// The segment received in pass `pass` (`0..2W-2`).
    fn recv_segment(&self, pass: usize) -> usize {
        let w = self.world;
        if pass < w - 1 {
            (self.rank + 2 * w - pass - 1) % w
        } else {
            (self.rank + 2 * w - (pass - (w - 1))) % w
        }
    }

    fn phase(&self, pass: usize) -> pb::RingPhase {
        if pass < self.world - 1 {
            pb::RingPhase::ReduceScatter
        } else {
            pb::RingPhase::AllGather
        }
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
        let data = f32_to_bytes(values);
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
                data: data.into(),
            }),
            stats: None,
            step,
            generation: self.generation,
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
            .clone()
            .ok_or_else(|| local("no connection to the right neighbour"))?;
        let (tx, rx) = mpsc::channel::<pb::RingMessage>(4);
        let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut client = right;
        let mut call = tokio::spawn(async move { client.ring(outbound).await });
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
                            // The first message of the stream says whose it is.
                            if !sent_first {
                                m.job_id.clone_from(&self.job);
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
                        let what = if need_bucket || own_stats.is_none() {
                            "this rank's own gradient did not come".to_string()
                        } else if !pending.is_empty() {
                            format!("rank {} at {} took nothing", self.right_rank(), self.right_addr)
                        } else {
                            format!("rank {} sent nothing", self.left())
                        };
                        return Err(RingError::Timeout { step, what, secs });
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
        call: &mut tokio::task::JoinHandle<Result<Response<pb::RingAck>, Status>>,
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
            Ok(Ok(Ok(_))) => {}
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
                });
            }
        }
        Ok(())
    }

    async fn send_error(
        &self,
        step: u64,
        call: &mut tokio::task::JoinHandle<Result<Response<pb::RingAck>, Status>>,
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

/// Adds the little-endian f32 `data` into `dst` (`reduce`) or stores it there; whether any
/// received value was NaN or infinite.
///
/// Branch-free, so that it vectorizes: the exponent test is OR-ed into one flag, and the
/// caller looks for the offending element only when the flag is set.
fn add_or_store(dst: &mut [f32], data: &[u8], reduce: bool) -> bool {
    const EXP: u32 = 0x7f80_0000;
    let mut bad = false;
    let pairs = dst.iter_mut().zip(data.chunks_exact(4));
    if reduce {
        for (d, b) in pairs {
            let bits = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            bad |= bits & EXP == EXP;
            *d += f32::from_bits(bits);
        }
    } else {
        for (d, b) in pairs {
            let bits = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            bad |= bits & EXP == EXP;
            *d = f32::from_bits(bits);
        }
    }
    bad
}

/// The buckets end to end, grown from the first one rather than copied into a fresh vector:
/// a new gradient-sized allocation every step costs a page fault per page (a 64 MiB gradient
/// in one bucket spent a fifth of the ring's CPU zeroing fresh pages). With several buckets
/// the first is small and the growth still allocates once.
fn join(buckets: Vec<Vec<f32>>) -> Vec<f32> {
    let total: usize = buckets.iter().map(Vec::len).sum();
    let mut it = buckets.into_iter();
    let mut sum = it.next().unwrap_or_default();
    sum.reserve_exact(total - sum.len());
    for b in it {
        sum.extend_from_slice(&b);
    }
    sum
}

/// Moves the cursor to the next pass with data (segments may be empty), across buckets.
fn advance(
    cursor: &mut Cursor,
    buckets: &[Vec<f32>],
    n_buckets: usize,
    world: usize,
    received_all: &mut bool,
    ring: &Ring,
) {
    cursor.pass += 1;
    cursor.offset = 0;
    if cursor.pass >= 2 * (world - 1) {
        cursor.bucket += 1;
        cursor.pass = 0;
    }
    skip_empty(cursor, buckets, n_buckets, world, received_all, ring);
}

/// Skips passes whose segment is empty, and sets `offset` to the start of the segment the
/// cursor lands on; marks the step received when past the last bucket.
fn skip_empty(
    cursor: &mut Cursor,
    buckets: &[Vec<f32>],
    n_buckets: usize,
    world: usize,
    received_all: &mut bool,
    ring: &Ring,
) {
    loop {
        if cursor.bucket >= n_buckets {
            *received_all = true;
            return;
        }
        let Some(b) = buckets.get(cursor.bucket) else {
            // Not flattened yet: the cursor waits at the start of this bucket.
            return;
        };
        let (start, end) = segment(b.len(), world, ring.recv_segment(cursor.pass));
        if cursor.offset < start {
            cursor.offset = start;
        }
        if end > start && cursor.offset < end {
            return;
        }
        cursor.pass += 1;
        cursor.offset = 0;
        if cursor.pass >= 2 * (world - 1) {
            cursor.bucket += 1;
            cursor.pass = 0;
        }
    }
}

/// The next message from the left neighbour: from the stream being read, or the first of
/// the next stream in the inbox (with the channel its sender waits on for the outcome).
#[allow(clippy::type_complexity)]
async fn next_incoming(
    current: &mut Option<Incoming>,
    inbox: &mut mpsc::Receiver<Incoming>,
) -> Option<Result<(pb::RingMessage, Option<oneshot::Sender<Result<(), Status>>>), Status>> {
    if current.is_none() {
        let mut inc = inbox.recv().await?;
        let first = std::mem::take(&mut inc.first);
        let (done, keep) = oneshot::channel();
        let outer = std::mem::replace(&mut inc.done, done);
        // The sender's outcome goes to `outer`; `keep`'s half is dropped with the stream.
        drop(keep);
        *current = Some(inc);
        return Some(Ok((first, Some(outer))));
    }
    let inc = current.as_mut()?;
    match inc.rest.next().await {
        Some(Ok(m)) => Some(Ok((m, None))),
        Some(Err(s)) => Some(Err(s)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use graft_common::reduce::reduce_in_rank_order;
    use graft_transfer::rng::SplitMix64;

    use super::*;

    #[test]
    fn add_or_store_adds_stores_and_flags_only_nan_and_infinity() {
        let received = [1.5f32, -2.0, f32::MAX, f32::MIN_POSITIVE / 2.0, -0.0];
        let bytes = f32_to_bytes(&received);
        let mut acc = vec![1.0f32; received.len()];
        assert!(!add_or_store(&mut acc, &bytes, true));
        let want: Vec<f32> = received.iter().map(|v| 1.0 + v).collect();
        assert_eq!(acc, want);
        assert!(!add_or_store(&mut acc, &bytes, false));
        assert_eq!(acc, received);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut v = received.to_vec();
            v[3] = bad;
            let mut dst = vec![0.0f32; v.len()];
            assert!(add_or_store(&mut dst, &f32_to_bytes(&v), true), "{bad}");
            assert!(add_or_store(&mut dst, &f32_to_bytes(&v), false), "{bad}");
        }
    }

    /// W in-process ring members on loopback, each behind its own gRPC server.
    async fn rings(world: usize, generation: u64, timeout: Duration, chunk: usize) -> Vec<Ring> {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let mut boxes = Vec::new();
        for _ in 0..world {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            addrs.push(listener.local_addr().expect("addr"));
            let inbox = Arc::new(Inbox::default());
            let api = CollectiveApi::new(inbox.clone(), timeout);
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(
                        graft_proto::v1::collective_service_server::CollectiveServiceServer::new(
                            api,
                        ),
                    )
                    .serve_with_incoming(graft_common::net::nodelay_incoming(listener)),
            );
            boxes.push(inbox);
        }
        let mut out = Vec::new();
        for (r, inbox) in boxes.iter().enumerate() {
            let rx = inbox.open("job", generation);
            let right = (r + 1) % world;
            let addr = addrs[right].to_string();
            let client = if world > 1 {
                Some(
                    connect(&addr, Bearer::new(None).expect("bearer"), timeout, right)
                        .await
                        .expect("connect"),
                )
            } else {
                None
            };
            out.push(
                Ring::new(r, world, "job", generation, client, addr, rx, timeout)
                    .with_chunk_bytes(chunk),
            );
        }
        out
    }

    fn grad(seed: u64, len: usize) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..len).map(|_| rng.normal() as f32).collect()
    }

    fn stats(r: usize) -> StepStats {
        StepStats {
            loss_sum: 0.5 + r as f64,
            samples: 3 + r as u64,
            correct: r as u64,
        }
    }

    /// Runs one step on every ring member with `plan` buckets of each rank's gradient.
    async fn step(
        rings: &mut [Ring],
        step: u64,
        grads: &[Vec<f32>],
        plan: &[usize],
    ) -> Vec<Result<RingSum, RingError>> {
        let mut tasks = Vec::new();
        for (r, ring) in rings.iter_mut().enumerate() {
            let (btx, brx) = mpsc::unbounded_channel();
            let (stx, srx) = oneshot::channel();
            let mut at = 0;
            for &n in plan {
                btx.send(grads[r][at..at + n].to_vec()).expect("feed");
                at += n;
            }
            stx.send((stats(r), if r == 0 { 9 } else { 0 }))
                .expect("feed");
            let feed = StepFeed {
                buckets: brx,
                stats: srx,
            };
            tasks.push(ring.all_reduce(step, plan.len(), feed));
        }
        futures::future::join_all(tasks).await
    }

    /// The ring's sum equals the star's (rank-order) sum to float tolerance, for W = 2..6
    /// and lengths that do not divide evenly, including lengths smaller than W, in one
    /// bucket and in several; every rank gets bit-identical results.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn ring_sum_equals_star_sum() {
        for world in 2..=6usize {
            let mut rs = rings(world, 1, Duration::from_secs(10), 20).await;
            let mut s = 0u64;
            for len in [1usize, world - 1, world, world + 1, 37, 1001, 4099] {
                for plan in [vec![len], vec![len / 3, len - len / 3]] {
                    let plan: Vec<usize> = plan.into_iter().filter(|&n| n > 0).collect();
                    let grads: Vec<Vec<f32>> =
                        (0..world).map(|r| grad(s * 31 + r as u64, len)).collect();
                    let out = step(&mut rs, s, &grads, &plan).await;
                    s += 1;
                    let parts: Vec<(Vec<f32>, StepStats)> = grads
                        .iter()
                        .enumerate()
                        .map(|(r, g)| (g.clone(), stats(r)))
                        .collect();
                    let star = reduce_in_rank_order(&parts);
                    let first = out[0].as_ref().expect("rank 0").clone();
                    for (r, o) in out.iter().enumerate() {
                        let o = o
                            .as_ref()
                            .unwrap_or_else(|e| panic!("W={world} len={len} rank {r}: {e}"));
                        assert_eq!(o, &first, "W={world} len={len}: rank {r} differs");
                    }
                    assert_eq!(first.stats, star.stats, "W={world} len={len}");
                    assert_eq!(first.stop_at, 9);
                    assert_eq!(first.sum.len(), len);
                    let inv = 1.0 / star.stats.samples as f32;
                    for (i, (a, b)) in first.sum.iter().zip(&star.grad).enumerate() {
                        let a = a * inv;
                        assert!(
                            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                            "W={world} len={len} element {i}: ring {a} star {b}"
                        );
                    }
                }
            }
        }
    }

    /// A rank that never joins the step fails it on its neighbours within the timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_silent_neighbour_fails_the_step_within_the_timeout() {
        let timeout = Duration::from_millis(400);
        let mut rs = rings(3, 1, timeout, 1 << 20).await;
        let grads: Vec<Vec<f32>> = (0..3).map(|r| grad(r, 100)).collect();
        let started = std::time::Instant::now();
        let (live, _silent) = rs.split_at_mut(2);
        let out = step(live, 0, &grads, &[100]).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        for (r, o) in out.iter().enumerate() {
            let e = o.as_ref().expect_err("must fail").to_string();
            assert!(e.contains("step 0"), "rank {r}: {e}");
        }
    }

    /// A neighbour that takes the whole of a step but never answers it: a process stopped,
    /// or cut off, just after the last chunk arrived.
    struct NeverAnswers(CollectiveApi);

    #[tonic::async_trait]
    impl CollectiveService for NeverAnswers {
        type FetchReplicaStream = <CollectiveApi as CollectiveService>::FetchReplicaStream;

        async fn fetch_replica(
            &self,
            req: Request<pb::FetchReplicaRequest>,
        ) -> Result<Response<Self::FetchReplicaStream>, Status> {
            self.0.fetch_replica(req).await
        }

        async fn ring(
            &self,
            req: Request<Streaming<pb::RingMessage>>,
        ) -> Result<Response<pb::RingAck>, Status> {
            let _ = self.0.ring(req).await;
            std::future::pending().await
        }
    }

    /// A rank whose right neighbour never confirms the step gives up as soon as the job is
    /// stopped (the coordinator re-forms the group without the neighbour), not after the
    /// collective timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_stopped_job_does_not_wait_for_a_confirmation_that_never_comes() {
        use graft_proto::v1::collective_service_server::CollectiveServiceServer;
        let timeout = Duration::from_secs(20);
        let mut addrs = Vec::new();
        let mut inboxes = Vec::new();
        for r in 0..2 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            addrs.push(listener.local_addr().expect("addr").to_string());
            let inbox = Arc::new(Inbox::default());
            let api = CollectiveApi::new(inbox.clone(), timeout);
            let mut builder = tonic::transport::Server::builder();
            // Rank 1's server never answers rank 0's stream.
            let router = if r == 0 {
                builder.add_service(CollectiveServiceServer::new(api))
            } else {
                builder.add_service(CollectiveServiceServer::new(NeverAnswers(api)))
            };
            tokio::spawn(router.serve_with_incoming(graft_common::net::nodelay_incoming(listener)));
            inboxes.push(inbox);
        }
        let abort = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut rs = Vec::new();
        for (r, inbox) in inboxes.iter().enumerate() {
            let right = 1 - r;
            let client = connect(
                &addrs[right],
                Bearer::new(None).expect("bearer"),
                timeout,
                right,
            )
            .await
            .expect("connect");
            rs.push(
                Ring::new(
                    r,
                    2,
                    "job",
                    1,
                    Some(client),
                    addrs[right].clone(),
                    inbox.open("job", 1),
                    timeout,
                )
                .with_abort(abort.clone()),
            );
        }
        let grads: Vec<Vec<f32>> = (0..2).map(|r| grad(r, 100)).collect();
        let a = abort.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            a.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let started = std::time::Instant::now();
        let out = step(&mut rs, 0, &grads, &[100]).await;
        assert!(out[1].is_ok(), "rank 1's neighbour answered: {:?}", out[1]);
        let e = out[0].as_ref().expect_err("rank 0 gives up").to_string();
        assert!(e.contains("the job was stopped"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    /// A stream of another step is refused, naming both steps.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_message_of_another_step_is_refused() {
        let mut rs = rings(2, 1, Duration::from_secs(2), 1 << 20).await;
        let grads: Vec<Vec<f32>> = (0..2).map(|r| grad(r, 10)).collect();
        let (a, b) = rs.split_at_mut(1);
        let feed = |r: usize| {
            let (btx, brx) = mpsc::unbounded_channel();
            let (stx, srx) = oneshot::channel();
            btx.send(grads[r].clone()).expect("feed");
            stx.send((stats(r), 0)).expect("feed");
            StepFeed {
                buckets: brx,
                stats: srx,
            }
        };
        let (ra, rb) = tokio::join!(
            a[0].all_reduce(4, 1, feed(0)),
            b[0].all_reduce(5, 1, feed(1))
        );
        let ea = ra.expect_err("rank 0 refuses").to_string();
        let eb = rb.expect_err("rank 1 refuses").to_string();
        assert!(
            ea.contains("step 5") || eb.contains("step 4"),
            "rank 0: {ea}; rank 1: {eb}"
        );
    }

    #[test]
    fn segments_cover_the_length_in_order() {
        for len in [0usize, 1, 2, 5, 17] {
            for world in 1..=6 {
                let mut at = 0;
                for s in 0..world {
                    let (a, b) = segment(len, world, s);
                    assert_eq!(a, at);
                    at = b;
                }
                assert_eq!(at, len);
            }
        }
    }
}
