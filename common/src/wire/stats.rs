//! A step's sums on the wire.

use graft_proto::v1 as pb;
use graft_transfer::StepStats;

/// The wire form of a step's sums.
pub fn stats_to_pb(s: &StepStats) -> pb::StepStats {
    pb::StepStats {
        loss_sum: s.loss_sum,
        samples: s.samples,
        correct: s.correct,
    }
}

/// A step's sums from the wire; an absent message is an empty batch.
pub fn stats_from_pb(p: Option<&pb::StepStats>) -> StepStats {
    p.map_or_else(StepStats::default, |s| StepStats {
        loss_sum: s.loss_sum,
        samples: s.samples,
        correct: s.correct,
    })
}
