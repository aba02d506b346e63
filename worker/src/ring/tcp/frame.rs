//! The bytes of a ring link: the handshake's hello and verdict, the sender's frames (a chunk
//! of values or a rank's stats) and the receiver's acks. Little-endian throughout; a frame's
//! values are the `f32`s as they lie in memory on a little-endian machine, so neither side
//! encodes them.

use graft_proto::MAX_MESSAGE_BYTES;
use graft_proto::v1 as pb;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::super::pool::BufferPool;
use super::{MAGIC, VERSION};

/// What is wrong with a link's bytes.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or closed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Bytes that are no frame of this protocol.
    #[error("{0}")]
    Bad(String),
}

const CHUNK: u8 = 1;
const STATS: u8 = 2;
const ACK_OK: u8 = 0x10;
const ACK_FAILED: u8 = 0x11;
/// Longest reason an ack or a verdict carries.
const MAX_REASON: usize = 1024;
/// The longest header a frame has (a chunk's): kind, step, generation, rank, bucket, segment,
/// phase, offset, total length, CRC-32, data length.
pub const MAX_HEADER: usize = 1 + 8 + 8 + 4 + 4 + 4 + 4 + 8 + 8 + 4 + 4;

/// What a link's sender says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The job.
    pub job: String,
    /// The group's generation.
    pub generation: u64,
    /// The sender's rank.
    pub from_rank: u32,
}

/// A receiver's outcome of a step.
#[derive(Debug, PartialEq, Eq)]
pub struct Ack {
    /// The step.
    pub step: u64,
    /// Done, or why it failed.
    pub outcome: Result<(), String>,
}

/// The sender's hello.
pub fn hello(job: &str, generation: u64, from_rank: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 15 + job.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    let job = &job.as_bytes()[..job.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(job.len() as u16).to_le_bytes());
    out.extend_from_slice(job);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&from_rank.to_le_bytes());
    out
}

/// Reads a hello, refusing another version or a job id longer than `max_job`.
///
/// # Errors
/// [`FrameError`] naming what is wrong.
pub async fn read_hello<R: AsyncRead + Unpin>(
    r: &mut R,
    max_job: usize,
) -> Result<Hello, FrameError> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).await?;
    if &magic != MAGIC {
        return Err(FrameError::Bad("not a ring link".into()));
    }
    let version = r.read_u8().await?;
    if version != VERSION {
        return Err(FrameError::Bad(format!(
            "ring link version {version}, this worker speaks {VERSION}"
        )));
    }
    let n = r.read_u16_le().await? as usize;
    if n > max_job {
        return Err(FrameError::Bad(format!("a job id of {n} bytes")));
    }
    let mut job = vec![0u8; n];
    r.read_exact(&mut job).await?;
    let job =
        String::from_utf8(job).map_err(|_| FrameError::Bad("a job id not in UTF-8".into()))?;
    Ok(Hello {
        job,
        generation: r.read_u64_le().await?,
        from_rank: r.read_u32_le().await?,
    })
}

fn with_reason(kind: u8, head: &[u8], reason: &str) -> Vec<u8> {
    let mut cut = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = vec![kind];
    out.extend_from_slice(head);
    out.extend_from_slice(&(cut as u16).to_le_bytes());
    out.extend_from_slice(&reason.as_bytes()[..cut]);
    out
}

async fn read_reason<R: AsyncRead + Unpin>(r: &mut R) -> Result<String, FrameError> {
    let n = r.read_u16_le().await? as usize;
    if n > MAX_REASON {
        return Err(FrameError::Bad(format!("a reason of {n} bytes")));
    }
    let mut b = vec![0u8; n];
    r.read_exact(&mut b).await?;
    Ok(String::from_utf8_lossy(&b).into_owned())
}

/// The receiver's answer to a handshake.
pub fn verdict(v: Result<(), &str>) -> Vec<u8> {
    match v {
        Ok(()) => vec![0],
        Err(reason) => with_reason(1, &[], reason),
    }
}

/// Reads the receiver's answer: accepted, or the reason it refused.
///
/// # Errors
/// [`FrameError`] when the bytes are not a verdict.
pub async fn read_verdict<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Result<(), String>, FrameError> {
    match r.read_u8().await? {
        0 => Ok(Ok(())),
        1 => Ok(Err(read_reason(r).await?)),
        k => Err(FrameError::Bad(format!("verdict {k}"))),
    }
}

