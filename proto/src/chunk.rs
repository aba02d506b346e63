//! Tensors on the wire: f32 vectors cut into little-endian chunks with a CRC-32 each, and
//! the checks a receiver makes before it accepts a chunk.

use crate::v1::TensorChunk;

/// Why a received chunk was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ChunkError {
    /// The chunk belongs to another step.
    #[error("chunk is for step {got}, expected step {expected}")]
    WrongStep {
        /// Step the receiver is at.
        expected: u64,
        /// Step the chunk names.
        got: u64,
    },
    /// The chunk belongs to another group generation.
    #[error("chunk is for generation {got}, expected generation {expected}")]
    WrongGeneration {
        /// Generation of the receiver's group.
        expected: u64,
        /// Generation the chunk names.
        got: u64,
    },
    /// The chunk's total length disagrees with what the receiver expects.
    #[error("chunk says the tensor has {got} elements, expected {expected}")]
    WrongLength {
        /// Elements the receiver expects.
        expected: u64,
        /// Elements the chunk claims.
        got: u64,
    },
    /// The chunk does not continue where the previous one ended.
    #[error("chunk starts at element {got}, expected {expected}")]
    WrongOffset {
        /// Next element the receiver expects.
        expected: u64,
        /// Offset the chunk names.
        got: u64,
    },
    /// The bytes are not whole f32 values or run past the end.
    #[error(
        "chunk holds {bytes} bytes at offset {offset}, which does not fit a tensor of {total} f32 elements"
    )]
    BadSize {
        /// Byte length of the chunk.
        bytes: usize,
        /// Element offset.
        offset: u64,
        /// Total elements.
        total: u64,
    },
    /// The checksum does not match the bytes.
    #[error("chunk checksum mismatch at element {offset}")]
    Checksum {
        /// Element offset of the damaged chunk.
        offset: u64,
    },
    /// The stream ended before the tensor was complete.
    #[error("tensor incomplete: got {got} of {expected} elements")]
    Incomplete {
        /// Elements expected.
        expected: u64,
        /// Elements received.
        got: u64,
    },
    /// A value is NaN or infinite.
    #[error("non-finite value at element {index}")]
    NonFinite {
        /// Index of the first bad element.
        index: u64,
    },
}

/// Elements in a default-sized chunk.
const CHUNK_ELEMENTS: usize = crate::CHUNK_BYTES / 4;

