//! The shard planner: which samples each worker uses at each step.
//!
//! Per stage and epoch a seeded permutation orders the stage's training set; global batch
//! `b` of the epoch is the slice `[b·B, (b+1)·B)` of that order (the last one may be short).
//! Rank `r` of `W` takes its contiguous part of every global batch, so the union over ranks
//! is exactly the global batch — the same samples whatever `W` is, which is what makes `W`
//! workers equivalent to one — and every sample is used once per epoch. A worker's shard for
//! an epoch is the concatenation of its parts, in step order.

use std::ops::Range;

use crate::rng::SplitMix64;

/// The permutation of `n` samples for `epoch` of `stage`.
pub fn epoch_permutation(seed: u64, stage: u32, epoch: u64, n: usize) -> Vec<usize> {
    let stream = ((stage as u64) << 40) ^ epoch ^ 0x5348_4152_4400_0000;
    SplitMix64::derive(seed, stream).permutation(n)
}

/// The permutation key of stream `stream` of stage `stage` (the first stream's key is the
/// stage itself, so single-stream jobs keep their order).
pub fn stream_key(stage: u32, stream: u32) -> u32 {
    stage ^ (stream << 16)
}

/// Global batches in an epoch of `n` samples with batch size `batch`.
pub fn batches_per_epoch(n: usize, batch: usize) -> u64 {
    n.div_ceil(batch.max(1)) as u64
}

/// Positions in the epoch order of global batch `b`.
pub fn global_batch(n: usize, batch: usize, b: u64) -> Range<usize> {
    let start = (b as usize * batch).min(n);
    start..(start + batch).min(n)
}

/// Rank `rank`'s part of a batch of `len` samples split among `world` ranks: the first
/// `len % world` ranks take one extra sample.
pub fn local_part(len: usize, world: u32, rank: u32) -> Range<usize> {
    let (w, r) = (world.max(1) as usize, rank as usize);
    let base = len / w;
    let extra = len % w;
    let start = r * base + r.min(extra);
    start..start + base + usize::from(r < extra)
}

/// The positions (in the epoch order) of rank `rank`'s shard: its part of every batch, in
/// step order.
pub fn shard_positions(n: usize, batch: usize, world: u32, rank: u32) -> Vec<usize> {
    let mut out = Vec::with_capacity(n / world.max(1) as usize + 1);
    for b in 0..batches_per_epoch(n, batch) {
        let g = global_batch(n, batch, b);
        let part = local_part(g.len(), world, rank);
        out.extend((g.start + part.start)..(g.start + part.end));
    }
    out
}

/// The sample indices of rank `rank`'s shard for one epoch.
pub fn shard_indices(permutation: &[usize], batch: usize, world: u32, rank: u32) -> Vec<usize> {
    shard_positions(permutation.len(), batch, world, rank)
        .into_iter()
        .map(|p| permutation[p])
        .collect()
}

/// Where the local batch of global batch `b` lies within rank `rank`'s shard.
pub fn local_batch(n: usize, batch: usize, world: u32, rank: u32, b: u64) -> Range<usize> {
    // Every batch before `b` is full, so each contributed the same local count.
    let full = local_part(batch.min(n), world, rank).len();
    let start = b as usize * full;
    let len = local_part(global_batch(n, batch, b).len(), world, rank).len();
    start..start + len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_exactly_once_per_epoch_for_any_world() {
        for n in [1usize, 7, 100, 101, 257] {
            for batch in [1usize, 5, 32, 300] {
                for world in 1..=5u32 {
                    let perm = epoch_permutation(9, 0, 3, n);
                    let mut seen = vec![0u32; n];
                    for rank in 0..world {
                        let shard = shard_indices(&perm, batch, world, rank);
                        for i in shard {
                            seen[i] += 1;
                        }
                    }
                    assert!(
                        seen.iter().all(|&c| c == 1),
                        "n={n} batch={batch} world={world}"
                    );
                }
            }
        }
    }

    #[test]
    fn local_batches_tile_the_shard_and_form_the_global_batch() {
        let (n, batch) = (103usize, 10usize);
        let perm = epoch_permutation(1, 1, 0, n);
        for world in 1..=5u32 {
            let shards: Vec<Vec<usize>> = (0..world)
                .map(|r| shard_indices(&perm, batch, world, r))
                .collect();
            for b in 0..batches_per_epoch(n, batch) {
                let mut union = Vec::new();
                for r in 0..world {
                    let range = local_batch(n, batch, world, r, b);
                    union.extend_from_slice(&shards[r as usize][range]);
                }
                assert_eq!(
                    union,
                    perm[global_batch(n, batch, b)].to_vec(),
                    "world={world} b={b}"
                );
            }
            for (r, shard) in shards.iter().enumerate() {
                let last = local_batch(n, batch, world, r as u32, batches_per_epoch(n, batch) - 1);
                assert_eq!(last.end, shard.len(), "local batches cover the whole shard");
            }
        }
    }

    #[test]
    fn permutations_differ_by_epoch_and_stage() {
        assert_ne!(
            epoch_permutation(1, 0, 0, 50),
            epoch_permutation(1, 0, 1, 50)
        );
        assert_ne!(
            epoch_permutation(1, 0, 0, 50),
            epoch_permutation(1, 1, 0, 50)
        );
        assert_eq!(
            epoch_permutation(1, 0, 0, 50),
            epoch_permutation(1, 0, 0, 50)
        );
    }
}
