//! The ring's gRPC plumbing: the worker's `CollectiveService` ([`CollectiveApi`]), the
//! [`Inbox`] through which it hands incoming streams to the job running on this worker,
//! and the client side ([`connect`], [`Collective`]). The step loop sees only [`Incoming`]
//! streams and a client; who connects to whom, and when, is decided here.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use graft_common::auth::Bearer;
use graft_common::group_key::{GroupKey, StreamClaim};
use graft_proto::MAX_MESSAGE_BYTES;
use graft_proto::v1 as pb;
use graft_proto::v1::collective_service_client::CollectiveServiceClient;
use graft_proto::v1::collective_service_server::CollectiveService;
use tokio::sync::{Notify, mpsc, oneshot};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use super::RingError;

/// One stream from the left neighbour, waiting to be read by the job's reducer.
pub struct Incoming {
    pub(super) first: pb::RingMessage,
    pub(super) rest: Pin<Box<dyn Stream<Item = Result<pb::RingMessage, Status>> + Send>>,
    pub(super) done: oneshot::Sender<Result<(), Status>>,
}

struct Mailbox {
    job: String,
    generation: u64,
    tx: mpsc::Sender<Incoming>,
    /// Who may send here: the group's key and the left neighbour's rank.
    gate: Gate,
    /// The step of the last stream let in: steps only go forward within a generation.
    last_step: Option<u64>,
}

/// What a stream must prove before the job reads any of it.
#[derive(Debug, Clone)]
pub struct Gate {
    /// The group's key, from the assignment.
    pub key: GroupKey,
    /// The rank of the receiver's left neighbour, the only one that sends to it.
    pub left: u32,
}

impl Mailbox {
    /// Whether `first` opens a stream of this group's left neighbour: it proves the key, and
    /// it is for a step after the last one taken (a recorded stream cannot come again).
    fn admit(&mut self, first: &pb::RingMessage) -> Result<(), Status> {
        let claim = StreamClaim {
            job: &first.job_id,
            generation: first.generation,
            step: first.step,
            from_rank: first.from_rank,
        };
        if first.from_rank != self.gate.left {
            return Err(Status::permission_denied(format!(
                "a ring stream of job {} generation {} comes only from rank {}, not from rank {}",
                self.job, self.generation, self.gate.left, first.from_rank
            )));
        }
        if !self.gate.key.verify(claim, &first.nonce, &first.proof) {
            return Err(Status::permission_denied(format!(
                "the stream does not prove the group key of job {} generation {}",
                self.job, self.generation
            )));
        }
        if let Some(last) = self.last_step
            && first.step <= last
        {
            return Err(Status::permission_denied(format!(
                "a ring stream for step {} of job {} generation {} came already",
                first.step, self.job, self.generation
            )));
        }
        self.last_step = Some(first.step);
        Ok(())
    }

