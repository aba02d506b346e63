//! Which segment, pass and chunk goes where: pure arithmetic on ranks, passes and element
//! offsets, kept apart from the I/O so that the order the ring walks a step in can be read
//! (and tested) on its own.

use graft_proto::v1 as pb;

use super::Ring;

/// `[start, end)` of segment `s` of `len` elements cut in `world` (the first `len % world`
/// segments one longer, as the shards are cut).
pub fn segment(len: usize, world: usize, s: usize) -> (usize, usize) {
    let base = len / world;
    let extra = len % world;
    let start = s * base + s.min(extra);
    (start, start + base + usize::from(s < extra))
}

/// Where the incoming stream is.
pub(super) struct Cursor {
    pub(super) bucket: usize,
    /// Pass in the bucket: `0..W-1` reduce-scatter, `W-1..2W-2` all-gather.
    pub(super) pass: usize,
    /// Element offset in the bucket of the next chunk.
    pub(super) offset: usize,
}

/// The ring's neighbours and the segment and phase of each pass, from this rank's place.
impl Ring {
    pub(super) fn left(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    pub(super) fn right_rank(&self) -> usize {
        (self.rank + 1) % self.world
    }

    /// The segment received in pass `pass` (`0..2W-2`).
    pub(super) fn recv_segment(&self, pass: usize) -> usize {
        let w = self.world;
        if pass < w - 1 {
            (self.rank + 2 * w - pass - 1) % w
        } else {
            (self.rank + 2 * w - (pass - (w - 1))) % w
        }
    }

    pub(super) fn phase(&self, pass: usize) -> pb::RingPhase {
        if pass < self.world - 1 {
            pb::RingPhase::ReduceScatter
        } else {
            pb::RingPhase::AllGather
        }
    }
}

/// Moves the cursor to the next pass with data (segments may be empty), across buckets.
pub(super) fn advance(
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
pub(super) fn skip_empty(
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

#[cfg(test)]
mod tests {
    use super::*;

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