/// The receiver's outcome of `step`.
pub fn ack(step: u64, outcome: Result<(), String>) -> Vec<u8> {
    match outcome {
        Ok(()) => {
            let mut out = vec![ACK_OK];
            out.extend_from_slice(&step.to_le_bytes());
            out
        }
        Err(reason) => with_reason(ACK_FAILED, &step.to_le_bytes(), &reason),
    }
}

/// Reads one ack.
///
/// # Errors
/// [`FrameError`] when the link fails or the bytes are not an ack.
pub async fn read_ack<R: AsyncRead + Unpin>(r: &mut R) -> Result<Ack, FrameError> {
    let kind = r.read_u8().await?;
    let step = r.read_u64_le().await?;
    let outcome = match kind {
        ACK_OK => Ok(()),
        ACK_FAILED => Err(read_reason(r).await?),
        k => return Err(FrameError::Bad(format!("ack kind {k}"))),
    };
    Ok(Ack { step, outcome })
}

/// Writes one message of the ring as a frame, through `header` (a buffer kept across calls),
/// and flushes it: the neighbour's next chunk may depend on it.
///
/// # Errors
/// The connection's error; [`FrameError::Bad`] for a message that is neither a chunk nor
/// stats.
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    m: &pb::RingMessage,
    header: &mut Vec<u8>,
) -> Result<(), FrameError> {
    header.clear();
    let common = |h: &mut Vec<u8>, kind: u8| {
        h.push(kind);
        h.extend_from_slice(&m.step.to_le_bytes());
        h.extend_from_slice(&m.generation.to_le_bytes());
        h.extend_from_slice(&m.from_rank.to_le_bytes());
    };
    if let Some(c) = &m.chunk {
        common(header, CHUNK);
        header.extend_from_slice(&m.bucket.to_le_bytes());
        header.extend_from_slice(&m.segment.to_le_bytes());
        header.extend_from_slice(&m.phase.to_le_bytes());
        header.extend_from_slice(&c.offset.to_le_bytes());
        header.extend_from_slice(&c.total_len.to_le_bytes());
        header.extend_from_slice(&c.crc32.to_le_bytes());
        header.extend_from_slice(&(c.data.len() as u32).to_le_bytes());
        w.write_all(header).await?;
        w.write_all(&c.data).await?;
    } else if let Some(s) = &m.stats {
        let st = s.stats.unwrap_or_default();
        common(header, STATS);
        header.extend_from_slice(&s.rank.to_le_bytes());
        header.extend_from_slice(&s.stop_at.to_le_bytes());
        header.extend_from_slice(&st.loss_sum.to_le_bytes());
        header.extend_from_slice(&st.samples.to_le_bytes());
        header.extend_from_slice(&st.correct.to_le_bytes());
        w.write_all(header).await?;
    } else {
        return Err(FrameError::Bad(
            "a ring message with neither chunk nor stats".into(),
        ));
    }
    w.flush().await?;
    Ok(())
}

