//! Chunk buffers that live across steps. Every chunk the ring sends or receives needs a
//! buffer of up to 1 MiB; a fresh allocation per chunk came back from the allocator as fresh
//! pages, and the kernel zeroing them was a third of the ring's CPU time in a profile of
//! `graft bench allreduce` (64 MiB, W = 2). Buffers handed out as [`Bytes`] return here when
//! the last handle drops, their pages already touched.

use std::sync::{Arc, Mutex};

use prost::bytes::Bytes;

/// Buffers kept at most: a step in flight holds a few per link, and a link's reader may run
/// up to its queue ahead of the step loop.
const KEEP: usize = 96;

/// A shared free list of byte buffers.
#[derive(Clone, Default)]
pub struct BufferPool(Arc<Mutex<Vec<Vec<u8>>>>);

/// A buffer on loan as the owner of a [`Bytes`]; dropping it gives the buffer back.
struct Loan {
    buf: Vec<u8>,
    pool: BufferPool,
}

impl AsRef<[u8]> for Loan {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if let Ok(mut free) = self.pool.0.lock()
            && free.len() < KEEP
        {
            free.push(buf);
        }
    }
}

impl BufferPool {
    /// An empty buffer with room for `cap` bytes: a returned one when there is one that big.
    pub fn take(&self, cap: usize) -> Vec<u8> {
        let reused = self.0.lock().ok().and_then(|mut free| {
            let i = free.iter().position(|b| b.capacity() >= cap)?;
            Some(free.swap_remove(i))
        });
        match reused {
            Some(mut b) => {
                b.clear();
                b
            }
            None => Vec::with_capacity(cap),
        }
    }

    /// `buf` as [`Bytes`] that give it back to this pool when the last handle drops.
    pub fn bytes(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Loan {
            buf,
            pool: self.clone(),
        })
    }

    /// `values` as little-endian bytes in a pooled buffer (the wire form of a chunk).
    pub fn f32_bytes(&self, values: &[f32]) -> Bytes {
        let mut buf = self.take(values.len() * 4);
        graft_proto::chunk::extend_f32_bytes(&mut buf, values);
        self.bytes(buf)
    }

    /// Buffers waiting to be reused.
    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.0.lock().map_or(0, |f| f.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_when_its_last_handle_drops_and_is_reused() {
        let pool = BufferPool::default();
        let b = pool.f32_bytes(&[1.0, -2.5]);
        assert_eq!(
            &b[..],
            graft_proto::chunk::f32_to_bytes(&[1.0, -2.5]).as_slice()
        );
        let c = b.clone();
        drop(b);
        assert_eq!(pool.idle(), 0, "a handle is still alive");
        let at = c.as_ptr();
        drop(c);
        assert_eq!(pool.idle(), 1);
        let again = pool.take(8);
        assert!(again.is_empty() && again.capacity() >= 8);
        assert_eq!(
            again.as_ptr(),
            at,
            "the same memory, not a fresh allocation"
        );
        // Too small a buffer is not handed out for a larger need.
        drop(pool.bytes(again));
        assert!(pool.take(1 << 20).capacity() >= 1 << 20);
        assert_eq!(pool.idle(), 1);
    }
}