/// CRC-32 (IEEE) of a chunk's bytes.
pub fn checksum(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Encodes `values` as little-endian bytes.
pub fn f32_to_bytes(values: &[f32]) -> Vec<u8> {
    // The ring encodes every chunk it forwards. On a little-endian machine the encoding is
    // the memory itself: one copy into an unzeroed buffer (a zeroed one costs a pass, and a
    // page fault per fresh page, before the copy).
    let mut out = Vec::with_capacity(values.len() * 4);
    extend_f32_bytes(&mut out, values);
    out
}

/// Appends `values` to `out` as little-endian bytes (a plain copy on a little-endian
/// machine), so that a caller can encode into a buffer it keeps.
pub fn extend_f32_bytes(out: &mut Vec<u8>, values: &[f32]) {
    #[cfg(target_endian = "little")]
    out.extend_from_slice(bytemuck::cast_slice(values));
    #[cfg(not(target_endian = "little"))]
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Decodes little-endian f32 bytes; the caller has checked the length is a multiple of 4.
pub fn bytes_to_f32(bytes: &[u8], out: &mut Vec<f32>) {
    out.extend(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    );
}

/// Cuts `values` into chunks of at most `chunk_bytes` bytes (at least one chunk, also for an
/// empty tensor, so that the receiver learns the step and the length).
pub fn split(values: &[f32], step: u64, generation: u64, chunk_bytes: usize) -> Vec<TensorChunk> {
    let per = (chunk_bytes / 4).max(1);
    let total = values.len() as u64;
    if values.is_empty() {
        return vec![TensorChunk {
            offset: 0,
            total_len: 0,
            step,
            generation,
            data: prost::bytes::Bytes::new(),
            crc32: checksum(&[]),
        }];
    }
    values
        .chunks(per)
        .enumerate()
        .map(|(i, part)| {
            let data = f32_to_bytes(part);
            TensorChunk {
                offset: (i * per) as u64,
                total_len: total,
                step,
                generation,
                crc32: checksum(&data),
                data: data.into(),
            }
        })
        .collect()
}

/// Puts chunks back together, checking each against the step, generation and length the
/// receiver expects. Chunks must arrive in order (gRPC streams keep order).
#[derive(Debug)]
pub struct Assembler {
    step: u64,
    generation: u64,
    total: u64,
    values: Vec<f32>,
    reject_non_finite: bool,
}

impl Assembler {
    /// Expects a tensor of `total` elements for `step` and `generation`.
    pub fn new(step: u64, generation: u64, total: u64) -> Self {
        Self {
            step,
            generation,
            total,
            // The total comes from a peer: reserve at most a chunk's worth up front.
            values: Vec::with_capacity((total as usize).min(CHUNK_ELEMENTS)),
            reject_non_finite: false,
        }
    }

    /// Also refuse NaN and infinities (gradients must not poison the replicas).
    pub fn reject_non_finite(mut self) -> Self {
        self.reject_non_finite = true;
        self
    }

    /// Accepts the next chunk.
    ///
    /// # Errors
    /// Any [`ChunkError`] naming what does not belong.
    pub fn push(&mut self, chunk: &TensorChunk) -> Result<(), ChunkError> {
        if chunk.step != self.step {
            return Err(ChunkError::WrongStep {
                expected: self.step,
                got: chunk.step,
            });
        }
        if chunk.generation != self.generation {
            return Err(ChunkError::WrongGeneration {
                expected: self.generation,
                got: chunk.generation,
            });
        }
        if chunk.total_len != self.total {
            return Err(ChunkError::WrongLength {
                expected: self.total,
                got: chunk.total_len,
            });
        }
        let have = self.values.len() as u64;
        if chunk.offset != have {
            return Err(ChunkError::WrongOffset {
                expected: have,
                got: chunk.offset,
            });
        }
        let n = (chunk.data.len() / 4) as u64;
        if !chunk.data.len().is_multiple_of(4) || have + n > self.total {
            return Err(ChunkError::BadSize {
                bytes: chunk.data.len(),
                offset: chunk.offset,
                total: self.total,
            });
        }
        if checksum(&chunk.data) != chunk.crc32 {
            return Err(ChunkError::Checksum {
                offset: chunk.offset,
            });
        }
        let start = self.values.len();
        bytes_to_f32(&chunk.data, &mut self.values);
        if self.reject_non_finite
            && let Some(i) = self.values[start..].iter().position(|v| !v.is_finite())
        {
            return Err(ChunkError::NonFinite {
                index: (start + i) as u64,
            });
        }
        Ok(())
    }

    /// True once every element has arrived.
    pub fn is_complete(&self) -> bool {
        self.values.len() as u64 == self.total
    }

    /// The tensor.
    ///
    /// # Errors
    /// [`ChunkError::Incomplete`] when elements are missing.
    pub fn finish(self) -> Result<Vec<f32>, ChunkError> {
        if !self.is_complete() {
            return Err(ChunkError::Incomplete {
                expected: self.total,
                got: self.values.len() as u64,
            });
        }
        Ok(self.values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(values: &[f32], chunk_bytes: usize) -> Vec<f32> {
        let chunks = split(values, 3, 1, chunk_bytes);
        let mut a = Assembler::new(3, 1, values.len() as u64);
        for c in &chunks {
            a.push(c).expect("own chunks are valid");
        }
        a.finish().expect("complete")
    }

    #[test]
    fn f32_to_bytes_is_little_endian_ieee() {
        let v = [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            f32::MAX,
            f32::MIN_POSITIVE,
            3.1e-42,
        ];
        let want: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(f32_to_bytes(&v), want);
        assert_eq!(f32_to_bytes(&[1.0]), [0x00, 0x00, 0x80, 0x3f]);
        assert!(f32_to_bytes(&[]).is_empty());
    }

    #[test]
    fn split_and_assemble_round_trip_uneven_lengths() {
        for n in [0usize, 1, 5, 1023, 1024, 1025, 4097] {
            let v: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            assert_eq!(roundtrip(&v, 64), v, "n = {n}");
        }
    }

    #[test]
    fn refuses_wrong_step_generation_length_and_damage() {
        let v = vec![1.0f32; 40];
        let chunks = split(&v, 7, 2, 64);
        assert!(matches!(
            Assembler::new(8, 2, 40).push(&chunks[0]),
            Err(ChunkError::WrongStep { .. })
        ));
        assert!(matches!(
            Assembler::new(7, 3, 40).push(&chunks[0]),
            Err(ChunkError::WrongGeneration { .. })
        ));
        assert!(matches!(
            Assembler::new(7, 2, 41).push(&chunks[0]),
            Err(ChunkError::WrongLength { .. })
        ));
        assert!(matches!(
            Assembler::new(7, 2, 40).push(&chunks[1]),
            Err(ChunkError::WrongOffset { .. })
        ));
        let mut bad = chunks[0].clone();
        let mut flipped = bad.data.to_vec();
        flipped[0] ^= 1;
        bad.data = flipped.into();
        assert!(matches!(
            Assembler::new(7, 2, 40).push(&bad),
            Err(ChunkError::Checksum { .. })
        ));
        let mut a = Assembler::new(7, 2, 40);
        a.push(&chunks[0]).expect("valid");
        assert!(matches!(a.finish(), Err(ChunkError::Incomplete { .. })));
    }

    #[test]
    fn non_finite_values_are_refused_when_asked() {
        let v = vec![1.0, f32::NAN, 2.0];
        let chunks = split(&v, 0, 0, 1024);
        let mut a = Assembler::new(0, 0, 3).reject_non_finite();
        assert_eq!(a.push(&chunks[0]), Err(ChunkError::NonFinite { index: 1 }));
        let mut lenient = Assembler::new(0, 0, 3);
        assert!(lenient.push(&chunks[0]).is_ok());
    }
}