    /// Whether a raw-TCP link from `from_rank` answers `challenge` with this group's key
    /// (the link then carries every step of the generation; it keeps its steps in order).
    fn admit_link(&self, from_rank: u32, challenge: &[u8], proof: &[u8]) -> Result<(), Status> {
        if from_rank != self.gate.left {
            return Err(Status::permission_denied(format!(
                "a ring link of job {} generation {} comes only from rank {}, not from rank {from_rank}",
                self.job, self.generation, self.gate.left
            )));
        }
        if !self
            .gate
            .key
            .verify_link(&self.job, self.generation, from_rank, challenge, proof)
        {
            return Err(Status::permission_denied(format!(
                "the link does not prove the group key of job {} generation {}",
                self.job, self.generation
            )));
        }
        Ok(())
    }
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
    /// Opens the mailbox of `job` at `generation`; streams for it that pass `gate` queue here
    /// until read.
    pub fn open(&self, job: &str, generation: u64, gate: Gate) -> mpsc::Receiver<Incoming> {
        // Two: the step being read and the next one, which the left neighbour may open as
        // soon as it has sent its part of this one.
        let (tx, rx) = mpsc::channel(2);
        if let Ok(mut s) = self.slot.lock() {
            *s = Some(Mailbox {
                job: job.to_string(),
                generation,
                tx,
                gate,
                last_step: None,
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

    /// The queue for the stream `first` opens, waiting up to `wait` for this worker to open
    /// its job's mailbox (a neighbour may start the first step before this worker has taken
    /// the assignment). A stream that does not pass the mailbox's gate is refused here, so
    /// that it never reaches, and never fails, the step.
    async fn sender(
        &self,
        first: &pb::RingMessage,
        wait: Duration,
    ) -> Result<mpsc::Sender<Incoming>, Status> {
        self.mailbox_of(&first.job_id, first.generation, wait, |m| m.admit(first))
            .await
    }

    /// The queue for a raw-TCP link of `job` at `generation` from `from_rank` that answered
    /// `challenge` with `proof`, waiting for the mailbox as [`Self::sender`] does.
    pub(super) async fn link_sender(
        &self,
        job: &str,
        generation: u64,
        from_rank: u32,
        challenge: &[u8],
        proof: &[u8],
        wait: Duration,
    ) -> Result<mpsc::Sender<Incoming>, Status> {
        self.mailbox_of(job, generation, wait, |m| {
            m.admit_link(from_rank, challenge, proof)
        })
        .await
    }

    /// The queue of the mailbox of `job` at `generation` once it is open and `admit` lets the
    /// caller in; refused at once for a generation that is over here.
    async fn mailbox_of(
        &self,
        job: &str,
        generation: u64,
        wait: Duration,
        mut admit: impl FnMut(&mut Mailbox) -> Result<(), Status>,
    ) -> Result<mpsc::Sender<Incoming>, Status> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut slot = self
                    .slot
                    .lock()
                    .map_err(|_| Status::internal("ring inbox lock poisoned"))?;
                if let Some(m) = slot.as_mut()
                    && m.job == job
                {
                    if m.generation == generation {
                        admit(m)?;
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
    /// Answers the coordinator's admission probe (`RegisterRequest.probe_key`).
    probe_key: [u8; graft_common::group_key::KEY_BYTES],
}

impl CollectiveApi {
    /// A service handing streams to `inbox`; a stream for a job this worker has not opened
    /// yet waits up to `wait`.
    pub fn new(inbox: Arc<Inbox>, wait: Duration) -> Self {
        Self {
            inbox,
            wait,
            handover: crate::handover::Handover::default(),
            probe_key: [0; graft_common::group_key::KEY_BYTES],
        }
    }

    /// The inbox it hands streams to (raw-TCP links are handed there too).
    pub fn inbox(&self) -> Arc<Inbox> {
        self.inbox.clone()
    }

    /// How long a stream for a mailbox not open yet waits for it.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// Answers admission probes with `key`, the one the worker registers with.
    #[must_use]
    pub fn with_probe_key(mut self, key: [u8; graft_common::group_key::KEY_BYTES]) -> Self {
        self.probe_key = key;
        self
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

    async fn probe(
        &self,
        req: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::ProbeResponse>, Status> {
        let challenge = req.into_inner().challenge;
        Ok(Response::new(pb::ProbeResponse {
            proof: graft_common::group_key::probe_proof(&self.probe_key, &challenge),
        }))
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
        let tx = self.inbox.sender(&first, self.wait).await?;
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

/// How a rank reaches its right neighbour: a gRPC `Ring` stream per step, or the
/// generation's raw-TCP link ([`TcpLink`](super::tcp::TcpLink)).
pub enum RightLink {
    /// `CollectiveService.Ring`, one client stream per step.
    Grpc(Box<Collective>),
    /// Frames over one connection per generation.
    Tcp(super::tcp::TcpLink),
}

impl From<Collective> for RightLink {
    fn from(c: Collective) -> Self {
        Self::Grpc(Box::new(c))
    }
}

impl RightLink {
    /// Sends the messages of `step` as `rx` yields them; resolves with the neighbour's
    /// outcome of the step.
    pub(super) fn open(
        &self,
        step: u64,
        rx: mpsc::Receiver<pb::RingMessage>,
    ) -> tokio::task::JoinHandle<Result<(), Status>> {
        match self {
            Self::Grpc(c) => {
                let mut client = (**c).clone();
                let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
                tokio::spawn(async move { client.ring(outbound).await.map(|_| ()) })
            }
            Self::Tcp(link) => link.open(step, rx),
        }
    }
}

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
    let channel = retry_for(wait, || endpoint.connect())
        .await
        .map_err(|e| fail(format!("cannot connect: {e}")))?;
    Ok(CollectiveServiceClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// `attempt` again every 50 ms until it succeeds or `wait` has passed (a neighbour that is
/// starting may not listen yet); the last error when it never does.
pub(super) async fn retry_for<T, E, F: Future<Output = Result<T, E>>>(
    wait: Duration,
    mut attempt: impl FnMut() -> F,
) -> Result<T, E> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The next message from the left neighbour: from the stream being read, or the first of
/// the next stream in the inbox (with the channel its sender waits on for the outcome).
#[allow(clippy::type_complexity)]
pub(super) async fn next_incoming(
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
