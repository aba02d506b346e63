//! How a finished job is reported: one JSON object (for scripts) or a short human summary.

use std::collections::BTreeMap;

use graft_coordinator::wire::state_name;
use graft_proto::v1 as pb;
use serde_json::json;

use crate::watch::Outcome;

/// The JSON line `local`, `submit --watch`, `status` and `demo` print with `--json`.
pub fn json_line(job: &pb::Job, seconds: f64) -> String {
    let metrics: BTreeMap<&String, &f64> = job.metrics.iter().collect();
    json!({
        "job": job.id,
        "state": state_name(pb::JobState::try_from(job.state).unwrap_or_default()),
        "method": job.method,
        "workers": job.workers,
        "steps": job.step,
        "metrics": metrics,
        "checkpoint": job.checkpoint,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "reason": job.reason,
    })
    .to_string()
}

/// A few lines for people: state, metrics, per-class accuracy and the confusion matrix.
pub fn human(o: &Outcome) -> String {
    let j = &o.job;
    let state = state_name(pb::JobState::try_from(j.state).unwrap_or_default());
    let mut s = format!(
        "job {} ({}) {state} after {} of {} steps on {} worker(s) in {:.1}s\n",
        j.id, j.method, j.step, j.total_steps, j.workers, o.seconds
    );
    if !j.reason.is_empty() {
        s.push_str(&format!("  reason: {}\n", j.reason));
    }
    let mut keys: Vec<&String> = j.metrics.keys().collect();
    keys.sort();
    for k in keys {
        s.push_str(&format!("  {k:<32} {:.4}\n", j.metrics[k]));
    }
    if let Some(e) = &o.last_evaluation {
        for set in &e.sets {
            let k = set.num_classes as usize;
            let per: Vec<String> = set
                .per_class_accuracy
                .iter()
                .enumerate()
                .map(|(c, a)| format!("{c}:{a:.2}"))
                .collect();
            s.push_str(&format!(
                "  {} per-class accuracy: {}\n",
                set.label,
                per.join(" ")
            ));
            if k > 0 && set.confusion.len() == k * k && k <= 12 {
                s.push_str(&format!(
                    "  {} confusion (row = true class, column = predicted):\n",
                    set.label
                ));
                for r in 0..k {
                    let row: Vec<String> = set.confusion[r * k..(r + 1) * k]
                        .iter()
                        .map(|v| format!("{v:>5}"))
                        .collect();
                    s.push_str(&format!("    {r:>2} {}\n", row.join("")));
                }
            }
        }
    }
    if !j.checkpoint.is_empty() {
        s.push_str(&format!("  checkpoint: {}\n", j.checkpoint));
    }
    s
}
