//! The group's sum, defined once: gradients added in rank order (so a run is the same from
//! run to run for a given world size) and divided by the global sample count. The star
//! computes it; the ring's tests hold the ring to it.

use graft_transfer::StepStats;

/// The result of a round.
#[derive(Debug, Clone, PartialEq)]
pub struct Reduced {
    /// Mean gradient over the global batch.
    pub grad: Vec<f32>,
    /// Sums over the group.
    pub stats: StepStats,
}

/// Sums contributions in rank order and divides by the global sample count.
pub fn reduce_in_rank_order(parts: &[(Vec<f32>, StepStats)]) -> Reduced {
    let len = parts.first().map_or(0, |(g, _)| g.len());
    let mut sum = vec![0.0f32; len];
    let mut stats = StepStats::default();
    for (g, s) in parts {
        for (acc, v) in sum.iter_mut().zip(g) {
            *acc += *v;
        }
        stats.add(s);
    }
    if stats.samples > 0 {
        let inv = 1.0 / stats.samples as f32;
        for v in &mut sum {
            *v *= inv;
        }
    }
    Reduced { grad: sum, stats }
}