/// Reads one frame as the message the step loop checks. The values are read into a buffer
/// of `pool` (not zeroed first), which returns there when the step loop is done with it.
///
/// # Errors
/// [`FrameError`] when the link fails, the kind is unknown or the length is over the
/// message limit.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    pool: &BufferPool,
) -> Result<pb::RingMessage, FrameError> {
    let kind = r.read_u8().await?;
    let step = r.read_u64_le().await?;
    let generation = r.read_u64_le().await?;
    let from_rank = r.read_u32_le().await?;
    let mut m = pb::RingMessage {
        from_rank,
        step,
        generation,
        ..Default::default()
    };
    match kind {
        CHUNK => {
            m.bucket = r.read_u32_le().await?;
            m.segment = r.read_u32_le().await?;
            m.phase = r.read_i32_le().await?;
            let offset = r.read_u64_le().await?;
            let total_len = r.read_u64_le().await?;
            let crc32 = r.read_u32_le().await?;
            let len = r.read_u32_le().await? as usize;
            if len > MAX_MESSAGE_BYTES {
                return Err(FrameError::Bad(format!(
                    "a chunk of {len} bytes, over the limit of {MAX_MESSAGE_BYTES}"
                )));
            }
            let mut data = pool.take(len);
            while data.len() < len {
                let want = (len - data.len()) as u64;
                if (&mut *r).take(want).read_buf(&mut data).await? == 0 {
                    return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
            }
            m.chunk = Some(pb::TensorChunk {
                offset,
                total_len,
                step,
                generation,
                crc32,
                data: pool.bytes(data),
            });
        }
        STATS => {
            let rank = r.read_u32_le().await?;
            let stop_at = r.read_u64_le().await?;
            let loss_sum = f64::from_le_bytes(r.read_u64_le().await?.to_le_bytes());
            let samples = r.read_u64_le().await?;
            let correct = r.read_u64_le().await?;
            m.stats = Some(pb::RankStats {
                rank,
                stats: Some(pb::StepStats {
                    loss_sum,
                    samples,
                    correct,
                }),
                stop_at,
            });
        }
        k => return Err(FrameError::Bad(format!("frame kind {k}"))),
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk_msg() -> pb::RingMessage {
        let data: Vec<u8> = (0..40u8).collect();
        pb::RingMessage {
            from_rank: 3,
            bucket: 2,
            segment: 1,
            phase: pb::RingPhase::AllGather as i32,
            chunk: Some(pb::TensorChunk {
                offset: 77,
                total_len: 1000,
                step: 9,
                generation: 4,
                crc32: graft_proto::chunk::checksum(&data),
                data: data.into(),
            }),
            step: 9,
            generation: 4,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn chunks_stats_hellos_verdicts_and_acks_read_back_as_written() {
        let stats = pb::RingMessage {
            from_rank: 1,
            stats: Some(pb::RankStats {
                rank: 0,
                stats: Some(pb::StepStats {
                    loss_sum: 1.25,
                    samples: 64,
                    correct: 40,
                }),
                stop_at: 12,
            }),
            step: 9,
            generation: 4,
            ..Default::default()
        };
        let mut wire = Vec::new();
        let mut header = Vec::new();
        for m in [&chunk_msg(), &stats] {
            write_message(&mut wire, m, &mut header)
                .await
                .expect("writes");
        }
        let mut r = wire.as_slice();
        assert_eq!(
            read_message(&mut r, &BufferPool::default())
                .await
                .expect("chunk"),
            chunk_msg()
        );
        assert_eq!(
            read_message(&mut r, &BufferPool::default())
                .await
                .expect("stats"),
            stats
        );
        assert!(r.is_empty());

        let h = hello("job-1-abc", 7, 2);
        let got = read_hello(&mut h.as_slice(), 64).await.expect("hello");
        assert_eq!(
            got,
            Hello {
                job: "job-1-abc".into(),
                generation: 7,
                from_rank: 2
            }
        );
        assert!(
            read_hello(&mut h.as_slice(), 4).await.is_err(),
            "too long a job id"
        );
        let mut other = h.clone();
        other[8] = VERSION + 1;
        let e = read_hello(&mut other.as_slice(), 64)
            .await
            .expect_err("version");
        assert!(e.to_string().contains("version"), "{e}");

        assert_eq!(
            read_verdict(&mut verdict(Ok(())).as_slice())
                .await
                .expect("v"),
            Ok(())
        );
        assert_eq!(
            read_verdict(&mut verdict(Err("no")).as_slice())
                .await
                .expect("v"),
            Err("no".into())
        );
        let long = "é".repeat(MAX_REASON);
        let a = read_ack(&mut ack(5, Err(long)).as_slice())
            .await
            .expect("ack");
        assert_eq!(a.step, 5);
        assert!(a.outcome.expect_err("failed").len() <= MAX_REASON);
        assert_eq!(
            read_ack(&mut ack(6, Ok(())).as_slice()).await.expect("ack"),
            Ack {
                step: 6,
                outcome: Ok(())
            }
        );
    }

    #[tokio::test]
    async fn a_bad_kind_an_oversized_chunk_and_a_cut_frame_are_refused() {
        let mut wire = Vec::new();
        write_message(&mut wire, &chunk_msg(), &mut Vec::new())
            .await
            .expect("writes");
        let mut bad_kind = wire.clone();
        bad_kind[0] = 9;
        let e = read_message(&mut bad_kind.as_slice(), &BufferPool::default())
            .await
            .expect_err("kind");
        assert!(e.to_string().contains("kind 9"), "{e}");
        let mut huge = wire.clone();
        let at = MAX_HEADER - 4;
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = read_message(&mut huge.as_slice(), &BufferPool::default())
            .await
            .expect_err("huge");
        assert!(e.to_string().contains("over the limit"), "{e}");
        let cut = &wire[..wire.len() - 1];
        assert!(matches!(
            read_message(&mut &cut[..], &BufferPool::default()).await,
            Err(FrameError::Io(_))
        ));
        let empty = pb::RingMessage {
            step: 1,
            ..Default::default()
        };
        assert!(
            write_message(&mut Vec::new(), &empty, &mut Vec::new())
                .await
                .is_err()
        );
    }
}
