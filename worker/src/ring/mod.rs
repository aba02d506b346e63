//! The ring all-reduce between workers (Baidu's / Horovod's / NCCL's ring).
//!
//! Every step, rank `r` of `W` streams to rank `r + 1` (its right neighbour) and takes one
//! stream from rank `r - 1`: over the generation's raw-TCP link (`ring_transport = "tcp"`,
//! the default), or as one gRPC client stream (`CollectiveService.Ring`) per step. Each gradient
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
//!
//! The parts:
//! - `schedule`: which segment, pass and chunk goes where: pure arithmetic on ranks,
//!   passes and element offsets, and the cursor that walks the incoming stream.
//! - `transport`: the worker's `CollectiveService` ([`CollectiveApi`]), the [`Inbox`]
//!   that hands incoming streams to the job, and the client side ([`connect`],
//!   [`Collective`], [`RightLink`]).
//! - `tcp`: the same streams over one raw-TCP connection per link and generation, the
//!   default data plane ([`TcpLink`], [`split_incoming`]); `tcp::frame` is its byte layout.
//! - `pool`: chunk buffers kept across steps (fresh ones cost the kernel's page zeroing).
//! - `kernel`: the element-wise add or store of a received chunk with its non-finite
//!   check, and the joining of the summed buckets.
//! - `protocol`: one rank of the ring ([`Ring`]) and its step loop
//!   ([`Ring::all_reduce`]): what it sends, what it accepts, and how a step is confirmed.

mod kernel;
mod pool;
mod protocol;
mod schedule;
mod tcp;
mod transport;

#[cfg(test)]
mod tests;

pub use protocol::{Ring, RingError, RingSum, StepFeed};
pub use schedule::segment;
pub use tcp::{TcpLink, split_incoming};
pub use transport::{
    Collective, CollectiveApi, Gate, Inbox, Incoming, RING_WINDOW, RightLink, connect,
};
