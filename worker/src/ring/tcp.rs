//! The ring's data plane on plain TCP, as NCCL and Gloo move tensors: one long-lived
//! connection per ring link and group generation, length-prefixed frames of raw
//! little-endian `f32`, and gRPC kept for control. It shares the worker's port with gRPC:
//! a connection that opens with [`MAGIC`] is a ring link, anything else goes to the gRPC
//! server ([`split_incoming`]), so a link needs no address, port or firewall rule of its own.
//!
//! Opening a link (sender = the left neighbour, receiver = the right one):
//! 1. sender → `MAGIC`, version, job, generation, its rank;
//! 2. receiver → a fresh 16-byte challenge;
//! 3. sender → HMAC-SHA256(group key, job, generation, rank, challenge): the key of the
//!    (job, generation), from the assignment, never crosses the wire;
//! 4. receiver → accepted, or refused with the reason, once the mailbox of that generation is
//!    open here and the proof holds for its left neighbour.
//!
//! Then the sender's frames ([`frame`]) carry what the gRPC stream's messages carried (step,
//! generation, bucket, segment, pass, offset, length, CRC-32, the values, or a rank's stats);
//! the receiver cuts them into one [`Incoming`] stream per step for the unchanged step loop,
//! which checks every field, and answers each step with an ack frame (its outcome). A frame
//! for an earlier step than one already read, an unknown kind or an oversized length closes
//! the link; so does the end of the generation. Losing the connection fails the step in
//! flight at once, on both sides.

pub mod frame;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use graft_common::group_key::{GroupKey, NONCE_BYTES, random};
use graft_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use self::frame::{Ack, FrameError};
use super::RingError;
use super::pool::BufferPool;
use super::transport::{Inbox, Incoming, retry_for};

/// The first bytes of a ring link; no HTTP/2 connection starts with them.
pub const MAGIC: &[u8; 8] = b"GRAFTRNG";
/// The link protocol's version, sent after [`MAGIC`].
pub const VERSION: u8 = 1;
/// Longest job id a hello may carry.
const MAX_JOB_ID: usize = 1024;
/// Socket buffers of the link: a few chunks in flight per direction.
const IO_BUFFER: usize = 256 << 10;
/// Messages of one step queued between the link's reader and the step loop.
const STEP_QUEUE: usize = 64;

/// The sending end of a link: writes each step's messages and waits for its ack.
pub struct TcpLink {
    writer: Arc<tokio::sync::Mutex<BufWriter<OwnedWriteHalf>>>,
    acks: Arc<Mutex<Acks>>,
    addr: String,
}

/// The steps waiting for their outcome. A step's waiter is in before its first frame is
/// written, so an ack for a step nobody waits for is not the receiver's: it is dropped.
#[derive(Default)]
struct Acks {
    waiting: HashMap<u64, oneshot::Sender<Result<(), Status>>>,
    /// Why the link is gone, once it is: every later step fails at once with it.
    lost: Option<String>,
}

impl Acks {
    fn settle(&mut self, step: u64, outcome: Result<(), Status>) {
        if let Some(tx) = self.waiting.remove(&step) {
            let _ = tx.send(outcome);
        }
    }

    fn lose(&mut self, why: String) {
        for (_, tx) in self.waiting.drain() {
            let _ = tx.send(Err(Status::unavailable(why.clone())));
        }
        self.lost = Some(why);
    }

    fn wait(&mut self, step: u64) -> oneshot::Receiver<Result<(), Status>> {
        let (tx, rx) = oneshot::channel();
        if let Some(why) = &self.lost {
            let _ = tx.send(Err(Status::unavailable(why.clone())));
        } else {
            self.waiting.insert(step, tx);
        }
        rx
    }
}

impl TcpLink {
    /// Opens the link of `job` at `generation` from `from_rank` to the worker at `addr`,
    /// retrying the connection until `wait` has passed (the neighbour may not listen yet, or
    /// not have opened this generation's mailbox).
    ///
    /// # Errors
    /// [`RingError::Send`] when it cannot be reached or refuses the link.
    pub async fn connect(
        addr: &str,
        job: &str,
        generation: u64,
        from_rank: u32,
        key: &GroupKey,
        wait: Duration,
        to: usize,
    ) -> Result<Self, RingError> {
        let fail = |status: String| RingError::Send {
            step: 0,
            to,
            addr: addr.to_string(),
            status,
        };
        let deadline = tokio::time::Instant::now() + wait;
        let stream = retry_for(wait, || TcpStream::connect(addr))
            .await
            .map_err(|e| fail(format!("cannot connect: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        let mut reader = BufReader::with_capacity(IO_BUFFER, r);
        let mut writer = BufWriter::with_capacity(IO_BUFFER, w);
        let handshake = async {
            let hello = frame::hello(job, generation, from_rank);
            writer.write_all(&hello).await?;
            writer.flush().await?;
            let mut challenge = [0u8; NONCE_BYTES];
            reader.read_exact(&mut challenge).await?;
            writer
                .write_all(&key.prove_link(job, generation, from_rank, &challenge))
                .await?;
            writer.flush().await?;
            frame::read_verdict(&mut reader).await
        };
        // The receiver waits for its mailbox up to its own collective timeout; so do we.
        match tokio::time::timeout_at(deadline + wait, handshake).await {
            Err(_) => return Err(fail("the link was not accepted in time".into())),
            Ok(Err(e)) => return Err(fail(format!("opening the link: {e}"))),
            Ok(Ok(Err(refusal))) => return Err(fail(refusal)),
            Ok(Ok(Ok(()))) => {}
        }
        let acks = Arc::new(Mutex::new(Acks::default()));
        tokio::spawn(read_acks(reader, acks.clone()));
        Ok(Self {
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            acks,
            addr: addr.to_string(),
        })
    }

    /// Sends the messages of `step` as `rx` yields them; resolves with the receiver's
    /// outcome of the step (early when it fails the step or the link is lost).
    pub fn open(
        &self,
        step: u64,
        mut rx: mpsc::Receiver<pb::RingMessage>,
    ) -> tokio::task::JoinHandle<Result<(), Status>> {
        let outcome = match self.acks.lock() {
            Ok(mut a) => a.wait(step),
            Err(_) => {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(Err(Status::internal("ring link lock poisoned")));
                rx
            }
        };
        let writer = self.writer.clone();
        let acks = self.acks.clone();
        let addr = self.addr.clone();
        tokio::spawn(async move {
            let gone = || Status::aborted("the receiving worker gave up on the step");
            tokio::pin!(outcome);
            let mut header = Vec::with_capacity(frame::MAX_HEADER);
            loop {
                tokio::select! {
                    biased;
                    r = &mut outcome => return r.unwrap_or_else(|_| Err(gone())),
                    m = rx.recv() => {
                        let Some(m) = m else { break };
                        let mut w = writer.lock().await;
                        if let Err(e) = frame::write_message(&mut *w, &m, &mut header).await {
                            let why = format!("the link to {addr} failed: {e}");
                            if let Ok(mut a) = acks.lock() {
                                a.lose(why.clone());
                            }
                            return Err(Status::unavailable(why));
                        }
                    }
                }
            }
            outcome.await.unwrap_or_else(|_| Err(gone()))
        })
    }
}

impl Drop for TcpLink {
    /// The generation is over here: every step still waiting gives up, so that its task
    /// drops its handle on the connection, which then closes and ends the receiver's side.
    fn drop(&mut self) {
        if let Ok(mut a) = self.acks.lock() {
            a.lose("the ring link was closed".into());
        }
    }
}

/// The sender's side of the acks: each settles its step; the end of the connection fails
/// every step still waiting.
async fn read_acks(mut reader: BufReader<OwnedReadHalf>, acks: Arc<Mutex<Acks>>) {
    let why = loop {
        match frame::read_ack(&mut reader).await {
            Ok(Ack { step, outcome }) => {
                if let Ok(mut a) = acks.lock() {
                    a.settle(step, outcome.map_err(Status::aborted));
                }
            }
            Err(e) => break format!("the ring link was lost: {e}"),
        }
    };
    if let Ok(mut a) = acks.lock() {
        a.lose(why);
    }
}

/// Splits a listener's connections: ring links (they open with [`MAGIC`]) are served here,
/// into `inbox`, and every other connection is yielded for the gRPC server.
pub fn split_incoming(
    listener: tokio::net::TcpListener,
    inbox: Arc<Inbox>,
    wait: Duration,
) -> impl tokio_stream::Stream<Item = std::io::Result<TcpStream>> {
    let (tx, rx) = mpsc::channel::<std::io::Result<TcpStream>>(16);
    tokio::spawn(async move {
        loop {
            // The server dropped its stream (it stopped): stop accepting, and free the port.
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let (stream, _) = match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors and the like: the gRPC server logs and goes on.
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (tx, inbox) = (tx.clone(), inbox.clone());
            tokio::spawn(async move {
                match is_ring_link(&stream).await {
                    Ok(true) => serve_link(stream, &inbox, wait).await,
                    Ok(false) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "a connection closed before it said what it is")
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Whether the connection opens with [`MAGIC`], read without taking the bytes off it. An
/// HTTP/2 client sends its preface at once, and it differs from the first byte.
async fn is_ring_link(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; MAGIC.len()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("nothing sent within 10 s"))??;
        if n == 0 {
            return Err(std::io::Error::other("closed"));
        }
        if buf[..n] != MAGIC[..n] {
            return Ok(false);
        }
        if n == MAGIC.len() {
            return Ok(true);
        }
        // Part of the magic so far: wait for the rest.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The receiver's side of one link: the handshake, then the frames cut into steps.
async fn serve_link(stream: TcpStream, inbox: &Inbox, wait: Duration) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let (r, w) = stream.into_split();
    let mut reader = BufReader::with_capacity(IO_BUFFER, r);
    let writer = Arc::new(tokio::sync::Mutex::new(BufWriter::with_capacity(
        IO_BUFFER, w,
    )));
    let admitted = async {
        let hello = frame::read_hello(&mut reader, MAX_JOB_ID).await?;
        let challenge = random::<NONCE_BYTES>().map_err(FrameError::Bad)?;
        {
            let mut w = writer.lock().await;
            w.write_all(&challenge).await?;
            w.flush().await?;
        }
        let mut proof = [0u8; 32];
        reader.read_exact(&mut proof).await?;
        Ok::<_, FrameError>((hello, challenge, proof))
    };
    // A sender that stalls in its handshake holds the connection no longer than a mailbox is
    // waited for.
    let admitted = tokio::time::timeout(wait, admitted);
    let (hello, challenge, proof) = match admitted.await {
        Ok(Ok(x)) => x,
        Err(_) => {
            tracing::debug!(%peer, "a ring link did not finish its handshake in time");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "a ring link failed its handshake");
            return;
        }
    };
    let mailbox = inbox
        .link_sender(
            &hello.job,
            hello.generation,
            hello.from_rank,
            &challenge,
            &proof,
            wait,
        )
        .await;
    {
        let mut w = writer.lock().await;
        let verdict = frame::verdict(mailbox.as_ref().map(|_| ()).map_err(Status::message));
        if w.write_all(&verdict).await.is_err() || w.flush().await.is_err() {
            return;
        }
    }
    let mailbox = match mailbox {
        Ok(m) => m,
        Err(s) => {
            tracing::warn!(%peer, job = %hello.job, generation = hello.generation, reason = %s.message(), "refused a ring link");
            return;
        }
    };
    read_steps(reader, writer, mailbox, &hello).await;
}

/// Reads frames until the link ends, handing each step's messages to the step loop as one
/// [`Incoming`] stream and writing back each step's outcome.
async fn read_steps(
    mut reader: BufReader<OwnedReadHalf>,
    writer: Arc<tokio::sync::Mutex<BufWriter<OwnedWriteHalf>>>,
    mailbox: mpsc::Sender<Incoming>,
    hello: &frame::Hello,
) {
    let mut current: Option<(u64, mpsc::Sender<Result<pb::RingMessage, Status>>)> = None;
    let mut last: Option<u64> = None;
    let pool = BufferPool::default();
    let why = loop {
        // The generation's mailbox closing here ends the link at once, not at its next frame.
        let read = tokio::select! {
            r = frame::read_message(&mut reader, &pool) => r,
            () = mailbox.closed() => break "the generation ended on this worker".to_string(),
        };
        let m = match read {
            Ok(m) => m,
            Err(e) => break e.to_string(),
        };
        if let Some((step, tx)) = &current
            && *step == m.step
        {
            // A step the loop has given up on takes the rest of its frames to nowhere.
            let _ = tx.send(Ok(m)).await;
            continue;
        }
        if last.is_some_and(|l| m.step <= l) {
            break format!(
                "a frame for step {} after step {}: steps only go forward on a link",
                m.step,
                last.unwrap_or_default()
            );
        }
        last = Some(m.step);
        let step = m.step;
        let (tx, rx) = mpsc::channel(STEP_QUEUE);
        let (done, finished) = oneshot::channel();
        let incoming = Incoming {
            first: m,
            rest: Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)),
            done,
        };
        if mailbox.send(incoming).await.is_err() {
            break "the generation's ring on this worker has ended".to_string();
        }
        current = Some((step, tx));
        let writer = writer.clone();
        tokio::spawn(async move {
            let outcome = match finished.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(s)) => Err(s.message().to_string()),
                Err(_) => Err("the receiving worker gave up on the step".to_string()),
            };
            let mut w = writer.lock().await;
            let _ = w.write_all(&frame::ack(step, outcome)).await;
            let _ = w.flush().await;
        });
    };
    // The step in flight fails now, not at the collective timeout.
    if let Some((_, tx)) = current {
        let _ = tx
            .send(Err(Status::unavailable(format!(
                "the ring link ended: {why}"
            ))))
            .await;
    }
    tracing::debug!(job = %hello.job, generation = hello.generation, reason = %why, "a ring link ended");
}
